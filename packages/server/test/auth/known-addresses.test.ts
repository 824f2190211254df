import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDatabase } from '@wharf/registry-core';
import { AuthStore } from '../../src/auth/auth-store.js';
import { KnownAddresses } from '../../src/auth/known-addresses.js';
import { basic, bcryptHash, requestFrom, startAuthRegistry } from './helpers.js';

const statusFrom = async (localAddress: string, url: string, authorization: string) => (await requestFrom(localAddress, url, { Authorization: authorization })).status;

describe('the addresses a user signed in from outlive a restart', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-known-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('after a restart, guesses from elsewhere still do not lock the owner out where they signed in before', async () => {
    const options = {
      root,
      loginLimits: { maxFailures: 10, windowMs: 5 * 60_000 },
      authSettings: { users: [{ name: 'ivan', password_hash: bcryptHash('ivan-password-1') }] },
    };
    let reg = await startAuthRegistry(options);
    try {
      expect(await statusFrom('127.0.5.1', `${reg.url}/v2/`, basic('ivan', 'ivan-password-1'))).toBe(200);
    } finally {
      await reg.close();
    }
    // Restarted: the memory of the sign-in came back from the database.
    reg = await startAuthRegistry(options);
    try {
      for (let i = 0; i < 10; i++) expect(await statusFrom(`127.0.6.${i + 1}`, `${reg.url}/v2/`, basic('ivan', `guess-${i}`))).toBe(401);
      expect(await statusFrom('127.0.6.20', `${reg.url}/v2/`, basic('ivan', 'ivan-password-1'))).toBe(429);
      expect(await statusFrom('127.0.5.1', `${reg.url}/v2/`, basic('ivan', 'ivan-password-1'))).toBe(200);
    } finally {
      await reg.close();
    }
  });

  test('a user removed and added again under the same name does not inherit the addresses the running server knew for the old one', async () => {
    const reg = await startAuthRegistry({ loginLimits: { maxFailures: 10, windowMs: 5 * 60_000 } });
    // The CLI's own connection to the server's database, as `wharf user add` and `remove` use.
    const db = openDatabase(join(reg.root, 'wharf.db'));
    try {
      const cli = new AuthStore(db);
      cli.addUser('judy', bcryptHash('old-judy-password'), false);
      expect(await statusFrom('127.0.7.1', `${reg.url}/v2/`, basic('judy', 'old-judy-password'))).toBe(200);
      // The clock must move on between the old account's sign-in and the new account.
      await new Promise((r) => setTimeout(r, 5));
      cli.removeUser('judy');
      cli.addUser('judy', bcryptHash('new-judy-password'), false);
      for (let i = 0; i < 10; i++) expect(await statusFrom(`127.0.8.${i + 1}`, `${reg.url}/v2/`, basic('judy', `guess-${i}`))).toBe(401);
      // The old judy's address is nobody's now: held back with every other.
      expect(await statusFrom('127.0.7.1', `${reg.url}/v2/`, basic('judy', 'new-judy-password'))).toBe(429);
    } finally {
      db.close();
      await reg.close();
    }
  });

  test("a re-added user's sign-in from the old account's address is written, within the hour the old one's was: a restart keeps it", () => {
    const db = openDatabase(':memory:');
    try {
      let now = Date.UTC(2026, 0, 1);
      const store = new AuthStore(db);
      store.addUser('judy', 'x', false);
      const known = new KnownAddresses(store.knownAddressStore(), () => now);
      known.remember('judy', '10.0.0.1');
      now += 60_000;
      store.removeUser('judy');
      now += 60_000;
      db.prepare('INSERT INTO auth_users (name, password_hash, admin, created_at) VALUES (?, ?, 0, ?)').run('judy', 'y', now);
      const createdAt = now;
      now += 60_000;
      known.remember('judy', '10.0.0.1', createdAt);
      expect(known.knows('judy', '10.0.0.1', createdAt)).toBe(true);
      expect(new KnownAddresses(store.knownAddressStore(), () => now).knows('judy', '10.0.0.1', createdAt)).toBe(true);
    } finally {
      db.close();
    }
  });

  test('a store that cannot be read, or written, is told once to the log; sign-ins go on from memory', () => {
    const warnings: string[] = [];
    const warn = (message: string, err: unknown) => warnings.push(`${message} (${(err as Error).message})`);
    let failing = true;
    const writes: string[] = [];
    const store = {
      load: () => {
        throw new Error('SQLITE_CORRUPT');
      },
      save: (user: string, address: string) => {
        if (failing) throw new Error('SQLITE_FULL');
        writes.push(`${user}@${address}`);
      },
    };
    const known = new KnownAddresses(store, Date.now, warn);
    expect(warnings).toEqual([expect.stringMatching(/^could not read the addresses users signed in from.*\(SQLITE_CORRUPT\)$/)]);
    known.remember('ivan', '10.0.0.1');
    known.remember('judy', '10.0.0.2');
    known.remember('kate', '10.0.0.3');
    expect(warnings).toHaveLength(2);
    expect(warnings[1]).toMatch(/^could not save the address a user signed in from: a restart will forget it \(SQLITE_FULL\)$/);
    expect(known.knows('judy', '10.0.0.2')).toBe(true);
    // Writes work again, then fail again: told again.
    failing = false;
    known.remember('liam', '10.0.0.4');
    expect(writes).toEqual(['liam@10.0.0.4']);
    failing = true;
    known.remember('mona', '10.0.0.5');
    expect(warnings).toHaveLength(3);
  });

  test('a sign-in is written once an hour at most, at most 32 addresses per user are kept, and those over 30 days old are dropped', () => {
    const db = openDatabase(':memory:');
    try {
      const store = new AuthStore(db).knownAddressStore();
      let now = Date.UTC(2026, 0, 1);
      const known = new KnownAddresses(store, () => now);
      const rows = () => db.prepare('SELECT user, address, at FROM auth_known_addresses ORDER BY at, address').all() as { user: string; address: string; at: number }[];
      known.remember('ivan', '10.0.0.1');
      now += 60_000;
      known.remember('ivan', '10.0.0.1');
      expect(rows()).toEqual([{ user: 'ivan', address: '10.0.0.1', at: Date.UTC(2026, 0, 1) }]);
      now += 3_600_000;
      known.remember('ivan', '10.0.0.1');
      expect(rows().map((r) => r.at)).toEqual([now]);
      for (let i = 0; i < 40; i++) {
        now += 1;
        known.remember('ivan', `10.0.1.${i}`);
      }
      expect(rows()).toHaveLength(32);
      expect(rows().map((r) => r.address)).not.toContain('10.0.0.1');
      // Thirty days on, a new process knows none of them, and the table is emptied of them.
      now += 31 * 86_400_000;
      const later = new KnownAddresses(store, () => now);
      expect(later.knows('ivan', '10.0.1.39')).toBe(false);
      expect(rows()).toEqual([]);
      // Within the 30 days, it does.
      known.remember('ivan', '10.0.2.1');
      expect(new KnownAddresses(store, () => now + 86_400_000).knows('ivan', '10.0.2.1')).toBe(true);
    } finally {
      db.close();
    }
  });
});
