import { afterAll, afterEach, beforeAll, describe, expect, jest, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { AFTER_HEAD_MS, plainRequest, type PlainAnswer } from '../src/plain-http.js';

const FAST = { connect: 1000, firstByte: 300, idle: 300 };

/** A raw TCP server: `respond` writes whatever bytes the test wants, after the request head is in. */
async function rawServer(respond: (socket: Socket, request: string) => unknown): Promise<{ url: URL; server: Server; requests: string[] }> {
  const requests: string[] = [];
  const server = createServer((socket) => {
    let head = '';
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('data', (d: Buffer) => {
      head += d.toString('latin1');
      // Each request head on the connection (a kept-alive one carries several), answered in turn.
      for (let end = head.indexOf('\r\n\r\n'); end >= 0; end = head.indexOf('\r\n\r\n')) {
        const request = head.slice(0, end + 4);
        head = head.slice(end + 4);
        requests.push(request);
        void respond(socket, request);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  servers.push(server);
  return { url: new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/v2/a/blobs/x?y=1`), server, requests };
}

const servers: Server[] = [];
/** Connections the servers accepted: plainRequest keeps some alive, and a server closes only once they are gone. */
const sockets = new Set<Socket>();
afterEach(async () => {
  for (const socket of sockets) socket.destroy();
  sockets.clear();
  for (const s of servers.splice(0)) await new Promise((resolve) => s.close(resolve));
});

/** Reads a body whole; with `recycle`, gives every chunk back once copied (as the fill does once written). */
async function readAll(answer: PlainAnswer, recycle = false): Promise<{ bytes: Buffer; buffers: Set<ArrayBufferLike> }> {
  const copies: Buffer[] = [];
  const buffers = new Set<ArrayBufferLike>();
  for await (const chunk of answer.body as AsyncIterable<Buffer>) {
    buffers.add(chunk.buffer);
    copies.push(Buffer.from(chunk));
    if (recycle) answer.recycle(chunk);
  }
  return { bytes: Buffer.concat(copies), buffers };
}

async function bodyError(body: Readable): Promise<NodeJS.ErrnoException> {
  const err = await (async () => {
    for await (const _ of body as AsyncIterable<Buffer>) void _;
  })().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Error);
  return err as NodeJS.ErrnoException;
}

/** Writes `bytes` a few at a time, so heads, chunk lines and bodies straddle reads. */
async function trickle(socket: Socket, bytes: Buffer, step = 7): Promise<void> {
  for (let i = 0; i < bytes.length; i += step) {
    socket.write(bytes.subarray(i, i + step));
    await sleep(1);
  }
}

describe('plainRequest', () => {
  test('sends one GET with Host and our headers; reads a Content-Length body', async () => {
    const body = randomBytes(3 * 1024 * 1024 + 17);
    const { url, requests } = await rawServer((s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\nDocker-Content-Digest: sha256:abc\r\n\r\n`);
      s.end(body);
    });
    const answer = await plainRequest(url, { 'user-agent': 'wharf-test', authorization: 'Bearer t' }, FAST);
    expect(answer.statusCode).toBe(200);
    expect(answer.headers['docker-content-digest']).toBe('sha256:abc');
    expect((await readAll(answer)).bytes.equals(body)).toBe(true);
    expect(requests[0]).toBe(`GET /v2/a/blobs/x?y=1 HTTP/1.1\r\nHost: ${url.host}\r\nuser-agent: wharf-test\r\nauthorization: Bearer t\r\n\r\n`);
  });

  test('bodyBuffer: a paused reader holds that much, not 1 MiB, whatever it says meanwhile; nothing stalls', async () => {
    // Many fills at once each held a paused MiB (and the slabs it pinned): 80 cold fills, 188 MiB of
    // slabs. Readable asks `_read` only while below its own mark, and once until the next push.
    const body = randomBytes(8 * 1024 * 1024);
    const { url } = await rawServer((s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`);
      s.end(body);
    });
    let limit = 64 * 1024;
    const answer = await plainRequest(url, {}, { ...FAST, idle: 2000 }, undefined, { bodyBuffer: () => limit });
    const copies: Buffer[] = [];
    let most = 0;
    await new Promise<void>((resolve, reject) => {
      answer.body.on('error', reject);
      answer.body.on('end', resolve);
      answer.body.on('data', (chunk: Buffer) => {
        copies.push(Buffer.from(chunk));
        answer.recycle(chunk);
        // A reader that stops now and then (a fill waiting for the disk), while the limit changes.
        if (copies.length % 8 === 0) {
          answer.body.pause();
          setTimeout(() => {
            most = Math.max(most, answer.body.readableLength);
            limit = limit === 64 * 1024 ? 256 * 1024 : 64 * 1024;
            answer.body.resume();
          }, 20);
        }
      });
    });
    expect(Buffer.concat(copies).equals(body)).toBe(true);
    // The limit, and at most the one socket read that passed it (a slab's room: 512 KiB).
    expect(most).toBeGreaterThan(0);
    expect(most).toBeLessThan(256 * 1024 + 512 * 1024);
  });

  test('bodyBuffer, read by async iteration with pauses: every byte, no stall', async () => {
    const body = randomBytes(4 * 1024 * 1024 + 5);
    const { url } = await rawServer((s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`);
      s.end(body);
    });
    const answer = await plainRequest(url, {}, { ...FAST, idle: 2000 }, undefined, { bodyBuffer: () => 16 * 1024 });
    const copies: Buffer[] = [];
    for await (const chunk of answer.body as AsyncIterable<Buffer>) {
      copies.push(Buffer.from(chunk));
      answer.recycle(chunk);
      if (copies.length % 16 === 0) await sleep(5);
    }
    expect(Buffer.concat(copies).equals(body)).toBe(true);
  });

  test('a connection is kept alive and reused for the next GET to the same origin, until it says close', async () => {
    let connections = 0;
    const { url, server } = await rawServer((s, request) => {
      const close = request.includes('last');
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\n${close ? 'Connection: close\r\n' : ''}\r\nok`);
    });
    server.on('connection', () => (connections += 1));
    for (const path of ['/one', '/two', '/last', '/after']) {
      const answer = await plainRequest(new URL(path, url), {}, FAST);
      expect((await readAll(answer)).bytes.toString()).toBe('ok');
    }
    // /one, /two and /last on the first connection; it said close, so /after on a new one.
    expect(connections).toBe(2);
  });

  test('a server\'s Keep-Alive timeout is honoured: 1 s or less, no reuse; longer, reuse', async () => {
    let connections = 0;
    const { url, server } = await rawServer((s, request) => {
      const timeout = request.includes('/short') ? 1 : 30;
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=${timeout}, max=100\r\n\r\nok`);
    });
    server.on('connection', () => (connections += 1));
    for (const path of ['/short', '/short', '/long', '/long']) {
      expect((await readAll(await plainRequest(new URL(path, url), {}, FAST))).bytes.toString()).toBe('ok');
    }
    // Each /short on its own connection; the first /long on a new one, the second reusing it.
    expect(connections).toBe(3);
  });

  test('no reuse after bytes the answer did not announce, nor after a head with both framings (refused)', async () => {
    let connections = 0;
    const { url, server } = await rawServer((s, request) => {
      if (request.includes('both')) s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n');
      else s.write('HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\nJUNK');
    });
    server.on('connection', () => (connections += 1));
    for (let i = 0; i < 2; i++) expect((await readAll(await plainRequest(url, {}, FAST))).bytes.length).toBe(0);
    expect(connections).toBe(2);
    await expect(plainRequest(new URL('/both', url), {}, FAST)).rejects.toMatchObject({ code: 'HPE_UNEXPECTED_CONTENT_LENGTH' });
  });

  test('a kept connection the server closed meanwhile is replaced, and the GET still answers', async () => {
    const servedOn = new WeakSet<Socket>();
    let connections = 0;
    const { url, server } = await rawServer((s) => {
      // A second request on a connection is met with a reset, as from a server that had timed it out.
      if (servedOn.has(s)) return void s.resetAndDestroy();
      servedOn.add(s);
      s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    });
    server.on('connection', () => (connections += 1));
    expect((await readAll(await plainRequest(url, {}, FAST))).bytes.toString()).toBe('ok');
    expect((await readAll(await plainRequest(url, {}, FAST))).bytes.toString()).toBe('ok');
    expect(connections).toBe(2);
  });

  test('a head that straddles reads, and body bytes in the head read', async () => {
    const body = Buffer.from('hello, registry');
    const { url } = await rawServer(async (s) => {
      await trickle(s, Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`), body.subarray(0, 3)]), 5);
      await sleep(5);
      s.end(body.subarray(3));
    });
    const answer = await plainRequest(url, {}, FAST);
    expect((await readAll(answer)).bytes.toString()).toBe('hello, registry');
  });

  test('an interim 100 Continue head is skipped', async () => {
    const { url } = await rawServer((s) => s.end('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
    const answer = await plainRequest(url, {}, FAST);
    expect(answer.statusCode).toBe(200);
    expect((await readAll(answer)).bytes.toString()).toBe('ok');
  });

  test('a chunked body, with extensions and trailers, split at every kind of boundary', async () => {
    const parts = [randomBytes(10), randomBytes(70_000), randomBytes(1)];
    const wire = Buffer.concat([
      Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'),
      ...parts.flatMap((p, i) => [Buffer.from(`${p.length.toString(16)}${i === 1 ? ';ext=1' : ''}\r\n`), p, Buffer.from('\r\n')]),
      Buffer.from('0\r\nX-Trailer: 1\r\n\r\n'),
    ]);
    const { url } = await rawServer(async (s) => {
      await trickle(s, wire.subarray(0, 200), 3);
      s.write(wire.subarray(200, wire.length - 30));
      await trickle(s, wire.subarray(wire.length - 30), 2);
      // The connection stays open: the last chunk ends the body, not the close.
    });
    const answer = await plainRequest(url, {}, FAST);
    expect((await readAll(answer)).bytes.equals(Buffer.concat(parts))).toBe(true);
  });

  test('a body framed by the end of the connection', async () => {
    const { url } = await rawServer((s) => s.end('HTTP/1.1 200 OK\r\n\r\nuntil close'));
    const answer = await plainRequest(url, {}, FAST);
    expect((await readAll(answer)).bytes.toString()).toBe('until close');
  });

  test('204 and a 0 Content-Length have an empty body at once', async () => {
    const { url } = await rawServer((s) => s.write('HTTP/1.1 204 No Content\r\n\r\n'));
    expect((await readAll(await plainRequest(url, {}, FAST))).bytes.length).toBe(0);
    const zero = await rawServer((s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'));
    expect((await readAll(await plainRequest(zero.url, {}, FAST))).bytes.length).toBe(0);
  });

  test('a HEAD\'s connection is lent again once it has stayed quiet a moment, not at once', async () => {
    let connections = 0;
    const { url, server, requests } = await rawServer((s, request) => {
      if (request.startsWith('HEAD')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n');
      else s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    });
    server.on('connection', () => (connections += 1));
    await readAll(await plainRequest(url, {}, FAST, undefined, { method: 'HEAD' }));
    // At once: a new connection (the HEAD's could still get a stray body).
    expect((await readAll(await plainRequest(url, {}, FAST))).bytes.toString()).toBe('ok');
    expect(connections).toBe(2);
    await sleep(120);
    await readAll(await plainRequest(url, {}, FAST, undefined, { method: 'HEAD' }));
    await sleep(120);
    // Later: the HEAD's connection, or the GET's, kept; no third one.
    expect((await readAll(await plainRequest(url, {}, FAST))).bytes.toString()).toBe('ok');
    expect(requests.map((r) => r.split(' ')[0])).toEqual(['HEAD', 'GET', 'HEAD', 'GET']);
    expect(connections).toBe(2);
  });

  test('a request on a connection kept after a HEAD, cut by its caller\'s deadline (AbortSignal.timeout), fails with that deadline', async () => {
    // The deadline's reason is a DOMException, whose code is a number: taken for a string, it threw
    // inside the abort listener and took the process down.
    let heads = 0;
    const { url } = await rawServer((s, request) => {
      if (request.startsWith('HEAD') && ++heads === 1) s.write('HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n');
      // The second HEAD, on the same connection, is never answered.
    });
    await readAll(await plainRequest(url, {}, { ...FAST, firstByte: 5000 }, undefined, { method: 'HEAD' }));
    await sleep(AFTER_HEAD_MS + 100);
    const failed = await plainRequest(url, {}, { ...FAST, firstByte: 5000 }, AbortSignal.timeout(200), { method: 'HEAD' }).catch((e: unknown) => e);
    expect(heads).toBe(2);
    expect(failed).toMatchObject({ name: 'TimeoutError' });
  });

  test('a HEAD body that comes after the connection was lent again costs the next request a new connection, not an error', async () => {
    let connections = 0;
    const { url, server, requests } = await rawServer(async (s, request) => {
      if (request.startsWith('HEAD')) {
        s.write('HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n');
        await sleep(150);
        if (!s.destroyed) s.write('STRAY-BDY');
      } else {
        // Slower than the stray body: it is what the reused connection reads first.
        await sleep(250);
        if (!s.destroyed) s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      }
    });
    server.on('connection', () => (connections += 1));
    await readAll(await plainRequest(url, {}, FAST, undefined, { method: 'HEAD' }));
    await sleep(80);
    // The server answers the GET 250 ms late on purpose: a first-byte timeout near that would fail it on a slow machine.
    expect((await readAll(await plainRequest(url, {}, { ...FAST, firstByte: 5000 }))).bytes.toString()).toBe('ok');
    // HEAD, GET (read the stray bytes), GET again; or, on a slow machine, the stray bytes dropped
    // the idle connection first and the one GET went on a new one.
    expect(requests[0]).toMatch(/^HEAD /);
    expect(connections).toBe(2);
  });

  test('a HEAD answer is a head only, whatever its Content-Length; a connection that sends a body after it is not reused (a 204\'s is)', async () => {
    let connections = 0;
    const { url, server, requests } = await rawServer(async (s, request) => {
      if (request.startsWith('HEAD')) {
        s.write('HTTP/1.1 200 OK\r\nContent-Length: 9\r\nDocker-Content-Digest: sha256:abc\r\n\r\n');
        // A server that sends the body anyway, in a later write: on a reused connection it would be
        // taken for the answer to the next request.
        await sleep(20);
        if (!s.destroyed) s.write('STRAY-BDY');
      } else if (request.includes('/empty')) s.write('HTTP/1.1 204 No Content\r\n\r\n');
      else s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    });
    server.on('connection', () => (connections += 1));
    const head = await plainRequest(url, {}, FAST, undefined, { method: 'HEAD' });
    expect(head.statusCode).toBe(200);
    expect(head.headers['content-length']).toBe('9');
    expect((await readAll(head)).bytes.length).toBe(0);
    expect((await readAll(await plainRequest(new URL('/empty', url), {}, FAST))).bytes.length).toBe(0);
    expect((await readAll(await plainRequest(url, {}, FAST))).bytes.toString()).toBe('ok');
    expect(requests.map((r) => r.split(' ')[0])).toEqual(['HEAD', 'GET', 'GET']);
    // The HEAD's connection was dropped when its stray body came; the 204's served the last GET.
    expect(connections).toBe(2);
    await sleep(100);
    expect((await readAll(await plainRequest(url, {}, FAST))).bytes.toString()).toBe('ok');
    expect(connections).toBe(2);
  });

  test('a head whose lines end in a bare LF is read; two different Locations are refused', async () => {
    const { url } = await rawServer((s, request) => {
      if (request.includes('/twice')) s.write('HTTP/1.1 307 Temporary Redirect\r\nLocation: https://a.example/x\r\nLocation: https://b.example/y\r\nContent-Length: 0\r\n\r\n');
      else s.write('HTTP/1.1 200 OK\nContent-Length: 2\nX-Test: lf\n\nok');
    });
    const answer = await plainRequest(url, {}, FAST);
    expect(answer.headers['x-test']).toBe('lf');
    expect((await readAll(answer)).bytes.toString()).toBe('ok');
    await expect(plainRequest(new URL('/twice', url), {}, FAST)).rejects.toMatchObject({ code: 'HPE_INVALID_HEADER_TOKEN' });
  });

  test('a connection closed before Content-Length bytes came fails the body with ECONNRESET', async () => {
    const { url } = await rawServer((s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this'));
    const answer = await plainRequest(url, {}, FAST);
    expect((await bodyError(answer.body)).code).toBe('ECONNRESET');
  });

  test('a connection closed before the last chunk fails the body', async () => {
    const { url } = await rawServer((s) => s.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n'));
    const answer = await plainRequest(url, {}, FAST);
    expect((await bodyError(answer.body)).code).toBe('ECONNRESET');
  });

  test('a connection closed before any answer rejects with ECONNRESET', async () => {
    const { url } = await rawServer((s) => s.end());
    await expect(plainRequest(url, {}, FAST)).rejects.toMatchObject({ code: 'ECONNRESET' });
  });

  test.each([
    ['an invalid chunk size', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 'HPE_INVALID_CHUNK_SIZE'],
    ['a chunk longer than its size', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n', 'HPE_INVALID_CHUNK_SIZE'],
  ])('%s fails the body', async (_what, wire, code) => {
    const { url } = await rawServer((s) => s.write(wire));
    const answer = await plainRequest(url, {}, FAST);
    expect((await bodyError(answer.body)).code).toBe(code);
  });

  test.each([
    ['not HTTP', 'SSH-2.0-OpenSSH\r\n\r\n', 'HPE_INVALID_CONSTANT'],
    ['a gzip body', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n', 'HPE_INVALID_TRANSFER_ENCODING'],
    ['a bad Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', 'HPE_INVALID_CONTENT_LENGTH'],
    ['two Content-Lengths', 'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n', 'HPE_UNEXPECTED_CONTENT_LENGTH'],
    ['a folded header', 'HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
    ['a head over 64 KiB', `HTTP/1.1 200 OK\r\nX: ${'a'.repeat(70_000)}`, 'HPE_HEADER_OVERFLOW'],
    ['a whole head over 64 KiB in one read', `HTTP/1.1 200 OK\r\nX: ${'a'.repeat(66_000)}\r\n\r\n`, 'HPE_HEADER_OVERFLOW'],
    ['a status under 100', 'HTTP/1.1 099 Odd\r\n\r\n', 'HPE_INVALID_CONSTANT'],
  ])('%s rejects', async (_what, wire, code) => {
    const { url } = await rawServer((s) => s.write(wire));
    await expect(plainRequest(url, {}, FAST)).rejects.toMatchObject({ code });
  });

  test('a header value with a line break is refused before anything is sent', async () => {
    const { url, requests } = await rawServer(() => undefined);
    await expect(plainRequest(url, { authorization: 'Bearer x\r\nX-Injected: 1' }, FAST)).rejects.toThrow(TypeError);
    expect(requests).toEqual([]);
  });

  test('a refused connection rejects with its code', async () => {
    const { url, server } = await rawServer(() => undefined);
    await new Promise((resolve) => server.close(resolve));
    servers.splice(servers.indexOf(server), 1);
    await expect(plainRequest(url, {}, FAST)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  test('no head within firstByte: ETIMEDOUT', async () => {
    const { url } = await rawServer(() => undefined);
    await expect(plainRequest(url, {}, FAST)).rejects.toMatchObject({ code: 'ETIMEDOUT' });
  });

  test('a body that stalls longer than idle fails with ETIMEDOUT; a reader that pauses does not', async () => {
    const stalled = await rawServer((s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc'));
    expect((await bodyError((await plainRequest(stalled.url, {}, FAST)).body)).code).toBe('ETIMEDOUT');

    const { url } = await rawServer((s) => s.end('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc'));
    const answer = await plainRequest(url, {}, FAST);
    await sleep(FAST.idle * 2);
    expect((await readAll(answer)).bytes.toString()).toBe('abc');
  });

  test('an abort before the head rejects, and after it fails the body', async () => {
    const { url } = await rawServer(() => undefined);
    const before = new AbortController();
    const pending = plainRequest(url, {}, FAST, before.signal);
    before.abort(new Error('cancelled'));
    await expect(pending).rejects.toThrow('cancelled');

    const streaming = await rawServer((s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc'));
    const after = new AbortController();
    const answer = await plainRequest(streaming.url, {}, FAST, after.signal);
    after.abort(new Error('loser of a hedge'));
    expect((await bodyError(answer.body)).message).toBe('loser of a hedge');
  });

  test('a body listener that throws as bytes arrive fails the body instead of crashing the process', async () => {
    const { url } = await rawServer(async (s) => {
      s.write('HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n');
      await sleep(50);
      s.end('abcdef');
    });
    const answer = await plainRequest(url, {}, FAST);
    const failed = new Promise<Error>((resolve) => answer.body.on('error', resolve));
    answer.body.on('data', () => {
      throw new Error('listener bug');
    });
    expect((await failed).message).toBe('listener bug');
  });

  test('a slow reader pauses the socket and still gets every byte in order', async () => {
    const body = randomBytes(8 * 1024 * 1024);
    const { url } = await rawServer((s) => {
      s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`);
      s.end(body);
    });
    const answer = await plainRequest(url, {}, FAST);
    const hash = createHash('sha256');
    let n = 0;
    for await (const chunk of answer.body as AsyncIterable<Buffer>) {
      hash.update(chunk);
      if ((n += 1) % 16 === 0) await sleep(2);
    }
    expect(hash.digest('hex')).toBe(createHash('sha256').update(body).digest('hex'));
  });

  test('chunks given back are read into again; chunks kept are never overwritten', async () => {
    const body = randomBytes(16 * 1024 * 1024);
    const serve = () =>
      rawServer((s) => {
        s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`);
        s.end(body);
      });
    const recycled = await readAll(await plainRequest((await serve()).url, {}, FAST), true);
    expect(recycled.bytes.equals(body)).toBe(true);
    // 16 MiB through 512 KiB slabs: a handful, reused, rather than one per 512 KiB.
    expect(recycled.buffers.size).toBeLessThanOrEqual(6);

    const kept: Buffer[] = [];
    const answer = await plainRequest((await serve()).url, {}, FAST);
    for await (const chunk of answer.body as AsyncIterable<Buffer>) kept.push(chunk);
    expect(Buffer.concat(kept).equals(body)).toBe(true);
    expect(new Set(kept.map((c) => c.buffer)).size).toBeGreaterThanOrEqual(32);
  });
});

describe('plainRequest over TLS', () => {
  let dir: string;
  let cert: string;
  let key: string;
  let server: Server;
  let url: URL;
  let handshakes = 0;
  const body = randomBytes(2 * 1024 * 1024 + 5);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'wharf-plain-tls-'));
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
    ], { stdio: 'ignore' });
    cert = readFileSync(join(dir, 'cert.pem'), 'utf8');
    key = readFileSync(join(dir, 'key.pem'), 'utf8');
    server = createTlsServer({ cert, key }, (socket) => {
      handshakes += 1;
      sockets.add(socket);
      socket.on('error', () => undefined);
      let head = '';
      socket.on('data', (d: Buffer) => {
        head += d.toString('latin1');
        while (head.includes('\r\n\r\n')) {
          head = head.slice(head.indexOf('\r\n\r\n') + 4);
          socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`);
          socket.write(body);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = new URL(`https://localhost:${(server.address() as AddressInfo).port}/v2/a/blobs/x`);
  });
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  test('with the CA trusted, the body comes through into reused memory, on one kept connection', async () => {
    for (let i = 0; i < 2; i++) {
      const answer = await plainRequest(url, {}, FAST, undefined, { ca: cert });
      expect(answer.statusCode).toBe(200);
      const { bytes, buffers } = await readAll(answer, true);
      expect(bytes.equals(body)).toBe(true);
      // Slabs, not a buffer per read: a 2 MiB body in a handful of them.
      expect(buffers.size).toBeLessThan(8);
    }
    expect(handshakes).toBe(1);
  });

  test('an untrusted certificate rejects with OpenSSL\'s code, and nothing is kept', async () => {
    const err = await plainRequest(url, {}, FAST).then(
      () => undefined,
      (e: unknown) => e as NodeJS.ErrnoException,
    );
    expect(err?.code).toMatch(/SELF_SIGNED|UNABLE_TO_VERIFY/);
  });
});

