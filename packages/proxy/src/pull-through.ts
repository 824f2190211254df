import type { Readable } from 'node:stream';
import {
  RegistryError,
  assertTag,
  compareTags,
  cutToPage,
  parseDigest,
  parseBoundedJson,
  referrersPageOf,
  tryParseDigest,
  type BlobInfo,
  type UnsizedBlob,
  type BlobStore,
  type ByteRange,
  type Descriptor,
  type Digest,
  type Page,
  type RepositoryReader,
  type StoredManifest,
  type ReferrersPage,
  type ReferrersQuery,
  type TagPage,
} from '@wharf/registry-core';
import { fillFailed, type BlobFill } from './blob-fill.js';
import type { BlobFills } from './blob-fills.js';
import type { CacheIndex, CachedTagList } from './cache-index.js';
import type { ProxyObserver } from './observer.js';
import { checkedRange, exactRange } from './checked-range.js';
import { RESUMING } from './resuming-body.js';
import { OfflineGuard } from './offline-guard.js';
import { OUTAGES, UpstreamError, descriptorOf, isTimeout, isUpstreamDown, type Upstream, type UpstreamBlob, type UpstreamFailure } from './upstream.js';
import { verifiedBody } from './verified-body.js';

export interface PullThroughPolicy {
  /** Within this long of the last upstream check, a tag is served from the cache with no request (ms). */
  readonly manifestTtl: number;
  /** How long an upstream 404 is remembered (ms). */
  readonly absentTtl: number;
  /** Below this RateLimit-Remaining, a cached tag is served rather than re-checked. */
  readonly rateLimitFloor: number;
  /**
   * With a cached copy to fall back on, the longest a tag re-check may take, retries and Retry-After
   * waits included, before the copy is served stale (ms).
   */
  readonly revalidateTimeout?: number;
  /**
   * After a request failed because the upstream was down, for this long (ms) cached tags are served
   * at once without asking it (a 429's Retry-After lengthens that), and, if it did not answer at all,
   * requests that need it get outageProbeTimeout to be answered (OfflineGuard).
   */
  readonly outageBackoff?: number;
  /** The deadline (ms) of a request to an upstream that did not answer lately, retries included. */
  readonly outageProbeTimeout?: number;
  /**
   * Within an outage's window (not a rate limit's), a cached tag's re-check goes in the background at
   * most this often (ms), its client served stale meanwhile: the first answer ends the window.
   */
  readonly outageRecheckInterval?: number;
}

export const DEFAULT_POLICY: PullThroughPolicy = {
  manifestTtl: 5 * 60_000,
  absentTtl: 60_000,
  rateLimitFloor: 10,
  revalidateTimeout: 5_000,
  outageBackoff: 30_000,
  outageProbeTimeout: 5_000,
  outageRecheckInterval: 5_000,
};

export interface PullThroughLogger {
  warn(fields: Record<string, unknown>, message: string): void;
  info?(fields: Record<string, unknown>, message: string): void;
}

/**
 * One upstream registry seen as a read-only repository source. Policy, stated where it happens:
 * - by digest: the cache first; on a miss, the upstream; verified, stored, immutable;
 * - by tag: within manifestTtl of the last check, the cache with no upstream request; after it, a HEAD
 *   (which Docker Hub does not count as a pull): same digest → cache, new digest or no digest → GET;
 * - upstream unreachable, timing out, 5xx or 429 with a cached copy → the copy, marked stale;
 *   without one → the upstream error; upstream 404 → absent, remembered for absentTtl;
 * - blobs: one fill per digest whatever the number of clients (BlobFills).
 */
export class PullThroughRepository implements RepositoryReader {
  /** Last RateLimit-Remaining the upstream sent (for the metric). */
  rateLimitRemaining: number | undefined;
  /** Manifests served from the cache while the upstream could not be asked. */
  staleServed = 0;
  /** Until then, the upstream is taken as down: cached tags are served without asking it. */
  private unavailableUntil = 0;
  /**
   * Until then the upstream asked not to be asked (its Retry-After; a 429 without one, the whole
   * window): no answer to another request ends the window before, and no re-check goes.
   */
  private heldUntil = 0;
  /** When the window of unavailableUntil began. */
  private unavailableSince = 0;
  /** When the upstream was last asked about a tag within that window (its start counts: a failure). */
  private lastRecheckAt = 0;
  private rechecking = false;
  /** Manifest look-ups in flight, by repository and reference. */
  private readonly asking = new Map<string, Promise<StoredManifest | undefined>>();
  /** Tag list and referrers look-ups in flight (orCached). */
  private readonly listing = new Map<string, Promise<unknown>>();

  /** The upstream, asked with a short deadline for a while once it did not answer (OfflineGuard). */
  readonly upstream: OfflineGuard;

  constructor(
    upstream: Upstream,
    private readonly index: CacheIndex,
    private readonly store: BlobStore,
    private readonly fills: BlobFills,
    private readonly policy: PullThroughPolicy = DEFAULT_POLICY,
    private readonly logger?: PullThroughLogger,
    private readonly observer?: ProxyObserver,
  ) {
    this.upstream = new OfflineGuard(upstream, policy.outageBackoff ?? DEFAULT_POLICY.outageBackoff!, policy.outageProbeTimeout ?? DEFAULT_POLICY.outageProbeTimeout!, logger, (sentAt) => {
      // An upstream that answers is back: tags are checked again at once, not stale until the
      // window ends. Not a rate limit's window: one answer does not say the limit was lifted; nor
      // an answer to a request sent before the outage began.
      if (Date.now() >= this.heldUntil && sentAt >= this.unavailableSince) this.unavailableUntil = 0;
    });
  }

  private get key(): string {
    return this.upstream.name;
  }

  /** An answer of the upstream carried RateLimit-Remaining (Docker Hub's manifest requests do). */
  noteRateLimit(remaining: number): void {
    this.rateLimitRemaining = remaining;
  }

