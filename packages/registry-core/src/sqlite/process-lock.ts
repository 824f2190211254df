import { existsSync } from 'node:fs';
import Database from 'better-sqlite3';

/**
 * An exclusive lock on a file, held as long as its holder keeps it or its process lives: an SQLite
 * transaction's POSIX advisory lock, which the kernel drops when the process ends, `kill -9`
 * included. It answers "is the process that wrote these files still running?" where a process id
 * cannot (containers all run as pid 1, and may share a host name and a volume). It works wherever
 * SQLite's own locking does, which servers sharing one database need anyway. Another connection of
 * the same process sees it held too (SQLite tracks its locks per file within a process).
 */
export class ProcessLock {
  private constructor(private readonly db: Database.Database) {}

  /** Takes the lock on `file` (created if missing); undefined when someone holds it already. */
  static take(file: string): ProcessLock | undefined {
    const db = new Database(file);
    try {
      db.pragma('busy_timeout = 0');
      db.exec('BEGIN EXCLUSIVE');
      return new ProcessLock(db);
    } catch (err) {
      db.close();
      if ((err as { code?: string }).code === 'SQLITE_BUSY') return undefined;
      throw err;
    }
  }

  /**
   * Whether someone holds the lock on `file`: undefined when there is no such file; true when it
   * cannot be told (a file that is not SQLite's, say), so that nothing of a live holder is touched.
   */
  static held(file: string): boolean | undefined {
    let db: Database.Database;
    try {
      db = new Database(file, { fileMustExist: true });
    } catch {
      return existsSync(file) ? true : undefined;
    }
    try {
      db.pragma('busy_timeout = 0');
      db.exec('BEGIN EXCLUSIVE');
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
