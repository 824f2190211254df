import { PassThrough } from 'node:stream';
import type { ByteRange, Descriptor, Digest, Page } from '@wharf/registry-core';
import { RESUMING, resumingBlob } from './resuming-body.js';
import { OUTAGES, UpstreamError, isTimeout, isUpstreamDown, type Upstream, type UpstreamBlob, type UpstreamBlobStat, type UpstreamHead, type UpstreamManifest, type UpstreamTags } from './upstream.js';

export type MirrorStrategy = 'failover' | 'hedged' | 'striped' | 'adaptive';

export interface MirrorOptions {
  readonly strategy: MirrorStrategy;
  /** The upstream's name (its cache key); the first mirror's name when not given. */
  readonly name?: string;
  /** hedged: start the next mirror when the current one has not answered within this (ms). */
  readonly hedgeDelay?: number;
  /** striped: blobs at least this large are fetched as ranges from several mirrors (bytes). */
  readonly stripeThreshold?: number;
  /** striped: bytes per range request. */
  readonly stripeSize?: number;
  /** striped: ranges in flight at once (bounds memory to about this many stripes). */
  readonly stripeWindow?: number;
  /** adaptive: share of requests sent to a mirror other than the best, to keep measuring it. */
  readonly probeRate?: number;
  /** adaptive: how long a mirror that cut a body ranks last (ms; CUT_MEMORY_MS). */
  readonly cutMemory?: number;
  /** How long a mirror whose request failed is asked after the others (ms; FAIL_MEMORY_MS). */
  readonly failMemory?: number;
  /** How long a mirror that sent a blob's bytes wrong is asked after the others (ms; BAD_MEMORY_MS). */
  readonly badMemory?: number;
  /**
   * Rounds over the mirrors after the first, when every one failed with an outage (down, timed out,
   * 5xx, 429), with backoff between them. The mirrors' own clients should not retry: the next mirror
   * is a better retry than the same one.
   */
  readonly retries?: number;
  /** No round, and no further mirror within one, starts this long after the first attempt (ms). */
  readonly retryBudget?: number;
  readonly random?: () => number;
}

interface MirrorStats {
  /** Exponentially weighted seconds to first answer. */
  latency: number;
  /** Exponentially weighted bytes per second of blob bodies. */
  throughput: number;
  samples: number;
  failures: number;
  /**
   * Blob bodies it cut mid-way since its last body that came whole. A mirror that answers fast and
   * then cuts would otherwise stay first: its quick answers (headers, manifests) make up for the cuts.
   */
  cut: number;
  /** When it last cut one (performance.now()). */
  cutAt: number;
  /** When a request to it last failed, since when none succeeded (performance.now(); 0: not so). */
  failedAt: number;
  /** When a blob it sent last failed its digest or size (performance.now(); 0: never). */
  badAt: number;
  /** striped: when it last answered a range request with the whole blob (performance.now(); 0: never). */
  rangelessAt: number;
}

/** A mirror that cut a body ranks last for this long, or until a body of its own comes whole. */
const CUT_MEMORY_MS = 5 * 60_000;
/**
 * failover, hedged, striped: a mirror whose request failed (down, stalled past the timeouts, 5xx) is
 * asked after the others for this long, then first again (its turn is its probe): without it, every
 * request paid the failing mirror's timeouts before reaching one that answers.
 */
const FAIL_MEMORY_MS = 30_000;
/**
 * Every strategy: a mirror that sent a blob whose digest or size was wrong is asked after the others
 * for this long. Without it, the same mirror was asked first again, and the blob could not be pulled
 * while its mirror sent it wrong.
 */
const BAD_MEMORY_MS = 5 * 60_000;
const RETRY_BUDGET_MS = 60_000;
const MAX_RETRY_WAIT_MS = 10_000;

const EWMA = 0.3;
const MiB = 1024 * 1024;
/**
 * striped: bytes of stripes held at once, those in flight and the one being handed on (each range is
 * read whole before it is emitted in order), unless `stripeSize` is given. With 8 MiB stripes, two
 * per mirror, three mirrors held 56 MiB: a 512 MiB pull peaked at 176-178 MiB of RSS, against 96-101
 * from one mirror; 2 MiB stripes, 124-134, but each mirror then has 4 MiB in flight, which a far
 * mirror's latency starves (three mirrors of 40 MiB/s each 200 ms away: 43 MiB/s, against 83 with
 * 8 MiB stripes). 4 MiB for three mirrors: 8 MiB in flight each, what 40 MiB/s over 100 ms needs.
 */
