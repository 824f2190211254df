import { read } from 'node:fs';
import { STATUS_CODES } from 'node:http';
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { RegistryError, SERVER_WAIT, closeFile, fullGcSoon, takeFile, type FileRange, type HeldBytes } from '@wharf/registry-core';
import type { Context } from 'koa';
import { onConnectionClose } from './connection-close.js';
import { errorStatus } from './error-status.js';
import { SUCCESS_ONLY_HEADERS, errorBody } from './oci-errors.js';
import { reasonPhrase } from './reason-phrase.js';
import { ReadBufferPool, SendBuffers } from './read-buffers.js';
import { holdIdleTimeout } from './server-wait.js';
import { SharedReads } from './shared-reads.js';
import { UntilGone } from './until-gone.js';

/**
 * Largest read buffer of a send (two per send): big reads cost the least CPU per GiB. One 1 GiB pull
 * next to distribution's in the same run, server CPU per GiB (medians of 6): 1 MiB buffers 0.40
 * against distribution's 0.35, 2 MiB 0.35, 4 MiB no better than 2. Each read is a round trip to
 * libuv's thread pool, several futex wake-ups, which this VM makes dear.
 */
const CHUNK = 2 * 1024 * 1024;
/** Smallest read buffer of a send, however many run at once. */
const MIN_CHUNK = 64 * 1024;
/**
 * Read buffers of all sends together, spares included, at most (until MIN_CHUNK is reached): a send
 * alone gets 2 MiB buffers, two to eight 1 MiB, sixteen 512 KiB.
 */
const BUFFER_BUDGET = 16 * 1024 * 1024;

/**
 * Spare read buffers are let go (and collected) after this long without a blob send. Eight 1 GiB
 * pulls followed 0.3 s later by 64 connections of manifest GETs peaked at 119 MiB with 5 s (the
 * spares were still there when the load began) and at 108 MiB with 1 s. A full collection costs a
 * few milliseconds, at most once per idle second.
 */
const SPARES_IDLE_MS = 1000;

const readBuffers = new ReadBufferPool(BUFFER_BUDGET, CHUNK, MIN_CHUNK, SPARES_IDLE_MS, fullGcSoon);
/** A file segment shared by the clients of one proxy fill. */
const SEGMENT = 1024 * 1024;
/**
 * File segments shared by the clients of one proxy fill, all fills together. Four segments serve 16
 * clients of one fill as well as sixteen did (1,280-1,330 against 1,230 MiB/s on a 1 GiB blob): the
 * clients keep close together, and a client that falls behind reads on its own.
 */
const SHARED_BUDGET = 4 * 1024 * 1024;
const sharedReads = new SharedReads(SEGMENT, SHARED_BUDGET);

/** Bytes of read buffers waiting for the next send (for tests and metrics). */
export function spareSendBufferBytes(): number {
  return readBuffers.spareBytes;
}

/** Bytes of read buffers sends hold now (for tests and metrics). */
export function heldSendBufferBytes(): number {
  return readBuffers.heldBytes;
}

/**
 * Sends a blob body straight to the socket with the headers Koa has collected, instead of through
 * Koa's response handling (measured here: about twice the pull throughput). A blob file, complete or
 * still being filled by the proxy, is sent from its descriptor through two reused buffers, so a pull
 * allocates nothing per chunk and the garbage collector stays quiet (with 16 clients on one cold fill,
 * per-chunk buffers kept V8 in major collections a quarter of the time); any other stream is piped.
 * Headers are complete at this point; a blob file's go out with its first bytes, so that a fill that
 * fails before any is answered with its error (a 502), and an error mid-body cuts the connection.
 */
