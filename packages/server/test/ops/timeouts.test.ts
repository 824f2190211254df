import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { FakeUpstream } from '../../../proxy/test/helpers/fake-upstream.js';
import bcrypt from 'bcryptjs';
import { basic, requestFrom, startAuthRegistry } from '../auth/helpers.js';
import { passwordThread } from '../../src/auth/passwords.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { sleep } from './helpers.js';

/**
 * Timeouts: read_header_timeout cuts slow-loris clients while others are served; request_timeout
 * answers 503 to a request that does not move a blob; blob uploads run as long as bytes flow, and are
 * cut only when the socket goes idle for idle_timeout.
 */

/**
 * The slow-loris test's own server: long enough that the lorises surely still hang on while a normal
 * client is served, however slow the machine.
 */
const LORIS_READ_HEADER_MS = 5_000;
const IDLE_MS = 1_500;
const REQUEST_MS = 800;

interface Loris {
  readonly socket: Socket;
  /** When the server closed it (ms since the test started), or undefined while open. */
  closedAt?: number;
  /** What the server sent before closing (Node answers 408 to a header timeout). */
  received: string;
}

/** A connection that sends a request head one byte at a time, every `everyMs`, and never finishes it. */
function openLoris(port: number, started: number, everyMs: number, silent = false): Loris {
  const head = 'GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow-loris\r\nX-Padding: ' + 'a'.repeat(500);
  const socket = connect(port, '127.0.0.1');
  const loris: Loris = { socket, received: '' };
  let i = 0;
  const timer = silent
    ? undefined
    : setInterval(() => {
        if (!socket.destroyed && socket.writable) socket.write(head[i++ % head.length]!);
      }, everyMs);
  socket.on('data', (d: Buffer) => {
    loris.received += d.toString('latin1');
  });
  socket.on('error', () => undefined);
  socket.on('close', () => {
    clearInterval(timer);
    loris.closedAt = Date.now() - started;
  });
  return loris;
}

