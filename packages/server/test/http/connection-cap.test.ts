import { afterEach, describe, expect, test } from '@jest/globals';
import { connect, type Socket } from 'node:net';
import { connect as connectTls } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { captureLog } from '../auth/helpers.js';
import { capConnections, connectionLimit } from '../../src/http/connection-cap.js';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** A client connection that records what it got and whether the server closed it. */
interface Client {
  readonly socket: Socket;
  received: string;
  closed: boolean;
}

function open(port: number, tls = false): Promise<Client> {
  return new Promise((resolve, reject) => {
    const socket = tls ? connectTls({ port, host: '127.0.0.1', rejectUnauthorized: false }) : connect(port, '127.0.0.1');
    const client: Client = { socket, received: '', closed: false };
    socket.on('data', (d: Buffer) => (client.received += d.toString('latin1')));
    socket.on('close', () => (client.closed = true));
    socket.on('error', () => undefined);
    socket.once(tls ? 'secureConnect' : 'connect', () => resolve(client));
    socket.once('error', reject);
  });
}

/** Sends `request` on the client's connection and waits for `expect` in what comes back. */
async function exchange(client: Client, request: string, expect: RegExp): Promise<void> {
  const before = client.received.length;
  client.socket.write(request);
  for (let i = 0; i < 200 && !expect.test(client.received.slice(before)); i++) await sleep(10);
}