const STRIPED_BYTES = 32 * MiB;

/** The stripe size that keeps `window` stripes in flight, and one handed on, within STRIPED_BYTES: 2 to 8 MiB. */
export function stripeSizeFor(window: number): number {
  return Math.min(8 * MiB, Math.max(2 * MiB, Math.floor(STRIPED_BYTES / (window + 1) / MiB) * MiB));
}

/** Digests whose last fetch was striped, remembered (at most this many) so that the next one is not. */
const STRIPED_MEMORY = 1024;

/**
 * One upstream served by several mirror URLs (the configured `url` first, then `mirrors`):
 * - failover: in order, the next one on an error or a 404 (one that failed comes last for a while);
 * - hedged: the next one starts when the current has not answered within hedgeDelay; the first
 *   answer wins and the others are cancelled;
 * - striped: a large blob is fetched as byte ranges from all mirrors at once and reassembled in order
 *   (the fill verifies the digest of the whole; a blob asked for again, its last striped fetch having
 *   failed, comes from one mirror);
 * - adaptive: the mirror with the best recent latency and throughput, with an occasional probe of
 *   another, and failover behind it.
 * Whatever the strategy, a blob body that fails mid-way goes on from another mirror, with a range
 * request for the bytes still to come.
 */
export class MirroredUpstream implements Upstream {
  readonly name: string;
  private readonly stats: MirrorStats[];
  private readonly random: () => number;
  private readonly stripedBefore = new Set<Digest>();

  constructor(
    private readonly mirrors: readonly Upstream[],
    private readonly options: MirrorOptions,
  ) {
    if (mirrors.length === 0) throw new Error('MirroredUpstream needs at least one mirror');
    this.name = options.name ?? mirrors[0]!.name;
    this.stats = mirrors.map(() => ({ latency: 0, throughput: 0, samples: 0, failures: 0, cut: 0, cutAt: 0, failedAt: 0, badAt: 0, rangelessAt: 0 }));
    this.random = options.random ?? Math.random;
  }

  head(repo: string, reference: string, signal?: AbortSignal): Promise<UpstreamHead | undefined> {
    return this.pick((m, s) => m.head(repo, reference, s), signal);
  }

  manifest(repo: string, reference: string, signal?: AbortSignal): Promise<UpstreamManifest | undefined> {
    return this.pick((m, s) => m.manifest(repo, reference, s), signal);
  }

  statBlob(repo: string, digest: Digest, signal?: AbortSignal): Promise<UpstreamBlobStat | undefined> {
    return this.pick((m, s) => m.statBlob(repo, digest, s), signal);
  }

  tags(repo: string, page: Page, signal?: AbortSignal): Promise<UpstreamTags | undefined> {
    return this.pick((m, s) => m.tags(repo, page, s), signal);
  }

  referrers(repo: string, subject: Digest, signal?: AbortSignal): Promise<Descriptor[] | undefined> {
    return this.pick((m, s) => m.referrers(repo, subject, s), signal);
  }

  async blob(repo: string, digest: Digest, range?: ByteRange, signal?: AbortSignal): Promise<UpstreamBlob | undefined> {
    // A fill that succeeds is cached: a blob asked for again after a striped fetch is one whose fill
    // failed (one mirror's wrong bytes fail every striped fetch), so it comes from one mirror this time.
    if (this.options.strategy === 'striped' && !range && this.mirrors.length > 1 && !this.stripedBefore.delete(digest)) {
      const striped = await this.striped(repo, digest, signal);
      if (striped) {
        this.stripedBefore.add(digest);
        if (this.stripedBefore.size > STRIPED_MEMORY) this.stripedBefore.delete(this.stripedBefore.values().next().value!);
        return striped;
      }
    }
    return this.pick((m, s) => m.blob(repo, digest, range, s), signal, (i, blob) => this.resumable(i, blob, repo, digest, range, signal));
  }

