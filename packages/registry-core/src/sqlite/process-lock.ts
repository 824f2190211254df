import { existsSync, renameSync, rmSync } from 'node:fs';
import type { SqliteDatabase } from './database.js';
import { Database } from './driver.js';

/**
 * An exclusive lock on a file, held as long as its holder keeps it or its process lives: an SQLite
 * transaction's POSIX advisory lock, which the kernel drops when the process ends, `kill -9`
 * included. It answers "is the process that wrote these files still running?" where a process id
 * cannot (containers all run as pid 1, and may share a host name and a volume). It works wherever
 * SQLite's own locking does, which servers sharing one database need anyway. Another connection of
 * the same process sees it held too (SQLite tracks its locks per file within a process).
 */
export class ProcessLock {
  private constructor(private readonly db: SqliteDatabase) {}

  /**
   * Takes the lock on a new file `file`, created under another name, locked, then renamed into place,
   * so that nobody ever finds it there unlocked (and takes its holder for gone). Throws when the file
   * system cannot lock, or `file` exists already.
   */
  static create(file: string): ProcessLock {
    if (existsSync(file)) throw new Error(`${file} exists already`);
    const fresh = `${file}.new`;
    const db = new Database(fresh);
    try {
      lockNow(db);
      renameSync(fresh, file);
      return new ProcessLock(db);
    } catch (err) {
      db.close();
      rmSync(fresh, { force: true });
      throw err;
    }
  }

  /**
   * Whether someone holds the lock on `file`: undefined when there is no such file; true when it
   * cannot be told (a file that is not SQLite's, say), so that nothing of a live holder is touched.
   */
  static held(file: string): boolean | undefined {
    let db: SqliteDatabase;
    try {
      db = new Database(file, { fileMustExist: true });
    } catch {
      return existsSync(file) ? true : undefined;
    }
    try {
      lockNow(db);
      db.exec('ROLLBACK');
      return false;
    } catch {
      return true;
    } finally {
      db.close();
    }
  }

  release(): void {
    try {
      this.db.exec('ROLLBACK');
    } finally {
      this.db.close();
    }
  }
}

/** An exclusive transaction at once or SQLITE_BUSY; the journal in memory, so no file comes with it. */
function lockNow(db: SqliteDatabase): void {
  db.pragma('busy_timeout = 0');
  db.pragma('journal_mode = MEMORY');
  db.exec('BEGIN EXCLUSIVE');
}