export function sendStream(ctx: Context, body: Readable): void {
  ctx.respond = false;
  const res = ctx.res;
  const head = (): void => {
    if (!res.headersSent) res.writeHead(ctx.status, ctx.response.headers as Record<string, string | string[]>);
  };
  const file = takeFile(body);
  if (file) {
    // The head goes with the first bytes: a fill that fails before any (a blob whose every byte
    // waited for its digest, which did not match) is answered with its error, not a connection
    // closed before any status line.
    sendFile(file, res, ctx.req.socket, head).then(
      () => {
        closeFile(file.fd);
        file.release?.();
      },
      (err: unknown) => {
        closeFile(file.fd);
        file.release?.();
        if (!answeredError(ctx, err)) res.destroy();
      },
    );
    return;
  }
  head();
  // A response queued behind another on its connection (pipelined GETs) hears nothing when that
  // connection closes: it is destroyed then, which ends the pipeline and lets go of its source.
  const forget = onConnectionClose(ctx.req.socket, () => void res.destroy());
  // While a body holds bytes back for the server's sake (a range waiting for the whole blob's
  // digest), the pause is no client that stopped reading: the idle timeout is off for that wait only.
  let release: (() => void) | undefined;
  const onServerWait = (waiting: boolean): void => {
    if (waiting) release ??= holdIdleTimeout(ctx.req.socket);
    else {
      release?.();
      release = undefined;
    }
  };
  body.on(SERVER_WAIT, onServerWait);
  pipeline(body, res)
    .catch(() => {
      // The client went away or the source failed: pipeline has destroyed the response.
    })
    .finally(() => {
      body.off(SERVER_WAIT, onServerWait);
      release?.();
      forget();
    });
}

function readInto(fd: number, buffer: Buffer, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, buffer, 0, length, position, (err, bytes) => (err ? reject(err) : resolve(bytes)));
  });
}

/**
 * Answers `err` in place of the body when none of it was sent (nor its head): the OCI error a route
 * would have thrown, without the blob's headers. False when that is too late, or `err` says nothing
 * to tell the client (the client went away).
 */
function answeredError(ctx: Context, err: unknown): boolean {
  const res = ctx.res;
  if (res.headersSent || res.destroyed || !(err instanceof RegistryError)) return false;
  const status = errorStatus(err, false);
  const body = JSON.stringify(errorBody(err));
  for (const h of [...SUCCESS_ONLY_HEADERS, 'content-range']) res.removeHeader(h);
  ctx.state.error = { code: err.code, reason: err.message };
  res.writeHead(status, reasonPhrase(STATUS_CODES[status] ?? 'Error', err.message), { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) });
  res.end(body);
  return true;
}

/**
 * Sends a file's range through two buffers sized from the shared budget: a slow client holds two
 * chunks of memory. A file still being filled is sent as its `next` allows, and its end only once the
 * fill is verified.
 */
async function sendFile(file: FileRange, res: ServerResponse, connection: Socket, head: () => void): Promise<void> {
  // Taken at the first read of its own: the clients of a fill mostly send from the segments they
  // share. Small blobs (configs, most layers of a slim image) get a buffer their size.
  const buffers = new SendBuffers(readBuffers, 2);
  const untilGone = new UntilGone(res, connection);
  let finished = false;
  try {
    await sendChunks(file, res, buffers, untilGone, head);
    finished = true;
    head();
    // The end's callback never comes when the client is gone (an empty blob's headers, say, to a
    // connection reset before them): the descriptor would stay open.
    await untilGone.wait(new Promise<void>((resolve) => res.end(resolve)));
  } finally {
    untilGone.dispose();
    // Reused once no write from them can still be sent. After a failure the connection is destroyed
    // (sendStream), and from then on nothing is written from them: they go back to the pool when it
    // closes. Dropped instead, each abandoned pull left up to 4 MiB to the garbage collector and
    // every fourth one cost a full collection (400 pulls cut after 256 KiB: 101 of them).
    if (finished) buffers.release(true);
    else onConnectionClose(connection, () => buffers.release(true));
  }
}

/**
 * Sends the range chunk by chunk: from the segments shared by every send of the same content
 * (`file.key`), or, with none free, through this send's two buffers, one read while the other is written. At most `maxInFlight` bytes wait for the
 * socket (counted down as the kernel takes them), which paces reads to the client. Resolves once
 * every write has completed.
 */