  /**
   * `blob`, from mirror `first`, measured; should its body fail mid-way, it goes on from the other
   * mirrors in turn, each asked for the bytes still to come (a mirror that does not answer with
   * exactly that range is passed over). The fill verifies the digest of the whole.
   */
  private resumable(first: number, blob: UpstreamBlob, repo: string, digest: Digest, range: ByteRange | undefined, signal: AbortSignal | undefined): UpstreamBlob {
    const measured = this.measureBody(first, blob);
    /** The mirrors whose bytes it holds: one of them sent them wrong, if the fill finds them so. */
    const sources = [first];
    const refused = (): void => {
      for (const i of sources) this.stats[i]!.badAt = performance.now();
    };
    // What the body holds, not what was asked: a mirror may answer a range with the whole blob.
    const start = blob.range ? blob.range.start : 0;
    const end = blob.range ? blob.range.end : blob.size !== undefined ? blob.size - 1 : undefined;
    if (this.mirrors.length < 2 || end === undefined) return { ...measured, refused };
    const rest = this.order().filter((k) => k !== first);
    // A mirror's own client resumes a body it cut (a reset is mostly the connection's fault), but one
    // that stalled would cost an idle timeout per resume: while another mirror may serve the rest,
    // that one is asked.
    blob.body.on(RESUMING, (err: unknown) => {
      if (isTimeout(err) && rest.some((k) => !this.isFailing(k) && !this.isBad(k))) blob.body.destroy(new UpstreamError('timeout', `upstream ${this.name}: a mirror stalled sending the blob (${(err as Error).message})`));
    });
    const resume = async (from: number): Promise<UpstreamBlob | undefined> => {
      for (let k = rest.shift(); k !== undefined; k = rest.shift()) {
        try {
          const part = await this.mirrors[k]!.blob(repo, digest, { start: from, end }, signal);
          if (part?.range?.start === from && part.range.end === end) {
            sources.push(k);
            return part;
          }
          part?.body.destroy();
        } catch (err) {
          if (signal?.aborted) throw err;
        }
      }
      return undefined;
    };
    return { ...resumingBlob(measured, start, end, resume), refused };
  }

  /** Order in which mirrors are asked, by strategy. */
  order(): number[] {
    const all = this.mirrors.map((_, i) => i);
    const now = performance.now();
    const failing = (i: number) => this.isFailing(i);
    const bad = (i: number) => this.isBad(i);
    // Those that failed lately after the others, the one that failed longest ago first among them: when
    // every mirror failed, the next request tries them in turn rather than the first one again.
    const byFailure = (items: number[]): number[] => [...items.filter((i) => !failing(i)), ...items.filter(failing).sort((a, b) => this.stats[a]!.failedAt - this.stats[b]!.failedAt)];
    // striped: a mirror that ignores Range would answer the size probe with the whole blob (then
    // served from it alone); after the others that answer, the blob is striped over them. Still
    // before the failing ones: it serves everything else.
    if (this.options.strategy === 'striped') return lastWhen(byFailure(lastWhen(all, (i) => this.isRangeless(i))), bad);
    if (this.options.strategy !== 'adaptive') return lastWhen(byFailure(all), bad);
    // Mirrors that sent wrong bytes or cut bodies come after every one that did not, and those whose
    // last request failed after the rest; probes still find out when they mend.
    const cutMemory = this.options.cutMemory ?? CUT_MEMORY_MS;
    const cutting = (i: number) => this.stats[i]!.cut > 0 && now - this.stats[i]!.cutAt < cutMemory;
    const rank = (i: number) => (bad(i) || cutting(i) ? 2 : 0) + (failing(i) ? 1 : 0);
    const ranked = [...all].sort((a, b) => rank(a) - rank(b) || (failing(a) && failing(b) ? this.stats[a]!.failedAt - this.stats[b]!.failedAt : this.score(b) - this.score(a)));
    const probeRate = this.options.probeRate ?? 0.1;
    // A probe never goes to a mirror that sent wrong bytes lately: that would fail a client's pull.
    const probes = ranked.slice(1).filter((i) => !bad(i));
    if (probes.length > 0 && this.random() < probeRate) {
      // Probe: put a random other mirror first so its figures stay current.
      const other = ranked.indexOf(probes[Math.floor(this.random() * probes.length)]!);
      [ranked[0], ranked[other]] = [ranked[other]!, ranked[0]!];
    }
    return ranked;
  }

