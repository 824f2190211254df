import type BetterSqlite3 from 'better-sqlite3';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { Database } from './driver.js';
import { ensureRowidTable } from './rowid-tables.js';
import { INDEXES, MANIFESTS, MIGRATIONS, MANIFEST_GRACE } from './schema.js';

export type SqliteDatabase = BetterSqlite3.Database;
export type SqliteStatement = BetterSqlite3.Statement;

/** Opens (creating if needed) the metadata database in WAL mode with foreign keys on, and migrates it. */
export function openDatabase(file: string): SqliteDatabase {
  if (file !== ':memory:') {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    // A new database is readable by its owner only: it holds password hashes. SQLite gives its -wal
    // and -shm files the database's mode. An existing file keeps the mode its operator chose.
    closeSync(openSync(file, 'a', 0o600));
  }
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > MIGRATIONS.length) {
    db.close();
    throw new Error(`database ${file} has schema version ${version}, newer than this Wharf (${MIGRATIONS.length})`);
  }
  for (let v = version; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  ensureRowidTable(db, MANIFESTS);
  // The table's indexes at every open, not only when it is rebuilt: a Wharf of 6 December (da45dc6,
  // before d57267a) rebuilt it with the index manifests_referrers later replaced, and the rebuild
  // runs once. The replaced one, whose columns lead the new one's, goes as a rebuild drops it.
  db.exec(`${MANIFESTS.indexes}\nDROP INDEX IF EXISTS manifests_subject;`);
  db.exec(INDEXES);
  // After the rebuild above: the table's foreign key names the manifests table as it is now.
  db.exec(MANIFEST_GRACE);
  return db;
}

/**
 * An existing database opened to read only, migrating nothing (a check of the database of a server
 * that may be running, `wharf config check`). Throws if it does not exist or cannot be read.
 */
export function openDatabaseReadOnly(file: string): SqliteDatabase {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  db.pragma('busy_timeout = 5000');
  return db;
}
