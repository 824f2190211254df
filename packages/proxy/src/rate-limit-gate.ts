import { UpstreamError } from './upstream.js';

export interface RateLimitGateLogger {
  warn(fields: Record<string, unknown>, message: string): void;
}

/**
 * An upstream that answered a manifest request with 429 and a Retry-After is not asked for
 * manifests the cache lacks until that time has passed: each such request gets the 429 again at
 * once, with what is left of the wait. Docker Hub counts every manifest GET against the pull limit,
 * a 429 included, so a CI fleet asking again on every job only kept its address limited. (Cached
 * manifests are served stale meanwhile: PullThroughRepository's backOff.)
 */
export class RateLimitGate {
  private closed: { readonly until: number; readonly reason: string } | undefined;

  constructor(
    private readonly upstream: string,
    private readonly logger?: RateLimitGateLogger,
  ) {}

  /** Throws the upstream's 429 again, with the wait left, while its Retry-After lasts. */
  check(now = Date.now()): void {
    if (!this.closed) return;
    const left = Math.ceil((this.closed.until - now) / 1000);
    if (left <= 0) {
      this.closed = undefined;
      return;
    }
    throw new UpstreamError('rate-limited', `${this.closed.reason}; not asked again for ${left} s`, 429, left);
  }

  /** Takes note of a failed manifest request: a 429 with a Retry-After closes the gate for that long. */
  note(err: unknown, now = Date.now()): void {
    if (!(err instanceof UpstreamError) || err.failure !== 'rate-limited' || !err.retryAfter) return;
    const until = now + err.retryAfter * 1000;
    if (this.closed && this.closed.until >= until) return;
    // The gate's own answer is noted too: it must not stretch the wait it repeats.
    if (this.closed && err.message.startsWith(this.closed.reason)) return;
    this.closed = { until, reason: err.message };
    this.logger?.warn({ upstream: this.upstream, reason: err.message, seconds: err.retryAfter }, 'upstream rate limit: manifests not cached are not asked for until its Retry-After has passed');
  }
}
