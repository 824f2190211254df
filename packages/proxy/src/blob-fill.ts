import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { openSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { RegistryError, type BlobInfo, type ByteRange, type Digest, type HeldBytes } from '@wharf/registry-core';
import { TailReader } from './fill-reader.js';
import { UpstreamError } from './upstream.js';
import type { FillWriter } from './fill-writer.js';
/**
 * Readers waiting for bytes in memory are woken once this many more came in (or a block went to
 * disk, or the fill ended), not for every chunk: 16 clients of one fill woken per 64 KiB chunk, each
 * sending it on its own, lost a third of their throughput.
 */
const WAKE_BYTES = 256 * 1024;
/** Fewer new bytes than WAKE_BYTES wake the readers after this long: a slow upstream's bytes still go out at once. */
const WAKE_MS = 5;

type FillState = 'running' | 'done' | 'failed';

/** One reader of a fill: the next byte it needs, and the last it will (undefined: to the blob's end). */
export interface ReaderMark {
  position: number;
  readonly end: number | undefined;
}

/**
 * One download of one blob into a temp file. Any number of readers follow it, each at its own pace:
 * from the fill's memory while they keep up (each byte as soon as it arrives), from the file once
 * they fall behind. The fill never waits for a reader, and a reader going away never stops the fill. A fill whose digest or size is wrong is deleted and every
 * reader fails (its client's connection is cut), so nobody ever receives a complete-looking corrupt
 * blob.
 *
 * A fill whose file has no room (a full disk: see FillWriter.keepInMemory) goes on in memory: its
 * readers still get the whole, verified blob, the fill waits for the slowest of them, and nothing is
 * stored (`notStored`).
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
  /**
   * Names this fill's content for the segments its clients share (FileRange.key): not its temp path
   * alone, which a fill going on from a remnant reuses, with other bytes past the remnant's length.
   */
  readonly key = `fill:${randomUUID()}`;
  /**
   * Set when the blob was sent to its readers but not stored (its temp file had no room: see
   * FillWriter.keepInMemory), to why; `done` then resolves once every reader has gone.
   */
  notStored: Error | undefined;
  /** Where each reader is: a fill kept in memory lets a block go only once they all passed it. */
  private readonly readers = new Set<ReaderMark>();
  private readonly readersGoneWaiters: (() => void)[] = [];

  constructor(
    readonly digest: Digest,
    readonly size: number | undefined,
    readonly tempPath: string,
    private readonly finalPath: string,
    run: (fill: BlobFill) => Promise<BlobInfo>,
    /** The bytes before this came from an earlier download of the blob, cut short (see BlobFills). */
    readonly resumedFrom = 0,
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

  /** A reader starts at `position` (see `moved`, `untrack`). */
  track(position: number, end?: number): ReaderMark {
    const mark = { position, end };
    this.readers.add(mark);
    return mark;
  }

  /** The reader of `mark` needs the bytes from `position` on (no earlier one any more). */
  moved(mark: ReaderMark, position: number): void {
    mark.position = position;
    this.writer?.readersMoved();
  }

  /** The reader of `mark` is gone. */
  untrack(mark: ReaderMark): void {
    if (!this.readers.delete(mark)) return;
    this.writer?.readersMoved();
    if (this.readers.size === 0) for (const wake of this.readersGoneWaiters.splice(0)) wake();
  }

  /**
   * The position of the slowest reader; Infinity when none reads. A reader of a range that ends before
   * the blob's end, at its last byte, waits for the whole blob to be verified, not for bytes: it does
   * not count, or a fill kept in memory would wait for it while it waits for the fill. Its last byte
   * may then be let go before the blob is verified, and its client is cut (never sent a wrong byte);
   * the next such request goes to the upstream (see PullThroughRepository.openBlob).
   */
  lowestReader(): number {
    let lowest = Infinity;
    for (const mark of this.readers) {
      if (mark.end !== undefined && mark.position >= mark.end && (this.size === undefined || mark.end < this.size - 1)) continue;
      if (mark.position < lowest) lowest = mark.position;
    }
    return lowest;
  }

  /** The fill is kept in memory: its file has no room (see FillWriter.keepInMemory). */
  get keptInMemory(): boolean {
    return this.writer?.keptInMemory !== undefined;
  }

  /** Resolves once no reader follows the fill. */
  readersGone(): Promise<void> {
    if (this.readers.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.readersGoneWaiters.push(resolve));
  }

  /**
   * Whether a reader from `position` can be sent every byte from there. Always, unless the fill is
   * kept in memory (no room on its disk) and has let go of bytes past the end of its file that such
   * a reader would need: its other readers had all passed them.
   */
  canServeFrom(position: number): boolean {
    const writer = this.writer;
    if (!writer?.keptInMemory) return true;
    return writer.isOpen && writer.heldFrom <= Math.max(position, writer.written);
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
      // Bytes before `limit` may go out now: once verified, up to the end (a blob of unknown size
      // ends at the bytes received, whether or not they reached the disk); before, all but the last.
      const limit = verified ? (last === undefined ? this.received : last + 1) : (last ?? Infinity);
      if (position < limit) {
        if (position < have) return Math.min(have, limit) - position;
        // Verified, then failed storing its copy: bytes not on disk by now never will be.
        if (this.state === 'failed') throw fillFailed(this.digest, this.error);
      } else if (verified) {
        return 0;
      }
      await new Promise<void>((resolve) => this.events.once('progress', resolve));
    }
  }

  /**
   * A stream of the blob (or a range of it), from the bytes already in and those still to come. Ask
   * `canServeFrom` first: a reader the fill cannot serve fails at once.
   */
  reader(range?: ByteRange): Readable {
    const start = range?.start ?? 0;
    if (!this.canServeFrom(start)) throw new RegistryError('UNAVAILABLE', 'the download of this blob went past the bytes asked for without storing them (no space left on storage); try again', { digest: this.digest });
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
    return new TailReader(this, fd, start, range?.end, this.track(start, range?.end));
  }
}

/**
 * What a client is told when the download it waited on failed: the upstream's fault, a 502; a 503
 * with its Retry-After when the upstream said it is down for now, as the client that started the
 * download is told (toRegistryError).
 */
export function fillFailed(digest: Digest, cause: Error | undefined): RegistryError {
  const detail = { digest, ...(cause ? { reason: cause.message } : {}) };
  if (cause instanceof UpstreamError && cause.failure === 'server-error' && cause.status === 503) {
    return new RegistryError('UNAVAILABLE', 'the upstream is down for now (503); try again', { ...detail, ...(cause.retryAfter !== undefined ? { retryAfter: cause.retryAfter } : {}) });
  }
  return new RegistryError('UPSTREAM_ERROR', 'the upstream download of this blob failed; try again', detail);
}
