import type BetterSqlite3 from 'better-sqlite3';
import { createRequire } from 'node:module';

/**
 * The SQLite binding for a Node.js whose Node-API version is `napi` (`process.versions.napi`).
 *
 * better-sqlite3 12 wraps its objects in the `node::ObjectWrap` of the headers it was compiled
 * against. From Node 24.19 that class removes an environment cleanup hook in its destructor, and
 * Node asserts that a context is entered then: the first statement or database that the garbage
 * collector finalizes outside JavaScript aborts the process (SIGABRT, nodejs/node#65446), and a
 * Node 24 install compiles 12 against those headers. better-sqlite3 13 (the dependency
 * `better-sqlite3-napi`) is built on Node-API and ships prebuilt binaries, but they need Node-API 10
 * (Node 22.14, 23.6, 24): on Node 20 and 22.0-22.13 they crash at the first statement. Those keep 12,
 * which they do not break. Both have the same JavaScript API.
 */
export function sqliteDriverFor(napi: string | undefined): 'better-sqlite3' | 'better-sqlite3-napi' {
  return Number(napi) >= 10 ? 'better-sqlite3-napi' : 'better-sqlite3';
}

/** The SQLite binding this process loads. */
export const SQLITE_DRIVER = sqliteDriverFor(process.versions.napi);

const require = createRequire(import.meta.url);

/** better-sqlite3's `Database` constructor, from `SQLITE_DRIVER`. */
export const Database = require(SQLITE_DRIVER) as typeof BetterSqlite3;

/** The binding this process loads, as its package names itself: "better-sqlite3 13.2.0". */
export function sqliteDriverVersion(): string {
  const pkg = require(`${SQLITE_DRIVER}/package.json`) as { name: string; version: string };
  return `${pkg.name} ${pkg.version}`;
}

/** Where `SQLITE_DRIVER` resolves from this package, for a child process that opens a database itself. */
export const sqliteDriverPath = (): string => require.resolve(SQLITE_DRIVER);
