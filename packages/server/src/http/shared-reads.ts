import { pageAligned, type HeldBytes } from '@wharf/registry-core';
import { read } from 'node:fs';

/** A piece of a file in memory: bytes [start, start + valid) of one content. */
interface Segment {
  start: number;
  readonly buffer: Buffer;
  valid: number;
  /** Writes handed to a socket and not yet completed that point into `buffer`. */
  refs: number;
  /** A read into `buffer` in flight; others wanting more of the segment wait for it. */
  loading: Promise<void> | undefined;
  lastUse: number;
}


/**
 * Reads of the same content by several clients at once, done once: a file is read in aligned
 * segments kept in memory for every send of the same `key` (one proxy fill), so
 * 16 clients pulling one blob read it from the page cache once instead of 16 times, and hold one
 * window of memory between them instead of two buffers each. A segment is reused for other bytes only
 * once no socket write points into it; with every segment in use, `chunk` answers undefined and the
 * caller reads on its own.
 */
export class SharedReads {
  private readonly segments = new Map<string, Segment>();
  private allocated = 0;
  private clock = 0;

  constructor(
    private readonly segmentSize: number,
    private readonly budget: number,
  ) {}

  /**
   * Bytes of `key` from `position`, read from `fd` if not in memory yet, never past
   * `limit` (exclusive: what the file holds for sure). Undefined when no segment is free.
   */
  async chunk(fd: number, key: string, position: number, limit: number): Promise<HeldBytes | undefined> {
    if (limit <= position) throw new RangeError('nothing to read at this position');
    const start = position - (position % this.segmentSize);
    const id = `${key}\u0000${start}`;
    let segment = this.segments.get(id);
    if (!segment) {
      segment = this.claim(id, start);
      if (!segment) return undefined;
    }
    segment.lastUse = ++this.clock;
    // Hold it while loading, so that nobody takes it for other bytes meanwhile.
    segment.refs += 1;
    try {
      const want = Math.min(start + this.segmentSize, limit) - start;
      while (segment.valid < Math.min(position - start + 1, want)) {
        if (segment.loading) await segment.loading;
        else await (segment.loading = this.load(fd, segment, want).finally(() => (segment.loading = undefined)));
      }
    } catch (err) {
      segment.refs -= 1;
      // What it held may be incomplete: nobody uses it again.
      this.forget(id, segment);
      throw err;
    }
    const from = position - start;
    const to = Math.min(segment.valid, limit - start);
    const held = segment;
    let released = false;
    return {
      bytes: held.buffer.subarray(from, to),
      release: () => {
        if (released) return;
        released = true;
        held.refs -= 1;
      },
    };
  }

  /** Bytes of segment buffers allocated (for tests and metrics). */
  get allocatedBytes(): number {
    return this.allocated;
  }

  /** A segment for `id`: a new one within the budget, else the least recently used one nobody writes from. */
  private claim(id: string, start: number): Segment | undefined {
    if (this.allocated + this.segmentSize <= this.budget) {
      this.allocated += this.segmentSize;
      const segment: Segment = { start, buffer: pageAligned(this.segmentSize), valid: 0, refs: 0, loading: undefined, lastUse: 0 };
      this.segments.set(id, segment);
      return segment;
    }
    let oldest: [string, Segment] | undefined;
    for (const entry of this.segments) {
      const s = entry[1];
      if (s.refs === 0 && !s.loading && (!oldest || s.lastUse < oldest[1].lastUse)) oldest = entry;
    }
    if (!oldest) return undefined;
    const [oldId, segment] = oldest;
    this.segments.delete(oldId);
    segment.start = start;
    segment.valid = 0;
    this.segments.set(id, segment);
    return segment;
  }

  private forget(id: string, segment: Segment): void {
    if (this.segments.get(id) !== segment) return;
    this.segments.delete(id);
    this.allocated -= this.segmentSize;
  }

  /** Reads more of `segment`, up to `want` bytes from its start. */
  private load(fd: number, segment: Segment, want: number): Promise<void> {
    const from = segment.valid;
    return new Promise((resolve, reject) => {
      read(fd, segment.buffer, from, want - from, segment.start + from, (err, bytes) => {
        if (err) return reject(err);
        if (bytes === 0) return reject(new Error('blob file is shorter than its recorded size'));
        segment.valid = from + bytes;
        resolve();
      });
    });
  }
}
