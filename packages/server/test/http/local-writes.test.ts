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
    for (const forwarded of [{ 'X-Forwarded-For': '203.0.113.9' }, { Via: '1.1 nginx' }, { 'CF-Connecting-IP': '203.0.113.9' }]) {
      // Before: 202, an anonymous push from whoever the proxy forwards for.
      const refused = await expectOciError(await startUpload(reg.url, forwarded), 403, 'DENIED');
      expect(refused.message).toContain('allow_anonymous_push');
      const remove = await fetch(`${reg.url}/v2/team/app/manifests/sha256:${'0'.repeat(64)}`, { method: 'DELETE', headers: forwarded });
      await expectOciError(remove, 403, 'DENIED');
      expect((await fetch(`${reg.url}/v2/`, { headers: forwarded })).status).toBe(200);
      expect((await fetch(`${reg.url}/v2/team/app/manifests/1`, { headers: forwarded })).status).toBe(404);
    }
  });

  test('allow_anonymous_push = true is an open registry on purpose: forwarded writes are taken', async () => {
    reg = await startRegistry({ settings: { auth: { enabled: false, allow_anonymous_push: true } } });
    expect((await startUpload(reg.url, { 'X-Forwarded-For': '203.0.113.9' })).status).toBe(202);
  });
});
