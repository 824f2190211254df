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

/**
 * A raw connection that writes a manifest PUT of `size` bytes (with `headers` added) piece by piece,
 * `gap` ms apart, before it reads anything, as Go clients do; what came back and the socket's errors are kept.
 */
async function putWholeBodyFirst(port: number, size: number, gap: number, headers = '') {
  const socket = connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const seen = { reply: '', errors: [] as Error[] };
  socket.on('data', (d: Buffer) => (seen.reply += d.toString('latin1')));
  socket.on('error', (err) => seen.errors.push(err));
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  const write = (chunk: Buffer | string): Promise<void> => new Promise((resolve) => socket.write(chunk, () => resolve()));
  const body = Buffer.alloc(size, 7);
  await write(`PUT /v2/alice/app/manifests/latest HTTP/1.1\r\nHost: x\r\n${headers}Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: ${size}\r\n\r\n`);
  // The body in pieces, some after the answer came: a server that closed after answering resets these writes.
  for (let at = 0; at < size; at += 1024 * 1024) {
    await write(body.subarray(at, at + 1024 * 1024));
    await new Promise((r) => setTimeout(r, gap));
  }
  return { socket, seen, closed, write };
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
    const { socket, seen, closed } = await putWholeBodyFirst(reg.port, 5 * 1024 * 1024, 40, 'Connection: close\r\n');
    socket.end();
    await closed;
    expect(seen.errors).toEqual([]);
    expect(seen.reply).toMatch(/^HTTP\/1\.1 413 /);
    expect(seen.reply).toContain('TOO_LARGE');
  });

  // 500 ms apart, the body takes 4 s: longer than the 2 s a silent connection is given, though it never falls silent.
  test.each([40, 500])('a client that writes its whole body before reading (as Go clients do), a piece every %i ms, is not reset: it reads the answer, and may go on', async (gap) => {
    const { socket, seen, write } = await putWholeBodyFirst(reg.port, 8 * 1024 * 1024, gap);
    expect(seen.errors).toEqual([]);
    // Refused from its Content-Length alone (manifests are at most 4 MiB), before any byte was read.
    expect(seen.reply).toMatch(/^HTTP\/1\.1 413 /);
    // The body came whole: the connection serves the next request.
    seen.reply = '';
    await write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 200));
    expect(seen.reply).toMatch(/^HTTP\/1\.1 200 /);
    socket.destroy();
  });
});
