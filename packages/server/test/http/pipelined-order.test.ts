import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { inPipelinedOrder } from '../../src/http/pipelined-order.js';

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

  beforeAll(async () => {
    // A POST takes 200 ms; every request answers its own path.
    server = createServer(
      inPipelinedOrder((req, res) => {
        started.push(`${req.method} ${req.url}`);
        const answer = () => {
          if (req.method === 'POST') started.push('POST done');
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