async function sendChunks(file: FileRange, res: ServerResponse, buffers: SendBuffers, untilGone: UntilGone, head: () => void): Promise<void> {
  // The memory a slow client holds: two segments' worth, or two of its own buffers once it uses them.
  let maxInFlight = 2 * SEGMENT;
  const bufferWrites: (Promise<void> | undefined)[] = [undefined, undefined];
  let inFlightBytes = 0;
  let failure: Error | undefined;
  let wake: (() => void) | undefined;
  const write = (chunk: Buffer, onDone?: () => void): Promise<void> => {
    head();
    inFlightBytes += chunk.length;
    const done = new Promise<void>((resolve, reject) => {
      res.write(chunk, (err) => {
        inFlightBytes -= chunk.length;
        onDone?.();
        if (err) failure ??= err;
        wake?.();
        if (err) reject(err);
        else resolve();
      });
    });
    done.catch(() => undefined);
    return done;
  };
  /** Until at most `bytes` wait for the socket. */
  const drainTo = async (bytes: number): Promise<void> => {
    while (inFlightBytes > bytes) {
      await untilGone.wait(new Promise<void>((resolve) => (wake = resolve)));
      wake = undefined;
      if (failure) throw failure;
    }
  };
  /**
   * Waits for the fill to have bytes at `at` (or, at the range's end, to be verified). That wait is
   * the server's, not a client that stopped reading: the socket's idle timeout is off until it ends
   * (the fill's own upstream timeouts bound it; a client that does not read is caught by the next
   * wait for the socket). Else a range ending before the blob's end, whose last byte waits for the
   * whole blob's digest, was cut at `idle_timeout` on any download slower than that.
   */
  const fillReaches = async (at: number): Promise<number> => {
    const release = res.socket ? holdIdleTimeout(res.socket) : undefined;
    try {
      return await untilGone.wait(file.next!(at));
    } finally {
      release?.();
    }
  };
  // Shared segments this send's writes point into. A write the socket never finishes (it was
  // destroyed) never calls back: what is left is let go once the socket has closed.
  const held = new Set<HeldBytes>();
  let position = file.start;
  try {
    await sendAll();
  } finally {
    if (held.size > 0) {
      const releaseAll = (): void => {
        for (const chunk of held) chunk.release();
        held.clear();
      };
      const socket = res.socket;
      if (!socket || socket.destroyed) releaseAll();
      else socket.once('close', releaseAll);
    }
  }

  async function sendAll(): Promise<void> {
    for (let slot = 0; position <= file.end; ) {
      await drainTo(maxInFlight - 1);
      const next = file.next ? await fillReaches(position) : file.end - position + 1;
      if (next === 0) throw new Error('blob file ended before its recorded size');
      // A fill's newest bytes, in memory (those not on disk yet are nowhere else); then shared reads of the file.
      const inMemory = file.view?.(position, position + next);
      // From the file, only what is on disk (FileRange.written): past it, a hole reads as zeros.
      const readable = inMemory || !file.written ? next : Math.min(next, file.written() - position);
      if (readable <= 0) throw new Error('blob fill bytes are neither in memory nor on disk');
      const shared = inMemory ?? (file.key === undefined ? undefined : await sharedReads.chunk(file.fd, file.key, position, position + readable));
      if (shared) {
        if (res.destroyed) {
          shared.release();
          throw new Error('client went away');
        }
        position += shared.bytes.length;
        held.add(shared);
        write(shared.bytes, () => {
          held.delete(shared);
          shared.release();
        });
        continue;
      }
      const previous = bufferWrites[slot];
      if (previous) await untilGone.wait(previous);
      const into = buffers.get(slot, file.end - position + 1);
      maxInFlight = 2 * into.length;
      const length = Math.min(into.length, readable, file.end - position + 1);
      const bytes = await readInto(file.fd, into, length, position);
      if (bytes === 0) throw new Error('blob file is shorter than its recorded size');
      position += bytes;
      bufferWrites[slot] = write(into.subarray(0, bytes));
      slot = 1 - slot;
    }
    // An empty range sent nothing above: its end, too, waits for a fill's verification.
    if (file.next) await fillReaches(position);
    await drainTo(0);
  }
}
