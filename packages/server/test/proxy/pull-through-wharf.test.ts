import { afterAll, beforeAll, describe, expect, jest, test } from '@jest/globals';
import { setTimeout as sleep } from 'node:timers/promises';
import { byteranges } from '../helpers/http.js';
import { blob, pushBlob, pushImage, sha256 } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { CountingForwarder } from './helpers/counting-forwarder.js';
import { buildLayout, pull, removeTemps, run, seed, type Layout } from './helpers/tools.js';

const TTL_MS = 1000;

async function errorOf(res: Response): Promise<{ code: string; message: string }> {
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  const body = (await res.json()) as { errors: { code: string; message: string }[] };
  return body.errors[0]!;
}

describe('pull-through from another Wharf', () => {
  let layout: Layout;
  let up: TestRegistry;
  let fwd: CountingForwarder;
  let proxy: TestRegistry;
  let host: string;

  beforeAll(async () => {
    layout = await buildLayout('wharf-upstream');
    up = await startRegistry();
    await seed(layout, new URL(up.url).host, 'alice/app', 'alice/multi');
    fwd = await CountingForwarder.start(up.url);
    proxy = await startRegistry({
      settings: {
        proxy: {
          manifest_ttl: `${TTL_MS}ms`,
          retries: 0,
          upstreams: {
            up: { url: fwd.url, aliases: ['upstream-alias', 'kube'] },
            hub: { url: up.url, library_prefix: 'library' },
          },
        },
      },
    });
    host = new URL(proxy.url).host;
  });
  afterAll(async () => {
    await proxy?.close();
    await fwd?.close();
    await up?.close();
    await removeTemps();
  });

  test('skopeo pulls by tag through /v2/proxy/<key>/ and gets the upstream manifest digest', async () => {
    expect(await pull(`${host}/proxy/up/alice/app:1`)).toBe(layout.single);
  });

  test('skopeo pulls by digest through the proxy', async () => {
    expect(await pull(`${host}/proxy/up/alice/app@${layout.single}`)).toBe(layout.single);
  });

  test('skopeo copy --all of a two-platform index keeps the index digest and fetches both platforms', async () => {
    expect(await pull(`${host}/proxy/up/alice/multi:1`, { all: true })).toBe(layout.multi);
    for (const digest of [layout.amd64, layout.arm64]) {
      const res = await fetch(`${proxy.url}/v2/proxy/up/alice/multi/manifests/${digest}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('docker-content-digest')).toBe(digest);
    }
  });

  test('an alias names the same upstream, and replies carry OCI-Namespace', async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/upstream-alias/alice/app/manifests/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(layout.single);
    expect(res.headers.get('oci-namespace')).toBe('up');
  });

  test('a one-component name on an upstream with library_prefix is served from library/<name>', async () => {
    const { manifest } = await pushImage(up.url, 'library/busybox', '1');
    const res = await fetch(`${proxy.url}/v2/proxy/hub/busybox/manifests/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
  });

  test('by tag: no upstream request within manifest_ttl; after it a HEAD; a moved tag is fetched with GET', async () => {
    // The wall clock only (manifest_ttl is measured with Date.now()) stands still until the test moves
    // it: "within manifest_ttl" holds however slow the machine is. Timers, sockets and I/O stay real.
    jest.useFakeTimers({ doNotFake: ['hrtime', 'nextTick', 'performance', 'queueMicrotask', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    try {
      const path = '/v2/alice/ttl/manifests/1';
      const first = await pushImage(up.url, 'alice/ttl', '1', 'first');
      const get = () => fetch(`${proxy.url}/v2/proxy/up/alice/ttl/manifests/1`).then((r) => r.headers.get('docker-content-digest'));
      expect(await get()).toBe(first.manifest.digest);
      jest.setSystemTime(Date.now() + TTL_MS - 1);
      expect(await get()).toBe(first.manifest.digest);
      expect([fwd.count('GET', path), fwd.count('HEAD', path)]).toEqual([1, 0]);

      jest.setSystemTime(Date.now() + 1);
      expect(await get()).toBe(first.manifest.digest);
      expect([fwd.count('GET', path), fwd.count('HEAD', path)]).toEqual([1, 1]);

      const second = await pushImage(up.url, 'alice/ttl', '1', 'second');
      jest.setSystemTime(Date.now() + TTL_MS - 1);
      expect(await get()).toBe(first.manifest.digest); // still within the TTL of the last check
      jest.setSystemTime(Date.now() + 1);
      expect(await get()).toBe(second.manifest.digest);
      expect([fwd.count('GET', path), fwd.count('HEAD', path)]).toEqual([2, 2]);
    } finally {
      jest.useRealTimers();
    }
  });

  test('by digest: served from the cache with no upstream request, whatever the TTL', async () => {
    const path = `/v2/alice/app/manifests/${layout.single}`;
    await fetch(`${proxy.url}/v2/proxy/up/alice/app/manifests/${layout.single}`);
    const before = fwd.count('GET', path) + fwd.count('HEAD', path);
    await sleep(TTL_MS + 100);
    const res = await fetch(`${proxy.url}/v2/proxy/up/alice/app/manifests/${layout.single}`);
    expect(res.status).toBe(200);
    expect(fwd.count('GET', path) + fwd.count('HEAD', path)).toBe(before);
  });

  test("BuildKit's registry cache (an index of layers and a cache config, all blobs) comes through whole", async () => {
    // `docker buildx build --cache-from type=registry,ref=<wharf>/proxy/up/alice/cache:buildcache`
    const layer = blob('a cached layer');
    const config = blob('{"layers":[],"records":[]}');
    for (const b of [layer, config]) await pushBlob(up.url, 'alice/cache', b);
    const bytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [
          { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer.digest, size: layer.bytes.length },
          { mediaType: 'application/vnd.buildkit.cacheconfig.v0', digest: config.digest, size: config.bytes.length },
        ],
      }),
    );
    const put = await fetch(`${up.url}/v2/alice/cache/manifests/buildcache`, { method: 'PUT', body: bytes, headers: { 'content-type': 'application/vnd.oci.image.index.v1+json' } });
    expect(put.status).toBe(201);
    const res = await fetch(`${proxy.url}/v2/proxy/up/alice/cache/manifests/buildcache`, { headers: { accept: 'application/vnd.oci.image.index.v1+json' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(sha256(bytes));
    expect(Buffer.from(await res.arrayBuffer()).equals(bytes)).toBe(true);
    for (const b of [layer, config]) {
      const got = await fetch(`${proxy.url}/v2/proxy/up/alice/cache/blobs/${b.digest}`);
      expect(got.status).toBe(200);
      expect(Buffer.from(await got.arrayBuffer()).equals(b.bytes)).toBe(true);
    }
  });

  test('several ranges of a proxied blob, cold then cached, answer 206 multipart/byteranges with the right bytes', async () => {
    const bytes = Buffer.alloc(256 * 1024);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 10)) & 0xff;
    const layer = blob(bytes);
    await pushBlob(up.url, 'alice/chunked', layer);
    const ranges = [{ start: 5, end: 1004 }, { start: 100_000, end: 100_099 }, { start: 262_000, end: 262_143 }];
    for (const when of ['cold', 'cached']) {
      const res = await fetch(`${proxy.url}/v2/proxy/up/alice/chunked/blobs/${layer.digest}`, { headers: { Range: `bytes=${ranges.map((r) => `${r.start}-${r.end}`).join(',')}` } });
      expect([when, res.status]).toEqual([when, 206]);
      const parts = byteranges(res.headers.get('content-type'), Buffer.from(await res.arrayBuffer()));
      expect(parts.map((p) => p.contentRange)).toEqual(ranges.map((r) => `bytes ${r.start}-${r.end}/${bytes.length}`));
      parts.forEach((p, i) => expect(p.bytes.equals(bytes.subarray(ranges[i]!.start, ranges[i]!.end + 1))).toBe(true));
    }
  });

  test('a mount from a proxied repository into a local one copies the cached blob; not cached, or cached for another repository, it is an upload', async () => {
    const image = await pushImage(up.url, 'alice/base', '1');
    const other = blob('a layer cached for another repository only');
    await pushBlob(up.url, 'alice/elsewhere', other);
    for (const [repo, b] of [['alice/base', image.layer], ['alice/elsewhere', other]] as const) {
      const res = await fetch(`${proxy.url}/v2/proxy/up/${repo}/blobs/${b.digest}`);
      expect(res.status).toBe(200);
      await res.arrayBuffer();
    }
    const path = `/v2/alice/base/blobs/${image.layer.digest}`;
    const gets = fwd.count('GET', path);
    const mount = (digest: string, from: string) => fetch(`${proxy.url}/v2/team/app/blobs/uploads/?mount=${digest}&from=${from}`, { method: 'POST' });

    const mounted = await mount(image.layer.digest, 'proxy/up/alice/base');
    expect(mounted.status).toBe(201);
    expect(mounted.headers.get('docker-content-digest')).toBe(image.layer.digest);
    expect(new URL(mounted.headers.get('location')!, proxy.url).pathname).toBe(`/v2/team/app/blobs/${image.layer.digest}`);
    const copy = await fetch(`${proxy.url}/v2/team/app/blobs/${image.layer.digest}`);
    expect(Buffer.from(await copy.arrayBuffer()).equals(image.layer.bytes)).toBe(true);
    expect(fwd.count('GET', path)).toBe(gets); // from the cache, not the upstream

    // The config was never pulled through: a plain upload, and no fill started for it.
    const configPath = `/v2/alice/base/blobs/${image.config.digest}`;
    expect((await mount(image.config.digest, 'proxy/up/alice/base')).status).toBe(202);
    expect(fwd.count('GET', configPath) + fwd.count('HEAD', configPath)).toBe(0);
    // Cached, but for another repository of the upstream: not this one's to give.
    expect((await mount(other.digest, 'proxy/up/alice/base')).status).toBe(202);
  });

  test('upstream down: a cached image still pulls with skopeo, and the manifest carries a 299 Warning', async () => {
    expect(await pull(`${host}/proxy/up/alice/app:1`)).toBe(layout.single);
    fwd.setDown(true);
    try {
      await sleep(TTL_MS + 100);
      expect(await pull(`${host}/proxy/up/alice/app:1`)).toBe(layout.single);
      const res = await fetch(`${proxy.url}/v2/proxy/up/alice/app/manifests/1`);
      expect(res.status).toBe(200);
      expect(res.headers.get('docker-content-digest')).toBe(layout.single);
      expect(res.headers.get('warning')).toMatch(/^299 - ".+"$/);
    } finally {
      fwd.setDown(false);
    }
  });

  test('upstream down and nothing cached: 502 UPSTREAM_ERROR as an OCI error body', async () => {
    fwd.setDown(true);
    try {
      const res = await fetch(`${proxy.url}/v2/proxy/up/alice/never-pulled/manifests/1`);
      expect(res.status).toBe(502);
      expect((await errorOf(res)).code).toBe('UPSTREAM_ERROR');
      const blobRes = await fetch(`${proxy.url}/v2/proxy/up/alice/never-pulled/blobs/${blob('never').digest}`);
      expect(blobRes.status).toBe(502);
      expect((await errorOf(blobRes)).code).toBe('UPSTREAM_ERROR');
    } finally {
      fwd.setDown(false);
    }
  });

  const artifactType = 'application/vnd.example.signature.v1+json';

  /** Pushes to the upstream's `repo` a signature of `subject` (its blobs too), with `annotations`. */
  async function pushSignature(repo: string, subject: { mediaType: string; digest: string; size: number }, annotations?: Record<string, string>): Promise<{ bytes: Buffer; digest: string }> {
    const empty = blob('{}');
    const payload = blob('a signature');
    for (const b of [empty, payload]) await pushBlob(up.url, repo, b);
    const bytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        artifactType,
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: empty.digest, size: 2 },
        layers: [{ mediaType: artifactType, digest: payload.digest, size: payload.bytes.length }],
        subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
        ...(annotations ? { annotations } : {}),
      }),
    );
    const put = await fetch(`${up.url}/v2/${repo}/manifests/${sha256(bytes)}`, { method: 'PUT', headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, body: bytes });
    expect(put.status).toBe(201);
    return { bytes, digest: sha256(bytes) };
  }

  test('referrers come from the upstream, filtered by ?artifactType=; the referrer pulls by digest', async () => {
    const { manifest } = await pushImage(up.url, 'alice/signed', '1');
    const { bytes, digest: artifact } = await pushSignature('alice/signed', manifest);

    const res = await fetch(`${proxy.url}/v2/proxy/up/alice/signed/referrers/${manifest.digest}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/vnd.oci.image.index.v1+json');
    const index = (await res.json()) as { manifests: { digest: string; size: number; artifactType?: string }[] };
    expect(index.manifests).toEqual([{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: artifact, size: bytes.length, artifactType }]);
    const filtered = await fetch(`${proxy.url}/v2/proxy/up/alice/signed/referrers/${manifest.digest}?artifactType=${encodeURIComponent('application/x-other')}`);
    expect(((await filtered.json()) as { manifests: unknown[] }).manifests).toEqual([]);
    expect(filtered.headers.get('oci-filters-applied')).toBe('artifactType');
    const referrer = await fetch(`${proxy.url}/v2/proxy/up/alice/signed/manifests/${artifact}`);
    expect(referrer.status).toBe(200);
    expect(Buffer.from(await referrer.arrayBuffer()).equals(bytes)).toBe(true);
  });

  test('referrers the upstream pages (an index past 4 MiB) are all listed, in pages of our own', async () => {
    const { manifest } = await pushImage(up.url, 'alice/many-signed', '1');
    const pushed: string[] = [];
    for (let i = 0; i < 44; i++) pushed.push((await pushSignature('alice/many-signed', manifest, { note: `${i} ${'x'.repeat(100_000)}` })).digest);
    // The upstream itself answers in two pages.
    expect((await fetch(`${up.url}/v2/alice/many-signed/referrers/${manifest.digest}`)).headers.get('link')).toMatch(/rel="next"$/);
    const listed: string[] = [];
    let next: string | undefined = `/v2/proxy/up/alice/many-signed/referrers/${manifest.digest}`;
    while (next) {
      const res: Response = await fetch(`${proxy.url}${next}`);
      expect(res.status).toBe(200);
      for (const m of ((await res.json()) as { manifests: { digest: string }[] }).manifests) listed.push(m.digest);
      next = /^<([^>]+)>; rel="next"$/.exec(res.headers.get('link') ?? '')?.[1];
    }
    expect(listed.sort()).toEqual(pushed.sort());
  });

  test('upstream 404: 404 MANIFEST_UNKNOWN and BLOB_UNKNOWN', async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/up/alice/app/manifests/no-such-tag`);
    expect(res.status).toBe(404);
    expect((await errorOf(res)).code).toBe('MANIFEST_UNKNOWN');
    const other = await fetch(`${proxy.url}/v2/proxy/up/nobody/nothing/manifests/1`);
    expect(other.status).toBe(404);
    expect((await errorOf(other)).code).toBe('MANIFEST_UNKNOWN');
    const blobRes = await fetch(`${proxy.url}/v2/proxy/up/alice/app/blobs/${blob('not there').digest}`);
    expect(blobRes.status).toBe(404);
    expect((await errorOf(blobRes)).code).toBe('BLOB_UNKNOWN');
  });

  test('an unknown upstream key is 404 NAME_UNKNOWN', async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/nope/alice/app/manifests/1`);
    expect(res.status).toBe(404);
    expect((await errorOf(res)).code).toBe('NAME_UNKNOWN');
  });

  test('push, upload and delete on proxy names are 405 UNSUPPORTED with a message', async () => {
    const base = `${proxy.url}/v2/proxy/up/alice/app`;
    const b = blob('pushed to a proxy name');
    const attempts: [string, RequestInit][] = [
      [`${base}/blobs/uploads/`, { method: 'POST' }],
      [`${base}/blobs/uploads/?digest=${b.digest}`, { method: 'POST', body: b.bytes }],
      // An upload session's own path takes GET elsewhere (its status); a proxy name has no session.
      [`${base}/blobs/uploads/0b8a2c54-3f3c-4f8e-9d55-0f2b1d3c4e5f`, { method: 'PATCH', body: b.bytes }],
      [`${base}/blobs/uploads/0b8a2c54-3f3c-4f8e-9d55-0f2b1d3c4e5f`, { method: 'GET' }],
      [`${base}/manifests/2`, { method: 'PUT', headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, body: '{}' }],
      [`${base}/manifests/1`, { method: 'DELETE' }],
      [`${base}/blobs/${layout.single}`, { method: 'DELETE' }],
      // Methods no route of the path takes on any name: refused for the same reason, not as a local
      // name's "method not allowed" whose Allow would list the writes this name refuses.
      [`${base}/blobs/uploads/`, { method: 'PUT', body: b.bytes }],
      [`${base}/blobs/uploads/`, { method: 'PATCH', body: b.bytes }],
      [`${base}/blobs/uploads/`, { method: 'DELETE' }],
      [`${base}/blobs/uploads/0b8a2c54-3f3c-4f8e-9d55-0f2b1d3c4e5f`, { method: 'POST' }],
      [`${base}/blobs/${layout.single}`, { method: 'PUT', body: b.bytes }],
      [`${base}/blobs/${layout.single}`, { method: 'POST' }],
      [`${base}/manifests/2`, { method: 'POST', body: '{}' }],
    ];
    for (const [url, init] of attempts) {
      const res = await fetch(url, init);
      expect([init.method, res.status]).toEqual([init.method, 405]);
      const error = await errorOf(res);
      expect(error.code).toBe('UNSUPPORTED');
      expect(error.message).toMatch(/read-only pull-through cache/);
      // Allow names what the name does take: reads, and nothing on the upload endpoint.
      expect([init.method, res.headers.get('allow')]).toEqual([init.method, url.includes('/uploads/') ? '' : 'GET, HEAD']);
    }
    // The manifest is still there.
    expect((await fetch(`${base}/manifests/1`)).status).toBe(200);
    // A name of the server's own keeps the router's answer, with the methods its path takes.
    const local = await fetch(`${proxy.url}/v2/alice/mine/blobs/uploads/`, { method: 'PUT', body: b.bytes });
    expect(local.status).toBe(405);
    expect((await errorOf(local)).message).toBe('method not allowed on this endpoint');
    expect(local.headers.get('allow')).toBe('POST');
  });

  test('OPTIONS on a proxy name lists what its 405s allow, not the writes a local name takes', async () => {
    const base = `${proxy.url}/v2/proxy/up/alice/app`;
    const allowOf = async (url: string) => {
      const res = await fetch(url, { method: 'OPTIONS' });
      expect([url, res.status]).toEqual([url, 200]);
      return res.headers.get('allow');
    };
    expect(await allowOf(`${base}/blobs/uploads/`)).toBe('');
    expect(await allowOf(`${base}/blobs/uploads/0b8a2c54-3f3c-4f8e-9d55-0f2b1d3c4e5f`)).toBe('');
    expect(await allowOf(`${base}/manifests/1`)).toBe('GET, HEAD');
    expect(await allowOf(`${base}/blobs/${layout.single}`)).toBe('GET, HEAD');
    // A name of the server's own takes its writes.
    expect((await allowOf(`${proxy.url}/v2/alice/mine/blobs/uploads/`))?.split(', ')).toContain('POST');
    expect((await allowOf(`${proxy.url}/v2/alice/mine/manifests/1`))?.split(', ').sort()).toEqual(['DELETE', 'GET', 'HEAD', 'PUT']);
  });

  test('skopeo cannot push to a proxy name', async () => {
    await expect(run('skopeo', ['copy', '--dest-tls-verify=false', `oci:${layout.dir}:single`, `docker://${host}/proxy/up/alice/pushed:1`])).rejects.toThrow();
  });

  test('?ns=<upstream host> routes a non-local name to that upstream and echoes the ns in OCI-Namespace', async () => {
    for (const ns of [fwd.host, 'up', 'upstream-alias']) {
      const res = await fetch(`${proxy.url}/v2/alice/app/manifests/1?ns=${encodeURIComponent(ns)}`);
      expect([ns, res.status]).toEqual([ns, 200]);
      expect(res.headers.get('docker-content-digest')).toBe(layout.single);
      // The spec: a proxy SHOULD echo the ns it was sent (the upstream's key answered every one).
      expect(res.headers.get('oci-namespace')).toBe(ns);
      const tags = await fetch(`${proxy.url}/v2/alice/app/tags/list?ns=${encodeURIComponent(ns)}`);
      expect(tags.headers.get('oci-namespace')).toBe(ns);
    }
    // A client's spelling that only lower-cases to a configured name (the Kelvin sign is "k") is
    // echoed as the name it matched: node refuses U+212A in a header, and on the manifest fast path
    // (a cached digest) that ended the process.
    for (const ref of ['1', layout.single]) {
      const res = await fetch(`${proxy.url}/v2/alice/app/manifests/${ref}?ns=${encodeURIComponent('\u212Aube')}`);
      expect([ref, res.status, res.headers.get('oci-namespace')]).toEqual([ref, 200, 'kube']);
    }
    // Without ns the name is local, and there is no local alice/app.
    expect((await fetch(`${proxy.url}/v2/alice/app/manifests/1`)).status).toBe(404);
  });

  test('?ns=<host> of two upstreams goes to the first configured, not the last', async () => {
    await pushImage(up.url, 'library/zed', '1');
    const upHost = new URL(up.url).host;
    // "plain" reads zed as zed (404 upstream), "hub" as library/zed (200): which one answered shows.
    const upstreams = (first: 'plain' | 'hub') => {
      const plain = { url: up.url };
      const hub = { url: up.url, library_prefix: 'library' };
      return first === 'plain' ? { plain, hub } : { hub, plain };
    };
    for (const [first, status] of [['plain', 404], ['hub', 200]] as const) {
      const proxied = await startRegistry({ settings: { proxy: { retries: 0, upstreams: upstreams(first) } } });
      try {
        const res = await fetch(`${proxied.url}/v2/zed/manifests/1?ns=${encodeURIComponent(upHost)}`);
        expect([first, res.status]).toEqual([first, status]);
        // The other is still reached by its key.
        const other = first === 'plain' ? ['hub', 200] : ['plain', 404];
        expect([other[0], (await fetch(`${proxied.url}/v2/zed/manifests/1?ns=${other[0]}`)).status]).toEqual(other);
      } finally {
        await proxied.close();
      }
    }
  });

  test('?ns= naming no configured upstream is served locally', async () => {
    const res = await fetch(`${proxy.url}/v2/alice/app/manifests/1?ns=registry.unknown.example`);
    expect(res.status).toBe(404);
    expect(res.headers.get('oci-namespace')).toBeNull();
  });

  test('?ns=: a local repository of the same name wins, and pushes with ns stay local', async () => {
    await pushImage(up.url, 'carol/app', '1', 'upstream copy');
    const local = await pushImage(`${proxy.url}`, 'carol/app', '1', 'local copy');
    const res = await fetch(`${proxy.url}/v2/carol/app/manifests/1?ns=${fwd.host}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(local.manifest.digest);
    expect(res.headers.get('oci-namespace')).toBeNull();
    const b = blob('pushed with ns');
    const put = await fetch(`${proxy.url}/v2/dave/app/blobs/uploads/?digest=${b.digest}&ns=${fwd.host}`, { method: 'POST', body: b.bytes });
    expect(put.status).toBe(201);
    expect(fwd.seen.some((r) => r.path.startsWith('/v2/dave/'))).toBe(false);
    expect((await fetch(`${proxy.url}/v2/dave/app/blobs/${b.digest}`)).status).toBe(200);
  });

  test('HEAD of a proxied manifest and blob answers the GET headers with no body', async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/up/alice/app/manifests/1`, { method: 'HEAD' });
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(layout.single);
    expect(Number(res.headers.get('content-length'))).toBeGreaterThan(0);
    expect((await res.arrayBuffer()).byteLength).toBe(0);
    const manifest = (await (await fetch(`${proxy.url}/v2/proxy/up/alice/app/manifests/1`)).json()) as { config: { digest: string; size: number } };
    const blobRes = await fetch(`${proxy.url}/v2/proxy/up/alice/app/blobs/${manifest.config.digest}`, { method: 'HEAD' });
    expect(blobRes.status).toBe(200);
    expect(blobRes.headers.get('docker-content-digest')).toBe(manifest.config.digest);
    expect(Number(blobRes.headers.get('content-length'))).toBe(manifest.config.size);
  });
});
