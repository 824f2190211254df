import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { openSync, closeSync, read } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { RegistryError, hashToDigest, newHash, parseDigest, type BlobInfo, type BlobStore, type ByteRange, type Digest } from '@wharf/registry-core';
import type { UpstreamBlob } from './upstream.js';

const READ_CHUNK = 256 * 1024;
/** Bytes received from the upstream and not yet written, per fill, before the upstream is paused. */
const MAX_PENDING = 4 * 1024 * 1024;

type FillState = 'running' | 'done' | 'failed';

/**
 * One download of one blob into a temp file. Any number of readers tail the file as it grows, each at
 * its own pace: the fill never waits for a reader, and a reader going away never stops the fill. A
 * fill whose digest or size is wrong is deleted and every reader fails (its client's connection is
 * cut), so nobody ever receives a complete-looking corrupt blob.
 */
export class BlobFill {
  readonly events = new EventEmitter();
  readonly done: Promise<BlobInfo>;
  /** Bytes on disk in the temp file, readable by tailing readers. */
  written = 0;
  /** Bytes received from the upstream (some may still wait for the disk). */
  received = 0;
  state: FillState = 'running';
  /**
   * Set once every byte is in and matches the digest, before the file is synced and moved into the
   * store: from then on readers may send the last byte, and nothing that happens to the cache copy
   * (a failed fsync, say) changes what they send.
   */
  verified = false;
  error: Error | undefined;
  /** Readers caught up with the download, handed each chunk as it arrives. */
  private readonly followers = new Set<TailReader>();

  constructor(
    readonly digest: Digest,
    readonly size: number | undefined,
    readonly tempPath: string,
    private readonly finalPath: string,
    run: (fill: BlobFill) => Promise<BlobInfo>,
  ) {
    this.events.setMaxListeners(0);
    this.done = run(this).then(
      (blob) => {
        this.state = 'done';
        this.release();
        this.events.emit('progress');
        return blob;
      },
      (err: unknown) => {
        this.error = err instanceof Error ? err : new Error(String(err));
        this.state = 'failed';
        this.release();
        this.events.emit('progress');
        throw this.error;
      },
    );
    // Readers and the fills map observe failures; an unobserved one must not crash the process.
    this.done.catch(() => undefined);
  }

  /** Every byte is in and matches the digest: readers may finish. */
  markVerified(): void {
    this.verified = true;
    this.release();
    this.events.emit('progress');
  }

  /** Hands a chunk received at `offset` to the readers following the download live. */
  deliver(chunk: Buffer, offset: number): void {
    for (const reader of this.followers) reader.offer(chunk, offset);
  }

  follow(reader: TailReader): void {
    this.followers.add(reader);
  }

  unfollow(reader: TailReader): void {
    this.followers.delete(reader);
  }

  /** The fill ended: live readers go back to the file, which now has everything (or to the failure). */
  private release(): void {
    for (const reader of [...this.followers]) reader.unfollow();
  }

  /** A stream of the blob (or a range of it), from the bytes already written and those still to come. */
  reader(range?: ByteRange): Readable {
    let fd: number;
    try {
      fd = openSync(this.tempPath, 'r');
    } catch {
      try {
        // The fill finished and renamed its file between our check and the open: read the final file.
        fd = openSync(this.finalPath, 'r');
      } catch {
        // Neither: the fill failed and removed its file just now.
        throw fillFailed(this.digest, this.error);
      }
    }
    return new TailReader(this, fd, range?.start ?? 0, range?.end);
  }
}

/**
 * A reader that has caught up with the download is handed each chunk as it arrives from the upstream
 * (no disk read-back); one that falls this far behind its client goes back to reading the file.
 */
const LIVE_BUFFER_LIMIT = 2 * 1024 * 1024;

/**
 * One client's stream of a fill. It reads what is already in the temp file, then, once caught up,
 * takes the upstream's chunks straight from the fill ("live"). A slow client never slows the fill:
 * when more than LIVE_BUFFER_LIMIT bytes wait for it, it drops back to the file, which holds
 * everything the fill received.
 */
class TailReader extends Readable {
  private position: number;
  private reading = false;
  private waiting = false;
  private live = false;

  constructor(
    private readonly fill: BlobFill,
    private readonly fd: number,
    start: number,
    private readonly end: number | undefined,
  ) {
    super({ highWaterMark: READ_CHUNK });
    this.position = start;
  }

  /** The last byte this reader sends, when known. */
  private get last(): number | undefined {
    return this.end ?? (this.fill.size !== undefined ? this.fill.size - 1 : undefined);
  }