  async manifest(repo: string, reference: string): Promise<StoredManifest | undefined> {
    const digest = tryParseDigest(reference);
    if (!digest && reference.includes(':')) parseDigest(reference);
    if (!digest) assertTag(reference);
    // Clients asking at once (a node pool rolling out one image) share one look-up, and so one
    // upstream request: Docker Hub counts every manifest GET as a pull.
    const key = `${repo}\u0000${reference}`;
    let asking = this.asking.get(key);
    if (!asking) {
      asking = (digest ? this.manifestByDigest(repo, digest.digest) : this.manifestByTag(repo, reference)).finally(() => this.asking.delete(key));
      this.asking.set(key, asking);
    }
    try {
      return await asking;
    } catch (err) {
      throw toRegistryError(err);
    }
  }

  /**
   * A cache hit that needs no upstream: a digest the cache holds, or a tag last checked within
   * manifest_ttl. Anything else (a miss, a tag due for a check, an invalid reference) is undefined.
   */
  async peekManifest(repo: string, reference: string): Promise<StoredManifest | undefined> {
    return this.freshHit(repo, reference, Date.now());
  }

  private freshHit(repo: string, reference: string, now: number): StoredManifest | undefined {
    const digest = tryParseDigest(reference);
    let cached: StoredManifest | undefined;
    if (digest) {
      cached = this.index.manifest(this.key, repo, digest.digest);
    } else {
      const known = this.index.tag(this.key, repo, reference);
      if (known && this.checkedRecently(known, now)) cached = this.index.manifest(this.key, repo, known.digest);
    }
    return cached && this.hit('manifest', cached);
  }

  /** A tag checked upstream within manifest_ttl is served from the cache without asking again. */
  private checkedRecently(known: { readonly checkedAt: number }, now: number): boolean {
    return now - known.checkedAt < this.policy.manifestTtl;
  }

  private async manifestByDigest(repo: string, digest: Digest): Promise<StoredManifest | undefined> {
    const cached = this.index.manifest(this.key, repo, digest);
    if (cached) return this.hit('manifest', cached);
    if (this.index.isAbsent(this.key, repo, digest)) return undefined;
    this.observer?.cacheMiss?.(this.key, 'manifest');
    const fetched = await this.upstream.manifest(repo, digest).catch((err: unknown) => {
      if (isDenied(err)) this.remember(repo, digest, () => this.index.markAbsent(this.key, repo, digest, Date.now() + this.policy.absentTtl));
      throw err;
    });
    if (!fetched) {
      this.remember(repo, digest, () => this.index.markAbsent(this.key, repo, digest, Date.now() + this.policy.absentTtl));
      return undefined;
    }
    this.remember(repo, digest, () => this.index.putManifest(this.key, repo, fetched));
    return fetched;
  }

  /** `outer` (optional) bounds the upstream's wait too, as the caller's own deadline. */
  private async manifestByTag(repo: string, tag: string, outer?: AbortSignal): Promise<StoredManifest | undefined> {
    const now = Date.now();
    const known = this.index.tag(this.key, repo, tag);
    const cached = known ? this.index.manifest(this.key, repo, known.digest) : undefined;
    if (cached && known && this.checkedRecently(known, now)) return this.hit('manifest', cached);
    if (!cached && this.index.isAbsent(this.key, repo, tag)) return undefined;
    if (cached && now < this.unavailableUntil) {
      this.recheckInBackground(repo, tag, now);
      return this.stale(cached, repo, tag, `upstream ${this.key} is unavailable; serving the cached manifest`);
    }
    // A client with a cached copy waiting on it must not sit out the upstream's full timeouts and retries.
    const deadline = this.policy.revalidateTimeout ?? DEFAULT_POLICY.revalidateTimeout!;
    const own = cached ? AbortSignal.timeout(deadline) : undefined;
    const signal = own && outer ? AbortSignal.any([own, outer]) : (own ?? outer);
    try {
      if (cached) {
        // A 404 to the HEAD is confirmed by the GET below: some servers answer HEAD wrongly.
        const head = await this.upstream.head(repo, tag, signal);
        if (head?.digest === cached.digest) {
          this.remember(repo, tag, () => this.index.putTag(this.key, repo, tag, cached.digest, now));
          return this.hit('manifest', cached);
        }
        // Low on pulls: the cached copy rather than a GET, which Docker Hub counts. The HEAD went
        // (it does not count), and only the reading its own answer carried holds the GET back, so
        // this lasts only as long as the upstream's window. A HEAD that told nothing (no digest), or
        // carried no reading (a mirror answered it, or the upstream stopped sending the header),
        // leaves the GET to go: an older reading, or another request's, could hold the tag for
        // good. Checked now, the tag is not asked about again within manifest_ttl, as any other.
        const remaining = head?.rateLimitRemaining;
        if (head?.digest && remaining !== undefined && remaining < this.policy.rateLimitFloor) {
          this.remember(repo, tag, () => this.index.putTag(this.key, repo, tag, cached.digest, now));
          return this.stale(cached, repo, tag, `upstream rate limit nearly exhausted (${remaining} left); serving the cached manifest`);
        }
      }
      this.observer?.cacheMiss?.(this.key, 'manifest');
      const fetched = await this.upstream.manifest(repo, tag, signal);
      if (!fetched) return this.forget(repo, tag);
      this.remember(repo, tag, () => {
        this.index.putManifest(this.key, repo, fetched, now);
        this.index.putTag(this.key, repo, tag, fetched.digest, now);
        this.index.clearAbsent(this.key, repo, tag);
      });
      return fetched;
    } catch (err) {
      // Refused with nothing cached (Docker Hub's answer for a repository that does not exist, or is
      // private): as good as a 404. With a copy cached, it is served stale, as for any answer that
      // is not the manifest: expired credentials must not empty the cache.
      if (!cached && isDenied(err)) {
        this.forget(repo, tag);
        throw err;
      }
      if (cached && err instanceof UpstreamError) {
        // Only the upstream down holds back the next requests' checks; one repository's answer (a
        // refusal, a 500) does not, though it is served stale as an outage is.
        if (isUpstreamDown(err)) this.backOff(err.retryAfter, err.failure);
        // An answer that is no manifest (a captive portal's page, a body cut short, a digest that does
        // not match) is the upstream out of reach as much as a 503 is.
        const what = err.failure === 'invalid' ? 'sent no valid manifest' : 'unavailable';
        return this.stale(cached, repo, tag, `upstream ${this.key} ${what} (${err.message}); serving the cached manifest`);
      }
      if (cached && signal?.aborted) {
        this.backOff(undefined);
        return this.stale(cached, repo, tag, `upstream ${this.key} did not answer within ${deadline} ms; serving the cached manifest`);
      }
      throw err;
    }
  }

