import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { connect } from 'node:net';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** Sends `head` and a little of the body it announces; resolves with what came back before the server closed. */
function refusedUpload(port: number, head: string): Promise<{ reply: string; closedMs: number }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const started = performance.now();
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => resolve({ reply, closedMs: performance.now() - started }));
    socket.write(head + 'x'.repeat(1024));
  });
}

describe('an error before a request body was read to its end', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry({ settings: { idle_timeout: '20s' } });
  });
  afterAll(async () => {
    await reg?.close();
  });

  test('the error is answered and the connection closed, not kept waiting for the rest of the body', async () => {
    const head = `PATCH /v2/alice/app/blobs/uploads/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 10485760\r\n\r\n`;
    const { reply, closedMs } = await refusedUpload(reg.port, head);
    expect(reply).toMatch(/^HTTP\/1\.1 404 /);
    expect(reply).toMatch(/\r\nconnection: close\r\n/i);
    expect(reply).toContain('BLOB_UPLOAD_UNKNOWN');
    // Well before the 20 s idle timeout.
    expect(closedMs).toBeLessThan(10_000);
  });
});
