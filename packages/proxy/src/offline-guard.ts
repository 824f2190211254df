import type { ByteRange, Descriptor, Digest, Page } from '@wharf/registry-core';
import { UpstreamError, isTimeout, type Upstream, type UpstreamBlob, type UpstreamBlobStat, type UpstreamHead, type UpstreamManifest, type UpstreamTags } from './upstream.js';

export interface OfflineGuardLogger {
  warn(fields: Record<string, unknown>, message: string): void;
  info?(fields: Record<string, unknown>, message: string): void;
}

/**
 * An upstream that did not answer is asked with a short deadline for a while. Once a request to it
 * ends without an answer (unreachable, or timed out after the upstream client's own retries), every
 * request for `periodMs` gets `probeMs` to be answered (retries included), not the full timeouts:
 * against a stalled upstream, each CI job pulling an image that is not cached gets its 504 in
 * seconds rather than a minute or two (Docker's HEAD, then its GET, each waited the timeouts out).
 * Each request still asks, so the first after the upstream is back is served as usual, and any
 * answer ends the period; one that fails again lengthens it. What is cached is served meanwhile
 * (PullThroughRepository serves a stale copy on such a failure). An upstream that answers, even with
 * a 429 or a 5xx, is not "down" here: it answers fast, and its Retry-After is honoured upstream.
 */
export class OfflineGuard implements Upstream {
  private offline: { until: number; readonly since: number } | undefined;

  constructor(
    private readonly inner: Upstream,
    private readonly periodMs: number,
    private readonly probeMs: number,
    private readonly logger?: OfflineGuardLogger,
    /** Told of every answer the upstream gives (a 404 included), with when its request was sent: it is up. */
    private readonly onAnswer?: (sentAt: number) => void,
  ) {}

  get name(): string {
    return this.inner.name;
  }

  /** The upstream did not answer lately: requests to it get `probeMs`. */
  get isOffline(): boolean {
    return this.offline !== undefined && Date.now() < this.offline.until;
  }

  head(repo: string, reference: string, signal?: AbortSignal): Promise<UpstreamHead | undefined> {
    return this.ask(signal, (s) => this.inner.head(repo, reference, s));
  }

  manifest(repo: string, reference: string, signal?: AbortSignal): Promise<UpstreamManifest | undefined> {
    return this.ask(signal, (s) => this.inner.manifest(repo, reference, s));
  }

  blob(repo: string, digest: Digest, range?: ByteRange, signal?: AbortSignal): Promise<UpstreamBlob | undefined> {
    return this.ask(signal, (s) => this.inner.blob(repo, digest, range, s));
  }

  statBlob(repo: string, digest: Digest, signal?: AbortSignal): Promise<UpstreamBlobStat | undefined> {
    return this.ask(signal, (s) => this.inner.statBlob(repo, digest, s));
  }

  tags(repo: string, page: Page, signal?: AbortSignal): Promise<UpstreamTags | undefined> {
    return this.ask(signal, (s) => this.inner.tags(repo, page, s));
  }

  referrers(repo: string, subject: Digest, signal?: AbortSignal): Promise<Descriptor[] | undefined> {
    return this.ask(signal, (s) => this.inner.referrers(repo, subject, s));
  }

  private async ask<T>(signal: AbortSignal | undefined, call: (signal: AbortSignal | undefined) => Promise<T>): Promise<T> {
    // The deadline runs until the answer's headers: a blob's body then flows for as long as it takes.
    const probe = this.isOffline ? new AbortController() : undefined;
    // Read now: an answer to another request may end the period before this one's deadline passes.
    const downSince = this.offline?.since;
    const sentAt = Date.now();
    const timer = probe ? setTimeout(() => probe.abort(new DOMException('no answer within the deadline of an upstream that is down', 'TimeoutError')), this.probeMs) : undefined;
    try {
      const answer = await call(probe ? (signal ? AbortSignal.any([signal, probe.signal]) : probe.signal) : signal);
      this.onAnswer?.(sentAt);
      if (this.offline) {
        this.offline = undefined;
        this.logger?.info?.({ upstream: this.name }, 'upstream answers again');
      }
      return answer;
    } catch (err) {
      // A caller whose client went away learnt nothing about the upstream; one whose own deadline
      // passed with no answer (a cached tag's quick re-check) learnt that it does not answer.
      if (signal?.aborted) {
        if (isTimeout(signal.reason)) this.wentDown(new UpstreamError('timeout', `upstream ${this.name} did not answer within the deadline`));
        throw err;
      }
      if (probe?.signal.aborted) {
        const down = Math.round((Date.now() - (downSince ?? sentAt)) / 1000);
        const failure = new UpstreamError('timeout', `upstream ${this.name} timed out (no answer within ${this.probeMs / 1000} s; not answering for ${down} s)`);
        this.stillDown();
        throw failure;
      }
      if (err instanceof UpstreamError && (err.failure === 'unreachable' || err.failure === 'timeout')) this.wentDown(err);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  private wentDown(cause: UpstreamError): void {
    // outage_backoff = 0s: no period, and no word of one.
    if (this.periodMs <= 0) return;
    if (this.isOffline) return this.stillDown();
    this.offline = { since: Date.now(), until: Date.now() + this.periodMs };
    this.logger?.warn({ upstream: this.name, reason: cause.message, probeSeconds: this.probeMs / 1000 }, 'upstream not answering; requests to it get a short deadline for a while');
  }

  private stillDown(): void {
    if (this.offline) this.offline.until = Date.now() + this.periodMs;
  }
}
