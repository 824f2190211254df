import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import Koa from 'koa';
import type { FileRange, TakesFile } from '@wharf/registry-core';
import { sendStream } from '../../src/http/send-stream.js';

const MiB = 1024 * 1024;
const ON_DISK = 100 * 1024;

/**
 * The sender's side of a proxy fill's contract (FileRange.written): bytes not on disk yet are sent
 * from the fill's memory, and the file is read only as far as the disk holds it. A fill writes two
 * blocks at once, so a later block can land before an earlier one, and the hole between them reads
 * as zeros: a sender that read past `written` sent zeros as blob content.
 */
describe('sending a fill whose file has a hole past what is written', () => {
  const bytes = randomBytes(2 * MiB);
  let dir: string;
  let server: Server;
  let url: string;

  /**
   * A body whose file holds [0, ON_DISK) and [1 MiB, 2 MiB), the second block having landed before
   * the first; as in a fill, every byte past `written` is still in memory, block by block.
   */
  function fillBody(key: string | undefined): Readable & TakesFile {
    const path = join(dir, `fill-${key ?? 'own'}`);
    const fd = openSync(path, 'w+');
    writeSync(fd, bytes, 0, ON_DISK, 0);
    writeSync(fd, bytes, MiB, MiB, MiB);
    const body = new Readable({ read() {} }) as Readable & TakesFile;
    body.takeFile = (): FileRange => ({
      fd,
      start: 0,
      end: bytes.length - 1,
      ...(key !== undefined ? { key } : {}),
      // Every byte has arrived and is verified.
      next: async (position) => bytes.length - position,
      view: (position, limit) => {
        if (position < ON_DISK) return undefined;
        const blockEnd = (Math.floor(position / MiB) + 1) * MiB;
        return { bytes: bytes.subarray(position, Math.min(limit, blockEnd)), release: () => undefined };
      },
      written: () => ON_DISK,
    });
    return body;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'wharf-fill-send-'));
    const app = new Koa();
    app.use((ctx) => {
      ctx.status = 200;
      ctx.set('content-length', String(bytes.length));
      // Through the segments shared by a fill's clients, or (no key) through the send's own buffers.
      sendStream(ctx, fillBody(ctx.query.key === undefined ? undefined : String(ctx.query.key)));
    });
    server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  });

  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  test.each([
    ['shared segments', '?key=fill-a'],
    ["the send's own buffers", ''],
  ])('through %s, every byte is the blob, none the hole', async (_, query) => {
    const got = Buffer.from(await (await fetch(url + query)).arrayBuffer());
    expect(got.length).toBe(bytes.length);
    const firstWrong = got.findIndex((b, i) => b !== bytes[i]);
    expect(firstWrong).toBe(-1);
  });
});
