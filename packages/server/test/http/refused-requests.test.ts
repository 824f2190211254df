import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { captureLog } from '../auth/helpers.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** Writes `request` raw and resolves with everything the server sent before it closed. */
function exchange(port: number, request: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => resolve(reply));
    socket.write(request);
  });
}

/** The status line and the OCI error of a raw reply. */
/** The status line up to its standard reason phrase, the error code, the API version; and whether the reason phrase goes on with the body's message (what containerd prints). */
function parse(reply: string): { status: string; code: string | undefined; version: string | undefined; messageInStatusLine: boolean } {
  const [head = '', body = ''] = reply.split('\r\n\r\n');
  const errors = (JSON.parse(body) as { errors: { code: string; message: string }[] }).errors;
  const line = head.split('\r\n')[0]!;
  const colon = line.indexOf(': ');
  return {
    status: colon < 0 ? line : line.slice(0, colon),
    code: errors[0]?.code,
    version: /^docker-distribution-api-version: (.*)$/im.exec(head)?.[1],
    messageInStatusLine: colon >= 0 && line.slice(colon + 2) === errors[0]?.message,
  };
}

/**
 * Requests node's HTTP parser refuses before the app runs: node's own statuses, with the OCI error
 * body and the API version header, as every other answer has (node alone sends a bare status line).
 */
