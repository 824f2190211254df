// The proxy's tables of large values (manifest bytes, tag lists, referrers) are rowid tables, their
// keys in unique indexes: in the `WITHOUT ROWID` tables an earlier Wharf made, each key comparison
// read a whole row (rowid-tables.ts in registry-core). A cache made before keeps every row: it is what
// the proxy serves while the upstream is down.
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDatabase, type Digest, type SqliteDatabase } from '@wharf/registry-core';
import { CacheIndex } from '../src/cache-index.js';

/** The three tables as the proxy created them before. */
const BEFORE = `
  CREATE TABLE proxy_manifests (
    upstream TEXT NOT NULL, repository TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL,
    content BLOB NOT NULL, fetched_at INTEGER NOT NULL, accessed_at INTEGER NOT NULL,
    PRIMARY KEY (upstream, repository, digest)
  ) WITHOUT ROWID;
  CREATE TABLE proxy_referrers (
    upstream TEXT NOT NULL, repository TEXT NOT NULL, subject TEXT NOT NULL, descriptors TEXT NOT NULL,
    fetched_at INTEGER NOT NULL, accessed_at INTEGER NOT NULL,
    PRIMARY KEY (upstream, repository, subject)
  ) WITHOUT ROWID;
  CREATE TABLE proxy_tag_lists (
    upstream TEXT NOT NULL, repository TEXT NOT NULL, tags TEXT NOT NULL, whole INTEGER NOT NULL,
    fetched_at INTEGER NOT NULL, accessed_at INTEGER NOT NULL,
    PRIMARY KEY (upstream, repository)
  ) WITHOUT ROWID;
`;
const TABLES = ['proxy_manifests', 'proxy_referrers', 'proxy_tag_lists'];
const D1 = `sha256:${'1'.repeat(64)}` as Digest;
const D2 = `sha256:${'2'.repeat(64)}` as Digest;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

describe('the proxy cache tables of large values', () => {
  let dir: string;
  let db: SqliteDatabase;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-rowid-cache-'));
    db = openDatabase(join(dir, 'w.db'));
  });
  afterEach(async () => {
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  const withoutRowid = (table: string) =>
    (db.prepare("SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?").get(table) as { wr: number }).wr === 1;

  test('a new cache has them as rowid tables, the large column last', () => {
    new CacheIndex(db);
    for (const table of TABLES) {
      expect(withoutRowid(table)).toBe(false);
      const columns = db.prepare(`SELECT name FROM pragma_table_info('${table}')`).pluck().all() as string[];
      expect(columns.at(-1)).toBe({ proxy_manifests: 'content', proxy_referrers: 'descriptors', proxy_tag_lists: 'tags' }[table]);
    }
  });

  test('a cache made before is rebuilt keeping every row, and is written as before', () => {
    db.exec(BEFORE);
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, pad: 'x'.repeat(64 * 1024) }));
    db.prepare('INSERT INTO proxy_manifests VALUES (?, ?, ?, ?, ?, ?, ?)').run('docker.io', 'library/alpine', D1, OCI_MANIFEST, bytes, 10, 20);
    db.prepare('INSERT INTO proxy_referrers VALUES (?, ?, ?, ?, ?, ?)').run('docker.io', 'library/alpine', D1, JSON.stringify([{ mediaType: OCI_MANIFEST, digest: D2, size: 3 }]), 11, 21);
    db.prepare('INSERT INTO proxy_tag_lists VALUES (?, ?, ?, ?, ?, ?)').run('docker.io', 'library/alpine', JSON.stringify(['3.19', '3.20']), 1, 12, 22);
    for (const table of TABLES) expect(withoutRowid(table)).toBe(true);

    const index = new CacheIndex(db);
    for (const table of TABLES) expect(withoutRowid(table)).toBe(false);
    expect(index.manifest('docker.io', 'library/alpine', D1)?.bytes.equals(bytes)).toBe(true);
    expect(index.referrersEntry('docker.io', 'library/alpine', D1)).toEqual({ descriptors: [{ mediaType: OCI_MANIFEST, digest: D2, size: 3 }], fetchedAt: 11 });
    expect(index.tagList('docker.io', 'library/alpine')).toEqual({ tags: ['3.19', '3.20'], whole: true, fetchedAt: 12 });
    expect(db.prepare('SELECT accessed_at FROM proxy_manifests').pluck().get()).toBe(20);

    // Upserts find the keys in the unique indexes: one row each, updated in place.
    index.putManifest('docker.io', 'library/alpine', { digest: D1, mediaType: OCI_MANIFEST, bytes }, 30);
    index.putManifest('docker.io', 'library/alpine', { digest: D2, mediaType: OCI_MANIFEST, bytes: Buffer.from('{}') }, 30);
    index.putTagList('docker.io', 'library/alpine', ['3.21'], false, 31);
    index.putReferrers('docker.io', 'library/alpine', D1, [], 32);
    expect(db.prepare('SELECT digest, accessed_at FROM proxy_manifests ORDER BY digest').all()).toEqual([
      { digest: D1, accessed_at: 30 },
      { digest: D2, accessed_at: 30 },
    ]);
    expect(index.tagList('docker.io', 'library/alpine')).toEqual({ tags: ['3.21'], whole: false, fetchedAt: 31 });
    expect(index.referrers('docker.io', 'library/alpine', D1)).toEqual([]);

    // A second index on the same database (the CLI's, a restart) finds nothing left to rebuild.
    new CacheIndex(db);
    expect(db.prepare('SELECT COUNT(*) FROM proxy_manifests').pluck().get()).toBe(2);
  });
});
