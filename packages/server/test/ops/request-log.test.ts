import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { dirname, join } from 'node:path';
import { Secrets, basic, bcryptHash, captureLog, startAuthRegistry, type LogCapture } from '../auth/helpers.js';
import { run } from '../helpers/clients.js';
import { blob, imageManifest } from '../helpers/oci.js';
import type { TestRegistry } from '../helpers/start-registry.js';
import { WHARF_CLI } from '../helpers/wharf-process.js';

/**
 * The request log: one JSON line per request with method, route, repository, status, bytes, duration
 * and request id; and never a credential, whatever the client sends (Basic, bearer tokens, token
 * requests, passwords in forms and query strings).
 */

interface RequestLine {
  msg: string;
  reqId: string;
  method: string;
  route: string;
  repository?: string;
  path: string;
  status: number;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
}

describe('request log', () => {
  let reg: TestRegistry;
  let log: LogCapture;
  const secrets = new Secrets();
  const password = 'alice-log-secret-1';

  beforeAll(async () => {
    log = captureLog();
    reg = await startAuthRegistry({
      logger: log.logger,
      authSettings: { users: [{ name: 'alice', password_hash: bcryptHash(password) }] },
    });
    secrets.addBasic('alice', password);
  });

  afterAll(async () => {
    await reg?.close();
  });

  function requestLines(): RequestLine[] {
    return log
      .text()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as RequestLine)
      .filter((l) => l.msg === 'request');
  }

  test('a push and pull with Basic, bearer tokens and the token endpoint: every request logged with its fields, no secret', async () => {
    const auth = { Authorization: basic('alice', password) };
    // The token flow, GET with Basic and POST with a password form.
    const got = await fetch(`${reg.url}/auth/token?service=wharf&scope=repository:alice/app:pull,push`, { headers: auth });
    expect(got.status).toBe(200);
    const token = ((await got.json()) as { token: string }).token;
    secrets.add('bearer token', token);
    const form = new URLSearchParams({ grant_type: 'password', username: 'alice', password, client_id: 'test', scope: 'repository:alice/app:pull', access_type: 'offline' });
    const posted = await fetch(`${reg.url}/auth/token`, { method: 'POST', body: form });
    expect(posted.status).toBe(200);
    const reply = (await posted.json()) as { access_token: string; refresh_token: string };
    secrets.add('oauth token', reply.access_token, reply.refresh_token);

    const bearer = { Authorization: `Bearer ${token}` };
    const config = blob('{"architecture":"amd64","os":"linux"}');
    const layer = blob('a layer for the log test');
    for (const b of [config, layer]) {
      const res = await fetch(`${reg.url}/v2/alice/app/blobs/uploads/?digest=${b.digest}`, { method: 'POST', headers: { ...bearer, 'Content-Type': 'application/octet-stream' }, body: b.bytes });
      expect(res.status).toBe(201);
    }
    const manifest = imageManifest(config, [layer]);
    const put = await fetch(`${reg.url}/v2/alice/app/manifests/1`, { method: 'PUT', headers: { ...bearer, 'Content-Type': manifest.mediaType }, body: manifest.bytes });
    expect(put.status).toBe(201);
    const pulled = await fetch(`${reg.url}/v2/alice/app/blobs/${layer.digest}`, { headers: auth, });
    expect(pulled.status).toBe(200);
    await pulled.arrayBuffer();
    // A wrong password, and a password in a query string (never logged: the log has the path only).
    expect((await fetch(`${reg.url}/v2/`, { headers: { Authorization: basic('alice', 'not-the-password-9') } })).status).toBe(401);
    secrets.addBasic('alice', 'not-the-password-9');
    const leaky = 'query-string-secret-77';
    secrets.add('query secret', leaky);
    await fetch(`${reg.url}/v2/alice/app/tags/list?password=${leaky}`, { headers: auth });

    const lines = requestLines();
    const uploads = lines.filter((l) => l.route === 'upload' && l.method === 'POST');
    expect(uploads).toHaveLength(2);
    for (const l of uploads) {
      expect(l).toMatchObject({ repository: 'alice/app', path: '/v2/alice/app/blobs/uploads/', status: 201 });
      expect(l.bytesIn).toBeGreaterThan(20);
      expect(l.bytesOut).toBeGreaterThan(0);
      expect(typeof l.durationMs).toBe('number');
      expect(l.reqId).toMatch(/^[0-9a-f-]{36}$/);
    }
    const blobGet = lines.find((l) => l.route === 'blob' && l.method === 'GET');
    expect(blobGet).toMatchObject({ repository: 'alice/app', status: 200 });
    expect(blobGet!.bytesOut).toBeGreaterThan(layer.bytes.length);
    expect(lines.find((l) => l.route === 'manifest' && l.method === 'PUT')).toMatchObject({ repository: 'alice/app', status: 201 });
    expect(lines.filter((l) => l.route === 'token')).toHaveLength(2);
    expect(lines.find((l) => l.route === 'tags')).toMatchObject({ path: '/v2/alice/app/tags/list' });
    expect(lines.find((l) => l.route === 'base' && l.status === 401)).toBeDefined();

    expect(secrets.size).toBeGreaterThanOrEqual(6);
    secrets.assertNotIn(log.text());
  });

  test('X-Request-Id: a sane one is kept and returned, anything else is replaced by a generated one', async () => {
    const given = await fetch(`${reg.url}/health`, { headers: { 'X-Request-Id': 'trace-abc.123' } });
    expect(given.headers.get('x-request-id')).toBe('trace-abc.123');
    const odd = await fetch(`${reg.url}/health`, { headers: { 'X-Request-Id': 'has spaces and "quotes"' } });
    expect(odd.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    const kept = requestLines().find((l) => l.reqId === 'trace-abc.123');
    expect(kept).toMatchObject({ route: 'health', status: 200 });
  });
});

describe('log format', () => {
  const logger = join(dirname(WHARF_CLI), 'logger.js');
  const script = (format: string) =>
    `import { createLogger } from ${JSON.stringify(logger)}; createLogger({ level: 'info', format: '${format}' }).info({ route: 'blob', status: 200 }, 'request');`;

  test('"pretty" writes pino-pretty lines, not JSON', async () => {
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script('pretty')]);
    expect(stdout.trim().startsWith('{')).toBe(false);
    expect(stdout).toMatch(/INFO.*request/);
    expect(stdout).toContain('"route":"blob"');
  });

  test('"auto" writes JSON lines when standard output is not a terminal', async () => {
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script('auto')]);
    expect(JSON.parse(stdout.trim())).toMatchObject({ level: 30, msg: 'request', route: 'blob', status: 200 });
  });
});
