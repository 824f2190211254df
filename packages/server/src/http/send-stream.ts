import { read } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { closeFile, takeFile, type FileRange } from '@wharf/registry-core';
import type { Context } from 'koa';

/** Largest read buffer per send (two per send): big reads cost the least CPU per GiB. */
const CHUNK = 1024 * 1024;
/** Smallest read buffer per send, however many run at once. */
const MIN_CHUNK = 64 * 1024;
/** Read buffers of all sends together, at most (until MIN_CHUNK is reached): bounds memory under many clients. */
const BUFFER_BUDGET = 16 * 1024 * 1024;
/** A fill's bytes not yet on disk are sent from memory only while fewer than this wait for the socket. */
const MEMORY_SEND_BACKLOG = 256 * 1024;
/** Sends running now, which share BUFFER_BUDGET. */
let activeSends = 0;

/**
 * Read buffers of finished sends, by size, for the next ones: without them every pull allocates its two
 * buffers afresh, and the dead ones wait for a garbage collection V8 starts only after tens of MiB of
 * them (the 8-stream pull bench). Holds at most BUFFER_BUDGET; only the sizes chunkSize() gives.
 */
const spare = new Map<number, Buffer[]>();
let spareBytes = 0;

function takeBuffer(size: number): Buffer {
  const list = spare.get(size);
  const reused = list?.pop();
  if (reused) {
    spareBytes -= size;
    return reused;
  }
  // Sends now use another size (more or fewer run at once): the spares of the old size would only
  // sit next to the new buffers, so they are let go.
  if (!list && spareBytes > 0) {
    spare.clear();
    spareBytes = 0;
  }
  return Buffer.allocUnsafe(size);
}

/** Bytes of read buffers waiting for the next send (for tests and metrics). */
export function spareSendBufferBytes(): number {
  return spareBytes;
}

/** Only once every write from `buffer` has completed: a buffer a socket may still read is never reused. */
function giveBack(buffer: Buffer): void {
  const size = buffer.length;
  if (size < MIN_CHUNK || size % MIN_CHUNK !== 0 || spareBytes + size > BUFFER_BUDGET) return;
  const list = spare.get(size) ?? [];
  list.push(buffer);
  spare.set(size, list);
  spareBytes += size;
}

/**
 * Sends a blob body straight to the socket with the headers Koa has collected, instead of through
 * Koa's response handling (measured here: about twice the pull throughput). A blob file, complete or
 * still being filled by the proxy, is sent from its descriptor through two reused buffers, so a pull
 * allocates nothing per chunk and the garbage collector stays quiet (with 16 clients on one cold fill,
 * per-chunk buffers kept V8 in major collections a quarter of the time); any other stream is piped.
 * Headers are complete at this point: an error mid-body can only cut the connection.
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
 * Sends a file's range through two buffers sized from the shared budget: a slow client holds two
 * chunks of memory. A file still being filled is sent as its `next` allows: from the file, or from
 * the fill's memory for bytes not on disk yet, and its end only once the fill is verified.
 */
async function sendFile(file: FileRange, res: ServerResponse): Promise<void> {
  // Small blobs (configs, most layers of a slim image) get buffers their size, not two full chunks;
  // with many clients at once, each gets a smaller share of the budget.
  activeSends += 1;
  try {
    await sendChunks(file, res, Math.min(chunkSize(), Math.max(1, file.end - file.start + 1)));
  } finally {
    activeSends -= 1;
  }
}

function chunkSize(): number {
  const share = Math.floor(BUFFER_BUDGET / (2 * activeSends) / MIN_CHUNK) * MIN_CHUNK;
  return Math.max(MIN_CHUNK, Math.min(CHUNK, share));
}

/**
 * Reads the next chunk into one buffer while the other is being written. A buffer is refilled only
 * after its write has been handed to the kernel (the write callback), and no more than two chunks'
 * worth of bytes wait for the socket, which paces reads to the client.
 */
async function sendChunks(file: FileRange, res: ServerResponse, size: number): Promise<void> {
  // At most this many bytes wait for the socket: the memory a slow client holds.
  const maxInFlight = 2 * size;
  const buffers = [takeBuffer(size), takeBuffer(size)];
  const bufferWrites: (Promise<void> | undefined)[] = [undefined, undefined];
  // Writes handed to the socket and not yet flushed, oldest first; they complete in order.
  const inFlight: { done: Promise<void>; bytes: number }[] = [];
  let inFlightBytes = 0;
  const gone = new Promise<never>((_, reject) => {
    res.once('close', () => reject(new Error('client went away')));
  });
  gone.catch(() => undefined);
  const write = (chunk: Buffer): Promise<void> => {
    const done = new Promise<void>((resolve, reject) => {
      res.write(chunk, (err) => (err ? reject(err) : resolve()));
    });
    done.catch(() => undefined);
    inFlight.push({ done, bytes: chunk.length });
    inFlightBytes += chunk.length;
    return done;
  };
  let position = file.start;
  for (let slot = 0; position <= file.end; ) {
    while (inFlightBytes >= maxInFlight) {
      const oldest = inFlight.shift()!;
      await Promise.race([oldest.done, gone]);
      inFlightBytes -= oldest.bytes;
    }
    // Bytes still in a fill's memory only while this client keeps up: a backlog of shared chunks
    // would outlive young-generation collections and keep V8 in major ones (16 clients on one fill).
    const next = file.next ? await Promise.race([file.next(position, inFlightBytes < MEMORY_SEND_BACKLOG), gone]) : file.end - position + 1;
    if (typeof next !== 'number') {
      // A fill's bytes not on disk yet: sent from its memory, no copy.
      position += next.length;
      write(next);
      continue;
    }
    if (next === 0) throw new Error('blob file ended before its recorded size');
    if (bufferWrites[slot]) await Promise.race([bufferWrites[slot], gone]);
    const length = Math.min(size, next, file.end - position + 1);
    const bytes = await readInto(file.fd, buffers[slot]!, length, position);
    if (bytes === 0) throw new Error('blob file is shorter than its recorded size');
    position += bytes;
    bufferWrites[slot] = write(buffers[slot]!.subarray(0, bytes));
    slot = 1 - slot;
  }
  // An empty range sent nothing above: its end, too, waits for a fill's verification.
  if (file.next) await Promise.race([file.next(position), gone]);
  await Promise.race([Promise.all(inFlight.map((w) => w.done)), gone]);
  // Every write has completed (a failure above leaves both buffers to the garbage collector).
  for (const buffer of buffers) giveBack(buffer);
  await new Promise<void>((resolve) => res.end(resolve));
}
