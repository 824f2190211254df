import { read } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { closeFile, takeFile, type FileRange } from '@wharf/registry-core';
import type { Context } from 'koa';

const CHUNK = 1024 * 1024;

/**
 * Sends a blob body straight to the socket with the headers Koa has collected, instead of through
 * Koa's response handling (measured here: about twice the pull throughput). A local blob file is sent
 * from its descriptor through two reused buffers, so a pull allocates nothing per chunk and the garbage
 * collector stays quiet; any other stream (a proxy fill) is piped. Headers are complete at this point:
 * an error mid-body can only cut the connection.
 */
export function sendStream(ctx: Context, body: Readable): void {
  ctx.respond = false;
  const res = ctx.res;
  res.writeHead(ctx.status, ctx.response.headers as Record<string, string | string[]>);
  const file = takeFile(body);
  if (file) {
    sendFile(file, res).then(
      () => closeFile(file.fd),
      () => {
        closeFile(file.fd);
        res.destroy();
      },
    );
    return;
  }
  pipeline(body, res).catch(() => {
    // The client went away or the source failed: pipeline has destroyed the response.
  });
}

function readInto(fd: number, buffer: Buffer, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, buffer, 0, length, position, (err, bytes) => (err ? reject(err) : resolve(bytes)));
  });
}

/**
 * Reads the next chunk into one buffer while the other is being written. A buffer is refilled only
 * after its write has been handed to the kernel (the write callback), which also paces reads to the
 * client: a slow client holds at most two chunks of memory.
 */
async function sendFile(file: FileRange, res: ServerResponse): Promise<void> {
  // Small blobs (configs, most layers of a slim image) get buffers their size, not two full chunks.
  const size = Math.min(CHUNK, Math.max(1, file.end - file.start + 1));
  const buffers = [Buffer.allocUnsafe(size), Buffer.allocUnsafe(size)];
  const writes: (Promise<void> | undefined)[] = [undefined, undefined];
  const gone = new Promise<never>((_, reject) => {
    res.once('close', () => reject(new Error('client went away')));
  });
  gone.catch(() => undefined);
  let position = file.start;
  for (let i = 0; position <= file.end; i++) {
    const slot = i % 2;
    if (writes[slot]) await Promise.race([writes[slot], gone]);
    const length = Math.min(size, file.end - position + 1);
    const bytes = await readInto(file.fd, buffers[slot]!, length, position);
    if (bytes === 0) throw new Error('blob file is shorter than its recorded size');
    position += bytes;
    const chunk = buffers[slot]!.subarray(0, bytes);
    writes[slot] = new Promise<void>((resolve, reject) => {
      res.write(chunk, (err) => (err ? reject(err) : resolve()));
    });
    writes[slot]!.catch(() => undefined);
  }
  await Promise.race([Promise.all(writes), gone]);
  await new Promise<void>((resolve) => res.end(resolve));
}
