import { afterAll, describe, expect, test } from '@jest/globals';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDatabase } from '@wharf/registry-core';
import bcrypt from 'bcryptjs';
import { AuthStore } from '../../src/auth/auth-store.js';
import { sleep } from '../helpers/http.js';
import type { TestRegistry } from '../helpers/start-registry.js';
import { basic, bcryptHash, fetchToken, startAuthRegistry, type TokenReply } from './helpers.js';

/**
 * What a user's tokens do when the account changes outside `wharf user passwd` and `wharf user
 * remove`: a configuration user's password edited in configuration.toml, the user taken out of it,
 * and later a new user of the same name.
 */
describe("a configuration user's refresh tokens and PATs across changes to configuration.toml", () => {
  let root: string;
  /** The server running now, closed by the test or, if it fails, here. */
  let reg: TestRegistry | undefined;
  afterAll(async () => {
    await reg?.close();
    if (root) await rm(root, { recursive: true, force: true });
  });
  const restart = async (users: readonly object[]): Promise<TestRegistry> => {
    await reg?.close();
    reg = undefined;
    reg = await startAuthRegistry({ root, authSettings: { users } });
    return reg;
  };

  test('a new password ends the refresh tokens of the old one; a user taken out of the configuration loses every token, and a new user of that name gets none of them', async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-accounts-'));
    const admin = { name: 'root', password_hash: bcryptHash('root-password-1'), admin: true };
    // dave, a configuration user, runs `docker login`: a refresh token for 30 days; and makes a PAT.
    let server = await restart([admin, { name: 'dave', password_hash: bcryptHash('dave-old-password') }]);
    const login = await fetchToken(`${server.url}/auth/token`, 'wharf', [], { user: 'dave', password: 'dave-old-password' }, '&offline_token=true');
    expect(login.status).toBe(200);
    const refreshToken = ((await login.json()) as TokenReply).refresh_token!;
    const pat = server.auth!.store.createToken({ type: 'pat', user: 'dave', scopes: ['pull', 'push'], expiresAt: Date.now() + 86_400_000 });
    const refresh = (url: string): Promise<Response> =>
      fetch(`${url}/auth/token`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken, client_id: 'test', scope: 'repository:dave/app:pull,push' }).toString(),
      });
    expect((await refresh(server.url)).status).toBe(200);

    // The same password after a restart: the refresh token still works.
    server = await restart([admin, { name: 'dave', password_hash: bcryptHash('dave-old-password') }]);
    expect((await refresh(server.url)).status).toBe(200);

    // The operator gives dave a new password in configuration.toml: what the old one got ends with it.
    server = await restart([admin, { name: 'dave', password_hash: bcryptHash('dave-new-password') }]);
    expect((await fetch(`${server.url}/v2/`, { headers: { Authorization: basic('dave', 'dave-old-password') } })).status).toBe(401);
    expect((await refresh(server.url)).status).toBe(401);
    // A PAT is no password: it lives on.
    expect((await fetch(`${server.url}/v2/`, { headers: { Authorization: basic('dave', pat.secret) } })).status).toBe(200);

    // dave is taken out of the configuration; later someone else is made "dave" in the database.
    server = await restart([admin]);
    expect((await fetch(`${server.url}/v2/`, { headers: { Authorization: basic('dave', pat.secret) } })).status).toBe(401);
    server.auth!.store.addUser('dave', bcryptHash('another-dave-password'), false);
    expect((await refresh(server.url)).status).toBe(401);
    expect((await fetch(`${server.url}/v2/`, { headers: { Authorization: basic('anyone', pat.secret) } })).status).toBe(401);
  });
});

describe('a database user removed, and another added under the same name', () => {
  test("gets none of the first one's bearer tokens, though they have not expired", async () => {
    const admin = { name: 'root', password_hash: bcryptHash('root-password-1'), admin: true };
    const server = await startAuthRegistry({ authSettings: { users: [admin] } });
    try {
      const store = server.auth!.store;
      store.addUser('erin', bcryptHash('first-erin-password'), false);
      const reply = await fetchToken(`${server.url}/auth/token`, 'wharf', ['repository:erin/app:pull,push'], { user: 'erin', password: 'first-erin-password' });
      const first = ((await reply.json()) as TokenReply).token;
      const v2 = (token: string): Promise<number> => fetch(`${server.url}/v2/erin/app/tags/list`, { headers: { Authorization: `Bearer ${token}` } }).then((r) => r.status);
      expect(await v2(first)).toBe(404); // signed in, allowed, and nothing there yet
      store.removeUser('erin');
      expect(await v2(first)).toBe(401);
      // A token's issue time is kept to the second: the new user comes at least a second later.
      await new Promise((r) => setTimeout(r, 1_100));
      store.addUser('erin', bcryptHash('second-erin-password'), false);
      expect(await v2(first)).toBe(401);
      const again = await fetchToken(`${server.url}/auth/token`, 'wharf', ['repository:erin/app:pull,push'], { user: 'erin', password: 'second-erin-password' });
      expect(await v2(((await again.json()) as TokenReply).token)).toBe(404);
    } finally {
      await server.close();
    }
  });
});