  /** Whether a request to mirror `i` failed within the fail memory, none succeeding since. */
  private isFailing(i: number): boolean {
    return recent(this.stats[i]!.failedAt, this.options.failMemory ?? FAIL_MEMORY_MS);
  }

  /** Whether mirror `i` answered a range request with the whole blob within BAD_MEMORY_MS. */
  private isRangeless(i: number): boolean {
    return recent(this.stats[i]!.rangelessAt, BAD_MEMORY_MS);
  }

  /** Whether mirror `i` sent a blob whose digest or size was wrong within BAD_MEMORY_MS. */
  private isBad(i: number): boolean {
    return recent(this.stats[i]!.badAt, this.options.badMemory ?? BAD_MEMORY_MS);
  }

  /**
   * Higher is better; a mirror not asked yet scores high, so that each is tried, and one that never
   * answered scores below every one that did.
   */
  private score(i: number): number {
    const s = this.stats[i]!;
    if (s.samples === 0) return s.failures === 0 ? Number.MAX_SAFE_INTEGER - i : 0;
    const penalty = 1 + s.failures;
    return (1 / Math.max(s.latency, 0.001) + s.throughput / 1e6) / penalty;
  }

  private record(i: number, started: number, ok: boolean): void {
    const s = this.stats[i]!;
    const seconds = (performance.now() - started) / 1000;
    if (!ok) {
      s.failures += 1;
      s.failedAt = performance.now();
      return;
    }
    s.failedAt = 0;
    // Its latest answer counts, not its past: a mirror that mended ranks by its figures again.
    s.failures = 0;
    s.latency = s.samples === 0 ? seconds : s.latency * (1 - EWMA) + seconds * EWMA;
    s.samples += 1;
  }

  private measureBody(i: number, blob: UpstreamBlob): UpstreamBlob {
    const started = performance.now();
    // A body that fails mid-way counts against its mirror as a failed answer does; so does one the
    // mirror's own client had to resume (a mirror that cuts every body but serves the rest as a
    // range would otherwise look whole, and stay first).
    let cut = false;
    const onCut = (): void => {
      if (cut) return;
      cut = true;
      this.stats[i]!.failures += 1;
      this.stats[i]!.cut += 1;
      this.stats[i]!.cutAt = performance.now();
    };
    blob.body.once('error', onCut);
    blob.body.once(RESUMING, onCut);
    // The length the mirror announced, not a count of our own: a 'data' listener would start the
    // body flowing, and what came before its reader attached would have gone to us alone.
    const bytes = blob.range ? blob.range.end - blob.range.start + 1 : blob.size;
    blob.body.once('end', () => {
      if (cut) return;
      this.stats[i]!.cut = 0;
      if (bytes === undefined) return;
      const seconds = (performance.now() - started) / 1000;
      if (seconds > 0.01 && bytes > 64 * 1024) {
        const s = this.stats[i]!;
        const rate = bytes / seconds;
        s.throughput = s.throughput === 0 ? rate : s.throughput * (1 - EWMA) + rate * EWMA;
      }
    });
    return blob;
  }

  /**
   * Runs `call` against mirrors in strategy order. undefined (404) from one mirror moves on to the
   * next; the result is undefined only when every mirror said so. Errors move on too; when no mirror
   * answered, the last error is thrown, even if some said 404: a mirror that lacks an image while
   * the others are down does not make it absent (a cached copy is served stale, and the absence is
   * not remembered). `wrap` sees a blob and the mirror it came from.
   */
  private async pick<T>(call: (m: Upstream, signal?: AbortSignal) => Promise<T | undefined>, signal?: AbortSignal, wrap?: (i: number, result: T) => T): Promise<T | undefined> {
    const started = performance.now();
    const budget = this.options.retryBudget ?? RETRY_BUDGET_MS;
    const retries = this.options.retries ?? 0;
    let rateLimited = 0;
    for (let round = 0; ; round++) {
      try {
        return this.options.strategy === 'hedged' ? await this.hedged(this.order(), call, signal, wrap) : await this.inTurn(call, signal, wrap, started + budget);
      } catch (err) {
        // Another round only when every mirror was down or busy (a refusal stays one), within the
        // budget; after a 429 once only, as a lone upstream's client does (Docker Hub counts each).
        if (signal?.aborted || round >= retries || !isOutage(err)) throw err;
        if ((err as UpstreamError).status === 429 && ++rateLimited > 1) throw err;
        const backoff = Math.min(MAX_RETRY_WAIT_MS, 200 * 2 ** round);
        const wait = err.retryAfter !== undefined ? err.retryAfter * 1000 : backoff / 2 + this.random() * backoff;
        if (wait > MAX_RETRY_WAIT_MS || performance.now() - started + wait > budget) throw err;
        if (!(await sleep(wait, signal))) throw err;
      }
    }
  }

