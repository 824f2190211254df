import type { Readable } from 'node:stream';
import { tryParseDigest, type ByteRange, type Descriptor, type Digest, type Page } from '@wharf/registry-core';

export interface UpstreamManifest {
  readonly digest: Digest;
  readonly mediaType: string;
  readonly bytes: Buffer;
}

export interface UpstreamHead {
  /** Absent when the upstream did not send Docker-Content-Digest (then a GET is needed). */
  readonly digest?: Digest;
  readonly mediaType?: string;
  /** The RateLimit-Remaining this answer carried (Docker Hub's manifest answers do). */
  readonly rateLimitRemaining?: number;
}

export interface UpstreamBlob {
  /** The full blob size, when the upstream said it. */
  readonly size?: number;
  /** The bytes the body holds, when the upstream answered a range request with that range (206). */
  readonly range?: ByteRange;
  readonly body: Readable;
  /**
   * Set when the body's chunks are lent from reused memory: whoever is done with a chunk (wrote it to
   * disk, say) may give it back, and later reads reuse its memory. A chunk never given back is
   * ordinary garbage. Give back only chunks nothing reads any more.
   */
  readonly recycle?: (chunk: Buffer) => void;
  /**
   * Called by whoever checked the bytes and found them wrong (a digest or size that does not match):
   * a client of several mirrors then asks the others first for a while.
   */
  readonly refused?: () => void;
}

export interface UpstreamBlobStat {
  readonly size?: number;
}

/** One remote registry, as the pull-through side needs it. Absence (404) is undefined. */
export interface Upstream {
  readonly name: string;
  head(repo: string, reference: string, signal?: AbortSignal): Promise<UpstreamHead | undefined>;
  manifest(repo: string, reference: string, signal?: AbortSignal): Promise<UpstreamManifest | undefined>;
  blob(repo: string, digest: Digest, range?: ByteRange, signal?: AbortSignal): Promise<UpstreamBlob | undefined>;
  /**
   * A HEAD of the blob: undefined when the repository does not have it (a cached blob is served under
   * a repository only if it does), else its size when the upstream says it.
   */
  statBlob(repo: string, digest: Digest, signal?: AbortSignal): Promise<UpstreamBlobStat | undefined>;
  /**
   * The repository's tags from `page.last` on, at least `page.n` of them when it has that many (more
   * may come); undefined when the upstream does not know the repository.
   */
  tags(repo: string, page: Page, signal?: AbortSignal): Promise<UpstreamTags | undefined>;
  /** The manifests that name `subject` (OCI 1.1); undefined when the upstream has no referrers API. */
  referrers(repo: string, subject: Digest, signal?: AbortSignal): Promise<Descriptor[] | undefined>;
}

export interface UpstreamTags {
  readonly tags: string[];
  /** The upstream's last page was reached: no tag comes after these. */
  readonly whole: boolean;
}

/**
 * Why an upstream request failed. 'denied': the upstream refuses this repository even with a token
 * for it (Docker Hub's answer for a repository that does not exist, or is private).
 */
export type UpstreamFailure = 'unreachable' | 'timeout' | 'server-error' | 'rate-limited' | 'unauthorized' | 'denied' | 'invalid';

/** Failures that say the upstream is down or overloaded, not that it answered "no". */
export const OUTAGES: ReadonlySet<UpstreamFailure> = new Set(['unreachable', 'timeout', 'server-error', 'rate-limited']);

/** Statuses that say the upstream (or its gateway) is down or overloaded, not that one request failed. */
const DOWN_STATUSES: ReadonlySet<number> = new Set([429, 502, 503, 504]);

/**
 * Whether `err` says the upstream as a whole is down or overloaded: no answer, a timeout, a 429 or a
 * 502-504. A 500 (or 501) is an outage of the request that got it, served stale and retried like
 * one, but says nothing of the upstream's other repositories: it starts no back-off of them all.
 */
export function isUpstreamDown(err: unknown): err is UpstreamError {
  if (!(err instanceof UpstreamError) || !OUTAGES.has(err.failure)) return false;
  return err.status === undefined || DOWN_STATUSES.has(err.status);
}

/** The upstream could not answer. The proxy serves a stale copy when it has one. */
export class UpstreamError extends Error {
  override name = 'UpstreamError';
  constructor(
    readonly failure: UpstreamFailure,
    message: string,
    readonly status?: number,
    /** Seconds, from Retry-After. */
    readonly retryAfter?: number,
  ) {
    super(message);
  }
}

const TIMEOUT_CODES = new Set(['ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/**
 * Whether a failed request or body timed out: a socket's idle timeout, undici's, or an aborted
 * signal's TimeoutError. Only node's codes are strings (a DOMException's is a number).
 */
export function isTimeout(err: unknown): boolean {
  if (err instanceof UpstreamError) return err.failure === 'timeout';
  const e = err as { code?: unknown; name?: unknown; cause?: { code?: unknown } } | null | undefined;
  if (e === null || typeof e !== 'object') return false;
  if (e.name === 'TimeoutError') return true;
  return [e.code, e.cause?.code].some((c) => typeof c === 'string' && TIMEOUT_CODES.has(c));
}

/** A descriptor from an upstream's index (a referrers list), or undefined when the entry is not one. */
export function descriptorOf(entry: unknown): Descriptor | undefined {
  if (entry === null || typeof entry !== 'object') return undefined;
  const e = entry as Record<string, unknown>;
  const digest = typeof e.digest === 'string' ? tryParseDigest(e.digest)?.digest : undefined;
  if (typeof e.mediaType !== 'string' || !digest || typeof e.size !== 'number' || !Number.isSafeInteger(e.size) || e.size < 0) return undefined;
  const annotations =
    e.annotations !== null && typeof e.annotations === 'object' && Object.values(e.annotations).every((v) => typeof v === 'string')
      ? (e.annotations as Record<string, string>)
      : undefined;
  return {
    mediaType: e.mediaType,
    digest,
    size: e.size,
    ...(typeof e.artifactType === 'string' ? { artifactType: e.artifactType } : {}),
    ...(annotations ? { annotations } : {}),
  };
}
