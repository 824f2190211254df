import { isIP } from 'node:net';
import { rootCertificates } from 'node:tls';
import { JSON_SHAPE_LIMITS, JsonShapeError, MANIFEST_MEDIA_TYPES, compareTags, MAX_MANIFEST_BYTES, MediaType, bareMediaType, digestOf, isValidTag, jsonShapeProblem, parseBoundedJson, tryParseDigest, type ByteRange, type Descriptor, type Digest, type Page } from '@wharf/registry-core';
import type { Dispatcher, buildConnector } from 'undici';
import { bypassesProxy } from './no-proxy.js';
import { upstreamBodyBuffer } from './fill-writer.js';
import { plainRequest, type AddressPolicy } from './plain-http.js';
import { AddressRefused, isPublicAddress } from './public-address.js';
import { RateLimitGate, type RateLimitGateLogger } from './rate-limit-gate.js';
import { resumingBlob, skipFirst, type MinimumPace } from './resuming-body.js';
import { parseChallenge } from './token-auth.js';
import { discard, isRegistryError, readRefusal, readUpTo, type Answer, type Headers } from './upstream-answer.js';
import { UpstreamCredentials, anonymousRefusal } from './upstream-credentials.js';
import { keepWasmOnBaseline } from './wasm-baseline.js';
import { EGRESS_PROXY_TLS, egressFailure, type EgressProxy } from './egress-failure.js';
import { isCertificateFailure, isHandshakeFailure } from './tls-failure.js';
import { OUTAGES, UpstreamError, descriptorOf, isTimeout, type Upstream, type UpstreamBlob, type UpstreamBlobStat, type UpstreamHead, type UpstreamManifest, type UpstreamTags } from './upstream.js';

export interface UpstreamTimeouts {
  /** TCP (and TLS) connection, ms. */
  readonly connect: number;
  /** From request sent to the first byte of the response, ms. */
  readonly firstByte: number;
  /** Longest silence while a body streams, ms. There is no total-time limit. */
  readonly idle: number;
  /**
   * The slowest a blob's body may come, bytes per second, averaged over each `idle` window: a body
   * that trickles (a byte now and then, never silent for `idle`) is cut and gone on from with a
   * range request, as a stalled one is. 0: no such limit.
   */
  readonly minSpeed: number;
}

export interface HttpUpstreamOptions {
  readonly name: string;
  /** Base URL of the registry, e.g. https://registry-1.docker.io */
  readonly url: string;
  readonly username?: string;
  readonly password?: string;
  /** PEM certificates to trust for HTTPS besides the system's (an upstream behind a private CA). */
  readonly ca?: string;
  /** A forward proxy to reach the upstream through (CONNECT tunnels), per scheme, and the hosts that skip it. */
  readonly egress?: {
    readonly http?: string;
    readonly https?: string;
    readonly noProxy?: string;
    /** The variables the two were read from, as messages name them (default HTTP_PROXY and HTTPS_PROXY). */
    readonly variables?: { readonly http?: string; readonly https?: string };
  };
  readonly timeouts?: Partial<UpstreamTimeouts>;
  /** Attempts for idempotent requests on connection errors, 5xx and 429. */
  readonly retries?: number;
  /** Longest Retry-After we wait out before giving up, ms. */
  readonly maxRetryWait?: number;
  /**
   * No retry starts this long (ms) after the first attempt did: a client waiting on a stalled
   * upstream gets its 504 within about this plus one attempt, before its request_timeout. 60 s.
   */
  readonly retryBudget?: number;
  readonly userAgent?: string;
  /** Called with RateLimit-Remaining whenever an upstream sends it. */
  readonly onRateLimit?: (remaining: number) => void;
  /** Called once per HTTP request sent (token requests included) with its status, or "error" when none came. */
  readonly onRequest?: (status: number | 'error') => void;
  /** Where warnings go: the upstream's rate limiting (RateLimitGate), a referrers list cut short. */
  readonly logger?: RateLimitGateLogger;
  /**
   * Where the internet is (isPublicAddress; tests stand a loopback address in for a host on the
   * internet): once on it, an upstream's requests go to public addresses only (see send).
   */
  readonly internet?: { readonly isPublicAddress: (address: string) => boolean };
  /**
   * What to tell an operator whose upstream wants credentials this client was not given, instead of
   * "give it a username and password" (a mirror, to which the upstream's are not sent).
   */
  readonly credentialsAdvice?: string;
}

const DEFAULT_TIMEOUTS: UpstreamTimeouts = { connect: 10_000, firstByte: 30_000, idle: 60_000, minSpeed: 1024 };
const ACCEPT_MANIFESTS = MANIFEST_MEDIA_TYPES.join(', ');
const RETRYABLE_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH', 'ECONNABORTED',
  'UND_ERR_SOCKET', 'UND_ERR_CLOSED',
]);
/** Certificate verification failures (OpenSSL's codes as Node reports them). */
/** Failures worth another attempt: the connection, a timeout, a 5xx or a 429 (inside an attempt, nothing else throws these). */
const RETRIED = OUTAGES;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;
/** Challenges answered per attempt: the upstream's, and a redirect target's or two. */
const MAX_CHALLENGES = 3;
/** A tag list or referrers index read whole: Docker Hub's busiest repositories list some 10,000 tags in under 1 MiB. */
const MAX_LIST_BYTES = 8 * 1024 * 1024;
/** Pages of an upstream's tag list followed (its Link header) to gather one page of ours. */
const MAX_TAG_PAGES = 20;

/** Pages of a referrers list read at most (each up to MAX_LIST_BYTES): past them, the list is cut. */
const MAX_REFERRER_PAGES = 4;

/** A response read whole. */
interface Buffered {
  readonly statusCode: number;
  readonly headers: Headers;
  readonly bytes: Buffer;
  readonly url?: URL;
  readonly refused?: boolean;
}

