import { openDatabase, type SqliteDatabase } from '@wharf/registry-core';
import { ConfigError } from './config-error.js';

/**
 * The configuration's `database`, opened for the server or a command. A file that cannot be opened
 * (a read-only file system, a folder, a file that is not SQLite, no permission) is a configuration
 * error naming the key, not a stack trace.
 */
export function openConfiguredDatabase(file: string): SqliteDatabase {
  try {
    return openDatabase(file);
  } catch (err) {
    throw new ConfigError(`"database" (${file}) cannot be opened: ${(err as Error).message}`);
  }
}
