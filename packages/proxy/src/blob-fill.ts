import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { openSync, closeSync, read } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { RegistryError, hashToDigest, newHash, noteReceived, parseDigest, type BlobInfo, type BlobStore, type ByteRange, type Digest, type FileRange, type HeldBytes, type TakesFile } from '@wharf/registry-core';
import { FillWriter } from './fill-writer.js';
import type { UpstreamBlob } from './upstream.js';

const READ_CHUNK = 256 * 1024;
/**
 * Readers waiting for bytes in memory are woken once this many more came in (or a block went to
 * disk, or the fill ended), not for every chunk: 16 clients of one fill woken per 64 KiB chunk, each
 * sending it on its own, lost a third of their throughput.
 */
const WAKE_BYTES = 256 * 1024;
/** Fewer new bytes than WAKE_BYTES wake the readers after this long: a slow upstream's bytes still go out at once. */
const WAKE_MS = 5;

type FillState = 'running' | 'done' | 'failed';

/**
 * One download of one blob into a temp file. Any number of readers follow it, each at its own pace:
 * from the fill's memory while they keep up (each byte as soon as it arrives), from the file once
 * they fall behind. The fill never waits for a reader, and a reader going away never stops the fill. A fill whose digest or size is wrong is deleted and every
 * reader fails (its client's connection is cut), so nobody ever receives a complete-looking corrupt
 * blob.
 */
export class BlobFill {
  readonly events = new EventEmitter();
  readonly done: Promise<BlobInfo>;
  /** Where the bytes go: set once the temp file is open. */
  writer: FillWriter | undefined;
  /** `received` when readers were last woken. */
  private wokenAt = 0;
  private wakeTimer: NodeJS.Timeout | undefined;
  state: FillState = 'running';
  /**
   * Set once every byte is in and matches the digest, before the file is synced and moved into the
   * store: from then on readers may send the last byte, and nothing that happens to the cache copy
   * (a failed fsync, say) changes what they send.
   */
  verified = false;
  error: Error | undefined;
  /**
   * Who may read it: the upstream and repository that started it, and those that showed the upstream
   * has the blob for them too. A download is not a way into another upstream's (or repository's) blob.
   */
  readonly sources = new Set<string>();

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
        this.wake();
        return blob;
      },
      (err: unknown) => {
        this.error = err instanceof Error ? err : new Error(String(err));
        this.state = 'failed';
        this.wake();
        throw this.error;
      },
    );
    // Readers and the fills map observe failures; an unobserved one must not crash the process.
    this.done.catch(() => undefined);
  }

  /** Bytes on disk in the temp file. */
  get written(): number {
    return this.writer?.written ?? 0;
  }

  /** Bytes received from the upstream (those past `written` are in memory only). */
  get received(): number {
    return this.writer?.received ?? 0;
  }

  /** More bytes are on disk. */
  wrote(): void {
    this.wake();
  }

  /** More bytes are in memory. */
  got(): void {
    if (this.received - this.wokenAt >= WAKE_BYTES) this.wake();
    else this.wakeTimer ??= setTimeout(() => this.wake(), WAKE_MS);
  }

  private wake(): void {
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    this.wakeTimer = undefined;
    this.wokenAt = this.received;
    this.events.emit('progress');
  }

  /** Bytes from `position` up to `limit` still in memory, lent; undefined when they are on disk. */
  view(position: number, limit: number): HeldBytes | undefined {
    return this.writer?.view(position, limit);
  }

  /** Every byte is in and matches the digest: readers may finish. */
  markVerified(): void {
    this.verified = true;
    this.wake();
  }

  /**
   * How many bytes a reader whose last byte is `last` (undefined: the size is unknown) may read at
   * `position`, waiting until there are some; 0 at the end. The last byte waits until the blob is
   * verified: with Content-Length sent, a client that got every byte would take a corrupt blob for a
   * complete one. Rejects once the fill has failed.
   *
   * With `inMemory`, bytes received and not yet on disk count too: the reader sends them from memory
   * (`view`). Otherwise only what the file holds counts.
   */
  async next(position: number, last: number | undefined, inMemory = false): Promise<number> {
    for (;;) {
      const verified = this.verified || this.state === 'done';
      if (!verified && this.state === 'failed') throw fillFailed(this.digest, this.error);
      // Once the writer is closed (the fill ended or failed) its blocks are gone: only the file counts.
      const have = inMemory && this.writer?.isOpen !== false ? this.received : this.written;
      // Bytes before `limit` may go out now.
      const limit = last === undefined ? (verified ? have : Infinity) : verified ? last + 1 : last;
      if (position < limit) {
        if (position < have) return Math.min(have, limit) - position;
      } else if (verified) {
        return 0;
      }
      await new Promise<void>((resolve) => this.events.once('progress', resolve));
    }
  }

  /** A stream of the blob (or a range of it), from the bytes already in and those still to come. */
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
 * One client's stream of a fill, pulled at the client's pace through `BlobFill.next`. An HTTP sender
 * may take its descriptor instead (`takeFile`) and send through reused buffers, with no allocation
 * per chunk.
 */
