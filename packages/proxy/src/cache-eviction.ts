import { deferredWrites, flushDeferredWrites, type BlobStore, type Digest, type SqliteDatabase } from '@wharf/registry-core';
import type { BlobFills } from './blob-fills.js';
import { CacheIndex } from './cache-index.js';
import type { ProxyObserver } from './observer.js';
import { pendingBlobRows } from './pending-blob-rows.js';

/** Blobs forgotten in one transaction (one WAL commit for many rows, short enough not to stall requests). */
const REMOVE_BATCH = 256;

export interface EvictionPolicy {
  /** Cached content not accessed for this long is removed (ms). */
  readonly cacheTtl: number;
  /** Past this many bytes of cached blobs, the least recently used go (0: no limit). */
  readonly maxSize: number;
}

export interface EvictionReport {
  readonly manifests: number;
  readonly blobs: number;
  readonly bytes: number;
  /** Of `blobs`, those larger than max_size alone (they can never stay: max_size is too small for them). */
  readonly larger?: number;
}

/**
 * Removes cached proxy content: by last access (cacheTtl), by total size (least recently used first),
 * and on demand for one upstream or one repository. Expiry is data, not timers: every row carries its
 * access time and a sweep compares. A blob that a fill is writing is never touched.
 */
export class CacheEviction {
  private running: Promise<EvictionReport> | undefined;
  /** `running` is a sweep by size alone. */
  private runningSizeOnly = false;
  private readonly index: CacheIndex;
  /** Set by `stop`: a sweep ends after the batch it is removing. */
  private stopped = false;

  constructor(
    private readonly db: SqliteDatabase,
    private readonly store: BlobStore,
    private readonly fills?: BlobFills,
    private readonly observer?: Pick<ProxyObserver, 'evicted'>,
  ) {
    this.index = new CacheIndex(db); // (which makes sure the tables exist)
  }

  /**
   * No sweep or purge removes more than the batch it is at (a server closing); `idle` then resolves
   * soon. What is left stays in the cache for the next start's sweeps.
   */
  stop(): void {
    this.stopped = true;
  }

  /** Whether a sweep is running (a timer skips its turn rather than join it and report it twice). */
  get sweeping(): boolean {
    return this.running !== undefined;
  }

  /** Whether the running sweep (or the one queued after it) is a whole one, not by size alone. */
  get sweepingWhole(): boolean {
    return this.running !== undefined && !this.runningSizeOnly;
  }

  /**
   * Removes what cacheTtl and maxSize say must go; with `sizeOnly`, only what maxSize says (the
   * sweeps downloads start when they take the cache past it: see `overSize`). A sweep asked for while
   * one runs (a gc's during the timer's) gets that one's report: two at once would both evict from
   * the same least-recently-used list, more than maxSize asks. A whole sweep asked for while one
   * by size alone runs starts once that one has ended.
   */
  sweep(policy: EvictionPolicy, now = Date.now(), options: { readonly sizeOnly?: boolean } = {}): Promise<EvictionReport> {
    const sizeOnly = options.sizeOnly === true;
    if (this.running && (sizeOnly || !this.runningSizeOnly)) return this.running;
    const before = this.running?.catch(() => undefined);
    const run: Promise<EvictionReport> = (before ? before.then(() => this.sweepOnce(policy, now, sizeOnly)) : this.sweepOnce(policy, now, sizeOnly)).finally(() => {
      if (this.running === run) this.running = undefined;
    });
    this.running = run;
    this.runningSizeOnly = sizeOnly;
    return run;
  }

  /** Resolves once no sweep runs (whatever its outcome). */
  async idle(): Promise<void> {
    await this.running?.catch(() => undefined);
  }

  /**
   * Whether the cache holds more than `maxSize` bytes (0: no limit), with `adding` bytes more (a blob
   * a fill just stored, whose row may not be in the table yet): a sweep by size is due.
   */
  overSize(maxSize: number, adding = 0): boolean {
    return maxSize > 0 && this.index.totals().bytes + adding > maxSize;
  }

