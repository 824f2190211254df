// Manifests live in a rowid table, their bytes out of the key's B-tree: in the `WITHOUT ROWID` table
// the first schema made, every key comparison read a whole row, and a few 4 MiB manifests slowed every
// manifest lookup in every repository (docs/MEASURED.md, "Thirty-fifth session"). A database made
// before is rebuilt at its first open, keeping every row, tag, reference and mark.
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDatabase, type SqliteDatabase } from '../src/sqlite/database.js';
import { Database } from '../src/sqlite/driver.js';
import { ensureRowidTable } from '../src/sqlite/rowid-tables.js';
import { MANIFESTS, MIGRATIONS, MANIFEST_GRACE } from '../src/sqlite/schema.js';
import { BROKEN_MANIFEST_WARNING, SqliteMetadataStore } from '../src/sqlite/sqlite-metadata-store.js';
import { parseManifest } from '../src/manifest.js';
import { testImage } from './metadata-store.contract.js';
import { sha256 } from './helpers.js';

const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

function withoutRowid(db: SqliteDatabase, table: string): boolean {
  return (db.prepare("SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?").get(table) as { wr: number }).wr === 1;
}

describe('the manifests table', () => {
  let dir: string;
  let file: string;
  const open: SqliteDatabase[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-rowid-'));
    file = join(dir, 'metadata.db');
  });
  afterEach(async () => {
    for (const db of open.splice(0)) if (db.open) db.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** A database as Wharf made it before this change: the numbered migrations only. */
  function openAsBefore(): SqliteDatabase {
    const db = new Database(file);
    open.push(db);
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    for (const [v, sql] of MIGRATIONS.entries()) {
      db.exec(sql);
      db.pragma(`user_version = ${v + 1}`);
    }
    // What this build's store writes beside them (its foreign key then points at the table rebuilt).
    db.exec(MANIFEST_GRACE);
    return db;
  }

  function reopen(): SqliteDatabase {
    const db = openDatabase(file);
    open.push(db);
    return db;
  }

  test('a new database has it as a rowid table, its bytes in the last column', () => {
    const db = reopen();
    expect(withoutRowid(db, 'manifests')).toBe(false);
    const columns = db.prepare("SELECT name FROM pragma_table_info('manifests')").pluck().all() as string[];
    expect(columns.at(-1)).toBe('content');
  });

  test('a database made before is rebuilt at its first open, keeping manifests, tags, references, referrers and marks', async () => {
    const before = openAsBefore();
    expect(withoutRowid(before, 'manifests')).toBe(true);
    const old = new SqliteMetadataStore(before);
    const img = testImage('kept');
    const other = testImage('other');
    for (const image of [img, other]) {
      await old.linkBlob('alice/app', { digest: sha256(image.config), size: image.config.length });
      await old.linkBlob('alice/app', { digest: sha256(image.layer), size: image.layer.length });
    }
    await old.putManifest('alice/app', img.manifest, img.bytes, ['1', 'latest']);
    await old.putManifest('alice/app', other.manifest, other.bytes, ['other']);
    const indexBytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [{ mediaType: img.manifest.mediaType, digest: img.digest, size: img.bytes.length }],
        subject: { mediaType: img.manifest.mediaType, digest: other.digest, size: other.bytes.length },
        artifactType: 'application/x.test',
        annotations: { note: 'a referrer' },
      }),
    );
    const index = parseManifest(indexBytes, OCI_INDEX);
    await old.putManifest('alice/app', index, indexBytes, ['index']);
    // Tags deleted from both: the records of when they were untagged (gc's grace) point at the table too.
    for (const [image, tag] of [[img, 'gone-1'], [other, 'gone-2']] as const) {
      await old.putManifest('alice/app', image.manifest, image.bytes, [tag]);
      expect(await old.deleteTag('alice/app', tag)).toBe(true);
    }
    before.prepare('UPDATE manifests SET broken = 1 WHERE digest = ?').run(other.digest);
    before.close();

    const db = reopen();
    expect(withoutRowid(db, 'manifests')).toBe(false);
    expect(db.pragma('foreign_key_check')).toEqual([]);
    expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
    const store = new SqliteMetadataStore(db);
    expect((await store.taggedManifest('alice/app', 'latest'))?.bytes.equals(img.bytes)).toBe(true);
    expect((await store.manifest('alice/app', index.digest))?.bytes.equals(indexBytes)).toBe(true);
    expect((await store.manifest('alice/app', other.digest))?.warning).toBe(BROKEN_MANIFEST_WARNING);
    expect(await store.tags('alice/app', {})).toEqual(['1', 'index', 'latest', 'other']);
    expect(await store.referrers('alice/app', other.digest)).toEqual([
      { mediaType: OCI_INDEX, digest: index.digest, size: indexBytes.length, artifactType: 'application/x.test', annotations: { note: 'a referrer' } },
    ]);
    expect(store.lifecycle().manifestsReferencing(sha256(img.layer))).toEqual([{ repo: 'alice/app', digest: img.digest }]);

    // The references' and tags' foreign keys point at the new table: a delete still takes them along.
    expect(await store.deleteManifest('alice/app', img.digest)).toBe(true);
    expect(await store.tags('alice/app', {})).toEqual(['index', 'other']);
    expect(store.lifecycle().manifestsReferencing(sha256(img.layer))).toEqual([]);
    expect(db.prepare('SELECT COUNT(*) FROM manifest_references WHERE parent = ?').pluck().get(img.digest)).toBe(0);
    expect(db.prepare('SELECT digest FROM manifest_grace').pluck().all()).toEqual([other.digest]);

    // And a push after the rebuild, and a second open, which has nothing left to do.
    await store.putManifest('alice/app', img.manifest, img.bytes, ['again']);
    expect((await store.taggedManifest('alice/app', 'again'))?.digest).toBe(img.digest);
    expect(ensureRowidTable(db, MANIFESTS)).toBe(false);
  });

  test('a table a Wharf of 6 December rebuilt with the earlier subject index gets the referrers index at the next open', () => {
    const indexes = (db: SqliteDatabase) =>
      (db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'manifests' AND sql IS NOT NULL ORDER BY name").pluck().all() as string[]);
    const before = openAsBefore();
    // What that build's rebuild left: a rowid table with manifests_subject, and no manifests_referrers.
    ensureRowidTable(before, { ...MANIFESTS, indexes: 'CREATE INDEX IF NOT EXISTS manifests_subject ON manifests(repository_id, subject) WHERE subject IS NOT NULL;' });
    expect(withoutRowid(before, 'manifests')).toBe(false);
    expect(indexes(before)).toEqual(['manifests_subject']);
    before.close();
    const db = reopen();
    expect(indexes(db)).toEqual(['manifests_referrers']);
    const plan = db
      .prepare("EXPLAIN QUERY PLAN SELECT digest FROM manifests WHERE repository_id = 1 AND subject = 'x' AND digest > '' ORDER BY digest")
      .all() as { detail: string }[];
    expect(plan.map((row) => row.detail).join('\n')).toContain('manifests_referrers');
  });

  test('a rebuild asked inside a transaction is refused, and nothing is lost (the drop would cascade there)', async () => {
    const before = openAsBefore();
    const old = new SqliteMetadataStore(before);
    const img = testImage('in-transaction');
    await old.linkBlob('alice/app', { digest: sha256(img.config), size: img.config.length });
    await old.linkBlob('alice/app', { digest: sha256(img.layer), size: img.layer.length });
    await old.putManifest('alice/app', img.manifest, img.bytes, ['1']);
    before.exec('BEGIN');
    expect(() => ensureRowidTable(before, MANIFESTS)).toThrow(/inside a transaction/);
    before.exec('COMMIT');
    expect(before.prepare('SELECT COUNT(*) FROM tags').pluck().get()).toBe(1);
    expect(withoutRowid(before, 'manifests')).toBe(true);
  });

  test('an earlier Wharf can still write the rebuilt table: the column names are the same', () => {
    reopen().close();
    const db = new Database(file);
    open.push(db);
    db.pragma('foreign_keys = ON');
    db.prepare('INSERT INTO repositories (name, created_at) VALUES (?, ?)').run('bob/app', 1);
    // The insert of the first schema's code: named columns, no id.
    db.prepare(
      `INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, annotations, size, content, created_at)
       VALUES (1, 'sha256:${'a'.repeat(64)}', 'application/vnd.oci.image.manifest.v1+json', NULL, NULL, NULL, 2, X'7b7d', 1)
       ON CONFLICT DO UPDATE SET broken = 0, created_at = excluded.created_at`,
    ).run();
    db.prepare("INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (1, 'x', ?, 1)").run(`sha256:${'a'.repeat(64)}`);
    expect(db.prepare('SELECT content FROM manifests m JOIN tags t ON t.digest = m.digest').pluck().get()).toEqual(Buffer.from('{}'));
  });
});
