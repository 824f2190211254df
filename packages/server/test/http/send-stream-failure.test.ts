import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import type { Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import Koa from 'koa';
import { RegistryError, type FileRange, type TakesFile } from '@wharf/registry-core';
import { sendStream } from '../../src/http/send-stream.js';

const SIZE = 1024 * 1024;

/**
 * A proxy fill that fails between the bytes its first reader was promised and that reader's first
 * read (a blob arriving in one burst, its digest wrong): the fuzzing of the thirty-eighth session saw
 * such 1 MB blobs answered with a connection closed before any status line ("Empty reply from
 * server"; docker and containerd report an EOF), while smaller and larger ones got a 502 or a cut body.
 */
describe('a send whose fill fails before any byte went out', () => {
  let dir: string;
  let server: Server;
  let port: number;

  /** A fill body: `failAt` is the position whose read fails (0: the first), with the fill's error. */
  function failingBody(failAt: number): Readable & TakesFile {
    const path = join(dir, `fill-${failAt}`);
    const fd = openSync(path, 'w+');
    writeSync(fd, Buffer.alloc(SIZE, 7), 0, SIZE, 0);
    const body = new Readable({ read() {} }) as Readable & TakesFile;
    body.takeFile = (): FileRange => ({
      fd,
      start: 0,
      end: SIZE - 1,
      next: async (position) => {
        if (position < failAt) return failAt - position;
        // Past the first bytes, the fill fails a moment later (its digest, at its end).
        if (position > 0) await new Promise((resolve) => setTimeout(resolve, 50));
        throw new RegistryError('UPSTREAM_ERROR', 'the upstream download of this blob failed; try again', { digest: 'sha256:x' });
      },
      written: () => SIZE,
    });
    return body;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'wharf-send-failure-'));
    const app = new Koa();
    app.use((ctx) => {
      ctx.status = 200;
      ctx.set('Docker-Content-Digest', 'sha256:x');
      ctx.set('Cache-Control', 'max-age=31536000');
      ctx.set('Content-Type', 'application/octet-stream');
      ctx.set('Docker-Distribution-API-Version', 'registry/2.0');
      ctx.length = SIZE;
      sendStream(ctx, failingBody(Number(ctx.query.failAt)));
    });
    server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  test("nothing sent yet: the client gets the fill's error as an OCI 502, without the blob's headers", async () => {
    const res = await fetch(`http://127.0.0.1:${port}/?failAt=0`);
    expect(res.status).toBe(502);
    expect(res.statusText).toBe('Bad Gateway: the upstream download of this blob failed; try again');
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
    for (const h of ['docker-content-digest', 'cache-control']) expect([h, res.headers.get(h)]).toEqual([h, null]);
    expect(await res.json()).toEqual({ errors: [{ code: 'UPSTREAM_ERROR', message: 'the upstream download of this blob failed; try again', detail: { digest: 'sha256:x' } }] });
  });

  test('bytes sent already: the connection is cut, never a complete-looking body nor an error after the 200', async () => {
    // Raw, to see exactly what came: the 200's head and some bytes, then the end of the connection.
    const received = await new Promise<Buffer>((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => socket.write('GET /?failAt=65536 HTTP/1.1\r\nHost: x\r\n\r\n'));
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('close', () => resolve(Buffer.concat(chunks)));
      socket.on('error', reject);
    });
    const text = received.toString('latin1');
    expect(text.slice(0, text.indexOf('\r\n'))).toBe('HTTP/1.1 200 OK');
    expect(text).toContain(`\r\ncontent-length: ${SIZE}\r\n`);
    const body = received.length - (text.indexOf('\r\n\r\n') + 4);
    expect(body).toBeGreaterThan(0);
    expect(body).toBeLessThan(SIZE);
    expect(text).not.toContain('UPSTREAM_ERROR');
  });
});
