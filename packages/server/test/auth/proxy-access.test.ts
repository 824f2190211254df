import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { networkInterfaces } from 'node:os';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { RegistryClient, Secrets, basic, bcryptHash, captureLog, claimsOf, fetchToken, parseChallenge, pushWith, startAuthRegistry, type TokenReply } from './helpers.js';

/** An IPv4 address of this machine that is not loopback: requests to it arrive from a non-loopback peer. */
function externalAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

const PW = { alice: 'alice-proxy-pw1', eve: 'eve-proxy-pw12', olga: 'olga-proxy-pw123', root: 'root-proxy-pw1234' } as const;
type Name = keyof typeof PW;

describe('proxy access with auth on: per upstream, never open unless configured', () => {
  let up: TestRegistry;
  /** An upstream of its own host (127.0.0.1:its port), for `?ns=<host>`. */
  let hosted: TestRegistry;
  let reg: TestRegistry;
  let digest: string;
  const log = captureLog();
  const secrets = new Secrets();
  const as = (name: Name) => ({ headers: { Authorization: basic(name, PW[name]) } });
  const address = externalAddress();

  beforeAll(async () => {
    if (!address) throw new Error('this test needs a non-loopback IPv4 interface to reach the registry from');
    up = await startRegistry();
    digest = (await pushImage(up.url, 'lib/app', '1')).manifest.digest;
    hosted = await startRegistry();
    await pushImage(hosted.url, 'lib/app', '1');
    reg = await startAuthRegistry({
      logger: log.logger,
      settings: {
        listen: '0.0.0.0:0',
        proxy: {
          retries: 0,
          upstreams: {
            up: { url: up.url },
            open: { url: up.url, access: 'anonymous' },
            grp: { url: up.url, access: ['ops'] },
            hosted: { url: hosted.url, aliases: ['mirror.example'], access: ['ops'] },
          },
        },
      },
      authSettings: {
        users: (Object.keys(PW) as Name[]).map((name) => ({ name, password_hash: bcryptHash(PW[name]), admin: name === 'root' })),
        groups: [{ name: 'ops', members: { olga: 'reader' } }],
      },
    });
    for (const [u, p] of Object.entries(PW)) secrets.addBasic(u, p);
  });

  afterAll(async () => {
    await reg?.close();
    await up?.close();
    await hosted?.close();
  });

  const get = (path: string, init?: RequestInit) => fetch(`${reg.url}${path}`, init);

  test('"authenticated" (the default): any signed-in user, not anonymous', async () => {
    const anonymous = await get('/v2/proxy/up/lib/app/manifests/1');
    expect(anonymous.status).toBe(401);
    expect(parseChallenge(anonymous.headers.get('www-authenticate'))?.scope).toBe('repository:proxy/up/lib/app:pull');
    const eve = await get('/v2/proxy/up/lib/app/manifests/1', as('eve'));
    expect(eve.status).toBe(200);
    expect(eve.headers.get('docker-content-digest')).toBe(digest);
  });

  test('"anonymous": everyone', async () => {
    expect((await get('/v2/proxy/open/lib/app/manifests/1')).status).toBe(200);
  });

  test('a list of groups: their members and administrators only', async () => {
    expect((await get('/v2/proxy/grp/lib/app/manifests/1', as('eve'))).status).toBe(403);
    expect((await get('/v2/proxy/grp/lib/app/manifests/1', as('olga'))).status).toBe(200);
    expect((await get('/v2/proxy/grp/lib/app/manifests/1', as('root'))).status).toBe(200);
    expect((await get('/v2/proxy/grp/lib/app/manifests/1')).status).toBe(401);
  });

  test('nobody pushes or deletes through the proxy, administrators included: 405 UNSUPPORTED says where to push', async () => {
    const unsupported = async (res: Response) => {
      expect(res.status).toBe(405);
      const { errors } = (await res.json()) as { errors: { code: string; message: string }[] };
      expect(errors[0]!.code).toBe('UNSUPPORTED');
      expect(errors[0]!.message).toContain('push to a repository of your own namespace');
    };
    for (const flow of ['basic', 'token'] as const) {
      for (const user of ['root', 'eve'] as const) {
        // eve may not even pull from grp: the answer is the same, and tells nothing more.
        for (const upstream of ['up', 'grp']) {
          const client = new RegistryClient(reg.url, flow, { user, password: PW[user] });
          await unsupported(await pushWith(client, `proxy/${upstream}/lib/app`, '2', 'x'));
          await unsupported(await client.request('DELETE', `/v2/proxy/${upstream}/lib/app/manifests/1`));
          await unsupported(await client.request('GET', `/v2/proxy/${upstream}/lib/app/blobs/uploads/some-session`));
        }
      }
    }
    // A method no route of the path takes is refused alike to whoever may see the path.
    for (const flow of ['basic', 'token'] as const) {
      const client = new RegistryClient(reg.url, flow, { user: 'root', password: PW.root });
      await unsupported(await client.request('PUT', '/v2/proxy/grp/lib/app/blobs/uploads/'));
      await unsupported(await client.request('POST', '/v2/proxy/up/lib/app/manifests/1'));
    }
    // Anonymous callers are asked to sign in first, as for any push.
    const anonymous = await get('/v2/proxy/up/lib/app/blobs/uploads/', { method: 'POST' });
    expect(anonymous.status).toBe(401);
    expect(parseChallenge(anonymous.headers.get('www-authenticate'))?.scope).toBe('repository:proxy/up/lib/app:pull,push');
  });

  test('from a non-loopback address, access rules decide (the loopback-only rule is for auth off)', async () => {
    const remote = `http://${address}:${reg.port}`;
    expect((await fetch(`${remote}/v2/proxy/up/lib/app/manifests/1`, as('alice'))).status).toBe(200);
    expect((await fetch(`${remote}/v2/proxy/up/lib/app/manifests/1`)).status).toBe(401);
    expect((await fetch(`${remote}/v2/proxy/open/lib/app/manifests/1`)).status).toBe(200);
    // Admin endpoints too: administrators from anywhere, nobody else.
    expect((await fetch(`${remote}/admin/proxy/cache/up`, { method: 'DELETE', ...as('root') })).status).toBe(200);
    expect((await fetch(`${remote}/admin/proxy/cache/up`, { method: 'DELETE', ...as('alice') })).status).toBe(403);
  });

  test('containerd mirror mode (?ns=): the upstream access applies, through Basic and the token flow', async () => {
    // The three upstreams share a URL, so name the one meant by its key (ns= takes hosts and keys).
    const ns = '?ns=up';
    const anonymous = await get(`/v2/lib/app/manifests/1${ns}`);
    expect(anonymous.status).toBe(401);
    expect(parseChallenge(anonymous.headers.get('www-authenticate'))?.scope).toBe('repository:lib/app:pull');
    const basicPull = await get(`/v2/lib/app/manifests/1${ns}`, as('alice'));
    expect(basicPull.status).toBe(200);
    expect(basicPull.headers.get('oci-namespace')).toBe('up');

    const res = await fetchToken(`${reg.url}/auth/token`, 'wharf', ['repository:lib/app:pull'], { user: 'alice', password: PW.alice });
    const jwt = ((await res.json()) as TokenReply).token;
    secrets.add('jwt', jwt);
    expect(claimsOf(jwt).access).toEqual([{ type: 'repository', name: 'lib/app', actions: ['pull'] }]);
    expect((await get(`/v2/lib/app/manifests/1${ns}`, { headers: { Authorization: `Bearer ${jwt}` } })).status).toBe(200);
  });

  test('?ns= naming an upstream by its host or an alias: that upstream\'s access applies, and OCI-Namespace echoes the ns', async () => {
    const host = new URL(hosted.url).host;
    for (const ns of [host, 'mirror.example', 'hosted']) {
      for (const flow of ['basic', 'token'] as const) {
        const olga = new RegistryClient(reg.url, flow, { user: 'olga', password: PW.olga });
        const res = await olga.request('GET', `/v2/lib/app/manifests/1?ns=${ns}`);
        expect([ns, flow, res.status]).toEqual([ns, flow, 200]);
        expect(res.headers.get('oci-namespace')).toBe(ns);
        // eve is not in ops, whom the upstream is for.
        const eve = new RegistryClient(reg.url, flow, { user: 'eve', password: PW.eve });
        // With a password: 403 DENIED. With a token: 401 insufficient_scope (no token would do), saying why.
        const refused = await eve.request('GET', `/v2/lib/app/manifests/1?ns=${ns}`);
        expect([ns, flow, refused.status]).toEqual([ns, flow, flow === 'basic' ? 403 : 401]);
        if (flow === 'token') expect(parseChallenge(refused.headers.get('www-authenticate'))?.error_description).toBe('eve may not pull from lib/app');
      }
    }
    // The operator's log says why too (ctr prints only `insufficient_scope`).
    await new Promise((r) => setTimeout(r, 20));
    const refusals = log
      .text()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { msg: string; status?: number; reason?: string })
      .filter((l) => l.msg === 'request' && (l.status === 401 || l.status === 403) && l.reason?.includes('eve may not pull from lib/app'));
    expect(refusals.map((l) => l.status).sort()).toEqual(expect.arrayContaining([401, 403]));
  });

  test('a pull granted because the proxy might serve a name never opens a local repository of that name, and the token tells nothing of which exist', async () => {
    const res = await fetchToken(`${reg.url}/auth/token`, 'wharf', ['repository:root/later:pull'], { user: 'alice', password: PW.alice });
    const jwt = ((await res.json()) as TokenReply).token;
    secrets.add('jwt', jwt);
    expect(claimsOf(jwt).access).toEqual([{ type: 'repository', name: 'root/later', actions: ['pull'] }]);
    const root = new RegistryClient(reg.url, 'basic', { user: 'root', password: PW.root });
    expect((await pushWith(root, 'root/later', '1', 'later')).status).toBe(201);
    const local = await get('/v2/root/later/manifests/1', { headers: { Authorization: `Bearer ${jwt}` } });
    expect(local.status).toBe(401);
    expect(parseChallenge(local.headers.get('www-authenticate'))).toMatchObject({ error: 'insufficient_scope', error_description: 'alice may not pull from root/later' });
    // Once it is local, the grant is the same as for a name that exists nowhere: before, it was made
    // only for names not local, and so told anyone who may use an upstream which private repositories
    // exist, where the API answers alike. The pull it grants still opens nothing local.
    const again = await fetchToken(`${reg.url}/auth/token`, 'wharf', ['repository:root/later:pull', 'repository:root/never-pushed:pull'], { user: 'alice', password: PW.alice });
    const second = ((await again.json()) as TokenReply).token;
    secrets.add('jwt', second);
    expect(claimsOf(second).access).toEqual([
      { type: 'repository', name: 'root/later', actions: ['pull'] },
      { type: 'repository', name: 'root/never-pushed', actions: ['pull'] },
    ]);
    expect((await get('/v2/root/later/manifests/1', { headers: { Authorization: `Bearer ${second}` } })).status).toBe(401);
    expect((await get('/v2/root/later/tags/list', { headers: { Authorization: `Bearer ${second}` } })).status).toBe(401);
  });

  test('[proxy] anonymous = true makes "anonymous" the default access', async () => {
    const open = await startAuthRegistry({ settings: { proxy: { anonymous: true, retries: 0, upstreams: { up: { url: up.url } } } } });
    try {
      expect((await fetch(`${open.url}/v2/proxy/up/lib/app/manifests/1`)).status).toBe(200);
      expect((await fetch(`${open.url}/v2/team/app/manifests/1`)).status).toBe(401);
    } finally {
      await open.close();
    }
  });

  test("Docker's registry-mirrors mode: a daemon's Docker Hub login gets the anonymous pull of non-local names, nothing more", async () => {
    // dockerd sends a mirror the credentials it holds for Docker Hub. Refused, they would send every
    // pull of a runner logged in to Docker Hub past the mirror, to Docker Hub.
    const hub = { user: 'hub-user', password: 'dckr_pat_not-for-wharf' };
    const mirror = await startAuthRegistry({
      loginLimits: { maxFailures: 10, windowMs: 5 * 60_000 },
      settings: { proxy: { default_upstream: 'open', retries: 0, upstreams: { open: { url: up.url, access: 'anonymous' }, closed: { url: up.url } } } },
      authSettings: { users: [{ name: 'alice', password_hash: bcryptHash(PW.alice) }] },
    });
    const closed = await startAuthRegistry({ settings: { proxy: { default_upstream: 'closed', retries: 0, upstreams: { closed: { url: up.url } } } } });
    try {
      const alice = new RegistryClient(mirror.url, 'basic', { user: 'alice', password: PW.alice });
      expect((await pushWith(alice, 'alice/local', '1', 'local')).status).toBe(201);
      const tokenFor = async (registry: TestRegistry, scopes: string[], cred: { user: string; password: string }) => {
        const res = await fetchToken(`${registry.url}/auth/token`, 'wharf', scopes, cred);
        return { status: res.status, token: res.status === 200 ? ((await res.json()) as TokenReply).token : undefined };
      };
      for (const cred of [hub, { user: 'alice', password: 'alices-docker-hub-pw' }]) {
        secrets.addBasic(cred.user, cred.password);
        const pull = await tokenFor(mirror, ['repository:lib/app:pull'], cred);
        expect(pull.status).toBe(200);
        secrets.add('jwt', pull.token);
        expect(claimsOf(pull.token!)).toMatchObject({ sub: '', access: [{ type: 'repository', name: 'lib/app', actions: ['pull'] }] });
        const manifest = await fetch(`${mirror.url}/v2/lib/app/manifests/1`, { headers: { Authorization: `Bearer ${pull.token!}` } });
        expect(manifest.status).toBe(200);
        expect(manifest.headers.get('docker-content-digest')).toBe(digest);
        // Anything else those credentials ask for is refused as before: a login, a push, a local
        // repository, a proxy/ name, a default upstream that anonymous callers may not use.
        for (const scopes of [[], ['repository:lib/app:pull,push'], ['repository:lib/app:pull', 'repository:alice/local:pull'], ['repository:proxy/open/lib/app:pull']]) {
          expect([scopes, (await tokenFor(mirror, scopes, cred)).status]).toEqual([scopes, 401]);
        }
        expect((await tokenFor(closed, ['repository:lib/app:pull'], cred)).status).toBe(401);
      }
      // Such requests are not login attempts: however many, the address is not locked out...
      for (let i = 0; i < 12; i++) {
        secrets.addBasic(`hub-user-${i}`, `dckr_pat_${i}-not-for-wharf`);
        expect((await tokenFor(mirror, ['repository:lib/app:pull'], { user: `hub-user-${i}`, password: `dckr_pat_${i}-not-for-wharf` })).status).toBe(200);
      }
      const login = await tokenFor(mirror, ['repository:alice/local:pull'], { user: 'alice', password: PW.alice });
      secrets.add('jwt', login.token);
      expect(login.status).toBe(200);
      // ...and a user's right password gets the user's own token for anything else.
      expect(claimsOf(login.token!)).toMatchObject({ sub: 'alice', access: [{ type: 'repository', name: 'alice/local', actions: ['pull'] }] });
    } finally {
      await closed.close();
      await mirror.close();
    }
  });

  test('[proxy] enabled = false: proxy/ names say the proxy is off, to users and administrators, for reads and writes', async () => {
    const off = await startAuthRegistry({
      settings: { proxy: { enabled: false } },
      authSettings: { users: (['alice', 'root'] as const).map((name) => ({ name, password_hash: bcryptHash(PW[name]), admin: name === 'root' })) },
    });
    try {
      for (const [user, method] of [['alice', 'GET'], ['root', 'GET'], ['root', 'PUT']] as const) {
        const res = await fetch(`${off.url}/v2/proxy/docker.io/library/alpine/manifests/3.20`, { method, headers: { Authorization: basic(user, PW[user]) } });
        expect(res.status).toBe(404);
        const error = ((await res.json()) as { errors: { code: string; message: string }[] }).errors[0]!;
        expect([error.code, error.message]).toEqual(['NAME_UNKNOWN', "names under proxy/ are the dependency proxy's, and it is off on this server ([proxy] enabled = false)"]);
      }
    } finally {
      await off.close();
    }
  });

  test('a local repository hiding the default upstream: its 404 names that upstream only to those who may pull through it', async () => {
    const mirror = await startAuthRegistry({
      logger: log.logger,
      settings: { proxy: { default_upstream: 'grp', retries: 0, upstreams: { grp: { url: up.url, access: ['ops'] } } } },
      authSettings: {
        users: (['alice', 'root'] as const).map((name) => ({ name, password_hash: bcryptHash(PW[name]), admin: name === 'root' })),
        groups: [{ name: 'ops', members: { olga: 'reader' } }],
      },
    });
    try {
      const alice = new RegistryClient(mirror.url, 'basic', { user: 'alice', password: PW.alice });
      expect((await pushWith(alice, 'alice/local', '1', 'local')).status).toBe(201);
      const missing = async (name: Name) => {
        const res = await fetch(`${mirror.url}/v2/alice/local/manifests/2`, { headers: { Authorization: basic(name, PW[name]) } });
        expect([name, res.status]).toEqual([name, 404]);
        return ((await res.json()) as { errors: { message: string; detail?: { upstream?: string } }[] }).errors[0]!;
      };
      // alice may pull her repository but not through grp: nothing of the upstream.
      expect(await missing('alice')).toMatchObject({ message: 'manifest unknown to registry', detail: { reference: '2' } });
      expect((await missing('alice')).detail?.upstream).toBeUndefined();
      // An administrator may use every upstream.
      expect((await missing('root')).message).toBe(
        "manifest unknown to registry: alice/local is a repository of this server, so its pulls are not read from grp; that upstream's images of this name are under proxy/grp/alice/local",
      );
    } finally {
      await mirror.close();
    }
  });

  test('a mount from a proxied repository copies its cached blob for those who may use that upstream; others upload', async () => {
    // The README's CI recipe: FROM $WHARF/proxy/..., pushed to the caller's namespace. Docker and
    // BuildKit name the proxied repository as the base layers' source.
    const image = await pushImage(up.url, 'lib/base', '1');
    const layer = image.layer;
    const pulled = await get(`/v2/proxy/grp/lib/base/blobs/${layer.digest}`, as('olga'));
    expect(pulled.status).toBe(200);
    await pulled.arrayBuffer();
    const mount = (user: Name, to: string, init: RequestInit = as(user)) => get(`/v2/${to}/blobs/uploads/?mount=${layer.digest}&from=proxy/grp/lib/base`, { method: 'POST', ...init });

    // eve may not use the upstream: a plain upload, nothing said of the cache.
    const refused = await mount('eve', 'eve/app');
    expect(refused.status).toBe(202);
    expect((await get(`/v2/eve/app/blobs/${layer.digest}`, { method: 'HEAD', ...as('eve') })).status).toBe(404);

    const mounted = await mount('olga', 'olga/app');
    expect(mounted.status).toBe(201);
    expect(mounted.headers.get('docker-content-digest')).toBe(layer.digest);
    const copy = await get(`/v2/olga/app/blobs/${layer.digest}`, as('olga'));
    expect(Buffer.from(await copy.arrayBuffer()).equals(layer.bytes)).toBe(true);

    // With a token for the target alone: challenged for the source too, and its token mounts.
    const grant = async (scope: string) => {
      const res = await get(`/auth/token?service=wharf&scope=${encodeURIComponent(scope)}`, as('olga'));
      return ((await res.json()) as { token: string }).token;
    };
    const targetOnly = await mount('olga', 'olga/other', { headers: { Authorization: `Bearer ${await grant('repository:olga/other:pull,push')}` } });
    expect(targetOnly.status).toBe(401);
    const scope = parseChallenge(targetOnly.headers.get('www-authenticate'))!.scope!;
    expect(scope).toBe('repository:olga/other:pull,push repository:proxy/grp/lib/base:pull');
    const withSource = await mount('olga', 'olga/other', { headers: { Authorization: `Bearer ${await grant(scope)}` } });
    expect(withSource.status).toBe(201);

    // eve's token for her target alone: she may not use that upstream, so no challenge for the
    // source either (it would tell her of it), only the plain upload.
    const eveToken = ((await (await get(`/auth/token?service=wharf&scope=${encodeURIComponent('repository:eve/other:pull,push')}`, as('eve'))).json()) as { token: string }).token;
    const eveMount = await mount('eve', 'eve/other', { headers: { Authorization: `Bearer ${eveToken}` } });
    expect(eveMount.status).toBe(202);
    expect((await get(`/v2/eve/other/blobs/${layer.digest}`, { method: 'HEAD', headers: { Authorization: `Bearer ${eveToken}` } })).status).toBe(404);
  });

  test('after the suite, no password or token is in the log', () => {
    secrets.assertNotIn(log.text());
  });
});
