import { pendingBlobRows, type PendingBlobRows } from './pending-blob-rows.js';
import { createRowidTable, deferredWrites, ensureRowidTable, NOTE_INTERVAL_MS, type RowidTable, type DeferredWrites, type Descriptor, type Digest, type SqliteDatabase, type SqliteStatement as Statement, type StoredManifest } from '@wharf/registry-core';

/**
 * The tables that hold large values (manifest bytes up to 4 MiB, an upstream's whole tag list, a
 * subject's referrers): rowid tables, large column last, their keys in unique indexes. An earlier
 * Wharf made them `WITHOUT ROWID`, where each key comparison reads the whole row (rowid-tables.ts).
 */
const LARGE_ROW_TABLES: readonly RowidTable[] = [
  {
    name: 'proxy_manifests',
    columns: `(
      id INTEGER PRIMARY KEY,
      upstream TEXT NOT NULL,
      repository TEXT NOT NULL,
      digest TEXT NOT NULL,
      media_type TEXT NOT NULL,
      fetched_at INTEGER NOT NULL,
      accessed_at INTEGER NOT NULL,
      content BLOB NOT NULL,
      UNIQUE (upstream, repository, digest)
    )`,
    indexes: '',
  },
  {
    name: 'proxy_referrers',
    columns: `(
      id INTEGER PRIMARY KEY,
      upstream TEXT NOT NULL,
      repository TEXT NOT NULL,
      subject TEXT NOT NULL,
      fetched_at INTEGER NOT NULL,
      accessed_at INTEGER NOT NULL,
      descriptors TEXT NOT NULL,
      UNIQUE (upstream, repository, subject)
    )`,
    indexes: '',
  },
  // The upstream's tag list of a repository as its first page last came (sorted as served), and
  // whether it is the whole list (the upstream's last page was read).
  {
    name: 'proxy_tag_lists',
    columns: `(
      id INTEGER PRIMARY KEY,
      upstream TEXT NOT NULL,
      repository TEXT NOT NULL,
      whole INTEGER NOT NULL,
      fetched_at INTEGER NOT NULL,
      accessed_at INTEGER NOT NULL,
      tags TEXT NOT NULL,
      UNIQUE (upstream, repository)
    )`,
    indexes: '',
  },
];

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS proxy_tags (
    upstream TEXT NOT NULL,
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    checked_at INTEGER NOT NULL,
    PRIMARY KEY (upstream, repository, tag)
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS proxy_blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    fetched_at INTEGER NOT NULL,
    accessed_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  -- The eviction sweep's scans: blobs not used since a time, and the least recently used first.
  -- Without it each sweep sorted the whole table (0.85 s of the event loop at a million blobs, every
  -- ten seconds while downloads overrun max_size).
  CREATE INDEX IF NOT EXISTS proxy_blobs_accessed ON proxy_blobs(accessed_at, size);
  -- Blobs larger than max_size, which a sweep looks for first: a few, found without a scan.
  CREATE INDEX IF NOT EXISTS proxy_blobs_size ON proxy_blobs(size);
  -- How many blobs the cache holds and their bytes, kept by the database itself at each change of
  -- proxy_blobs (whichever process makes it): what max_size is held against, and /metrics reports,
  -- without a sum over the table (100 ms at a million blobs). Filled from the table once (see below).
  CREATE TABLE IF NOT EXISTS proxy_blob_totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    blobs INTEGER NOT NULL,
    bytes INTEGER NOT NULL
  );
  CREATE TRIGGER IF NOT EXISTS proxy_blobs_added AFTER INSERT ON proxy_blobs BEGIN
    UPDATE proxy_blob_totals SET blobs = blobs + 1, bytes = bytes + NEW.size WHERE id = 0;
  END;
  CREATE TRIGGER IF NOT EXISTS proxy_blobs_removed AFTER DELETE ON proxy_blobs BEGIN
    UPDATE proxy_blob_totals SET blobs = blobs - 1, bytes = bytes - OLD.size WHERE id = 0;
  END;
  CREATE TRIGGER IF NOT EXISTS proxy_blobs_resized AFTER UPDATE OF size ON proxy_blobs BEGIN
    UPDATE proxy_blob_totals SET bytes = bytes - OLD.size + NEW.size WHERE id = 0;
  END;
  CREATE TABLE IF NOT EXISTS proxy_repository_blobs (
    upstream TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (upstream, repository, digest)
  ) WITHOUT ROWID;
  -- Who still links a blob, asked by eviction, purge and fsck once per blob: without it each asks
  -- with a scan of every link (a one-repository purge of a year's cache blocked for minutes).
  CREATE INDEX IF NOT EXISTS proxy_repository_blobs_digest ON proxy_repository_blobs(digest);
  CREATE TABLE IF NOT EXISTS proxy_absent (
    upstream TEXT NOT NULL,
    repository TEXT NOT NULL,
    reference TEXT NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (upstream, repository, reference)
  ) WITHOUT ROWID;
`;

/**
 * A blob noted as used within this is in use lately: a hit is noted once a minute at most, so a blob
 * used within the last minute was noted within the last two.
 */
const RECENT_USE_MS = 2 * NOTE_INTERVAL_MS;
/** Remembered 404s written between two removals of those past their time (see CacheIndex.markAbsent). */
const ABSENT_EXPIRY_EVERY = 1024;

export interface CachedTag {
  readonly digest: Digest;
  readonly checkedAt: number;
}

export interface CachedTagList {
  /** Whole: in the registry's tag order (compareTags); cut short: in the upstream's. */
  readonly tags: readonly string[];
  /** The upstream's last page was read: no tag comes after these. */
  readonly whole: boolean;
  readonly fetchedAt: number;
}

/** The dependency proxy's index of what it cached, in the same SQLite database as the registry. */
export class CacheIndex {
  private readonly q: Record<string, Statement>;
  /**
   * Access times are bookkeeping: one a minute per item (DeferredWrites.note) orders eviction by
   * days or by least recent use as well, and is written a few seconds later with the others.
   */
  private readonly deferred: DeferredWrites;
  /** Blob rows and links waiting in `deferred`: lookups see them meanwhile. */
  private readonly pending: PendingBlobRows;
  /** Remembered 404s written by this index (see markAbsent). */
  private absentMarked = 0;

  constructor(private readonly db: SqliteDatabase) {
    for (const table of LARGE_ROW_TABLES) {
      ensureRowidTable(db, table);
      db.exec(createRowidTable(table));
    }
    db.exec(SCHEMA);
    // A database from before the totals (or a new one): counted once, in a write transaction, so that
    // no change of proxy_blobs falls between the count and the first trigger.
    const started = db.prepare('SELECT 1 FROM proxy_blob_totals WHERE id = 0');
    if (started.get() === undefined) {
      db.transaction(() => {
        if (started.get() === undefined) db.prepare('INSERT INTO proxy_blob_totals (id, blobs, bytes) SELECT 0, COUNT(*), COALESCE(SUM(size), 0) FROM proxy_blobs').run();
      }).immediate();
    }
    this.deferred = deferredWrites(db);
    this.pending = pendingBlobRows(db);
    const s = (sql: string) => db.prepare(sql);
    this.q = {
      manifest: s('SELECT digest, media_type, content FROM proxy_manifests WHERE upstream = ? AND repository = ? AND digest = ?'),
      // The few manifests of a repository whose bytes name a digest (a byte search: only asked while its upstream is down).
      mentioning: s('SELECT content FROM proxy_manifests WHERE upstream = ? AND repository = ? AND instr(content, ?) > 0 LIMIT 16'),
      touchManifest: s('UPDATE proxy_manifests SET accessed_at = ? WHERE upstream = ? AND repository = ? AND digest = ?'),
      putManifest: s(`INSERT INTO proxy_manifests (upstream, repository, digest, media_type, content, fetched_at, accessed_at)
                      VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET accessed_at = excluded.accessed_at`),
      tag: s('SELECT digest, checked_at FROM proxy_tags WHERE upstream = ? AND repository = ? AND tag = ?'),
      putTag: s(`INSERT INTO proxy_tags (upstream, repository, tag, digest, checked_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT DO UPDATE SET digest = excluded.digest, checked_at = excluded.checked_at`),
      // The registry's tag order (compareTags): case-insensitive, then by bytes.
      tags: s(`SELECT tag FROM proxy_tags WHERE upstream = ? AND repository = ? AND (tag COLLATE NOCASE, tag) > (?, ?)
               ORDER BY tag COLLATE NOCASE, tag LIMIT ?`),
      dropTag: s('DELETE FROM proxy_tags WHERE upstream = ? AND repository = ? AND tag = ?'),
      blob: s(`SELECT b.size FROM proxy_blobs b JOIN proxy_repository_blobs l ON l.digest = b.digest
               WHERE l.upstream = ? AND l.repository = ? AND b.digest = ?`),
      anyBlob: s('SELECT size FROM proxy_blobs WHERE digest = ?'),
      linked: s('SELECT 1 FROM proxy_repository_blobs WHERE upstream = ? AND repository = ? AND digest = ?'),
      linkedThrough: s('SELECT 1 FROM proxy_repository_blobs WHERE digest = ? AND upstream = ? LIMIT 1'),
      putBlob: s(`INSERT INTO proxy_blobs (digest, size, fetched_at, accessed_at) VALUES (?, ?, ?, ?)
                  ON CONFLICT DO UPDATE SET accessed_at = excluded.accessed_at`),
      // Not a blob a purge marked (accessed_at 0: see CacheEviction.purge) and no repository links again.
      touchBlob: s('UPDATE proxy_blobs SET accessed_at = ? WHERE digest = ? AND accessed_at <> 0'),
      // Linked again, a blob a purge marked is in use: its mark goes.
      unmark: s('UPDATE proxy_blobs SET accessed_at = ? WHERE digest = ? AND accessed_at = 0'),
      link: s('INSERT INTO proxy_repository_blobs (upstream, repository, digest) VALUES (?, ?, ?) ON CONFLICT DO NOTHING'),
      tagList: s('SELECT tags, whole, fetched_at FROM proxy_tag_lists WHERE upstream = ? AND repository = ?'),
      touchTagList: s('UPDATE proxy_tag_lists SET accessed_at = ? WHERE upstream = ? AND repository = ?'),
      putTagList: s(`INSERT INTO proxy_tag_lists (upstream, repository, tags, whole, fetched_at, accessed_at) VALUES (?, ?, ?, ?, ?, ?)
                     ON CONFLICT DO UPDATE SET tags = excluded.tags, whole = excluded.whole, fetched_at = excluded.fetched_at,
                     accessed_at = excluded.accessed_at`),
      dropTagList: s('DELETE FROM proxy_tag_lists WHERE upstream = ? AND repository = ?'),
      absent: s('SELECT until FROM proxy_absent WHERE upstream = ? AND repository = ? AND reference = ?'),
      putAbsent: s(`INSERT INTO proxy_absent (upstream, repository, reference, until) VALUES (?, ?, ?, ?)
                    ON CONFLICT DO UPDATE SET until = excluded.until`),
      clearAbsent: s('DELETE FROM proxy_absent WHERE upstream = ? AND repository = ? AND reference = ?'),
      expireAbsent: s('DELETE FROM proxy_absent WHERE until <= ?'),
      referrers: s('SELECT descriptors, fetched_at FROM proxy_referrers WHERE upstream = ? AND repository = ? AND subject = ?'),
      touchReferrers: s('UPDATE proxy_referrers SET accessed_at = ? WHERE upstream = ? AND repository = ? AND subject = ?'),
      putReferrers: s(`INSERT INTO proxy_referrers (upstream, repository, subject, descriptors, fetched_at, accessed_at) VALUES (?, ?, ?, ?, ?, ?)
                       ON CONFLICT DO UPDATE SET descriptors = excluded.descriptors, fetched_at = excluded.fetched_at, accessed_at = excluded.accessed_at`),
      clearReferrers: s('DELETE FROM proxy_referrers WHERE upstream = ? AND repository = ? AND subject = ?'),
    };
  }

  manifest(upstream: string, repo: string, digest: Digest, now = Date.now()): StoredManifest | undefined {
    const row = this.q.manifest!.get(upstream, repo, digest) as { digest: Digest; media_type: string; content: Buffer } | undefined;
    if (!row) return undefined;
    this.deferred.note(`pm\0${upstream}\0${repo}\0${digest}`, () => this.q.touchManifest!.run(now, upstream, repo, digest), now);
    return { digest: row.digest, mediaType: row.media_type, bytes: row.content };
  }

  /** The bytes of this repository's cached manifests that name `digest` anywhere (16 at most), to be read for their descriptors. */
  manifestsNaming(upstream: string, repo: string, digest: Digest): Buffer[] {
    return (this.q.mentioning!.all(upstream, repo, Buffer.from(digest)) as { content: Buffer }[]).map((row) => row.content);
  }

  putManifest(upstream: string, repo: string, manifest: StoredManifest, now = Date.now()): void {
    this.write(`m\0${upstream}\0${repo}\0${manifest.digest}`, () => this.q.putManifest!.run(upstream, repo, manifest.digest, manifest.mediaType, manifest.bytes, now, now));
  }

  tag(upstream: string, repo: string, tag: string): CachedTag | undefined {
    const row = this.q.tag!.get(upstream, repo, tag) as { digest: Digest; checked_at: number } | undefined;
    return row ? { digest: row.digest, checkedAt: row.checked_at } : undefined;
  }

  putTag(upstream: string, repo: string, tag: string, digest: Digest, now = Date.now()): void {
    this.write(`t\0${upstream}\0${repo}\0${tag}`, () => this.q.putTag!.run(upstream, repo, tag, digest, now));
  }

  /** The upstream no longer has `tag`: it is not served, stale or not (its manifest stays, by digest). */
  dropTag(upstream: string, repo: string, tag: string): void {
    this.write(`t\0${upstream}\0${repo}\0${tag}`, () => this.q.dropTag!.run(upstream, repo, tag));
  }

  tags(upstream: string, repo: string, last: string, n: number): string[] {
    return (this.q.tags!.all(upstream, repo, last, last, n) as { tag: string }[]).map((r) => r.tag);
  }

  /** The upstream's tag list of `repo` as last fetched (first page), for when it need not or cannot be asked. */
  tagList(upstream: string, repo: string, now = Date.now()): CachedTagList | undefined {
    const row = this.q.tagList!.get(upstream, repo) as { tags: string; whole: number; fetched_at: number } | undefined;
    if (!row) return undefined;
    this.deferred.note(`tl\0${upstream}\0${repo}`, () => this.q.touchTagList!.run(now, upstream, repo), now);
    return { tags: JSON.parse(row.tags) as string[], whole: row.whole === 1, fetchedAt: row.fetched_at };
  }

  putTagList(upstream: string, repo: string, tags: readonly string[], whole: boolean, now = Date.now()): void {
    const json = JSON.stringify(tags);
    this.write(`tl\0${upstream}\0${repo}`, () => this.q.putTagList!.run(upstream, repo, json, whole ? 1 : 0, now, now));
  }

  dropTagList(upstream: string, repo: string): void {
    this.write(`tl\0${upstream}\0${repo}`, () => this.q.dropTagList!.run(upstream, repo));
  }

  /** How many blobs the cache holds, and their bytes. */
  totals(): { blobs: number; bytes: number } {
    return cacheTotals(this.db);
  }

  /**
   * Whether the blob was used lately: a hit was noted at most RECENT_USE_MS before `now`. Its row's
   * access time is written once a minute at most (DeferredWrites.note), so it may be a minute older
   * than its last use; the eviction sweep asks this before it takes a blob for unused.
   */
  blobUsedLately(digest: Digest, now = Date.now()): boolean {
    return this.deferred.notedSince(`pb\0${digest}`, now - RECENT_USE_MS);
  }

  blob(upstream: string, repo: string, digest: Digest, now = Date.now()): number | undefined {
    const row = this.q.blob!.get(upstream, repo, digest) as { size: number } | undefined;
    if (row) this.deferred.note(`pb\0${digest}`, () => this.q.touchBlob!.run(now, digest), now);
    if (row || this.pending.empty) return row?.size;
    // Filled while another process held the write lock: its rows are on their way.
    const linked = this.pending.linked(upstream, repo, digest) || this.q.linked!.get(upstream, repo, digest) !== undefined;
    return linked ? this.anyBlob(digest) : undefined;
  }

  /** Whether some repository of `upstream` links the blob (it came through that upstream). */
  linkedThrough(upstream: string, digest: Digest): boolean {
    return this.q.linkedThrough!.get(digest, upstream) !== undefined;
  }

  anyBlob(digest: Digest): number | undefined {
    return (this.q.anyBlob!.get(digest) as { size: number } | undefined)?.size ?? this.pending.sizeOf(digest);
  }

  putBlob(digest: Digest, size: number, now = Date.now()): void {
    const written = this.write(`b\0${digest}`, () => {
      this.q.putBlob!.run(digest, size, now, now);
      this.pending.blobWritten(digest);
    });
    if (!written) this.pending.blob(digest, size);
  }

  link(upstream: string, repo: string, digest: Digest): void {
    const written = this.write(`l\0${upstream}\0${repo}\0${digest}`, () => {
      this.q.link!.run(upstream, repo, digest);
      this.q.unmark!.run(Date.now(), digest);
      this.pending.linkWritten(upstream, repo, digest);
    });
    if (!written) this.pending.link(upstream, repo, digest);
  }

  isAbsent(upstream: string, repo: string, reference: string, now = Date.now()): boolean {
    const row = this.q.absent!.get(upstream, repo, reference) as { until: number } | undefined;
    return row !== undefined && row.until > now;
  }

  markAbsent(upstream: string, repo: string, reference: string, until: number): void {
    this.write(`a\0${upstream}\0${repo}\0${reference}`, () => this.q.putAbsent!.run(upstream, repo, reference, until));
    // A name asked for once (a typo, a random digest) leaves a row that nobody reads again. Those past
    // their time go every ABSENT_EXPIRY_EVERY rows written, not only at the eviction sweep (hourly):
    // a client asking for millions of missing names leaves at most what it asks within absent_ttl.
    this.absentMarked += 1;
    if (this.absentMarked % ABSENT_EXPIRY_EVERY === 0) {
      const now = Date.now();
      this.write('a-expired', () => this.q.expireAbsent!.run(now));
    }
  }

  clearAbsent(upstream: string, repo: string, reference: string): void {
    this.write(`a\0${upstream}\0${repo}\0${reference}`, () => this.q.clearAbsent!.run(upstream, repo, reference));
  }

  /** The referrers of `subject` the upstream last listed, for when it cannot be asked. */
  referrers(upstream: string, repo: string, subject: Digest, now = Date.now()): Descriptor[] | undefined {
    return this.referrersEntry(upstream, repo, subject, now)?.descriptors;
  }

  /** referrers(), with when the upstream listed them. */
  referrersEntry(upstream: string, repo: string, subject: Digest, now = Date.now()): { descriptors: Descriptor[]; fetchedAt: number } | undefined {
    const row = this.q.referrers!.get(upstream, repo, subject) as { descriptors: string; fetched_at: number } | undefined;
    if (!row) return undefined;
    this.deferred.note(`pr\0${upstream}\0${repo}\0${subject}`, () => this.q.touchReferrers!.run(now, upstream, repo, subject), now);
    return { descriptors: JSON.parse(row.descriptors) as Descriptor[], fetchedAt: row.fetched_at };
  }

  putReferrers(upstream: string, repo: string, subject: Digest, descriptors: readonly Descriptor[], now = Date.now()): void {
    const json = JSON.stringify(descriptors);
    this.write(`r\0${upstream}\0${repo}\0${subject}`, () => this.q.putReferrers!.run(upstream, repo, subject, json, now, now));
  }

  clearReferrers(upstream: string, repo: string, subject: Digest): void {
    this.write(`r\0${upstream}\0${repo}\0${subject}`, () => this.q.clearReferrers!.run(upstream, repo, subject));
  }

  /**
   * Writes a row of the cache now, or, while another process holds the database's write lock (a
   * `wharf gc`, a purge or a backup from the command line), a few seconds later with the deferred
   * writes: SQLite's busy handler would otherwise sleep on the event loop and hold every request of
   * the server, not only the one that learnt something. A later write of the same row (`key`)
   * replaces a queued one.
   */
  private write(key: string, run: () => void): boolean {
    return this.deferred.now(`w\0${key}`, run);
  }
}

/** How many blobs the proxy cache of `db` holds, and their bytes (kept by triggers: see SCHEMA). */
export function cacheTotals(db: SqliteDatabase): { blobs: number; bytes: number } {
  const row = db.prepare('SELECT blobs, bytes FROM proxy_blob_totals WHERE id = 0').get() as { blobs: number; bytes: number } | undefined;
  return { blobs: Number(row?.blobs ?? 0), bytes: Number(row?.bytes ?? 0) };
}
