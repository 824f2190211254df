import { createHash, randomUUID, type Hash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { openSync, closeSync, read } from 'node:fs';
import { open, readdir, readFile, rename, rm, stat, statfs, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { RegistryError, SERVER_WAIT, hashToDigest, newHash, noteReceived, parseDigest, type BlobInfo, type BlobStore, type ByteRange, type Digest, type DigestAlgorithm, type FileRange, type HeldBytes, type TakesFile } from '@wharf/registry-core';
import { BLOCK_SIZE } from './aligned-blocks.js';
import { BlockDigests, KEPT_SUFFIX, ProgressNote, parseKeptNote, removeFill, writeKeptNote, type KeptNote } from './fill-note.js';
import { FillOwner, ownerState, removeGoneLocks, tagOfName } from './fill-owner.js';
import { FillWriter } from './fill-writer.js';
import { OUTAGES, UpstreamError, type UpstreamBlob } from './upstream.js';

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

/** One reader of a fill: the next byte it needs, and the last it will (undefined: to the blob's end). */
interface ReaderMark {
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
 * One client's stream of a fill, pulled at the client's pace through `BlobFill.next`. An HTTP sender
 * may take its descriptor instead (`takeFile`) and send through reused buffers, with no allocation
 * per chunk.
 */
class TailReader extends Readable implements TakesFile {
  private position: number;
  private pulling = false;
  /** `_read` was called while a pull was in flight. */
  private wanted = false;
  private fdTaken = false;
  /** A read of the descriptor is in flight: closing it now could hand its number to another file. */
  private reading = false;
  private closeAfterRead = false;

  constructor(
    private readonly fill: BlobFill,
    private readonly fd: number,
    start: number,
    private readonly end: number | undefined,
    /** Where this reader is, for the fill (handed to the sender with the descriptor by `takeFile`). */
    private readonly mark: ReaderMark,
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
    const mark = this.mark;
    this.destroy();
    return {
      fd: this.fd,
      start,
      end: last,
      key: fill.key,
      next: (position) => {
        fill.moved(mark, position);
        return fill.next(position, last, true);
      },
      view: (position, limit) => fill.view(position, limit),
      written: () => fill.written,
      release: () => fill.untrack(mark),
    };
  }

  override _read(): void {
    if (this.destroyed) return;
    if (this.pulling) {
      // Asked again while a piece is on its way (its push woke the consumer, which read it at once):
      // the stream will not ask a third time, so this is answered once the piece is in.
      this.wanted = true;
      return;
    }
    this.pulling = true;
    this.wanted = false;
    this.pull().then(
      (more) => {
        this.pulling = false;
        if (more || this.wanted) this._read();
      },
      (err: unknown) => this.destroy(err as Error),
    );
  }

  /** Pushes the next piece; true when the stream wants more at once. */
  private async pull(): Promise<boolean> {
    // Waiting for the download is the server's wait, not a client that stopped reading (SERVER_WAIT).
    this.emit(SERVER_WAIT, true);
    let next: number;
    try {
      next = await this.fill.next(this.position, this.last, true);
    } finally {
      this.emit(SERVER_WAIT, false);
    }
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
      this.fill.moved(this.mark, this.position);
      return this.push(copy);
    }
    // From the file, only what is on disk: past `written` a later block may have landed before an
    // earlier one, and the hole between reads as zeros.
    const onDisk = Math.min(length, this.fill.written - this.position);
    if (onDisk <= 0) throw new Error('blob fill bytes are neither in memory nor on disk');
    this.reading = true;
    const chunk = await new Promise<Buffer>((resolve, reject) => {
      read(this.fd, Buffer.allocUnsafe(onDisk), 0, onDisk, this.position, (err, n, buffer) => {
        this.reading = false;
        if (this.closeAfterRead) this.closeFd();
        if (err) reject(err);
        else if (n === 0) reject(new Error('blob fill file is shorter than expected'));
        else resolve(buffer.subarray(0, n));
      });
    });
    if (this.destroyed) return false;
    this.position += chunk.length;
    this.fill.moved(this.mark, this.position);
    return this.push(chunk);
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    if (this.reading) this.closeAfterRead = true;
    else if (!this.fdTaken) this.closeFd();
    // Taken with the descriptor: the sender lets go of it.
    if (!this.fdTaken) this.fill.untrack(this.mark);
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

/** The upstream's body failed before its end: what came before it is the blob's bytes as far as we know. */
class BodyCut extends Error {
  constructor(override readonly cause: unknown) {
    super(cause instanceof Error ? cause.message : String(cause));
  }
}

/**
 * Copies `body` into `writer`, passing every chunk to `inspect` (hash, size check) as it arrives. The
 * upstream is paused only while the writer has no room (blocks wait for the disk). Resolves at the
 * body's end, with the last blocks possibly still on their way to the disk (`writer.finish()`). A
 * failure of the body itself rejects with a BodyCut.
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
      if (!failed) resolve();
    });
    const cut = (err: unknown): void => fail(new BodyCut(err));
    // Kept for the stream's life: an error after a failure (the caller destroys the body) must not be unhandled.
    body.on('error', cut);
    // A body that failed or closed before we got here emits nothing more.
    if (body.errored) cut(body.errored);
    else if (body.destroyed && !ended) cut(new Error('the upstream body closed before it was read'));
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
  /** How long the bytes of a download cut short are kept for the next fill to go on from. Default 15 minutes. */
  readonly remnantTtlMs?: number;
  /** Bytes all those kept together may hold (the oldest go first). Default 16 GiB. */
  readonly remnantMaxBytes?: number;
}

/** The upstream's answer for a new fill; with `remnant`, it holds the rest after it, and `kept` is the hash of the bytes kept. */
interface Asked {
  readonly upstream: UpstreamBlob | undefined;
  readonly remnant?: Remnant;
  readonly kept?: Hash;
}

/** Asks the upstream for the blob, or for `range` of it (a fill going on from a remnant). */
export type FetchBlob = (range?: ByteRange) => Promise<UpstreamBlob | undefined>;

/** The bytes a fill cut short by its upstream had on disk: the next fill of the blob starts after them. */
interface Remnant {
  readonly path: string;
  /** Bytes kept, whole blocks (so that the next fill's blocks stay aligned). */
  readonly length: number;
  readonly size: number;
  /** The digest of those bytes as they were received (checked when a fill goes on from them). */
  readonly prefix: Digest;
  /**
   * Who sent them (`originTag` of the upstream): only a fill from the same upstream goes on from them.
   * Their prefix digest proves only that they are what was received; an upstream that sent wrong
   * bytes and cut the download must not spoil another upstream's pull of the blob.
   */
  readonly origin: string | undefined;
  /** Their hash, once a try found them matching `prefix` (the upstream was down): the next try need not read them again. */
  checked?: Hash;
  /** When it goes (a remnant put back after a failed try keeps its deadline). */
  readonly expiresAt: number;
  readonly timer: NodeJS.Timeout;
}

/** Remnants kept at most (the oldest goes first). */
const MAX_REMNANTS = 32;
const FILL_PREFIX = 'fill-';
const REMNANT_TTL_MS = 15 * 60 * 1000;
const REMNANT_MAX_BYTES = 16 * 1024 ** 3;

/**
 * Fills in flight by digest: N concurrent requests for one missing blob share one upstream download.
 *
 * A download its upstream cuts (a restart, a dropped connection past the upstream client's own
 * resumes) leaves its bytes behind, for a while: the next fill of that blob asks only for the rest,
 * with a range request, and its readers (clients resuming where they were cut off, say) are served the
 * bytes before from the file at once. The digest of the whole is verified as always.
 *
 * Each fill's temp file has a note next to it (`<file>.kept`, see fill-note.ts) of the bytes it holds
 * on disk, kept up as it runs, and exact once it is a remnant: a server that crashed or was killed
 * mid-download goes on from them after its restart, as one shut down gracefully does.
 */
export class BlobFills {
  private readonly inflight = new Map<Digest, Promise<BlobFill | undefined>>();
  /** Who started each fill in `inflight` (its `source`), while it runs. */
  private readonly starters = new Map<Digest, string | undefined>();
  /** The upstream bodies fills are reading (abandon). */
  private readonly bodies = new Set<Readable>();
  private readonly remnants = new Map<Digest, Remnant>();
  /** Remnants taken by a fill that waits for the upstream's answer to its range request. */
  private readonly lent = new Map<Digest, Remnant>();
  private closing = false;
  /** A shutdown past its deadline: downloads stop, and bytes kept are not hashed again. */
  private abandoned = false;
  /** Bytes kept that did not match the digest they had when received (lost in a machine crash), for tests and logs. */
  keptMismatched = 0;
  /** Times bytes kept were read back to be checked (for tests). */
  keptReads = 0;
  /** Whose the temp files are: a server starting on the same storage leaves them alone while this runs. */
  private readonly owner: FillOwner;
  /** How many upstream downloads were started (for tests and metrics). */
  started = 0;
  /** How many of those went on from a remnant. */
  resumed = 0;

  constructor(private readonly options: BlobFillsOptions) {
    this.owner = FillOwner.take(options.tempRoot);
  }

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
    this.abandoned = true;
    for (const body of this.bodies) body.destroy(new Error('abandoned: the server is shutting down'));
  }

  /**
   * Keeps no more remnants (a shutdown), and leaves those kept in the temp folder with a note of
   * what each holds (its deadline as it is now), for `restore` at the next start: a download abandoned
   * at the shutdown deadline, or cut by its upstream shortly before, goes on after the restart. A
   * remnant whose note cannot be written is removed.
   */
  async close(): Promise<void> {
    this.closing = true;
    // Those lent to a fill still waiting for its upstream too (a shutdown does not wait for it).
    const kept = [...this.remnants.entries(), ...this.lent.entries()];
    this.remnants.clear();
    await Promise.allSettled(
      kept.map(async ([digest, remnant]) => {
        clearTimeout(remnant.timer);
        await writeKeptNote(remnant.path, noteOf(digest, remnant)).catch(() => removeFill(remnant.path));
      }),
    );
    // Its files are now the next start's to take back (a fill still running keeps writing its own note).
    await this.owner.release();
  }

  /**
   * At start, before any fill: takes back the remnants noted before (by `close`, or by a fill running
   * when its server crashed; those not expired, whose file still holds their bytes), and removes
   * every other `fill-` entry of an owner that is gone (a file with no sound note: what it holds is
   * not known). The files of a server still running on this storage (its lock held, see
   * fill-owner.ts) are left to it. Each file taken back is renamed to this instance's name first, so
   * that two servers starting at once cannot both take it. Returns how many came back.
   */
  async restore(): Promise<number> {
    const root = this.options.tempRoot;
    const entries = await readdir(root);
    const groups = new Map<string, string[]>();
    for (const entry of entries) {
      if (!entry.startsWith(FILL_PREFIX)) continue;
      const at = entry.indexOf(KEPT_SUFFIX);
      const file = at < 0 ? entry : entry.slice(0, at);
      groups.set(file, [...(groups.get(file) ?? []), entry]);
    }
    const live = new Map<string, boolean>([[this.owner.tag, true]]);
    const now = Date.now();
    for (const [file, group] of groups) {
      const tag = tagOfName(file.slice(FILL_PREFIX.length));
      // A name of an older version's: its server is not running any more (an upgrade replaced it).
      if (tag !== undefined) {
        if (!live.has(tag)) live.set(tag, ownerState(root, tag) === 'live');
        if (live.get(tag)) continue;
      }
      const noted = group.includes(file) && group.includes(`${file}${KEPT_SUFFIX}`);
      const note = noted ? parseKeptNote(await readFile(join(root, `${file}${KEPT_SUFFIX}`), 'utf8').catch(() => '')) : undefined;
      if (note && note.expiresAt > now && !this.remnants.has(note.digest)) await this.takeBack(join(root, file), note);
      // Not ours to fail the start over (a directory of that name, say): left where it is.
      for (const entry of group) await rm(join(root, entry), { force: true }).catch(() => undefined);
    }
    await removeGoneLocks(root, entries, live);
    return this.remnants.size;
  }

  /** Makes the remnant `note` describes this instance's (restore), unless its file is short or another server took it first. */
  private async takeBack(path: string, note: KeptNote): Promise<void> {
    if (((await stat(path).catch(() => undefined))?.size ?? 0) < note.length) return;
    const claimed = this.newTempPath();
    if (!(await rename(path, claimed).then(() => true, () => false))) return;
    // A deadline further than this server's own TTL (a note from elsewhere, a clock set back) is cut to it.
    const expiresAt = Math.min(note.expiresAt, Date.now() + this.ttlMs);
    if (this.keepRemnant(note.digest, claimed, note.length, note.size, () => note.prefix, note.origin, expiresAt)) await this.noteRemnant(note.digest);
    else await removeFill(claimed);
  }

  /** A new temp file's path, named after this instance (see fill-owner.ts). */
  private newTempPath(): string {
    return join(this.options.tempRoot, `${FILL_PREFIX}${this.owner.tag}-${randomUUID()}`);
  }

  /** The fill of `digest` in flight, if any. */
  current(digest: Digest): Promise<BlobFill | undefined> | undefined {
    return this.inflight.get(digest);
  }

  /** The `source` that started the fill of `digest` in flight, if one is (and it named one). */
  startedFor(digest: Digest): string | undefined {
    return this.starters.get(digest);
  }

  /** Bytes of `digest` kept from a download cut short (for tests and logs); 0 when none. */
  remnantOf(digest: Digest): number {
    return this.remnants.get(digest)?.length ?? 0;
  }

  /** Bytes kept of all downloads cut short, in the temp folder (for metrics). */
  get remnantBytes(): number {
    let bytes = 0;
    for (const remnant of this.remnants.values()) bytes += remnant.length;
    return bytes;
  }

  /**
   * Joins the fill of `digest`, starting it with `fetch` when none runs (then `source` is among its
   * `sources`). Resolves once the upstream has answered (undefined when it has no such blob), so the
   * caller can send headers and tail the fill. `origin` names the upstream `fetch` asks: a new fill
   * goes on only from bytes kept of a download from that same upstream.
   */
  join(digest: Digest, fetch: FetchBlob, source?: string, origin?: string): Promise<BlobFill | undefined> {
    const existing = this.inflight.get(digest);
    if (existing) return existing;
    const starting = this.start(digest, fetch, source, origin === undefined ? undefined : originTag(origin));
    this.inflight.set(digest, starting);
    this.starters.set(digest, source);
    const ended = (): void => {
      this.inflight.delete(digest);
      this.starters.delete(digest);
    };
    starting.then(
      (fill) => {
        if (!fill) ended();
        else void fill.done.finally(ended).catch(() => undefined);
      },
      ended,
    );
    return starting;
  }

  private async start(digest: Digest, fetch: FetchBlob, source: string | undefined, origin: string | undefined): Promise<BlobFill | undefined> {
    const { upstream, remnant, kept } = await this.ask(digest, fetch, origin);
    if (!upstream) return undefined;
    // Until the fill reads it (past opening the file, and hashing the bytes kept), a body that fails
    // must not throw an unhandled 'error': the fill finds it failed (`errored`) when it gets there.
    upstream.body.on('error', () => undefined);
    this.started += 1;
    if (remnant) this.resumed += 1;
    const { store, onStored } = this.options;
    const from = remnant?.length ?? 0;
    const temp = remnant?.path ?? this.newTempPath();
    const size = remnant?.size ?? upstream.size;
    let handle: FileHandle | undefined;
    let writer: FillWriter;
    try {
      handle = await open(temp, remnant ? 'r+' : 'w', 0o644);
      // Past the whole blocks kept, the file may hold a block whose write had begun.
      if (remnant) await handle.truncate(from);
      writer = await FillWriter.open(temp, handle, { direct: this.options.directIo !== false, start: from });
      // A blob larger than the room left is not written at all: the fill would end in ENOSPC anyway,
      // having taken the last free bytes of the disk from pushes and the database meanwhile.
      const free = size === undefined ? undefined : await freeBytes(this.options.tempRoot);
      if (size !== undefined && free !== undefined && size - from > free) writer.keepInMemory(noRoomFor(size - from, free));
    } catch (err) {
      // Nobody will read this body: let its connection go.
      upstream.body.destroy();
      await handle?.close().catch(() => undefined);
      await removeFill(temp);
      throw err;
    }
    const { algorithm } = parseDigest(digest);
    this.bodies.add(upstream.body);
    const hash = kept ?? newHash(algorithm);
    // With the size known the bytes may be kept: the digest of each block boundary's prefix goes in their note.
    const blocks = size !== undefined ? new BlockDigests(hash, algorithm, from) : undefined;
    const prefixOf = (length: number): Digest | undefined => (length === from ? remnant?.prefix : blocks?.take(length));
    // Kept up as the bytes reach the disk, so that a crash of the server keeps them too.
    const progress = blocks ? new ProgressNote(temp, { digest, size: size!, origin }, this.ttlMs, blocks, from) : undefined;
    const started = new BlobFill(
      digest,
      size,
      temp,
      store.pathOf(digest),
      async (fill) => {
        fill.writer = writer;
        writer.lowestReader = () => fill.lowestReader();
        writer.onWritten = (written) => {
          fill.wrote();
          progress?.update(written);
        };
        let adopted = false;
        let cut = false;
        try {
          await drainInto(upstream, writer, fill, (chunk) => {
            if (fill.size !== undefined && fill.received + chunk.length > fill.size) {
              throw new RegistryError('SIZE_INVALID', 'upstream sent more bytes than it announced', { digest, size: fill.size });
            }
            if (blocks) blocks.update(chunk);
            else hash.update(chunk);
          }).catch((err: unknown) => {
            if (!(err instanceof BodyCut)) throw err;
            cut = true;
            throw err.cause;
          });
          if (fill.size !== undefined && fill.received !== fill.size) {
            cut = true;
            // What came is kept for the next fill to go on from: on disk first.
            await writer.finish().catch(() => undefined);
            throw new RegistryError('SIZE_INVALID', 'upstream blob ended early', { digest, size: fill.size, received: fill.received });
          }
          const actual = hashToDigest(algorithm, hash);
          if (actual !== digest) {
            throw new RegistryError('DIGEST_INVALID', 'upstream blob does not match its digest', { digest, actual });
          }
          // Clients get their last byte now, from the fill's memory, while its last blocks still go to
          // disk: making the cache copy complete and durable is our business, not theirs.
          fill.markVerified();
          await writer.finish();
          if (writer.keptInMemory) {
            // No room for the cache copy: the readers are sent the rest from memory, and nothing is
            // stored. The blocks they still need stay until the last of them is gone.
            fill.notStored = writer.keptInMemory;
            await fill.readersGone();
            return { digest, size: fill.received };
          }
          await handle.sync();
          await handle.close();
          await writer.close();
          // For the next pull's sake only: a failure here costs speed, not the blob.
          await writer.warm(temp).catch(() => undefined);
          // Its note goes before the file moves: a crash in between leaves a file the next start removes.
          await progress?.stop();
          await rm(`${temp}${KEPT_SUFFIX}`, { force: true }).catch(() => undefined);
          const blob = { digest, size: fill.written };
          await store.adopt(temp, blob);
          adopted = true;
          // Bytes kept of another upstream's download of it have no use any more.
          void this.dropRemnant(digest);
          await onStored?.(blob);
          return blob;
        } catch (err) {
          upstream.body.destroy();
          throw err;
        } finally {
          this.bodies.delete(upstream.body);
          await writer.close();
          await handle.close().catch(() => undefined);
          await progress?.stop();
          if (!adopted) {
            if (cut && this.keepRemnant(digest, temp, fill.written, fill.size, prefixOf, origin)) await this.noteRemnant(digest);
            else await removeFill(temp);
          }
        }
      },
      from,
    );
    if (source !== undefined) started.sources.add(source);
    return started;
  }

  /**
   * The upstream's answer for a new fill of `digest`: the rest of the blob after the remnant kept of
   * it, if any (`remnant` then says where the fill goes on from), else the whole blob. An upstream
   * that will not answer with exactly the rest (a 416, the whole blob, another range) is asked for
   * the whole; one that is down leaves the remnant, with its deadline, for the next try.
   */
  private async ask(digest: Digest, fetch: FetchBlob, origin: string | undefined): Promise<Asked> {
    const remnant = this.remnants.get(digest);
    // Another upstream's bytes stay for that upstream's next fill (until this one's, if cut, replaces them).
    if (!remnant || remnant.origin !== origin) return { upstream: await fetch() };
    // Taken while asked: no other fill can start on it (this one is in flight), and no timer removes it.
    this.remnants.delete(digest);
    clearTimeout(remnant.timer);
    this.lent.set(digest, remnant);
    try {
      return await this.askRest(digest, remnant, fetch);
    } finally {
      this.lent.delete(digest);
    }
  }

  /** `ask` for a remnant taken from the map: the rest of the blob, or else the whole. */
  private async askRest(digest: Digest, remnant: Remnant, fetch: FetchBlob): Promise<Asked> {
    // Gone from the temp folder (cleaned by hand, say): the whole blob it is.
    if (((await stat(remnant.path).catch(() => undefined))?.size ?? 0) < remnant.length) {
      await removeFill(remnant.path);
      return { upstream: await fetch() };
    }
    // The bytes kept are checked before anything is asked: after a machine crash they may not be
    // those received, and then the whole blob is the download to ask for.
    const { algorithm } = parseDigest(digest);
    const kept = remnant.checked?.copy() ?? (await this.hashKept(remnant, algorithm));
    if (!kept || hashToDigest(algorithm, kept.copy()) !== remnant.prefix) {
      if (kept) this.keptMismatched += 1;
      await removeFill(remnant.path);
      return { upstream: await fetch() };
    }
    const rest = { start: remnant.length, end: remnant.size - 1 };
    const putBack = async (): Promise<void> => {
      // Once closed, close() has noted it for the next start: it stays.
      if (this.closing) return;
      if (!this.keepRemnant(digest, remnant.path, remnant.length, remnant.size, () => remnant.prefix, remnant.origin, remnant.expiresAt)) await removeFill(remnant.path);
      else this.remnants.get(digest)!.checked = kept.copy();
    };
    let part: UpstreamBlob | undefined;
    try {
      part = await fetch(rest);
    } catch (err) {
      if (!isOutage(err)) {
        // Refused, not down (a 416 to the range, say): the whole blob may well come.
        await removeFill(remnant.path);
        return { upstream: await fetch() };
      }
      await putBack();
      throw err;
    }
    if (!part) {
      await putBack();
      return { upstream: undefined };
    }
    if (part.range?.start === rest.start && part.range.end === rest.end && (part.size === undefined || part.size === remnant.size)) return { upstream: part, remnant, kept };
    // The whole blob (a 200 to the range request), or another range: the fill starts from byte 0.
    await removeFill(remnant.path);
    if (!part.range && part.size === remnant.size) return { upstream: part };
    part.body.destroy();
    return { upstream: await fetch() };
  }

  /**
   * The hash of the bytes `remnant` keeps, read from its file; undefined when they cannot be read
   * whole. A shutdown past its deadline does not wait for a long one: it throws, and the file and its
   * note stay for the next start.
   */
  private async hashKept(remnant: Remnant, algorithm: DigestAlgorithm): Promise<Hash | undefined> {
    this.keptReads += 1;
    const hash = newHash(algorithm);
    const handle = await open(remnant.path, 'r').catch(() => undefined);
    if (!handle) return undefined;
    try {
      if (!(await hashFile(handle, remnant.length, hash, () => this.abandoned))) throw new Error('abandoned: the server is shutting down');
      return hash;
    } catch (err) {
      if (this.abandoned) throw err;
      return undefined;
    } finally {
      await handle.close().catch(() => undefined);
    }
  }

  /**
   * Keeps the whole blocks a fill cut short by its upstream (`origin`) wrote to `path`, for the next
   * fill of `digest` from there, until `expiresAt` (default: REMNANT_TTL_MS from now); false when
   * there is nothing worth keeping, or no room (then the caller removes the file). The oldest go to
   * make room, and so does one kept of the blob before (from another upstream).
   */
  private keepRemnant(
    digest: Digest,
    path: string,
    written: number,
    size: number | undefined,
    prefixOf: (length: number) => Digest | undefined,
    origin: string | undefined,
    expiresAt?: number,
  ): boolean {
    const length = written - (written % BLOCK_SIZE);
    const maxBytes = this.options.remnantMaxBytes ?? REMNANT_MAX_BYTES;
    if (this.closing || size === undefined || length === 0 || length >= size || length > maxBytes) return false;
    const prefix = prefixOf(length);
    if (prefix === undefined) return false;
    const before = this.remnants.get(digest);
    if (before && before.path !== path) void this.dropRemnant(digest);
    let held = length;
    for (const kept of this.remnants.values()) held += kept.length;
    for (const [oldest, kept] of this.remnants) {
      if (this.remnants.size < MAX_REMNANTS && held <= maxBytes) break;
      held -= kept.length;
      void this.dropRemnant(oldest);
    }
    const deadline = expiresAt ?? Date.now() + this.ttlMs;
    // Its own deadline only: a remnant kept of the blob after it has a timer of its own.
    const timer = setTimeout(() => {
      if (this.remnants.get(digest) === remnant) void this.dropRemnant(digest);
    }, Math.max(0, deadline - Date.now()));
    timer.unref();
    const remnant: Remnant = { path, length, size, prefix, origin, expiresAt: deadline, timer };
    this.remnants.set(digest, remnant);
    return true;
  }

  /**
   * Notes the remnant of `digest` just kept, exactly (its running fill's note may lag by a second):
   * a crash before it is used keeps it too. One whose note cannot be written stays for this process.
   */
  private async noteRemnant(digest: Digest): Promise<void> {
    const remnant = this.remnants.get(digest);
    if (remnant) await writeKeptNote(remnant.path, noteOf(digest, remnant)).catch(() => undefined);
  }

  private get ttlMs(): number {
    return this.options.remnantTtlMs ?? REMNANT_TTL_MS;
  }

  /** Forgets the remnant of `digest` and removes its file; never rejects (a timer calls it). */
  private async dropRemnant(digest: Digest): Promise<void> {
    const remnant = this.remnants.get(digest);
    if (!remnant) return;
    this.remnants.delete(digest);
    clearTimeout(remnant.timer);
    // The next start removes what is left of it anyway.
    await removeFill(remnant.path);
  }
}

function noteOf(digest: Digest, remnant: Remnant): KeptNote {
  return { digest, size: remnant.size, length: remnant.length, expiresAt: remnant.expiresAt, prefix: remnant.prefix, origin: remnant.origin };
}

/** An upstream's name as remnants and their notes keep it: short and of one length, whatever the name. */
function originTag(origin: string): string {
  return createHash('sha256').update(origin).digest('hex').slice(0, 32);
}

/** Statuses that say the upstream (or its gateway) is down or overloaded, not that it refuses the request. */
const OUTAGE_STATUSES = new Set([429, 502, 503, 504]);

/**
 * The upstream is down or overloaded, so the whole blob would not come either: what was kept of a
 * blob stays for the next try. Any other answer to the range (a 416, a 500 or 501 from a server that
 * does ranges badly) is a refusal of the range, whatever its failure was filed as.
 */
function isOutage(err: unknown): boolean {
  if (!(err instanceof UpstreamError) || !OUTAGES.has(err.failure)) return false;
  return err.status === undefined || OUTAGE_STATUSES.has(err.status);
}

/** Feeds the first `length` bytes of the file to `hash`; false when `stopped` said to stop first. */
async function hashFile(handle: FileHandle, length: number, hash: { update(bytes: Buffer): unknown }, stopped: () => boolean): Promise<boolean> {
  const buffer = Buffer.allocUnsafe(BLOCK_SIZE);
  for (let position = 0; position < length; ) {
    if (stopped()) return false;
    const { bytesRead } = await handle.read(buffer, 0, Math.min(BLOCK_SIZE, length - position), position);
    if (bytesRead === 0) throw new Error('the bytes kept of an earlier download are gone');
    hash.update(buffer.subarray(0, bytesRead));
    position += bytesRead;
  }
  return true;
}

/** Bytes free for an unprivileged writer on the file system of `dir`; undefined when it cannot be told. */
async function freeBytes(dir: string): Promise<number | undefined> {
  try {
    const s = await statfs(dir);
    return s.bavail * s.bsize;
  } catch {
    return undefined;
  }
}

/** Why a fill of `bytes` is kept in memory from its start: as a write with no room fails, ENOSPC. */
function noRoomFor(bytes: number, free: number): Error {
  return Object.assign(new Error(`no space left on storage for the blob (${bytes} bytes to write, ${free} free)`), { code: 'ENOSPC' });
}
