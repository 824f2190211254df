/**
 * Blocks of memory that all fills together hold (those in their windows and their spare blocks),
 * against one limit. Each fill's own share was bounded but their sum was not: forty cold pulls of
 * distinct layers at once held 226 MiB of blocks and took the server to 394 MiB of RSS. At the limit,
 * a fill lets go of its written blocks and its spares, and if it still holds more than one block, it
 * pauses its upstream until its own disk writes give blocks back: it never waits on another fill or
 * on a client, and mostly holds two blocks (one being written, one being filled).
 */
export class FillBudget {
  private held = 0;
  private highest = 0;
  private readonly waiting = new Set<() => void>();

  constructor(public limit: number) {}

  /** Blocks held now. */
  get blocks(): number {
    return this.held;
  }

  /** Most blocks held at once since the last `resetPeak` (for tests and measurements). */
  get peak(): number {
    return this.highest;
  }

  resetPeak(): void {
    this.highest = this.held;
  }

  /** Whether the fills hold the limit or more. */
  get spent(): boolean {
    return this.held >= this.limit;
  }

  take(): void {
    this.held += 1;
    if (this.held > this.highest) this.highest = this.held;
  }

  /** `count` blocks came back: below the limit, every waiting fill is woken. */
  give(count = 1): void {
    if (count <= 0) return;
    this.held -= count;
    if (this.held < this.limit) for (const wake of [...this.waiting]) wake();
  }

  /** `wake` is called once the fills hold less than the limit (it may be called more than once). */
  waitFor(wake: () => void): void {
    this.waiting.add(wake);
  }

  stopWaiting(wake: () => void): void {
    this.waiting.delete(wake);
  }
}