  /** The upstream answered 404 for a blob: asked again after absentTtl, as a manifest's 404 is. */
  private blobAbsent(repo: string, digest: Digest): void {
    this.remember(repo, digest, () => this.index.markAbsent(this.key, repo, absentBlob(digest), Date.now() + this.policy.absentTtl));
  }

  /**
   * Writes what was learnt to the cache index. A failure there (a full disk) costs the cache, not the
   * client: the answer in hand is served, and the next request asks the upstream again. (A lock held
   * by another process is no failure: the write waits for it off the event loop, see CacheIndex.)
   */
  private remember(repo: string, reference: string, write: () => void): void {
    try {
      write();
    } catch (err) {
      this.logger?.warn({ upstream: this.key, repo, reference, err: (err as Error).message }, 'cache index update failed; serving without caching');
    }
  }

  private backOff(retryAfterSeconds: number | undefined, failure?: UpstreamFailure): void {
    const now = Date.now();
    const window = Math.max(this.policy.outageBackoff ?? DEFAULT_POLICY.outageBackoff!, (retryAfterSeconds ?? 0) * 1000);
    const ongoing = now < this.unavailableUntil;
    if (!ongoing) this.unavailableSince = now;
    this.lastRecheckAt = now;
    // A window is never shortened, nor the upstream's hold within it (an outage meanwhile does not make it end at the first answer).
    if (retryAfterSeconds !== undefined) this.heldUntil = Math.max(this.heldUntil, now + retryAfterSeconds * 1000);
    else if (failure === 'rate-limited') this.heldUntil = Math.max(this.heldUntil, now + window);
    this.unavailableUntil = Math.max(this.unavailableUntil, now + window);
  }

  /**
   * Within an outage's window, cached tags are served without asking the upstream, so nothing but its
   * end would learn that the upstream is back: a tag pushed there meanwhile stayed stale, every answer
   * saying the upstream was unavailable, for up to 30 s after it answered again. So one request in
   * outageRecheckInterval asks about its tag in the background, its client not waiting for it: any
   * answer ends the window (OfflineGuard's onAnswer), and the next requests check their tags as usual.
   * A failure is taken as a foreground re-check's is: the upstream down lengthens the window (and a
   * Retry-After holds the next re-check), no answer lengthens the guard's period. Never while the
   * upstream's own hold lasts (a Retry-After, a 429's window).
   */
  private recheckInBackground(repo: string, tag: string, now: number): void {
    const interval = this.policy.outageRecheckInterval ?? DEFAULT_POLICY.outageRecheckInterval!;
    if (now < this.heldUntil || this.rechecking || now - this.lastRecheckAt < interval) return;
    this.rechecking = true;
    this.lastRecheckAt = now;
    const deadline = this.policy.revalidateTimeout ?? DEFAULT_POLICY.revalidateTimeout!;
    this.upstream
      .head(repo, tag, AbortSignal.timeout(deadline))
      .catch((err: unknown) => {
        // Down still: the window goes on from now, and a Retry-After it sent holds the next re-check.
        if (err instanceof UpstreamError && isUpstreamDown(err)) this.backOff(err.retryAfter, err.failure);
      })
      .finally(() => {
        this.rechecking = false;
      });
  }

  private stale(cached: StoredManifest, repo: string, tag: string, reason: string): StoredManifest {
    this.logger?.warn({ upstream: this.key, repo, tag, reason }, 'serving stale manifest');
    this.staleServed += 1;
    this.observer?.cacheHit?.(this.key, 'manifest');
    return { ...cached, warning: reason };
  }

  private hit<T>(kind: 'manifest' | 'blob', value: T): T {
    this.observer?.cacheHit?.(this.key, kind);
    return value;
  }

  /**
   * The upstream answered 404 for `tag`: absent for absentTtl, and no longer cached, so that neither
   * the next request within absentTtl nor an outage later brings the deleted tag back.
   */
  private forget(repo: string, tag: string): undefined {
    this.remember(repo, tag, () => {
      this.index.dropTag(this.key, repo, tag);
      this.index.markAbsent(this.key, repo, tag, Date.now() + this.policy.absentTtl);
    });
    return undefined;
  }

  async blob(repo: string, digest: Digest): Promise<BlobInfo | UnsizedBlob | undefined> {
    try {
      return await this.cachedOrFilledBlob(repo, digest, false);
    } catch (err) {
      throw toRegistryError(err);
    }
  }

  /**
   * Whether the cache holds the blob for `repo`, whole, with no download of it running: its ranges
   * are then read from the file one by one (a multipart answer), nothing between them.
   */
  holds(repo: string, digest: Digest): boolean {
    return this.fills.current(digest) === undefined && this.index.blob(this.key, repo, digest) !== undefined;
  }