/**
 * The longest wait a Retry-After is taken for: an hour. The proxy holds back its checks of cached
 * tags for as long as an upstream asks (and passes the wait on to clients with nothing cached), so one
 * answer saying 99999999999 froze them until a restart. Docker Hub's pull window is 6 hours; an hour
 * later the upstream is simply asked again.
 */
export const MAX_RETRY_AFTER_S = 3600;

/** Seconds from a Retry-After header (delta-seconds or an HTTP date), at most MAX_RETRY_AFTER_S. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (!text) return undefined;
  if (/^\d+$/.test(text.trim())) return Math.min(MAX_RETRY_AFTER_S, Number(text.trim()));
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.min(MAX_RETRY_AFTER_S, Math.max(0, Math.ceil((at - now) / 1000)));
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * A remote registry over HTTP(S): anonymous, Basic, or Bearer tokens (see UpstreamCredentials).
 * Idempotent requests are retried with exponential backoff and jitter; redirects (Docker Hub's blob
 * CDN) are followed here, and our Authorization header is dropped as soon as a hop leaves the origin.
 * The client's own credentials never reach here: only the upstream's configured ones are sent.
 *
 * Requests go through plainRequest (plain-http.ts), which reads the socket into reused memory: a
 * cold pull through the proxy is bound by the CPU its blob's body costs to receive, 0.33 s/GiB over
 * http:// and 0.7 over https://, against 1.3-1.8 through undici and 2.0-2.4 through node:http (which
 * copies every chunk once more in its parser; got is built on it). Requests through an egress proxy
 * (CONNECT tunnels) are undici's: it is loaded only then. Hosts NO_PROXY names are reached directly,
 * through plainRequest.
 */
export class HttpUpstream implements Upstream {
  readonly name: string;
  private readonly base: string;
  /** The upstream's own origin: the only one our credentials go to. */
  private readonly origin: string;
  /** The upstream's host name (or address), whose place decides where its requests may go (see send). */
  private readonly hostname: string;
  /** Made at the first request through an egress proxy: undici is loaded then (about 9 MiB of memory). */
  private agent: Promise<Dispatcher> | undefined;
  private readonly credentials: UpstreamCredentials;
  /** Manifest GETs held back while a 429's Retry-After lasts. */
  private readonly limits: RateLimitGate;
  private readonly timeouts: UpstreamTimeouts;
  private readonly retries: number;
  private readonly maxRetryWait: number;
  private readonly retryBudget: number;
  private readonly userAgent: string;
  /**
   * The egress proxy for this upstream's scheme (HTTPS_PROXY for https://, HTTP_PROXY for http://, as
   * Go and Docker have it); its redirect hops, to a CDN say, go the same way.
   */
  private readonly via: string | undefined;
  /** `via` as its failures name it. */
  private readonly egress: EgressProxy | undefined;

  constructor(private readonly options: HttpUpstreamOptions) {
    this.name = options.name;
    this.base = options.url.replace(/\/+$/, '');
    this.origin = new URL(this.base).origin;
    this.hostname = new URL(this.base).hostname;
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
    this.retries = options.retries ?? 3;
    this.maxRetryWait = options.maxRetryWait ?? 10_000;
    this.retryBudget = options.retryBudget ?? 60_000;
    this.userAgent = options.userAgent ?? 'wharf-proxy';
    const https = new URL(this.base).protocol === 'https:';
    this.via = https ? options.egress?.https : options.egress?.http;
    const variable = https ? (options.egress?.variables?.https ?? 'HTTPS_PROXY') : (options.egress?.variables?.http ?? 'HTTP_PROXY');
    this.egress = this.via !== undefined ? { url: this.via, variable } : undefined;
    const identity = { name: this.name, base: this.base, origin: this.origin, username: options.username, password: options.password };
    this.limits = new RateLimitGate(this.name, this.base, options.logger);
    this.credentials = new UpstreamCredentials(identity, {
      get: (url, headers) => this.send('GET', url, headers, undefined, undefined, `token service of upstream ${this.name}`),
      retryable: (res, who) => this.retryable(res, who),
    });
  }

  /** undici's agent for the requests that go through the egress proxy (see `proxied`). */
  private dispatcher(via: string): Promise<Dispatcher> {
    if (!this.agent) keepWasmOnBaseline();
    this.agent ??= import('undici').then(({ Pool, ProxyAgent }) => {
      const options = this.options;
      // connect covers TCP and TLS; headersTimeout runs from the request sent to the response head;
      // bodyTimeout is the longest silence between body chunks, so a multi-GB blob has no total limit.
      // A private CA is added to the system's roots, not put in their place: a redirect to a public CDN still verifies.
      const connect = { timeout: this.timeouts.connect, ...(options.ca !== undefined ? { ca: [...rootCertificates, options.ca] } : {}) };
      // requestTls is the tunnelled connection to the upstream, proxyTls the one to the proxy. NO_PROXY
      // was applied before a request comes here.
      return new ProxyAgent({
        uri: via,
        headersTimeout: this.timeouts.firstByte,
        bodyTimeout: this.timeouts.idle,
        connect,
        requestTls: connect,
        proxyTls: { timeout: this.timeouts.connect },
        // The proxy's answer to CONNECT within the same time as an upstream's first byte: undici's
        // own default is 300 s, and a request's signal does not reach that wait, so a proxy that took
        // the connection and never answered held a blob's client for minutes.
        clientFactory: (origin, opts) => tunnelPool(new Pool(origin, { ...opts, ...withoutAddressName((opts as { connect?: unknown }).connect), headersTimeout: this.timeouts.connect + this.timeouts.firstByte })),
      });
    });
    return this.agent;
  }

  /** Closes idle connections; requests still running finish first. */
  async close(): Promise<void> {
    if (this.agent) await (await this.agent).close();
  }

