import type { Digest, SqliteDatabase } from '@wharf/registry-core';

/** How long a row waiting to be written is believed without the database: far longer than a lock held by a command. */
const BELIEVED_MS = 10 * 60_000;
/** Rows kept at most (a database locked for long, under many fills): past this, the oldest are forgotten. */
const MAX_ROWS = 10_000;

/**
 * The cached blobs, and their links to repositories, whose rows wait to be written while another
 * process holds the database's write lock (CacheIndex defers such writes a few seconds). A cache
 * lookup reads the database, and missed them meanwhile: every pull during a long `wharf gc`, a
 * backup or an operator's sqlite3 session downloaded every blob again. An entry goes once its row is
 * written (the database is the truth again: a purge or an eviction ends it), when its blob is
 * evicted, or after BELIEVED_MS. One per database connection.
 */
export class PendingBlobRows {
  private readonly blobs = new Map<Digest, { readonly size: number; readonly until: number }>();
  /** By digest, then `upstream NUL repository`: until when. */
  private readonly links = new Map<Digest, Map<string, number>>();
  private linkCount = 0;

  /** `digest` of `size` is cached, its row not written yet. */
  blob(digest: Digest, size: number): void {
    this.blobs.delete(digest);
    if (this.blobs.size >= MAX_ROWS) this.blobs.delete(this.blobs.keys().next().value!);
    this.blobs.set(digest, { size, until: Date.now() + BELIEVED_MS });
  }

  /** The row of `digest` was written. */
  blobWritten(digest: Digest): void {
    this.blobs.delete(digest);
  }

  /** `repo` of `upstream` links `digest`, its row not written yet. */
  link(upstream: string, repo: string, digest: Digest): void {
    if (this.linkCount >= MAX_ROWS) this.forgetLinks(this.links.keys().next().value!);
    let repos = this.links.get(digest);
    if (!repos) this.links.set(digest, (repos = new Map()));
    if (!repos.has(`${upstream}\0${repo}`)) this.linkCount += 1;
    repos.set(`${upstream}\0${repo}`, Date.now() + BELIEVED_MS);
  }

  /** The link of `digest` to `repo` was written. */
  linkWritten(upstream: string, repo: string, digest: Digest): void {
    const repos = this.links.get(digest);
    if (!repos?.delete(`${upstream}\0${repo}`)) return;
    this.linkCount -= 1;
    if (repos.size === 0) this.links.delete(digest);
  }

  /** The size of `digest` if its row waits to be written. */
  sizeOf(digest: Digest): number | undefined {
    const row = this.blobs.get(digest);
    if (row === undefined) return undefined;
    if (Date.now() < row.until) return row.size;
    this.blobs.delete(digest);
    return undefined;
  }

  /** Whether the link of `digest` to `repo` waits to be written. */
  linked(upstream: string, repo: string, digest: Digest): boolean {
    const until = this.links.get(digest)?.get(`${upstream}\0${repo}`);
    if (until === undefined) return false;
    if (Date.now() < until) return true;
    this.linkWritten(upstream, repo, digest);
    return false;
  }

  /** `digest` was evicted or purged: what waited for it is not believed any more. */
  forget(digest: Digest): void {
    this.blobs.delete(digest);
    this.forgetLinks(digest);
  }

  get empty(): boolean {
    return this.blobs.size === 0 && this.linkCount === 0;
  }

  private forgetLinks(digest: Digest): void {
    const repos = this.links.get(digest);
    if (!repos) return;
    this.linkCount -= repos.size;
    this.links.delete(digest);
  }
}

const byDatabase = new WeakMap<SqliteDatabase, PendingBlobRows>();

/** The pending blob rows of this connection. */
export function pendingBlobRows(db: SqliteDatabase): PendingBlobRows {
  let rows = byDatabase.get(db);
  if (!rows) byDatabase.set(db, (rows = new PendingBlobRows()));
  return rows;
}
