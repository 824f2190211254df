import type { SqliteDatabase } from './database.js';

/**
 * A table that holds large values (manifest bytes, tag lists), wanted as an ordinary rowid table.
 *
 * In a `WITHOUT ROWID` table every row lives in the key's B-tree, and SQLite reads a row's whole
 * payload, overflow pages and all, to compare a key against it: 60 manifests of 4 MiB made every
 * manifest lookup in every repository 7-11 times slower (a lookup passes them on its way down the
 * tree), and 8,000 small pushes beside them 4.4 times slower. In a rowid table the keys live in a
 * separate unique index, and the row is read only when it is wanted, after its last small column.
 */
export interface RowidTable {
  readonly name: string;
  /** What follows `CREATE TABLE <name>`: the columns, large ones last, and the table's constraints. */
  readonly columns: string;
  /** The table's indexes, as `CREATE INDEX IF NOT EXISTS` statements. */
  readonly indexes: string;
}

/** The statements that create `table` (if missing) with its indexes. */
export function createRowidTable(table: RowidTable): string {
  return `CREATE TABLE IF NOT EXISTS ${table.name} ${table.columns};\n${table.indexes}`;
}

/**
 * Rebuilds `table` as a rowid table if the database still has it `WITHOUT ROWID` (made by an earlier
 * Wharf), keeping every row; a no-op once done. Column names stay as they were, so an earlier Wharf
 * can open the database again. SQLite's own recipe for a table change: foreign keys off (or dropping
 * the old table would delete the tags and references that point at its rows), one transaction.
 * Returns whether it rebuilt.
 */
export function ensureRowidTable(db: SqliteDatabase, table: RowidTable): boolean {
  if (!isWithoutRowid(db, table.name)) return false;
  // Inside a transaction the pragma below does nothing, and dropping the old table would delete every
  // row that points at it (tags, references): refused rather than risked.
  if (db.inTransaction) throw new Error(`the table ${table.name} cannot be rebuilt inside a transaction`);
  const foreignKeys = db.pragma('foreign_keys', { simple: true }) as number;
  db.pragma('foreign_keys = OFF');
  if (db.pragma('foreign_keys', { simple: true }) !== 0) throw new Error(`foreign keys stayed on: the table ${table.name} is not rebuilt`);
  try {
    return db
      .transaction(() => {
        // Another process may have rebuilt it between the check and the lock.
        if (!isWithoutRowid(db, table.name)) return false;
        const staging = `wharf_rebuild_${table.name}`;
        db.exec(`DROP TABLE IF EXISTS ${staging}`);
        db.exec(`CREATE TABLE ${staging} ${table.columns}`);
        const columns = (db.prepare(`SELECT name FROM pragma_table_info('${table.name}')`).pluck().all() as string[]).map((c) => `"${c}"`).join(', ');
        db.exec(`INSERT INTO ${staging} (${columns}) SELECT ${columns} FROM ${table.name}`);
        db.exec(`DROP TABLE ${table.name}`);
        db.exec(`ALTER TABLE ${staging} RENAME TO ${table.name}`);
        db.exec(table.indexes);
        return true;
      })
      .immediate();
  } finally {
    db.pragma(`foreign_keys = ${foreignKeys ? 'ON' : 'OFF'}`);
  }
}

function isWithoutRowid(db: SqliteDatabase, table: string): boolean {
  const row = db.prepare('SELECT wr FROM pragma_table_list WHERE schema = ? AND name = ?').get('main', table) as { wr: number } | undefined;
  return row?.wr === 1;
}
