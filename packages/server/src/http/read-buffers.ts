import { pageAligned } from '@wharf/registry-core';

/**
 * Read buffers of blob sends, under one budget: the sends running together split it evenly (see
 * SendBuffers), so sixteen at once share it instead of the first few taking it and the rest getting
 * the minimum, and the spares kept for the next sends stay within it too. A lone pull reads in the
 * largest buffers, which cost the least CPU per GiB. Spares spare the allocator: without them every
 * pull allocates anew, and the dead buffers wait for a garbage collection V8 starts only after tens
 * of MiB of them. Once no send has held a buffer for `idleMs`, the spares go and `released` is called
 * (to collect them: dead buffers stay in the RSS until a full garbage collection): a registry that
 * served a burst of pulls and then only manifests should not keep the burst's buffers. For the same
 * reason `released` is called each time buffers dropped without being kept (a socket may still read
 * them, or the spares are full) add up to half the budget: under a steady mixed load the dead ones
 * took the pool's memory to twice its budget before V8 collected them (a soak: 36 MiB of a 16 MiB
 * budget, and the server over 120 MiB of RSS).
 */
export class ReadBufferPool {
  /** Bytes of buffers held by sends now. */
  private held = 0;
  /** Sends holding buffers now. */
  private sends = 0;
  private readonly spares = new Map<number, Buffer[]>();
  private spareTotal = 0;
  /** Bytes of buffers let go since `released` was last called: garbage until a collection. */
  private dropped = 0;
  private idleTimer: NodeJS.Timeout | undefined;

  /** `max` should be `min` times a power of two: buffer sizes halve from `max` down to `min`. */
  constructor(
    private readonly budget: number,
    private readonly max: number,
    private readonly min: number,
    private readonly idleMs = 1000,
    private readonly released?: () => void,
  ) {}

  /**
   * The size of each of the `count` buffers of one send: `max` for a send alone; otherwise its share
   * of the budget, rounded down to `max` halved at least once, never below `min` (so with very many
   * sends the budget is exceeded rather than reads made tiny). Keeping `max` to a send alone keeps
   * eight pulls arriving at once from first taking the largest buffers and then shrinking to their
   * share: the buffers given back on the way stayed in the RSS (eight 1 GiB pulls peaked 12-15 MiB
   * higher than with 1 MiB for all).
   */
  shareSize(count: number): number {
    if (this.sends <= 1) return this.max;
    const share = this.budget / this.sends / count;
    let size = Math.max(this.min, this.max / 2);
    while (size > this.min && size > share) size = Math.max(this.min, size / 2);
    return size;
  }

  /** A send takes its first buffer: from now on it counts in the shares. */
  join(): void {
    this.sends += 1;
  }

  /** A send has given all its buffers back. */
  leave(): void {
    this.sends -= 1;
  }

  take(size: number): Buffer {
    this.cancelIdle();
    this.held += size;
    const reused = this.takeSpare(size);
    if (reused) return reused;
    // Spares of other sizes sit next to the new buffer: they go once they would overrun the budget.
    if (this.spareTotal > 0 && this.held + this.spareTotal > this.budget) this.drop(this.dropSpares());
    return pageAligned(size);
  }

  /**
   * A send is done with `buffer`. `reusable` only once every write from it has completed: a buffer a
   * socket may still read is never handed out again (the garbage collector gets it). A reusable one is
   * kept while the spares stay within the budget, even when the sends hold the whole budget (a send
   * shrinking to its share gives back a large buffer that the next takes split): a dropped buffer
   * stays in the RSS until a garbage collection, next to the new one allocated in its place.
   */
  give(buffer: Buffer, reusable: boolean): void {
    const size = buffer.length;
    this.held -= size;
    if (reusable && size >= this.min && size % this.min === 0 && this.spareTotal + size <= this.budget) this.addSpare(buffer);
    else this.drop(size);
    // Whatever this last buffer was, the spares wait for the next send from now on.
    if (this.held === 0 && this.spareTotal > 0) this.dropWhenIdle();
  }

  /** A spare of `size` bytes, or one carved out of a larger spare whose other halves stay spares. */
  private takeSpare(size: number): Buffer | undefined {
    for (let from = size; from <= this.max; from *= 2) {
      const spare = this.spares.get(from)?.pop();
      if (!spare) continue;
      this.spareTotal -= from;
      let piece = spare;
      while (piece.length > size) {
        const half = piece.length / 2;
        this.addSpare(piece.subarray(half));
        piece = piece.subarray(0, half);
      }
      return piece;
    }
    return undefined;
  }

  private addSpare(buffer: Buffer): void {
    const list = this.spares.get(buffer.length);
    if (list) list.push(buffer);
    else this.spares.set(buffer.length, [buffer]);
    this.spareTotal += buffer.length;
  }

  /** Bytes of spare buffers waiting for the next send. */
  get spareBytes(): number {
    return this.spareTotal;
  }

  /** Bytes of buffers sends hold now. */
  get heldBytes(): number {
    return this.held;
  }

  private dropWhenIdle(): void {
    this.cancelIdle();
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      if (this.held !== 0 || this.spareTotal === 0) return;
      this.dropSpares();
      this.collect();
    }, this.idleMs);
    this.idleTimer.unref();
  }

  private cancelIdle(): void {
    if (this.idleTimer === undefined) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  /** Drops every spare; returns their bytes. */
  private dropSpares(): number {
    const total = this.spareTotal;
    this.spares.clear();
    this.spareTotal = 0;
    return total;
  }

  /** `bytes` of buffers became garbage: half the budget's worth are collected. */
  private drop(bytes: number): void {
    this.dropped += bytes;
    if (this.dropped >= this.budget / 2) this.collect();
  }

  private collect(): void {
    this.dropped = 0;
    this.released?.();
  }
}

/**
 * The read buffers of one send, taken from the pool as its reads need them: a small blob gets a
 * buffer its size, and a long send's buffers shrink to its share of the budget when more sends
 * start (a lone pull reads 2 MiB at a time until a second one starts next to it).
 */
export class SendBuffers {
  private readonly slots: (Buffer | undefined)[];
  private joined = false;

  constructor(
    private readonly pool: ReadBufferPool,
    count: number,
  ) {
    this.slots = Array.from({ length: count }, () => undefined);
  }

  /**
   * The buffer of `slot` for a read of up to `wanted` bytes. Call it only once every write from that
   * slot's previous buffer has completed: a buffer replaced here goes back to the pool for reuse.
   */
  get(slot: number, wanted: number): Buffer {
    if (!this.joined) {
      this.pool.join();
      this.joined = true;
    }
    const share = this.pool.shareSize(this.slots.length);
    const current = this.slots[slot];
    if (current) {
      // Shrink only: growing back when other sends end churned through new buffers at the end of
      // every burst of pulls (eight 1 GiB pulls peaked 10-15 MiB higher).
      if (current.length <= share) return current;
      this.slots[slot] = undefined;
      this.pool.give(current, true);
    }
    const buffer = this.pool.take(Math.max(1, Math.min(share, wanted)));
    this.slots[slot] = buffer;
    return buffer;
  }

  /** The send is over. `reusable` only once every write from the buffers has completed. */
  release(reusable: boolean): void {
    for (const [slot, buffer] of this.slots.entries()) {
      if (!buffer) continue;
      this.slots[slot] = undefined;
      this.pool.give(buffer, reusable);
    }
    if (this.joined) {
      this.joined = false;
      this.pool.leave();
    }
  }
}
