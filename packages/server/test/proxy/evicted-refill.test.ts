import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, unlink } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import Koa from 'koa';
import { FsBlobStore, flushDeferredWrites, openDatabase, type BlobInfo, type Digest, type SqliteDatabase } from '@wharf/registry-core';
import { BlobFills, CacheIndex, HttpUpstream, PullThroughRepository } from '@wharf/proxy';
import { sendStream } from '../../src/http/send-stream.js';

/**
 * A blob the cache index has, whose file is gone when it is opened (evicted or purged between the
 * two), is fetched again. Its upstream sends it chunked, so the fill does not know its size; the
 * client was told it (Content-Length, from the index). Its last byte must wait for the digest: here
 * the upstream's bytes are wrong, and the client must not get a complete body of them. (Before, a
 * reader of unknown size sent every byte as it came, the last included.)
 */
const SIZE = 3 * 1024 * 1024 + 17;
const blob = randomBytes(SIZE);
const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}` as Digest;
const wrong = randomBytes(SIZE);

let dir: string;
let db: SqliteDatabase;
let store: FsBlobStore;
let fills: BlobFills;
let repo: PullThroughRepository;
let upstream: Server;
let server: Server;
let url: string;

beforeAll(async () => {
  // An upstream that sends blobs chunked (no Content-Length), here with the wrong bytes.
  upstream = createServer((req, res) => {
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-length': String(SIZE) });
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    // Every byte, then the end of the body a little later (a slow upstream's last packet).
    res.write(wrong);
    setTimeout(() => res.end(), 200);
  });
  upstream.listen(0, '127.0.0.1');
  await new Promise((resolve) => upstream.once('listening', resolve));
  dir = await mkdtemp(join(tmpdir(), 'wharf-audit-refill-'));
  await mkdir(join(dir, 'tmp'));
  db = openDatabase(':memory:');
  store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
  fills = new BlobFills({ store, tempRoot: join(dir, 'tmp') });
  const up = new HttpUpstream({ name: 'up', url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`, retries: 0 });
  const index = new CacheIndex(db);
  repo = new PullThroughRepository(up, index, store, fills);
  // The right blob is cached.
  await store.ingest(Readable.from([blob]), { digest, size: SIZE });
  index.putBlob(digest, SIZE);
  index.link('up', 'alice/app', digest);
  flushDeferredWrites(db);

  const app = new Koa();
  app.use(async (ctx) => {
    // As routes/blobs.ts: blob() first (a cache hit), then the body.
    const found = (await repo.blob('alice/app', digest)) as BlobInfo;
    // Evicted (or `wharf proxy purge`d) between the two.
    await unlink(store.pathOf(digest));
    const body = (await repo.openBlob('alice/app', found))!;
    ctx.status = 200;
    ctx.length = found.size;
    sendStream(ctx, body);
  });
  server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});

afterAll(async () => {
  await fills.settled();
  await new Promise((resolve) => server.close(resolve));
  await new Promise((resolve) => upstream.close(resolve));
  db.close();
  await rm(dir, { recursive: true, force: true });
});

test('a re-fill of unknown size after eviction never hands the client a complete body of bytes the fill then finds wrong', async () => {
  let got: Buffer | undefined;
  try {
    const res = await fetch(url);
    got = Buffer.from(await res.arrayBuffer());
  } catch {
    // cut: what the client must get
  }
  // Before: SIZE bytes, complete as far as Content-Length tells, every one of them wrong.
  expect({ complete: got?.length === SIZE, wrongBytes: got?.equals(wrong) ?? false }).toEqual({ complete: false, wrongBytes: false });
});
