import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { RegistryClient, basic, bcryptHash, fetchToken, parseChallenge, pushWith, startAuthRegistry, type TokenReply } from './helpers.js';
import type { TestRegistry } from '../helpers/start-registry.js';

const PW = { root: 'root-admin-pw-1', alice: 'alice-admin-pw-1' } as const;

/** The operator endpoints with auth on: administrators signed in with a password, and nobody else. */
describe('admin endpoints with auth on', () => {
  let reg: TestRegistry;
  let digest: string;
  const manifestOf = async () => (await fetch(`${reg.url}/v2/alice/private/manifests/1`, { headers: { Authorization: basic('alice', PW.alice), accept: 'application/vnd.oci.image.manifest.v1+json' } })).headers.get('docker-content-digest');

  beforeAll(async () => {
    reg = await startAuthRegistry({
      authSettings: { users: [{ name: 'root', password_hash: bcryptHash(PW.root), admin: true }, { name: 'alice', password_hash: bcryptHash(PW.alice) }] },
    });
    const pushed = await pushWith(new RegistryClient(reg.url, 'basic', { user: 'alice', password: PW.alice }), 'alice/private', '1', 'secret layer');
    expect(pushed.status).toBe(201);
    digest = pushed.headers.get('docker-content-digest')!;
  });
  afterAll(async () => {
    await reg?.close();
  });

  test('every admin path, in any case, without credentials: refused, and nothing exported or imported', async () => {
    for (const prefix of ['/admin', '/ADMIN', '/Admin', '/aDmIn']) {
      for (const route of ['/export', '/EXPORT']) {
        const res = await fetch(`${reg.url}${prefix}${route}?ref=alice/private:1`);
        // 401 where the route exists, 404 where it does not: never an answer.
        expect([prefix + route, res.status === 401 || res.status === 404]).toEqual([prefix + route, true]);
        expect(Buffer.from(await res.arrayBuffer()).includes('secret layer')).toBe(false);
      }
      const imported = await fetch(`${reg.url}${prefix}/import?repository=alice/private&tag=1`, { method: 'POST', body: Buffer.alloc(1024) });
      expect(imported.status === 401 || imported.status === 404).toBe(true);
      const purged = await fetch(`${reg.url}${prefix}/proxy/cache/docker.io`, { method: 'DELETE' });
      expect(purged.status === 401 || purged.status === 404).toBe(true);
    }
    expect(await manifestOf()).toBe(digest);
  });

  test("an administrator's bearer token does not open them; their password does", async () => {
    const challenge = await fetch(`${reg.url}/v2/`);
    const realm = /realm="([^"]+)"/.exec(challenge.headers.get('www-authenticate') ?? '')![1]!;
    const reply = await fetchToken(realm, 'wharf', ['repository:alice/private:pull'], { user: 'root', password: PW.root });
    const { token } = (await reply.json()) as TokenReply;
    const withToken = await fetch(`${reg.url}/admin/export?ref=alice/private:1`, { headers: { Authorization: `Bearer ${token}` } });
    expect(withToken.status).toBe(401);
    expect(withToken.headers.get('www-authenticate')).toMatch(/^Basic /);
    expect(await messageOf(withToken)).toContain("take an administrator's user name and password (Basic), never a token");
    const withPassword = await fetch(`${reg.url}/admin/export?ref=alice/private:1`, { headers: { Authorization: basic('root', PW.root) } });
    expect(withPassword.status).toBe(200);
    expect(Buffer.from(await withPassword.arrayBuffer()).includes('secret layer')).toBe(true);
    const notAdmin = await fetch(`${reg.url}/admin/export?ref=alice/private:1`, { headers: { Authorization: basic('alice', PW.alice) } });
    expect(notAdmin.status).toBe(403);
    expect(await messageOf(notAdmin)).toBe('requested access to the resource is denied: /admin endpoints answer administrators only, and alice is not one');
  });

  test("a refusal says why: a push outside one's namespace, a request the API does not have", async () => {
    const alice = { Authorization: basic('alice', PW.alice) };
    const push = await fetch(`${reg.url}/v2/root/app/blobs/uploads/`, { method: 'POST', headers: alice });
    expect(push.status).toBe(403);
    expect(await messageOf(push)).toMatch(/^requested access to the resource is denied: alice may not (pull from or )?push to root\/app$/);
    // In the status line too: containerd prints only that, and a HEAD has no body.
    expect(push.statusText).toMatch(/^Forbidden: requested access to the resource is denied: alice may not (pull from or )?push to root\/app$/);
    const head = await fetch(`${reg.url}/v2/root/app/blobs/sha256:${'0'.repeat(64)}`, { method: 'HEAD', headers: alice });
    expect(head.statusText).toBe('Forbidden: requested access to the resource is denied: alice may not pull from or push to root/app');
    // With a token (what docker, skopeo, podman and ctr use): 401 insufficient_scope, as no token would
    // do, saying why in the challenge's error_description (which Docker and containers/image print) and the message.
    const token = await fetchToken(`${reg.url}/auth/token`, 'wharf', ['repository:root/app:pull,push'], { user: 'alice', password: PW.alice });
    const bearer = { Authorization: `Bearer ${((await token.json()) as TokenReply).token}` };
    for (const [method, path, why] of [
      ['POST', '/v2/root/app/blobs/uploads/', 'alice may not push to root/app'],
      ['HEAD', `/v2/root/app/blobs/sha256:${'0'.repeat(64)}`, 'alice may not pull from or push to root/app'],
    ] as const) {
      const res = await fetch(`${reg.url}${path}`, { method, headers: bearer });
      expect([path, res.status]).toEqual([path, 401]);
      expect(parseChallenge(res.headers.get('www-authenticate'))).toMatchObject({ error: 'insufficient_scope', error_description: why });
      if (method !== 'HEAD') expect(await messageOf(res)).toBe(`requested access to the resource is denied: ${why}`);
    }
    // A token that lacks what its holder may do: only asked for a token that has it.
    const catalog = await fetch(`${reg.url}/v2/_catalog`, { headers: bearer });
    expect(catalog.status).toBe(401);
    expect(parseChallenge(catalog.headers.get('www-authenticate'))).toEqual(expect.not.objectContaining({ error_description: expect.anything() }));
    expect(await messageOf(catalog)).toBe('authentication required');
    // Anonymous callers are asked to sign in, and told nothing more.
    const anonymous = await fetch(`${reg.url}/v2/root/app/blobs/uploads/`, { method: 'POST' });
    expect(parseChallenge(anonymous.headers.get('www-authenticate'))?.error_description).toBeUndefined();
    expect(await messageOf(anonymous)).toBe('authentication required');
    const mistyped = await fetch(`${reg.url}/v2/alice/private/manifest/1`, { headers: alice });
    expect(mistyped.status).toBe(403);
    expect(await messageOf(mistyped)).toBe("requested access to the resource is denied: GET /v2/alice/private/manifest/1 is not a request of the registry's API (a mistyped path?)");
  });

  test('a method the path does not take: 405 with Allow to whoever may pull the repository, as to an administrator; refused to others', async () => {
    const alice = { Authorization: basic('alice', PW.alice) };
    const root = { Authorization: basic('root', PW.root) };
    for (const [method, path, allow] of [
      ['PATCH', '/v2/alice/private/manifests/1', 'DELETE, GET, HEAD, PUT'],
      ['POST', `/v2/alice/private/blobs/${digest}`, 'DELETE, GET, HEAD'],
      ['PUT', '/v2/alice/private/tags/list', 'GET, HEAD'],
      ['DELETE', '/v2/_catalog', 'GET, HEAD'],
      ['POST', '/v2/', 'GET, HEAD'],
    ] as const) {
      for (const headers of [alice, root]) {
        const res = await fetch(`${reg.url}${path}`, { method, headers });
        expect([method, path, res.status, res.headers.get('allow')]).toEqual([method, path, 405, allow]);
        expect(((await res.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('UNSUPPORTED');
      }
    }
    // A repository alice may not see tells her nothing of its paths; an anonymous caller is asked to sign in.
    const others = await fetch(`${reg.url}/v2/root/app/manifests/1`, { method: 'PATCH', headers: alice });
    expect(others.status).toBe(403);
    expect(others.headers.get('allow')).toBeNull();
    expect(await messageOf(others)).toBe('requested access to the resource is denied: alice may not pull from root/app');
    const anonymous = await fetch(`${reg.url}/v2/alice/private/manifests/1`, { method: 'PATCH' });
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('allow')).toBeNull();
  });
});

async function messageOf(res: Response): Promise<string | undefined> {
  return ((await res.json()) as { errors: { message: string }[] }).errors[0]?.message;
}
