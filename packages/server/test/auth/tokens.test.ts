import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHmac, createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { SignJWT, calculateJwkThumbprint, exportJWK } from 'jose';
import type { LoginLimiter } from '../../src/auth/login-limiter.js';
import { rawRequest } from '../helpers/http.js';
import type { TestRegistry } from '../helpers/start-registry.js';
import {
  Secrets,
  basic,
  bcryptHash,
  captureLog,
  claimsOf,
  fetchToken,
  parseChallenge,
  pushWith,
  RegistryClient,
  requestFrom,
  startAuthRegistry,
  type LogCapture,
  type TokenReply,
} from './helpers.js';

const PW = { alice: 'alice-token-pw1', bob: 'bob-token-pw12', root: 'root-token-pw123' } as const;

function form(fields: Record<string, string>): RequestInit {
  return { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(fields).toString() };
}

async function errorCode(res: Response): Promise<string | undefined> {
  return ((await res.json()) as { errors?: { code: string }[] }).errors?.[0]?.code;
}

describe('the token endpoint and bearer tokens', () => {
  let reg: TestRegistry;
  const log: LogCapture = captureLog();
  const secrets = new Secrets();
  let realm: string;
  const alice = { user: 'alice', password: PW.alice };

  /** A token for `scopes`; `cred` null: anonymous. */
  async function token(scopes: string[], cred: { user: string; password: string } | null = alice): Promise<string> {
    const res = await fetchToken(realm, 'wharf', scopes, cred ?? undefined);
    expect(res.status).toBe(200);
    const t = ((await res.json()) as TokenReply).token;
    secrets.add('jwt', t);
    return t;
  }

  const bearer = (t: string) => ({ headers: { Authorization: `Bearer ${t}` } });

  beforeAll(async () => {
    reg = await startAuthRegistry({
      logger: log.logger,
      authSettings: {
        users: [
          { name: 'alice', password_hash: bcryptHash(PW.alice) },
          { name: 'root', password_hash: bcryptHash(PW.root), admin: true },
        ],
        public: ['pub/*'],
      },
    });
    realm = `${reg.url}/auth/token`;
    for (const [u, p] of Object.entries(PW)) secrets.addBasic(u, p);
    const root = new RegistryClient(reg.url, 'basic', { user: 'root', password: PW.root });
    for (const repo of ['alice/app', 'pub/app', 'bob/secret', 'alice/site']) expect((await pushWith(root, repo, '1', repo)).status).toBe(201);
  });

  afterAll(async () => {
    await reg?.close();
  });

  test("the challenge's realm is the Host the client came by: a Compose name with an underscore too, never a Host that is no plain host", async () => {
    const port = new URL(reg.url).port;
    const realmFor = async (host: string) => {
      const res = await rawRequest(reg.url, 'GET', '/v2/', { headers: { Host: host } });
      expect(res.status).toBe(401);
      return parseChallenge(res.headers['www-authenticate'] as string)!.realm;
    };
    // Clients that check a realm against the registry's host (go-containerregistry, the .NET SDK)
    // refused the socket's address the realm fell back to.
    expect(await realmFor('ci_wharf:5000')).toBe('http://ci_wharf:5000/auth/token');
    expect(await realmFor('wharf.example.com')).toBe('http://wharf.example.com/auth/token');
    for (const hostile of ['evil.example/x', 'a@evil.example', 'evil.example:5000"', 'evil.example:80:80']) {
      expect(await realmFor(hostile)).toBe(`http://127.0.0.1:${port}/auth/token`);
    }
  });

  test('GET answers token, access_token, expires_in and issued_at, never cached', async () => {
    const res = await fetchToken(realm, 'wharf', ['repository:alice/app:pull'], alice);
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    const body = (await res.json()) as TokenReply;
    secrets.add('jwt', body.token);
    expect(body.access_token).toBe(body.token);
    expect(body.expires_in).toBe(300);
    expect(Math.abs(Date.parse(body.issued_at) - Date.now())).toBeLessThan(5000);
    expect(body.refresh_token).toBeUndefined();
  });

  test('the JWT is ES256 with a kid (RFC 7638 thumbprint) and iss, sub, aud, exp, nbf, iat, jti, access', async () => {
    const jwt = await token(['repository:alice/app:pull']);
    const header = JSON.parse(Buffer.from(jwt.split('.')[0]!, 'base64url').toString('utf8')) as Record<string, string>;
    const pem = await readFile(join(reg.root, 'auth', 'signing-key.pem'), 'utf8');
    const publicKey = createPublicKey(createPrivateKey(pem));
    expect(header).toEqual({ alg: 'ES256', typ: 'JWT', kid: await calculateJwkThumbprint(await exportJWK(publicKey), 'sha256') });
    const claims = claimsOf(jwt);
    expect(claims).toMatchObject({ iss: 'wharf', aud: 'wharf', sub: 'alice', access: [{ type: 'repository', name: 'alice/app', actions: ['pull'] }] });
    expect(claims.exp).toBe((claims.iat as number) + 300);
    expect(claims.nbf).toBe(claims.iat);
    expect(claims.jti).toMatch(/^[0-9a-f-]{36}$/);
    expect((await stat(join(reg.root, 'auth', 'signing-key.pem'))).mode & 0o777).toBe(0o600);
  });

  test('the grant is the intersection of what was asked and what is allowed; a partial grant is no error', async () => {
    const jwt = await token([
      'repository:alice/app:pull,push,delete,bogus',
      'repository:bob/secret:pull,push',
      'repository:pub/app:pull,push',
      'registry:catalog:*',
      'repository:localhost:5000/alice/app:pull',
      'nonsense',
    ]);
    expect(claimsOf(jwt).access).toEqual([
      { type: 'repository', name: 'alice/app', actions: ['pull', 'push', 'delete'] },
      // Pull on any other name: the proxy might serve it (?ns=, default_upstream); the request is
      // checked again against what serves it, so bob's own repository stays closed to alice.
      { type: 'repository', name: 'bob/secret', actions: ['pull'] },
      { type: 'repository', name: 'pub/app', actions: ['pull'] },
      { type: 'registry', name: 'catalog', actions: ['*'] },
    ]);
  });

  test('a token request asks for 100 scopes at most (400 invalid_scope past that, GET and POST alike); a long token still works, verified at each use', async () => {
    const many = (n: number) => Array.from({ length: n }, (_, i) => `repository:alice/app-${i}-${'n'.repeat(60)}:pull`);
    const refused = await fetchToken(realm, 'wharf', many(101), alice);
    expect(refused.status).toBe(400);
    expect(await refused.json()).toEqual({ error: 'invalid_scope', error_description: 'at most 100 scopes in one token request (got 101)' });
    const posted = await fetch(`${realm}`, form({ grant_type: 'password', client_id: 'x', service: 'wharf', username: 'alice', password: PW.alice, scope: many(101).join(' ') }));
    expect(posted.status).toBe(400);
    // Before: any number, each granted, all in the token, which was then kept among the verified ones.
    const long = await token([...many(99), 'repository:alice/app:pull']);
    expect(long.length).toBeGreaterThan(8 * 1024);
    const verified = (reg.auth as unknown as { issuer: { verified: Map<string, unknown> } }).issuer.verified;
    const before = verified.size;
    for (let i = 0; i < 2; i++) expect((await fetch(`${reg.url}/v2/alice/app/tags/list`, bearer(long))).status).not.toBe(401);
    expect(verified.size).toBe(before);
    const short = await token(['repository:alice/app:pull']);
    expect((await fetch(`${reg.url}/v2/alice/app/tags/list`, bearer(short))).status).not.toBe(401);
    expect(verified.size).toBe(before + 1);
  });

  test('anonymous gets a token limited to public pulls', async () => {
    const jwt = await token(['repository:pub/app:pull,push', 'repository:alice/app:pull', 'registry:catalog:*'], null);
    expect(claimsOf(jwt)).toMatchObject({ sub: '', access: [{ type: 'repository', name: 'pub/app', actions: ['pull'] }] });
    expect((await fetch(`${reg.url}/v2/pub/app/manifests/1`, bearer(jwt))).status).toBe(200);
    const res = await fetch(`${reg.url}/v2/alice/app/manifests/1`, bearer(jwt));
    expect(res.status).toBe(401);
    expect(parseChallenge(res.headers.get('www-authenticate'))).toMatchObject({ scope: 'repository:alice/app:pull', error: 'insufficient_scope' });
  });

  test('wrong credentials get 401 with the OCI UNAUTHORIZED body', async () => {
    const res = await fetchToken(realm, 'wharf', ['repository:alice/app:pull'], { user: 'alice', password: 'wrong-password' });
    expect(res.status).toBe(401);
    expect(await errorCode(res)).toBe('UNAUTHORIZED');
    const unknown = await fetchToken(realm, 'wharf', [], { user: 'nobody', password: 'wrong-password' });
    expect(unknown.status).toBe(401);
  });

  test('a token without the action gets 401 insufficient_scope naming what the route needs', async () => {
    const jwt = await token(['repository:alice/app:pull']);
    expect((await fetch(`${reg.url}/v2/alice/app/manifests/1`, bearer(jwt))).status).toBe(200);
    const res = await fetch(`${reg.url}/v2/alice/app/manifests/1`, { method: 'DELETE', ...bearer(jwt) });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe(`Bearer realm="${realm}",service="wharf",scope="repository:alice/app:delete",error="insufficient_scope"`);
  });

  test('POST, the OAuth2 form: password grant, refresh token only with access_type=offline, then the refresh grant', async () => {
    const fields = { grant_type: 'password', client_id: 'containerd-client', service: 'wharf', username: 'alice', password: PW.alice, scope: 'repository:alice/app:pull repository:alice/app:push' };
    const plain = await fetch(realm, form(fields));
    expect(plain.status).toBe(200);
    const plainBody = (await plain.json()) as TokenReply & { scope: string };
    secrets.add('jwt', plainBody.access_token);
    expect(plainBody.scope).toBe('repository:alice/app:pull,push');
    expect(plainBody.refresh_token).toBeUndefined();

    const offline = await fetch(realm, form({ ...fields, access_type: 'offline' }));
    const { refresh_token: refresh } = (await offline.json()) as TokenReply;
    secrets.add('refresh token', refresh);
    expect(refresh).toMatch(/^wharf_rt_[A-Za-z0-9_-]{43}$/);

    const renewed = await fetch(realm, form({ grant_type: 'refresh_token', client_id: 'containerd-client', refresh_token: refresh!, scope: 'repository:alice/app:pull' }));
    expect(renewed.status).toBe(200);
    const jwt = ((await renewed.json()) as TokenReply).access_token;
    secrets.add('jwt', jwt);
    expect(claimsOf(jwt)).toMatchObject({ sub: 'alice', access: [{ type: 'repository', name: 'alice/app', actions: ['pull'] }] });

    const bogus = await fetch(realm, form({ grant_type: 'refresh_token', client_id: 'x', refresh_token: 'wharf_rt_nope' }));
    expect(bogus.status).toBe(401);
  });

  test("a new password ends the refresh tokens obtained with the old one (docker login keeps one for 30 days)", async () => {
    reg.auth!.store.addUser('dave', bcryptHash('dave-old-password'), false);
    const res = await fetchToken(realm, 'wharf', [], { user: 'dave', password: 'dave-old-password' }, '&offline_token=true&client_id=docker');
    const { refresh_token: refresh } = (await res.json()) as TokenReply;
    secrets.add('refresh token', refresh);
    const grant = () => fetch(realm, form({ grant_type: 'refresh_token', client_id: 'docker', refresh_token: refresh!, scope: 'repository:dave/app:push' }));
    expect((await grant()).status).toBe(200);
    reg.auth!.store.setPassword('dave', bcryptHash('dave-new-password'));
    expect((await grant()).status).toBe(401);
  });

  test('a refresh token obtained with a CI token lives as long as that token, whatever the password does', async () => {
    reg.auth!.store.addUser('frank', bcryptHash('frank-old-password'), false);
    const ci = reg.auth!.store.createToken({ type: 'ci', user: 'frank', scopes: ['pull', 'push'], namespace: 'frank', expiresAt: Date.now() + 600_000 });
    secrets.add('ci token', ci.secret);
    const offline = await fetch(realm, form({ grant_type: 'password', client_id: 'docker', service: 'wharf', username: 'ci', password: ci.secret, access_type: 'offline', scope: 'repository:frank/app:pull' }));
    const { refresh_token: refresh } = (await offline.json()) as TokenReply;
    secrets.add('refresh token', refresh);
    reg.auth!.store.setPassword('frank', bcryptHash('frank-new-password'));
    const renewed = await fetch(realm, form({ grant_type: 'refresh_token', client_id: 'docker', refresh_token: refresh!, scope: 'repository:frank/app:pull' }));
    expect(renewed.status).toBe(200);
  });

  test('GET with offline_token=true returns a refresh token', async () => {
    const res = await fetchToken(realm, 'wharf', [], alice, '&offline_token=true&client_id=docker');
    const body = (await res.json()) as TokenReply;
    secrets.add('jwt', body.token);
    secrets.add('refresh token', body.refresh_token);
    expect(body.refresh_token).toMatch(/^wharf_rt_/);
  });

  test('malformed POSTs are 400 (containerd then falls back to GET)', async () => {
    const missingClient = await fetch(realm, form({ grant_type: 'password', username: 'alice', password: PW.alice }));
    expect(missingClient.status).toBe(400);
    expect(await missingClient.json()).toMatchObject({ error: 'invalid_request' });
    const badGrant = await fetch(realm, form({ grant_type: 'client_credentials', client_id: 'x' }));
    expect(await badGrant.json()).toMatchObject({ error: 'unsupported_grant_type' });
    const json = await fetch(realm, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    expect(json.status).toBe(400);
    const wrong = await fetch(realm, form({ grant_type: 'password', client_id: 'x', username: 'alice', password: 'wrong-password' }));
    expect(wrong.status).toBe(401);
    expect(await errorCode(wrong)).toBe('UNAUTHORIZED');
  });

  test('a personal access token works as the password with any user name, within its scopes', async () => {
    const pat = reg.auth!.store.createToken({ type: 'pat', user: 'alice', scopes: ['pull'], expiresAt: Date.now() + 60_000 });
    secrets.addBasic('whoever', pat.secret);
    const cred = { user: 'whoever', password: pat.secret };
    expect((await fetch(`${reg.url}/v2/alice/app/manifests/1`, { headers: { Authorization: basic('whoever', pat.secret) } })).status).toBe(200);
    const push = await fetch(`${reg.url}/v2/alice/app/blobs/uploads/`, { method: 'POST', headers: { Authorization: basic('whoever', pat.secret) } });
    expect(push.status).toBe(403);
    const jwt = await token(['repository:alice/app:pull,push'], cred);
    expect(claimsOf(jwt)).toMatchObject({ sub: 'alice', tid: pat.id, access: [{ type: 'repository', name: 'alice/app', actions: ['pull'] }] });
    expect((await fetch(`${reg.url}/v2/alice/app/manifests/1`, bearer(jwt))).status).toBe(200);

    // Revoked: Basic stops at once, and so does the bearer token issued for it.
    reg.auth!.store.revoke(pat.id);
    expect((await fetch(`${reg.url}/v2/alice/app/manifests/1`, { headers: { Authorization: basic('whoever', pat.secret) } })).status).toBe(401);
    const after = await fetch(`${reg.url}/v2/alice/app/manifests/1`, bearer(jwt));
    expect(after.status).toBe(401);
    expect(parseChallenge(after.headers.get('www-authenticate'))?.error).toBe('invalid_token');
  });

  test('an expired personal access token is refused', async () => {
    const pat = reg.auth!.store.createToken({ type: 'pat', user: 'alice', scopes: ['pull'], expiresAt: Date.now() - 1 });
    secrets.addBasic('x', pat.secret);
    expect((await fetch(`${reg.url}/v2/alice/app/manifests/1`, { headers: { Authorization: basic('x', pat.secret) } })).status).toBe(401);
  });

  test('a user removed from the database loses their tokens at once', async () => {
    const store = reg.auth!.store;
    store.addUser('temp', bcryptHash('temp-password-1'), false);
    secrets.addBasic('temp', 'temp-password-1');
    const jwt = await token(['repository:temp/app:pull'], { user: 'temp', password: 'temp-password-1' });
    expect((await fetch(`${reg.url}/v2/`, bearer(jwt))).status).toBe(200);
    store.removeUser('temp');
    expect((await fetch(`${reg.url}/v2/`, bearer(jwt))).status).toBe(401);
  });

  test('marking a repository public takes effect without a restart', async () => {
    expect((await fetch(`${reg.url}/v2/alice/site/manifests/1`)).status).toBe(401);
    reg.auth!.store.addPublic('alice/site');
    expect((await fetch(`${reg.url}/v2/alice/site/manifests/1`)).status).toBe(200);
    reg.auth!.store.removePublic('alice/site');
    expect((await fetch(`${reg.url}/v2/alice/site/manifests/1`)).status).toBe(401);
  });

  test('admin endpoints want an administrator signed in with a password', async () => {
    const path = `${reg.url}/admin/proxy/cache/docker.io`;
    const anonymous = await fetch(path, { method: 'DELETE' });
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('www-authenticate')).toBe('Basic realm="wharf"');
    expect((await fetch(path, { method: 'DELETE', headers: { Authorization: basic('alice', PW.alice) } })).status).toBe(403);
    expect((await fetch(path, { method: 'DELETE', headers: { Authorization: basic('root', PW.root) } })).status).toBe(200);
  });

  describe('forged and invalid tokens are rejected', () => {
    let serverKey: KeyObject;
    const access = [{ type: 'repository', name: 'alice/app', actions: ['pull'] }];
    const path = '/v2/alice/app/manifests/1';

    beforeAll(async () => {
      serverKey = createPrivateKey(await readFile(join(reg.root, 'auth', 'signing-key.pem'), 'utf8'));
    });

    function claims(over: { exp?: number; nbf?: number; iat?: number; aud?: string; iss?: string; alg?: string } = {}) {
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ access })
        .setProtectedHeader({ alg: over.alg ?? 'ES256', typ: 'JWT' })
        .setIssuer(over.iss ?? 'wharf')
        .setAudience(over.aud ?? 'wharf')
        .setSubject('alice')
        .setIssuedAt(over.iat ?? now)
        .setNotBefore(over.nbf ?? now)
        .setExpirationTime(over.exp ?? now + 300)
        .setJti(randomUUID());
    }

    async function expectRejected(jwt: string) {
      secrets.add('forged jwt', jwt);
      const res = await fetch(`${reg.url}${path}`, bearer(jwt));
      expect(res.status).toBe(401);
      expect(parseChallenge(res.headers.get('www-authenticate'))).toMatchObject({ realm, service: 'wharf', error: 'invalid_token' });
      expect(await errorCode(res)).toBe('UNAUTHORIZED');
    }

    const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

    test('control: a token signed with the server key is accepted', async () => {
      expect((await fetch(`${reg.url}${path}`, bearer(await claims().sign(serverKey)))).status).toBe(200);
    });

    test('a token that is no RFC 6750 b64token (an "=" inside, or none at all) is told malformed, as a bearer token', async () => {
      for (const header of ['Bearer W10=.e30.sig', 'Bearer ', 'Bearer']) {
        const res = await fetch(`${reg.url}${path}`, { headers: { Authorization: header } });
        expect(res.status).toBe(401);
        expect(parseChallenge(res.headers.get('www-authenticate'))).toMatchObject({ realm, error: 'invalid_token' });
        expect(((await res.json()) as { errors: { message: string }[] }).errors[0]!.message).toBe('malformed bearer token');
      }
    });

    test('signed with another key', async () => {
      await expectRejected(await claims().sign(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey));
    });

    test('payload tampered after signing', async () => {
      const [h, , s] = (await claims().sign(serverKey)).split('.');
      const payload = { ...claimsOf(await claims().sign(serverKey)), access: [{ type: 'repository', name: 'bob/secret', actions: ['pull', 'push', 'delete'] }] };
      await expectRejected(`${h}.${b64(payload)}.${s}`);
    });

    test('expired', async () => {
      const now = Math.floor(Date.now() / 1000);
      await expectRejected(await claims({ iat: now - 600, nbf: now - 600, exp: now - 10 }).sign(serverKey));
    });

    test('not yet valid', async () => {
      const now = Math.floor(Date.now() / 1000);
      await expectRejected(await claims({ nbf: now + 600, exp: now + 900 }).sign(serverKey));
    });

    test('wrong audience, wrong issuer', async () => {
      await expectRejected(await claims({ aud: 'other-registry' }).sign(serverKey));
      await expectRejected(await claims({ iss: 'someone-else' }).sign(serverKey));
    });

    test('alg none', async () => {
      const payload = claimsOf(await claims().sign(serverKey));
      await expectRejected(`${b64({ alg: 'none', typ: 'JWT' })}.${b64(payload)}.`);
      await expectRejected(`${b64({ alg: 'none', typ: 'JWT' })}.${b64(payload)}`);
    });

    test('HS256 with the public key as the HMAC secret (algorithm confusion)', async () => {
      const payload = claimsOf(await claims().sign(serverKey));
      const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(payload)}`;
      for (const secret of [
        createPublicKey(serverKey).export({ type: 'spki', format: 'pem' }) as string,
        createPublicKey(serverKey).export({ type: 'spki', format: 'der' }),
        JSON.stringify(await exportJWK(createPublicKey(serverKey))),
      ]) {
        await expectRejected(`${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`);
      }
    });

    test('RS256 with an attacker key', async () => {
      await expectRejected(await claims({ alg: 'RS256' }).sign(generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey));
    });

    test('garbage', async () => {
      await expectRejected('not-a-jwt');
      await expectRejected('aaaa.bbbb.cccc');
    });
  });

  test('after the suite, no password, token or Authorization value is in the log', () => {
    expect(secrets.size).toBeGreaterThan(10);
    secrets.assertNotIn(log.text());
  });
});

const getFrom = requestFrom;

describe('failed logins are limited per address and per user', () => {
  let reg: TestRegistry;
  const log = captureLog();
  const secrets = new Secrets();

  beforeAll(async () => {
    reg = await startAuthRegistry({
      logger: log.logger,
      loginLimits: { maxFailures: 10, windowMs: 5 * 60_000 },
      authSettings: {
        users: [
          { name: 'alice', password_hash: bcryptHash(PW.alice) },
          { name: 'bob', password_hash: bcryptHash(PW.bob) },
          // Cost 11: bcryptjs hashes in slices of about 100 ms, so checks sent at once overlap.
          { name: 'carol', password_hash: bcrypt.hashSync(PW.alice, 11) },
          { name: 'erin', password_hash: bcrypt.hashSync(PW.alice, 12) },
          { name: 'hana', password_hash: bcryptHash(PW.alice) },
          { name: 'ivan', password_hash: bcryptHash(PW.alice) },
        ],
      },
    });
    secrets.addBasic('alice', PW.alice);
    secrets.addBasic('bob', PW.bob);
    secrets.addBasic('carol', PW.alice);
  });

  afterAll(async () => {
    await reg?.close();
  });

  const tokenUrl = () => `${reg.url}/auth/token?service=wharf&scope=repository:alice/app:pull`;

  test('the 11th attempt for a user within 5 minutes is 429 with Retry-After, even with the right password, from any address', async () => {
    for (let i = 0; i < 10; i++) {
      secrets.addBasic('alice', `guess-number-${i}`);
      expect((await getFrom('127.0.0.2', tokenUrl(), { Authorization: basic('alice', `guess-number-${i}`) })).status).toBe(401);
    }
    const blocked = await getFrom('127.0.0.2', tokenUrl(), { Authorization: basic('alice', PW.alice) });
    expect(blocked.status).toBe(429);
    expect(Number(blocked.retryAfter)).toBeGreaterThan(200);
    expect(Number(blocked.retryAfter)).toBeLessThanOrEqual(300);
    expect(JSON.parse(blocked.body).errors[0].code).toBe('TOOMANYREQUESTS');
    // Per user: another address does not help, on the token endpoint or with Basic on /v2.
    expect((await getFrom('127.0.0.3', tokenUrl(), { Authorization: basic('alice', PW.alice) })).status).toBe(429);
    const v2 = await getFrom('127.0.0.3', `${reg.url}/v2/`, { Authorization: basic('alice', PW.alice) });
    expect(v2.status).toBe(429);
    expect(v2.retryAfter).toBeDefined();
    // Another user from that address is fine.
    expect((await getFrom('127.0.0.3', `${reg.url}/v2/`, { Authorization: basic('bob', PW.bob) })).status).toBe(200);
  });

  test('guesses at a password from elsewhere do not lock its owner out where they signed in before; a new address is held back', async () => {
    secrets.addBasic('ivan', PW.alice);
    expect((await getFrom('127.0.3.1', `${reg.url}/v2/`, { Authorization: basic('ivan', PW.alice) })).status).toBe(200);
    // Someone with no account guesses at ivan's password, each guess from an address of its own.
    for (let i = 0; i < 10; i++) {
      secrets.addBasic('ivan', `ivan-guess-${i}`);
      expect((await getFrom(`127.0.4.${i + 1}`, `${reg.url}/v2/`, { Authorization: basic('ivan', `ivan-guess-${i}`) })).status).toBe(401);
    }
    expect((await getFrom('127.0.4.20', `${reg.url}/v2/`, { Authorization: basic('ivan', PW.alice) })).status).toBe(429);
    // ivan, from where he signed in before: in, on /v2 and at the token endpoint.
    expect((await getFrom('127.0.3.1', `${reg.url}/v2/`, { Authorization: basic('ivan', PW.alice) })).status).toBe(200);
    expect((await getFrom('127.0.3.1', tokenUrl(), { Authorization: basic('ivan', PW.alice) })).status).toBe(200);
    // Guesses from that address still count against it.
    for (let i = 0; i < 10; i++) {
      secrets.addBasic('ivan', `ivan-own-guess-${i}`);
      expect((await getFrom('127.0.3.1', `${reg.url}/v2/`, { Authorization: basic('ivan', `ivan-own-guess-${i}`) })).status).toBe(401);
    }
    expect((await getFrom('127.0.3.1', `${reg.url}/v2/`, { Authorization: basic('ivan', PW.alice) })).status).toBe(429);
  });

  test("a token sent under another user's name does not clear the guesses counted against that user's password", async () => {
    // Ten wrong passwords for hana, each from an address of its own: her limit is reached.
    for (let i = 0; i < 10; i++) {
      secrets.addBasic('hana', `hana-guess-${i}`);
      expect((await getFrom(`127.0.1.${i + 1}`, `${reg.url}/v2/`, { Authorization: basic('hana', `hana-guess-${i}`) })).status).toBe(401);
    }
    // bob's own token, with hana's name as the user name (free text with a token): accepted, as bob.
    const pat = reg.auth!.store.createToken({ type: 'pat', user: 'bob', scopes: ['pull'], expiresAt: Date.now() + 60_000 });
    secrets.addBasic('hana', pat.secret);
    expect((await getFrom('127.0.2.1', `${reg.url}/v2/`, { Authorization: basic('hana', pat.secret) })).status).toBe(200);
    // It did not reset hana's count: the next guess at her password is still refused unchecked.
    const next = await getFrom('127.0.2.2', `${reg.url}/v2/`, { Authorization: basic('hana', PW.alice) });
    expect(next.status).toBe(429);
  });

  test('the 11th attempt from one address is 429 whatever the user name (Basic on /v2 counts too)', async () => {
    for (let i = 0; i < 10; i++) {
      secrets.addBasic(`user${i}`, `guess-number-${i}`);
      expect((await getFrom('127.0.0.4', `${reg.url}/v2/`, { Authorization: basic(`user${i}`, `guess-number-${i}`) })).status).toBe(401);
    }
    expect((await getFrom('127.0.0.4', `${reg.url}/v2/`, { Authorization: basic('bob', PW.bob) })).status).toBe(429);
    expect((await getFrom('127.0.0.4', tokenUrl(), { Authorization: basic('bob', PW.bob) })).status).toBe(429);
    expect((await getFrom('127.0.0.5', `${reg.url}/v2/`, { Authorization: basic('bob', PW.bob) })).status).toBe(200);
  });

  test('a user name no account can have is refused at once, counted nowhere and kept nowhere (a flood of 60 KB names ran the heap out)', async () => {
    const limiter = (reg.auth as unknown as { limiter: LoginLimiter }).limiter;
    const before = limiter.tracked;
    const names = ['Alice', 'dev@example.com', 'a b', `x${'a'.repeat(20_000)}`];
    for (let i = 0; i < 12; i++) {
      const user = `${names[i % names.length]!}${i}`;
      secrets.addBasic(user, `no-account-guess-${i}`);
      // On /v2 and at the token endpoint, Basic and the OAuth2 form alike: 401, never 429.
      const v2 = await getFrom('127.0.0.8', `${reg.url}/v2/`, { Authorization: basic(user, `no-account-guess-${i}`) });
      expect(v2.status).toBe(401);
      const posted = await fetch(`${reg.url}/auth/token`, form({ grant_type: 'password', client_id: 'x', service: 'wharf', username: `${user}z`, password: `no-account-guess-${i}` }));
      expect(posted.status).toBe(401);
    }
    // Before: one key per name in the limiter, each as long as the name, and the address locked at the 11th.
    expect(limiter.tracked).toBe(before);
    expect((await getFrom('127.0.0.8', `${reg.url}/v2/`, { Authorization: basic('bob', PW.bob) })).status).toBe(200);
  });

  test('with a token as the password only the address counts: bad tokens under "ci" do not lock other jobs out', async () => {
    for (let i = 0; i < 10; i++) {
      expect((await getFrom('127.0.0.6', `${reg.url}/v2/`, { Authorization: basic('ci', `wharf_ci_expired${i}`) })).status).toBe(401);
    }
    const good = reg.auth!.store.createToken({ type: 'ci', user: 'bob', scopes: ['pull', 'push'], namespace: 'bob', expiresAt: Date.now() + 60_000 });
    secrets.addBasic('ci', good.secret);
    expect((await getFrom('127.0.0.7', `${reg.url}/v2/`, { Authorization: basic('ci', good.secret) })).status).toBe(200);
    expect((await getFrom('127.0.0.6', `${reg.url}/v2/`, { Authorization: basic('ci', good.secret) })).status).toBe(429);
  });

  test('a burst of guesses sent at once, and more after it, get 10 checked, not more; the right password after them is 429', async () => {
    const guesses = Array.from({ length: 16 }, (_, i) => `burst-guess-${i}`);
    for (const g of guesses) secrets.addBasic('carol', g);
    const statuses = await Promise.all(guesses.map((g) => getFrom('127.0.0.8', `${reg.url}/v2/`, { Authorization: basic('carol', g) }).then((r) => r.status)));
    expect(statuses.filter((st) => st === 401).length).toBeLessThanOrEqual(10);
    expect(statuses.filter((st) => st === 429).length).toBeGreaterThanOrEqual(6);
    // Those refused for the address's checks already waiting were not checked, nor counted: more
    // guesses after the burst are, up to ten checked in all.
    for (let i = 0; i < 12; i++) {
      const guess = `after-burst-${i}`;
      secrets.addBasic('carol', guess);
      const status = (await getFrom('127.0.0.8', `${reg.url}/v2/`, { Authorization: basic('carol', guess) })).status;
      statuses.push(status);
      if (status === 429) break;
    }
    expect(statuses.filter((st) => st === 401).length).toBe(10);
    expect((await getFrom('127.0.0.8', `${reg.url}/v2/`, { Authorization: basic('carol', PW.alice) })).status).toBe(429);
  });

  test('IPv6: each address has its own limit, and its /64 one ten times looser (a cloud subnet is one /64; an attacker holds all of it)', async () => {
    const auth = reg.auth!;
    // Tokens as the password: only the address counts (no user's limit in the way).
    const good = auth.store.createToken({ type: 'pat', user: 'alice', scopes: ['pull'], expiresAt: Date.now() + 60_000 }).secret;
    let n = 0;
    const status = (ip: string, right = false) =>
      auth.login('ci', right ? good : `wharf_pat_v6guess${n++}`, ip).then(
        () => 200,
        (err: unknown) => ((err as { code?: string }).code === 'TOOMANYREQUESTS' ? 429 : 401),
      );
    // One machine of the subnet guesses ten times: it is held; its neighbour is not, right token or wrong.
    for (let i = 0; i < 10; i++) expect(await status('2001:db8:5:6::1')).toBe(401);
    expect(await status('2001:db8:5:6::1', true)).toBe(429);
    expect(await status('2001:db8:5:6::2')).toBe(401);
    expect(await status('2001:db8:5:6::3', true)).toBe(200);
    // Ninety more from other addresses of the /64 (an attacker's): the whole /64 is held, another is not.
    for (let a = 1; a <= 9; a++) for (let i = 0; i < 10; i++) await status(`2001:db8:5:6::${a}:${i}`);
    expect(await status('2001:db8:5:6::ffff', true)).toBe(429);
    expect(await status('2001:db8:5:7::1', true)).toBe(200);
  });

  test('the same right credentials sent at once (parallel CI jobs, nodes with one pull secret) share one check: none is refused', async () => {
    secrets.addBasic('erin', PW.alice);
    // From thirty addresses, then from one (the first burst finds no verified password in memory).
    const thirty = await Promise.all(Array.from({ length: 30 }, (_, i) => getFrom(`127.0.1.${i + 1}`, `${reg.url}/v2/`, { Authorization: basic('erin', PW.alice) }).then((r) => r.status)));
    expect(thirty).toEqual(thirty.map(() => 200));
    const one = await Promise.all(Array.from({ length: 24 }, () => getFrom('127.0.0.9', `${reg.url}/v2/`, { Authorization: basic('erin', PW.alice) }).then((r) => r.status)));
    expect(one).toEqual(one.map(() => 200));
  });

  test('the same wrong credentials sent again are no new guess: refused every time, counted once', async () => {
    // What a Docker daemon logged in to Docker Hub sends its mirror with every pull (another user's
    // name, or a user's own name with their Docker Hub password), and a runner's jobs with a stale token.
    secrets.addBasic('dave-hub', 'dckr_pat_hub-secret');
    secrets.addBasic('bob', 'bobs-docker-hub-pw');
    for (let i = 0; i < 15; i++) {
      expect((await getFrom('127.0.0.10', tokenUrl(), { Authorization: basic('dave-hub', 'dckr_pat_hub-secret') })).status).toBe(401);
      expect((await getFrom('127.0.0.10', `${reg.url}/v2/`, { Authorization: basic('bob', 'bobs-docker-hub-pw') })).status).toBe(401);
      expect((await getFrom('127.0.0.10', `${reg.url}/v2/`, { Authorization: basic('ci', 'wharf_ci_stale-token') })).status).toBe(401);
    }
    // Neither the address nor bob is locked out.
    expect((await getFrom('127.0.0.10', tokenUrl(), { Authorization: basic('bob', PW.bob) })).status).toBe(200);
    // Guesses that differ still count: the 11th different one from an address is refused.
    for (let i = 0; i < 7; i++) {
      secrets.addBasic('bob', `different-guess-${i}`);
      expect((await getFrom('127.0.0.10', `${reg.url}/v2/`, { Authorization: basic('bob', `different-guess-${i}`) })).status).toBe(401);
    }
    expect((await getFrom('127.0.0.10', `${reg.url}/v2/`, { Authorization: basic('bob', PW.bob) })).status).toBe(429);
    // Over the limit, credentials refused before are no way around it.
    expect((await getFrom('127.0.0.10', tokenUrl(), { Authorization: basic('dave-hub', 'dckr_pat_hub-secret') })).status).toBe(429);
  });

  test('a password refused a moment ago is taken once it becomes the password, or its user comes to exist', async () => {
    const store = reg.auth!.store;
    store.addUser('frank', bcryptHash('frank-old-password'), false);
    secrets.addBasic('frank', 'frank-new-password');
    secrets.addBasic('gina', 'gina-password-1');
    expect((await getFrom('127.0.0.12', `${reg.url}/v2/`, { Authorization: basic('frank', 'frank-new-password') })).status).toBe(401);
    expect((await getFrom('127.0.0.12', `${reg.url}/v2/`, { Authorization: basic('gina', 'gina-password-1') })).status).toBe(401);
    store.setPassword('frank', bcryptHash('frank-new-password'));
    store.addUser('gina', bcryptHash('gina-password-1'), false);
    expect((await getFrom('127.0.0.12', `${reg.url}/v2/`, { Authorization: basic('frank', 'frank-new-password') })).status).toBe(200);
    expect((await getFrom('127.0.0.12', `${reg.url}/v2/`, { Authorization: basic('gina', 'gina-password-1') })).status).toBe(200);
  });

  test('after the suite, no password is in the log', () => {
    secrets.assertNotIn(log.text());
  });
});