  async head(repo: string, reference: string, signal?: AbortSignal): Promise<UpstreamHead | undefined> {
    const res = await this.buffered('HEAD', repo, `manifests/${reference}`, { accept: ACCEPT_MANIFESTS }, signal);
    if (res.statusCode === 404) return undefined;
    // A server that does not do HEAD (or does it wrong) tells nothing: the caller GETs, as Docker's
    // client and containerd do.
    if (HEAD_UNSUPPORTED.has(res.statusCode)) return {};
    this.expectOk(res, 'manifest HEAD');
    const digest = tryParseDigest(String(res.headers['docker-content-digest'] ?? ''))?.digest;
    const mediaType = bareMediaType(res.headers['content-type']);
    const remaining = rateLimitOf(res.headers);
    return { ...(digest ? { digest } : {}), ...(mediaType ? { mediaType } : {}), ...(remaining !== undefined ? { rateLimitRemaining: remaining } : {}) };
  }

  async manifest(repo: string, reference: string, signal?: AbortSignal): Promise<UpstreamManifest | undefined> {
    // Docker Hub counts every manifest GET against its pull limit, 429s included: none goes while
    // this upstream's last 429 says to wait (a HEAD, which it does not count, still may).
    this.limits.check();
    const res = await this.buffered('GET', repo, `manifests/${reference}`, { accept: ACCEPT_MANIFESTS }, signal).catch((err: unknown) => {
      this.limits.note(err);
      throw err;
    });
    if (res.statusCode === 404) return undefined;
    this.expectOk(res, 'manifest GET');
    const bytes = res.bytes;
    const declared = tryParseDigest(String(res.headers['docker-content-digest'] ?? ''))?.digest;
    const wanted = tryParseDigest(reference)?.digest;
    const algorithm = wanted ? (wanted.startsWith('sha512:') ? 'sha512' : 'sha256') : declared?.startsWith('sha512:') ? 'sha512' : 'sha256';
    const digest = digestOf(bytes, algorithm);
    const shape = jsonShapeProblem(bytes);
    if (shape) throw new UpstreamError('invalid', `upstream ${this.name} sent a manifest Wharf refuses: ${shape}`, res.statusCode);
    const mediaType = manifestMediaType(bytes, res.headers['content-type']);
    if (mediaType === SCHEMA1_SIGNED) {
      // Its digest is that of the payload without the signatures, which no content-addressed store
      // keeps; Docker 28 and containerd 2 no longer pull it either.
      throw new UpstreamError('invalid', `upstream ${this.name} sent a signed Docker schema 1 manifest (deprecated since 2017); Wharf serves schema 2 and OCI manifests only`, res.statusCode);
    }
    // Asked by digest, the bytes answer for themselves, whatever digest header came with them.
    if (wanted ? digest !== wanted : declared !== undefined && declared.split(':')[0] === algorithm && declared !== digest) {
      throw new UpstreamError('invalid', `upstream ${this.name} sent a manifest that does not match its digest`, res.statusCode);
    }
    if (!mediaType) throw new UpstreamError('invalid', `upstream ${this.name} answered the manifest GET with something that is not a manifest`, res.statusCode);
    return { digest, mediaType, bytes };
  }

  /**
   * The blob, or `range` of it. A download cut mid-way (a reset, a CDN connection gone idle) goes on
   * from where it stopped, with a range request: a multi-GB layer, and every client of its fill,
   * survive a bad connection. So does a range (the rest of a fill cut short before, say).
   */
  async blob(repo: string, digest: Digest, range?: ByteRange, signal?: AbortSignal): Promise<UpstreamBlob | undefined> {
    const blob = await this.blobPart(repo, digest, range, signal);
    if (!blob) return undefined;
    // The last byte; undefined for a blob whose size the upstream did not say (sent chunked).
    let last: number | undefined;
    if (range) {
      // Not the range asked for: the caller decides what to do with what came.
      if (blob.range?.start !== range.start || blob.range.end !== range.end) return blob;
      last = range.end;
    } else {
      if (blob.range || blob.size === 0) return blob;
      last = blob.size !== undefined ? blob.size - 1 : undefined;
    }
    let resumes = RESUMES;
    const pace = this.minimumPace();
    return resumingBlob(blob, range?.start ?? 0, last, async (from) => {
      if (resumes-- <= 0) return undefined;
      const rest = await this.blobPart(repo, digest, { start: from, end: last }, signal).catch(() => undefined);
      // Of a blob of unknown size, the rest up to its end: an open-ended range, whose answer goes on to
      // the blob's end when it says where that is.
      if (rest?.range?.start === from && (last !== undefined ? rest.range.end === last : rest.size === undefined || rest.range.end === rest.size - 1)) return rest;
      // The whole blob again (a CDN that drops a Range, as Cloudflare does for what it does not keep):
      // the bytes we have are read past, not taken for a failure that cuts every client.
      if (rest && !range && !rest.range && (last === undefined || rest.size === last + 1)) return skipFirst(rest, from);
      rest?.body.destroy();
      return undefined;
    }, pace);
  }

  /** What `minSpeed` asks of a blob's body, watched over each `idle` window (see resumingBlob). */
  private minimumPace(): MinimumPace | undefined {
    const { idle, minSpeed } = this.timeouts;
    if (!(idle > 0 && minSpeed > 0)) return undefined;
    const minBytes = Math.ceil((minSpeed * idle) / 1000);
    return {
      windowMs: idle,
      minBytes,
      slow: (bytes) => new UpstreamError('timeout', `upstream ${this.name} sent ${bytes} bytes of the blob in ${idle / 1000} s, slower than min_speed (${minSpeed} bytes/s)`),
    };
  }

