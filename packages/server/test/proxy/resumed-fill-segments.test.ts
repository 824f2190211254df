import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import Koa from 'koa';
import { FsBlobStore, type BlobInfo, type ByteRange, type Digest } from '@wharf/registry-core';
import { BlobFills, type BlobFill, type UpstreamBlob } from '@wharf/proxy';
import { sendStream } from '../../src/http/send-stream.js';

/**
 * The segments a fill's clients share (send-stream.ts) are named by the fill, not by its temp file: a
 * fill that goes on from a remnant reuses the remnant's file, whose bytes past the kept length (the
 * partial block a download cut short wrote) are not what the new fill verifies. Named by the path,
 * a client of the new fill was sent the cut download's bytes from a segment one of its clients had
 * loaded, in a complete 206.
 */
const MiB = 1024 * 1024;
const SIZE = 12 * MiB;
const KEPT = 5 * MiB;
const PARTIAL = KEPT + MiB / 2;

async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; !check(); i++) {
    if (i > 4000) throw new Error(`timed out: ${what}`);
    await sleep(5);
  }
}

let dir: string;
let server: Server;
let url: string;
let fills: BlobFills;
const route = new Map<string, () => Readable>();
let releaseAdopt: () => void = () => undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'wharf-audit-key-'));
  const temp = join(dir, 'tmp');
  await mkdir(temp);
  const fsStore = new FsBlobStore(join(dir, 'blobs'), temp);
  const gate = new Promise<void>((resolve) => (releaseAdopt = resolve));
  // The store's adopt is held back: the verified fill stays in flight (its writer closed) meanwhile.
  const store = Object.assign(Object.create(fsStore) as FsBlobStore, {
    adopt: async (file: string, blob: BlobInfo) => {
      await gate;
      return fsStore.adopt(file, blob);
    },
  });
  fills = new BlobFills({ store, tempRoot: temp });
  const app = new Koa();
  app.use((ctx) => {
    const make = route.get(ctx.path)!;
    const body = make();
    ctx.status = ctx.get('range') ? 206 : 200;
    ctx.set('content-length', ctx.get('x-length'));
    sendStream(ctx, body);
  });
  server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  releaseAdopt();
  await fills.settled();
  await fills.close();
  await new Promise((resolve) => server.close(resolve));
  await rm(dir, { recursive: true, force: true });
});

test('a resumed fill\'s client is never sent the cut download\'s unverified bytes from a shared segment', async () => {
  const blob = randomBytes(SIZE);
  const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}` as Digest;

  // Download 1: the right bytes up to KEPT, then half a block of wrong ones (a faulty mirror), then
  // the body ends short of its size: "ended early", the partial block is written, the whole blocks kept.
  const first = new PassThrough();
  const asked: (ByteRange | undefined)[] = [];
  const rest = new PassThrough();
  const fetch = async (range?: ByteRange): Promise<UpstreamBlob> => {
    asked.push(range);
    return range ? { size: SIZE, range, body: rest } : { size: SIZE, body: first };
  };
  const fill1 = (await fills.join(digest, fetch))!;
  route.set('/one', () => fill1.reader());
  first.write(blob.subarray(0, KEPT));
  await until(() => fill1.written >= KEPT, 'download 1 on disk');
  // Fault injection: closing the fill's file takes 500 ms (fill 1's end, after its writer let its
  // blocks go and before the fill is marked failed).
  const handle = (fill1.writer as unknown as { handle: { close: () => Promise<void> } }).handle;
  const close = handle.close.bind(handle);
  handle.close = async () => {
    await sleep(500);
    return close();
  };
  const wrong = randomBytes(PARTIAL - KEPT);
  first.end(wrong);
  await until(() => fill1.writer?.isOpen === false, 'download 1 ended early, its writer closed');
  // A client asks for the bytes from KEPT now (a resume), while the fill is still in flight: it is
  // sent the partial block from the file, through a shared segment, and then cut.
  expect(fill1.state).toBe('running');
  route.set('/one', () => fill1.reader({ start: KEPT, end: SIZE - 1 }));
  const a = await fetch1(`${url}/one`, SIZE - KEPT, `bytes=${KEPT}-`);
  await fill1.done.catch(() => undefined);
  expect(a.whole).toBe(false); // cut, as it must be
  expect(fills.remnantOf(digest)).toBe(KEPT);
  expect(a.bytes.equals(wrong)).toBe(true);

  // Download 2 goes on from the remnant, the same temp file, with the right rest.
  const fill2: BlobFill = (await fills.join(digest, fetch))!;
  expect(fill2.resumedFrom).toBe(KEPT);
  expect(fill2.tempPath).toBe(fill1.tempPath);
  rest.end(blob.subarray(KEPT));
  await until(() => fill2.verified && fill2.writer?.isOpen === false, 'download 2 verified and its writer closed');

  // Client B of download 2 asks for the bytes from KEPT (a client resuming, say).
  route.set('/two', () => fill2.reader({ start: KEPT, end: SIZE - 1 }));
  const b = await fetch1(`${url}/two`, SIZE - KEPT, `bytes=${KEPT}-`);
  releaseAdopt();
  await fill2.done;
  expect(b.whole).toBe(true);
  expect(b.bytes.length).toBe(SIZE - KEPT);
  const firstWrong = b.bytes.findIndex((x, i) => x !== blob[KEPT + i]);
  // Before: 0, the first half MiB client B got (in a complete 206) being download 1's bytes.
  expect({ firstWrong, gotDownload1Bytes: b.bytes.subarray(0, wrong.length).equals(wrong) }).toEqual({ firstWrong: -1, gotDownload1Bytes: false });
});

async function fetch1(target: string, length: number, range?: string, progress = { bytes: 0 }): Promise<{ bytes: Buffer; whole: boolean }> {
  const res = await fetch(target, { headers: { 'x-length': String(length), ...(range ? { range } : {}) } });
  const chunks: Buffer[] = [];
  let whole = false;
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) { chunks.push(Buffer.from(chunk)); progress.bytes += chunk.length; }
    whole = true;
  } catch {
    // cut
  }
  return { bytes: Buffer.concat(chunks), whole };
}
