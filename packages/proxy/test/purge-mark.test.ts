// A purge cut short marks the blobs it orphaned (accessed_at 0) so that the next sweep finishes it:
// an access time queued before the purge must not undo the mark, and a marked blob linked again is in use.
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FsBlobStore, flushDeferredWrites, openDatabase, type BlobStore, type Digest, type SqliteDatabase } from '@wharf/registry-core';
import { CacheEviction } from '../src/cache-eviction.js';
import { CacheIndex } from '../src/cache-index.js';

const N = 300; // more than one REMOVE_BATCH (256): the purge is cut short after its first batch
const DAY = 86_400_000;

describe('a purge cut short, and the mark on the blobs it orphaned', () => {
  let dir: string;
  let own: SqliteDatabase; // the server's connection
  let other: SqliteDatabase; // the CLI's (`wharf proxy purge`)
  let store: FsBlobStore;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-purge-mark-'));
    await mkdir(join(dir, 'tmp'));
    own = openDatabase(join(dir, 'w.db'));
    other = openDatabase(join(dir, 'w.db'));
    store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
  });
  afterEach(async () => {
    own.close();
    other.close();
    await rm(dir, { recursive: true, force: true });
  });

  const digests = Array.from({ length: N }, (_, i) => `sha256:${i.toString(16).padStart(64, '0')}` as Digest);
  // The CLI killed after the purge's first batch of rows: its file removal never returns.
  const killed = { remove: async () => { throw new Error('killed'); } } as unknown as BlobStore;

  function cache(index: CacheIndex) {
    for (const d of digests) {
      index.putBlob(d, 10);
      index.link('up', 'a/app', d);
    }
  }
  const left = () => other.prepare('SELECT digest, accessed_at FROM proxy_blobs').all() as { digest: Digest; accessed_at: number }[];

  test('an access time queued before the purge, written after it, does not undo its mark: the next sweep finishes the purge', async () => {
    const index = new CacheIndex(own);
    cache(index);
    for (const d of digests) expect(index.blob('up', 'a/app', d)).toBe(10); // pulls: access times queued (written within 5 s)
    await expect(new CacheEviction(other, killed).purge('up', 'a/app')).rejects.toThrow('killed');
    expect(left().length).toBe(N - 256);
    expect(left().every((r) => r.accessed_at === 0)).toBe(true);
    flushDeferredWrites(own); // the server's flush, a few seconds later
    expect(left().every((r) => r.accessed_at === 0)).toBe(true);
    await new CacheEviction(own, store).sweep({ cacheTtl: 90 * DAY, maxSize: 0 });
    expect(left().length).toBe(0);
  });

  test('a marked blob linked again (pulled for a repository) is in use: the next sweep keeps it', async () => {
    const index = new CacheIndex(own);
    cache(index);
    await expect(new CacheEviction(other, killed).purge('up', 'a/app')).rejects.toThrow('killed');
    const d = left()[0]!.digest;
    // The next pull of a/app (pull-through.ts cachedOrFilledBlob): not linked here, cached for none;
    // anyBlob finds the row, the upstream has the blob: linked, served from the cache.
    expect(index.blob('up', 'a/app', d)).toBeUndefined();
    expect(index.anyBlob(d)).toBe(10);
    index.link('up', 'a/app', d);
    flushDeferredWrites(own);
    await new CacheEviction(own, store).sweep({ cacheTtl: 90 * DAY, maxSize: 0 });
    // Linked and pulled a moment ago, within cache_ttl: should stay cached.
    expect(index.blob('up', 'a/app', d)).toBe(10);
  });
});