  /**
   * The blob as the cache holds it for `repo`, complete, with no upstream request and no fill: a
   * mount's source, when an image built on a proxied one is pushed to a local repository. undefined
   * when it is not cached for this repository (or was evicted meanwhile).
   */
  async openCached(repo: string, digest: Digest): Promise<{ readonly blob: BlobInfo; readonly body: Readable } | undefined> {
    // A download that has every byte, checked, is being stored: its rows come in a moment (its
    // clients had their last byte before: a push right after the pull comes here).
    const fill = this.fills.answeredFill(digest);
    if (fill?.verified) await fill.done.catch(() => undefined);
    const size = this.index.blob(this.key, repo, digest);
    if (size === undefined) return undefined;
    const body = await this.store.open(digest);
    return body ? { blob: { digest, size }, body } : undefined;
  }

  /**
   * The blob when it is cached for this repository (a cache hit), else undefined. `opened`: the
   * caller opens the file next, and openBlob fills again when it is gone (evicted meanwhile), so the
   * file need not be looked at here too.
   */
  private async cachedHere(repo: string, digest: Digest, opened = false): Promise<BlobInfo | undefined> {
    const size = this.index.blob(this.key, repo, digest);
    return size !== undefined && (opened || (await this.store.stat(digest))) ? this.hit('blob', { digest, size }) : undefined;
  }

  /**
   * The blob when it is cached for another repository and this one has it too: served here only if
   * the upstream's HEAD finds it in this repository (`confirmed`, and linked to it from then on).
   * When the upstream is down (an outage, not a refusal), a cached manifest of this repository that
   * lists it as a layer of its own stands for that answer, for a blob that came through this same
   * upstream: an image whose manifest was cached (by a client that had the layers already) still
   * pulls during an outage from layers another image brought in. That answer is for the outage only:
   * nothing is linked.
   */
  private async cachedForAnother(repo: string, digest: Digest): Promise<(BlobInfo & { confirmed: boolean }) | undefined> {
    const size = this.index.anyBlob(digest);
    if (size === undefined || !(await this.store.stat(digest))) return undefined;
    try {
      return (await this.upstream.statBlob(repo, digest)) ? { digest, size, confirmed: true } : undefined;
    } catch (err) {
      if (!this.listedHere(repo, digest, err)) throw err;
      return { digest, size, confirmed: false };
    }
  }

  /**
   * The upstream's HEAD of a blob failed with `err`: whether this is an outage, the blob came through
   * this upstream, and a cached manifest of this repository lists it (logged when all hold).
   */
  private listedHere(repo: string, digest: Digest, err: unknown): boolean {
    if (!(err instanceof UpstreamError) || !OUTAGES.has(err.failure)) return false;
    if (!this.index.linkedThrough(this.key, digest) || !this.listsBlob(repo, digest)) return false;
    if (isUpstreamDown(err)) this.backOff(err.retryAfter, err.failure);
    this.logger?.warn({ upstream: this.key, repo, digest, reason: err.message }, 'upstream unavailable; serving a blob cached for another repository, which a cached manifest of this one lists');
    return true;
  }

  /**
   * Whether a cached manifest of this repository lists `digest` as its config or one of its layers.
   * Not a layer kept elsewhere (`urls`, a foreign or non-distributable one): a registry takes a
   * manifest listing one without holding it, so it says nothing of what the repository holds.
   */
  private listsBlob(repo: string, digest: Digest): boolean {
    return this.index.manifestsNaming(this.key, repo, digest).some((bytes) => {
      let doc: unknown;
      try {
        doc = parseBoundedJson(bytes);
      } catch {
        return false;
      }
      const m = doc as { config?: unknown; layers?: unknown; blobs?: unknown } | null;
      const listed = [m?.config, ...(Array.isArray(m?.layers) ? m.layers : []), ...(Array.isArray(m?.blobs) ? m.blobs : [])];
      return listed.some((entry) => {
        const descriptor = descriptorOf(entry);
        if (descriptor?.digest !== digest) return false;
        const urls = (entry as { urls?: unknown }).urls;
        return !(Array.isArray(urls) && urls.length > 0) && !/nondistributable|foreign/i.test(descriptor.mediaType);
      });
    });
  }

  /** `sized` false: a blob the upstream sends without a size is unsized, not waited for. */
  private async cachedOrFilledBlob(repo: string, digest: Digest): Promise<BlobInfo | undefined>;
  private async cachedOrFilledBlob(repo: string, digest: Digest, sized: false): Promise<BlobInfo | UnsizedBlob | undefined>;
  private async cachedOrFilledBlob(repo: string, digest: Digest, sized = true): Promise<BlobInfo | UnsizedBlob | undefined> {
    const cached = await this.cachedHere(repo, digest, true);
    if (cached) return cached;
    if (this.index.isAbsent(this.key, repo, absentBlob(digest))) return undefined;
    const shared = await this.cachedForAnother(repo, digest);
    if (shared) {
      if (shared.confirmed) this.remember(repo, digest, () => this.index.link(this.key, repo, digest));
      return this.hit('blob', { digest, size: shared.size });
    }
    this.observer?.cacheMiss?.(this.key, 'blob');
    if (this.fillOfAnother(digest)) {
      // Not joined: that upstream's stalls and failures are not this one's. The client gets the blob
      // from this upstream, uncached (openBlob); the other download caches it if it comes through.
      const remote = await this.upstream.statBlob(repo, digest);
      if (!remote) {
        this.blobAbsent(repo, digest);
        return undefined;
      }
      // Without a size from the HEAD, the download in flight says it after all.
      if (remote.size !== undefined) return { digest, size: remote.size };
    }
    const fill = await this.fill(repo, digest);
    if (!fill) {
      this.blobAbsent(repo, digest);
      return undefined;
    }
    if (fill.size === undefined) return sized ? await this.sizeOf(fill) : { digest, size: undefined };
    return { digest, size: fill.size };
  }

