import { Readable, Transform, pipeline } from 'node:stream';
import { UpstreamError, type UpstreamBlob } from './upstream.js';

/** Emitted by a resuming body (with the error, and the byte it was cut at) each time a part failed and the next is asked for. */
export const RESUMING = 'resuming';

/**
 * Emitted by a part's body (skipFirst's) with a count of bytes it received and did not pass on: they
 * came from the upstream all the same, and count for its pace.
 */
const SKIPPED = 'skipped';

/** Gives the parts of a body that bring the bytes from `from` on; undefined when there is none. */
export type NextPart = (from: number) => Promise<UpstreamBlob | undefined>;

/**
 * The slowest a part may send: fewer than `minBytes` in any `windowMs` while the body is read is a
 * stall (a trickle, which the transport's idle timeout never sees), cut with `slow(bytes)`'s error
 * and gone on from as any other cut. Windows in which the reader held the body back do not count.
 */
export interface MinimumPace {
  readonly windowMs: number;
  readonly minBytes: number;
  readonly slow: (bytes: number) => Error;
}

/**
 * `first` (the bytes `start` to `end` of a blob), whose body, should it fail before its last byte,
 * goes on with the parts `next` brings. The fill still verifies the digest of the whole. `end`
 * undefined: a blob whose size the upstream did not say, which ends where its last part ends
 * cleanly (a chunked body's last chunk); a part that fails is still a cut.
 */
export function resumingBlob(first: UpstreamBlob, start: number, end: number | undefined, next: NextPart, pace?: MinimumPace): UpstreamBlob {
  const body = new ResumingBody(first, start, end, next, pace);
  return { ...first, body, ...(first.recycle ? { recycle: (chunk: Buffer) => body.recycle(chunk) } : {}) };
}

/**
 * A blob body that follows its first part and, should that fail before its last byte, the parts
 * `next` brings (each starting where the bytes stopped). It fails as the last part did once `next`
 * has none.
 */
class ResumingBody extends Readable {
  private source: Readable | undefined;
  private position: number;
  private readonly recycles: ((chunk: Buffer) => void)[] = [];
  /** Where the current window of the pace's watch began, and whether the reader held the body back in it. */
  private windowFrom = 0;
  private heldBack = false;
  /** Bytes the current part received in the window and did not pass on (see SKIPPED). */
  private skipped = 0;
  /** Whether the current part is paused because the reader has not asked for more. */
  private sourcePaused = false;
  private paceTimer: NodeJS.Timeout | undefined;

  constructor(
    first: UpstreamBlob,
    start: number,
    private readonly end: number | undefined,
    private readonly next: NextPart,
    private readonly pace: MinimumPace | undefined,
  ) {
    // Small: a lent chunk held here while the fill waits for the disk keeps its slab from reuse.
    super({ highWaterMark: 64 * 1024 });
    this.position = start;
    this.follow(first);
  }

  /** Gives a lent chunk back to the memory of the part it came from (each part ignores the others'). */
  recycle(chunk: Buffer): void {
    for (const recycle of this.recycles) recycle(chunk);
  }

  override _read(): void {
    this.sourcePaused = false;
    this.source?.resume();
  }

  /** Starts a window of the pace's watch, from the bytes received so far. */
  private watchPace(): void {
    const pace = this.pace;
    if (!pace || pace.windowMs <= 0 || pace.minBytes <= 0) return;
    clearTimeout(this.paceTimer);
    this.windowFrom = this.position;
    this.skipped = 0;
    // A window that starts with the body held back has been held back in it.
    this.heldBack = this.sourcePaused;
    this.paceTimer = setTimeout(() => this.checkPace(pace), pace.windowMs);
    this.paceTimer.unref();
  }

  /** The end of a window: a source that sent too little in it, while the body was read, is cut. */
  private checkPace(pace: MinimumPace): void {
    const source = this.source;
    if (!source || this.destroyed) return;
    const moved = this.position - this.windowFrom + this.skipped;
    const heldBack = this.heldBack || this.readableLength >= this.readableHighWaterMark;
    if (heldBack || moved >= pace.minBytes) return this.watchPace();
    source.destroy();
    this.failed(source, pace.slow(moved));
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    clearTimeout(this.paceTimer);
    this.source?.destroy();
    this.source = undefined;
    callback(err);
  }

  private follow(part: UpstreamBlob): void {
    const source = part.body;
    this.source = source;
    this.sourcePaused = false;
    // A new part (a new connection) gets a whole window of its own.
    this.watchPace();
    source.on(SKIPPED, (bytes: number) => {
      if (this.source === source) this.skipped += bytes;
    });
    if (part.recycle) this.recycles.push(part.recycle);
    source.on('data', (chunk: Buffer) => {
      this.position += chunk.length;
      if (!this.push(chunk)) {
        source.pause();
        this.sourcePaused = true;
        this.heldBack = true;
      }
    });
    source.once('end', () => {
      if (this.source !== source) return;
      clearTimeout(this.paceTimer);
      if (this.end === undefined || this.position === this.end + 1) this.push(null);
      else this.failed(source, new UpstreamError('invalid', `the upstream body ended at byte ${this.position} of ${this.end + 1}`));
    });
    source.on('error', (err) => this.failed(source, err));
    // A part that failed before we listened has no event left to tell us.
    if (source.errored) queueMicrotask(() => this.failed(source, source.errored!));
    else if (source.destroyed && !source.readableEnded) queueMicrotask(() => this.failed(source, new UpstreamError('unreachable', 'the upstream body closed before its end')));
  }

  private failed(source: Readable, err: Error): void {
    if (this.source !== source || this.destroyed) return;
    this.source = undefined;
    // The body goes on, but its source did cut it: whoever ranks sources by how they serve wants to know.
    this.emit(RESUMING, err, this.position);
    // A listener may have given up on the body rather than let it go on (a striped fetch does).
    if (this.destroyed) return;
    this.next(this.position).then(
      (part) => {
        if (this.destroyed) part?.body.destroy();
        else if (part) this.follow(part);
        else this.destroy(err);
      },
      (resumeErr: unknown) => this.destroy(resumeErr instanceof Error ? resumeErr : err),
    );
  }
}

/**
 * `part`, a whole blob sent again, without its first `count` bytes: the rest of a download from a
 * server that answered its Range with a 200 (a CDN that does not keep the blob drops the Range).
 * Chunks dropped whole go back to the part's memory; a cut one is a view, left to the collector.
 */
export function skipFirst(part: UpstreamBlob, count: number): UpstreamBlob {
  let left = count;
  const body = new Transform({
    // Small, as ResumingBody's: what waits here is lent memory.
    highWaterMark: 64 * 1024,
    transform(chunk: Buffer, _encoding, done) {
      if (left >= chunk.length) {
        left -= chunk.length;
        part.recycle?.(chunk);
        body.emit(SKIPPED, chunk.length);
        return done();
      }
      if (left > 0) body.emit(SKIPPED, left);
      const rest = left > 0 ? chunk.subarray(left) : chunk;
      left = 0;
      done(null, rest);
    },
  });
  // A failure of the part fails the body (which a resuming body then goes on from); a destroyed body
  // closes the part.
  pipeline(part.body, body, () => undefined);
  const { range: _whole, ...rest } = part;
  return { ...rest, body };
}
