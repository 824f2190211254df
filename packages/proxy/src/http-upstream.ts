import type { Readable } from 'node:stream';
import { MANIFEST_MEDIA_TYPES, bareMediaType, digestOf, tryParseDigest, type ByteRange, type Digest } from '@wharf/registry-core';
import got, { type Got, type Headers, type Response } from 'got';
import { TokenCache, parseChallenge } from './token-auth.js';
import { UpstreamError, type Upstream, type UpstreamBlob, type UpstreamBlobStat, type UpstreamHead, type UpstreamManifest } from './upstream.js';

export interface UpstreamTimeouts {
  /** TCP (and TLS) connection, ms. */
  readonly connect: number;
  /** From request sent to the first byte of the response, ms. */
  readonly firstByte: number;
  /** Longest silence while a body streams, ms. There is no total-time limit. */
  readonly idle: number;
}

export interface HttpUpstreamOptions {
  readonly name: string;
  /** Base URL of the registry, e.g. https://registry-1.docker.io */
  readonly url: string;
  readonly username?: string;
  readonly password?: string;
  readonly timeouts?: Partial<UpstreamTimeouts>;
  /** Attempts for idempotent requests on connection errors, 5xx and 429. */
  readonly retries?: number;
  /** Longest Retry-After we wait out before giving up, ms. */
  readonly maxRetryWait?: number;
  readonly userAgent?: string;
  /** Called with RateLimit-Remaining whenever an upstream sends it. */
  readonly onRateLimit?: (remaining: number) => void;
  /** Called once per HTTP request sent (token requests included) with its status, or "error" when none came. */
  readonly onRequest?: (status: number | 'error') => void;
}

const DEFAULT_TIMEOUTS: UpstreamTimeouts = { connect: 10_000, firstByte: 30_000, idle: 60_000 };
const ACCEPT_MANIFESTS = MANIFEST_MEDIA_TYPES.join(', ');
const RETRYABLE_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH', 'ECONNABORTED']);

/** Seconds from a Retry-After header (delta-seconds or an HTTP date). */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (!text) return undefined;
  if (/^\d+$/.test(text.trim())) return Number(text.trim());
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - now) / 1000));
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(signal.reason as Error);
    }, { once: true });
  });
}

/**
 * A remote registry over HTTP(S) with got: anonymous, Basic, or Bearer tokens fetched from the realm
 * of the upstream's challenge for exactly the scope needed and cached until they expire. Idempotent
 * requests are retried with exponential backoff and jitter; redirects (Docker Hub's blob CDN) are
 * followed and got drops our Authorization header when the host changes. The client's own credentials
 * never reach here: only the upstream's configured ones are sent.
 */
export class HttpUpstream implements Upstream {
  readonly name: string;
  private readonly base: string;
  private readonly http: Got;
  private readonly tokens = new TokenCache();
  private readonly timeouts: UpstreamTimeouts;
  private readonly retries: number;
  private readonly maxRetryWait: number;

  constructor(private readonly options: HttpUpstreamOptions) {
    this.name = options.name;
    this.base = options.url.replace(/\/+$/, '');
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
    this.retries = options.retries ?? 3;
    this.maxRetryWait = options.maxRetryWait ?? 10_000;
    this.http = got.extend({
      throwHttpErrors: false,
      retry: { limit: 0 },
      followRedirect: true,
      headers: { 'user-agent': options.userAgent ?? 'wharf-proxy' },
      timeout: { connect: this.timeouts.connect, secureConnect: this.timeouts.connect, response: this.timeouts.firstByte, socket: this.timeouts.idle },
    });
  }

  async head(repo: string, reference: string, signal?: AbortSignal): Promise<UpstreamHead | undefined> {
    const res = await this.request('HEAD', repo, `manifests/${reference}`, { accept: ACCEPT_MANIFESTS }, signal);
    if (res.statusCode === 404) return undefined;
    this.expectOk(res, 'manifest HEAD');
    const digest = tryParseDigest(String(res.headers['docker-content-digest'] ?? ''))?.digest;
    const mediaType = bareMediaType(res.headers['content-type']);
    return { ...(digest ? { digest } : {}), ...(mediaType ? { mediaType } : {}) };
  }

