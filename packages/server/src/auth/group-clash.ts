import { existsSync } from 'node:fs';
import { openDatabaseReadOnly, type SqliteDatabase } from '@wharf/registry-core';
import type { AuthConfig } from '../auth-config.js';
import { ConfigError } from '../config-error.js';

/**
 * A configured group named like a user of the database: that user would own the group's namespace
 * (delete included), and its members what it pushed there. `wharf user add` refuses a group's name,
 * but a group may be configured after the user was made, so a start (and `wharf config check`)
 * refuses it.
 */
export function refuseGroupNamedLikeUser(groups: AuthConfig['groups'], userNames: Iterable<string>): void {
  const names = new Set(groups.map((g) => g.name));
  for (const name of userNames) {
    if (names.has(name)) {
      throw new ConfigError(`[[auth.groups]] "${name}" has the name of a user in the database, who would own the group's namespace "${name}/*": rename the group, or remove the user ("wharf user remove ${name}")`);
    }
  }
}

/**
 * The users of `database` as `wharf config check` reads them: without writing (the server may be
 * running), none when there is no database yet or it cannot be read so.
 */
export function userNamesIn(database: string): string[] {
  if (!existsSync(database)) return [];
  let db: SqliteDatabase | undefined;
  try {
    db = openDatabaseReadOnly(database);
    return db.prepare('SELECT name FROM auth_users').pluck().all() as string[];
  } catch {
    return [];
  } finally {
    db?.close();
  }
}