  /** One GET of the blob (or of `range`, to the blob's end without its `end`), as the upstream answers it. */
  private async blobPart(repo: string, digest: Digest, range: OpenRange | undefined, signal: AbortSignal | undefined): Promise<UpstreamBlob | undefined> {
    const headers: Record<string, string> = {};
    if (range) headers.range = `bytes=${range.start}-${range.end ?? ''}`;
    const res = await this.streamed(repo, `blobs/${digest}`, headers, signal);
    // A body reports a destroy() as an error; whoever cancels a body has stopped listening.
    res.body.on('error', () => undefined);
    if (res.statusCode === 404) {
      await discard(res);
      return undefined;
    }
    if (res.statusCode !== 200 && res.statusCode !== 206) {
      // A 403's body tells a registry's refusal (an error document) from a firewall's page.
      if (res.statusCode === 403) this.expectOk({ statusCode: res.statusCode, ...answeredBy(res), bytes: await readRefusal(res) }, 'blob GET');
      await discard(res);
      this.expectOk(res, 'blob GET');
    }
    const length = Number(res.headers['content-length']);
    let size: number | undefined;
    let part: ByteRange | undefined;
    if (res.statusCode === 206) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? '').trim());
      if (m) {
        part = { start: Number(m[1]), end: Number(m[2]) };
        if (m[3] !== '*') size = Number(m[3]);
      }
    } else if (Number.isFinite(length)) {
      size = length;
    }
    return { ...(size !== undefined ? { size } : {}), ...(part ? { range: part } : {}), body: res.body, ...(res.recycle ? { recycle: res.recycle } : {}) };
  }

  async statBlob(repo: string, digest: Digest, signal?: AbortSignal): Promise<UpstreamBlobStat | undefined> {
    const res = await this.buffered('HEAD', repo, `blobs/${digest}`, {}, signal);
    if (res.statusCode === 404) return undefined;
    // A redirect target whose URL is signed for GET alone (S3 behind ghcr.io) refuses the HEAD: its
    // first byte is asked for instead, whose Content-Range tells the size.
    if ((res.statusCode === 403 || res.statusCode === 405) && res.url !== undefined && res.url.origin !== this.origin) return this.statByFirstByte(repo, digest, signal);
    // A 403 to an anonymous HEAD has no body to tell a registry's refusal of the repository (ghcr.io's
    // DENIED: "denied") from a firewall's page ("unauthorized", a 502): a GET's has.
    if (res.statusCode === 403 && this.options.username === undefined) return this.statByFirstByte(repo, digest, signal);
    this.expectOk(res, 'blob HEAD');
    const length = Number(res.headers['content-length']);
    return Number.isSafeInteger(length) && length >= 0 ? { size: length } : {};
  }

  /** A blob's size from a GET of its first byte (or from the whole blob's answer, left unread). */
  private async statByFirstByte(repo: string, digest: Digest, signal?: AbortSignal): Promise<UpstreamBlobStat | undefined> {
    const part = await this.blobPart(repo, digest, { start: 0, end: 0 }, signal);
    part?.body.destroy();
    return part && (part.size !== undefined ? { size: part.size } : {});
  }

  async tags(repo: string, page: Page, signal?: AbortSignal): Promise<UpstreamTags | undefined> {
    const tags: string[] = [];
    let query = pageQuery(page);
    let whole = false;
    // A Link back to a page already read (an upstream that ignores `last`) is not followed again.
    const asked = new Set<string>();
    for (let i = 0; i < MAX_TAG_PAGES && !asked.has(query); i++) {
      asked.add(query);
      const res = await this.buffered('GET', repo, `tags/list${query}`, { accept: 'application/json' }, signal, 'tag list');
      if (res.statusCode === 404 && i === 0) return undefined;
      this.expectOk(res, 'tag list');
      // A tag list is one array of strings, which cost little to parse: any number of them (a
      // registry that does not paginate sends them all) is fine, within the byte cap.
      const doc = this.json(res.bytes, 'tag list', { ...JSON_SHAPE_LIMITS, maxValues: Number.MAX_SAFE_INTEGER }) as { tags?: unknown };
      if (doc.tags !== null && doc.tags !== undefined && !Array.isArray(doc.tags)) throw new UpstreamError('invalid', `upstream ${this.name} sent a tag list without a tags array`);
      // A name that is no tag could not be pulled by it anyway. Only tags past `last`, also from an
      // upstream that ignores it (and lists from its start again), counted towards n.
      for (const tag of pastLast(doc.tags ?? [], page.last)) if (typeof tag === 'string' && isValidTag(tag)) tags.push(tag);
      // Only the query of the next page's link is taken: the request stays on this upstream and repository.
      const next = nextPageQuery(res.headers.link);
      whole = next === undefined;
      if (!next || (page.n !== undefined && tags.length >= page.n)) break;
      query = next;
    }
    return { tags, whole };
  }

  /**
   * The subject's referrers, every page of them: an upstream pages a list whose index would not fit
   * in one manifest (a Link to the next, as the spec says), up to MAX_REFERRER_PAGES of them.
   */
  async referrers(repo: string, subject: Digest, signal?: AbortSignal): Promise<Descriptor[] | undefined> {
    const descriptors: Descriptor[] = [];
    const seen = new Set<string>();
    let query = '';
    for (let page = 0; page < MAX_REFERRER_PAGES; page++) {
      const res = await this.buffered('GET', repo, `referrers/${subject}${query}`, { accept: MediaType.OciIndex }, signal, 'referrers index');
      // The spec's way of saying "no referrers API here": the client falls back to the tag schema.
      if (res.statusCode === 404 && page === 0) return undefined;
      this.expectOk(res, 'referrers GET');
      const doc = this.json(res.bytes, 'referrers index') as { manifests?: unknown };
      if (!Array.isArray(doc.manifests)) throw new UpstreamError('invalid', `upstream ${this.name} sent a referrers index without manifests`);
      for (const entry of doc.manifests) {
        const descriptor = descriptorOf(entry);
        if (descriptor && !seen.has(descriptor.digest)) {
          seen.add(descriptor.digest);
          descriptors.push(descriptor);
        }
      }
      const next = nextPageQuery(res.headers.link);
      if (next === undefined || next === query) return descriptors;
      query = next;
    }
    this.options.logger?.warn(
      { upstream: this.name, repo, subject, pages: MAX_REFERRER_PAGES, referrers: descriptors.length },
      `upstream's referrers list has more than ${MAX_REFERRER_PAGES} pages; serving the referrers of the first ${MAX_REFERRER_PAGES}`,
    );
    return descriptors;
  }

  private json(bytes: Buffer, what: string, limits = JSON_SHAPE_LIMITS): object {
    try {
      const doc: unknown = parseBoundedJson(bytes, limits);
      if (doc !== null && typeof doc === 'object') return doc;
    } catch (err) {
      if (err instanceof JsonShapeError) throw new UpstreamError('invalid', `upstream ${this.name} sent a ${what} Wharf refuses: ${err.message}`);
    }
    throw new UpstreamError('invalid', `upstream ${this.name} sent a ${what} that is not a JSON object`);
  }

  /**
   * A request read whole (manifests, HEAD, lists) with auth and retries; reading the body is part of
   * each attempt. `what` names the body in the error when it is too large.
   */
  private buffered(method: 'GET' | 'HEAD', repo: string, path: string, headers: Record<string, string>, signal?: AbortSignal, what = 'manifest'): Promise<Buffered> {
    const limit = what === 'manifest' ? MAX_MANIFEST_BYTES : MAX_LIST_BYTES;
    return this.withRetries(signal, async () => {
      const res = await this.authorized(method, repo, path, headers, signal);
      // A redirect target's 403 to a HEAD is no expired URL to fetch afresh: such URLs are signed for
      // GET alone (the caller decides).
      const headRefused = method === 'HEAD' && res.statusCode === 403 && res.url !== undefined && res.url.origin !== this.origin;
      if (!headRefused && this.worthRetrying(res)) return this.retryable(res);
      if (res.statusCode < 200 || res.statusCode >= 300) {
        // A 403's body tells a registry's refusal (an error document) from a firewall's page.
        const bytes = res.statusCode === 403 ? await readRefusal(res) : (await discard(res), Buffer.alloc(0));
        return { statusCode: res.statusCode, headers: res.headers, bytes, ...answeredBy(res) };
      }
      const bytes = await readUpTo(res, limit, () => new UpstreamError('invalid', `upstream ${this.name} sent a ${what} larger than ${limit} bytes`));
      return { statusCode: res.statusCode, headers: res.headers, bytes, ...answeredBy(res) };
    });
  }

  /** A streamed request (blobs): resolves once the response head is in, with the body still flowing. */
  private streamed(repo: string, path: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Answer> {
    return this.withRetries(signal, async () => {
      const res = await this.authorized('GET', repo, path, headers, signal);
      return this.worthRetrying(res) ? this.retryable(res) : res;
    });
  }

  /**
   * One attempt: the request, with our credentials for `repo` to the upstream's origin and nowhere
   * else, and again after each 401 challenge answered. A redirect target (a CDN, the registry that
   * registry.k8s.io sends its pulls to) may challenge too: its token is fetched without our
   * credentials, for the scope it names, and sent to it alone.
   */
  private async authorized(method: 'GET' | 'HEAD', repo: string, path: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Answer> {
    const url = `${this.base}/v2/${repo}/${path}`;
    const auth = (origin: string): Record<string, string> => this.credentials.header(origin, repo);
    const answered = new Set<string>();
    await this.credentials.tokenUnderway(repo, signal);
    for (;;) {
      const res = await this.send(method, url, headers, signal, auth);
      if (res.statusCode !== 401) {
        this.noteRateLimit(res.headers);
        return res;
      }
      await discard(res);
      const origin = res.url?.origin ?? this.origin;
      // The host asked for a token, got it, and still says no. With no error, or insufficient_scope,
      // that refuses this repository (Docker Hub's answer when it does not exist, or is private);
      // any other (invalid_token, Basic credentials refused) is our credentials' problem.
      if (answered.has(origin)) {
        const again = parseChallenge(String(res.headers['www-authenticate'] ?? ''));
        const error = again?.params.error;
        return again?.scheme === 'bearer' && (error === undefined || error === 'insufficient_scope') ? { ...res, refused: true } : res;
      }
      // Each challenge is answered once, and a chain of hosts that each challenge is cut short.
      if (answered.size >= MAX_CHALLENGES) return res;
      answered.add(origin);
      // No way to answer the challenge: the 401 stands (its body is already gone).
      if (!(await this.credentials.answer(repo, res.headers, origin, res.authorization, signal))) return res;
    }
  }

  /**
   * Sends one request and follows redirects. Each hop gets `auth(origin)` for its own origin (with
   * none, an Authorization in `headers` goes only to the first origin: a hop to another (a CDN) goes
   * without it, and so does every hop after that).
   */
  private async send(
    method: 'GET' | 'HEAD',
    url: string,
    headers: Record<string, string>,
    signal?: AbortSignal,
    auth?: (origin: string) => Record<string, string>,
    /** What `url` is, when it is no URL of the upstream's (its token service): named when it cannot be reached. */
    what?: string,
  ): Promise<Answer> {
    let target = new URL(url);
    // Bodies are read as sent: a request without Accept-Encoding lets a server (a CDN) compress them,
    // and a gzipped manifest or token answer then reads as no JSON, or as the wrong digest.
    let sent: Record<string, string> = { 'user-agent': this.userAgent, 'accept-encoding': 'identity', ...headers };
    // Once a hop has left the first origin, a redirect back to it carries none of our credentials:
    // a third party does not get to choose where they are sent.
    const first = target.origin;
    let left = false;
    // Once the chain is on the internet (a connection of it went to a public address, or the
    // upstream's own host ever resolved to one), every connection goes to public addresses only: a
    // third party does not get to send Wharf inside the network. Decided on the lookups the
    // connections themselves make. An upstream the operator put inside the network may send Wharf
    // anywhere inside it, until a hop leaves it.
    const chain = { outward: this.seenPublic };
    for (let hop = 0; ; hop++) {
      const place = this.placeOf(target, chain);
      let res: Answer;
      const hopHeaders = auth && !(left && target.origin === first) ? { ...sent, ...auth(target.origin) } : sent;
      try {
        // Through an egress proxy, which resolves names itself, only an address in the URL is known.
        if (this.proxied(target) && isIP(target.hostname.replace(/^\[(.*)\]$/, '$1'))) place.filter([target.hostname.replace(/^\[(.*)\]$/, '$1')]);
        res = this.proxied(target)
          ? await (await this.dispatcher(this.via!)).request({ origin: target.origin, path: `${target.pathname}${target.search}`, method, headers: hopHeaders, ...(signal ? { signal } : {}) })
          : await plainRequest(target, hopHeaders, this.timeouts, signal, {
              method,
              bodyBuffer: upstreamBodyBuffer,
              ...(this.options.ca !== undefined ? { ca: this.options.ca } : {}),
              addresses: place,
            });
      } catch (err) {
        this.options.onRequest?.('error');
        if (err instanceof AddressRefused) {
          const how = hop === 0 ? (target.origin === this.origin ? 'resolves' : 'sent Wharf') : 'redirected';
          throw new UpstreamError(
            'invalid',
            how === 'resolves'
              ? `upstream ${this.name} (${err.host}) now resolves to an address inside the network (${err.address}): refused, as it was on the internet`
              : `upstream ${this.name} ${how} to ${err.host}, an address inside the network: refused (once on the internet, its requests go to public addresses only)`,
          );
        }
        // The egress proxy's own failure is named as such, not as the upstream's outage.
        const atProxy = this.egress && this.proxied(target) ? egressFailure(err, this.egress, target, this.name) : undefined;
        if (atProxy) throw atProxy;
        // Another host (a CDN, a token service an egress allow-list forgot) is named: not the upstream.
        // So is the token service on the upstream's own host: it, not the registry, did not answer.
        if (target.origin === this.origin && (hop > 0 || what === undefined)) throw err;
        throw this.translate(err, hop === 0 && what !== undefined ? `${what} (${target.host})` : `upstream ${this.name}'s redirect target ${target.host}`);
      }
      this.options.onRequest?.(res.statusCode);
      const location = res.headers.location;
      if (!REDIRECTS.has(res.statusCode) || typeof location !== 'string' || hop >= MAX_REDIRECTS) {
        return Object.assign(res, { url: target, ...(hopHeaders.authorization !== undefined ? { authorization: hopHeaders.authorization } : {}) });
      }
      await discard(res);
      const next = new URL(location, target);
      if (next.protocol !== 'https:' && next.protocol !== 'http:') {
        throw new UpstreamError('invalid', `upstream ${this.name} redirected to a ${next.protocol} URL`);
      }
      if (next.origin !== target.origin) {
        const { authorization: _dropped, ...rest } = sent;
        sent = rest;
        left = true;
      }
      target = next;
    }
  }

  /** The upstream's own host resolved to a public address once: from then on it is on the internet for good. */
  private seenPublic = false;

  /**
   * Where a connection to `target` may go, for a request chain (see send): any public address, which
   * takes the chain onto the internet; an address inside the network only while it is not there.
   */
  private placeOf(target: URL, chain: { outward: boolean }): AddressPolicy {
    const isPublic = this.options.internet?.isPublicAddress ?? isPublicAddress;
    const own = target.hostname === this.hostname;
    return {
      tag: chain.outward ? 'outward' : 'inside',
      filter: (resolved) => {
        const open = resolved.filter((address) => isPublic(address));
        if (open.length > 0) {
          chain.outward = true;
          if (own) this.seenPublic = true;
          return open;
        }
        if (chain.outward) throw new AddressRefused(target.host, resolved[0] ?? target.hostname);
        return [...resolved];
      },
    };
  }

  /**
   * Whether a request to `target` goes through the egress proxy (then undici sends it): the proxy of
   * the upstream's scheme, which its redirect hops take too, unless NO_PROXY names the target's host.
   */
  private proxied(target: URL): boolean {
    return this.via !== undefined && !bypassesProxy(this.options.egress?.noProxy, target);
  }

  /**
   * A 429, a 5xx, or a redirect target's 403 (a CDN's signed URL that expired: the next attempt gets
   * a fresh one).
   */
  private worthRetrying(res: Answer): boolean {
    // 501 says the server does not do this at all: asking again changes nothing.
    return res.statusCode === 429 || (res.statusCode >= 500 && res.statusCode !== 501) || (res.statusCode === 403 && res.url !== undefined && res.url.origin !== this.origin);
  }

  /** A 429 or 5xx (or see worthRetrying): its body is discarded and the status becomes the failure withRetries acts on. */
  private async retryable(res: Answer, who = res.url && res.url.origin !== this.origin ? `upstream ${this.name}'s redirect target ${res.url.host}` : `upstream ${this.name}`): Promise<never> {
    await discard(res);
    const retryAfter = parseRetryAfter(res.headers['retry-after']);
    throw new UpstreamError(
      res.statusCode === 429 ? 'rate-limited' : 'server-error',
      `${who} answered ${res.statusCode}${retryAfter !== undefined ? `, asking to retry after ${retryAfter} s` : ''}`,
      res.statusCode,
      retryAfter,
    );
  }

  /**
   * `attempt`, again after a connection error, a timeout, a 5xx or a 429, with exponential backoff and
   * jitter, or the 429's Retry-After. A 429 is retried once only: the upstream said it is limiting,
   * and more attempts would hold the client for several Retry-Afters to end with the same answer.
   * Cut short by `signal` while waiting to retry, the failure is the upstream's last answer (what a
   * stale copy's Warning then names), not the wait's.
   */
  private async withRetries<T>(signal: AbortSignal | undefined, attempt: () => Promise<T>): Promise<T> {
    let last: UpstreamError | undefined;
    let rateLimited = 0;
    const started = performance.now();
    for (let i = 0; i <= this.retries; i++) {
      if (last) {
        const backoff = Math.min(this.maxRetryWait, 200 * 2 ** (i - 1));
        const wait = last.retryAfter !== undefined ? last.retryAfter * 1000 : backoff / 2 + Math.random() * backoff;
        if (wait > this.maxRetryWait || performance.now() - started + wait > this.retryBudget) break;
        const waited = await sleep(wait, signal).then(
          () => true,
          () => false,
        );
        if (!waited) throw last;
      }
      try {
        return await attempt();
      } catch (err) {
        if (signal?.aborted) throw err;
        last = this.translate(err);
        if (last.failure === 'rate-limited' && ++rateLimited > 1) throw last;
        if (RETRIED.has(last.failure)) continue;
        throw last;
      }
    }
    throw last ?? new UpstreamError('unreachable', `upstream ${this.name} did not answer`);
  }

  /** A failed request as an UpstreamError; `who` is what did not answer (the upstream, unless a redirect's host). */
  private translate(err: unknown, who = `upstream ${this.name}`): UpstreamError {
    if (err instanceof UpstreamError) return err;
    const e = err as { code?: unknown; name?: string; message?: string; cause?: { code?: unknown } };
    // Only node's codes are strings: a DOMException's (an aborted or timed-out signal's) is a number.
    const code = [e.code, e.cause?.code].find((c): c is string => typeof c === 'string');
    if (isTimeout(err)) return new UpstreamError('timeout', `${who} timed out`);
    if (code && RETRYABLE_CODES.has(code)) return new UpstreamError('unreachable', `${who} is unreachable (${code})`);
    if (code && isCertificateFailure(code)) {
      return new UpstreamError('unreachable', `${who}'s TLS certificate is not trusted (${code}); a private CA goes in the upstream's ca_file`);
    }
    return new UpstreamError('unreachable', `${who} request failed: ${e.message ?? String(err)}`);
  }

  /**
   * Throws unless `res` is a 2xx. A 401 refusing the repository with a fresh token (see authorized)
   * is 'denied'; any other 401 or 403 is our credentials' problem ('unauthorized': expired, revoked,
   * or a firewall's).
   */
  private expectOk(res: { statusCode: number; headers?: Headers; url?: URL; refused?: boolean; bytes?: Buffer }, what: string): void {
    const status = res.statusCode;
    const origin = res.url?.origin ?? this.origin;
    // `send` follows MAX_REDIRECTS hops: one more is a loop (or a chain too long to be a registry's).
    if (REDIRECTS.has(status) && typeof res.headers?.location === 'string') {
      const last = origin !== this.origin ? ` (the last hop at ${res.url!.host})` : '';
      throw new UpstreamError('server-error', `upstream ${this.name} redirected the ${what} more than ${MAX_REDIRECTS} times${last}: a redirect loop`, status);
    }
    if (origin !== this.origin && (status < 200 || status >= 300)) {
      throw new UpstreamError(status === 401 || status === 403 ? 'unauthorized' : 'server-error', `upstream ${this.name} redirected the ${what} to ${res.url!.host}, which answered ${status}`, status);
    }
    if (status === 401 || status === 403) {
      if (res.refused) {
        throw new UpstreamError('denied', `upstream ${this.name} denies access to this repository (${status}): it does not exist there, or the upstream's credentials in Wharf's configuration may not pull it`, status);
      }
      // With no credentials of ours, a registry's 403 is the repository's refusal, not theirs: ghcr.io
      // answers an anonymous pull of a package that does not exist (or is private) with 403 DENIED.
      // A firewall's 403 page is no registry's answer: the 502 below. (A 401 after a fresh token
      // still says the token was no good: the upstream's problem.)
      if (status === 403 && this.options.username === undefined && res.bytes && isRegistryError(res.bytes)) throw anonymousRefusal(this.name, status);
      // A 401 without credentials of ours refused none: it wants some.
      if (status === 401 && this.options.username === undefined) {
        throw new UpstreamError('unauthorized', `upstream ${this.name} wants credentials for ${what} (${status}): ${this.options.credentialsAdvice ?? "give it a username and password in Wharf's configuration"}`, status);
      }
      // No credentials of ours, and no registry's error: something between (a firewall, a corporate proxy) refused it.
      if (this.options.username === undefined) {
        throw new UpstreamError('unauthorized', `upstream ${this.name} answered ${status} to ${what}, and no registry error with it: something in between (a firewall, a proxy) may have refused it`, status);
      }
      throw new UpstreamError('unauthorized', `upstream ${this.name} refused our credentials for ${what} (${status})`, status);
    }
    if (status < 200 || status >= 300) {
      throw new UpstreamError('server-error', `upstream ${this.name} answered ${status} to ${what}`, status);
    }
  }

  private noteRateLimit(headers: Headers): void {
    const remaining = rateLimitOf(headers);
    if (remaining !== undefined) this.options.onRateLimit?.(remaining);
  }
}

/**
 * The egress proxy's connector, never naming an https:// proxy written as an IP address as the TLS
 * server name: undici does, which TLS does not allow (RFC 6066) and node warns of (DEP0123). The
 * certificate is still checked against the address. (Where the name is dropped matters: a CONNECT
 * asked without one gets the upstream's host from undici, and the proxy's certificate was then
 * checked against that.)
 */
function withoutAddressName(connect: unknown): { connect?: buildConnector.connector } {
  if (typeof connect !== 'function') return {};
  const connector = connect as buildConnector.connector;
  return {
    connect: (options, callback) => connector({ ...options, ...(isIP(options.hostname) ? { servername: null } : {}) } as buildConnector.Options, callback),
  };
}

/**
 * `pool` (the egress proxy's), its CONNECTs cut before an answer failing as ECONNRESET. undici takes
 * its own code for that (UND_ERR_SOCKET) as a socket error to recover from: the request stays queued
 * and the tunnel is asked for again at once, for good (a proxy that closed every CONNECT got 2,000 a
 * second, and the client never an answer).
 */
function tunnelPool(pool: Dispatcher): Dispatcher {
  const connect = pool.connect.bind(pool) as (options: Dispatcher.ConnectOptions) => Promise<Dispatcher.ConnectData>;
  const wrapped = (options: Dispatcher.ConnectOptions): Promise<Dispatcher.ConnectData> =>
    connect(options).catch((err: unknown) => {
      const code = (err as { code?: unknown }).code;
      if (code === 'UND_ERR_SOCKET') {
        throw Object.assign(new Error(`the egress proxy closed the connection before answering CONNECT (${(err as Error).message})`), { code: 'ECONNRESET' });
      }
      // TLS with an https:// proxy itself (the tunnelled TLS to the upstream fails elsewhere): the
      // proxy's certificate or handshake, which the upstream's ca_file has nothing to do with.
      if (typeof code === 'string' && (isCertificateFailure(code) || isHandshakeFailure(code))) {
        throw Object.assign(new Error(`TLS with the egress proxy failed (${code})`), { code: EGRESS_PROXY_TLS, tlsCode: code, cause: err });
      }
      throw err;
    });
  return Object.assign(pool, { connect: wrapped });
}

/**
 * The tags of an upstream's page that come after `last`. Where the page holds `last` (an upstream
 * that ignores it, listing from its start), those after it there. Otherwise those after it in either
 * order upstreams page in: bytes (distribution, Docker Hub) or the spec's case-insensitive order
 * (Wharf's, and others'); an upstream of the one order that ignores `last` still gets no tag
 * before it, and one of the other order that honours it, such as `B1` after `a20`, loses none.
 */
function pastLast(tags: readonly unknown[], last: string | undefined): readonly unknown[] {
  if (last === undefined) return tags;
  const at = tags.lastIndexOf(last);
  if (at >= 0) return tags.slice(at + 1);
  return tags.filter((tag) => typeof tag === 'string' && (tag > last || compareTags(tag, last) > 0));
}

/** RateLimit-Remaining ("76;w=21600"), as a number. */
function rateLimitOf(headers: Headers): number | undefined {
  const raw = headers['ratelimit-remaining'];
  if (raw === undefined) return undefined;
  const remaining = Number.parseInt(String(raw), 10);
  return Number.isFinite(remaining) ? remaining : undefined;
}

/** `?n=..&last=..` for a page, or '' for all. */
function pageQuery(page: Page): string {
  const params = new URLSearchParams();
  if (page.n !== undefined) params.set('n', String(page.n));
  if (page.last !== undefined) params.set('last', page.last);
  const query = params.toString();
  return query ? `?${query}` : '';
}

/** The query of a `Link: <...>; rel="next"` header (a tag list's next page), if any. */
export function nextPageQuery(link: string | string[] | undefined): string | undefined {
  for (const value of Array.isArray(link) ? link : link ? [link] : []) {
    for (const part of value.split(/,(?=\s*<)/)) {
      const m = /^\s*<([^>]*)>\s*;(.*)$/.exec(part);
      if (!m || !/(?:^|;)\s*rel\s*=\s*"?next"?\s*(?:;|$)/i.test(m[2]!)) continue;
      const query = new URL(m[1]!, 'http://upstream.invalid').search;
      return query || undefined;
    }
  }
  return undefined;
}

/** What `expectOk` needs of an answer besides its status. */
function answeredBy(res: Answer): { url?: URL; refused?: boolean } {
  return { ...(res.url ? { url: res.url } : {}), ...(res.refused ? { refused: true } : {}) };
}

/** Statuses to a manifest HEAD that say nothing about the manifest: the server does not do HEAD (right). */
const HEAD_UNSUPPORTED = new Set([400, 403, 405, 501]);

/** Range requests a whole-blob download may make to go on after its connection failed. */
const RESUMES = 3;

/** A byte range, or without an end the bytes from `start` to the blob's end. */
type OpenRange = ByteRange | { readonly start: number; readonly end?: undefined };

/** Docker's schema 1 manifests: no longer pushed, still served by some registries for old images. */
const SCHEMA1_SIGNED = 'application/vnd.docker.distribution.manifest.v1+prettyjws';
const SCHEMA1 = 'application/vnd.docker.distribution.manifest.v1+json';

/** A manifest media type Wharf knows (OCI, Docker, and schema 1 for the refusal that follows). */
function isKnownManifestType(mediaType: string): boolean {
  return (MANIFEST_MEDIA_TYPES as readonly string[]).includes(mediaType) || mediaType === SCHEMA1_SIGNED || mediaType === SCHEMA1;
}

/**
 * The media type of manifest bytes from an upstream; undefined when they are no manifest (a captive
 * portal's HTML page, `{}`), which is refused and never cached: a tag has no digest to check them by.
 * The document's own `mediaType` wins over Content-Type, which some servers send as text/plain or
 * application/json (one naming no manifest type makes it none); then a manifest Content-Type; then
 * the document's shape (an OCI manifest's `mediaType` is optional).
 */
function manifestMediaType(bytes: Buffer, contentType: string | undefined): string | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return undefined;
  const { schemaVersion, mediaType, manifests, layers, signatures } = doc as Record<string, unknown>;
  if (schemaVersion !== 1 && schemaVersion !== 2) return undefined;
  // A document naming a type that is no manifest's (`text/html`) is none, whatever else it holds.
  if (typeof mediaType === 'string' && mediaType !== '') return isKnownManifestType(mediaType) ? mediaType : undefined;
  const header = bareMediaType(contentType);
  if (header && isKnownManifestType(header)) return header;
  if (schemaVersion === 1) return signatures === undefined ? SCHEMA1 : SCHEMA1_SIGNED;
  if (Array.isArray(manifests)) return MediaType.OciIndex;
  if (Array.isArray(layers)) return MediaType.OciManifest;
  return undefined;
}