  async manifest(repo: string, reference: string, signal?: AbortSignal): Promise<UpstreamManifest | undefined> {
    const res = await this.request('GET', repo, `manifests/${reference}`, { accept: ACCEPT_MANIFESTS }, signal);
    if (res.statusCode === 404) return undefined;
    this.expectOk(res, 'manifest GET');
    const bytes = res.rawBody;
    const declared = tryParseDigest(String(res.headers['docker-content-digest'] ?? ''))?.digest;
    const wanted = tryParseDigest(reference)?.digest;
    const algorithm = wanted ? (wanted.startsWith('sha512:') ? 'sha512' : 'sha256') : declared?.startsWith('sha512:') ? 'sha512' : 'sha256';
    const digest = digestOf(bytes, algorithm);
    if ((wanted && digest !== wanted) || (declared && declared.split(':')[0] === algorithm && declared !== digest)) {
      throw new UpstreamError('invalid', `upstream ${this.name} sent a manifest that does not match its digest`, res.statusCode);
    }
    const mediaType = bareMediaType(res.headers['content-type']) ?? mediaTypeOf(bytes);
    if (!mediaType) throw new UpstreamError('invalid', `upstream ${this.name} sent a manifest without a media type`);
    return { digest, mediaType, bytes };
  }

  async blob(repo: string, digest: Digest, range?: ByteRange, signal?: AbortSignal): Promise<UpstreamBlob | undefined> {
    const headers: Record<string, string> = {};
    if (range) headers.range = `bytes=${range.start}-${range.end}`;
    const { response, body } = await this.stream(repo, `blobs/${digest}`, headers, signal);
    if (response.statusCode === 404) {
      body.destroy();
      return undefined;
    }
    if (response.statusCode !== 200 && response.statusCode !== 206) {
      body.destroy();
      this.expectOk(response, 'blob GET');
    }
    const length = Number(response.headers['content-length']);
    let size: number | undefined;
    let part: ByteRange | undefined;
    if (response.statusCode === 206) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(response.headers['content-range'] ?? '').trim());
      if (m) {
        part = { start: Number(m[1]), end: Number(m[2]) };
        if (m[3] !== '*') size = Number(m[3]);
      }
    } else if (Number.isFinite(length)) {
      size = length;
    }
    return { ...(size !== undefined ? { size } : {}), ...(part ? { range: part } : {}), body };
  }

  async statBlob(repo: string, digest: Digest, signal?: AbortSignal): Promise<UpstreamBlobStat | undefined> {
    const res = await this.request('HEAD', repo, `blobs/${digest}`, {}, signal);
    if (res.statusCode === 404) return undefined;
    this.expectOk(res, 'blob HEAD');
    const length = Number(res.headers['content-length']);
    return Number.isSafeInteger(length) && length >= 0 ? { size: length } : {};
  }

  /** A buffered request (manifests, HEAD) with auth and retries. */
  private async request(method: 'GET' | 'HEAD', repo: string, path: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Response<Buffer>> {
    return this.withRetries(signal, async () => {
      const url = `${this.base}/v2/${repo}/${path}`;
      let res = await this.http(url, { method, headers: { ...headers, ...this.authHeader(repo) }, responseType: 'buffer', ...(signal ? { signal } : {}) });
      this.options.onRequest?.(res.statusCode);
      if (res.statusCode === 401 && (await this.authenticate(repo, res.headers))) {
        res = await this.http(url, { method, headers: { ...headers, ...this.authHeader(repo) }, responseType: 'buffer', ...(signal ? { signal } : {}) });
        this.options.onRequest?.(res.statusCode);
      }
      this.noteRateLimit(res.headers);
      return res;
    });
  }

  /** A streamed request (blobs): resolves once the response headers are in, with the body still flowing. */
  private stream(repo: string, path: string, headers: Record<string, string>, signal?: AbortSignal): Promise<{ response: Response; body: Readable }> {
    return this.withRetries(signal, async () => {
      const url = `${this.base}/v2/${repo}/${path}`;
      const open = () =>
        new Promise<{ response: Response; body: Readable }>((resolve, reject) => {
          const body = this.http.stream(url, { headers: { ...headers, ...this.authHeader(repo) }, ...(signal ? { signal } : {}) });
          body.once('response', (response: Response) => {
            this.options.onRequest?.(response.statusCode);
            resolve({ response, body });
          });
          body.once('error', reject);
        });
      let result = await open();
      if (result.response.statusCode === 401 && (await this.authenticate(repo, result.response.headers))) {
        result.body.destroy();
        result = await open();
      }
      this.noteRateLimit(result.response.headers);
      return result;
    });
  }

  private async withRetries<T extends { statusCode: number; headers: Headers } | { response: Response; body: Readable }>(
    signal: AbortSignal | undefined,
    attempt: () => Promise<T>,
  ): Promise<T> {
    let last: UpstreamError | undefined;
    for (let i = 0; i <= this.retries; i++) {
      if (i > 0) {
        const backoff = Math.min(this.maxRetryWait, 200 * 2 ** (i - 1));
        const wait = last?.retryAfter !== undefined ? last.retryAfter * 1000 : backoff / 2 + Math.random() * backoff;
        if (wait > this.maxRetryWait) break;
        await sleep(wait, signal);
      }
      let result: T;
      try {
        result = await attempt();
      } catch (err) {
        if (!(err instanceof UpstreamError)) this.options.onRequest?.('error');
        if (signal?.aborted) throw err;
        last = this.translate(err);
        if (last.failure === 'unreachable' || last.failure === 'timeout') continue;
        throw last;
      }
      const status = 'response' in result ? result.response.statusCode : result.statusCode;
      const headers = 'response' in result ? result.response.headers : result.headers;
      if (status === 429 || status >= 500) {
        if ('response' in result) result.body.destroy();
        last = new UpstreamError(
          status === 429 ? 'rate-limited' : 'server-error',
          `upstream ${this.name} answered ${status}`,
          status,
          parseRetryAfter(headers['retry-after']),
        );
        continue;
      }
      return result;
    }
    throw last ?? new UpstreamError('unreachable', `upstream ${this.name} did not answer`);
  }

  private translate(err: unknown): UpstreamError {
    if (err instanceof UpstreamError) return err;
    const e = err as { code?: string; name?: string; message?: string };
    if (e.name === 'TimeoutError' || e.code === 'ETIMEDOUT') return new UpstreamError('timeout', `upstream ${this.name} timed out`);
    if (e.code && RETRYABLE_CODES.has(e.code)) return new UpstreamError('unreachable', `upstream ${this.name} is unreachable (${e.code})`);
    return new UpstreamError('unreachable', `upstream ${this.name} request failed: ${e.message ?? String(err)}`);
  }

  private expectOk(res: { statusCode: number }, what: string): void {
    if (res.statusCode === 401 || res.statusCode === 403) {
      throw new UpstreamError('unauthorized', `upstream ${this.name} refused our credentials for ${what} (${res.statusCode})`, res.statusCode);
    }
    if (res.statusCode < 200 || res.statusCode >= 300) {
      throw new UpstreamError('server-error', `upstream ${this.name} answered ${res.statusCode} to ${what}`, res.statusCode);
    }
  }

  private authHeader(repo: string): Record<string, string> {
    const token = this.tokens.get(this.tokenKey(repo));
    if (token) return { authorization: `Bearer ${token}` };
    if (this.basicOnly && this.options.username !== undefined) return { authorization: this.basic() };
    return {};
  }

  /** Set once the upstream challenged with Basic: from then on credentials go with every request. */
  private basicOnly = false;

  private tokenKey(repo: string): string {
    return `repository:${repo}:pull`;
  }

  private basic(): string {
    return `Basic ${Buffer.from(`${this.options.username ?? ''}:${this.options.password ?? ''}`).toString('base64')}`;
  }

  /** Answers a 401 challenge: Basic → our credentials; Bearer → a token for the repository's pull scope. */
  private async authenticate(repo: string, headers: Headers): Promise<boolean> {
    const challenge = parseChallenge(String(headers['www-authenticate'] ?? ''));
    if (!challenge) return false;
    if (challenge.scheme === 'basic') {
      if (this.options.username === undefined || this.basicOnly) return false;
      this.basicOnly = true;
      return true;
    }
    const realm = challenge.params.realm;
    if (!realm) return false;
    const scope = this.tokenKey(repo);
    const url = new URL(realm);
    if (challenge.params.service) url.searchParams.set('service', challenge.params.service);
    url.searchParams.set('scope', scope);
    const res = await this.http(url, {
      headers: this.options.username !== undefined ? { authorization: this.basic() } : {},
      responseType: 'json',
    }).catch((err: unknown) => {
      this.options.onRequest?.('error');
      throw this.translate(err);
    });
    this.options.onRequest?.(res.statusCode);
    if (res.statusCode !== 200) {
      throw new UpstreamError('unauthorized', `token service of upstream ${this.name} answered ${res.statusCode}`, res.statusCode);
    }
    const body = res.body as { token?: string; access_token?: string; expires_in?: number };
    const token = body.token ?? body.access_token;
    if (!token) throw new UpstreamError('unauthorized', `token service of upstream ${this.name} sent no token`);
    this.tokens.set(scope, token, body.expires_in ?? 60);
    return true;
  }

  private noteRateLimit(headers: Headers): void {
    const raw = headers['ratelimit-remaining'];
    if (raw === undefined || !this.options.onRateLimit) return;
    const remaining = Number.parseInt(String(raw), 10);
    if (Number.isFinite(remaining)) this.options.onRateLimit(remaining);
  }
}

function mediaTypeOf(bytes: Buffer): string | undefined {
  try {
    const doc = JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown };
    return typeof doc.mediaType === 'string' ? doc.mediaType : undefined;
  } catch {
    return undefined;
  }
}
