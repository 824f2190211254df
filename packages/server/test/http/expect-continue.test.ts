import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { connect, type Socket } from 'node:net';
import { basic, bcryptHash, startAuthRegistry } from '../auth/helpers.js';
import { sha256 } from '../helpers/oci.js';
import type { TestRegistry } from '../helpers/start-registry.js';

/**
 * `Expect: 100-continue` (curl above 1 MiB, Go clients with ExpectContinueTimeout): the body goes out
 * only after `100 Continue`, and the 100 only once the request passed authentication and routing. A
 * refused push never has its body sent.
 */

/** Sends `head` on a new connection and collects what comes back; `body` is sent on a 100 Continue. */
function exchange(url: string, head: string, body: Buffer): Promise<{ text: string; bodySent: boolean }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket: Socket = connect({ host: hostname, port: Number(port) });
    let text = '';
    let bodySent = false;
    socket.setTimeout(10_000, () => socket.destroy(new Error(`no complete answer within 10 s: ${JSON.stringify(text)}`)));
    socket.on('error', reject);
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
      if (!bodySent && /^HTTP\/1\.1 100 Continue\r\n\r\n/.test(text)) {
        bodySent = true;
        socket.write(body);
      }
      // The final answer is complete once its Content-Length worth of body arrived.
      const final = text.replace(/^HTTP\/1\.1 100 Continue\r\n\r\n/, '');
      const end = final.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: *(\d+)/i.exec(final);
      if (end >= 0 && (!length || final.length - end - 4 >= Number(length[1]))) {
        socket.end();
        resolve({ text, bodySent });
      }
    });
    socket.on('end', () => resolve({ text, bodySent }));
    socket.write(head);
  });
}

describe('Expect: 100-continue', () => {
  let reg: TestRegistry;
  const password = 'alice-continue-1';
  const body = Buffer.alloc(64 * 1024, 'x');
  const digest = sha256(body);

  beforeAll(async () => {
    reg = await startAuthRegistry({ authSettings: { users: [{ name: 'alice', password_hash: bcryptHash(password) }] } });
  });
  afterAll(async () => {
    await reg?.close();
  });

  const put = (auth?: string) =>
    [
      `POST /v2/alice/app/blobs/uploads/?digest=${digest} HTTP/1.1`,
      `Host: ${new URL(reg.url).host}`,
      ...(auth ? [`Authorization: ${auth}`] : []),
      'Content-Type: application/octet-stream',
      `Content-Length: ${body.length}`,
      'Expect: 100-continue',
      '',
      '',
    ].join('\r\n');

  test('a push without credentials is refused before its body is asked for, on a connection then closed', async () => {
    const { text, bodySent } = await exchange(reg.url, put(), body);
    expect(text).toMatch(/^HTTP\/1\.1 401 /);
    expect(bodySent).toBe(false);
    expect(text).toMatch(/\r\nconnection: close\r\n/i);
    expect(text).toContain('"UNAUTHORIZED"');
  });

  test('a push outside the pusher\'s namespace is refused before its body is asked for', async () => {
    const head = put(basic('alice', password)).replace('/v2/alice/app/', '/v2/bob/app/');
    const { text, bodySent } = await exchange(reg.url, head, body);
    expect(text).toMatch(/^HTTP\/1\.1 (401|403) /);
    expect(bodySent).toBe(false);
  });

  test('a client that sends its body without waiting for the 100 gets the refusal whole, on a connection kept open', async () => {
    // RFC 9110 lets a client send the body without waiting. Its bytes are there when the refusal
    // goes out: the 100 goes first, and the rest of the body is read and dropped, not cut.
    const { hostname, port } = new URL(reg.url);
    const socket = connect({ host: hostname, port: Number(port) });
    let text = '';
    let writeError: Error | undefined;
    socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
    socket.on('error', (err) => (writeError = err));
    await new Promise<void>((r) => socket.once('connect', () => r()));
    const big = Buffer.alloc(4 * 1024 * 1024, 'y');
    const head = put()
      .replace(`Content-Length: ${body.length}`, `Content-Length: ${big.length}`)
      .replace(`?digest=${digest}`, `?digest=${sha256(big)}`);
    socket.write(head);
    socket.write(big.subarray(0, 64 * 1024));
    await new Promise((r) => setTimeout(r, 200));
    await new Promise<void>((r) => socket.write(big.subarray(64 * 1024), () => r()));
    await new Promise((r) => setTimeout(r, 200));
    socket.destroy();
    expect(writeError).toBeUndefined();
    expect(text).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 401 /);
    expect(text).not.toMatch(/\r\nconnection: close\r\n/i);
  });

  test('an allowed push gets 100 Continue, sends its body, and the blob is stored', async () => {
    const { text, bodySent } = await exchange(reg.url, put(basic('alice', password)), body);
    expect(bodySent).toBe(true);
    expect(text).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 201 /);
    const head = await fetch(`${reg.url}/v2/alice/app/blobs/${digest}`, { method: 'HEAD', headers: { Authorization: basic('alice', password) } });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(body.length));
  });
  test('any other Expect: 417 with the OCI error body and the usual headers, not node\'s bare answer', async () => {
    const head = put(basic('alice', password)).replace('Expect: 100-continue', 'Expect: something-else');
    const { text, bodySent } = await exchange(reg.url, head, body);
    expect(text).toMatch(/^HTTP\/1\.1 417 /);
    expect(bodySent).toBe(false);
    expect(text).toMatch(/\r\ndocker-distribution-api-version: registry\/2\.0\r\n/i);
    expect(text).toMatch(/\r\nx-request-id: /i);
    expect(text).toContain('{"errors":[{"code":"EXPECTATION_FAILED","message":"Expect: something-else is not supported; only 100-continue is"');
  });
});
