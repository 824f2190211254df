import type { RowidTable } from './rowid-tables.js';

/** Schema migrations, applied in order; `user_version` records how many ran. */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE repositories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
  );
  CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE repository_blobs (
    repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest TEXT NOT NULL REFERENCES blobs(digest),
    linked_at INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
  ) WITHOUT ROWID;
  CREATE INDEX repository_blobs_digest ON repository_blobs(digest);
  CREATE TABLE manifests (
    repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    annotations TEXT,
    size INTEGER NOT NULL,
    content BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
  ) WITHOUT ROWID;
  CREATE INDEX manifests_subject ON manifests(repository_id, subject) WHERE subject IS NOT NULL;
  CREATE TABLE manifest_references (
    repository_id INTEGER NOT NULL,
    parent TEXT NOT NULL,
    child TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
    PRIMARY KEY (repository_id, parent, kind, child),
    FOREIGN KEY (repository_id, parent) REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
  ) WITHOUT ROWID;
  CREATE INDEX manifest_references_child ON manifest_references(child);
  CREATE TABLE tags (
    repository_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (repository_id, name),
    FOREIGN KEY (repository_id, digest) REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
  ) WITHOUT ROWID;
  `,
  // Storage lifecycle (gc, retention, fsck): when a tag was last pulled (written at most once a minute
  // per tag), manifests that fsck found referencing missing content, and leases that keep a blob's file
  // from garbage collection while a push places and links it (see gc/garbage-collector.ts).
  `
  ALTER TABLE tags ADD COLUMN last_pulled_at INTEGER;
  ALTER TABLE manifests ADD COLUMN broken INTEGER NOT NULL DEFAULT 0;
  CREATE TABLE blob_leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest TEXT NOT NULL,
    expires_at INTEGER NOT NULL
  );
  CREATE INDEX blob_leases_digest ON blob_leases(digest);
  `,
];

/**
 * The manifests table as it is after the migrations: a rowid table, its bytes last (see
 * rowid-tables.ts; the first migration made it `WITHOUT ROWID`). Rebuilt outside the numbered
 * migrations, with the same columns, so that an older Wharf still opens the database.
 */
export const MANIFESTS: RowidTable = {
  name: 'manifests',
  columns: `(
    id INTEGER PRIMARY KEY,
    repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    artifact_type TEXT,
    subject TEXT,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    broken INTEGER NOT NULL DEFAULT 0,
    annotations TEXT,
    content BLOB NOT NULL,
    UNIQUE (repository_id, digest)
  )`,
  // A subject's referrers in digest order, a page of them at a time (referrers-page.ts).
  indexes: 'CREATE INDEX IF NOT EXISTS manifests_referrers ON manifests(repository_id, subject, digest) WHERE subject IS NOT NULL;',
};

/**
 * Indexes that change no table: created when missing, outside the numbered migrations, so that an
 * older Wharf, which ignores them, still opens the database (a rollback keeps working).
 */
export const INDEXES = `
  -- Tag lists in the spec's lexical, case-insensitive order, a page at a time.
  CREATE INDEX IF NOT EXISTS tags_listing ON tags(repository_id, name COLLATE NOCASE, name);
  -- The tags of a manifest, which its delete (gc, retention, DELETE) looks for through the foreign
  -- key: without it each delete read every tag of the repository (2,000 untagged manifests beside
  -- 20,000 tags: 5.8 s of the event loop). On the digest alone: SQLite's foreign-key scan did not
  -- take an index on (repository_id, digest) over the primary key's repository_id.
  CREATE INDEX IF NOT EXISTS tags_digest ON tags(digest);
`;

/**
 * When a manifest's gc grace last started over other than by its push: a tag left it (moved to another
 * manifest, or deleted), or a push's HEAD asked for it by digest (a client that will reference it from
 * an index without sending it again). With `delete_untagged`, an untagged manifest stays while either
 * this or its push is within the grace: a pull that resolved the tag just before it moved keeps the
 * layers under it, as an index keeps the children its push skipped. A row goes with its manifest.
 * Created when missing, outside the numbered migrations: an older Wharf ignores it (it does not start
 * graces over, as before) and still opens the database.
 */
export const MANIFEST_GRACE = `
  CREATE TABLE IF NOT EXISTS manifest_grace (
    repository_id INTEGER NOT NULL,
    digest TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest),
    FOREIGN KEY (repository_id, digest) REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
  ) WITHOUT ROWID;
`;
