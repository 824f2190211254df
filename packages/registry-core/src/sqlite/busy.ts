import type { SqliteDatabase } from './database.js';

/** Runs `fn` with SQLite's busy timeout (how long a statement waits for a lock) set to `ms`. */
export function withBusyTimeout<T>(db: SqliteDatabase, ms: number, fn: () => T): T {
  const previous = db.pragma('busy_timeout', { simple: true }) as number;
  db.pragma(`busy_timeout = ${Math.max(0, Math.floor(ms))}`);
  try {
    return fn();
  } finally {
    db.pragma(`busy_timeout = ${previous}`);
  }
}

export function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED' || (typeof code === 'string' && code.startsWith('SQLITE_BUSY_'));
}