describe('requests refused before the app sees them', () => {
  let reg: TestRegistry;
  const log = captureLog();
  beforeAll(async () => {
    reg = await startRegistry({ logger: log.logger });
  });
  afterAll(async () => {
    await reg?.close();
  });

  test.each([
    ['a head over the header size limit', `GET /v2/${'a'.repeat(64 * 1024)}/tags/list HTTP/1.1\r\nHost: x\r\n\r\n`, 'HTTP/1.1 431 Request Header Fields Too Large', 'TOO_LARGE'],
    ['an unknown method', 'FOO /v2/ HTTP/1.1\r\nHost: x\r\n\r\n', 'HTTP/1.1 501 Not Implemented', 'UNSUPPORTED'],
    ['a Content-Length that is no number', 'PUT /v2/alice/app/manifests/1 HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n', 'HTTP/1.1 400 Bad Request', 'UNSUPPORTED'],
    ['two Content-Lengths that disagree', 'PUT /v2/alice/app/manifests/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello', 'HTTP/1.1 400 Bad Request', 'UNSUPPORTED'],
    ['CONNECT', 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', 'HTTP/1.1 405 Method Not Allowed', 'UNSUPPORTED'],
    // What node's parser lets through and RFC 9112 refuses (http/framing-guard.ts).
    ['an HTTP/1.1 request without Host', 'GET /v2/ HTTP/1.1\r\n\r\n', 'HTTP/1.1 400 Bad Request', 'UNSUPPORTED'],
    ['two Host lines', 'GET /v2/ HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n', 'HTTP/1.1 400 Bad Request', 'UNSUPPORTED'],
    ['a transfer coding other than chunked', 'PUT /v2/alice/app/manifests/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n', 'HTTP/1.1 501 Not Implemented', 'UNSUPPORTED'],
    ['Transfer-Encoding in HTTP/1.0', 'PUT /v2/alice/app/manifests/1 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n', 'HTTP/1.1 400 Bad Request', 'UNSUPPORTED'],
    ['HTTP/2.0 on the request line', 'GET /v2/ HTTP/2.0\r\nHost: x\r\n\r\n', 'HTTP/1.1 505 HTTP Version Not Supported', 'UNSUPPORTED'],
  ])('%s: the OCI error body with the status', async (_what, request, status, code) => {
    expect(parse(await exchange(reg.port, request))).toEqual({ status, code, version: 'registry/2.0', messageInStatusLine: true });
  });

  test.each([
    ['a byte no request target may hold', Buffer.from('HEAD /v2/\xe9 HTTP/1.1\r\nHost: x\r\n\r\n', 'latin1'), 'HTTP/1.1 400 Bad Request'],
    ['a Content-Length that is no number', 'HEAD /v2/a/b/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n', 'HTTP/1.1 400 Bad Request'],
    ['a head over the header size limit', `HEAD /v2/ HTTP/1.1\r\nHost: x\r\nX: ${'a'.repeat(40_000)}\r\n\r\n`, 'HTTP/1.1 431 Request Header Fields Too Large'],
  ])('a HEAD refused for %s: the status and headers, no body (RFC 9110 9.3.2)', async (_what, request, status) => {
    const [head = '', ...rest] = (await exchange(reg.port, request)).split('\r\n\r\n');
    expect(head.split('\r\n')[0]).toMatch(new RegExp(`^${status}: `));
    expect(head).toMatch(/^docker-distribution-api-version: registry\/2\.0$/im);
    expect(rest.join('\r\n\r\n')).toBe('');
  });

  test('a framing refusal is logged as any answer is, with why', async () => {
    await exchange(reg.port, 'GET /v2/framing-logged HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n');
    await new Promise((r) => setTimeout(r, 50));
    const line = log
      .text()
      .split('\n')
      .filter((l) => l.includes('"msg":"request"') && l.includes('framing-logged'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)[0];
    expect(line).toMatchObject({ status: 400, error: 'UNSUPPORTED', reason: 'the request has more than one Host header', client: '127.0.0.1' });
  });

  test('refusals of what a client sent (501, 505) are logged as 4xx answers are, not as server errors', async () => {
    await exchange(reg.port, 'GET /v2/not-mine-505 HTTP/2.0\r\nHost: x\r\n\r\n');
    await exchange(reg.port, 'PUT /v2/alice/not-mine-501/manifests/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n');
    await new Promise((r) => setTimeout(r, 50));
    const lines = log
      .text()
      .split('\n')
      .filter((l) => l.includes('"msg":"request"') && l.includes('not-mine-'))
      .map((l) => JSON.parse(l) as { status: number; level: number });
    expect(lines.map((l) => l.status).sort()).toEqual([501, 505]);
    // pino's info; error (50) before.
    expect(lines.map((l) => l.level)).toEqual([30, 30]);
  });

  test('a chunked body broken mid-request (a route reading it): the connection is closed, and nothing throws', async () => {
    const created = await fetch(`${reg.url}/v2/alice/app/blobs/uploads/`, { method: 'POST' });
    const path = created.headers.get('location')!;
    const reply = await exchange(reg.port, `PATCH ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n`);
    // Node's answer (its route may not write after it), or nothing: never a 2xx.
    expect(reply).not.toMatch(/^HTTP\/1\.1 2/);
    await new Promise((r) => setTimeout(r, 300));
  });

  test('a GET pipelined behind a blob POST runs after it: it finds the blob the POST stored (RFC 9112 9.3.2)', async () => {
    for (let i = 0; i < 3; i++) {
      const data = randomBytes(64);
      const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
      const post = Buffer.concat([Buffer.from(`POST /v2/alice/pipelined/blobs/uploads/?digest=${digest} HTTP/1.1\r\nHost: x\r\nContent-Length: ${data.length}\r\n\r\n`), data]);
      const reply = await exchange(reg.port, Buffer.concat([post, Buffer.from(`GET /v2/alice/pipelined/blobs/${digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)]));
      expect(reply.match(/^HTTP\/1\.1 \d+/gm)).toEqual(['HTTP/1.1 201', 'HTTP/1.1 200']);
    }
    // Safe requests pipelined together are still answered, in order.
    const gets = 'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nHEAD /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/alice/nothing/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
    // (GET /v2/'s body, {}, has no line end: the next status line follows it on the same line.)
    expect((await exchange(reg.port, gets)).match(/HTTP\/1\.1 \d+/g)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 200', 'HTTP/1.1 404']);
  });

  test('the server goes on serving', async () => {
    expect(await exchange(reg.port, 'GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).toMatch(/^HTTP\/1\.1 200 /);
    // HTTP/1.0 needs no Host; chunked alone, in any case, is fine.
    expect(await exchange(reg.port, 'GET /v2/ HTTP/1.0\r\n\r\n')).toMatch(/^HTTP\/1\.1 200 /);
    const created = await fetch(`${reg.url}/v2/alice/app/blobs/uploads/`, { method: 'POST' });
    const reply = await exchange(reg.port, `PATCH ${created.headers.get('location')!} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n`);
    expect(reply).toMatch(/^HTTP\/1\.1 202 /);
    expect(reply).toMatch(/^range: 0-3$/im);
  });
});