  /**
   * A fill's blob once the fill knows its size: the upstream did not say it, so the whole blob is in.
   * An upstream that failed stays that failure (a timeout is a 504); anything else was a bad blob.
   */
  private sizeOf(fill: BlobFill): Promise<BlobInfo> {
    return fill.done.catch((err: unknown) => {
      if (err instanceof UpstreamError) throw err;
      const message = String((err as { message?: unknown } | undefined)?.message);
      // A body that stopped coming (its connection's idle timeout, the resumes' too).
      if (isTimeout(err)) throw new UpstreamError('timeout', `upstream ${this.key} timed out sending the blob: ${message}`);
      throw new UpstreamError('invalid', `upstream ${this.key} sent a bad blob: ${message}`);
    });
  }

  /**
   * A HEAD: the cached blob, the fill in flight, or else the upstream's HEAD; no download starts. An
   * upstream that gives no size gets the GET path (a fill) after all, since a HEAD must say the size.
   */
  async statBlob(repo: string, digest: Digest): Promise<BlobInfo | undefined> {
    try {
      const cached = await this.cachedHere(repo, digest);
      if (cached) return cached;
      // A fill that failed to start (for whichever upstream) says nothing here: the upstream is asked.
      // So does another upstream's download not joined, not even waited for to start (apartFromFill).
      const fill = this.apartFromFill(digest, repo) ? undefined : await this.fills.current(digest)?.catch(() => undefined);
      const filling = fill && fill.sources.has(this.source(repo)) && fill.state !== 'failed' ? fill : undefined;
      if (filling?.size !== undefined) return { digest, size: filling.size };
      if (!filling && this.index.isAbsent(this.key, repo, absentBlob(digest))) return undefined;
      // A download of unknown size in flight: the upstream's HEAD may still say the size (a registry
      // that streams its GETs chunked often does); if not, the download's end does.
      // Down, with the blob cached for another repository that this one's cached manifest lists.
      const remote = await this.upstream.statBlob(repo, digest).catch(async (err: unknown) => {
        const size = filling ? undefined : this.index.anyBlob(digest);
        if (size === undefined || !(await this.store.stat(digest)) || !this.listedHere(repo, digest, err)) throw err;
        return { digest, size };
      });
      if (!remote) {
        this.blobAbsent(repo, digest);
        return undefined;
      }
      if (remote.size !== undefined) return { digest, size: remote.size };
      return await (filling ? this.sizeOf(filling) : this.cachedOrFilledBlob(repo, digest));
    } catch (err) {
      throw toRegistryError(err);
    }
  }

  async openBlob(repo: string, blob: BlobInfo | UnsizedBlob, range?: ByteRange): Promise<Readable | undefined> {
    // A fill that failed to start is none: the cached copy `blob` found is read, or a fill of our own.
    // Another upstream's download, not joined (cachedOrFilledBlob): not even waited for to start.
    if (blob.size !== undefined && this.apartFromFill(blob.digest, repo)) return await this.uncached(repo, blob, range);
    const fill = await this.fills.current(blob.digest)?.catch(() => undefined);
    if (fill?.state === 'failed') throw fillFailed(blob.digest, fill.error);
    if (blob.size === undefined) {
      // As it comes: the reader ends once the whole blob matched its digest.
      if (range) throw new TypeError('a range of a blob of unknown size');
      return fill ? await startedReader(fill) : await this.storedOrRefilled(repo, blob.digest);
    }
    if (fill && range && fill.state === 'running' && !fill.keptInMemory && range.start >= fill.received + RANGE_PASS_THROUGH_LEAD) {
      // A range the fill will not reach for a while (a resumed download, say) is asked of the upstream.
      const part = await this.rangeFromUpstream(repo, blob.digest, range, fill);
      if (part) return part;
    }
    // The size the client is told bounds a fill's reader: with it the last byte waits for the digest,
    // even where the upstream announced no size (a reader of unknown size sends every byte as it comes).
    const whole = range ?? { start: 0, end: blob.size - 1 };
    // A download kept in memory (the cache had no room for it) that has let go of the bytes this
    // client needs: the client gets them from the upstream itself.
    if (fill && !fill.canServeFrom(whole.start)) return await this.uncached(repo, blob, range);
    // Nor, from such a download, a range ending before the blob's end: its last byte would wait for
    // the whole blob's digest while the download, holding little, waits for its readers.
    if (fill?.keptInMemory && range && range.end < blob.size - 1) return await this.uncached(repo, blob, range);
    if (fill) return await startedReader(fill, whole);
    return await this.storedOrRefilled(repo, blob.digest, range, whole, range ? range.end - range.start + 1 : blob.size);
  }

  /**
   * `range` of the cached file (`bytes` long, when known), or, evicted or purged since the blob was
   * found cached (or its fill ended meanwhile), `whole` of a new fill, as any miss is.
   */
  private async storedOrRefilled(repo: string, digest: Digest, range?: ByteRange, whole?: ByteRange, bytes?: number): Promise<Readable | undefined> {
    const body = await this.store.open(digest, range);
    if (body) {
      if (bytes !== undefined) this.observer?.servedFromCache?.(this.key, bytes);
      return body;
    }
    const refill = await this.fill(repo, digest);
    return refill && (await startedReader(refill, whole));
  }

  /**
   * The upstream's answer to a range request, its last byte held until it matched the same range of
   * the blob `fill` verified (checkedRange); undefined to fall back to the fill.
   */
  private async rangeFromUpstream(repo: string, digest: Digest, range: ByteRange, fill: BlobFill): Promise<Readable | undefined> {
    let part: UpstreamBlob | undefined;
    try {
      part = await this.upstream.blob(repo, digest, range);
    } catch (err) {
      this.logger?.warn({ upstream: this.key, repo, digest, err: (err as Error).message }, 'upstream range request failed; serving it from the fill');
      return undefined;
    }
    if (!part) return undefined;
    if (part.range?.start !== range.start || part.range.end !== range.end) {
      part.body.destroy();
      return undefined;
    }
    return checkedRange(part.body, range.end - range.start + 1, async () => {
      await fill.done;
      return this.store.open(digest, range);
    });
  }