  override _read(): void {
    if (this.reading || this.waiting || this.live || this.destroyed) return;
    const last = this.last;
    // The reader's last byte (and the end of an empty blob) waits until the fill is verified: with
    // Content-Length sent, a client that got every byte would take a corrupt blob for a complete one.
    const verified = this.fill.verified || this.fill.state === 'done';
    if (last !== undefined && this.position > last && verified) {
      this.push(null);
      return;
    }
    const available = verified || last === undefined ? this.fill.written : Math.min(this.fill.written, last);
    if (this.position >= available) {
      if (verified) {
        this.push(null);
        return;
      }
      if (this.fill.state === 'failed') {
        this.destroy(this.fill.error);
        return;
      }
      if (this.end === undefined && this.position === this.fill.received) {
        this.live = true;
        this.fill.follow(this);
        return;
      }
      this.waiting = true;
      this.fill.events.once('progress', () => {
        this.waiting = false;
        this._read();
      });
      return;
    }
    let length = Math.min(READ_CHUNK, available - this.position);
    if (last !== undefined) length = Math.min(length, last - this.position + 1);
    this.reading = true;
    read(this.fd, Buffer.allocUnsafe(length), 0, length, this.position, (err, bytes, buffer) => {
      this.reading = false;
      if (err) {
        this.destroy(err);
        return;
      }
      if (this.fill.state === 'failed' && !this.fill.verified) {
        this.destroy(this.fill.error);
        return;
      }
      this.position += bytes;
      if (this.push(buffer.subarray(0, bytes))) this._read();
    });
  }

  /** A chunk the fill just received at `offset`, while this reader is live. */
  offer(chunk: Buffer, offset: number): void {
    if (this.destroyed) return;
    if (offset !== this.position) {
      this.unfollow();
      return;
    }
    const last = this.last;
    // Everything but the final byte, which only the verified file gives out.
    const take = last === undefined ? chunk.length : Math.min(chunk.length, last - this.position);
    if (take > 0) {
      this.position += take;
      this.push(take === chunk.length ? chunk : chunk.subarray(0, take));
    }
    if (take < chunk.length || this.readableLength > LIVE_BUFFER_LIMIT) this.unfollow();
  }

  /** Back to reading the file (the fill ended, or this client fell behind). */
  unfollow(): void {
    if (!this.live) return;
    this.live = false;
    this.fill.unfollow(this);
    // With a full buffer, the stream itself asks for more once the client has taken some.
    if (!this.destroyed && this.readableLength < this.readableHighWaterMark) this._read();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    if (this.live) {
      this.live = false;
      this.fill.unfollow(this);
    }
    try {
      closeSync(this.fd);
    } catch {
      // already closed
    }
    callback(err);
  }
}

/**
 * Copies `body` into `handle` from offset 0, passing every chunk to `inspect` (hash, size check) as it
 * arrives. Receiving and writing overlap: chunks that come in while a write runs are queued and go to
 * disk together in the next writev, and the upstream is paused only while more than MAX_PENDING bytes
 * wait for the disk. Awaiting each write before reading on would stall the upstream connection once
 * per chunk. `fill.written` grows, and tailing readers wake, as each batch lands.
 */
function drainInto(body: Readable, handle: FileHandle, fill: BlobFill, inspect: (chunk: Buffer) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let writing = false;
    let ended = false;
    let failed = false;
    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      reject(err);
    };
    const flush = async (): Promise<void> => {
      writing = true;
      try {
        while (pending.length > 0 && !failed) {
          const batch = pending;
          pending = [];
          const bytes = await writeAll(handle, batch, fill.written);
          fill.written += bytes;
          pendingBytes -= bytes;
          fill.events.emit('progress');
          if (body.isPaused() && pendingBytes <= MAX_PENDING / 2) body.resume();
        }
      } catch (err) {
        fail(err);
      } finally {
        writing = false;
      }
      if (ended && !failed) resolve();
    };
    body.on('data', (chunk: Buffer) => {
      if (failed) return;
      try {
        inspect(chunk);
      } catch (err) {
        fail(err);
        return;
      }
      const offset = fill.received;
      fill.received += chunk.length;
      fill.deliver(chunk, offset);
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes > MAX_PENDING) body.pause();
      if (!writing) void flush();
    });
    body.once('end', () => {
      ended = true;
      if (!writing && !failed) resolve();
    });
    // Kept for the stream's life: an error after a failure (the caller destroys the body) must not be unhandled.
    body.on('error', fail);
  });
}

