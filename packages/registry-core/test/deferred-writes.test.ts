import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deferredWrites, flushDeferredWrites } from '../src/sqlite/deferred-writes.js';
import { openDatabase, type SqliteDatabase } from '../src/sqlite/database.js';
import { Database, sqliteDriverPath } from '../src/sqlite/driver.js';

/**
 * Bookkeeping writes (pull times, access times) wait in memory and go to the database together, and
 * a flush never waits for a lock another process holds: its wait would hold the event loop.
 */
describe('deferred writes', () => {
  let dir: string;
  let file: string;
  let db: SqliteDatabase;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-deferred-'));
    file = join(dir, 'db');
    db = openDatabase(file);
    db.exec('CREATE TABLE notes (k TEXT PRIMARY KEY, v INTEGER NOT NULL)');
    db.prepare("INSERT INTO notes VALUES ('a', 0), ('b', 0)").run();
  });
  afterEach(async () => {
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  const value = (k: string) => (db.prepare('SELECT v FROM notes WHERE k = ?').get(k) as { v: number }).v;
  const note = (k: string, v: number) => deferredWrites(db).add(k, () => db.prepare('UPDATE notes SET v = ? WHERE k = ?').run(v, k));

  test('writes wait, a later one of the same key replaces the earlier, and a flush writes them all', () => {
    note('a', 1);
    note('b', 1);
    note('a', 2);
    expect([value('a'), value('b')]).toEqual([0, 0]);
    expect(deferredWrites(db).size).toBe(2);

    expect(flushDeferredWrites(db)).toBe(true);

    expect([value('a'), value('b')]).toEqual([2, 1]);
    expect(deferredWrites(db).size).toBe(0);
  });

  test('with the write lock held by another process, a flush gives up at once and keeps the writes for later', () => {
    const other = new Database(file);
    let busyTimeoutInFlush: unknown;
    try {
      other.exec('BEGIN IMMEDIATE');
      other.prepare("UPDATE notes SET v = 9 WHERE k = 'b'").run();
      deferredWrites(db).add('a', () => {
        busyTimeoutInFlush = db.pragma('busy_timeout', { simple: true });
        db.prepare("UPDATE notes SET v = 5 WHERE k = 'a'").run();
      });

      expect(flushDeferredWrites(db)).toBe(false);
      // SQLite's busy handler would sleep up to busy_timeout (5 s) on the caller's thread.
      expect(busyTimeoutInFlush).toBe(0);
      expect(db.pragma('busy_timeout', { simple: true })).toBe(5000);
      expect(deferredWrites(db).size).toBe(1);

      other.exec('COMMIT');
      expect(flushDeferredWrites(db)).toBe(true);
      expect([value('a'), value('b')]).toEqual([5, 9]);
    } finally {
      other.close();
    }
  });

  test('past a thousand waiting with the lock held elsewhere, a note again of a waiting key tries no flush', () => {
    const other = new Database(file);
    try {
      other.exec('BEGIN IMMEDIATE');
      let flushes = 0;
      const write = () => {
        flushes += 1; // the first write of each attempt: it fails on the lock
        db.prepare("UPDATE notes SET v = v + 1 WHERE k = 'a'").run();
      };
      for (let i = 0; i < 1_000; i++) deferredWrites(db).add(`k${i}`, write);
      expect(flushes).toBe(1);
      // A replaced key does not try again (it did at every note, with 1,000 waiting).
      for (let i = 0; i < 50; i++) deferredWrites(db).add('k1', write);
      expect(flushes).toBe(1);
      expect(deferredWrites(db).size).toBe(1_000);
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    expect(flushDeferredWrites(db)).toBe(true);
  });

  test('a closing process may wait for the lock another process holds: what waits is written once it lets go', async () => {
    // Another process: this one's wait is synchronous, so nothing in it could let go of the lock.
    const script = [
      `const Database = require(${JSON.stringify(sqliteDriverPath())});`,
      `const db = new Database(${JSON.stringify(file)});`,
      "db.exec('BEGIN IMMEDIATE');",
      "db.prepare(\"UPDATE notes SET v = 8 WHERE k = 'b'\").run();",
      "process.stdout.write('locked\\n');",
      // It lets go only when told, a little after: by then this process waits for the lock.
      "process.stdin.once('data', () => { process.stdin.destroy(); setTimeout(() => { db.exec('COMMIT'); db.close(); }, 100); });",
    ].join('\n');
    const holder = spawn(process.execPath, ['-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise<number | null>((r) => holder.once('exit', (code) => r(code)));
    try {
      await new Promise<void>((r) => holder.stdout!.once('data', () => r()));
      note('a', 3);

      // The lock is held until the test says so, however slow the machine.
      expect(flushDeferredWrites(db)).toBe(false);
      await new Promise<void>((r) => holder.stdin!.end('let go\n', () => r()));
      expect(flushDeferredWrites(db, { waitMs: 10_000 })).toBe(true);

      expect([value('a'), value('b')]).toEqual([3, 8]);
      expect(await exited).toBe(0);
    } finally {
      if (holder.exitCode === null && holder.signalCode === null) holder.kill();
    }
  });

  test('a write that fails for another reason is dropped without failing the others', () => {
    deferredWrites(db).add('bad', () => db.prepare('UPDATE missing_table SET v = 1').run());
    note('a', 7);
    expect(flushDeferredWrites(db)).toBe(true);
    expect(value('a')).toBe(7);
    expect(deferredWrites(db).size).toBe(0);
  });
});
