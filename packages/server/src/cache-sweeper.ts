import type { CacheEviction, EvictionPolicy } from '@wharf/proxy';
import type { Logger } from 'pino';

/**
 * Sweeps started by stored blobs wait this long after the last sweep ended (and at least
 * FIRST_DELAY_MS): a burst of fills makes one sweep, and a sweep's scan of the table (tens of
 * milliseconds at a million blobs) takes a small part of the event loop however busy the cache is.
 */
const GAP_MS = 10_000;
const FIRST_DELAY_MS = 1_000;

/**
 * Runs the proxy cache's eviction sweep: every `eviction_interval`, and soon after the blobs fills
 * store take the cache past `max_size` (CacheEviction.stored keeps the estimate), so that a busy
 * cache outgrows `max_size` by seconds' worth of downloads, not by an interval's (an hour by default).
 */
export class CacheSweeper {
  private readonly timer: NodeJS.Timeout;
  private soon: NodeJS.Timeout | undefined;
  private lastEnded = 0;
  private stopped = false;

  constructor(
    private readonly eviction: CacheEviction,
    private readonly policy: EvictionPolicy,
    intervalMs: number,
    private readonly logger: Logger,
  ) {
    this.timer = setInterval(() => void this.sweep(), Math.max(1000, intervalMs));
    this.timer.unref();
  }

  /** A fill stored a blob of `size` bytes in the cache. */
  stored(size: number): void {
    if (!this.stopped && this.eviction.stored(size, this.policy.maxSize)) this.sweepSoon();
  }

  /** One sweep now, unless one runs (a long sweep spans ticks: the next has nothing to add, nor to log). */
  async sweep(): Promise<void> {
    if (this.stopped || this.eviction.sweeping) return;
    try {
      const report = await this.eviction.sweep(this.policy);
      if (report.blobs + report.manifests > 0) this.logger.info(report, 'proxy cache evicted');
      if (report.larger) {
        this.logger.warn({ blobs: report.larger, maxSize: this.policy.maxSize }, 'proxy cache: blobs larger than max_size alone are not kept (each pull downloads them again); raise max_size');
      }
    } catch (err) {
      this.logger.warn({ err }, 'proxy cache eviction failed');
    } finally {
      this.lastEnded = Date.now();
    }
  }

  /** No sweep starts any more; resolves once the running one (if any) has ended. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    if (this.soon) clearTimeout(this.soon);
    await this.eviction.idle();
  }

  private sweepSoon(): void {
    if (this.soon || this.stopped) return;
    const delay = Math.max(FIRST_DELAY_MS, this.lastEnded + GAP_MS - Date.now());
    this.soon = setTimeout(() => {
      // A sweep running now (the timer's, a gc's) may have missed the blobs stored during it, or not.
      void this.eviction.idle().then(() => {
        this.soon = undefined;
        if (this.eviction.overSize(this.policy.maxSize)) return this.sweep();
      });
    }, delay);
    this.soon.unref();
  }
}