class TailReader extends Readable implements TakesFile {
  private position: number;
  private pulling = false;
  private fdTaken = false;
  /** A read of the descriptor is in flight: closing it now could hand its number to another file. */
  private reading = false;
  private closeAfterRead = false;

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

  /** The descriptor and `next`, before any byte was read, when the blob's size is known. */
  takeFile(): FileRange | undefined {
    const last = this.last;
    if (last === undefined || this.fdTaken || this.pulling || this.destroyed) return undefined;
    if (this.readableFlowing !== null || this.readableLength > 0) return undefined;
    this.fdTaken = true;
    const start = this.position;
    const fill = this.fill;
    this.destroy();
    return {
      fd: this.fd,
      start,
      end: last,
      key: `fill:${fill.tempPath}`,
      next: (position) => fill.next(position, last, true),
      view: (position, limit) => fill.view(position, limit),
    };
  }

  override _read(): void {
    if (this.pulling || this.destroyed) return;
    this.pulling = true;
    this.pull().then(
      (more) => {
        this.pulling = false;
        if (more) this._read();
      },
      (err: unknown) => this.destroy(err as Error),
    );
  }

  /** Pushes the next piece; true when the stream wants more at once. */
  private async pull(): Promise<boolean> {
    const next = await this.fill.next(this.position, this.last, true);
    if (this.destroyed) return false;
    if (next === 0) {
      this.push(null);
      return false;
    }
    const length = Math.min(READ_CHUNK, next);
    const held = this.fill.view(this.position, this.position + length);
    if (held) {
      // A copy: whoever consumes this stream may keep its chunks as long as it likes.
      const copy = Buffer.from(held.bytes);
      held.release();
      this.position += copy.length;
      return this.push(copy);
    }
    this.reading = true;
    const chunk = await new Promise<Buffer>((resolve, reject) => {
      read(this.fd, Buffer.allocUnsafe(length), 0, length, this.position, (err, n, buffer) => {
        this.reading = false;
        if (this.closeAfterRead) this.closeFd();
        if (err) reject(err);
        else if (n === 0) reject(new Error('blob fill file is shorter than expected'));
        else resolve(buffer.subarray(0, n));
      });
    });
    if (this.destroyed) return false;
    this.position += chunk.length;
    return this.push(chunk);
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    if (this.reading) this.closeAfterRead = true;
    else if (!this.fdTaken) this.closeFd();
    callback(err);
  }

  private closeFd(): void {
    try {
      closeSync(this.fd);
    } catch {
      // already closed
    }
  }
}

/**
 * Copies `body` into `writer`, passing every chunk to `inspect` (hash, size check) as it arrives. The
 * upstream is paused only while the writer has no room (blocks wait for the disk).
 */