  /**
   * One round of `pick` in strategy order (not hedged): a mirror that fails hands over to the next at
   * once, and none starts past `deadline` (each stalled mirror costs its timeouts).
   */
  private async inTurn<T>(call: (m: Upstream, signal?: AbortSignal) => Promise<T | undefined>, signal: AbortSignal | undefined, wrap: ((i: number, result: T) => T) | undefined, deadline: number): Promise<T | undefined> {
    let lastError: unknown;
    let failed = 0;
    for (const i of this.order()) {
      if (lastError !== undefined && performance.now() >= deadline) break;
      const started = performance.now();
      try {
        const result = await call(this.mirrors[i]!, signal);
        this.record(i, started, true);
        if (result !== undefined) return wrap ? wrap(i, result) : result;
      } catch (err) {
        // Not answered within the caller's deadline (a cached tag's quick re-check): the next request
        // asks the others first, rather than wait on the same mirror again.
        if (signal?.aborted && isTimeout(signal.reason)) this.stats[i]!.failedAt = performance.now();
        if (signal?.aborted) throw err;
        this.record(i, started, false);
        failed += 1;
        lastError = worse(lastError, err);
      }
    }
    if (lastError !== undefined) throw tried(lastError, failed);
    return undefined;
  }

  private hedged<T>(order: number[], call: (m: Upstream, signal?: AbortSignal) => Promise<T | undefined>, signal: AbortSignal | undefined, wrap: ((i: number, result: T) => T) | undefined): Promise<T | undefined> {
    const delay = this.options.hedgeDelay ?? 500;
    return new Promise<T | undefined>((resolve, reject) => {
      const controllers: AbortController[] = [];
      let settled = false;
      let pending = 0;
      let next = 0;
      let lastError: unknown;
      let failed = 0;
      let timer: NodeJS.Timeout | undefined;
      /** Attempts (by position) cancelled because another answered first. */
      const lost = new Set<number>();

      const finish = (winner: number | undefined, result: T | undefined, error?: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        controllers.forEach((c, i) => {
          if (i === winner) return;
          if (winner !== undefined) lost.add(i);
          c.abort(new Error('hedged request lost the race'));
        });
        if (error !== undefined) reject(tried(error, failed));
        else resolve(result);
      };
      const launch = () => {
        if (settled || next >= order.length) return;
        const position = next++;
        const i = order[position]!;
        const controller = new AbortController();
        controllers[position] = controller;
        const forward = () => controller.abort(signal!.reason);
        signal?.addEventListener('abort', forward, { once: true });
        // Not left on the caller's signal once this attempt is over, whichever way it ends.
        controller.signal.addEventListener('abort', () => signal?.removeEventListener('abort', forward), { once: true });
        pending += 1;
        const started = performance.now();
        clearTimeout(timer);
        timer = setTimeout(launch, delay);
        call(this.mirrors[i]!, controller.signal).then(
          (result) => {
            pending -= 1;
            this.record(i, started, true);
            if (result !== undefined) {
              if (!settled) finish(position, wrap ? wrap(i, result) : result);
              else if (wrap) (result as UpstreamBlob).body.destroy();
              return;
            }
            if (next < order.length) launch();
            else if (pending === 0) finish(undefined, undefined, lastError);
          },
          (err: unknown) => {
            pending -= 1;
            if (!controller.signal.aborted) {
              this.record(i, started, false);
              failed += 1;
            } else if (lost.has(position) && performance.now() - started >= delay) {
              // Slower than the winner by a hedge at least: the winner goes first for a while.
              this.stats[i]!.failedAt = performance.now();
            }
            lastError = worse(lastError, err);
            if (next < order.length) launch();
            else if (pending === 0) finish(undefined, undefined, lastError);
          },
        );
      };
      launch();
    });
  }

