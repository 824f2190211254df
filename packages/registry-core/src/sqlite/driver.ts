import type BetterSqlite3 from 'better-sqlite3';
import { createRequire } from 'node:module';

/**
 * The SQLite binding for the Node.js running us. better-sqlite3 12 wraps its objects in the
 * `node::ObjectWrap` of the headers it was compiled against. From Node 24.19 that class removes an
 * environment cleanup hook in its destructor, and Node asserts that a context is entered then: the
 * first statement or database that an idle-time garbage collection finalizes aborts the process
 * (SIGABRT, nodejs/node#65446), and every Node 24 install compiles 12 against those headers.
 * better-sqlite3 13 is built on Node-API and ships prebuilt binaries, but needs Node 22 or later: on
 * Node 20 its binary crashes at the first statement. So Node 22 and later load 13 (the dependency
 * `better-sqlite3-napi`), and Node 20 keeps 12. Both have the same JavaScript API.
 */
export const SQLITE_DRIVER: string = Number(process.versions.node.split('.')[0]) >= 22 ? 'better-sqlite3-napi' : 'better-sqlite3';

/** better-sqlite3's `Database` constructor, from `SQLITE_DRIVER`. */
export const Database = createRequire(import.meta.url)(SQLITE_DRIVER) as typeof BetterSqlite3;

/** Where `SQLITE_DRIVER` resolves from this package, for a child process that opens a database itself. */
export const sqliteDriverPath = (): string => createRequire(import.meta.url).resolve(SQLITE_DRIVER);
