import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ROUTE_LABELS } from '../../src/http/route-label.js';
import { metricsAccess } from '../../src/routes/metrics.js';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { eventually, labelValues, sample, scrape, type Samples } from './helpers.js';

/**
 * /metrics against real servers: a push to the local registry and a pull through the proxy (a second
 * Wharf as the upstream) move the counters they should, by the amounts they should.
 */

const REQUESTS = 'wharf_http_requests_total';

function delta(before: Samples, after: Samples, name: string, labels: Record<string, string> = {}): number {
  return sample(after, name, labels) - sample(before, name, labels);
}

describe('/metrics', () => {
  let up: TestRegistry;
  let reg: TestRegistry;

  beforeAll(async () => {
    up = await startRegistry();
    reg = await startRegistry({ settings: { proxy: { upstreams: { up: { url: up.url } } } } });
  });

  afterAll(async () => {
    await reg?.close();
    await up?.close();
  });

  test('is the Prometheus text format, with process metrics and HELP/TYPE lines', async () => {
    const res = await fetch(`${reg.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    expect(text).toContain('# TYPE wharf_http_requests_total counter');
    expect(text).toContain('# TYPE wharf_http_request_duration_seconds histogram');
    expect(text).toMatch(/^process_cpu_user_seconds_total /m);
  });

  test('a push moves requests by route, method and status, bytes in, blobs and bytes stored, and the duration histogram', async () => {
    const before = await scrape(reg.url);
    const pushed = await pushImage(reg.url, 'alice/app', '1');
    const after = await scrape(reg.url);
    // Two monolithic blob uploads (POST ?digest=, 201) and one manifest PUT (201).
    expect(delta(before, after, REQUESTS, { route: 'upload', method: 'POST', status: '201' })).toBe(2);
    expect(delta(before, after, REQUESTS, { route: 'manifest', method: 'PUT', status: '201' })).toBe(1);
    expect(delta(before, after, 'wharf_http_request_duration_seconds_count', { route: 'manifest', method: 'PUT' })).toBe(1);
    const blobBytes = pushed.config.bytes.length + pushed.layer.bytes.length;
    expect(delta(before, after, 'wharf_http_received_bytes_total', { route: 'upload' })).toBeGreaterThanOrEqual(blobBytes);
    expect(delta(before, after, 'wharf_http_received_bytes_total', { route: 'manifest' })).toBeGreaterThanOrEqual(pushed.manifest.bytes.length);
    expect(sample(after, 'wharf_blobs_stored', { store: 'registry' })).toBe(2);
    expect(sample(after, 'wharf_blob_bytes_stored', { store: 'registry' })).toBe(blobBytes);

    const pull = await fetch(`${reg.url}/v2/alice/app/blobs/${pushed.layer.digest}`);
    expect(pull.status).toBe(200);
    await pull.arrayBuffer();
    const afterPull = await scrape(reg.url);
    expect(delta(after, afterPull, REQUESTS, { route: 'blob', method: 'GET', status: '200' })).toBe(1);
    expect(delta(after, afterPull, 'wharf_http_sent_bytes_total', { route: 'blob' })).toBeGreaterThanOrEqual(pushed.layer.bytes.length);
  });

  test('an open upload session counts as an upload in progress until it is cancelled', async () => {
    const start = await fetch(`${reg.url}/v2/alice/up/blobs/uploads/`, { method: 'POST' });
    expect(start.status).toBe(202);
    expect(sample(await scrape(reg.url), 'wharf_uploads_in_progress')).toBe(1);
    const cancel = await fetch(new URL(start.headers.get('location')!, reg.url), { method: 'DELETE' });
    expect(cancel.status).toBe(204);
    expect(sample(await scrape(reg.url), 'wharf_uploads_in_progress')).toBe(0);
  });

  test('a proxy pull counts misses, upstream requests and fills; the second pull counts hits and bytes saved', async () => {
    const image = await pushImage(up.url, 'lib/app', '1');
    const base = `${reg.url}/v2/proxy/up/lib/app`;
    const before = await scrape(reg.url);
    const upBefore = await scrape(up.url);

    expect((await fetch(`${base}/manifests/1`)).status).toBe(200);
    for (const b of [image.config, image.layer]) {
      const res = await fetch(`${base}/blobs/${b.digest}`);
      expect(res.status).toBe(200);
      expect(Buffer.from(await res.arrayBuffer()).equals(b.bytes)).toBe(true);
    }
    await eventually(async () => sample(await scrape(reg.url), 'wharf_blobs_stored', { store: 'proxy' }) === 2, 'the proxy to index both blobs');
    const first = await scrape(reg.url);
    expect(delta(before, first, 'wharf_proxy_cache_misses_total', { upstream: 'up', kind: 'manifest' })).toBe(1);
    expect(delta(before, first, 'wharf_proxy_cache_misses_total', { upstream: 'up', kind: 'blob' })).toBe(2);
    expect(delta(before, first, 'wharf_proxy_cache_hits_total', { upstream: 'up', kind: 'blob' })).toBe(0);
    expect(delta(before, first, 'wharf_proxy_fills_total')).toBe(2);
    expect(sample(first, 'wharf_proxy_fills_in_flight')).toBe(0);
    // Every block the fills took is back once they are done.
    expect(sample(first, 'wharf_proxy_fill_memory_bytes')).toBe(0);
    expect(sample(first, 'wharf_blob_bytes_stored', { store: 'proxy' })).toBe(image.config.bytes.length + image.layer.bytes.length);
    // What the proxy says it sent upstream is what the upstream says it answered.
    const upFirst = await scrape(up.url);
    const upstream200 = delta(before, first, 'wharf_proxy_upstream_requests_total', { upstream: 'up', status: '200' });
    expect(upstream200).toBeGreaterThanOrEqual(3);
    const answeredByUpstream =
      delta(upBefore, upFirst, REQUESTS, { route: 'manifest', method: 'GET', status: '200' }) +
      delta(upBefore, upFirst, REQUESTS, { route: 'manifest', method: 'HEAD', status: '200' }) +
      delta(upBefore, upFirst, REQUESTS, { route: 'blob', method: 'GET', status: '200' });
    expect(upstream200).toBe(answeredByUpstream);

    // Again: everything from the cache, nothing upstream.
    expect((await fetch(`${base}/manifests/1`)).status).toBe(200);
    const again = await fetch(`${base}/blobs/${image.layer.digest}`);
    expect(Buffer.from(await again.arrayBuffer()).equals(image.layer.bytes)).toBe(true);
    const second = await scrape(reg.url);
    expect(delta(first, second, 'wharf_proxy_cache_hits_total', { upstream: 'up', kind: 'manifest' })).toBe(1);
    expect(delta(first, second, 'wharf_proxy_cache_hits_total', { upstream: 'up', kind: 'blob' })).toBe(1);
    expect(delta(first, second, 'wharf_proxy_cache_misses_total', { upstream: 'up', kind: 'blob' })).toBe(0);
    expect(delta(first, second, 'wharf_proxy_bytes_saved_total', { upstream: 'up' })).toBe(image.layer.bytes.length);
    expect(delta(first, second, 'wharf_proxy_upstream_requests_total', { upstream: 'up', status: '200' })).toBe(0);
    expect(delta(first, second, 'wharf_proxy_fills_total')).toBe(0);

    // A purge (loopback: an administrator's endpoint with auth off) is counted by reason.
    expect((await fetch(`${reg.url}/admin/proxy/cache/up/lib/app`, { method: 'DELETE' })).status).toBe(200);
    const purged = await scrape(reg.url);
    expect(delta(second, purged, 'wharf_proxy_cache_evicted_blobs_total', { reason: 'purge' })).toBe(2);
    expect(delta(second, purged, 'wharf_proxy_cache_evicted_bytes_total', { reason: 'purge' })).toBe(image.config.bytes.length + image.layer.bytes.length);
  });

  test('an upstream that answers 503 moves upstream requests by status and stale responses; RateLimit-Remaining is exported', async () => {
    await pushImage(up.url, 'lib/flaky', '1');
    await pushImage(up.url, 'lib/flaky', '2');
    // Between the proxy and the upstream: adds RateLimit-Remaining, answers 503 while `failing`, nothing while `stalled`.
    let failing = false;
    let stalled = false;
    const front: Server = createServer((req, res) => {
      if (stalled) return;
      if (failing) {
        res.writeHead(503, { 'Content-Length': '0' }).end();
        return;
      }
      const out = httpRequest(new URL(req.url ?? '/', up.url), { method: req.method, headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, { ...answer.headers, 'ratelimit-remaining': '42;w=21600' });
        answer.pipe(res);
      });
      out.on('error', () => res.destroy());
      req.pipe(out);
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
    const flaky = await startRegistry({
      settings: { proxy: { manifest_ttl: '0s', retries: 0, first_byte_timeout: '1500ms', upstreams: { flaky: { url: `http://127.0.0.1:${(front.address() as AddressInfo).port}` } } } },
    });
    try {
      const tag = `${flaky.url}/v2/proxy/flaky/lib/flaky/manifests/1`;
      expect((await fetch(tag)).status).toBe(200);
      const first = await scrape(flaky.url);
      expect(sample(first, 'wharf_proxy_upstream_rate_limit_remaining', { upstream: 'flaky' })).toBe(42);
      expect(sample(first, 'wharf_proxy_stale_served_total', { upstream: 'flaky' })).toBe(0);
      failing = true;
      const stale = await fetch(tag);
      expect(stale.status).toBe(200);
      expect(stale.headers.get('warning')).toMatch(/^299 /);
      const second = await scrape(flaky.url);
      expect(sample(second, 'wharf_proxy_stale_served_total', { upstream: 'flaky' })).toBe(1);
      expect(sample(second, 'wharf_proxy_upstream_requests_total', { upstream: 'flaky', status: '503' })).toBe(1);
      expect(sample(second, 'wharf_proxy_cache_hits_total', { upstream: 'flaky', kind: 'manifest' })).toBe(1);
      // A 503 is an answer; no answer at all is what marks the upstream down, until it answers again.
      expect(sample(second, 'wharf_proxy_upstream_down', { upstream: 'flaky' })).toBe(0);
      stalled = true;
      expect((await fetch(`${flaky.url}/v2/proxy/flaky/lib/flaky/manifests/2`)).status).toBe(504);
      expect(sample(await scrape(flaky.url), 'wharf_proxy_upstream_down', { upstream: 'flaky' })).toBe(1);
      stalled = false;
      failing = false;
      expect((await fetch(`${flaky.url}/v2/proxy/flaky/lib/flaky/manifests/2`)).status).toBe(200);
      expect(sample(await scrape(flaky.url), 'wharf_proxy_upstream_down', { upstream: 'flaky' })).toBe(0);
    } finally {
      front.closeAllConnections();
      await flaky.close();
      await new Promise((r) => front.close(r));
    }
  });

  test('route labels come from a small fixed set, never the raw path', async () => {
    await fetch(`${reg.url}/v2/some/random/path/nobody/knows`);
    await fetch(`${reg.url}/favicon.ico`);
    const samples = await scrape(reg.url);
    const routes = labelValues(samples, REQUESTS, 'route');
    expect(routes.size).toBeGreaterThan(3);
    for (const r of routes) expect(ROUTE_LABELS).toContain(r);
    expect(sample(samples, REQUESTS, { route: 'other', method: 'GET', status: '404' })).toBeGreaterThanOrEqual(2);
  });

  test('[metrics] enabled = false: no /metrics', async () => {
    const off = await startRegistry({ settings: { metrics: { enabled: false } } });
    try {
      const res = await fetch(`${off.url}/metrics`);
      expect(res.status).toBe(404);
    } finally {
      await off.close();
    }
  });
});

describe('/metrics access', () => {
  const token = 'scrape-token-0123456789abcdef';

  test('loopback clients need no token', () => {
    expect(metricsAccess(true, undefined, { enabled: true })).toBe('allowed');
    expect(metricsAccess(true, undefined, { enabled: true, token })).toBe('allowed');
  });

  test('other clients are refused without a configured token', () => {
    expect(metricsAccess(false, `Bearer ${token}`, { enabled: true })).toBe('denied');
  });

  test('other clients need the configured bearer token', () => {
    expect(metricsAccess(false, `Bearer ${token}`, { enabled: true, token })).toBe('allowed');
    expect(metricsAccess(false, `bearer ${token}`, { enabled: true, token })).toBe('allowed');
    expect(metricsAccess(false, undefined, { enabled: true, token })).toBe('unauthorized');
    expect(metricsAccess(false, `Bearer ${token}x`, { enabled: true, token })).toBe('unauthorized');
    expect(metricsAccess(false, `Basic ${Buffer.from(`x:${token}`).toString('base64')}`, { enabled: true, token })).toBe('unauthorized');
  });
});
