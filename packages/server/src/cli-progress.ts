/** Bytes for people: 1.5 KiB, 12.3 MiB. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** A count for people: `1 blob`, `2 blobs`, `0 blobs` (`plural` where adding an s is wrong). */
export function counted(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}

/**
 * A progress bar on standard error when it is a terminal (redrawn at most ten times a second); when it
 * is not, a plain line at every tenth of the way, so logs stay readable.
 */
export class ProgressBar {
  private lastDraw = 0;
  private lastTenth = -1;
  private shown = false;

  constructor(
    private readonly label: string,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {}

  update(done: number, total: number, detail: string): void {
    const ratio = total > 0 ? Math.min(1, done / total) : 1;
    if (!this.out.isTTY) {
      const tenth = Math.floor(ratio * 10);
      if (tenth > this.lastTenth) {
        this.lastTenth = tenth;
        this.out.write(`${this.label}: ${Math.round(ratio * 100)}% ${detail}\n`);
      }
      return;
    }
    const now = Date.now();
    if (now - this.lastDraw < 100 && ratio < 1) return;
    this.lastDraw = now;
    const width = Math.max(10, Math.min(40, (this.out.columns ?? 80) - this.label.length - detail.length - 12));
    const filled = Math.round(ratio * width);
    this.out.write(`\r\x1b[K${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(Math.round(ratio * 100)).padStart(3)}% ${detail}`);
    this.shown = true;
  }

  /** Clears the bar (before another line is printed; the next update draws it again). */
  clear(): void {
    if (this.shown && this.out.isTTY) this.out.write('\r\x1b[K');
    this.shown = false;
    this.lastDraw = 0;
  }
}
