import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createServer, type RequestListener, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { createApp } from '../../src/app.js';
import { withManifestFastPath } from '../../src/http/manifest-fast-path.js';
import type { RequestObservation } from '../../src/http/request-log.js';
import { LocalResolver, type ResolvedRepository } from '../../src/repositories.js';
import { rawRequest, uniqueRepo, type RawResponse } from '../helpers/http.js';
import { OCI_MANIFEST, pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** Headers that differ between any two responses. */
const PER_RESPONSE = new Set(['date', 'x-request-id']);

function comparable(res: RawResponse) {
  const headers = Object.fromEntries(Object.entries(res.headers).filter(([k]) => !PER_RESPONSE.has(k)));
  return { status: res.status, headers, body: res.body.toString('base64') };
}

async function listen(handler: RequestListener): Promise<{ server: Server; url: string }> {
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/**
 * The fast path in front of the full Koa app, on the same registry, next to the Koa app alone: what
 * one answers, the other must answer byte for byte, and the Koa app behind the fast path must see
 * exactly the requests the fast path does not answer.
 */
describe('manifest fast path', () => {
  let reg: TestRegistry;
  let fast: { server: Server; url: string };
  let koaOnly: { server: Server; url: string };
  let fellBack: string[];
  let observed: RequestObservation[];
  let allow = true;
  const repo = uniqueRepo('fast');
  let digest: string;

  beforeAll(async () => {
    reg = await startRegistry();
    digest = (await pushImage(reg.url, repo, 'v1')).manifest.digest;
    const logger = pino({ level: 'silent' });
    const resolver = new LocalResolver(reg.local);
    const koa = createApp({ local: reg.local, resolver, logger }).callback();
    koaOnly = await listen(koa);
    fellBack = [];
    observed = [];
    fast = await listen(
      withManifestFastPath(
        {
          resolver,
          access: async (_auth: string | undefined, _ip: string | undefined, _name: string, _target: ResolvedRepository) => (allow ? { mayPush: false } : undefined),
          tracking: { logger, observer: { started: () => undefined, finished: (o) => observed.push(o) } },
        },
        (req, res) => {
          fellBack.push(`${req.method} ${req.url}`);
          koa(req, res);
        },
      ),
    );
  });
  afterAll(async () => {
    for (const s of [fast?.server, koaOnly?.server]) if (s) await new Promise((r) => s.close(r));
    await reg.close();
  });

  async function both(method: string, path: string, headers: Record<string, string> = {}) {
    const before = fellBack.length;
    const viaFast = await rawRequest(fast.url, method, path, { headers });
    const viaKoa = await rawRequest(koaOnly.url, method, path, { headers });
    return { viaFast, viaKoa, fellBack: fellBack.length > before };
  }

  test.each([
    ['GET', 'v1'],
    ['HEAD', 'v1'],
    ['GET', 'digest'],
    ['HEAD', 'digest'],
  ])('%s by %s is answered without Koa, exactly as Koa answers it', async (method, ref) => {
    const reference = ref === 'digest' ? digest : ref;
    const { viaFast, viaKoa, fellBack } = await both(method, `/v2/${repo}/manifests/${reference}`, { Accept: OCI_MANIFEST });
    expect(fellBack).toBe(false);
    expect(viaFast.status).toBe(200);
    expect(viaFast.headers['docker-content-digest']).toBe(digest);
    expect(viaFast.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(comparable(viaFast)).toEqual(comparable(viaKoa));
  });

  test.each([
    ['GET', 'the manifest\'s tag', (d: string) => `"${d}"`, 304],
    ['HEAD', 'the manifest\'s tag', (d: string) => `"${d}"`, 304],
    ['GET', 'a weak tag among others', (d: string) => `"sha256:00", W/"${d}"`, 304],
    ['GET', '*', () => '*', 304],
    ['GET', 'another tag', () => '"sha256:00"', 200],
  ])('%s with If-None-Match naming %s answers %d, without Koa and exactly as Koa does', async (method, _what, value, status) => {
    const { viaFast, viaKoa, fellBack } = await both(method, `/v2/${repo}/manifests/v1`, { 'If-None-Match': value(digest) });
    expect(fellBack).toBe(false);
    expect(viaFast.status).toBe(status);
    expect(viaKoa.status).toBe(status);
    expect(viaFast.headers.etag).toBe(`"${digest}"`);
    if (status === 304) expect(viaFast.body.length + viaKoa.body.length).toBe(0);
  });

  test('a sane X-Request-Id from the client is returned, as Koa does', async () => {
    const { viaFast, fellBack } = await both('GET', `/v2/${repo}/manifests/v1`, { 'X-Request-Id': 'ci-job-42' });
    expect(fellBack).toBe(false);
    expect(viaFast.headers['x-request-id']).toBe('ci-job-42');
  });

  test('a served request is logged and counted like any other', async () => {
    observed.length = 0;
    const res = await rawRequest(fast.url, 'GET', `/v2/${repo}/manifests/v1`);
    expect(res.status).toBe(200);
    await new Promise((r) => setTimeout(r, 50));
    expect(observed).toEqual([expect.objectContaining({ route: 'manifest', method: 'GET', status: 200 })]);
    expect(observed[0]!.bytesOut).toBeGreaterThan(res.body.length);
  });

  test.each([
    ['an unknown tag', 'GET', () => `/v2/${repo}/manifests/nope`, 404],
    ['an unknown repository', 'GET', () => `/v2/${repo}-none/manifests/v1`, 404],
    ['an invalid tag', 'GET', () => `/v2/${repo}/manifests/-bad`, 404],
    ['a malformed digest', 'HEAD', () => `/v2/${repo}/manifests/sha256:abc`, 400],
    ['an invalid name', 'GET', () => '/v2/Upper/Case/manifests/v1', 400],
    ['a DELETE', 'DELETE', () => `/v2/${repo}/manifests/nope`, 404],
    ['a blob', 'GET', () => `/v2/${repo}/blobs/${digest}`, 404],
  ])('%s goes to the Koa app, which answers it', async (_what, method, path, status) => {
    const { viaFast, viaKoa, fellBack } = await both(method, path());
    expect(fellBack).toBe(true);
    expect(viaFast.status).toBe(status);
    expect(comparable(viaFast)).toEqual(comparable(viaKoa));
  });

  test('a request auth does not plainly allow goes to the Koa app', async () => {
    allow = false;
    try {
      const { viaFast, fellBack } = await both('GET', `/v2/${repo}/manifests/v1`);
      expect(fellBack).toBe(true);
      // Koa here runs without auth, so it answers; the point is who decided.
      expect(viaFast.status).toBe(200);
    } finally {
      allow = true;
    }
  });
});
