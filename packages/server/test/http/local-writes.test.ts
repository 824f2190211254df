import { afterEach, describe, expect, test } from '@jest/globals';
import { expectOciError } from '../helpers/http.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/**
 * `[auth] enabled = false` starts only on a loopback address (or with allow_anonymous_push): a
 * registry for this machine. A reverse proxy or tunnel on the same host connects from loopback too.
 */
describe('auth off on loopback: writes from this machine only', () => {
  let reg: TestRegistry | undefined;
  afterEach(async () => {
    await reg?.close();
    reg = undefined;
  });

  const startUpload = (url: string, headers: Record<string, string> = {}) =>
    fetch(`${url}/v2/team/app/blobs/uploads/`, { method: 'POST', headers: { 'Content-Length': '0', ...headers } });

  test('a write a proxy or tunnel forwarded is refused with 403 DENIED saying why; its reads, and local writes, are served', async () => {
    reg = await startRegistry();
    expect((await startUpload(reg.url)).status).toBe(202);
    const forwardedBy: Record<string, string>[] = [{ 'X-Forwarded-For': '203.0.113.9' }, { Via: '1.1 nginx' }, { 'CF-Connecting-IP': '203.0.113.9' }];
    for (const forwarded of forwardedBy) {
      // Before: 202, an anonymous push from whoever the proxy forwards for.
      const refused = await expectOciError(await startUpload(reg.url, forwarded), 403, 'DENIED');
      expect(refused.message).toContain('allow_anonymous_push');
      const zero = `sha256:${'0'.repeat(64)}`;
      for (const [method, path] of [
        ['DELETE', `manifests/${zero}`],
        ['DELETE', `blobs/${zero}`],
        ['PUT', 'manifests/1'],
        ['PATCH', 'blobs/uploads/no-such-session'],
      ] as const) {
        await expectOciError(await fetch(`${reg.url}/v2/team/app/${path}`, { method, headers: { ...forwarded, 'Content-Length': '0' } }), 403, 'DENIED');
      }
      expect((await fetch(`${reg.url}/v2/`, { headers: forwarded })).status).toBe(200);
      expect((await fetch(`${reg.url}/v2/team/app/manifests/1`, { headers: forwarded })).status).toBe(404);
    }
  });

  test('from a trusted_proxies peer, every write is a forwarded one, with or without a header', async () => {
    reg = await startRegistry({ settings: { trusted_proxies: ['127.0.0.1'] } });
    // A trusted proxy that adds no header (stunnel, a plain proxy_pass) forwards for others all the same.
    await expectOciError(await startUpload(reg.url), 403, 'DENIED');
    expect((await fetch(`${reg.url}/v2/`)).status).toBe(200);
  });

  test('with auth on, a forwarded push goes by its credentials as any other', async () => {
    const { startAuthRegistry } = await import('../auth/helpers.js');
    reg = await startAuthRegistry({});
    // The auth middleware answers (401 and a challenge), not this rule's 403.
    const res = await startUpload(reg.url, { 'X-Forwarded-For': '203.0.113.9' });
    await expectOciError(res, 401, 'UNAUTHORIZED');
  });

  test('allow_anonymous_push = true is an open registry on purpose: forwarded writes are taken', async () => {
    reg = await startRegistry({ settings: { auth: { enabled: false, allow_anonymous_push: true } } });
    expect((await startUpload(reg.url, { 'X-Forwarded-For': '203.0.113.9' })).status).toBe(202);
  });
});
