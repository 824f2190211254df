/**
 * Read buffers of blob sends, under one budget for all of them together: those held by sends and the
 * spares kept for the next ones. A send gets what the budget has left (between `min` and `max` per
 * buffer), so sixteen clients arriving at once hold the budget between them, not sixteen times the
 * largest buffer. Spares spare the allocator: without them every pull allocates anew, and the dead
 * buffers wait for a garbage collection V8 starts only after tens of MiB of them. Once no send has
 * held a buffer for `idleMs`, the spares go and `released` is called (to collect them: dead buffers
 * stay in the RSS until a full garbage collection): a registry that served a burst of pulls and then
 * only manifests should not keep the burst's buffers.
 */
export class ReadBufferPool {
  /** Bytes of buffers held by sends now. */
  private held = 0;
  private readonly spares = new Map<number, Buffer[]>();
  private spareTotal = 0;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly budget: number,
    private readonly max: number,
    private readonly min: number,
    private readonly idleMs = 1000,
    private readonly released?: () => void,
  ) {}

  /** The size of each of a send's `count` buffers for `length` bytes: what the budget has left, within [min, max]. */
  sizeFor(length: number, count: number): number {
    const left = Math.floor((this.budget - this.held) / count / this.min) * this.min;
    return Math.max(1, Math.min(length, this.max, Math.max(this.min, left)));
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
