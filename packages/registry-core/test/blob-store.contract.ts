import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { Readable } from 'node:stream';
import type { BlobStore } from '../src/blob-store.js';
import type { Digest } from '../src/digest.js';
import { bytesOf, failingStream, readAll, sha256, sha512, streamOf } from './helpers.js';

export interface BlobStoreFixture {
  readonly store: BlobStore;
  cleanup(): Promise<void>;
  /**
   * Whatever a failed write may have left in the store's temporary space (names of temp files, keys of
   * unfinished multipart uploads...). Every failure test asserts it is empty.
   */
  leftovers?(): Promise<string[]>;
  /** Writes bytes where `adopt()` takes files from; stores without `adopt` from files leave it out. */
  tempFile?(bytes: Buffer): Promise<string>;
}

/**
 * The behaviour every BlobStore must have. A store runs it with a factory that gives a fresh, empty
 * store per test:
 *
 *   describeBlobStore('FsBlobStore', async () => ({ store, cleanup }));
 */
export function describeBlobStore(name: string, make: () => Promise<BlobStoreFixture>): void {
  describe(`BlobStore contract: ${name}`, () => {
    let fx: BlobStoreFixture;
    let store: BlobStore;

    beforeEach(async () => {
      fx = await make();
      store = fx.store;
    });

    afterEach(async () => {
      await fx.cleanup();
    });

    async function expectNothingLeft(): Promise<void> {
      if (fx.leftovers) expect(await fx.leftovers()).toEqual([]);
    }

    const content = Buffer.from('hello, registry\n');
    const digest = sha256(content);

    describe('absence is a value', () => {
      test('stat of an unknown digest is undefined', async () => {
        expect(await store.stat(digest)).toBeUndefined();
      });

      test('open of an unknown digest is undefined', async () => {
        expect(await store.open(digest)).toBeUndefined();
        expect(await store.open(digest, { start: 0, end: 1 })).toBeUndefined();
      });

      test('remove of an unknown digest is false', async () => {
        expect(await store.remove(digest)).toBe(false);
      });
    });

    describe('ingest', () => {
      test('with the right digest and size, stat and open give back the same blob', async () => {
        const info = await store.ingest(streamOf('hello, ', 'registry\n'), { digest, size: content.length });
        expect(info).toEqual({ digest, size: content.length });
        expect(await store.stat(digest)).toEqual({ digest, size: content.length });
        expect((await readAll(await store.open(digest))).equals(content)).toBe(true);
        await expectNothingLeft();
      });

      test('with the right digest and no declared size', async () => {
        expect(await store.ingest(streamOf(content), { digest })).toEqual({ digest, size: content.length });
        expect(await store.stat(digest)).toEqual({ digest, size: content.length });
      });

      test('an empty blob', async () => {
        const empty = sha256(Buffer.alloc(0));
        expect(await store.ingest(streamOf(), { digest: empty, size: 0 })).toEqual({ digest: empty, size: 0 });
        expect(await store.stat(empty)).toEqual({ digest: empty, size: 0 });
        expect((await readAll(await store.open(empty))).length).toBe(0);
      });

      test('a multi-megabyte blob arriving in many chunks keeps every byte', async () => {
        const big = bytesOf(3 * 1024 * 1024 + 17, 7);
        const chunks: Buffer[] = [];
        for (let i = 0; i < big.length; i += 64 * 1024 + 3) chunks.push(big.subarray(i, i + 64 * 1024 + 3));
        const d = sha256(big);
        expect(await store.ingest(streamOf(...chunks), { digest: d, size: big.length })).toEqual({ digest: d, size: big.length });
        const back = await readAll(await store.open(d));
        expect(back.length).toBe(big.length);
        expect(sha256(back)).toBe(d);
      });

      test('with the wrong digest: DIGEST_INVALID, and nothing is visible or left behind', async () => {
        const wrong = sha256('something else');
        await expect(store.ingest(streamOf(content), { digest: wrong, size: content.length })).rejects.toMatchObject({
          name: 'RegistryError',
          code: 'DIGEST_INVALID',
        });
        expect(await store.stat(wrong)).toBeUndefined();
        expect(await store.stat(digest)).toBeUndefined();
        expect(await store.open(wrong)).toBeUndefined();
        await expectNothingLeft();
      });

      test('content longer than its declared size: SIZE_INVALID, and nothing is visible or left behind', async () => {
        await expect(store.ingest(streamOf('hello, ', 'registry\n'), { digest, size: content.length - 1 })).rejects.toMatchObject({
          code: 'SIZE_INVALID',
        });
        expect(await store.stat(digest)).toBeUndefined();
        await expectNothingLeft();
      });

      test('content shorter than its declared size: SIZE_INVALID, and nothing is visible or left behind', async () => {
        await expect(store.ingest(streamOf(content), { digest, size: content.length + 1 })).rejects.toMatchObject({
          code: 'SIZE_INVALID',
        });
        expect(await store.stat(digest)).toBeUndefined();
        await expectNothingLeft();
      });

      test('a size mismatch is refused even without a digest to check', async () => {
        await expect(store.ingest(streamOf(content), { size: content.length + 5 })).rejects.toMatchObject({ code: 'SIZE_INVALID' });
        expect(await store.stat(digest)).toBeUndefined();
        await expectNothingLeft();
      });

      test('a body far longer than its declared size is cut off early, not read to its end', async () => {
        const piece = Buffer.alloc(64 * 1024, 7);
        let pulled = 0;
        const endless = Readable.from(
          (function* () {
            for (let i = 0; i < 2000; i++) {
              pulled += 1;
              yield piece;
            }
          })(),
        );
        await expect(store.ingest(endless, { digest, size: 100 })).rejects.toMatchObject({ code: 'SIZE_INVALID' });
        expect(pulled).toBeLessThan(50);
        await expectNothingLeft();
      });

      test('a source that fails midway rejects with its error and leaves nothing behind', async () => {
        const half = content.subarray(0, 5);
        await expect(store.ingest(failingStream(half, 'connection reset'), { digest, size: content.length })).rejects.toThrow(
          'connection reset',
        );
        expect(await store.stat(digest)).toBeUndefined();
        expect(await store.stat(sha256(half))).toBeUndefined();
        await expectNothingLeft();
      });

      test('a source that fails midway without a declared digest leaves nothing behind', async () => {
        await expect(store.ingest(failingStream(content), {})).rejects.toThrow('connection reset');
        expect(await store.stat(digest)).toBeUndefined();
        await expectNothingLeft();
      });

      test('an aborted ingest rejects and leaves nothing behind', async () => {
        const controller = new AbortController();
        controller.abort();
        await expect(store.ingest(streamOf(content), { digest }, controller.signal)).rejects.toThrow();
        expect(await store.stat(digest)).toBeUndefined();
        await expectNothingLeft();
      });

      test('a malformed expected digest is DIGEST_INVALID', async () => {
        await expect(store.ingest(streamOf(content), { digest: 'sha256:1234' as Digest })).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
        await expectNothingLeft();
      });

      test('without a digest, the store computes the sha256 digest', async () => {
        expect(await store.ingest(streamOf('hello, ', 'registry\n'), {})).toEqual({ digest, size: content.length });
        expect((await readAll(await store.open(digest))).equals(content)).toBe(true);
      });

      test('without a digest, the store hashes with the requested algorithm', async () => {
        const d512 = sha512(content);
        expect(await store.ingest(streamOf(content), { algorithm: 'sha512' })).toEqual({ digest: d512, size: content.length });
        expect(await store.stat(d512)).toEqual({ digest: d512, size: content.length });
        expect(await store.stat(digest)).toBeUndefined();
      });

      test('a sha512 digest is verified with sha512 and stored under it', async () => {
        const d512 = sha512(content);
        expect(await store.ingest(streamOf(content), { digest: d512, size: content.length })).toEqual({ digest: d512, size: content.length });
        expect(await store.stat(d512)).toEqual({ digest: d512, size: content.length });
        expect((await readAll(await store.open(d512))).equals(content)).toBe(true);
        // the same bytes under sha256 are a different, absent blob
        expect(await store.stat(digest)).toBeUndefined();
      });

      test('a wrong sha512 digest is DIGEST_INVALID', async () => {
        const wrong = sha512('other');
        await expect(store.ingest(streamOf(content), { digest: wrong })).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
        expect(await store.stat(wrong)).toBeUndefined();
        expect(await store.stat(sha512(content))).toBeUndefined();
        await expectNothingLeft();
      });

      test('ingesting the same content again is idempotent', async () => {
        const first = await store.ingest(streamOf(content), { digest, size: content.length });
        const second = await store.ingest(streamOf('hello', ', registry\n'), { digest, size: content.length });
        expect(second).toEqual(first);
        expect(await store.stat(digest)).toEqual({ digest, size: content.length });
        expect((await readAll(await store.open(digest))).equals(content)).toBe(true);
        await expectNothingLeft();
      });

      test('concurrent ingests of the same content both succeed', async () => {
        const results = await Promise.all([
          store.ingest(streamOf(content), { digest }),
          store.ingest(streamOf(content), { digest }),
          store.ingest(streamOf(content), { digest }),
        ]);
        for (const r of results) expect(r).toEqual({ digest, size: content.length });
        expect((await readAll(await store.open(digest))).equals(content)).toBe(true);
        await expectNothingLeft();
      });

      test('a failed ingest does not disturb an existing blob with the same digest', async () => {
        await store.ingest(streamOf(content), { digest });
        await expect(store.ingest(streamOf('tampered content!'), { digest })).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
        expect((await readAll(await store.open(digest))).equals(content)).toBe(true);
        await expectNothingLeft();
      });
    });

    describe('open with a range', () => {
      const data = Buffer.from('0123456789abcdef');
      const d = sha256(data);

      beforeEach(async () => {
        await store.ingest(streamOf(data), { digest: d, size: data.length });
      });

      test('returns the inclusive range', async () => {
        expect((await readAll(await store.open(d, { start: 2, end: 5 }))).toString()).toBe('2345');
      });

      test('a one-byte range', async () => {
        expect((await readAll(await store.open(d, { start: 10, end: 10 }))).toString()).toBe('a');
      });

      test('a range to the last byte', async () => {
        expect((await readAll(await store.open(d, { start: 12, end: data.length - 1 }))).toString()).toBe('cdef');
      });

      test('the whole blob as a range', async () => {
        expect((await readAll(await store.open(d, { start: 0, end: data.length - 1 }))).equals(data)).toBe(true);
      });

      test('a range inside a large blob', async () => {
        const big = bytesOf(2 * 1024 * 1024, 3);
        const bd = sha256(big);
        await store.ingest(streamOf(big), { digest: bd });
        const start = 1024 * 1024 - 10;
        const end = 1024 * 1024 + 300_000;
        expect((await readAll(await store.open(bd, { start, end }))).equals(big.subarray(start, end + 1))).toBe(true);
      });
    });

    describe('remove', () => {
      test('removes the blob: stat and open are undefined afterwards', async () => {
        await store.ingest(streamOf(content), { digest });
        expect(await store.remove(digest)).toBe(true);
        expect(await store.stat(digest)).toBeUndefined();
        expect(await store.open(digest)).toBeUndefined();
        expect(await store.remove(digest)).toBe(false);
      });

      test('removes only the named blob', async () => {
        const other = Buffer.from('another blob');
        await store.ingest(streamOf(content), { digest });
        await store.ingest(streamOf(other), { digest: sha256(other) });
        await store.remove(digest);
        expect(await store.stat(sha256(other))).toEqual({ digest: sha256(other), size: other.length });
      });

      test('a removed blob can be ingested again', async () => {
        await store.ingest(streamOf(content), { digest });
        await store.remove(digest);
        await store.ingest(streamOf(content), { digest });
        expect((await readAll(await store.open(digest))).equals(content)).toBe(true);
      });
    });

    describe('adopt', () => {
      test('moves a verified temporary file into place', async () => {
        if (!fx.tempFile) return;
        const file = await fx.tempFile(content);
        await store.adopt(file, { digest, size: content.length });
        expect(await store.stat(digest)).toEqual({ digest, size: content.length });
        expect((await readAll(await store.open(digest))).equals(content)).toBe(true);
        await expectNothingLeft();
      });

      test('adopting content that is already stored keeps it readable', async () => {
        if (!fx.tempFile) return;
        await store.ingest(streamOf(content), { digest });
        await store.adopt(await fx.tempFile(content), { digest, size: content.length });
        expect((await readAll(await store.open(digest))).equals(content)).toBe(true);
        await expectNothingLeft();
      });
    });
  });
}
