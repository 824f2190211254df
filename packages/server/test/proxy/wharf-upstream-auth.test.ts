import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { RegistryClient, bcryptHash, pushWith, sha256, startAuthRegistry } from '../auth/helpers.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/**
 * The proxy in front of a real Wharf that has accounts on: the token flow of issue 3 against the token
 * server of issue 4. A recording forwarder sits between them to see what the proxy sends upstream.
 */
describe('pull-through from a Wharf upstream behind token auth', () => {
  let upstream: TestRegistry;
  let withCredentials: TestRegistry;
  let withoutCredentials: TestRegistry;
  let forwarder: Server;
  const seen: { path: string; headers: IncomingHttpHeaders }[] = [];
  let manifestDigest: string;

  beforeAll(async () => {
    upstream = await startAuthRegistry({
      authSettings: { users: [{ name: 'mirror', password_hash: bcryptHash('mirror-secret'), admin: false }] },
    });
    const owner = new RegistryClient(upstream.url, 'token', { user: 'mirror', password: 'mirror-secret' });
    const pushed = await pushWith(owner, 'mirror/app', '1', 'behind-auth');
    expect(pushed.status).toBe(201);
    manifestDigest = pushed.headers.get('docker-content-digest')!;

    // Records every request on its way to the upstream, then passes it on unchanged.
    forwarder = createServer((req, res) => {
      seen.push({ path: req.url ?? '', headers: req.headers });
      const target = new URL(upstream.url);
      const out = httpRequest({ host: target.hostname, port: target.port, path: req.url, method: req.method, headers: req.headers }, (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      });
      out.on('error', () => res.destroy());
      req.pipe(out);
    });
    await new Promise<void>((r) => forwarder.listen(0, '127.0.0.1', r));
    const via = `http://127.0.0.1:${(forwarder.address() as AddressInfo).port}`;

    withCredentials = await startRegistry({
      settings: { proxy: { upstreams: { up: { url: via, username: 'mirror', password: 'mirror-secret' } } } },
    });
    withoutCredentials = await startRegistry({ settings: { proxy: { upstreams: { up: { url: via } } } } });
  });
  afterAll(async () => {
    await withCredentials?.close();
    await withoutCredentials?.close();
    forwarder?.closeAllConnections();
    await new Promise((r) => forwarder?.close(r));
    await upstream?.close();
  });

  test('with the upstream credentials configured, a private image pulls through, byte for byte', async () => {
    const res = await fetch(`${withCredentials.url}/v2/proxy/up/mirror/app/manifests/1`);
    expect(res.status).toBe(200);
    const bytes = Buffer.from(await res.arrayBuffer());
    expect(sha256(bytes)).toBe(manifestDigest);
    const manifest = JSON.parse(bytes.toString()) as { layers: { digest: string }[] };
    const layer = await fetch(`${withCredentials.url}/v2/proxy/up/mirror/app/blobs/${manifest.layers[0]!.digest}`);
    expect(layer.status).toBe(200);
    expect(sha256(Buffer.from(await layer.arrayBuffer()))).toBe(manifest.layers[0]!.digest);
  });

  test('the proxy got a token from the upstream realm for the repository pull scope and used it', () => {
    const tokenRequests = seen.filter((s) => s.path.startsWith('/auth/token'));
    expect(tokenRequests.length).toBeGreaterThan(0);
    expect(decodeURIComponent(tokenRequests[0]!.path)).toContain('scope=repository:mirror/app:pull');
    const bearerCalls = seen.filter((s) => s.path.startsWith('/v2/mirror/app/') && /^Bearer /.test(String(s.headers.authorization)));
    expect(bearerCalls.length).toBeGreaterThan(0);
  });

  test('a token is reused: a second cold pull of another blob asks the realm no more', async () => {
    const before = seen.filter((s) => s.path.startsWith('/auth/token')).length;
    const res = await fetch(`${withCredentials.url}/v2/proxy/up/mirror/app/manifests/${manifestDigest}`);
    expect(res.status).toBe(200);
    const manifest = (await res.json()) as { config: { digest: string } };
    const config = await fetch(`${withCredentials.url}/v2/proxy/up/mirror/app/blobs/${manifest.config.digest}`);
    expect(config.status).toBe(200);
    await config.arrayBuffer();
    expect(seen.filter((s) => s.path.startsWith('/auth/token')).length).toBe(before);
  });

  test("the client's own credentials are never forwarded upstream", async () => {
    const marker = Buffer.from('someone:their-own-password').toString('base64');
    seen.length = 0;
    const res = await fetch(`${withoutCredentials.url}/v2/proxy/up/mirror/app/manifests/1`, { headers: { Authorization: `Basic ${marker}` } });
    await res.arrayBuffer();
    expect(seen.length).toBeGreaterThan(0);
    for (const s of seen) expect(String(s.headers.authorization ?? '')).not.toContain(marker);
  });

  test('without upstream credentials, a private image is a 404 saying why, and the upstream challenge never reaches the client', async () => {
    // The upstream grants an anonymous token and refuses the repository with it, as Docker Hub does
    // for a private (or missing) repository: "pull access denied", not a broken upstream. (Tag 1
    // was asked for above: its refusal is remembered, and answered as a plain 404 for a while.)
    const res = await fetch(`${withoutCredentials.url}/v2/proxy/up/mirror/app/manifests/latest`);
    expect(res.status).toBe(404);
    expect(res.headers.get('www-authenticate')).toBeNull();
    const body = (await res.json()) as { errors: { code: string; message: string }[] };
    expect(body.errors[0]!.code).toBe('NAME_UNKNOWN');
    expect(body.errors[0]!.message).toMatch(/denies access .*credentials/);
  });
});
