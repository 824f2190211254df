import { closeSync, read } from 'node:fs';
import { Readable } from 'node:stream';
import { SERVER_WAIT, type FileRange, type TakesFile } from '@wharf/registry-core';
import type { BlobFill, ReaderMark } from './blob-fill.js';

const READ_CHUNK = 256 * 1024;

/**
 * One client's stream of a fill, pulled at the client's pace through `BlobFill.next`. An HTTP sender
 * may take its descriptor instead (`takeFile`) and send through reused buffers, with no allocation
 * per chunk.
 */
export class TailReader extends Readable implements TakesFile {
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
