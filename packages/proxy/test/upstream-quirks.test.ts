import { afterEach, describe, expect, jest, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { setTimeout as sleep } from 'node:timers/promises';
import { FsBlobStore, RegistryError, openDatabase, type Digest, type SqliteDatabase } from '@wharf/registry-core';
import { BlobFills } from '../src/blob-fills.js';
import { CacheIndex } from '../src/cache-index.js';
import { HttpUpstream } from '../src/http-upstream.js';
import { MirroredUpstream } from '../src/mirrors.js';
import { PullThroughRepository } from '../src/pull-through.js';
import { UpstreamError } from '../src/upstream.js';

// How public registries answer where a CNCF distribution does not: registry.k8s.io's redirects to a
// registry that challenges, Docker Hub's refusals, token services that fail, HEADs done wrong.

const sha256 = (b: Buffer): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;
const OCI = 'application/vnd.oci.image.manifest.v1+json';
const MANIFEST = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI, config: {}, layers: [] }));
const BLOB = Buffer.from('a layer, or what stands for one');

interface Seen {
  readonly method: string;
  readonly url: string;
  readonly authorization: string | undefined;
}

interface Host {
  readonly url: string;
  readonly origin: string;
  readonly seen: Seen[];
  handler: (req: IncomingMessage, res: ServerResponse) => void;
}

const servers: Server[] = [];