  /**
   * The blob, or `range` of it, straight from the upstream and stored nowhere, for a client that came
   * to a download kept in memory after it let go of the bytes the client needs. A whole blob's last
   * byte goes out once it matched its digest; a range must hold exactly its bytes.
   */
  private async uncached(repo: string, blob: BlobInfo, range?: ByteRange): Promise<Readable | undefined> {
    let answer: UpstreamBlob | undefined;
    try {
      answer = await this.upstream.blob(repo, blob.digest, range);
    } catch (err) {
      throw toRegistryError(err);
    }
    if (!answer) return undefined;
    if (!range) return verifiedBody(answer.body, blob.digest, blob.size);
    if (answer.range?.start !== range.start || answer.range.end !== range.end) {
      answer.body.destroy();
      throw new RegistryError('UPSTREAM_ERROR', `upstream ${this.key} did not answer the range of the blob asked for`, { digest: blob.digest });
    }
    return exactRange(answer.body, range.end - range.start + 1);
  }

  /**
   * Whether the download of `digest` in flight was started through another upstream. A client of this
   * one does not wait on it: a slow or failing upstream would hold or fail the pulls of a healthy one
   * (the soak audit's finding: an 816-byte layer took 4.9 s behind a stalling upstream's download).
   * Another repository of this upstream shares the download, as it shares the upstream's outages.
   */
  private fillOfAnother(digest: Digest): boolean {
    // Known only while the download is in flight; a source of this upstream begins as source() does.
    const started = this.fills.startedFor(digest);
    return started !== undefined && !started.startsWith(this.source(''));
  }

  /**
   * Whether `repo`'s client must neither join nor wait for the download of `digest` in flight: another
   * upstream's, which this repository has not joined (once it has, it reads it as any other of its own).
   */
  private apartFromFill(digest: Digest, repo: string): boolean {
    return this.fillOfAnother(digest) && this.fills.answeredFill(digest)?.sources.has(this.source(repo)) !== true;
  }

  /** Who reads a fill through this upstream and repository (BlobFill.sources). */
  private source(repo: string): string {
    return `${this.key}\u0000${repo}`;
  }

  private async fill(repo: string, digest: Digest): Promise<BlobFill | undefined> {
    const source = this.source(repo);
    let asked = false;
    const fetch = async (range?: ByteRange): Promise<UpstreamBlob | undefined> => {
      asked = true;
      const blob = await this.upstream.blob(repo, digest, range);
      // Its clients do not notice; whoever runs Wharf wants to know the upstream's link is bad.
      // (A cut its resumes cannot mend fails the download, logged as 'upstream blob fill failed'.)
      blob?.body.on(RESUMING, (err: unknown, at: number) => {
        this.logger?.warn({ upstream: this.key, repo, digest, at, reason: (err as Error).message }, 'blob download cut by the upstream');
      });
      return blob;
    };
    const another = this.fills.current(digest) !== undefined && this.fills.startedFor(digest) !== source;
    let fill = await this.fills.join(digest, fetch, source, this.key).catch((err: unknown) => {
      // Joined another upstream's (or repository's) download, which failed to start there (that
      // upstream down, or refusing that repository): that says nothing of this one, asked below.
      if (asked || !another) throw err;
      return undefined;
    });
    // Or which came to nothing there (a 404): the same.
    if (!fill && !asked) fill = await this.fills.join(digest, fetch, source, this.key);
    if (asked && fill && fill.resumedFrom > 0) {
      this.logger?.info?.({ upstream: this.key, repo, digest, from: fill.resumedFrom }, 'blob fill goes on from the bytes of a download cut short');
    }
    if (fill && !fill.sources.has(source)) {
      // Another upstream or repository started this download: it is read here only if this upstream
      // has the blob for this repository too, as for a copy already cached for another repository.
      if (!(await this.upstream.statBlob(repo, digest))) return undefined;
      fill.sources.add(source);
    }
    fill?.done
      .then(
        (blob) => {
          if (fill.notStored) {
            // Its clients got the blob, from memory; the next pull downloads it again.
            if (asked) this.logger?.warn({ upstream: this.key, repo, digest, size: blob.size, reason: fill.notStored.message }, 'blob served without caching it: no space left on storage');
            return;
          }
          this.index.putBlob(blob.digest, blob.size);
          this.index.link(this.key, repo, blob.digest);
        },
        // Logged once, by the request that started the download, not by each client that joined it.
        (err: unknown) => {
          if (asked) {
            // What the next fill goes on from (the whole blocks it had), when its upstream cut it.
            const kept = this.fills.remnantOf(digest);
            this.logger?.warn({ upstream: this.key, repo, digest, err: (err as Error).message, ...(kept > 0 ? { kept } : {}) }, 'upstream blob fill failed');
          }
        },
      )
      // Nobody awaits this chain: a failed index write (say, the database closed at shutdown) must be
      // logged, not become an unhandled rejection that ends the process.
      .catch((err: unknown) => this.logger?.warn({ upstream: this.key, repo, digest, err: (err as Error).message }, 'cache index update failed'));
    return fill;
  }

