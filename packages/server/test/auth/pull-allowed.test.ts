import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readAccess } from '../../src/auth/auth-middleware.js';
import type { TestRegistry } from '../helpers/start-registry.js';
import { basic, bcryptHash, fetchToken, pushWith, RegistryClient, startAuthRegistry, type TokenReply } from './helpers.js';

const PW = { alice: 'alice-fast-pw1', root: 'root-fast-pw123' } as const;

/**
 * The manifest fast path asks readAccess whether a read may be answered without the auth middleware.
 * It must say yes only where the middleware lets the read through, and no wherever the middleware
 * has something to do (a refusal with its challenge, a Basic login that counts against the limits).
 */
describe('readAccess (the manifest fast path\'s auth check)', () => {
  let reg: TestRegistry;
  let access: ReturnType<typeof readAccess>;

  async function token(scopes: string[], cred: { user: string; password: string } | undefined): Promise<string> {
    const res = await fetchToken(`${reg.url}/auth/token`, 'wharf', scopes, cred);
    expect(res.status).toBe(200);
    return ((await res.json()) as TokenReply).token;
  }

  const local = (name: string) => ({ repo: name, reader: reg.local, writer: reg.local });
  const ask = async (authorization: string | undefined, name: string) => (await access(authorization, '127.0.0.1', name, local(name))) !== undefined;

  beforeAll(async () => {
    reg = await startAuthRegistry({
      authSettings: {
        users: [
          { name: 'alice', password_hash: bcryptHash(PW.alice) },
          { name: 'root', password_hash: bcryptHash(PW.root), admin: true },
        ],
        public: ['pub/*'],
      },
    });
    access = readAccess(reg.auth!);
    const root = new RegistryClient(reg.url, 'basic', { user: 'root', password: PW.root });
    for (const repo of ['alice/app', 'pub/app', 'bob/secret']) expect((await pushWith(root, repo, '1', repo)).status).toBe(201);
  });
  afterAll(async () => {
    await reg?.close();
  });

  test('anonymous: public repositories yes, private ones no', async () => {
    expect(await ask(undefined, 'pub/app')).toBe(true);
    expect(await ask(undefined, 'alice/app')).toBe(false);
  });

  test('a bearer token: only where it grants pull and the user may pull', async () => {
    const jwt = await token(['repository:alice/app:pull', 'repository:bob/secret:pull'], { user: 'alice', password: PW.alice });
    expect(await ask(`Bearer ${jwt}`, 'alice/app')).toBe(true);
    expect(await ask(`Bearer ${jwt}`, 'bob/secret')).toBe(false);
    expect(await ask(`Bearer ${jwt}`, 'pub/app')).toBe(false);
    const anonymous = await token(['repository:pub/app:pull'], undefined);
    expect(await ask(`Bearer ${anonymous}`, 'pub/app')).toBe(true);
  });

  test('whether the read may push too: only where the user may and the token grants it', async () => {
    const pushOf = async (authorization: string | undefined, name: string) => (await access(authorization, '127.0.0.1', name, local(name)))?.mayPush;
    const both = await token(['repository:alice/app:pull,push'], { user: 'alice', password: PW.alice });
    const pullOnly = await token(['repository:alice/app:pull'], { user: 'alice', password: PW.alice });
    const admin = await token(['repository:pub/app:pull,push'], { user: 'root', password: PW.root });
    const reader = await token(['repository:pub/app:pull,push'], { user: 'alice', password: PW.alice });
    expect(await pushOf(`Bearer ${both}`, 'alice/app')).toBe(true);
    expect(await pushOf(`Bearer ${pullOnly}`, 'alice/app')).toBe(false);
    expect(await pushOf(`Bearer ${admin}`, 'pub/app')).toBe(true);
    // A token that asked for push where its user may only pull was granted pull alone.
    expect(await pushOf(`Bearer ${reader}`, 'pub/app')).toBe(false);
    expect(await pushOf(undefined, 'pub/app')).toBe(false);
  });

  test('a forged or malformed token: no (the middleware answers invalid_token)', async () => {
    const jwt = await token(['repository:alice/app:pull'], { user: 'alice', password: PW.alice });
    const [head, body] = jwt.split('.');
    expect(await ask(`Bearer ${head}.${body}.AAAA`, 'alice/app')).toBe(false);
    expect(await ask('Bearer !!', 'alice/app')).toBe(false);
  });

  test('Basic credentials, even right ones: no (the login is checked once, by the middleware)', async () => {
    expect(await ask(basic('alice', PW.alice), 'alice/app')).toBe(false);
    expect(await ask(basic('root', PW.root), 'pub/app')).toBe(false);
  });

  test('the answers the server gives for the same requests agree', async () => {
    const jwt = await token(['repository:alice/app:pull'], { user: 'alice', password: PW.alice });
    const get = (name: string, authorization?: string) =>
      fetch(`${reg.url}/v2/${name}/manifests/1`, { headers: authorization ? { Authorization: authorization } : {} });
    expect((await get('alice/app', `Bearer ${jwt}`)).status).toBe(200);
    expect((await get('pub/app')).status).toBe(200);
    const refused = await get('alice/app');
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toMatch(/^Bearer realm=/);
    expect((await get('bob/secret', `Bearer ${jwt}`)).status).toBe(401);
    expect((await get('alice/app', basic('alice', PW.alice))).status).toBe(200);
  });
});
