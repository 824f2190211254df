import { close, read } from 'node:fs';
import { Readable } from 'node:stream';

export interface FileRange {
  readonly fd: number;
  readonly start: number;
  /** Inclusive. */
  readonly end: number;
  /**
   * For a file still being written (a proxy fill): how many bytes from `position` may be sent, waiting
   * until some are; 0 at the end, once the content is verified. Rejects if the file turns out bad.
   * Absent for a complete file, whose whole range may be read at once. With `view`, some of those
   * bytes may be in memory only: ask `view` first, and read the file where it answers undefined.
   */
  readonly next?: (position: number) => Promise<number>;
  /** Bytes from `position` up to `limit` (exclusive) that are still in memory, lent; undefined when they are on disk. */
  readonly view?: (position: number, limit: number) => HeldBytes | undefined;
  /**
   * With `view`: how many bytes from offset 0 are on disk now. Reads of the file stop there: past it
   * a later block may be on disk before an earlier one, and the hole between reads as zeros.
   */
  readonly written?: () => number;
  /**
   * Names the content: every FileRange with this key has the same byte at the same offset (one proxy
   * fill, followed by many clients at once), so a sender may share what it reads among them.
   */
  readonly key?: string;
  /** Called once when the sender is done with the range, sent or not (a proxy fill stops keeping bytes for it). */
  readonly release?: () => void;
}

/** Bytes lent from memory: write them, then `release` them once the write has completed (or failed). */
export interface HeldBytes {
  readonly bytes: Buffer;
  release(): void;
}

/** A stream that can hand its file descriptor over to a sender that reads the file itself. */
export interface TakesFile {
  /** The descriptor and range, handed over once before any byte was read; the taker closes the descriptor (and calls `release`). */
  takeFile(): FileRange | undefined;
}

/**
 * The stream FsBlobStore.open returns: a Readable over a range of an open file descriptor, which it
 * owns and closes. A server may instead take the descriptor and send the bytes itself (the server's
 * send-stream.ts does, reusing two buffers instead of allocating one per chunk: markedly less CPU and
 * garbage collection per GiB pulled).
 */
export class FileBlobStream extends Readable implements TakesFile {
  private position: number;
  private fd: number | undefined;
  /** Set while a read is in flight: the descriptor is closed only after it returns (like fs.ReadStream). */
  private afterRead: (() => void) | undefined;
  private reading = false;

  constructor(fd: number, readonly start: number, readonly end: number, private readonly chunk: number) {
    super({ highWaterMark: chunk });
    this.fd = fd;
    this.position = start;
  }

  /** Hands over the descriptor and range, once and before any byte was read; the caller closes it. */
  takeFile(): FileRange | undefined {
    if (this.fd === undefined || this.position !== this.start || this.readableFlowing !== null || this.destroyed) return undefined;
    const file = { fd: this.fd, start: this.start, end: this.end };
    this.fd = undefined;
    this.destroy();
    return file;
  }

  override _read(): void {
    const fd = this.fd;
    if (fd === undefined) return;
    const length = Math.min(this.chunk, this.end - this.position + 1);
    if (length <= 0) {
      this.push(null);
      return;
    }
    this.reading = true;
    read(fd, Buffer.allocUnsafe(length), 0, length, this.position, (err, bytes, buffer) => {
      this.reading = false;
      if (this.afterRead) {
        // Destroyed while reading: now the descriptor can go.
        this.afterRead();
        return;
      }
      if (err) {
        this.destroy(err);
        return;
      }
      if (bytes === 0) {
        this.destroy(new Error('blob file is shorter than expected'));
        return;
      }
      this.position += bytes;
      this.push(bytes === buffer.length ? buffer : buffer.subarray(0, bytes));
    });
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    const fd = this.fd;
    this.fd = undefined;
    if (fd === undefined) {
      callback(err);
      return;
    }
    const closeIt = () => close(fd, (closeErr) => callback(err ?? closeErr));
    // Closing under an in-flight read could let the read land on another file given the same number.
    if (this.reading) this.afterRead = closeIt;
    else closeIt();
  }
}

/** The descriptor of a stream that can hand it over (a blob file, a proxy fill); undefined for any other. */
export function takeFile(stream: Readable): FileRange | undefined {
  return typeof (stream as Partial<TakesFile>).takeFile === 'function' ? (stream as Readable & TakesFile).takeFile() : undefined;
}

export function closeFile(fd: number): void {
  close(fd, () => undefined);
}