  /**
   * The upstream's tags (a tag list is no pull: Docker Hub does not count it against the rate limit).
   * The list as read from its start (up to 20 of the upstream's pages, HttpUpstream) is kept:
   * within manifestTtl of it, the pages that start inside it are served from it with no upstream
   * request (image automation polls tag lists). A list read whole is served in the registry's
   * order; one too long to read whole in the upstream's own order, the order it applies a `last` in,
   * with a `Link` past what was read, so that a client following the links gets every tag once.
   * When the upstream cannot answer: that kept list, else the tags this cache has pulled.
   */
  async listTags(repo: string, n: number, last?: string): Promise<TagPage | undefined> {
    const kept = this.index.tagList(this.key, repo);
    const fromKept = kept && pageOfTagList(kept, last, n);
    if (fromKept && Date.now() - kept.fetchedAt < this.policy.manifestTtl) return fromKept;
    // The pulled tags are in the registry's order: not a later page of a walk in the upstream's.
    const cached = fromKept ?? (last !== undefined && kept && !kept.whole ? undefined : this.pulledTags(repo, n, last));
    const served = fromKept ? 'the tags of its last answer' : 'only the tags pulled through this cache';
    const marked = cached && ((reason: string): TagPage => ({ ...cached, warning: `${reason}; serving ${served}` }));
    return this.orCached('tags', `t\0${repo}\0${n}\0${last ?? ''}`, repo, cached, marked, async (signal) => {
      // Read from the start, as far as the upstream's pages are followed (a first page, and a later
      // one unless the list was last seen too long to read whole): whether it is read whole decides
      // the order every page is served in, so each page of one client's walk is cut the same way.
      if (last === undefined || !kept || kept.whole) {
        const listed = await this.upstream.tags(repo, {}, signal);
        if (listed === undefined) {
          this.remember(repo, 'tags', () => this.index.dropTagList(this.key, repo));
          return undefined;
        }
        const tags = [...new Set(listed.tags)];
        if (listed.whole) tags.sort(compareTags);
        this.remember(repo, 'tags', () => this.index.putTagList(this.key, repo, tags, listed.whole));
        if (last === undefined) return { tags: tags.slice(0, n), more: !listed.whole || tags.length > n };
        const page = pageOfTagList({ tags, whole: listed.whole, fetchedAt: 0 }, last, n);
        if (page) return page;
      }
      return this.upstreamTagPage(repo, n, last, signal);
    });
  }

  /** The page after `last` as the upstream pages its list (in its order, which is the one of its `last`). */
  private async upstreamTagPage(repo: string, n: number, last: string, signal: AbortSignal | undefined): Promise<TagPage | undefined> {
    const listed = await this.upstream.tags(repo, { n, last }, signal);
    if (listed === undefined) return undefined;
    const tags = [...new Set(listed.tags)];
    // Nothing past `last` and yet more pages: an upstream that ignores `last` and lists from its
    // start again. An empty page would end the client's walk there, silently short of the rest.
    if (tags.length === 0 && !listed.whole) throw new UpstreamError('invalid', `upstream ${this.key} ignores the last parameter of its tag list`);
    return { tags: tags.slice(0, n), more: !listed.whole || tags.length > n };
  }

  /**
   * A page of the tags this cache has pulled, for when the upstream cannot list them: a first page, or
   * one after a `last` that is one of them (the client pages this list); undefined otherwise, which
   * must not read as an empty list's end.
   */
  private pulledTags(repo: string, n: number, last: string | undefined): TagPage | undefined {
    if (last !== undefined && !this.index.tag(this.key, repo, last)) return undefined;
    const tags = this.index.tags(this.key, repo, last ?? '', n + 1);
    if (last === undefined && tags.length === 0) return undefined;
    return { tags, more: cutToPage(tags, n) };
  }

  /**
   * The upstream's referrers of `subject`. An upstream without the referrers API (CNCF distribution
   * 2.x, GHCR) is read as the spec asks a client to: the index tagged `<alg>-<hex>` (the referrers
   * tag schema) lists them, and no such tag means none. Either way the answer is a list, never a
   * 404, which the spec forbids a registry with the API (and clients then still find what the tag
   * schema holds). Each answer is kept: when the upstream cannot answer, the last one is served, so
   * that a signature check in CI still passes while the upstream is down.
   */
  async listReferrers(repo: string, subject: Digest, query: ReferrersQuery = {}): Promise<ReferrersPage> {
    const all = await this.allReferrers(repo, subject);
    return { ...all, ...referrersPageOf(all.descriptors, query) };
  }

  /** The whole list listReferrers pages. */
  private async allReferrers(repo: string, subject: Digest): Promise<ReferrersPage> {
    const entry = this.index.referrersEntry(this.key, repo, subject);
    const kept = entry && { descriptors: entry.descriptors };
    // Within manifestTtl of the last answer, no upstream request (a signature check per pull in CI).
    if (kept && Date.now() - entry.fetchedAt < this.policy.manifestTtl) return kept;
    const marked = kept && ((reason: string): ReferrersPage => ({ ...kept, warning: `${reason}; serving the referrers of its last answer` }));
    const listed = await this.orCached('referrers', `r\0${repo}\0${subject}`, repo, kept, marked, async (signal) => {
      const found = (await this.upstream.referrers(repo, subject, signal)) ?? (await this.referrersByTagSchema(repo, subject, signal));
      this.remember(repo, subject, () => this.index.putReferrers(this.key, repo, subject, found));
      return { descriptors: found };
    });
    return listed ?? { descriptors: [] };
  }

  /** listReferrers, the descriptors alone. */
  async referrers(repo: string, subject: Digest): Promise<Descriptor[]> {
    return (await this.allReferrers(repo, subject)).descriptors;
  }

  /** The manifests of the upstream's index tagged `<alg>-<hex>` of `subject`; none without that tag. */
  private async referrersByTagSchema(repo: string, subject: Digest, signal: AbortSignal | undefined): Promise<Descriptor[]> {
    const index = await this.manifestByTag(repo, referrersTag(subject), signal);
    if (!index) return [];
    let doc: unknown;
    try {
      doc = parseBoundedJson(index.bytes);
    } catch {
      return [];
    }
    const manifests = (doc as { manifests?: unknown } | null)?.manifests;
    return Array.isArray(manifests) ? manifests.flatMap((entry) => descriptorOf(entry) ?? []) : [];
  }

