import { afterAll, beforeAll, beforeEach, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FakeUpstream } from '../../../proxy/test/helpers/fake-upstream.js';
import { captureLog } from '../auth/helpers.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { download, removeTemps, run, sha256 } from './helpers/tools.js';

const TTL_MS = 300;

describe('pull-through from a misbehaving upstream', () => {
  let fake: FakeUpstream;
  /** Another upstream, which behaves. */
  let healthy: FakeUpstream;
  let proxy: TestRegistry;
  let bytes: Buffer;
  let digest: string;
  let manifestDigest: string;
  let n = 0;
  /** A fresh repository per test, so that nothing is cached from an earlier one. */
  let repo: string;

  beforeAll(async () => {
    fake = await FakeUpstream.start();
    healthy = await FakeUpstream.start();
    proxy = await startRegistry({
      settings: {
        proxy: {
          manifest_ttl: `${TTL_MS}ms`,
          retries: 0,
          connect_timeout: '500ms',
          first_byte_timeout: '500ms',
          idle_timeout: '500ms',
          upstreams: { fake: { url: fake.url }, healthy: { url: healthy.url } },
        },
      },
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await fake?.close();
    await healthy?.close();
    await removeTemps();
  });
  beforeEach(() => {
    fake.fault = undefined;
    fake.faultTimes = Infinity;
    fake.faultOn = /\/v2\/.+\/(blobs|manifests)\//;
    fake.auth = 'none';
    repo = `alice/app${++n}`;
    bytes = randomBytes(4 * 1024 * 1024);
    digest = fake.addBlob(bytes);
    manifestDigest = fake.addManifest(repo, '1', {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest, size: bytes.length },
      layers: [],
    });
  });

  const blobUrl = () => `${proxy.url}/v2/proxy/fake/${repo}/blobs/${digest}`;
  const proxyPath = () => join(proxy.root, 'proxy', 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

  for (const fault of ['wrong-bytes', 'truncate', 'reset'] as const) {
    test(`${fault}: the client's body is cut (never complete-looking), nothing is cached, and a retry after recovery is correct`, async () => {
      fake.fault = fault;
      fake.faultOn = /\/blobs\//;
      for (let attempt = 0; attempt < 2; attempt++) {
        const got = await download(blobUrl());
        // Either the reply was an error, or its body was cut: a 200 with a full body would be a lie.
        expect(got.status !== 200 || got.body === 'cut').toBe(true);
        expect(got.body).not.toBe(digest);
      }
      await sleep(50);
      await expect(stat(proxyPath())).rejects.toMatchObject({ code: 'ENOENT' });
      fake.fault = undefined;
      expect(await download(blobUrl())).toEqual({ status: 200, body: digest });
      // The client's last byte goes out once the blob is verified; the cache copy lands just after.
      await proxy.fills.settled();
      await expect(stat(proxyPath())).resolves.toMatchObject({ size: bytes.length });
    });
  }

  test('an upstream that sends a blob\'s headers and then not a byte: every client gets a 502 with the reason, not a connection closed before any status line', async () => {
    fake.fault = 'mute';
    fake.faultOn = /\/blobs\//;
    const answers = await Promise.all(
      Array.from({ length: 4 }, async (_, i) => {
        const res = await fetch(blobUrl(), i % 2 ? { headers: { range: 'bytes=100-' } } : {});
        return { status: res.status, headers: res.headers, body: (await res.json()) as { errors: { code: string; detail: { reason?: string } }[] } };
      }),
    );
    for (const { status, headers, body } of answers) {
      expect(status).toBe(502);
      expect(body.errors[0]).toMatchObject({ code: 'UPSTREAM_ERROR', detail: { reason: expect.stringMatching(/.+/) } });
      // Nothing of the blob's answer that was being prepared: above all not its year-long
      // Cache-Control, which would have a cache in front of Wharf keep this 502.
      expect(headers.get('cache-control')).toBeNull();
      expect(headers.get('content-range')).toBeNull();
      expect(headers.get('docker-content-digest')).toBeNull();
    }
    fake.fault = undefined;
    expect(await download(blobUrl())).toEqual({ status: 200, body: digest });
  });

  test('a download that failed to start through one upstream does not fail the same blob through another', async () => {
    healthy.addBlob(bytes);
    const throughHealthy = `${proxy.url}/v2/proxy/healthy/${repo}/blobs/${digest}`;
    // The first client's upstream takes the request and never answers: its download fails at the
    // first-byte timeout. Meanwhile clients of a healthy upstream ask for the same blob.
    fake.fault = 'stall';
    fake.faultOn = /\/blobs\//;
    const stalled = download(blobUrl());
    for (let i = 0; proxy.fills.running === 0 && i < 200; i++) await sleep(5);
    const [whole, head] = await Promise.all([download(throughHealthy), fetch(throughHealthy, { method: 'HEAD' })]);
    expect(whole).toEqual({ status: 200, body: digest });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(bytes.length));
    expect((await stalled).status).toBe(504);
  });

  for (const fault of ['truncate', 'reset'] as const) {
    test(`${fault} once mid-blob: the download goes on with a range request, and the client gets the whole blob`, async () => {
      fake.fault = fault;
      fake.faultOn = /\/blobs\//;
      fake.faultTimes = 1;
      expect(await download(blobUrl())).toEqual({ status: 200, body: digest });
      const gets = fake.requests.filter((r) => r.method === 'GET' && r.path === `/v2/${repo}/blobs/${digest}`);
      expect(gets).toHaveLength(2);
      await proxy.fills.settled();
      await expect(stat(proxyPath())).resolves.toMatchObject({ size: bytes.length });
    });
  }

  test('a blob body that trickles (never silent for idle_timeout) is cut at min_speed: the download goes on with a range, the client gets the whole blob, the log says why', async () => {
    fake.fault = 'trickle';
    fake.faultOn = /\/blobs\//;
    fake.faultTimes = 1;
    const log = captureLog();
    // The fake upstream under a min_speed its trickle (64 bytes every 20 ms, 3.2 KB/s) is below.
    const picky = { url: fake.url, idle_timeout: '500ms', min_speed: '64KiB/s' };
    const reg = await startRegistry({ logger: log.logger, settings: { proxy: { retries: 0, upstreams: { picky } } } });
    try {
      expect(await download(`${reg.url}/v2/proxy/picky/${repo}/blobs/${digest}`)).toEqual({ status: 200, body: digest });
      const gets = fake.requests.filter((r) => r.method === 'GET' && r.path === `/v2/${repo}/blobs/${digest}`);
      expect(gets.map((r) => r.range)).toEqual([undefined, expect.stringMatching(/^bytes=2\d{6}-4194303$/)]);
      await reg.fills.settled();
      const cut = log.text().split('\n').filter((line) => line.includes('blob download cut by the upstream')).map((line) => JSON.parse(line) as Record<string, unknown>);
      expect(cut).toEqual([
        expect.objectContaining({ upstream: 'picky', repo, digest, at: expect.any(Number), reason: expect.stringMatching(/^upstream picky sent \d+ bytes of the blob in 0\.5 s, slower than min_speed \(65536 bytes\/s\)$/) }),
      ]);
    } finally {
      await reg.close();
    }
  });

  test('500 after the TTL with a cached manifest: 200 with a 299 Warning', async () => {
    expect((await fetch(`${proxy.url}/v2/proxy/fake/${repo}/manifests/1`)).status).toBe(200);
    await sleep(TTL_MS + 50);
    fake.fault = '500';
    const res = await fetch(`${proxy.url}/v2/proxy/fake/${repo}/manifests/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(manifestDigest);
    expect(res.headers.get('warning')).toMatch(/^299 - ".+"$/);
  });

  test('429 after the TTL with a cached manifest: 200 with a 299 Warning', async () => {
    expect((await fetch(`${proxy.url}/v2/proxy/fake/${repo}/manifests/1`)).status).toBe(200);
    await sleep(TTL_MS + 50);
    fake.fault = '429';
    const res = await fetch(`${proxy.url}/v2/proxy/fake/${repo}/manifests/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('warning')).toMatch(/^299 - ".+"$/);
    await sleep(1_100); // its Retry-After, before which no manifest is asked for
  });

  test('500 with nothing cached: 502 UPSTREAM_ERROR, its message in the reason phrase too (a HEAD has no body)', async () => {
    fake.fault = '500';
    const res = await fetch(`${proxy.url}/v2/proxy/fake/${repo}/manifests/1`);
    expect(res.status).toBe(502);
    const [error] = ((await res.json()) as { errors: { code: string; message: string }[] }).errors;
    expect(error!.code).toBe('UPSTREAM_ERROR');
    expect(error!.message).toMatch(/fake/);
    // Docker prints a 5xx as "received unexpected HTTP status: <status line>".
    expect(res.statusText).toBe(`Bad Gateway: ${error!.message}`);
    const head = await fetch(`${proxy.url}/v2/proxy/fake/${repo}/manifests/1`, { method: 'HEAD' });
    expect(head.status).toBe(502);
    expect(head.statusText).toBe(`Bad Gateway: ${error!.message}`);
  });

  test("503 with nothing cached (the upstream down for maintenance): 503 UNAVAILABLE with the upstream's Retry-After, not a 502", async () => {
    fake.fault = '503';
    fake.retryAfter = '2';
    try {
      for (const path of [`manifests/1`, `blobs/${digest}`]) {
        const res = await fetch(`${proxy.url}/v2/proxy/fake/${repo}/${path}`);
        expect([path, res.status]).toEqual([path, 503]);
        expect(res.headers.get('retry-after')).toBe('2');
        const [error] = ((await res.json()) as { errors: { code: string; message: string }[] }).errors;
        expect(error!.code).toBe('UNAVAILABLE');
        expect(error!.message).toContain('upstream fake answered 503');
      }
      // Two clients of one blob at once, the upstream slow to say 503: the one that joined the
      // download is told as the first is.
      fake.delayMs = 300;
      const blobPath = `${proxy.url}/v2/proxy/fake/${repo}/blobs/${fake.addBlob(randomBytes(1024))}`;
      const both = await Promise.all([fetch(blobPath), fetch(blobPath)]);
      expect(both.map((r) => r.status)).toEqual([503, 503]);
      for (const r of both) expect(((await r.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('UNAVAILABLE');
    } finally {
      fake.retryAfter = '1';
      fake.delayMs = 0;
    }
    await sleep(2_100); // its Retry-After, before which no manifest is asked for
  });

  test('429 with nothing cached: 429 TOOMANYREQUESTS with Retry-After', async () => {
    fake.fault = '429';
    for (const path of [`manifests/1`, `blobs/${digest}`]) {
      const res = await fetch(`${proxy.url}/v2/proxy/fake/${repo}/${path}`);
      expect([path, res.status]).toEqual([path, 429]);
      expect(res.headers.get('retry-after')).toBe('1');
      expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('TOOMANYREQUESTS');
    }
    await sleep(1_100); // its Retry-After, before which no manifest is asked for
  });

  test('a stalled upstream with nothing cached: 504 UPSTREAM_TIMEOUT within the configured timeout', async () => {
    fake.fault = 'stall';
    for (const path of [`manifests/1`, `blobs/${digest}`]) {
      const res = await fetch(`${proxy.url}/v2/proxy/fake/${repo}/${path}`);
      expect([path, res.status]).toEqual([path, 504]);
      expect(res.statusText).toMatch(/^Gateway Timeout: .*fake/);
      expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('UPSTREAM_TIMEOUT');
    }
  });

  test('a stalled upstream after the TTL with a cached manifest: 200 with a 299 Warning', async () => {
    expect((await fetch(`${proxy.url}/v2/proxy/fake/${repo}/manifests/1`)).status).toBe(200);
    await sleep(TTL_MS + 50);
    fake.fault = 'stall';
    const res = await fetch(`${proxy.url}/v2/proxy/fake/${repo}/manifests/1`);
    expect(res.status).toBe(200);
    // An earlier test in this file may already have put the upstream in its back-off window, in which
    // case the copy is served without asking; either way it is the cached copy, marked stale.
    expect(res.headers.get('warning')).toMatch(/^299 - "upstream fake (did not answer|.*timed out|is unavailable)/);
  });

  test('default timeouts and retries: a stalled upstream with a cached manifest still answers within about 5 s', async () => {
    const patient = await startRegistry({ settings: { proxy: { manifest_ttl: `${TTL_MS}ms`, upstreams: { fake: { url: fake.url } } } } });
    try {
      expect((await fetch(`${patient.url}/v2/proxy/fake/${repo}/manifests/1`)).status).toBe(200);
      await sleep(TTL_MS + 50);
      fake.fault = 'stall';
      const res = await fetch(`${patient.url}/v2/proxy/fake/${repo}/manifests/1`);
      expect(res.status).toBe(200);
      // The deadline's message: waited out, the default timeouts and retries end with another.
      expect(res.headers.get('warning')).toMatch(/did not answer within 5000 ms/);
    } finally {
      await patient.close();
    }
  });

  test('a GET the client already has (If-None-Match: its digest) is a 304 without downloading the blob', async () => {
    const res = await fetch(blobUrl(), { headers: { 'If-None-Match': `"${digest}"` } });
    expect(res.status).toBe(304);
    expect(fake.count('GET', `/v2/${repo}/blobs/${digest}`)).toBe(0);
    expect(await download(blobUrl())).toEqual({ status: 200, body: digest });
  });

  test('a blob cached once is served with the upstream failing', async () => {
    expect(await download(blobUrl())).toEqual({ status: 200, body: digest });
    fake.fault = '500';
    expect(await download(blobUrl())).toEqual({ status: 200, body: digest });
    expect(fake.count('GET', `/v2/${repo}/blobs/${digest}`)).toBe(1);
  });

  test('a Bearer-token upstream is served with the configured credentials; the client sends none', async () => {
    const bearer = await FakeUpstream.start();
    const reg = await startRegistry({
      settings: { proxy: { retries: 0, upstreams: { tok: { url: bearer.url, username: 'alice', password: 's3cret' } } } },
    });
    try {
      bearer.auth = 'bearer';
      const d = bearer.addBlob(bytes);
      const m = bearer.addManifest('alice/app', '1', { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: {}, layers: [] });
      const res = await fetch(`${reg.url}/v2/proxy/tok/alice/app/manifests/1`);
      expect(res.status).toBe(200);
      expect(res.headers.get('docker-content-digest')).toBe(m);
      const blobRes = await download(`${reg.url}/v2/proxy/tok/alice/app/blobs/${d}`);
      expect(blobRes).toEqual({ status: 200, body: d });
      expect(bearer.count('GET', '/token')).toBe(1);
    } finally {
      await reg.close();
      await bearer.close();
    }
  });
  test('a Basic upstream: eight first pulls at once through a fresh Wharf, sent before any challenge came back, all get 200', async () => {
    const basic = await FakeUpstream.start();
    const reg = await startRegistry({
      settings: { proxy: { retries: 0, upstreams: { bas: { url: basic.url, username: 'alice', password: 's3cret' } } } },
    });
    try {
      basic.auth = 'basic';
      // The first eight requests are all in flight before the first challenge is answered.
      basic.challengeTogether = 8;
      const layers = Array.from({ length: 8 }, (_, i) => basic.addBlob(randomBytes(64 * 1024 + i)));
      const got = await Promise.all(layers.map((d) => download(`${reg.url}/v2/proxy/bas/alice/app/blobs/${d}`)));
      expect(got).toEqual(layers.map((d) => ({ status: 200, body: d })));
    } finally {
      await reg.close();
      await basic.close();
    }
  });

  test('a kept tag list served while the upstream fails says so in a 299 Warning', async () => {
    const url = `${proxy.url}/v2/proxy/fake/${repo}/tags/list`;
    const fresh = await fetch(url);
    expect(await fresh.json()).toEqual({ name: `proxy/fake/${repo}`, tags: ['1'] });
    expect(fresh.headers.get('warning')).toBeNull();
    await sleep(TTL_MS + 50);
    fake.fault = '500';
    fake.faultOn = /\/tags\/list$/;
    const stale = await fetch(url);
    expect(stale.status).toBe(200);
    expect(await stale.json()).toEqual({ name: `proxy/fake/${repo}`, tags: ['1'] });
    // (Or "is unavailable", while an earlier test's outage back-off lasts: this proxy is shared.)
    expect(stale.headers.get('warning')).toMatch(/^299 - "upstream fake (unavailable \(upstream fake answered 500\)|is unavailable); serving the tags of its last answer"$/);
  });

  test('kept referrers served while the upstream fails say so in a 299 Warning', async () => {
    const url = `${proxy.url}/v2/proxy/fake/${repo}/referrers/${manifestDigest}`;
    fake.referrers.set(`${repo}@${manifestDigest}`, []);
    const fresh = await fetch(url);
    expect(fresh.status).toBe(200);
    expect(fresh.headers.get('warning')).toBeNull();
    await sleep(TTL_MS + 50);
    fake.fault = '500';
    fake.faultOn = /\/referrers\//;
    const stale = await fetch(url);
    expect(stale.status).toBe(200);
    expect(((await stale.json()) as { manifests: unknown[] }).manifests).toEqual([]);
    expect(stale.headers.get('warning')).toMatch(/^299 - "upstream fake (unavailable \(upstream fake answered 500\)|is unavailable); serving the referrers of its last answer"$/);
  });

  test('a tag list longer than the upstream pages read at once: a Link past what was read, and skopeo lists every tag once', async () => {
    // Mixed case: the upstream's byte order is not the registry's, and it applies a `last` in its own.
    const all = Array.from({ length: 70 }, (_, i) => `${i % 2 ? 'V' : 'v'}${String(i).padStart(2, '0')}`);
    for (const tag of all) fake.addManifest(repo, tag, { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', annotations: { tag } });
    all.push('1');
    fake.tagPageSize = 3;
    try {
      const first = await fetch(`${proxy.url}/v2/proxy/fake/${repo}/tags/list`);
      const firstTags = ((await first.json()) as { tags: string[] }).tags;
      expect(firstTags.length).toBeLessThan(all.length);
      expect(first.headers.get('link')).toBe(`</v2/proxy/fake/${repo}/tags/list?n=10000&last=${firstTags.at(-1)}>; rel="next"`);
      const { stdout } = await run('skopeo', ['list-tags', '--tls-verify=false', `docker://${new URL(proxy.url).host}/proxy/fake/${repo}`]);
      expect((JSON.parse(stdout) as { Tags: string[] }).Tags).toEqual([...all].sort());
    } finally {
      fake.tagPageSize = Infinity;
    }
  });
  test('a cached manifest served stale writes a warning line naming the upstream, repository, tag and why', async () => {
    const log = captureLog();
    const reg = await startRegistry({ logger: log.logger, settings: { proxy: { manifest_ttl: '0s', retries: 0, upstreams: { fake: { url: fake.url } } } } });
    try {
      expect((await fetch(`${reg.url}/v2/proxy/fake/${repo}/manifests/1`)).status).toBe(200);
      fake.fault = '500';
      fake.faultOn = /\/manifests\//;
      const res = await fetch(`${reg.url}/v2/proxy/fake/${repo}/manifests/1`);
      expect(res.status).toBe(200);
      expect(res.headers.get('warning')).toMatch(/upstream fake answered 500/);
      // Logged before the answer is sent: an operator sees it whether or not a client shows Warning.
      const lines = log
        .text()
        .split('\n')
        .filter((l) => l.includes('"msg":"serving stale manifest"'))
        .map((l) => JSON.parse(l) as { level: number; upstream: string; repo: string; tag: string; reason: string });
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ level: 40, upstream: 'fake', repo, tag: '1' });
      expect(lines[0]!.reason).toContain('upstream fake answered 500');
    } finally {
      await reg.close();
    }
  });
  test('a pull the upstream fails with nothing cached: the request log line says why, as the client is told', async () => {
    const log = captureLog();
    const reg = await startRegistry({ logger: log.logger, settings: { proxy: { retries: 0, upstreams: { fake: { url: fake.url } } } } });
    try {
      fake.fault = '500';
      fake.faultOn = /\/manifests\//;
      const res = await fetch(`${reg.url}/v2/proxy/fake/${repo}/manifests/1`);
      expect(res.status).toBe(502);
      const told = ((await res.json()) as { errors: { message: string }[] }).errors[0]!.message;
      expect(told).toBe('upstream fake answered 500');
      await sleep(50);
      const line = log
        .text()
        .split('\n')
        .filter((l) => l.includes('"msg":"request"'))
        .map((l) => JSON.parse(l) as { path: string; status: number; error?: string; reason?: string })
        .find((l) => l.path.endsWith(`${repo}/manifests/1`));
      expect(line).toMatchObject({ status: 502, error: 'UPSTREAM_ERROR', reason: told });
    } finally {
      await reg.close();
    }
  });
});

describe('a blob whose every byte waits for its digest', () => {
  test('fails it: the client gets the 502 with its reason and none of the blob\'s headers, not a connection closed before any status line', async () => {
    // A 1-byte blob: no byte of it may go out before the digest matched (all but the last may), so
    // the answer waits for the digest, which fails. The upstream sends its head at once and the
    // wrong byte a moment later: the client's request is in when the fill fails. (The race of a
    // fill failing between its first bytes and the send's first read: http/send-stream-failure.test.ts.)
    const upstream = createServer((req, res) => {
      if (!req.url?.includes('/blobs/')) return void res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"NAME_UNKNOWN"}]}');
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': '1' });
      res.flushHeaders();
      if (req.method === 'HEAD') return void res.end();
      setTimeout(() => res.end(Buffer.from('x')), 300);
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const reg = await startRegistry({ settings: { proxy: { retries: 0, upstreams: { tiny: { url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` } } } } });
    try {
      const digest = sha256(Buffer.from('y'));
      const res = await fetch(`${reg.url}/v2/proxy/tiny/alice/app/blobs/${digest}`);
      expect(res.status).toBe(502);
      expect(res.headers.get('content-type')).toMatch(/^application\/json/);
      for (const h of ['docker-content-digest', 'cache-control', 'etag', 'accept-ranges']) expect([h, res.headers.get(h)]).toEqual([h, null]);
      const [error] = ((await res.json()) as { errors: { code: string; message: string }[] }).errors;
      expect(error).toMatchObject({ code: 'UPSTREAM_ERROR', message: 'the upstream download of this blob failed; try again' });
      expect(res.statusText).toBe(`Bad Gateway: ${error!.message}`);
    } finally {
      await reg.close();
      upstream.closeAllConnections();
      await new Promise<void>((resolve) => upstream.close(() => resolve()));
    }
  });
});

describe('an upstream with mirrors', () => {
  test('the stalled mirror costs one timeout, not one per retry, before the next mirror answers', async () => {
    const stalled = await FakeUpstream.start();
    const good = await FakeUpstream.start();
    let proxy: TestRegistry | undefined;
    try {
      const doc = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'0'.repeat(64)}`, size: 2 }, layers: [] };
      stalled.addManifest('alice/app', '1', doc);
      const digest = good.addManifest('alice/app', '1', doc);
      stalled.fault = 'stall';
      // The default retries (3): before, the stalled mirror's own client took all of them first.
      proxy = await startRegistry({ settings: { proxy: { first_byte_timeout: '400ms', upstreams: { mirrored: { url: stalled.url, mirrors: [good.url] } } } } });
      const res = await fetch(`${proxy.url}/v2/proxy/mirrored/alice/app/manifests/1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
      expect(res.status).toBe(200);
      expect(res.headers.get('docker-content-digest')).toBe(digest);
      expect(stalled.requests.length).toBe(1);
    } finally {
      await proxy?.close();
      await stalled.close();
      await good.close();
    }
  });

  test("an upstream's credentials do not go to its mirrors, unless mirror_credentials says they are replicas sharing its accounts", async () => {
    const origin = await FakeUpstream.start();
    const mirror = await FakeUpstream.start();
    let proxy: TestRegistry | undefined;
    try {
      const doc = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'0'.repeat(64)}`, size: 2 }, layers: [] };
      const digest = mirror.addManifest('alice/app', '1', doc);
      origin.fault = '500';
      mirror.auth = 'basic';
      const mirrored = { url: origin.url, mirrors: [mirror.url], username: 'alice', password: 's3cret' };
      const pull = () => fetch(`${proxy!.url}/v2/proxy/mirrored/alice/app/manifests/1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
      proxy = await startRegistry({ settings: { proxy: { retries: 0, upstreams: { mirrored } } } });
      expect((await pull()).status).toBe(502);
      expect(mirror.requests.length).toBeGreaterThan(0);
      expect(mirror.requests.filter((r) => r.authorization !== undefined)).toEqual([]);
      await proxy.close();
      mirror.requests.length = 0;
      proxy = await startRegistry({ settings: { proxy: { retries: 0, upstreams: { mirrored: { ...mirrored, mirror_credentials: true } } } } });
      const res = await pull();
      expect(res.status).toBe(200);
      expect(res.headers.get('docker-content-digest')).toBe(digest);
      expect(mirror.requests.some((r) => r.authorization === `Basic ${Buffer.from('alice:s3cret').toString('base64')}`)).toBe(true);
    } finally {
      await proxy?.close();
      await origin.close();
      await mirror.close();
    }
  });

  test("an error after every mirror failed names the mirror that answered it, and how many failed", async () => {
    const first = await FakeUpstream.start();
    const second = await FakeUpstream.start();
    let proxy: TestRegistry | undefined;
    try {
      first.fault = '500';
      second.fault = '500';
      proxy = await startRegistry({ settings: { proxy: { retries: 0, upstreams: { mirrored: { url: first.url, mirrors: [second.url] } } } } });
      const res = await fetch(`${proxy.url}/v2/proxy/mirrored/alice/app/manifests/1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
      expect(res.status).toBe(502);
      const { errors } = (await res.json()) as { errors: { code: string; message: string }[] };
      // One name for every mirror ("upstream mirrored answered 500") left the operator guessing which.
      expect(errors[0]!.message).toContain(`upstream mirrored (${new URL(second.url).host}) answered 500`);
      expect(errors[0]!.message).toContain('2 of its mirrors failed');
      expect(first.requests.length).toBe(1);
      expect(second.requests.length).toBe(1);
    } finally {
      await proxy?.close();
      await first.close();
      await second.close();
    }
  });
});
