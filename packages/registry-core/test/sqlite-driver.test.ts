import { describe, expect, test } from '@jest/globals';
import { Database, SQLITE_DRIVER, sqliteDriverFor, sqliteDriverVersion } from '../src/sqlite/driver.js';

describe('the SQLite binding', () => {
  test.each([
    ['Node 20 and 22.0-22.13, where 13 crashes', '9', 'better-sqlite3'],
    ['Node 22.14+ and 24, where 12 aborts (24.19+)', '10', 'better-sqlite3-napi'],
    ['a later Node', '11', 'better-sqlite3-napi'],
    ['a runtime without Node-API', undefined, 'better-sqlite3'],
  ])('%s: Node-API %s loads %s', (_node, napi, driver) => {
    expect(sqliteDriverFor(napi)).toBe(driver);
  });

  test("is this process's choice, and opens a database", () => {
    expect(SQLITE_DRIVER).toBe(sqliteDriverFor(process.versions.napi));
    expect(sqliteDriverVersion()).toMatch(SQLITE_DRIVER === 'better-sqlite3-napi' ? /^better-sqlite3 13\.\d+\.\d+$/ : /^better-sqlite3 12\.\d+\.\d+$/);
    const db = new Database(':memory:');
    try {
      expect(db.prepare('SELECT 1 + 1 AS two').get()).toEqual({ two: 2 });
    } finally {
      db.close();
    }
  });
});