  private async sweepOnce(policy: EvictionPolicy, now: number, sizeOnly: boolean): Promise<EvictionReport> {
    flushDeferredWrites(this.db); // the access times of the last seconds
    let { manifests, blobs, bytes } = sizeOnly ? { manifests: 0, blobs: 0, bytes: 0 } : await this.expire(policy, now);
    let larger = 0;
    let total = this.index.totals().bytes;
    if (policy.maxSize > 0 && total > policy.maxSize) {
      // A blob larger than max_size alone goes first: evicting everything older to make room for
      // it would empty the cache, and it would still not fit.
      const victims = (this.db.prepare('SELECT digest, size FROM proxy_blobs WHERE size > ?').all(policy.maxSize) as { digest: Digest; size: number }[]).filter(
        (row) => !this.fills?.current(row.digest),
      );
      larger = victims.length;
      const chosen = new Set(victims.map((row) => row.digest));
      for (const row of victims) total -= row.size;
      const lru = this.db.prepare('SELECT digest, size FROM proxy_blobs ORDER BY accessed_at ASC').iterate() as Iterable<{ digest: Digest; size: number }>;
      // Blobs used in the last minute or two go last, whatever their rows say: a row's access time
      // is written once a minute at most, and a blob in constant use would otherwise go before ones
      // fetched after its last written use (and be fetched again, every sweep).
      const lately: { digest: Digest; size: number }[] = [];
      for (const row of lru) {
        if (total <= policy.maxSize) break;
        if (chosen.has(row.digest) || this.fills?.current(row.digest)) continue;
        if (this.index.blobUsedLately(row.digest, now)) {
          lately.push(row);
          continue;
        }
        victims.push(row);
        total -= row.size;
      }
      for (const row of lately) {
        if (total <= policy.maxSize) break;
        victims.push(row);
        total -= row.size;
      }
      const more = await this.removeBlobs(victims);
      this.tell('size', more.blobs, more.bytes);
      blobs += more.blobs;
      bytes += more.bytes;
    }
    return { manifests, blobs, bytes, ...(larger > 0 ? { larger } : {}) };
  }

  /** What cacheTtl says must go, remembered 404s past their time, and tags whose manifest went. */
  private async expire(policy: EvictionPolicy, now: number): Promise<{ manifests: number; blobs: number; bytes: number }> {
    const cutoff = now - policy.cacheTtl;
    const manifests = this.db.transaction(() => {
      const removed = this.db.prepare('DELETE FROM proxy_manifests WHERE accessed_at < ?').run(cutoff).changes;
      this.db.prepare('DELETE FROM proxy_referrers WHERE accessed_at < ?').run(cutoff);
      this.db.prepare('DELETE FROM proxy_tag_lists WHERE accessed_at < ?').run(cutoff);
      // Remembered 404s past their absent_ttl: one row per missing name anyone asked for, never read again.
      this.db.prepare('DELETE FROM proxy_absent WHERE until <= ?').run(now);
      this.deleteDanglingTags();
      return removed;
    })();
    const expired = this.db.prepare('SELECT digest, size FROM proxy_blobs WHERE accessed_at < ?').all(cutoff) as { digest: Digest; size: number }[];
    const { blobs, bytes } = await this.removeBlobs(expired);
    this.tell('expired', blobs, bytes);
    return { manifests, blobs, bytes };
  }

  private tell(reason: 'expired' | 'size' | 'purge', blobs: number, bytes: number): void {
    if (blobs > 0) this.observer?.evicted?.(reason, blobs, bytes);
  }

