import type { SqliteDatabase } from './database.js';
import { isBusy, withBusyTimeout } from './busy.js';

/** How long a deferred write waits for others to join it. */
const DELAY_MS = 5_000;
/** Past this many waiting, they are written at once. */
const MAX_PENDING = 1_000;
/** Waiting writes kept while the database stays locked by another process; past this, new ones are dropped. */
const MAX_KEPT = 20_000;
/**
 * A noted time (a pull, a cache hit) is written at most this often per key: it orders retention
 * and eviction by days, where a minute changes nothing, and a hot item then costs a map lookup.
 */
export const NOTE_INTERVAL_MS = 60_000;
/** Keys whose last note is remembered; past this, the oldest are forgotten (a write each, once more). */
const NOTE_MEMORY = 100_000;

/**
 * Best-effort bookkeeping writes (when a tag was last pulled, when a cached item was last used),
 * gathered in memory and written together, one transaction every few seconds, instead of one
 * autocommit write per request. Each request's write was a WAL commit of its own: at hundreds of
 * distinct tags a second, SQLite's automatic checkpoint (two fsyncs) ran inside a request every
 * few seconds and stalled every other one for 40-80 ms.
 *
 * A flush never waits for a lock: while another process writes (a `wharf gc` from the command line),
 * SQLite's busy handler would sleep on the event loop, holding every request. A locked database
 * leaves the writes waiting for the next flush instead.
 *
 * One per database connection (`deferredWrites(db)`), so that all of them share one transaction;
 * `flushDeferredWrites(db)` before closing it.
 */
export class DeferredWrites {
  private readonly pending = new Map<string, () => void>();
  /** When each key was last noted (`note`), oldest first. */
  private readonly noted = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly db: SqliteDatabase) {}

  /** Queues `write` under `key`; a later write of the same key replaces it. */
  add(key: string, write: () => void): void {
    const isNew = !this.pending.delete(key);
    if (isNew && this.pending.size >= MAX_KEPT) return;
    this.pending.set(key, write);
    // At MAX_PENDING, and every MAX_PENDING more while a lock held elsewhere keeps them waiting.
    if (isNew && this.pending.size % MAX_PENDING === 0) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), DELAY_MS).unref();
  }

  /**
   * Queues `write` under `key` unless `key` was noted less than NOTE_INTERVAL_MS before `now`: for
   * times recorded on every request (a pull by tag, a cache hit), of which one a minute is enough.
   */
  note(key: string, write: () => void, now = Date.now()): void {
    const last = this.noted.get(key);
    if (last !== undefined && now >= last && now - last < NOTE_INTERVAL_MS) return;
    if (last !== undefined) this.noted.delete(key);
    else if (this.noted.size >= NOTE_MEMORY) this.noted.delete(this.noted.keys().next().value!);
    this.noted.set(key, now);
    this.add(key, write);
  }

  /**
   * Whether `key` was noted at `since` or later. A key noted less than NOTE_INTERVAL_MS ago is in use
   * now, or was very lately, whatever time its row holds: a time noted within the interval is not
   * written (`note`).
   */
  notedSince(key: string, since: number): boolean {
    const last = this.noted.get(key);
    return last !== undefined && last >= since;
  }

  get size(): number {
    return this.pending.size;
  }

  /**
   * Writes what waits, in one transaction, unless another connection holds the write lock: then it
   * stays for the next try. A write that fails otherwise is dropped (the bookkeeping is best effort).
   * `waitMs`: how long to wait for that lock (0 by default: the event loop never waits; a closing
   * process, whose requests are done, may). Returns whether nothing waits any more.
   */
  flush(options: { readonly waitMs?: number } = {}): boolean {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.size === 0 || !this.db.open) return true;
    const writes = [...this.pending.values()];
    try {
      withBusyTimeout(this.db, options.waitMs ?? 0, () =>
        this.db.transaction(() => {
          for (const write of writes) {
            try {
              write();
            } catch (err) {
              if (isBusy(err)) throw err;
            }
          }
        })(),
      );
      this.pending.clear();
      return true;
    } catch (err) {
      if (!isBusy(err)) {
        this.pending.clear();
        return true;
      }
      this.timer = setTimeout(() => this.flush(), DELAY_MS).unref();
      return false;
    }
  }

  /**
   * Runs `write` at once unless another process holds the write lock: then it is queued under `key`
   * (add) instead of waiting on the event loop for SQLite's busy handler. For writes a cache can
   * afford to make a few seconds late; other failures are thrown. Returns whether it was written now.
   */
  now(key: string, write: () => void): boolean {
    try {
      withBusyTimeout(this.db, 0, write);
    } catch (err) {
      if (!isBusy(err)) throw err;
      this.add(key, write);
      return false;
    }
    // An older write of the same row, queued while the lock was held, must not undo this one later.
    this.pending.delete(key);
    return true;
  }
}

const byDatabase = new WeakMap<SqliteDatabase, DeferredWrites>();

/** The deferred writes of this connection. */
export function deferredWrites(db: SqliteDatabase): DeferredWrites {
  let writes = byDatabase.get(db);
  if (!writes) byDatabase.set(db, (writes = new DeferredWrites(db)));
  return writes;
}

/**
 * Writes this connection's deferred writes now (before reading what they write; before closing it,
 * with `waitMs` for a lock another process holds). Returns whether nothing waits any more.
 */
export function flushDeferredWrites(db: SqliteDatabase, options: { readonly waitMs?: number } = {}): boolean {
  return byDatabase.get(db)?.flush(options) ?? true;
}
