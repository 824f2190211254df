import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { openSync, closeSync, read } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { RegistryError, hashToDigest, newHash, parseDigest, type BlobInfo, type BlobStore, type ByteRange, type Digest } from '@wharf/registry-core';
import type { UpstreamBlob } from './upstream.js';

const READ_CHUNK = 256 * 1024;

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
  written = 0;
  state: FillState = 'running';
  error: Error | undefined;

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
        this.events.emit('progress');
        return blob;
      },
      (err: unknown) => {
        this.error = err instanceof Error ? err : new Error(String(err));
        this.state = 'failed';
        this.events.emit('progress');
        throw this.error;
      },
    );
    // Readers and the fills map observe failures; an unobserved one must not crash the process.
    this.done.catch(() => undefined);
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

class TailReader extends Readable {
  private position: number;
  private reading = false;

  constructor(
    private readonly fill: BlobFill,
    private readonly fd: number,
    start: number,
    private readonly end: number | undefined,
  ) {
    super({ highWaterMark: READ_CHUNK });
    this.position = start;
  }

  override _read(): void {
    if (this.reading || this.destroyed) return;
    const last = this.end ?? (this.fill.size !== undefined ? this.fill.size - 1 : undefined);
    // The reader's last byte (and the end of an empty blob) waits until the fill is verified: with
    // Content-Length sent, a client that got every byte would take a corrupt blob for a complete one.
    if (last !== undefined && this.position > last && this.fill.state === 'done') {
      this.push(null);
      return;
    }
    const verified = this.fill.state === 'done';
    const available = verified || last === undefined ? this.fill.written : Math.min(this.fill.written, last);
    if (this.position >= available) {
      if (this.fill.state === 'failed') {
        this.destroy(this.fill.error);
        return;
      }
      if (this.fill.state === 'done') {
        this.push(null);
        return;
      }
      this.fill.events.once('progress', () => this._read());
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
      if (this.fill.state === 'failed') {
        this.destroy(this.fill.error);
        return;
      }
      this.position += bytes;
      if (this.push(buffer.subarray(0, bytes))) this._read();
    });
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    try {
      closeSync(this.fd);
    } catch {
      // already closed
    }
    callback(err);
  }
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
        for await (const chunk of upstream.body as AsyncIterable<Buffer>) {
          if (fill.size !== undefined && fill.written + chunk.length > fill.size) {
            throw new RegistryError('SIZE_INVALID', 'upstream sent more bytes than it announced', { digest, size: fill.size });
          }
          hash.update(chunk);
          let offset = 0;
          while (offset < chunk.length) {
            const { bytesWritten } = await handle.write(chunk, offset, chunk.length - offset, fill.written);
            offset += bytesWritten;
            fill.written += bytesWritten;
          }
          fill.events.emit('progress');
        }
        if (fill.size !== undefined && fill.written !== fill.size) {
          throw new RegistryError('SIZE_INVALID', 'upstream blob ended early', { digest, size: fill.size, received: fill.written });
        }
        const actual = hashToDigest(algorithm, hash);
        if (actual !== digest) {
          throw new RegistryError('DIGEST_INVALID', 'upstream blob does not match its digest', { digest, actual });
        }
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