describe('the connect timeout', () => {
  /**
   * An https:// upstream whose TCP server accepts the connection and never answers the TLS handshake
   * (a firewall or a dead TLS terminator that holds connections open): the connect timer runs until
   * the handshake is done (secureConnect), so it, not the first-byte timer, ends the request. Timers
   * are fake: the request is seen still waiting 1 ms before `connect`, and failed at it.
   */
  test('covers the TLS handshake: a server that never answers it fails the request at `connect` with ETIMEDOUT "connecting"', async () => {
    let hello: () => void = () => undefined;
    const helloSent = new Promise<void>((resolve) => (hello = resolve));
    const server = createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => undefined);
      // The ClientHello comes; nothing goes back.
      socket.once('data', () => hello());
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    servers.push(server);
    const url = new URL(`https://127.0.0.1:${(server.address() as AddressInfo).port}/v2/a/manifests/1`);
    const connect = 5_000;
    // setTimeout alone is fake; I/O, immediates and the rest are real.
    jest.useFakeTimers({ doNotFake: ['Date', 'hrtime', 'nextTick', 'performance', 'queueMicrotask', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval'] });
    try {
      let outcome: unknown;
      void plainRequest(url, {}, { connect, firstByte: 600_000, idle: 600_000 }).then(
        () => (outcome = 'answered'),
        (err: unknown) => (outcome = err),
      );
      // The TCP connection is up and the handshake begun: only its answer is awaited.
      await helloSent;
      const settle = () => new Promise((resolve) => setImmediate(resolve));
      jest.advanceTimersByTime(connect - 1);
      await settle();
      expect(outcome).toBeUndefined();
      jest.advanceTimersByTime(1);
      await settle();
      expect(outcome).toMatchObject({ code: 'ETIMEDOUT', message: 'timed out connecting to the upstream' });
    } finally {
      jest.useRealTimers();
    }
  });
});