  /**
   * Fetches the blob as consecutive ranges spread over the mirrors, a bounded window in flight, and
   * emits them in order. undefined when the size cannot be learnt cheaply or the blob is small: the
   * caller then falls back to one mirror. The whole blob from one mirror when the mirror asked for
   * the size ignores Range.
   */
  private async striped(repo: string, digest: Digest, signal?: AbortSignal): Promise<UpstreamBlob | undefined> {
    const threshold = this.options.stripeThreshold ?? 32 * 1024 * 1024;
    const window = this.options.stripeWindow ?? Math.max(2, this.mirrors.length * 2);
    const stripe = this.options.stripeSize ?? stripeSizeFor(window);
    let probe: UpstreamBlob | undefined;
    let prober = 0;
    try {
      probe = await this.pick(
        (m, s) => m.blob(repo, digest, { start: 0, end: 0 }, s),
        signal,
        (i, blob) => ((prober = i), blob),
      );
    } catch (err) {
      // Every mirror down or rate-limited: asking them all again for the whole blob would double the
      // rounds (and the time before the client's 504, and a rate-limited upstream's GETs). An answer
      // to the range itself (a 416 for an empty blob, an odd 4xx) leaves the blob to one mirror.
      if (!(err instanceof UpstreamError) || (OUTAGES.has(err.failure) && (err.status === undefined || err.status >= 500 || err.status === 429))) throw err;
      return undefined;
    }
    if (!probe) return undefined;
    if (!probe.range) {
      // The whole blob (a server that ignores Range): that is the download, from this mirror alone.
      // It comes after the others for the next blobs' probes, so they are striped over the others
      // if they serve ranges; when none does, each blob still comes whole, in one request.
      this.stats[prober]!.rangelessAt = performance.now();
      return this.resumable(prober, probe, repo, digest, undefined, signal);
    }
    // One byte, read for the connection's sake; a body cut before it must not be an unhandled error
    // (it crashed the server).
    probe.body.on('error', () => undefined);
    probe.body.resume();
    const size = probe.size;
    if (size === undefined || size < threshold) return undefined;
    // No mirror served a range lately (each answered one with the whole blob): one mirror, whole.
    if (this.mirrors.every((_, i) => this.isRangeless(i))) return undefined;

    const ranges: ByteRange[] = [];
    for (let start = 0; start < size; start += stripe) ranges.push({ start, end: Math.min(size, start + stripe) - 1 });
    const out = new PassThrough({ highWaterMark: stripe });
    /** Mirrors that answered a range request with something else: they get no more ranges of this blob. */
    const noRanges = new Set(this.mirrors.map((_, i) => i).filter((i) => this.isRangeless(i)));
    /**
     * Mirrors that failed a range of this blob (down, stalled, cut): asked last for the others, so that
     * one stalled mirror does not cost a timeout on every range it would have had.
     */
    const failing = new Set(this.mirrors.map((_, i) => i).filter((i) => this.isFailing(i)));
    /** Mirrors that sent a blob wrong lately: asked for a range only when the others cannot serve it. */
    const bad = new Set(this.order().filter((i) => this.isBad(i)));
    // A range's bytes as they came, not joined into one buffer: joining doubled the memory of every
    // stripe in flight.
    const fetchRange = async (index: number): Promise<Buffer[]> => {
      const range = ranges[index]!;
      const length = range.end - range.start + 1;
      // Each range goes to the next mirror in turn; a failing mirror hands the range to the others.
      const first = index % this.mirrors.length;
      const turn = this.mirrors.map((_, k) => (first + k) % this.mirrors.length).filter((k) => !noRanges.has(k));
      const order = lastWhen(lastWhen(turn, (k) => failing.has(k)), (k) => bad.has(k));
      let lastError: unknown;
      for (const i of order) {
        try {
          const part = await this.mirrors[i]!.blob(repo, digest, range, signal);
          if (!part) continue;
          if (part.range?.start !== range.start || part.range.end !== range.end) {
            // The whole blob (a server that ignores Range) or another range: cut, not read. Only the
            // whole blob marks the mirror as one that ignores Range: a shorter range is what an honest
            // mirror answers past the blob's end when another's probe answer gave a wrong size.
            part.body.destroy();
            if (!part.range) {
              noRanges.add(i);
              this.stats[i]!.rangelessAt = performance.now();
            }
            throw new UpstreamError('invalid', `mirror did not answer the range ${range.start}-${range.end} it was asked for`);
          }
          // A range cut mid-way goes to the next mirror whole, not on from the same one: a mirror that
          // stalls would cost an idle timeout for each of its client's resumes.
          // (When another one may serve it: with the others down, the same mirror's resume is the only way.)
          part.body.once(RESUMING, () => {
            failing.add(i);
            this.stats[i]!.failedAt = performance.now();
            if (order.some((k) => k !== i && !failing.has(k) && !bad.has(k))) part.body.destroy(new UpstreamError('unreachable', `mirror cut the range ${range.start}-${range.end}`));
          });
          const chunks: Buffer[] = [];
          let received = 0;
          for await (const chunk of part.body as AsyncIterable<Buffer>) {
            received += chunk.length;
            if (received > length) {
              part.body.destroy();
              throw new UpstreamError('invalid', `mirror sent more than the ${length} bytes of the range`);
            }
            chunks.push(chunk);
          }
          if (received !== length) throw new UpstreamError('invalid', `mirror sent ${received} bytes for a range of ${length}`);
          return chunks;
        } catch (err) {
          if (signal?.aborted) throw err;
          failing.add(i);
          // And for the next blobs' stripes: a stalled mirror would cost each of them a timeout.
          this.stats[i]!.failedAt = performance.now();
          lastError = err;
        }
      }
      throw lastError ?? new UpstreamError('invalid', 'no mirror has this blob range');
    };
    const inFlight = new Map<number, Promise<Buffer[]>>();
    let launched = 0;
    const fill = () => {
      while (launched < ranges.length && inFlight.size < window) {
        const index = launched++;
        const promise = fetchRange(index);
        promise.catch(() => undefined);
        inFlight.set(index, promise);
      }
    };
    void (async () => {
      try {
        for (let index = 0; index < ranges.length; index++) {
          fill();
          const chunks = await inFlight.get(index)!;
          inFlight.delete(index);
          for (const chunk of chunks) {
            if (out.destroyed) return; // the fill went away: stop fetching
            if (!out.write(chunk)) {
              await new Promise<void>((resolve) => {
                const done = (): void => {
                  out.off('drain', done);
                  out.off('close', done);
                  resolve();
                };
                out.on('drain', done);
                out.on('close', done);
              });
            }
          }
        }
        out.end();
      } catch (err) {
        out.destroy(err as Error);
      }
    })();
    return { size, body: out };
  }
}