async function host(handler: Host['handler'] = (_q, res) => void res.writeHead(404).end()): Promise<Host> {
  const h = { url: '', origin: '', seen: [] as Seen[], handler };
  const server = createServer((req, res) => {
    h.seen.push({ method: req.method!, url: req.url!, authorization: req.headers.authorization });
    h.handler(req, res);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  h.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  h.origin = h.url;
  return h;
}

afterEach(async () => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
});

function manifestAnswer(req: IncomingMessage, res: ServerResponse, bytes = MANIFEST, digest = sha256(bytes)): void {
  res.writeHead(200, { 'content-type': OCI, 'content-length': bytes.length, 'docker-content-digest': digest });
  res.end(req.method === 'HEAD' ? undefined : bytes);
}

function challenge(res: ServerResponse, value: string): void {
  res.writeHead(401, { 'www-authenticate': value, 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAUTHORIZED"}]}');
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
}

const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const quick = { connect: 1000, firstByte: 2000, idle: 2000 };

describe('redirect targets that challenge', () => {
  test("a redirect target's realm never gets the upstream's credentials; its token goes to it alone", async () => {
    const collector = await host((_req, res) => json(res, 200, { token: 'cdn-token', expires_in: 300 }));
    const cdn = await host((req, res) => {
      if (req.headers.authorization !== 'Bearer cdn-token') return challenge(res, `Bearer realm="${collector.url}/collect",service="cdn"`);
      res.writeHead(200, { 'content-length': BLOB.length }).end(BLOB);
    });
    const registry = await host((req, res) => {
      if (req.url!.startsWith('/token')) {
        if (req.headers.authorization !== basic('robot', 'S3cret-PAT')) return void res.writeHead(401).end();
        return json(res, 200, { token: 'registry-token', expires_in: 300 });
      }
      if (req.headers.authorization !== 'Bearer registry-token') return challenge(res, `Bearer realm="${registry.url}/token",service="reg"`);
      res.writeHead(307, { location: `${cdn.url}/blob?sig=abc` }).end();
    });
    const upstream = new HttpUpstream({ name: 'up', url: registry.url, username: 'robot', password: 'S3cret-PAT', retries: 0, timeouts: quick });

    const blob = await upstream.blob('team/app', sha256(BLOB));
    const chunks: Buffer[] = [];
    for await (const chunk of blob!.body) chunks.push(Buffer.from(chunk as Buffer));
    expect(Buffer.concat(chunks).equals(BLOB)).toBe(true);

    // The collector was asked anonymously, the CDN got its own token, the registry never saw it.
    expect(collector.seen).toHaveLength(1);
    expect(collector.seen[0]!.authorization).toBeUndefined();
    expect(cdn.seen.map((s) => s.authorization)).toEqual([undefined, 'Bearer cdn-token']);
    expect(registry.seen.filter((s) => s.authorization === 'Bearer cdn-token')).toEqual([]);
    // The registry's own token is kept: the next request sends it at once.
    const before = registry.seen.length;
    await upstream.blob('team/app', sha256(BLOB)).then((b) => b?.body.destroy());
    expect(registry.seen.slice(before).map((s) => s.authorization)).toEqual(['Bearer registry-token']);
  });

  test('registry.k8s.io: manifest GET and HEAD follow the redirect and answer the challenge of the registry behind it, for its scope', async () => {
    const scopes: string[] = [];
    const ar = await host((req, res) => {
      const url = new URL(req.url!, 'http://x');
      if (url.pathname === '/v2/token') {
        scopes.push(url.searchParams.get('scope')!);
        return json(res, 200, { token: `ar:${url.searchParams.get('scope')}` });
      }
      if (req.headers.authorization !== 'Bearer ar:repository:k8s-artifacts-prod/images/pause:pull') {
        return challenge(res, `Bearer realm="${ar.url}/v2/token",service="ar",scope="repository:k8s-artifacts-prod/images/pause:pull"`);
      }
      manifestAnswer(req, res);
    });
    const k8s = await host((req, res) => res.writeHead(307, { location: `${ar.url}/v2/k8s-artifacts-prod/images${req.url!.slice(3)}` }).end());
    const upstream = new HttpUpstream({ name: 'registry.k8s.io', url: k8s.url, retries: 0, timeouts: quick });

    const got = await upstream.manifest('pause', '3.9');
    expect(got?.digest).toBe(sha256(MANIFEST));
    expect((await upstream.head('pause', '3.9'))?.digest).toBe(sha256(MANIFEST));
    expect(scopes).toEqual(['repository:k8s-artifacts-prod/images/pause:pull']);
    // registry.k8s.io itself never received the other registry's token.
    expect(k8s.seen.every((s) => s.authorization === undefined)).toBe(true);
  });

  test("a redirect target's realm on another host is not fetched: Wharf fetches no URL a third party picks", async () => {
    const internal = await host((_req, res) => json(res, 200, { token: 'INTERNAL-SECRET' }));
    const cdn = await host((_req, res) => challenge(res, `Bearer realm="${internal.url.replace('127.0.0.1', 'localhost')}/secret"`));
    const registry = await host((_req, res) => res.writeHead(307, { location: `${cdn.url}/blob` }).end());
    const upstream = new HttpUpstream({ name: 'up', url: registry.url, retries: 0, timeouts: quick });
    await expect(upstream.blob('team/app', sha256(BLOB))).rejects.toThrow(/redirected the blob GET to .*which answered 401/);
    expect(internal.seen).toEqual([]);
  });

  test('a chain of hosts that each challenge is cut short: at most three challenges per attempt', async () => {
    const hosts: Host[] = [];
    for (let i = 0; i < 5; i++) {
      hosts.push(
        await host((req, res) => {
          if (req.url!.startsWith('/token')) return json(res, 200, { token: `t${i}` });
          if (req.headers.authorization !== `Bearer t${i}`) return challenge(res, `Bearer realm="${hosts[i]!.url}/token"`);
          if (i + 1 < hosts.length) return res.writeHead(307, { location: `${hosts[i + 1]!.url}/v2/x` }).end();
          res.writeHead(200, { 'content-length': BLOB.length }).end(BLOB);
        }),
      );
    }
    const upstream = new HttpUpstream({ name: 'up', url: hosts[0]!.url, retries: 0, timeouts: quick });
    await expect(upstream.blob('team/app', sha256(BLOB))).rejects.toThrow(/answered 401/);
    expect(hosts.map((h) => h.seen.filter((s) => s.url.startsWith('/token')).length)).toEqual([1, 1, 1, 0, 0]);
  });

  test('a redirect back to the upstream, after a hop elsewhere, goes without its credentials', async () => {
    const registry: Host = await host((req, res) => {
      if (req.url === '/v2/team/app/blobs/' + sha256(BLOB)) return res.writeHead(307, { location: `${elsewhere.url}/bounce` }).end();
      res.writeHead(200, { 'content-length': BLOB.length }).end(BLOB);
    });
    const elsewhere: Host = await host((_req, res) => res.writeHead(307, { location: `${registry.url}/anything` }).end());
    // The registry takes Basic: credentials go with every request to it once it asked.
    registry.handler = ((inner) => (req: IncomingMessage, res: ServerResponse) => {
      if (req.url!.startsWith('/v2/team/app/blobs/') && !req.headers.authorization) return challenge(res, 'Basic realm="r"');
      inner(req, res);
    })(registry.handler);
    const upstream = new HttpUpstream({ name: 'up', url: registry.url, username: 'robot', password: 'pw-123456', retries: 0, timeouts: quick });
    (await upstream.blob('team/app', sha256(BLOB)))?.body.destroy();
    const bounced = registry.seen.filter((s) => s.url === '/anything');
    expect(bounced).toHaveLength(1);
    expect(bounced[0]!.authorization).toBeUndefined();
    expect(registry.seen.filter((s) => s.url.startsWith('/v2/')).map((s) => s.authorization)).toEqual([undefined, basic('robot', 'pw-123456')]);
  });

  test("a CDN's 403 (an expired signed URL) is tried again, which brings a fresh redirect", async () => {
    let signed = 0;
    const cdn = await host((req, res) => {
      if (req.url!.endsWith('sig=1')) return void res.writeHead(403, { 'content-type': 'application/xml' }).end('<Error><Code>AccessDenied</Code></Error>');
      res.writeHead(200, { 'content-length': BLOB.length }).end(BLOB);
    });
    const registry = await host((_req, res) => res.writeHead(307, { location: `${cdn.url}/blob?sig=${++signed}` }).end());
    const upstream = new HttpUpstream({ name: 'up', url: registry.url, retries: 2, timeouts: quick });
    const blob = await upstream.blob('team/app', sha256(BLOB));
    expect(blob?.size).toBe(BLOB.length);
    blob?.body.destroy();
    expect(signed).toBe(2);
  });
});

test("a redirect target's error names that host, not the upstream", async () => {
  const cdn = await host((_req, res) => void res.writeHead(400).end());
  const registry = await host((_req, res) => res.writeHead(307, { location: `${cdn.url}/blob` }).end());
  const upstream = new HttpUpstream({ name: 'up', url: registry.url, retries: 0, timeouts: quick });
  await expect(upstream.blob('team/app', sha256(BLOB))).rejects.toThrow(`upstream up redirected the blob GET to ${new URL(cdn.url).host}, which answered 400`);
});

describe('refusals and token services', () => {
  /** Docker Hub: any repository gets a token; one that does not exist (or is private) is 401 insufficient_scope with it. */
  async function dockerHub(): Promise<Host> {
    const hub: Host = await host((req, res) => {
      if (req.url!.startsWith('/token')) return json(res, 200, { token: 'hub', access_token: 'hub', expires_in: 300 });
      const scope = `repository:${/^\/v2\/(.+)\/manifests\//.exec(req.url!)?.[1]}:pull`;
      if (req.headers.authorization !== 'Bearer hub') return challenge(res, `Bearer realm="${hub.url}/token",service="registry.docker.io",scope="${scope}"`);
      if (req.url!.includes('/library/alpine/')) return manifestAnswer(req, res);
      challenge(res, `Bearer realm="${hub.url}/token",service="registry.docker.io",scope="${scope}",error="insufficient_scope"`);
    });
    return hub;
  }

  test('a repository the upstream refuses with a fresh token is "denied", not our credentials refused', async () => {
    const hub = await dockerHub();
    const upstream = new HttpUpstream({ name: 'docker.io', url: hub.url, retries: 0, timeouts: quick });
    const err = await upstream.manifest('library/doesnotexist', 'latest').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamError);
    expect((err as UpstreamError).failure).toBe('denied');
    expect((await upstream.manifest('library/alpine', '3.20'))?.digest).toBe(sha256(MANIFEST));
  });

  test('through the proxy: a refused repository is a 404 NAME_UNKNOWN with the reason, remembered like a 404', async () => {
    const hub = await dockerHub();
    await withProxy(new HttpUpstream({ name: 'docker.io', url: hub.url, retries: 0, timeouts: quick }), async (proxy) => {
      const err = await proxy.manifest('library/doesnotexist', 'latest').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RegistryError);
      expect((err as RegistryError).code).toBe('NAME_UNKNOWN');
      expect((err as RegistryError).message).toMatch(/does not exist there, or .*credentials/);
      const asked = hub.seen.length;
      expect(await proxy.manifest('library/doesnotexist', 'latest')).toBeUndefined();
      expect(hub.seen.length).toBe(asked);
    });
  });

  test('a cached tag the upstream starts refusing (expired credentials) is served stale, not dropped', async () => {
    let refuse = false;
    const hub: Host = await host((req, res) => {
      if (req.url!.startsWith('/token')) return json(res, 200, { token: 'hub' });
      if (req.headers.authorization !== 'Bearer hub') return challenge(res, `Bearer realm="${hub.url}/token"`);
      if (refuse) return challenge(res, `Bearer realm="${hub.url}/token",error="insufficient_scope"`);
      manifestAnswer(req, res);
    });
    await withProxy(new HttpUpstream({ name: 'docker.io', url: hub.url, retries: 0, timeouts: quick }), async (proxy) => {
      await proxy.manifest('library/alpine', '3.20');
      refuse = true;
      await sleep(TTL + 20);
      const stale = await proxy.manifest('library/alpine', '3.20');
      expect(stale?.digest).toBe(sha256(MANIFEST));
      expect(stale?.warning).toMatch(/denies access/);
    });
  });

  test('a token service answering 503, then 429 with Retry-After, is retried as the registry would be', async () => {
    const statuses = [503, 429];
    const registry: Host = await host((req, res) => {
      if (req.url!.startsWith('/token')) {
        const status = statuses.shift();
        if (status === 429) return json(res, 429, { errors: [{ code: 'TOOMANYREQUESTS' }] }, { 'retry-after': '1' });
        if (status) return json(res, status, {});
        return json(res, 200, { token: 't' });
      }
      if (req.headers.authorization !== 'Bearer t') return challenge(res, `Bearer realm="${registry.url}/token",service="s"`);
      manifestAnswer(req, res);
    });
    const upstream = new HttpUpstream({ name: 'up', url: registry.url, retries: 3, timeouts: quick });
    expect((await upstream.manifest('team/app', '1'))?.digest).toBe(sha256(MANIFEST));
    expect(registry.seen.filter((s) => s.url.startsWith('/token'))).toHaveLength(3);
  });

  test('a token service answering 429 with no retry left is "rate-limited" with its Retry-After', async () => {
    const registry: Host = await host((req, res) => {
      if (req.url!.startsWith('/token')) return json(res, 429, {}, { 'retry-after': '3600' });
      challenge(res, `Bearer realm="${registry.url}/token",service="s"`);
    });
    const upstream = new HttpUpstream({ name: 'up', url: registry.url, retries: 0, timeouts: quick });
    const err = (await upstream.manifest('team/app', '1').catch((e: unknown) => e)) as UpstreamError;
    expect([err.failure, err.retryAfter]).toEqual(['rate-limited', 3600]);
  });

  test('a token service answering JSON that is no object (null, a number, a string, an array), or a token no header can carry, sent no token: "unauthorized", asked once', async () => {
    for (const body of ['null', '5', '"t"', '[]', 'true', '{"token":"a\\r\\nX-Evil: 1"}', '{"token":"a\\u0000b"}', '{"access_token":"a b"}']) {
      const registry: Host = await host((req, res) => {
        if (req.url!.startsWith('/token')) return void res.writeHead(200, { 'content-type': 'application/json' }).end(body);
        challenge(res, `Bearer realm="${registry.url}/token",service="s"`);
      });
      // Retries on: an answer taken for an outage would ask the token service again.
      const upstream = new HttpUpstream({ name: 'up', url: registry.url, retries: 2, timeouts: quick });
      const err = (await upstream.manifest('team/app', '1').catch((e: unknown) => e)) as UpstreamError;
      expect(err).toBeInstanceOf(UpstreamError);
      expect([body, err.failure, err.message]).toEqual([body, 'unauthorized', 'token service of upstream up sent no token']);
      expect(registry.seen.filter((s) => s.url.startsWith('/token'))).toHaveLength(1);
    }
  });

  test('a 403 to our credentials, and a 401 invalid_token after a fresh token, are "unauthorized", not "denied"', async () => {
    const forbidden = await host((_req, res) => json(res, 403, { errors: [{ code: 'DENIED' }] }));
    const viaForbidden = new HttpUpstream({ name: 'up', url: forbidden.url, username: 'u', password: 'p', retries: 0, timeouts: quick });
    expect(((await viaForbidden.manifest('a/b', '1').catch((e: unknown) => e)) as UpstreamError).failure).toBe('unauthorized');
    const rotated: Host = await host((req, res) => {
      if (req.url!.startsWith('/token')) return json(res, 200, { token: 't' });
      challenge(res, `Bearer realm="${rotated.url}/token"${req.headers.authorization ? ',error="invalid_token"' : ''}`);
    });
    const viaRotated = new HttpUpstream({ name: 'up', url: rotated.url, retries: 0, timeouts: quick });
    expect(((await viaRotated.manifest('a/b', '1').catch((e: unknown) => e)) as UpstreamError).failure).toBe('unauthorized');
  });

  test('ghcr.io\'s refusals of an anonymous pull (its token service\'s 401, its registry\'s 403 DENIED) are "denied": the repository\'s, asked once', async () => {
    // ghcr.io: an anonymous token for a package that does not exist, or is private, is refused.
    const noToken: Host = await host((req, res) => {
      if (req.url!.startsWith('/token')) return json(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] });
      challenge(res, `Bearer realm="${noToken.url}/token",service="ghcr.io"`);
    });
    const viaNoToken = new HttpUpstream({ name: 'ghcr.io', url: noToken.url, retries: 2, timeouts: quick });
    const refused = (await viaNoToken.manifest('org/missing', 'latest').catch((e: unknown) => e)) as UpstreamError;
    expect([refused.failure, refused.status, refused.message]).toEqual([
      'denied',
      401,
      'token service of upstream ghcr.io refuses an anonymous pull of this repository (401): it does not exist there, or is private (then give the upstream a username and password in Wharf\'s configuration)',
    ]);
    expect(noToken.seen.filter((s) => s.url.startsWith('/token'))).toHaveLength(1);
    // Or a token is given, and the manifest refused with 403 DENIED.
    const forbidden: Host = await host((req, res) => {
      if (req.url!.startsWith('/token')) return json(res, 200, { token: 't' });
      if (!req.headers.authorization) return challenge(res, `Bearer realm="${forbidden.url}/token",service="ghcr.io"`);
      json(res, 403, { errors: [{ code: 'DENIED', message: 'requested access to the resource is denied' }] });
    });
    const viaForbidden = new HttpUpstream({ name: 'ghcr.io', url: forbidden.url, retries: 2, timeouts: quick });
    const denied = (await viaForbidden.manifest('org/missing', 'latest').catch((e: unknown) => e)) as UpstreamError;
    expect([denied.failure, denied.status]).toEqual(['denied', 403]);
    expect(denied.message).toMatch(/^upstream ghcr\.io refuses an anonymous pull of this repository \(403\)/);
    expect(forbidden.seen.filter((s) => s.url.includes('/manifests/'))).toHaveLength(2);
  });

  test('an anonymous blob HEAD refused with a bare 403 asks the first byte, and a blob GET reads its 403: a registry\'s DENIED is "denied", a firewall\'s page stays "unauthorized"', async () => {
    const refusing = (page: boolean) =>
      host((req, res) => {
        if (req.method === 'HEAD') return void res.writeHead(403).end();
        if (page) return void res.writeHead(403, { 'content-type': 'text/html' }).end('<html>Access denied by policy</html>');
        json(res, 403, { errors: [{ code: 'DENIED', message: 'requested access to the resource is denied' }] });
      });
    const digest = `sha256:${'a'.repeat(64)}` as Digest;
    const registry = await refusing(false);
    const viaRegistry = new HttpUpstream({ name: 'ghcr.io', url: registry.url, retries: 0, timeouts: quick });
    const denied = (await viaRegistry.statBlob('org/private', digest).catch((e: unknown) => e)) as UpstreamError;
    // Before: "unauthorized" (a 502 to the client) from the HEAD alone.
    expect([denied.failure, denied.status]).toEqual(['denied', 403]);
    expect(registry.seen.map((s) => s.method)).toEqual(['HEAD', 'GET']);
    // The GET of the blob itself, refused alike: its body was dropped unread, and the refusal a 502.
    expect(((await viaRegistry.blob('org/private', digest).catch((e: unknown) => e)) as UpstreamError).failure).toBe('denied');
    const firewall = await refusing(true);
    const viaFirewall = new HttpUpstream({ name: 'ghcr.io', url: firewall.url, retries: 0, timeouts: quick });
    expect(((await viaFirewall.statBlob('org/app', digest).catch((e: unknown) => e)) as UpstreamError).failure).toBe('unauthorized');
  });

  test('a firewall\'s 403 page (no registry\'s error document), to the registry or its token service, stays "unauthorized", never "denied"', async () => {
    const page = (res: ServerResponse) => void res.writeHead(403, { 'content-type': 'text/html' }).end('<html><body>Access denied by policy</body></html>');
    const blocked = await host((_req, res) => page(res));
    const viaBlocked = new HttpUpstream({ name: 'ghcr.io', url: blocked.url, retries: 0, timeouts: quick });
    const err = (await viaBlocked.manifest('org/app', 'latest').catch((e: unknown) => e)) as UpstreamError;
    // Named as what it is: Wharf sent no credentials for the upstream to refuse.
    expect([err.failure, err.message]).toEqual(['unauthorized', 'upstream ghcr.io answered 403 to manifest GET, and no registry error with it: something in between (a firewall, a proxy) may have refused it']);
    const tokenBlocked: Host = await host((req, res) => {
      if (req.url!.startsWith('/token')) return page(res);
      challenge(res, `Bearer realm="${tokenBlocked.url}/token",service="ghcr.io"`);
    });
    const viaTokenBlocked = new HttpUpstream({ name: 'ghcr.io', url: tokenBlocked.url, retries: 0, timeouts: quick });
    const tokenErr = (await viaTokenBlocked.manifest('org/app', 'latest').catch((e: unknown) => e)) as UpstreamError;
    expect([tokenErr.failure, tokenErr.message]).toEqual(['unauthorized', 'token service of upstream ghcr.io answered 403']);
  });

  test('a server free to compress (RFC 9110: no Accept-Encoding, any coding) is asked for bodies as they are', async () => {
    // Such a server (a CDN) gzips what the request does not forbid: a token answer then read as no
    // JSON, a manifest as the wrong digest.
    const gzipping: Host = await host((req, res) => {
      const plain = req.headers['accept-encoding'] === 'identity';
      const send = (status: number, type: string, body: Buffer, headers: Record<string, string> = {}) =>
        void res.writeHead(status, { 'content-type': type, ...headers, ...(plain ? {} : { 'content-encoding': 'gzip' }) }).end(plain ? body : gzipSync(body));
      if (req.url!.startsWith('/token')) return send(200, 'application/json', Buffer.from(JSON.stringify({ token: 't' })));
      if (!req.headers.authorization) return challenge(res, `Bearer realm="${gzipping.url}/token",service="s"`);
      send(200, OCI, MANIFEST, { 'docker-content-digest': sha256(MANIFEST) });
    });
    const upstream = new HttpUpstream({ name: 'up', url: gzipping.url, retries: 0, timeouts: quick });
    const got = await upstream.manifest('team/app', '1');
    expect(got && Buffer.from(got.bytes).equals(MANIFEST)).toBe(true);
  });

  test('a blob HEAD whose redirect target takes only GET (a URL signed for GET, as S3 behind ghcr.io) learns the size from the first byte', async () => {
    const s3: Host = await host((req, res) => {
      if (req.method === 'HEAD') return void res.writeHead(403, { 'content-type': 'application/xml' }).end();
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (!m) return void res.writeHead(200, { 'content-length': BLOB.length }).end(BLOB);
      const part = BLOB.subarray(Number(m[1]), Number(m[2]) + 1);
      res.writeHead(206, { 'content-length': part.length, 'content-range': `bytes ${m[1]}-${m[2]}/${BLOB.length}` }).end(part);
    });
    const registry = await host((req, res) => void res.writeHead(307, { location: `${s3.url}/blob?X-Amz-Signature=x` }).end());
    const upstream = new HttpUpstream({ name: 'ghcr.io', url: registry.url, retries: 2, timeouts: quick });
    expect(await upstream.statBlob('org/app', sha256(BLOB))).toEqual({ size: BLOB.length });
    // One HEAD refused (not retried as an expired URL), then one byte asked for.
    expect(s3.seen.map((r) => r.method)).toEqual(['HEAD', 'GET']);
  });

  test('a redirect target that cannot be reached is named in the error, not the upstream', async () => {
    const closed = await host();
    const cdn = new URL(closed.url);
    await new Promise<void>((resolve) => servers.pop()!.close(() => resolve()));
    const registry = await host((_req, res) => void res.writeHead(307, { location: `${closed.url}/blobs/signed?x=1` }).end());
    const upstream = new HttpUpstream({ name: 'docker.io', url: registry.url, retries: 0, timeouts: quick });
    const err = (await upstream.blob('library/alpine', sha256(BLOB)).catch((e: unknown) => e)) as UpstreamError;
    expect([err.failure, err.message]).toEqual(['unreachable', `upstream docker.io's redirect target ${cdn.host} is unreachable (ECONNREFUSED)`]);
  });

  test('a token service that cannot be reached is named as such, not as a redirect target', async () => {
    const closed = await host();
    const realm = new URL(closed.url);
    await new Promise<void>((resolve) => servers.pop()!.close(() => resolve()));
    const registry = await host((_req, res) => challenge(res, `Bearer realm="${closed.url}/token",service="registry.docker.io"`));
    const upstream = new HttpUpstream({ name: 'docker.io', url: registry.url, retries: 0, timeouts: quick });
    const err = (await upstream.manifest('library/alpine', 'latest').catch((e: unknown) => e)) as UpstreamError;
    expect([err.failure, err.message]).toEqual(['unreachable', `token service of upstream docker.io (${realm.host}) is unreachable (ECONNREFUSED)`]);
  });

  test('Basic credentials refused on the second try are "unauthorized" (our credentials), not "denied"', async () => {
    const registry = await host((_req, res) => challenge(res, 'Basic realm="r"'));
    const upstream = new HttpUpstream({ name: 'up', url: registry.url, username: 'a', password: 'b', retries: 0, timeouts: quick });
    const err = (await upstream.manifest('team/app', '1').catch((e: unknown) => e)) as UpstreamError;
    expect(err.failure).toBe('unauthorized');
  });
});