  /**
   * Forgets everything cached from one upstream, or from one of its repositories. The blobs it
   * leaves linked nowhere are marked as never accessed in the same transaction as the links' removal,
   * so that a purge cut short (killed, the server stopped) before their files went is finished by the
   * next sweep, which takes them as expired.
   */
  async purge(upstream: string, repository?: string): Promise<EvictionReport> {
    const where = repository === undefined ? 'upstream = ?' : 'upstream = ? AND repository = ?';
    const args = repository === undefined ? [upstream] : [upstream, repository];
    // Of the blobs the purged names linked, those no repository of any upstream links any more.
    const orphan = this.db.prepare(
      'SELECT b.digest, b.size FROM proxy_blobs b WHERE b.digest = ? AND NOT EXISTS (SELECT 1 FROM proxy_repository_blobs l WHERE l.digest = b.digest)',
    );
    const doom = this.db.prepare('UPDATE proxy_blobs SET accessed_at = 0 WHERE digest = ?');
    // Rows that waited for the write lock (pulls while another process held it) are written first,
    // waiting for the lock as the purge does, so that the purge removes them too: written after it,
    // they brought the purged blobs back. In a transaction of their own: one rolled back with a
    // failed purge would lose rows no longer kept in memory. Nothing runs in between (both are
    // synchronous), so no pull of this process queues another.
    deferredWrites(this.db).flush({ waitMs: this.db.pragma('busy_timeout', { simple: true }) as number });
    const { manifests, orphans } = this.db.transaction(() => {
      const removed = this.db.prepare(`DELETE FROM proxy_manifests WHERE ${where}`).run(...args).changes;
      this.db.prepare(`DELETE FROM proxy_tags WHERE ${where}`).run(...args);
      this.db.prepare(`DELETE FROM proxy_absent WHERE ${where}`).run(...args);
      this.db.prepare(`DELETE FROM proxy_referrers WHERE ${where}`).run(...args);
      this.db.prepare(`DELETE FROM proxy_tag_lists WHERE ${where}`).run(...args);
      const links = this.db.prepare(`DELETE FROM proxy_repository_blobs WHERE ${where} RETURNING digest`).all(...args) as { digest: Digest }[];
      const found: { digest: Digest; size: number }[] = [];
      for (const digest of new Set(links.map((l) => l.digest))) {
        const row = orphan.get(digest) as { digest: Digest; size: number } | undefined;
        if (!row) continue;
        doom.run(digest);
        found.push(row);
      }
      return { manifests: removed, orphans: found };
    })();
    const { blobs, bytes } = await this.removeBlobs(orphans);
    this.tell('purge', blobs, bytes);
    return { manifests, blobs, bytes };
  }

  private deleteDanglingTags(): void {
    this.db
      .prepare(
        `DELETE FROM proxy_tags WHERE NOT EXISTS (SELECT 1 FROM proxy_manifests m WHERE m.upstream = proxy_tags.upstream
         AND m.repository = proxy_tags.repository AND m.digest = proxy_tags.digest)`,
      )
      .run();
  }

  /**
   * Forgets `rows` (but not a blob a fill is writing), REMOVE_BATCH rows to a transaction, then
   * removes their files: rows first, so a reader that still finds the row finds the file, and one
   * that misses the row fetches again. The event loop is let go between batches.
   */
  private async removeBlobs(rows: readonly { digest: Digest; size: number }[]): Promise<{ blobs: number; bytes: number }> {
    let blobs = 0;
    let bytes = 0;
    const unlink = this.db.prepare('DELETE FROM proxy_repository_blobs WHERE digest = ?');
    const forget = this.db.prepare('DELETE FROM proxy_blobs WHERE digest = ?');
    const pending = pendingBlobRows(this.db);
    const forgetBatch = this.db.transaction((batch: readonly { digest: Digest; size: number }[]) =>
      batch.filter((row) => {
        if (this.fills?.current(row.digest)) return false;
        unlink.run(row.digest);
        pending.forget(row.digest);
        return forget.run(row.digest).changes > 0;
      }),
    );
    const cachedAgain = this.db.prepare('SELECT 1 FROM proxy_blobs WHERE digest = ?').pluck();
    for (let i = 0; i < rows.length && !this.stopped; i += REMOVE_BATCH) {
      for (const row of forgetBatch(rows.slice(i, i + REMOVE_BATCH))) {
        // A fill of the same blob that started (or even finished) since its row went keeps its file.
        if (!this.fills?.current(row.digest) && cachedAgain.get(row.digest) === undefined) await this.store.remove(row.digest);
        blobs += 1;
        bytes += row.size;
      }
    }
    return { blobs, bytes };
  }
}