describe('timeouts', () => {
  let reg: TestRegistry;
  let port: number;

  beforeAll(async () => {
    reg = await startRegistry({
      settings: { read_header_timeout: '1s', idle_timeout: '1500ms', request_timeout: '800ms' },
    });
    port = Number(new URL(reg.url).port);
  });

  afterAll(async () => {
    await reg?.close({ timeoutMs: 1_000 });
  });

  test('slow-loris: 200 connections trickling headers are cut after read_header_timeout, and a normal client is served meanwhile', async () => {
    const server = await startRegistry({ settings: { read_header_timeout: `${LORIS_READ_HEADER_MS}ms` } });
    const lorisPort = Number(new URL(server.url).port);
    const started = Date.now();
    const lorises = [
      ...Array.from({ length: 150 }, () => openLoris(lorisPort, started, 100)),
      // Connections that send nothing at all.
      ...Array.from({ length: 50 }, () => openLoris(lorisPort, started, 0, true)),
    ];
    try {
      await Promise.all(lorises.map((l) => once(l.socket, 'connect')));
      // While they hang on, ordinary requests are answered: each answer comes while every loris is
      // still open (a server that served them only once the lorises were cut would fail here).
      for (let i = 0; i < 5; i++) {
        const res = await fetch(`${server.url}/v2/`);
        expect(res.status).toBe(200);
        expect(lorises.filter((l) => l.closedAt !== undefined)).toHaveLength(0);
      }
      const deadline = LORIS_READ_HEADER_MS + 10_000;
      while (lorises.some((l) => l.closedAt === undefined) && Date.now() - started < deadline) await sleep(50);
      const open = lorises.filter((l) => l.closedAt === undefined).length;
      expect(open).toBe(0);
      // Cut by read_header_timeout, not before it.
      const earliest = Math.min(...lorises.map((l) => l.closedAt!));
      expect(earliest).toBeGreaterThanOrEqual(LORIS_READ_HEADER_MS - 100);
      // The tricklers were told why.
      expect(lorises.filter((l) => l.received.startsWith('HTTP/1.1 408')).length).toBeGreaterThan(100);
      expect((await fetch(`${server.url}/v2/`)).status).toBe(200);
    } finally {
      for (const l of lorises) l.socket.destroy();
      await server.close({ timeoutMs: 1_000 });
    }
  });

  test('request_timeout: a manifest PUT whose body never completes gets 408 REQUEST_TIMEOUT (the client stalled, not the server)', async () => {
    const started = Date.now();
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(
        { host: '127.0.0.1', port, method: 'PUT', path: '/v2/slow/app/manifests/1', headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json', 'Content-Length': '1000' } },
        (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject);
      req.write('{"schemaVersion":'); // ...and nothing more
    });
    expect(answer.status).toBe(408);
    expect(JSON.parse(answer.body).errors[0].code).toBe('REQUEST_TIMEOUT');
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(REQUEST_MS - 50);
    expect(took).toBeLessThan(REQUEST_MS + 2_500);
  });

  test('request_timeout: a manifest PUT whose body never starts (with or without Expect: 100-continue) is the client stalling too: 408', async () => {
    for (const expect100 of [false, true]) {
      const got = await new Promise<string>((resolve) => {
        const socket = connect(port, '127.0.0.1');
        let reply = '';
        socket.on('data', (d: Buffer) => {
          reply += d.toString('latin1');
          if (/HTTP\/1\.1 [2-5]\d\d/.test(reply)) socket.destroy();
        });
        socket.on('close', () => resolve(reply));
        socket.on('error', () => undefined);
        socket.write(`PUT /v2/slow/app/manifests/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 1000\r\n${expect100 ? 'Expect: 100-continue\r\n' : ''}\r\n`);
      });
      if (expect100) expect(got).toMatch(/^HTTP\/1\.1 100 Continue/);
      expect([expect100, /HTTP\/1\.1 (\d+)/.exec(got.replace(/^HTTP\/1\.1 100 Continue\r\n\r\n/, ''))?.[1]]).toEqual([expect100, '408']);
    }
  });

  test('a blob upload that takes longer than request_timeout and idle_timeout in total, with bytes flowing, completes', async () => {
    const start = await fetch(`${reg.url}/v2/slow/app/blobs/uploads/`, { method: 'POST' });
    const location = new URL(start.headers.get('location')!, reg.url);
    const hash = createHash('sha256');
    const began = Date.now();
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(location, { method: 'PATCH', headers: { 'Content-Type': 'application/octet-stream' } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      void (async () => {
        // 2.5 s in all, a chunk every 250 ms: never idle for long.
        for (let i = 0; i < 10; i++) {
          const chunk = Buffer.alloc(64 * 1024, i);
          hash.update(chunk);
          req.write(chunk);
          await sleep(250);
        }
        req.end();
      })();
    });
    expect(Date.now() - began).toBeGreaterThan(IDLE_MS + REQUEST_MS);
    expect(status).toBe(202);
    location.searchParams.set('digest', `sha256:${hash.digest('hex')}`);
    expect((await fetch(location, { method: 'PUT' })).status).toBe(201);
  });

  test('an upload whose client goes silent for idle_timeout is cut', async () => {
    const start = await fetch(`${reg.url}/v2/slow/app/blobs/uploads/`, { method: 'POST' });
    const location = new URL(start.headers.get('location')!, reg.url);
    const began = Date.now();
    const outcome = await new Promise<string>((resolve) => {
      const req = request(location, { method: 'PATCH', headers: { 'Content-Type': 'application/octet-stream' } }, (res) => {
        res.resume();
        res.on('end', () => resolve(`answered ${res.statusCode}`));
      });
      req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      req.write(Buffer.alloc(1024));
      // ...then silence.
    });
    const took = Date.now() - began;
    expect(outcome).toMatch(/ECONNRESET|socket hang up/);
    expect(took).toBeGreaterThanOrEqual(IDLE_MS - 100);
    expect(took).toBeLessThan(IDLE_MS + 3_500);
  });

  test('an idle keep-alive connection is closed after idle_timeout', async () => {
    const socket = connect(port, '127.0.0.1');
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString()));
    const closed = new Promise<number>((resolve) => socket.on('close', () => resolve(Date.now())));
    socket.write('GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    while (!reply.includes('{"status":"ok"}')) await sleep(10);
    const answered = Date.now();
    const at = await closed;
    expect(reply).toMatch(/^HTTP\/1\.1 200/);
    expect(at - answered).toBeGreaterThanOrEqual(IDLE_MS - 100);
    expect(at - answered).toBeLessThan(IDLE_MS + 3_500);
  });
});