test('mirrors: one down and one refusing report the outage, so that a cached copy is served', async () => {
  const down = await host((_req, res) => json(res, 503, {}));
  const refusing: Host = await host((req, res) => {
    if (req.url!.startsWith('/token')) return json(res, 200, { token: 't' });
    challenge(res, `Bearer realm="${refusing.url}/token"${req.headers.authorization ? ',error="insufficient_scope"' : ''}`);
  });
  for (const order of [[down, refusing], [refusing, down]]) {
    const mirrors = order.map((h) => new HttpUpstream({ name: 'up', url: h.url, retries: 0, timeouts: quick }));
    const err = (await new MirroredUpstream(mirrors, { strategy: 'failover' }).manifest('a/b', '1').catch((e: unknown) => e)) as UpstreamError;
    expect(err.failure).toBe('server-error');
  }
});

describe('manifest answers done wrong', () => {
  test('a signed schema 1 manifest is refused with a message that says so', async () => {
    const doc = Buffer.from(JSON.stringify({ schemaVersion: 1, name: 'a/b', tag: '1', fsLayers: [], history: [], signatures: [{ protected: 'x' }] }));
    const registry = await host((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/vnd.docker.distribution.manifest.v1+prettyjws', 'docker-content-digest': sha256(Buffer.from('payload')) }).end(doc);
    });
    const upstream = new HttpUpstream({ name: 'up', url: registry.url, retries: 0, timeouts: quick });
    await expect(upstream.manifest('a/b', '1')).rejects.toThrow(/schema 1/);
  });

  test('a JSON document whose mediaType is no manifest type (a page, an error) is no manifest, whatever Content-Type came with it', async () => {
    for (const contentType of [OCI, 'text/html']) {
      const page = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'text/html', layers: [] }));
      const up = await host((_req, res) => void res.writeHead(200, { 'content-type': contentType, 'content-length': page.length }).end(page));
      const upstream = new HttpUpstream({ name: 'up', url: up.url, retries: 0 });
      await expect(upstream.manifest('library/app', '1')).rejects.toMatchObject({ failure: 'invalid', message: expect.stringMatching(/not a manifest/) });
    }
  });

  test('asked by digest, bytes that hash to it are taken whatever digest header came with them', async () => {
    const registry = await host((req, res) => manifestAnswer(req, res, MANIFEST, sha256(Buffer.from('another manifest'))));
    const upstream = new HttpUpstream({ name: 'up', url: registry.url, retries: 0, timeouts: quick });
    expect((await upstream.manifest('a/b', sha256(MANIFEST)))?.digest).toBe(sha256(MANIFEST));
    // By tag the header is all there is to check the bytes against.
    await expect(upstream.manifest('a/b', 'latest')).rejects.toThrow(/does not match its digest/);
  });
});

