import type { CacheEviction, EvictionPolicy } from '@wharf/proxy';
import type { Logger } from 'pino';

/**
 * Sweeps started by stored blobs start this long after the last sweep started (and at least
 * FIRST_DELAY_MS after the blob that took the cache past max_size): a burst of fills makes one sweep.
 * Such a sweep evicts by size only: it reads the cache's total from one row and the least recently
 * used blobs from an index, a few milliseconds at a million blobs (CacheEviction.sweep).
 */
const GAP_MS = 10_000;
const FIRST_DELAY_MS = 1_000;

/**
 * Runs the proxy cache's eviction sweep: every `eviction_interval`, and soon after the blobs fills
 * store take the cache past `max_size` (CacheEviction.overSize), so that a busy
 * cache outgrows `max_size` by about ten seconds' worth of downloads, not by an interval's (an hour
 * by default). An interval of 0 leaves only the sweeps downloads start (and gc's).
 */
export class CacheSweeper {
  /** The sweep every `eviction_interval` (none for 0). */
  private readonly timer: NodeJS.Timeout | undefined;
  private soon: NodeJS.Timeout | undefined;
  private lastStarted = 0;
  private stopped = false;

  constructor(
    private readonly eviction: CacheEviction,
    private readonly policy: EvictionPolicy,
    intervalMs: number,
    private readonly logger: Logger,
  ) {
    this.timer = intervalMs > 0 ? setInterval(() => void this.sweep(), Math.max(1000, intervalMs)) : undefined;
    this.timer?.unref();
    // A cache already past max_size at the start (max_size lowered, say) need not wait for a download.
    if (policy.maxSize > 0) this.sweepSoon(false);
  }

  /** A fill stored a blob of `size` bytes in the cache. */
  stored(size: number): void {
    if (!this.stopped && this.eviction.overSize(this.policy.maxSize, size)) this.sweepSoon();
  }

  /**
   * One sweep now, unless one runs (a long sweep spans ticks: the next has nothing to add, nor to
   * log); `sizeOnly`: by max_size alone.
   */
  async sweep(sizeOnly = false): Promise<void> {
    // A whole sweep asked for during one by size alone comes after it (CacheEviction.sweep).
    if (this.stopped || (sizeOnly ? this.eviction.sweeping : this.eviction.sweepingWhole)) return;
    this.lastStarted = Date.now();
    try {
      const report = await this.eviction.sweep(this.policy, Date.now(), { sizeOnly });
      if (report.blobs + report.manifests > 0) this.logger.info(report, 'proxy cache evicted');
      if (report.larger) {
        this.logger.warn({ blobs: report.larger, maxSize: this.policy.maxSize }, 'proxy cache: blobs larger than max_size alone are not kept (each pull downloads them again); raise max_size');
      }
    } catch (err) {
      this.logger.warn({ err }, 'proxy cache eviction failed');
    }
  }

  /**
   * No sweep starts any more, and the running one (if any) ends after the batch of blobs it is
   * removing; resolves then.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.soon) clearTimeout(this.soon);
    this.eviction.stop();
    await this.eviction.idle();
  }

  /** A sweep soon if the cache is then past max_size (`sizeOnly`: by max_size alone). */
  private sweepSoon(sizeOnly = true): void {
    if (this.soon || this.stopped) return;
    const delay = Math.max(FIRST_DELAY_MS, this.lastStarted + GAP_MS - Date.now());
    this.soon = setTimeout(() => {
      // A sweep running now (the timer's, a gc's) may have made room already, or not.
      void this.eviction.idle().then(() => {
        this.soon = undefined;
        if (!this.stopped && this.eviction.overSize(this.policy.maxSize)) return this.sweep(sizeOnly);
      });
    }, delay);
    this.soon.unref();
  }
}
