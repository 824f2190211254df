import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseManifest } from '../src/manifest.js';
import { openDatabase, type SqliteDatabase } from '../src/sqlite/database.js';
import { SqliteMetadataStore } from '../src/sqlite/sqlite-metadata-store.js';
import { ManifestCache } from '../src/sqlite/manifest-cache.js';
import { OCI_CONFIG, OCI_MANIFEST, descriptorOf } from './helpers.js';

function manifestBytes(seed: string) {
  const config = descriptorOf(`{"seed":"${seed}"}`, OCI_CONFIG);
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers: [] }));
  return { bytes, config, parsed: parseManifest(bytes, OCI_MANIFEST) };
}

describe('manifest reads are cached without ever serving a stale answer to this process', () => {
  let dir: string;
  let db: SqliteDatabase;
  let store: SqliteMetadataStore;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-mcache-'));
    db = openDatabase(join(dir, 'db'));
    store = new SqliteMetadataStore(db);
  });
  afterEach(async () => {
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function push(seed: string, tag: string) {
    const m = manifestBytes(seed);
    await store.linkBlob('a/b', { digest: m.config.digest, size: m.config.size });
    await store.putManifest('a/b', m.parsed, m.bytes, [tag]);
    return m.parsed.digest;
  }

  test('a miss, then a push: the next read finds it', async () => {
    expect(await store.taggedManifest('a/b', 'x')).toBeUndefined();
    const digest = await push('1', 'x');
    expect((await store.taggedManifest('a/b', 'x'))?.digest).toBe(digest);
  });

  test('a tag moved by a push is read at its new manifest at once', async () => {
    await push('1', 'x');
    expect(await store.taggedManifest('a/b', 'x')).toBeDefined();
    const second = await push('2', 'x');
    expect((await store.taggedManifest('a/b', 'x'))?.digest).toBe(second);
  });

  test('a deleted tag or manifest is gone at once', async () => {
    const digest = await push('1', 'x');
    expect(await store.manifest('a/b', digest)).toBeDefined();
    await store.deleteTag('a/b', 'x');
    expect(await store.taggedManifest('a/b', 'x')).toBeUndefined();
    await store.deleteManifest('a/b', digest);
    expect(await store.manifest('a/b', digest)).toBeUndefined();
  });

  test("a manifest another process removed with its links is not served once its layer answered 404, within the 0.1 s of outside writes", async () => {
    const digest = await push('1', 'x');
    const config = manifestBytes('1').config.digest;
    expect(await store.manifest('a/b', digest)).toBeDefined();
    // Another process (`wharf gc`) on the same file: the manifest and its link go in one transaction.
    const other = openDatabase(join(dir, 'db'));
    try {
      const gc = new SqliteMetadataStore(other);
      await gc.deleteTag('a/b', 'x');
      await gc.deleteManifest('a/b', digest);
      await gc.unlinkBlob('a/b', config);
    } finally {
      other.close();
    }
    // A layer's HEAD (the renewing look) answers 404, then its GET would too: the manifest is gone with it.
    expect(await store.renewBlobLink('a/b', config)).toBeUndefined();
    expect(await store.manifest('a/b', digest)).toBeUndefined();
  });

  test('entries expire after the TTL and the oldest go first past the size limit', () => {
    const cache = new ManifestCache(2, 1000);
    const m = { digest: 'sha256:x' as const, mediaType: OCI_MANIFEST, bytes: Buffer.from('{}') };
    cache.set('r', 'a', m as never, 0);
    expect(cache.get('r', 'a', 999)).toBeDefined();
    expect(cache.get('r', 'a', 1000)).toBeUndefined();
    cache.set('r', 'a', m as never, 0);
    cache.set('r', 'b', m as never, 0);
    cache.set('r', 'c', m as never, 0);
    expect(cache.get('r', 'a', 1)).toBeUndefined();
    expect(cache.get('r', 'c', 1)).toBeDefined();
  });
});
