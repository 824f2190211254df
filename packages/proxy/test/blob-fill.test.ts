import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { FsBlobStore, RegistryError, type Digest } from '@wharf/registry-core';
import { fillFailed, type BlobFill } from '../src/blob-fill.js';
import { BlobFills } from '../src/blob-fills.js';
import { fillBudget } from '../src/fill-writer.js';
import { HttpUpstream } from '../src/http-upstream.js';
import { UpstreamError, type UpstreamBlob } from '../src/upstream.js';
import { FakeUpstream, type Fault } from './helpers/fake-upstream.js';

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;
const MiB = 1024 * 1024;

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Writes `bytes` into `into` in `chunk`-sized pieces, `delay` ms apart; ends it unless told not to. */
async function feed(into: PassThrough, bytes: Buffer, chunk: number, delay: number, end = true): Promise<void> {
  for (let at = 0; at < bytes.length; at += chunk) {
    into.write(bytes.subarray(at, at + chunk));
    await sleep(delay);
  }
  if (end) into.end();
}

/**
 * Occupies every thread of libuv's pool with an open(2) of a FIFO that blocks until `release` opens
 * its other end, so no file system call (a fill's disk writes among them) can run meanwhile.
 */
async function blockThreadPool(dir: string): Promise<{ release(): void }> {
  const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const fifos = Array.from({ length: threads }, (_, i) => join(dir, `pool-${i}.fifo`));
  for (const fifo of fifos) execFileSync('mkfifo', [fifo]);
  const opens = fifos.map((fifo) => open(fifo, 'r'));
  // Every thread is taken once a stat, queued behind the opens, no longer answers.
  const probe = stat(dir);
  expect(await outcome(probe)).toBe('pending');
  return {
    release() {
      // O_NONBLOCK: the main thread opens each writing end at once, since a reader waits on it.
      for (const fifo of fifos) closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
      void Promise.all(opens.map(async (opening) => (await opening).close()));
    },
  };
}

function outcome(p: Promise<unknown>): Promise<'resolved' | 'rejected' | 'pending'> {
  return Promise.race([
    p.then(
      () => 'resolved' as const,
      () => 'rejected' as const,
    ),
    sleep(50).then(() => 'pending' as const),
  ]);
}

/** Settles as `p` does, or resolves to 'hung' if `p` has not settled within `ms`. */
async function orHung<T>(p: Promise<T>, ms = 5000): Promise<T | 'hung'> {
  const deadline = new AbortController();
  try {
    return await Promise.race([p, sleep(ms, 'hung' as const, { signal: deadline.signal })]);
  } finally {
    deadline.abort();
  }
}

/** Counts what `reader` delivers, and says whether it ended. */
function follow(reader: Readable): { readonly received: number; readonly ended: boolean } {
  const seen = { received: 0, ended: false };
  reader.on('data', (chunk: Buffer) => (seen.received += chunk.length));
  reader.once('end', () => (seen.ended = true));
  return seen;
}

/** The descriptor a fill writes its blocks through without O_DIRECT (for fault injection). */
function fileHandleOf(fill: BlobFill): FileHandle {
  return (fill.writer as unknown as { handle: FileHandle }).handle;
}

describe('fillFailed: what the clients of a failed download are told', () => {
  const digest = `sha256:${'c'.repeat(64)}` as Digest;
  test("the upstream's 503 (down for now) is a 503 UNAVAILABLE with its Retry-After, as the client that started the download is told; the rest a 502", () => {
    expect(fillFailed(digest, new UpstreamError('server-error', 'upstream up answered 503, asking to retry after 7 s', 503, 7))).toMatchObject({
      code: 'UNAVAILABLE',
      detail: { digest, reason: 'upstream up answered 503, asking to retry after 7 s', retryAfter: 7 },
    });
    expect(fillFailed(digest, new UpstreamError('server-error', 'upstream up answered 500', 500))).toMatchObject({ code: 'UPSTREAM_ERROR', detail: { digest, reason: 'upstream up answered 500' } });
    expect(fillFailed(digest, new Error('digest mismatch'))).toMatchObject({ code: 'UPSTREAM_ERROR' });
    expect(fillFailed(digest, undefined)).toBeInstanceOf(RegistryError);
  });
});

