import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { FsBlobStore, type Digest } from '@wharf/registry-core';
import { BLOCK_SIZE } from '../src/aligned-blocks.js';
import { BlobFills } from '../src/blob-fills.js';
import { fillBudget } from '../src/fill-writer.js';

const sha256 = (b: Buffer): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

/**
 * Past the fills' budget a chunk across a block boundary is held until the block is written (see
 * FillWriter.push). Node emits a paused body's 'end' all the same: the held rest is the blob's end,
 * and a fill that checked its size before taking it failed a complete blob as cut short (found by
 * this session's review of the change).
 */
describe('a body that ends while part of its last chunk is held', () => {
  let dir: string;
  let limit: number;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-held-end-'));
    await mkdir(join(dir, 'tmp'));
    limit = fillBudget.limit;
    fillBudget.limit = 1;
  });
  afterEach(async () => {
    fillBudget.limit = limit;
    await rm(dir, { recursive: true, force: true });
  });

  test.each([true, false])('last chunk and end read together (size known: %s): the fill completes and its client gets every byte', async (known) => {
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const fills = new BlobFills({ store, tempRoot: join(dir, 'tmp') });
    const bytes = randomBytes(BLOCK_SIZE + 5000);
    // The upstream's last chunk and its end, both buffered in the body: 'data', then 'end' a tick later.
    const body = new Readable({ read() {} });
    body.push(bytes.subarray(0, BLOCK_SIZE - 5000));
    body.push(bytes.subarray(BLOCK_SIZE - 5000));
    body.push(null);
    const fill = await fills.join(sha256(bytes), async () => ({ ...(known ? { size: bytes.length } : {}), body }));
    const reader = fill!.reader();
    const got: Buffer[] = [];
    reader.on('data', (c: Buffer) => got.push(c));
    const readerDone = new Promise<void>((resolve, reject) => {
      reader.once('end', resolve);
      reader.once('error', reject);
    });
    await expect(fill!.done).resolves.toEqual({ digest: sha256(bytes), size: bytes.length });
    await readerDone;
    await fills.settled();
    expect(Buffer.concat(got).equals(bytes)).toBe(true);
    expect((await readFile(store.pathOf(sha256(bytes)))).equals(bytes)).toBe(true);
  });

  test('the tail and the end arrive while the fill waits on a held chunk, and the tail is held again', async () => {
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const fills = new BlobFills({ store, tempRoot: join(dir, 'tmp') });
    const bytes = randomBytes(2 * BLOCK_SIZE + 5000);
    const body = new PassThrough({ highWaterMark: 4 * BLOCK_SIZE });
    const fill = await fills.join(sha256(bytes), async () => ({ size: bytes.length, body }));
    body.write(bytes.subarray(0, BLOCK_SIZE - 5000));
    // Across block 1's end: held, the body paused.
    body.write(bytes.subarray(BLOCK_SIZE - 5000, BLOCK_SIZE + 5000));
    await new Promise((r) => setImmediate(r));
    body.end(bytes.subarray(BLOCK_SIZE + 5000));
    await expect(fill!.done).resolves.toEqual({ digest: sha256(bytes), size: bytes.length });
    await fills.settled();
    expect((await readFile(store.pathOf(sha256(bytes)))).equals(bytes)).toBe(true);
  });
});