/** Writes every byte of `buffers` at `position`, resuming after short writes; resolves with the byte count. */
async function writeAll(handle: FileHandle, buffers: Buffer[], position: number): Promise<number> {
  let total = 0;
  for (const b of buffers) total += b.length;
  let done = 0;
  let rest = buffers;
  while (done < total) {
    const { bytesWritten } = await handle.writev(rest, position + done);
    if (bytesWritten === 0) throw new Error('the disk accepted no bytes of the blob');
    done += bytesWritten;
    if (done < total) rest = remainder(buffers, done);
  }
  return total;
}

function remainder(buffers: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of buffers) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

/** What a client is told when the download it waited on failed: the upstream's fault, a 502. */
export function fillFailed(digest: Digest, cause: Error | undefined): RegistryError {
  return new RegistryError('UPSTREAM_ERROR', 'the upstream download of this blob failed; try again', {
    digest,
    ...(cause ? { reason: cause.message } : {}),
  });
}

export interface BlobFillsOptions {
  readonly store: BlobStore & { pathOf(digest: Digest): string };
  readonly tempRoot: string;
  /** Called once a fill is verified and in place. */
  readonly onStored?: (blob: BlobInfo) => void | Promise<void>;
}

/** Fills in flight by digest: N concurrent requests for one missing blob share one upstream download. */
export class BlobFills {
  private readonly inflight = new Map<Digest, Promise<BlobFill | undefined>>();
  /** How many upstream downloads were started (for tests and metrics). */
  started = 0;

  constructor(private readonly options: BlobFillsOptions) {}

  get running(): number {
    return this.inflight.size;
  }

  /**
   * Resolves once every fill in flight now has ended, verified or failed: a graceful shutdown lets
   * them finish before it closes the database their index entries go to.
   */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()].map(async (starting) => (await starting)?.done));
  }

  /** The fill of `digest` in flight, if any. */
  current(digest: Digest): Promise<BlobFill | undefined> | undefined {
    return this.inflight.get(digest);
  }

  /**
   * Joins the fill of `digest`, starting it with `fetch` when none runs. Resolves once the upstream has
   * answered (undefined when it has no such blob), so the caller can send headers and tail the fill.
   */
  join(digest: Digest, fetch: () => Promise<UpstreamBlob | undefined>): Promise<BlobFill | undefined> {
    const existing = this.inflight.get(digest);
    if (existing) return existing;
    const starting = this.start(digest, fetch);
    this.inflight.set(digest, starting);
    starting.then(
      (fill) => {
        if (!fill) this.inflight.delete(digest);
        else void fill.done.finally(() => this.inflight.delete(digest)).catch(() => undefined);
      },
      () => this.inflight.delete(digest),
    );
    return starting;
  }

  private async start(digest: Digest, fetch: () => Promise<UpstreamBlob | undefined>): Promise<BlobFill | undefined> {
    const upstream = await fetch();
    if (!upstream) return undefined;
    this.started += 1;
    const { store, tempRoot, onStored } = this.options;
    const temp = join(tempRoot, `fill-${randomUUID()}`);
    const handle = await open(temp, 'w', 0o644);
    const { algorithm } = parseDigest(digest);
    return new BlobFill(digest, upstream.size, temp, store.pathOf(digest), async (fill) => {
      const hash = newHash(algorithm);
      let adopted = false;
      try {
        await drainInto(upstream.body, handle, fill, (chunk) => {
          if (fill.size !== undefined && fill.received + chunk.length > fill.size) {
            throw new RegistryError('SIZE_INVALID', 'upstream sent more bytes than it announced', { digest, size: fill.size });
          }
          hash.update(chunk);
        });
        if (fill.size !== undefined && fill.written !== fill.size) {
          throw new RegistryError('SIZE_INVALID', 'upstream blob ended early', { digest, size: fill.size, received: fill.written });
        }
        const actual = hashToDigest(algorithm, hash);
        if (actual !== digest) {
          throw new RegistryError('DIGEST_INVALID', 'upstream blob does not match its digest', { digest, actual });
        }
        // Clients get their last byte now; making the cache copy durable is our business, not theirs.
        fill.markVerified();
        await handle.sync();
        await handle.close();
        const blob = { digest, size: fill.written };
        await store.adopt(temp, blob);
        adopted = true;
        await onStored?.(blob);
        return blob;
      } catch (err) {
        upstream.body.destroy();
        throw err;
      } finally {
        await handle.close().catch(() => undefined);
        if (!adopted) await rm(temp, { force: true });
      }
    });
  }
}