/**
 * The error to report of two mirrors' failures: an outage over anything else, so that one mirror down
 * while another refuses (expired credentials, say) still serves the cached copy; and of outages, one
 * that says the mirror is down (no answer, 429, 502-504) over a 500, so that the back-off it starts
 * is not lost to the other mirror's answer.
 */
function worse(kept: unknown, err: unknown): unknown {
  const rank = (e: unknown): number => (isUpstreamDown(e) ? 2 : e instanceof UpstreamError && OUTAGES.has(e.failure) ? 1 : 0);
  return kept !== undefined && rank(kept) > rank(err) ? kept : err;
}

/**
 * Whether `err` says the upstream was down or busy (no answer, a timeout, a 429 or a 5xx but 501),
 * not that it refused the request: only those are worth another round.
 */
function isOutage(err: unknown): err is UpstreamError {
  if (!(err instanceof UpstreamError) || !OUTAGES.has(err.failure)) return false;
  return err.status === undefined || err.status === 429 || (err.status >= 500 && err.status !== 501);
}

/** The error thrown after `failed` mirrors failed: an UpstreamError says how many were asked. */
function tried(err: unknown, failed: number): unknown {
  if (failed < 2 || !(err instanceof UpstreamError)) return err;
  return new UpstreamError(err.failure, `${err.message}; ${failed} of its mirrors failed`, err.status, err.retryAfter);
}

/** Waits `ms`; false when `signal` aborted it first. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) {
      resolve(false);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve(true);
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** `items` in their order, those for which `late` holds moved after the others (in their order too). */
function lastWhen<T>(items: readonly T[], late: (item: T) => boolean): T[] {
  return [...items.filter((item) => !late(item)), ...items.filter(late)];
}

/** Whether `at` (performance.now(); 0: never) is less than `memory` ms ago. */
function recent(at: number, memory: number): boolean {
  return at > 0 && performance.now() - at < memory;
}