describe('the proxy with HEADs done wrong, and many clients at once', () => {
  const V2 = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI, config: {}, layers: [], annotations: { v: '2' } }));

  test.each([405, 404, 400, 403, 501])('a manifest HEAD answering %i: the tag is checked with a GET, no back-off for the upstream', async (status) => {
    let current = MANIFEST;
    const registry = await host((req, res) => {
      if (req.method === 'HEAD') return json(res, status, { errors: [{ code: 'UNSUPPORTED' }] });
      manifestAnswer(req, res, req.url!.includes('/other/') ? MANIFEST : current);
    });
    await withProxy(new HttpUpstream({ name: 'up', url: registry.url, retries: 0, timeouts: quick }), async (proxy) => {
      await proxy.manifest('team/app', 'latest');
      await proxy.manifest('team/other', 'latest');
      current = V2;
      await sleep(TTL + 20);
      const moved = await proxy.manifest('team/app', 'latest');
      expect(moved?.digest).toBe(sha256(V2));
      expect(moved?.warning).toBeUndefined();
      // Another repository's tag is still checked (a GET), not served stale as if the upstream were down.
      const before = registry.seen.length;
      expect((await proxy.manifest('team/other', 'latest'))?.warning).toBeUndefined();
      expect(registry.seen.slice(before).map((s) => s.method)).toContain('GET');
    });
  });

  test('a manifest HEAD answering 200 without Docker-Content-Digest: past manifest_ttl the tag is checked with HEAD, then GET; a moved tag is served with its new digest', async () => {
    let current = MANIFEST;
    const registry = await host((req, res) => {
      // Its type and length, no digest: the HEAD tells nothing of whether the tag moved.
      if (req.method === 'HEAD') return void res.writeHead(200, { 'content-type': OCI, 'content-length': current.length }).end();
      manifestAnswer(req, res, current);
    });
    const methods = () => registry.seen.map((s) => s.method);
    // The wall clock alone (manifest_ttl is measured with Date.now()) moves only when the test moves it.
    jest.useFakeTimers({ doNotFake: ['hrtime', 'nextTick', 'performance', 'queueMicrotask', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    try {
      await withProxy(new HttpUpstream({ name: 'up', url: registry.url, retries: 0, timeouts: quick }), async (proxy) => {
        expect((await proxy.manifest('team/app', 'latest'))?.digest).toBe(sha256(MANIFEST));
        jest.setSystemTime(Date.now() + TTL - 1);
        expect((await proxy.manifest('team/app', 'latest'))?.digest).toBe(sha256(MANIFEST));
        expect(methods()).toEqual(['GET']);

        // Past the TTL, the tag unmoved: the HEAD, then the GET it could not spare.
        jest.setSystemTime(Date.now() + 1);
        const same = await proxy.manifest('team/app', 'latest');
        expect([same?.digest, same?.warning]).toEqual([sha256(MANIFEST), undefined]);
        expect(methods()).toEqual(['GET', 'HEAD', 'GET']);

        // Moved: the GET after the HEAD brings the new manifest, served fresh (no Warning).
        current = V2;
        jest.setSystemTime(Date.now() + TTL);
        const moved = await proxy.manifest('team/app', 'latest');
        expect([moved?.digest, moved?.warning]).toEqual([sha256(V2), undefined]);
        expect(moved?.bytes.equals(V2)).toBe(true);
        expect(methods()).toEqual(['GET', 'HEAD', 'GET', 'HEAD', 'GET']);
        // And the tag now names it from the cache, within the TTL of that check.
        expect((await proxy.manifest('team/app', 'latest'))?.digest).toBe(sha256(V2));
        expect(methods()).toHaveLength(5);
      });
    } finally {
      jest.useRealTimers();
    }
  });

  test('below the rate-limit floor, a HEAD that tells nothing does not freeze the tag: the GET goes', async () => {
    let current = MANIFEST;
    const registry = await host((req, res) => {
      if (req.method === 'HEAD') return json(res, 405, {});
      res.setHeader('ratelimit-remaining', '5;w=21600');
      manifestAnswer(req, res, current);
    });
    const upstream = new HttpUpstream({ name: 'up', url: registry.url, retries: 0, timeouts: quick });
    await withProxy(
      upstream,
      async (proxy) => {
        await proxy.manifest('team/app', 'latest');
        proxy.rateLimitRemaining = 5;
        current = V2;
        await sleep(TTL + 20);
        expect((await proxy.manifest('team/app', 'latest'))?.digest).toBe(sha256(V2));
      },
      10,
    );
  });

  test('eight clients asking at once for an uncached manifest cost one upstream GET, by tag and by digest', async () => {
    const registry = await host((req, res) => void setTimeout(() => manifestAnswer(req, res), 100));
    await withProxy(new HttpUpstream({ name: 'up', url: registry.url, retries: 0, timeouts: quick }), async (proxy) => {
      const byTag = await Promise.all(Array.from({ length: 8 }, () => proxy.manifest('team/app', '1')));
      expect(new Set(byTag.map((m) => m?.digest))).toEqual(new Set([sha256(MANIFEST)]));
      const byDigest = await Promise.all(Array.from({ length: 8 }, () => proxy.manifest('team/fresh', sha256(MANIFEST))));
      expect(byDigest.every((m) => m?.digest === sha256(MANIFEST))).toBe(true);
      expect(registry.seen.filter((s) => s.method === 'GET').map((s) => s.url)).toEqual(['/v2/team/app/manifests/1', `/v2/team/fresh/manifests/${sha256(MANIFEST)}`]);
    });
  });
});

const TTL = 100;

async function withProxy(upstream: HttpUpstream, run: (proxy: PullThroughRepository) => Promise<void>, rateLimitFloor = 0): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'wharf-quirks-'));
  await mkdir(join(dir, 'tmp'));
  const db: SqliteDatabase = openDatabase(':memory:');
  try {
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const proxy = new PullThroughRepository(upstream, new CacheIndex(db), store, new BlobFills({ store, tempRoot: join(dir, 'tmp') }), {
      manifestTtl: TTL,
      absentTtl: 60_000,
      rateLimitFloor,
      outageBackoff: 60_000,
    });
    await run(proxy);
  } finally {
    db.close();
    await rm(dir, { recursive: true, force: true });
  }
}
