import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { arrivedAt, inPipelinedOrder } from '../../src/http/pipelined-order.js';
import { trackRequest } from '../../src/http/request-log.js';
import { captureLog } from '../auth/helpers.js';

/** Writes `request` raw and resolves with everything the server sent before the connection closed (or was reset). */
function exchange(port: number, request: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString('latin1')));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve(reply));
    socket.write(request);
  });
}

describe('pipelined requests behind an unsafe one (a real node server, the ordering alone)', () => {
  let server: Server;
  let port: number;
  const started: string[] = [];
  /** When each request arrived, as arrivedAt says (performance.now(); undefined: it started at once). */
  const arrived = new Map<string, number | undefined>();
  /** When each request started (performance.now()). */
  const begun = new Map<string, number>();
  /** When the last POST finished (performance.now()). */
  let postDoneAt = 0;

  beforeAll(async () => {
    // A POST takes 200 ms; every request answers its own path.
    server = createServer(
      inPipelinedOrder((req, res) => {
        started.push(`${req.method} ${req.url}`);
        arrived.set(`${req.method} ${req.url}`, arrivedAt(req));
        begun.set(`${req.method} ${req.url}`, performance.now());
        const answer = () => {
          if (req.method === 'POST') {
            started.push('POST done');
            postDoneAt = performance.now();
          }
          res.end(`${req.method} ${req.url}\n`);
        };
        if (req.method === 'POST') setTimeout(answer, 200);
        else answer();
      }),
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  test('a few are answered in order, each started after the POST finished', async () => {
    started.length = 0;
    const gets = Array.from({ length: 5 }, (_, i) => `GET /g${i} HTTP/1.1\r\nHost: x\r\n\r\n`).join('');
    const reply = await exchange(port, `POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n${gets}GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(reply.match(/^(GET|POST) \/\w+$/gm)).toEqual(['POST /p', 'GET /g0', 'GET /g1', 'GET /g2', 'GET /g3', 'GET /g4', 'GET /last']);
    // Node alone would have started every GET while the POST ran (their answers queued behind it).
    expect(started).toEqual(['POST /p', 'POST done', 'GET /g0', 'GET /g1', 'GET /g2', 'GET /g3', 'GET /g4', 'GET /last']);
    // Their wait is known (the request log counts it in durationMs): each is taken to have arrived
    // while the POST ran, not when it started after it. The POST did not wait.
    expect(arrived.get('POST /p')).toBeUndefined();
    for (const get of ['GET /g0', 'GET /last']) {
      expect(arrived.get(get)).toBeGreaterThanOrEqual(begun.get('POST /p')!);
      expect(arrived.get(get)).toBeLessThan(postDoneAt);
      expect(begun.get(get)).toBeGreaterThanOrEqual(postDoneAt);
    }
  });

  test('a flood of them behind a slow POST cuts the connection instead of queueing without end', async () => {
    started.length = 0;
    const gets = Array.from({ length: 5000 }, (_, i) => `GET /f${i} HTTP/1.1\r\nHost: x\r\n\r\n`).join('');
    const reply = await exchange(port, `POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n${gets}`);
    // Cut before the POST answered: nothing queued was started for a client that is gone.
    expect(reply).toBe('');
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(started).toEqual(['POST /p', 'POST done']);
  });
});

describe('the request log of a request that waited behind another of its connection', () => {
  test('its durationMs counts the wait: what its client saw', async () => {
    const log = captureLog();
    /** When the GET arrived, and how long it had waited when it started, behind the POST (ms). */
    let getArrived: number | undefined;
    let waitedAtStart: number | undefined;
    let postDoneAt = 0;
    const server = createServer(
      inPipelinedOrder((req, res) => {
        trackRequest(req, res, req.url ?? '/', { logger: log.logger });
        const arrived = arrivedAt(req);
        if (req.method === 'GET' && arrived !== undefined) {
          getArrived = arrived;
          waitedAtStart = performance.now() - arrived;
        }
        if (req.method === 'POST') {
          setTimeout(() => {
            postDoneAt = performance.now();
            res.end('posted\n');
          }, 200);
        } else res.end('got\n');
      }),
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const port = (server.address() as AddressInfo).port;
      await exchange(port, 'POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      await new Promise((resolve) => setTimeout(resolve, 50));
      const lines = log
        .text()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { msg: string; method: string; durationMs: number })
        .filter((l) => l.msg === 'request');
      expect(lines.map((l) => l.method)).toEqual(['POST', 'GET']);
      // The GET, arrived while the POST ran, waited it out; its logged duration holds that wait (to its 0.1 ms rounding).
      expect(getArrived).toBeLessThan(postDoneAt);
      expect(lines[1]!.durationMs).toBeGreaterThanOrEqual(waitedAtStart! - 0.05);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