describe('request_timeout with the whole request received', () => {
  test('a manifest GET whose upstream does not answer in time gets 503 UNAVAILABLE: the server, not the client, was slow', async () => {
    const stalled = await FakeUpstream.start();
    let reg: TestRegistry | undefined;
    try {
      stalled.fault = 'stall';
      reg = await startRegistry({ settings: { request_timeout: '800ms', proxy: { first_byte_timeout: '20s', retries: 0, upstreams: { slow: { url: stalled.url } } } } });
      const res = await fetch(`${reg.url}/v2/proxy/slow/alice/app/manifests/1`);
      expect(res.status).toBe(503);
      expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('UNAVAILABLE');
    } finally {
      await reg?.close({ timeoutMs: 1_000 });
      await stalled.close();
    }
  });
});

describe('request_timeout while the server, not the client, holds the body back', () => {
  test('a PUT with Expect: 100-continue whose 100 the server had not sent yet (a login being checked) gets 503, not a 408 that blames the client', async () => {
    // bcrypt at cost 12 (about 250 ms here) is the server's stall; request_timeout passes during it.
    const reg = await startAuthRegistry({ settings: { request_timeout: '50ms' }, authSettings: { users: [{ name: 'alice', password_hash: bcrypt.hashSync('alice-password-1', 12) }] } });
    try {
      const body = Buffer.from('{"schemaVersion":2}');
      const answer = await new Promise<{ status: number; continued: boolean }>((resolve, reject) => {
        let continued = false;
        const req = request(
          `${reg.url}/v2/alice/app/manifests/1`,
          {
            method: 'PUT',
            headers: { Authorization: basic('alice', 'alice-password-1'), 'Content-Type': 'application/vnd.oci.image.manifest.v1+json', 'Content-Length': body.length, Expect: '100-continue' },
          },
          (res) => {
            res.resume();
            res.on('end', () => resolve({ status: res.statusCode ?? 0, continued }));
          },
        );
        req.on('continue', () => {
          continued = true;
          req.end(body);
        });
        req.on('error', reject);
      });
      expect(answer).toEqual({ status: 503, continued: false });
    } finally {
      await reg.close({ timeoutMs: 500 });
    }
  });
});

describe('request_timeout during password checks', () => {
  test('logins answered 503 while they waited for the password thread leave its line: no check runs for an answered request', async () => {
    // Cost 12 (about 250 ms a check): six logins from one address wait their turns, and 50 ms in
    // every one of them has had its 503.
    const reg = await startAuthRegistry({ settings: { request_timeout: '50ms' }, authSettings: { users: [{ name: 'alice', password_hash: bcrypt.hashSync('alice-password-1', 12) }] } });
    try {
      const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => requestFrom('127.0.8.1', `${reg.url}/v2/`, { Authorization: basic('alice', `wrong-guess-${i}`) })));
      expect(answers.map((a) => a.status)).toEqual([503, 503, 503, 503, 503, 503]);
      // Before: the five behind the first stayed in the line, each costing its check (1.25 s of
      // the thread) for an answer nobody would read, ahead of later logins.
      expect(passwordThread.queued).toBe(0);
    } finally {
      await reg.close({ timeoutMs: 500 });
    }
  });
});