function drainInto(upstream: UpstreamBlob, writer: FillWriter, fill: BlobFill, inspect: (chunk: Buffer) => void): Promise<void> {
  const { body, recycle } = upstream;
  return new Promise((resolve, reject) => {
    let ended = false;
    let failed = false;
    let waiting = false;
    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      reject(err);
    };
    writer.onFailed = fail;
    const finish = (): void => {
      writer.finish().then(() => {
        if (!failed) resolve();
      }, fail);
    };
    body.on('data', (chunk: Buffer) => {
      if (failed) return;
      let more: boolean;
      try {
        inspect(chunk);
        more = writer.push(chunk);
      } catch (err) {
        fail(err);
        return;
      }
      // Copied: the chunk's memory may take the next socket read.
      if (recycle) recycle(chunk);
      else noteReceived(chunk.length);
      fill.got();
      if (!more && !waiting) {
        waiting = true;
        body.pause();
        writer.room().then(() => {
          waiting = false;
          if (!failed) body.resume();
        }, fail);
      }
    });
    body.once('end', () => {
      ended = true;
      if (!failed) finish();
    });
    // Kept for the stream's life: an error after a failure (the caller destroys the body) must not be unhandled.
    body.on('error', fail);
    // A body that failed or closed before we got here emits nothing more.
    if (body.errored) fail(body.errored);
    else if (body.destroyed && !ended) fail(new Error('the upstream body closed before it was read'));
  });
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
  /** False: fills write through the page cache only (see FillWriter). Default true. */
  readonly directIo?: boolean;
}

/** Fills in flight by digest: N concurrent requests for one missing blob share one upstream download. */
export class BlobFills {
  private readonly inflight = new Map<Digest, Promise<BlobFill | undefined>>();
  /** The upstream bodies fills are reading (abandon). */
  private readonly bodies = new Set<Readable>();
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

  /**
   * Ends every fill in flight now, as if its upstream had cut it (a shutdown past its deadline): each
   * fails, is logged, and leaves no temp file and nothing cached, rather than downloading on after
   * the server stopped.
   */
  abandon(): void {
    for (const body of this.bodies) body.destroy(new Error('abandoned: the server is shutting down'));
  }

  /** The fill of `digest` in flight, if any. */
  current(digest: Digest): Promise<BlobFill | undefined> | undefined {
    return this.inflight.get(digest);
  }

  /**
   * Joins the fill of `digest`, starting it with `fetch` when none runs (then `source` is among its
   * `sources`). Resolves once the upstream has answered (undefined when it has no such blob), so the
   * caller can send headers and tail the fill.
   */
  join(digest: Digest, fetch: () => Promise<UpstreamBlob | undefined>, source?: string): Promise<BlobFill | undefined> {
    const existing = this.inflight.get(digest);
    if (existing) return existing;
    const starting = this.start(digest, fetch, source);
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

  private async start(digest: Digest, fetch: () => Promise<UpstreamBlob | undefined>, source: string | undefined): Promise<BlobFill | undefined> {
    const upstream = await fetch();
    if (!upstream) return undefined;
    this.started += 1;
    const { store, tempRoot, onStored } = this.options;
    const temp = join(tempRoot, `fill-${randomUUID()}`);
    let handle: FileHandle;
    let writer: FillWriter;
    try {
      handle = await open(temp, 'w', 0o644);
      writer = await FillWriter.open(temp, handle, { direct: this.options.directIo !== false });
    } catch (err) {
      // Nobody will read this body: let its connection go.
      upstream.body.destroy();
      throw err;
    }
    const { algorithm } = parseDigest(digest);
    this.bodies.add(upstream.body);
    const started = new BlobFill(digest, upstream.size, temp, store.pathOf(digest), async (fill) => {
      fill.writer = writer;
      writer.onWritten = () => fill.wrote();
      const hash = newHash(algorithm);
      let adopted = false;
      try {
        await drainInto(upstream, writer, fill, (chunk) => {
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
        await writer.close();
        // For the next pull's sake only: a failure here costs speed, not the blob.
        await writer.warm(temp).catch(() => undefined);
        const blob = { digest, size: fill.written };
        await store.adopt(temp, blob);
        adopted = true;
        await onStored?.(blob);
        return blob;
      } catch (err) {
        upstream.body.destroy();
        throw err;
      } finally {
        this.bodies.delete(upstream.body);
        await writer.close();
        await handle.close().catch(() => undefined);
        if (!adopted) await rm(temp, { force: true });
      }
    });
    if (source !== undefined) started.sources.add(source);
    return started;
  }
}
