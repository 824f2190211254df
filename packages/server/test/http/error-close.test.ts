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

  test('the error is answered at once, and the connection cut soon after when the rest of the body does not come', async () => {
    const head = `PATCH /v2/alice/app/blobs/uploads/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 10485760\r\n\r\n`;
    const { reply, closedMs } = await refusedUpload(reg.port, head);
    expect(reply).toMatch(/^HTTP\/1\.1 404 /);
    expect(reply).toContain('BLOB_UPLOAD_UNKNOWN');
    // Well before the 20 s idle timeout.
    expect(closedMs).toBeLessThan(10_000);
  });

  test('with Connection: close too: a client that writes its whole body before reading gets the answer, not a reset', async () => {
    const body = Buffer.alloc(5 * 1024 * 1024, 7);
    const socket = connect(reg.port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString('latin1')));
    const errors: Error[] = [];
    socket.on('error', (err) => errors.push(err));
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    const write = (chunk: Buffer | string): Promise<void> => new Promise((resolve) => socket.write(chunk, () => resolve()));
    await write(`PUT /v2/alice/app/manifests/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: ${body.length}\r\n\r\n`);
    for (let i = 0; i < 5; i++) {
      await write(body.subarray(i * 1024 * 1024, (i + 1) * 1024 * 1024));
      await new Promise((r) => setTimeout(r, 40));
    }
    socket.end();
    await closed;
    expect(errors).toEqual([]);
    expect(reply).toMatch(/^HTTP\/1\.1 413 /);
    expect(reply).toContain('TOO_LARGE');
  });

  // 500 ms apart, the body takes 4 s: longer than the 2 s a silent connection is given, though it never falls silent.
  test.each([40, 500])('a client that writes its whole body before reading (as Go clients do), a piece every %i ms, is not reset: it reads the answer, and may go on', async (gap) => {
    const body = Buffer.alloc(8 * 1024 * 1024, 7);
    const socket = connect(reg.port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString('latin1')));
    const errors: Error[] = [];
    socket.on('error', (err) => errors.push(err));
    const write = (chunk: Buffer | string): Promise<void> => new Promise((resolve) => socket.write(chunk, () => resolve()));
    await write(`PUT /v2/alice/app/manifests/latest HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: ${body.length}\r\n\r\n`);
    // The body in pieces, some after the answer came: a server that closed after answering resets these writes.
    for (let i = 0; i < 8; i++) {
      await write(body.subarray(i * 1024 * 1024, (i + 1) * 1024 * 1024));
      await new Promise((r) => setTimeout(r, gap));
    }
    expect(errors).toEqual([]);
    // Refused from its Content-Length alone (manifests are at most 4 MiB), before any byte was read.
    expect(reply).toMatch(/^HTTP\/1\.1 413 /);
    // The body came whole: the connection serves the next request.
    reply = '';
    await write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 200));
    expect(reply).toMatch(/^HTTP\/1\.1 200 /);
    socket.destroy();
  });
});
