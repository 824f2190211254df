import { UpstreamError } from './upstream.js';

export interface RateLimitGateLogger {
  warn(fields: Record<string, unknown>, message: string): void;
}

/**
 * An upstream (one origin: each mirror has its own) that answered a manifest GET with 429 and a
 * Retry-After is sent no manifest GET until that time has passed: each gets the 429 again at once,
 * with what is left of the wait (a mirrored upstream then asks its other mirrors). Docker Hub
 * counts every manifest GET against the pull limit, 429s included, so a CI fleet asking again on
 * every job only kept its address limited.
 */
export class RateLimitGate {
  private closed: { readonly until: number; readonly reason: string } | undefined;

  constructor(
    private readonly upstream: string,
    private readonly url: string,
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

  /** Takes note of a failed manifest GET: a 429 with a Retry-After closes the gate for that long. */
  note(err: unknown, now = Date.now()): void {
    if (!(err instanceof UpstreamError) || err.failure !== 'rate-limited' || !err.retryAfter) return;
    const until = now + err.retryAfter * 1000;
    if (this.closed && this.closed.until >= until) return;
    this.closed = { until, reason: err.message };
    this.logger?.warn({ upstream: this.upstream, url: this.url, reason: err.message, seconds: err.retryAfter }, 'upstream rate limit: no manifest GET goes to it until its Retry-After has passed');
  }
}
