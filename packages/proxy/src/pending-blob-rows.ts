import type { Digest, SqliteDatabase } from '@wharf/registry-core';

/** How long a row waiting to be written is believed without the database: far longer than a lock held by a command. */
const BELIEVED_MS = 10 * 60_000;
/** Rows kept at most (a database locked for long, under many fills): past this, the oldest are forgotten. */
const MAX_ROWS = 10_000;

/**
 * The cached blobs, and their links to repositories, whose rows wait to be written while another
 * process holds the database's write lock (CacheIndex defers such writes a few seconds). A cache
 * lookup reads the database, and missed them meanwhile: every pull during a long `wharf gc`, a
 * backup or an operator's sqlite3 session downloaded every blob again. One per database connection.
 */
export class PendingBlobRows {
  private readonly blobs = new Map<Digest, { readonly size: number; readonly until: number }>();
  private readonly links = new Map<string, number>();

  /** `digest` of `size` is cached, its row not written yet (`written`: it is). */
  blob(digest: Digest, size: number, written: boolean): void {
    this.blobs.delete(digest);
    if (!written) remember(this.blobs, digest, { size, until: Date.now() + BELIEVED_MS });
  }

  /** `repo` of `upstream` links `digest`, its row not written yet (`written`: it is). */
  link(upstream: string, repo: string, digest: Digest, written: boolean): void {
    const key = linkKey(upstream, repo, digest);
    this.links.delete(key);
    if (!written) remember(this.links, key, Date.now() + BELIEVED_MS);
  }

  /** The size of `digest` if its row waits to be written. */
  sizeOf(digest: Digest): number | undefined {
    const row = this.blobs.get(digest);
    return row !== undefined && Date.now() < row.until ? row.size : undefined;
  }

  /** Whether the link of `digest` to `repo` waits to be written. */
  linked(upstream: string, repo: string, digest: Digest): boolean {
    const until = this.links.get(linkKey(upstream, repo, digest));
    return until !== undefined && Date.now() < until;
  }

  /** `digest` was evicted or purged: what waited for it is not believed any more. */
  forget(digest: Digest): void {
    this.blobs.delete(digest);
    if (this.links.size === 0) return;
    for (const key of this.links.keys()) if (key.endsWith(`\0${digest}`)) this.links.delete(key);
  }

  get empty(): boolean {
    return this.blobs.size === 0 && this.links.size === 0;
  }
}

function linkKey(upstream: string, repo: string, digest: Digest): string {
  return `${upstream}\0${repo}\0${digest}`;
}

function remember<K, V>(map: Map<K, V>, key: K, value: V): void {
  if (map.size >= MAX_ROWS) map.delete(map.keys().next().value!);
  map.set(key, value);
}

const byDatabase = new WeakMap<SqliteDatabase, PendingBlobRows>();

/** The pending blob rows of this connection. */
export function pendingBlobRows(db: SqliteDatabase): PendingBlobRows {
  let rows = byDatabase.get(db);
  if (!rows) byDatabase.set(db, (rows = new PendingBlobRows()));
  return rows;
}
