/**
 * Read buffers of blob sends, under one budget for all of them together: those held by sends and the
 * spares kept for the next ones. The budget is split evenly between the sends holding buffers (see
 * SendBuffers): a lone pull reads in the largest buffers, which cost the least CPU per GiB, and
 * sixteen at once share the budget instead of the first few taking it and the rest getting the
 * minimum. Spares spare the allocator: without them every pull allocates anew, and the dead buffers
 * wait for a garbage collection V8 starts only after tens of MiB of them. Once no send has held a
 * buffer for `idleMs`, the spares go and `released` is called (to collect them: dead buffers stay in
 * the RSS until a full garbage collection): a registry that served a burst of pulls and then only
 * manifests should not keep the burst's buffers.
 */
export class ReadBufferPool {
  /** Bytes of buffers held by sends now. */
  private held = 0;
  /** Sends holding buffers now. */
  private sends = 0;
  private readonly spares = new Map<number, Buffer[]>();
  private spareTotal = 0;
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
   * The size of each of the `count` buffers of one send: its share of the budget, rounded down to
   * `max` halved as often as needed, never below `min` (so with very many sends the budget is exceeded
   * rather than reads made tiny).
   */
  shareSize(count: number): number {
    const share = this.budget / Math.max(1, this.sends) / count;
    let size = this.max;
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
    const reused = this.spares.get(size)?.pop();
    if (reused) {
      this.spareTotal -= size;
      return reused;
    }
    // Spares of other sizes sit next to the new buffer: they go once they would overrun the budget.
    if (this.spareTotal > 0 && this.held + this.spareTotal > this.budget) this.dropSpares();
    return Buffer.allocUnsafe(size);
  }

  /**
   * A send is done with `buffer`. `reusable` only once every write from it has completed: a buffer a
   * socket may still read is never handed out again (the garbage collector gets it).
   */
  give(buffer: Buffer, reusable: boolean): void {
    const size = buffer.length;
    this.held -= size;
    if (reusable && size >= this.min && size % this.min === 0 && this.held + this.spareTotal + size <= this.budget) {
      const list = this.spares.get(size);
      if (list) list.push(buffer);
      else this.spares.set(size, [buffer]);
      this.spareTotal += size;
    }
    // Whatever this last buffer was, the spares wait for the next send from now on.
    if (this.held === 0 && this.spareTotal > 0) this.dropWhenIdle();
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
      this.released?.();
    }, this.idleMs);
    this.idleTimer.unref();
  }

  private cancelIdle(): void {
    if (this.idleTimer === undefined) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  private dropSpares(): void {
    this.spares.clear();
    this.spareTotal = 0;
  }
}

/**
 * The read buffers of one send, taken from the pool as its reads need them: a small blob gets a
 * buffer its size, and a long send's buffers follow its share of the budget as sends come and go
 * (the others shrink when a sixteenth pull starts, and the last one left grows back).
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
      const tooLarge = current.length > share;
      const tooSmall = current.length < share && wanted > current.length;
      if (!tooLarge && !tooSmall) return current;
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