describe("a user's new password", () => {
  test('ends the bearer tokens got with the old one at once; a PAT and its tokens live on', async () => {
    const admin = { name: 'root', password_hash: bcryptHash('root-password-1'), admin: true };
    const server = await startAuthRegistry({ authSettings: { users: [admin] } });
    try {
      const store = server.auth!.store;
      store.addUser('fred', bcryptHash('fred-old-password'), false);
      const tokenOf = async (password: string): Promise<string> => {
        const reply = await fetchToken(`${server.url}/auth/token`, 'wharf', ['repository:fred/app:pull,push'], { user: 'fred', password });
        expect(reply.status).toBe(200);
        return ((await reply.json()) as TokenReply).token;
      };
      const v2 = (token: string): Promise<number> => fetch(`${server.url}/v2/fred/app/tags/list`, { headers: { Authorization: `Bearer ${token}` } }).then((r) => r.status);
      const old = await tokenOf('fred-old-password');
      const pat = store.createToken({ type: 'pat', user: 'fred', scopes: ['pull', 'push'], expiresAt: Date.now() + 86_400_000 });
      const fromPat = await tokenOf(pat.secret);
      expect([await v2(old), await v2(fromPat)]).toEqual([404, 404]); // signed in, allowed, nothing there yet
      // `wharf user passwd fred` (the CLI writes the same row), the token's issue second not yet over.
      store.setPassword('fred', bcryptHash('fred-new-password'));
      const refused = await fetch(`${server.url}/v2/fred/app/tags/list`, { headers: { Authorization: `Bearer ${old}` } });
      expect(refused.status).toBe(401);
      expect(await refused.text()).toContain("the user's password changed");
      expect(await v2(await tokenOf('fred-new-password'))).toBe(404);
      expect(await v2(fromPat)).toBe(404);
    } finally {
      await server.close();
    }
  });
});

describe('a database made before refresh tokens noted their password', () => {
  test('gets the column, and keeps its tokens', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-accounts-'));
    try {
      const db = openDatabase(join(dir, 'wharf.db'));
      // The table as the twenty-fifth session's Wharf made it, with one token in it.
      db.exec(`CREATE TABLE auth_tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL CHECK (type IN ('pat', 'ci', 'refresh')), hash TEXT NOT NULL UNIQUE,
        user TEXT NOT NULL, name TEXT, scopes TEXT NOT NULL, namespace TEXT, parent_id INTEGER, expires_at INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, last_used_at INTEGER)`);
      db.prepare("INSERT INTO auth_tokens (type, hash, user, scopes, expires_at, created_at) VALUES ('refresh', 'h', 'dave', '', ?, ?)").run(Date.now() + 60_000, Date.now());
      const store = new AuthStore(db);
      expect(store.token(1)).toMatchObject({ type: 'refresh', user: 'dave', revoked: false });
      expect(store.token(1)?.credential).toBeUndefined();
      const made = store.createToken({ type: 'refresh', user: 'dave', scopes: [], credential: 'abc', expiresAt: Date.now() + 60_000 });
      expect(store.token(made.id)?.credential).toBe('abc');
      db.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('a group configured with the name of a database user', () => {
  test('is refused at start, naming both ways out, rather than handing the user the group\'s namespace', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-accounts-'));
    const admin = { name: 'root', password_hash: bcryptHash('root-password-1'), admin: true };
    let server: TestRegistry | undefined;
    try {
      server = await startAuthRegistry({ root: dir, authSettings: { users: [admin, { name: 'alice', password_hash: bcryptHash('alice-password-1') }] } });
      server.auth!.store.addUser('team', bcryptHash('team-password-1'), false);
      await server.close();
      server = undefined;
      const groups = [{ name: 'team', members: { alice: 'reader' } }];
      await expect(startAuthRegistry({ root: dir, authSettings: { users: [admin, { name: 'alice', password_hash: bcryptHash('alice-password-1') }], groups } })).rejects.toThrow(
        /\[\[auth\.groups\]\] "team" has the name of a user in the database.*wharf user remove team/,
      );
    } finally {
      await server?.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('a password changed while a sign-in with the old one is being checked', () => {
  test('the tokens that sign-in gets end with the old password, as those got before the change do', async () => {
    const admin = { name: 'root', password_hash: bcryptHash('root-password-1'), admin: true };
    const server = await startAuthRegistry({ authSettings: { users: [admin] } });
    try {
      const store = server.auth!.store;
      // A slow hash (cost 14: about a second on the password thread), so that the change comes
      // while the check of the old password runs, as `wharf user passwd` from another process can.
      store.addUser('fay', bcrypt.hashSync('fay-old-password', 14), false);
      const signIn = fetchToken(`${server.url}/auth/token`, 'wharf', ['repository:fay/app:pull,push'], { user: 'fay', password: 'fay-old-password' }, '&offline_token=true');
      await sleep(300);
      store.setPassword('fay', bcryptHash('fay-new-password'));
      const reply = await signIn;
      expect(reply.status).toBe(200); // the old password was right when it was checked
      const { token, refresh_token: refreshToken } = (await reply.json()) as TokenReply;
      const tags = await fetch(`${server.url}/v2/fay/app/tags/list`, { headers: { Authorization: `Bearer ${token}` } });
      expect(tags.status).toBe(401);
      const refreshed = await fetch(`${server.url}/auth/token`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken!, client_id: 'test', scope: 'repository:fay/app:pull' }).toString(),
      });
      expect(refreshed.status).toBe(401);
      // The new password signs in, and its token works.
      const again = await fetchToken(`${server.url}/auth/token`, 'wharf', ['repository:fay/app:pull,push'], { user: 'fay', password: 'fay-new-password' });
      const fresh = ((await again.json()) as TokenReply).token;
      expect((await fetch(`${server.url}/v2/fay/app/tags/list`, { headers: { Authorization: `Bearer ${fresh}` } })).status).toBe(404);
    } finally {
      await server.close();
    }
  });
});