describe('BlobFills and BlobFill on an FsBlobStore', () => {
  let dir: string;
  let temp: string;
  let store: FsBlobStore;
  let fills: BlobFills;
  let fake: FakeUpstream | undefined;
  /** What the temp folder holds but the fills' owner lock (see fill-owner.ts). */
  const tempLeft = async () => (await readdir(temp)).filter((f) => !f.startsWith('owner-'));

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-fill-'));
    temp = join(dir, 'tmp');
    await mkdir(temp);
    store = new FsBlobStore(join(dir, 'blobs'), temp);
    fills = new BlobFills({ store, tempRoot: temp });
  });
  afterEach(async () => {
    // Readers end once the blob is verified, before the fill has moved it into the store.
    await fills.settled();
    await fake?.close();
    fake = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  /** A fill of `bytes` fed from a PassThrough the test controls. */
  /** `size`: what the upstream announces ('unknown': no Content-Length). */
  function controlled(bytes: Buffer, digest = sha256(bytes), size: number | 'unknown' = bytes.length) {
    const source = new PassThrough();
    let fetches = 0;
    const fetch = async (): Promise<UpstreamBlob> => {
      fetches += 1;
      return { ...(size !== 'unknown' ? { size } : {}), body: source };
    };
    return { source, fetch, digest, fetches: () => fetches };
  }

  async function fromFake(fault: Fault, bytes = randomBytes(300_000), times = Infinity) {
    fake = await FakeUpstream.start();
    const digest = fake.addBlob(bytes);
    fake.fault = fault;
    fake.faultTimes = times;
    const upstream = new HttpUpstream({ name: 'fake', url: fake.url, retries: 0 });
    return { digest, fetch: () => upstream.blob('alice/app', digest) };
  }

  test('16 concurrent joins share one fetch, and every reader gets the whole blob', async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 17);
    const c = controlled(bytes);
    const joined = await Promise.all(Array.from({ length: 16 }, () => fills.join(c.digest, c.fetch)));
    expect(c.fetches()).toBe(1);
    expect(fills.started).toBe(1);
    expect(new Set(joined).size).toBe(1);
    const reads = joined.map((fill) => readAll(fill!.reader()));
    await feed(c.source, bytes, 64 * 1024, 1);
    for (const got of await Promise.all(reads)) expect(sha256(got)).toBe(c.digest);
    expect(await joined[0]!.done).toEqual({ digest: c.digest, size: bytes.length });
    expect((await readFile(store.pathOf(c.digest))).equals(bytes)).toBe(true);
    expect(fills.running).toBe(0);
    expect(await tempLeft()).toEqual([]);
  });

  test('readers started midway and after the end still get every byte', async () => {
    const bytes = randomBytes(1024 * 1024);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    const feeding = feed(c.source, bytes, 32 * 1024, 2);
    while (fill.written < bytes.length / 2) await sleep(2);
    const midway = readAll(fill.reader());
    await feeding;
    await fill.done;
    const late = readAll(fill.reader());
    expect((await midway).equals(bytes)).toBe(true);
    expect((await late).equals(bytes)).toBe(true);
  });

  test('a reader of a range, consumed as fast as it pushes, gets every byte of it (it once stalled after its first MiB)', async () => {
    for (const [start, chunk] of [[500, 3 * MiB], [500, 64 * 1024], [MiB + 5, MiB]] as const) {
      const bytes = randomBytes(3 * MiB);
      const body = new PassThrough();
      const fill = (await fills.join(sha256(bytes), async () => ({ size: bytes.length, body })))!;
      const tail = readAll(fill.reader({ start, end: bytes.length - 1 }));
      for (let o = 0; o < bytes.length; o += chunk) body.write(bytes.subarray(o, o + chunk));
      body.end();
      expect((await tail).equals(bytes.subarray(start))).toBe(true);
      await fill.done;
    }
  });

  test('a client that stops reading neither holds up the fill nor keeps more than a few MiB queued', async () => {
    const bytes = randomBytes(12 * 1024 * 1024);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    const stalled = fill.reader();
    const head: Buffer[] = [];
    const feeding = feed(c.source, bytes, 64 * 1024, 0);
    await new Promise<void>((resolve) =>
      stalled.once('data', (chunk: Buffer) => {
        head.push(chunk);
        stalled.pause();
        resolve();
      }),
    );
    await feeding;
    expect(await fill.done).toEqual({ digest: c.digest, size: bytes.length });
    // Live chunks stop once about 2 MiB wait for this client; the rest stays in the file for it.
    expect(stalled.readableLength).toBeLessThan(3 * 1024 * 1024);
    const rest = await readAll(stalled);
    expect(Buffer.concat([...head, rest]).equals(bytes)).toBe(true);
  });

  test('a reader keeping up gets every chunk as it arrives, except the last byte until the digest is verified', async () => {
    const bytes = randomBytes(512 * 1024);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    const seen = follow(fill.reader());
    // Everything but the end of the upstream body: the fill cannot verify yet.
    await feed(c.source, bytes, 64 * 1024, 2, false);
    while (seen.received < bytes.length - 1) await sleep(2);
    await sleep(20);
    expect(seen.received).toBe(bytes.length - 1);
    expect(seen.ended).toBe(false);
    c.source.end();
    await fill.done;
    while (!seen.ended) await sleep(2);
    expect(seen.received).toBe(bytes.length);
  });

  test("a reader gets the last byte once the digest is verified, while the fill's last block still waits for the disk", async () => {
    const bytes = randomBytes(300_000);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    const seen = follow(fill.reader());
    c.source.write(bytes);
    while (seen.received < bytes.length - 1) await sleep(2);
    // No disk write can start now: every thread of libuv's pool waits in an open(2) of a FIFO.
    const pool = await blockThreadPool(dir);
    try {
      c.source.end();
      for (let waited = 0; !seen.ended && waited < 5_000; waited += 5) await sleep(5);
      expect(seen.ended).toBe(true);
      expect(seen.received).toBe(bytes.length);
      // The whole blob went out from memory, and none of it has reached the disk yet.
      expect(fill.written).toBe(0);
      expect(await outcome(fill.done)).toBe('pending');
    } finally {
      pool.release();
    }
    expect(await fill.done).toEqual({ digest: c.digest, size: bytes.length });
    expect((await readFile(store.pathOf(c.digest))).equals(bytes)).toBe(true);
  });

  test('a verified fill whose copy then fails to reach the disk cuts a reader that still needs those bytes', async () => {
    // Through the page cache only: closing the one descriptor makes every write fail.
    fills = new BlobFills({ store, tempRoot: temp, directIo: false });
    const bytes = randomBytes(300_000);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    const first = readAll(fill.reader());
    // Not read until the fill has failed: by then its bytes are neither in memory nor on disk.
    const late = fill.reader();
    late.pause();
    await fileHandleOf(fill).close();
    c.source.end(bytes);
    // The digest was verified before the write failed: the reader that kept up has the whole blob.
    expect(sha256(await first)).toBe(c.digest);
    await expect(fill.done).rejects.toThrow();
    await expect(readAll(late)).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
    expect(await store.stat(c.digest)).toBeUndefined();
    expect(await tempLeft()).toEqual([]);
  });

  test('a block still being written when the disk fills up counts as written once it lands, though its readers had all passed it', async () => {
    fills = new BlobFills({ store, tempRoot: temp, directIo: false });
    const bytes = randomBytes(6 * MiB + 1000);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    // The second MiB lands only after both readers have the whole blob; the third finds the disk full.
    const handle = fileHandleOf(fill) as unknown as { write: (...args: unknown[]) => Promise<unknown> };
    const write = handle.write.bind(handle);
    let land!: () => void;
    const landed = new Promise<void>((resolve) => (land = resolve));
    handle.write = async (...args) => {
      const position = args[3] as number;
      if (position >= 2 * MiB) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      if (position >= MiB) await landed;
      return write(...args);
    };
    const readers = [readAll(fill.reader()), readAll(fill.reader())];
    await feed(c.source, bytes, 256 * 1024, 0);
    for (const read of readers) expect((await read).equals(bytes)).toBe(true);
    land();
    expect(await fill.done).toEqual({ digest: c.digest, size: bytes.length });
    expect(fill.notStored).toMatchObject({ code: 'ENOSPC' });
    expect(fill.written).toBe(2 * MiB);
    expect(await tempLeft()).toEqual([]);
  });

  test('a fill whose disk fills up goes on in memory: a fast and a slow reader both get the whole blob, and nothing is stored', async () => {
    fills = new BlobFills({ store, tempRoot: temp, directIo: false });
    const bytes = randomBytes(12 * MiB + 1000);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    // The disk takes the first 2 MiB, then no more.
    const handle = fileHandleOf(fill) as unknown as { write: (...args: unknown[]) => Promise<unknown> };
    const write = handle.write.bind(handle);
    handle.write = async (...args) => {
      if ((args[3] as number) >= 2 * MiB) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      return write(...args);
    };
    fillBudget.resetPeak();
    const fast = readAll(fill.reader());
    const slowReader = fill.reader();
    const slow = (async () => {
      const chunks: Buffer[] = [];
      for await (const chunk of slowReader as AsyncIterable<Buffer>) {
        chunks.push(chunk);
        await sleep(1);
      }
      return Buffer.concat(chunks);
    })();
    await feed(c.source, bytes, 256 * 1024, 0);
    expect((await fast).equals(bytes)).toBe(true);
    expect((await slow).equals(bytes)).toBe(true);
    // The upstream waited for the slow reader rather than the fill holding the blob in memory.
    expect(fillBudget.peak).toBeLessThanOrEqual(10);
    expect(await fill.done).toEqual({ digest: c.digest, size: bytes.length });
    expect(fill.notStored).toMatchObject({ code: 'ENOSPC' });
    expect(fill.written).toBe(2 * MiB);
    expect(await store.stat(c.digest)).toBeUndefined();
    expect(await tempLeft()).toEqual([]);
  });

  test('a fill kept in memory refuses, before any byte, a reader of bytes it has let go of', async () => {
    fills = new BlobFills({ store, tempRoot: temp, directIo: false });
    const bytes = randomBytes(8 * MiB);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    fill.writer!.keepInMemory(Object.assign(new Error('no room'), { code: 'ENOSPC' }));
    const first = readAll(fill.reader());
    await feed(c.source, bytes.subarray(0, 6 * MiB), 256 * 1024, 0, false);
    while (fill.writer!.heldFrom === 0) await sleep(2);
    // Its first block is gone, and was never on disk: a reader from byte 0 cannot be served.
    expect(fill.canServeFrom(0)).toBe(false);
    let refused: unknown;
    try {
      fill.reader().destroy();
    } catch (err) {
      refused = err;
    }
    expect(refused).toMatchObject({ code: 'UNAVAILABLE' });
    expect(fill.canServeFrom(fill.writer!.heldFrom)).toBe(true);
    c.source.end(bytes.subarray(6 * MiB));
    expect((await first).equals(bytes)).toBe(true);
    await fill.done;
    expect(fill.notStored).toBeDefined();
  });

  test('a verified fill of unknown size whose copy then fails cuts a late reader rather than ending it short', async () => {
    fills = new BlobFills({ store, tempRoot: temp, directIo: false });
    const bytes = randomBytes(300_000);
    const c = controlled(bytes, sha256(bytes), 'unknown');
    const fill = (await fills.join(c.digest, c.fetch))!;
    const late = fill.reader();
    late.pause();
    await fileHandleOf(fill).close();
    c.source.end(bytes);
    await expect(fill.done).rejects.toThrow();
    expect(fill.verified).toBe(true);
    // Its end is the bytes received, not those on disk: a clean end here would be a truncated blob.
    await expect(readAll(late)).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
  });

  test("a reader behind the fill's memory reads the file only as far as it is written (a later block can land first)", async () => {
    fills = new BlobFills({ store, tempRoot: temp, directIo: false });
    const bytes = randomBytes(3 * MiB + 500_000);
    const c = controlled(bytes);
    // Other fills hold most of the budget: each block leaves memory as soon as it is written.
    for (let i = 0; i < 25; i++) fillBudget.take();
    try {
      const fill = (await fills.join(c.digest, c.fetch))!;
      // The second block's write is held back (a slow disk request), so the third lands before it and
      // the file has a hole, which reads as zeros, from 1 MiB to 2 MiB.
      const handle = fileHandleOf(fill) as unknown as { write: (...args: unknown[]) => Promise<unknown> };
      const write = handle.write.bind(handle);
      let letGo!: () => void;
      const held = new Promise<void>((resolve) => (letGo = resolve));
      handle.write = async (...args) => {
        if (args[3] === MiB) await held;
        return write(...args);
      };
      c.source.write(bytes.subarray(0, 3 * MiB + 10));
      while (fill.written < MiB || fill.writer!.writesInFlight !== 1) await sleep(2);
      // From 100 KiB before the hole: the first block has left memory, so those bytes come from the file.
      const start = MiB - 100 * 1024;
      const read = readAll(fill.reader({ start, end: bytes.length - 1 }));
      await sleep(50);
      letGo();
      c.source.end(bytes.subarray(3 * MiB + 10));
      const got = await read;
      expect(got.findIndex((b, i) => b !== bytes[start + i])).toBe(-1);
      expect(got.length).toBe(bytes.length - start);
      await fill.done;
    } finally {
      fillBudget.give(25);
    }
  });

  test('a reader destroyed midway does not stop the fill: the blob lands in the store', async () => {
    const bytes = randomBytes(2 * 1024 * 1024);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    const quitter = fill.reader();
    const feeding = feed(c.source, bytes, 64 * 1024, 2);
    await new Promise<void>((resolve) => quitter.once('data', () => resolve()));
    quitter.destroy();
    await feeding;
    expect(await fill.done).toEqual({ digest: c.digest, size: bytes.length });
    expect(await store.stat(c.digest)).toEqual({ digest: c.digest, size: bytes.length });
  });

  test('a range reader on a fill in progress gets exactly its range', async () => {
    const bytes = randomBytes(1024 * 1024);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    const feeding = feed(c.source, bytes, 16 * 1024, 1);
    const head = readAll(fill.reader({ start: 0, end: 99 }));
    const middle = readAll(fill.reader({ start: 300_000, end: 700_000 }));
    const tail = readAll(fill.reader({ start: bytes.length - 10, end: bytes.length - 1 }));
    await feeding;
    expect((await head).equals(bytes.subarray(0, 100))).toBe(true);
    expect((await middle).equals(bytes.subarray(300_000, 700_001))).toBe(true);
    expect((await tail).equals(bytes.subarray(bytes.length - 10))).toBe(true);
  });

  test('a fill of unknown size is read to its verified end', async () => {
    const bytes = randomBytes(500_000);
    const c = controlled(bytes, sha256(bytes), 'unknown');
    const fill = (await fills.join(c.digest, c.fetch))!;
    const reading = readAll(fill.reader());
    await feed(c.source, bytes, 50_000, 1);
    expect((await reading).equals(bytes)).toBe(true);
  });

  test('wrong bytes of the right length: no reader ever completes, every reader errors', async () => {
    const bytes = randomBytes(512 * 1024);
    const c = controlled(randomBytes(bytes.length), sha256(bytes));
    const fill = (await fills.join(c.digest, c.fetch))!;
    const readers = [fill.reader(), fill.reader(), fill.reader({ start: 0, end: bytes.length - 1 })].map(readAll);
    // Every byte is there, but the upstream has not ended: the digest cannot be checked yet.
    await feed(c.source, randomBytes(bytes.length), 64 * 1024, 1, false);
    await sleep(100);
    for (const r of readers) expect(await outcome(r)).toBe('pending');
    c.source.end();
    for (const r of readers) await expect(r).rejects.toThrow();
    await expect(fill.done).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
    expect(await store.stat(c.digest)).toBeUndefined();
    expect(await tempLeft()).toEqual([]);
  });

  test('an empty body for a non-empty digest: the reader errors instead of ending at once', async () => {
    const c = controlled(Buffer.alloc(0), sha256(Buffer.from('not empty')), 0);
    const fill = (await fills.join(c.digest, c.fetch))!;
    const reader = readAll(fill.reader());
    await sleep(20);
    expect(await outcome(reader)).toBe('pending');
    c.source.end();
    await expect(reader).rejects.toThrow();
    await expect(fill.done).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
  });

  test('the empty blob itself is read as empty once verified', async () => {
    const c = controlled(Buffer.alloc(0));
    const fill = (await fills.join(c.digest, c.fetch))!;
    const reader = readAll(fill.reader());
    c.source.end();
    expect((await reader).length).toBe(0);
    await fill.done;
    expect(await store.stat(c.digest)).toEqual({ digest: c.digest, size: 0 });
  });

  test('more bytes than announced fails the fill as SIZE_INVALID', async () => {
    const bytes = randomBytes(100_000);
    const c = controlled(bytes, sha256(bytes), 50_000);
    const fill = (await fills.join(c.digest, c.fetch))!;
    const reader = readAll(fill.reader());
    await feed(c.source, bytes, 10_000, 1);
    await expect(fill.done).rejects.toBeInstanceOf(RegistryError);
    await expect(fill.done).rejects.toMatchObject({ code: 'SIZE_INVALID' });
    await expect(reader).rejects.toThrow();
    expect(await tempLeft()).toEqual([]);
  });

  for (const fault of ['wrong-bytes', 'truncate', 'reset'] as const) {
    test(`upstream ${fault}: every reader errors, nothing in the store, no temp file left`, async () => {
      const { digest, fetch } = await fromFake(fault);
      const joined = await Promise.all(Array.from({ length: 4 }, () => fills.join(digest, fetch)));
      expect(fills.started).toBe(1);
      const results = await Promise.allSettled(joined.map((fill) => readAll(fill!.reader())));
      expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected', 'rejected']);
      // The fill's failure, not a side effect of it (a temp file shorter than the bytes counted).
      for (const r of results) expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'UPSTREAM_ERROR' });
      await expect(joined[0]!.done).rejects.toThrow();
      expect(await store.stat(digest)).toBeUndefined();
      expect(await tempLeft()).toEqual([]);
      expect(fills.running).toBe(0);
    });
  }

  test('a body that failed before the fill began to read it fails the fill instead of hanging it', async () => {
    const bytes = randomBytes(1000);
    const source = new PassThrough();
    source.on('error', () => undefined);
    source.destroy(new Error('reset while the temp file was opened'));
    const fill = (await fills.join(sha256(bytes), async () => ({ size: bytes.length, body: source })))!;
    // A hung fill resolves this to 'hung' and fails the test; a slow one still gets 5 s.
    await expect(orHung(fill.done)).rejects.toThrow('reset while the temp file was opened');
    expect(await tempLeft()).toEqual([]);
  });

  test('when the temp file cannot be made, the join fails and the upstream body is let go', async () => {
    fills = new BlobFills({ store, tempRoot: join(dir, 'no-such-dir') });
    const bytes = randomBytes(1000);
    const source = new PassThrough();
    await expect(fills.join(sha256(bytes), async () => ({ size: bytes.length, body: source }))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(source.destroyed).toBe(true);
    expect(fills.running).toBe(0);
  });

  test('a lent chunk is given back once the fill has copied it, and never twice', async () => {
    const bytes = randomBytes(2 * 1024 * 1024);
    const source = new PassThrough();
    const sent: Buffer[] = [];
    const back: Buffer[] = [];
    const everyGiveBack: Buffer[] = [];
    const recycle = (chunk: Buffer) => {
      back.push(chunk);
      everyGiveBack.push(chunk);
    };
    const fill = (await fills.join(sha256(bytes), async () => ({ size: bytes.length, body: source, recycle })))!;
    const read = readAll(fill.reader());
    for (let at = 0; at < bytes.length; at += 64 * 1024) {
      const chunk = Buffer.from(bytes.subarray(at, at + 64 * 1024));
      sent.push(chunk);
      source.write(chunk);
      // Overwrite what was given back, as a reused slab would: the blob must not change.
      for (const b of back.splice(0)) b.fill(0);
      await sleep(1);
    }
    source.end();
    expect(sha256(await read)).toBe(sha256(bytes));
    await fill.done;
    expect((await readFile(store.pathOf(sha256(bytes)))).equals(bytes)).toBe(true);
    expect(everyGiveBack.length).toBe(sent.length);
    expect(new Set(everyGiveBack).size).toBe(sent.length);
  });

  test('after a failed fill, the next join fetches again and can succeed', async () => {
    const bytes = randomBytes(200_000);
    const { digest, fetch } = await fromFake('wrong-bytes', bytes, 1);
    const first = (await fills.join(digest, fetch))!;
    await expect(first.done).rejects.toThrow();
    await sleep(10);
    const second = (await fills.join(digest, fetch))!;
    expect(second).not.toBe(first);
    expect((await readAll(second.reader())).equals(bytes)).toBe(true);
    expect(await second.done).toEqual({ digest, size: bytes.length });
    expect(fills.started).toBe(2);
  });

  test('an upstream without the blob: undefined, nothing in flight', async () => {
    const digest = sha256(Buffer.from('absent'));
    expect(await fills.join(digest, async () => undefined)).toBeUndefined();
    expect(fills.running).toBe(0);
    expect(fills.started).toBe(0);
  });

  test('a fetch that throws rejects every joiner, and the next join tries again', async () => {
    const bytes = randomBytes(1000);
    const digest = sha256(bytes);
    let calls = 0;
    const failing = async (): Promise<UpstreamBlob> => {
      calls += 1;
      await sleep(20);
      throw new Error('upstream down');
    };
    const all = await Promise.allSettled([fills.join(digest, failing), fills.join(digest, failing)]);
    expect(all.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(calls).toBe(1);
    await sleep(5);
    const c = controlled(bytes);
    const fill: BlobFill | undefined = await fills.join(digest, c.fetch);
    c.source.end(bytes);
    expect(await fill!.done).toEqual({ digest, size: bytes.length });
  });

  test('onStored is called once the blob is in place', async () => {
    const stored: unknown[] = [];
    fills = new BlobFills({ store, tempRoot: temp, onStored: (blob) => void stored.push(blob) });
    const bytes = randomBytes(10_000);
    const c = controlled(bytes);
    const fill = (await fills.join(c.digest, c.fetch))!;
    c.source.end(bytes);
    await fill.done;
    expect(stored).toEqual([{ digest: c.digest, size: bytes.length }]);
  });
});