  /**
   * `ask`'s answer from the upstream; with a `cached` answer to fall back on, the upstream's wait is
   * bounded as for a tag re-check, and when it cannot answer (or is in its outage back-off) the cached
   * answer is served (as `stale` makes it of the reason, when given), with a log line. Clients asking
   * the same (`key`) at once share one request.
   */
  private orCached<T>(
    what: string,
    key: string,
    repo: string,
    cached: T | undefined,
    stale: ((reason: string) => T) | undefined,
    ask: (signal?: AbortSignal) => Promise<T | undefined>,
  ): Promise<T | undefined> {
    const running = this.listing.get(key) as Promise<T | undefined> | undefined;
    if (running) return running;
    const answer = this.askOrCached(what, repo, cached, stale, ask).finally(() => this.listing.delete(key));
    this.listing.set(key, answer);
    return answer;
  }

  private async askOrCached<T>(
    what: string,
    repo: string,
    cached: T | undefined,
    marked: ((reason: string) => T) | undefined,
    ask: (signal?: AbortSignal) => Promise<T | undefined>,
  ): Promise<T | undefined> {
    const stale = (reason: string): T => {
      this.logger?.warn({ upstream: this.key, repo, reason }, `serving the cached ${what}`);
      return marked ? marked(reason) : cached!;
    };
    if (cached !== undefined && Date.now() < this.unavailableUntil) return stale(`upstream ${this.key} is unavailable`);
    const deadline = this.policy.revalidateTimeout ?? DEFAULT_POLICY.revalidateTimeout!;
    const signal = cached !== undefined ? AbortSignal.timeout(deadline) : undefined;
    try {
      return await ask(signal);
    } catch (err) {
      // Refused (`denied`) as well: credentials that lost access do not empty the cache, as for manifests.
      if (cached !== undefined && ((err instanceof UpstreamError && err.failure !== 'invalid') || signal?.aborted)) {
        if (isUpstreamDown(err)) this.backOff(err.retryAfter, err.failure);
        return stale(`upstream ${this.key} unavailable (${(err as Error).message})`);
      }
      throw toRegistryError(err);
    }
  }
}

/**
 * The page (`last`, `n`) of a kept tag list, when it holds it. A whole list (the upstream's last page
 * was read) is in the registry's order and holds every page, cut in that order, the one the `last` of
 * this server's `Link` comes from. A list cut short is in the upstream's order and holds the pages
 * that start inside it. Undefined otherwise.
 */
export function pageOfTagList(kept: CachedTagList, last: string | undefined, n: number): TagPage | undefined {
  const { tags } = kept;
  if (kept.whole) {
    const start = last === undefined ? 0 : tags.findIndex((tag) => compareTags(tag, last) > 0);
    return start < 0 ? { tags: [], more: false } : { tags: tags.slice(start, start + n), more: start + n < tags.length };
  }
  const start = last === undefined ? 0 : tags.indexOf(last) + 1;
  if (last !== undefined && start === 0) return undefined;
  // Shorter than n at its end: a page may hold fewer than n, and its Link goes on at the upstream.
  return start < tags.length ? { tags: tags.slice(start, start + n), more: true } : undefined;
}

/**
 * How far ahead of the fill a range must start to be asked of the upstream instead of waiting for the
 * fill to get there.
 */
const RANGE_PASS_THROUGH_LEAD = 16 * 1024 * 1024;

/**
 * The referrers tag schema's tag of `subject`: `<alg>-<hex>`, the algorithm cut to 32 characters and
 * the hex to 64, so that it is a valid tag whatever the algorithm.
 */
export function referrersTag(subject: Digest): string {
  const [alg = '', hex = ''] = subject.split(':');
  return `${alg.slice(0, 32)}-${hex.slice(0, 64)}`;
}

/**
 * A reader of `range` of a running fill, once the fill has its first byte (or is done): the status
 * line and headers go out with the first bytes. A fill that fails before then (an upstream that
 * stalls after its headers, a 204) is the client's error answer, a 502 with the reason, not a
 * connection closed before any status line, which Docker can only call "unexpected EOF".
 */
async function startedReader(fill: BlobFill, range?: ByteRange): Promise<Readable> {
  // Made first: a fill kept in memory holds the bytes from range.start for its readers only.
  const reader = fill.reader(range);
  try {
    // Without a range, the whole blob, of a size known or not (then its first bytes, or its end).
    if (!range) await fill.next(0, fill.size !== undefined ? fill.size - 1 : undefined, true);
    else if (range.end >= range.start) await fill.next(range.start, range.end, true);
  } catch (err) {
    reader.destroy();
    throw err;
  }
  return reader;
}

function isDenied(err: unknown): boolean {
  return err instanceof UpstreamError && err.failure === 'denied';
}

/** The upstream's failure as the client sees it: 429 stays 429, a timeout is 504, the rest 502. */
export function toRegistryError(err: unknown): unknown {
  if (!(err instanceof UpstreamError)) return err;
  const detail = { failure: err.failure, ...(err.status ? { status: err.status } : {}), ...(err.retryAfter !== undefined ? { retryAfter: err.retryAfter } : {}) };
  if (err.failure === 'rate-limited') return new RegistryError('TOOMANYREQUESTS', err.message, detail);
  if (err.failure === 'timeout') return new RegistryError('UPSTREAM_TIMEOUT', err.message, detail);
  if (err.failure === 'denied') return new RegistryError('NAME_UNKNOWN', err.message, detail);
  // The upstream said it is down for now (maintenance, overload): so is what it serves, for as long
  // as its Retry-After says; clients take a 503 as worth another try, as they do from it.
  if (err.failure === 'server-error' && err.status === 503) return new RegistryError('UNAVAILABLE', err.message, detail);
  return new RegistryError('UPSTREAM_ERROR', err.message, detail);
}

/**
 * The reference a blob's 404 is remembered under: apart from the same digest's as a manifest (a
 * digest asked as a manifest, and answered 404 there, may well be a blob) and from every tag (no
 * tag has "@").
 */
function absentBlob(digest: Digest): string {
  return `blob@${digest}`;
}