/** max_connections: idle keep-alive connections make room; busy ones never close; past the cap, refusal. */
describe('max_connections', () => {
  let reg: TestRegistry | undefined;
  const clients: Client[] = [];
  /** A connection answered 404 at once (no such upload) while its chunked body goes on arriving. */
  const answeredWhileSending = async (port: number): Promise<Client> => {
    const sending = await open(port);
    clients.push(sending);
    await exchange(
      sending,
      'PATCH /v2/cap/test/blobs/uploads/no-such-upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n',
      /^HTTP\/1\.1 404 [^]*BLOB_UPLOAD_UNKNOWN/,
    );
    return sending;
  };
  /** A connection serving a request: an upload whose chunked PATCH body has not ended. */
  const uploadInFlight = async (port: number, tls = false): Promise<Client> => {
    const busy = await open(port, tls);
    clients.push(busy);
    await exchange(busy, 'POST /v2/cap/test/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n', /\r\n\r\n/);
    const location = /^location: (\S+)/im.exec(busy.received)![1]!;
    busy.socket.write(`PATCH ${location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`);
    return busy;
  };
  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.destroy();
    await reg?.close();
    reg = undefined;
  });

  test.each([
    ['HTTP', false],
    ['HTTPS', true],
  ])('%s: past seven eighths of it, each new connection closes the one idle longest, and is served', async (_what, tls) => {
    reg = await startRegistry({ settings: { max_connections: 8, ...(tls ? { tls: { self_signed: true, hosts: ['cap.test'] } } : {}) } });
    for (let i = 0; i < 12; i++) {
      const c = await open(reg.port, tls);
      clients.push(c);
      await exchange(c, 'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 200 [^]*\r\n\r\n\{\}/);
      expect(c.received).toMatch(/^HTTP\/1\.1 200 /);
    }
    await sleep(100);
    // Before: all twelve kept open until idle_timeout (2 minutes), whatever the number.
    expect(clients.map((c) => c.closed)).toEqual([true, true, true, true, true, false, false, false, false, false, false, false]);
  });

  test('connections serving a request are never closed; past the cap a new one is refused and logged, until one is idle again', async () => {
    const log = captureLog();
    reg = await startRegistry({ settings: { max_connections: 8 }, logger: log.logger });
    const port = reg.port;
    // Eight uploads whose chunked bodies have not ended: eight requests in flight.
    const locations: string[] = [];
    for (let i = 0; i < 8; i++) {
      const c = await open(port);
      await exchange(c, 'POST /v2/cap/test/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n', /\r\n\r\n/);
      locations.push(/^location: (\S+)/im.exec(c.received)![1]!);
      c.socket.destroy();
    }
    await sleep(100);
    const busy: Client[] = [];
    for (const location of locations) {
      const c = await open(port);
      busy.push(c);
      c.socket.write(`PATCH ${location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`);
    }
    clients.push(...busy);
    await sleep(200);
    const refused = await open(port);
    clients.push(refused);
    refused.socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n');
    for (let i = 0; i < 100 && !refused.closed; i++) await sleep(10);
    expect(refused.closed).toBe(true);
    expect(refused.received).toBe('');
    expect(busy.every((c) => !c.closed)).toBe(true);
    expect(log.text()).toContain('"msg":"new connections refused: max_connections are open and none is idle"');
    // The uploads end: their connections are idle, and the next new connection closes one of them.
    for (const c of busy) await exchange(c, '0\r\n\r\n', /^HTTP\/1\.1 202 /);
    expect(busy.every((c) => /^HTTP\/1\.1 202 /.test(c.received))).toBe(true);
    const next = await open(port);
    clients.push(next);
    await exchange(next, 'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 200 /);
    expect(next.received).toMatch(/^HTTP\/1\.1 200 /);
  });

  test('a connection still sending the body of a request already answered is not idle, until the body ends', async () => {
    reg = await startRegistry({ settings: { max_connections: 8 } });
    const port = reg.port;
    const sending = await answeredWhileSending(port);
    expect(sending.received).toMatch(/^HTTP\/1\.1 404 [^]*BLOB_UPLOAD_UNKNOWN/);
    sending.socket.write('5\r\nworld\r\n');
    // Eight more, each idle after its answer: past seven open, each new one closes the one idle longest.
    const others: Client[] = [];
    for (let i = 0; i < 8; i++) {
      const c = await open(port);
      others.push(c);
      await exchange(c, 'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 200 [^]*\r\n\r\n\{\}/);
    }
    clients.push(...others);
    await sleep(100);
    // Before: the sender was the one idle longest, and was cut mid-body.
    expect(sending.closed).toBe(false);
    expect(others[0]!.closed).toBe(true);
    // Its body ends: the connection serves its next request, and is idle from then on.
    await exchange(sending, '0\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n', /HTTP\/1\.1 200 /);
    expect(sending.received).toMatch(/HTTP\/1\.1 200 /);
    // Idle now, and the newest: it goes after the six others still open.
    expect(others.map((c) => c.closed)).toEqual([true, true, false, false, false, false, false, false]);
    for (let i = 0; i < 7; i++) {
      const c = await open(port);
      clients.push(c);
      await exchange(c, 'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 200 /);
      // The closing FIN left before this answer; the last one closes the sender (waited for, not slept).
      for (let j = 0; i === 6 && j < 200 && !sending.closed; j++) await sleep(10);
      expect([i, sending.closed]).toEqual([i, i === 6]);
    }
  });

  test('at the cap with none idle, a connection still sending an answered body goes rather than the new one being refused', async () => {
    reg = await startRegistry({ settings: { max_connections: 8 } });
    const port = reg.port;
    const sending = await answeredWhileSending(port);
    // Seven uploads in flight: with the sender, eight open, none idle.
    const busy: Client[] = [];
    for (let i = 0; i < 7; i++) busy.push(await uploadInFlight(port));
    const fresh = await open(port);
    clients.push(fresh);
    await exchange(fresh, 'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 200 /);
    // Before: refused (closed with nothing), the sender kept for as long as it trickles its body.
    expect(fresh.received).toMatch(/^HTTP\/1\.1 200 /);
    for (let i = 0; i < 200 && !sending.closed; i++) await sleep(10);
    expect(sending.closed).toBe(true);
    expect(busy.some((c) => c.closed)).toBe(false);
  });

  test.each([
    ['HTTP', false],
    ['HTTPS', true],
  ])('%s: at the cap, a slow-loris connection (no whole request yet) goes, oldest first, rather than the new one being refused', async (_what, tls) => {
    const log = captureLog();
    reg = await startRegistry({ settings: { max_connections: 8, ...(tls ? { tls: { self_signed: true, hosts: ['cap.test'] } } : {}) }, logger: log.logger });
    const port = reg.port;
    // One upload in flight, never closed; seven connections trickling a request head that never ends.
    const busy = await uploadInFlight(port, tls);
    const slow: Client[] = [];
    const trickle = async (): Promise<void> => {
      const c = await open(port, tls);
      slow.push(c);
      clients.push(c);
      c.socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n');
    };
    for (let i = 0; i < 7; i++) await trickle();
    await sleep(100);
    for (let round = 0; round < 3; round++) {
      // The attacker takes the place left again, so that every new client finds all eight taken.
      if (round > 0) await trickle();
      await sleep(50);
      const next = await open(port, tls);
      clients.push(next);
      // Connection: close, so that no idle connection is there to make room instead.
      await exchange(next, 'GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', /^HTTP\/1\.1 200 /);
      // Before: refused (closed with nothing) until read_header_timeout ended the trickling ones.
      expect(next.received).toMatch(/^HTTP\/1\.1 200 /);
      for (let i = 0; i < 100 && !next.closed; i++) await sleep(10);
    }
    await sleep(100);
    // The three trickling longest went; the upload in flight is never closed.
    expect(slow.map((c) => c.closed)).toEqual([true, true, true, false, false, false, false, false, false]);
    expect(busy.closed).toBe(false);
    expect(log.text()).not.toContain('new connections refused');
  });

  test('HTTPS: at the cap, a connection that never began its TLS handshake goes, oldest first, rather than the new one being refused', async () => {
    reg = await startRegistry({ settings: { max_connections: 8, tls: { self_signed: true, hosts: ['cap.test'] } } });
    const port = reg.port;
    const busy = await uploadInFlight(port, true);
    // Seven plain TCP connections to the TLS port that never send a ClientHello.
    const silent: Client[] = [];
    for (let i = 0; i < 7; i++) silent.push(await open(port));
    clients.push(...silent);
    await sleep(100);
    const next = await open(port, true);
    clients.push(next);
    await exchange(next, 'GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', /^HTTP\/1\.1 200 /);
    expect(next.received).toMatch(/^HTTP\/1\.1 200 /);
    for (let i = 0; i < 100 && !silent[0]!.closed; i++) await sleep(10);
    expect(silent.map((c) => c.closed)).toEqual([true, false, false, false, false, false, false]);
    expect(busy.closed).toBe(false);
  });

  test('a body its handler paused and never read on: the connection is idle once its next request is answered', async () => {
    // node emits no 'end' for a request body nobody reads to its end, but parses the connection's next
    // request once that body has all come in. Before: the connection was counted busy for good, and
    // the cap could never close it.
    const server = createServer((req, res) => {
      if (req.url === '/partial') {
        req.once('data', () => {
          req.pause();
          res.end('partial');
        });
        return;
      }
      req.resume();
      req.on('end', () => res.end('ok'));
    });
    const cap = capConnections(server, 100, () => undefined);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const client = await open((server.address() as AddressInfo).port);
      clients.push(client);
      await exchange(client, 'POST /partial HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc', /partial$/);
      client.socket.write('def');
      await sleep(50);
      expect(cap.idle).toBe(0);
      await exchange(client, 'GET /x HTTP/1.1\r\nHost: x\r\n\r\n', /ok$/);
      for (let i = 0; i < 100 && cap.idle === 0; i++) await sleep(10);
      expect(cap.idle).toBe(1);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  test('lowered to fit the open files limit, less what the server needs for itself', () => {
    // Half of what is left past 512: a connection sending a blob holds its file too.
    expect(connectionLimit(4096, 1024)).toBe(256);
    expect(connectionLimit(4096, 20000)).toBe(4096);
    expect(connectionLimit(4096, 8192)).toBe(3840);
    expect(connectionLimit(4096, undefined)).toBe(4096);
    expect(connectionLimit(4096, 100)).toBe(1);
  });
});
