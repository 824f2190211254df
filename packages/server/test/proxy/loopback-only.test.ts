import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { networkInterfaces } from 'node:os';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** An IPv4 address of this machine that is not loopback: requests to it arrive from a non-loopback peer. */
function externalAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

describe('the proxy serves only loopback clients unless anonymous = true', () => {
  const address = externalAddress();
  let up: TestRegistry;
  let closed: TestRegistry;
  let open: TestRegistry;
  let digest: string;
  const via = (reg: TestRegistry, host: string) => `http://${host}:${reg.port}`;

  beforeAll(async () => {
    if (!address) throw new Error('this test needs a non-loopback IPv4 interface to reach the registry from');
    up = await startRegistry();
    digest = (await pushImage(up.url, 'alice/app', '1')).manifest.digest;
    const proxy = { retries: 0, default_upstream: 'up', upstreams: { up: { url: up.url } } };
    closed = await startRegistry({ settings: { listen: '0.0.0.0:0', proxy } });
    open = await startRegistry({ settings: { listen: '0.0.0.0:0', proxy: { ...proxy, anonymous: true } } });
    await pushImage(closed.url, 'bob/local', '1');
  });
  afterAll(async () => {
    await open?.close();
    await closed?.close();
    await up?.close();
  });

  test('a loopback client may use the proxy', async () => {
    const res = await fetch(`${via(closed, '127.0.0.1')}/v2/proxy/up/alice/app/manifests/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(digest);
  });

  test('a non-loopback client gets 403 DENIED for proxy names, ns= and default_upstream reads', async () => {
    for (const path of ['/v2/proxy/up/alice/app/manifests/1', '/v2/alice/app/manifests/1?ns=up', '/v2/alice/app/manifests/1']) {
      const res = await fetch(`${via(closed, address!)}${path}`);
      expect([path, res.status]).toEqual([path, 403]);
      const body = (await res.json()) as { errors: { code: string; message: string }[] };
      expect(body.errors[0]!.code).toBe('DENIED');
      expect(body.errors[0]!.message).toMatch(/anonymous = true/);
    }
  });

  test('a non-loopback client still reaches local repositories', async () => {
    expect((await fetch(`${via(closed, address!)}/v2/bob/local/manifests/1`)).status).toBe(200);
  });

  test('with anonymous = true, a non-loopback client may use the proxy', async () => {
    const res = await fetch(`${via(open, address!)}/v2/proxy/up/alice/app/manifests/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(digest);
  });
});
