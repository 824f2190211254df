import { createHash, type Hash } from 'node:crypto';
import { RegistryError } from './errors.js';

export type DigestAlgorithm = 'sha256' | 'sha512';
export type Digest = `sha256:${string}` | `sha512:${string}`;

const HEX_LENGTH: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 };
const DIGEST_PATTERN = /^(sha256|sha512):([a-f0-9]+)$/;
/** Any algorithm the spec's grammar allows; used to tell "malformed" from "unsupported". */
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export interface ParsedDigest {
  readonly algorithm: DigestAlgorithm;
  readonly hex: string;
  readonly digest: Digest;
}

/** Parses a digest string; absence (undefined) when it is not a digest we can verify. */
export function tryParseDigest(value: string): ParsedDigest | undefined {
  const m = DIGEST_PATTERN.exec(value);
  if (!m) return undefined;
  const algorithm = m[1] as DigestAlgorithm;
  const hex = m[2]!;
  if (hex.length !== HEX_LENGTH[algorithm]) return undefined;
  return { algorithm, hex, digest: value as Digest };
}

/** Parses a digest or throws DIGEST_INVALID (unsupported algorithms included: we cannot verify them). */
export function parseDigest(value: string): ParsedDigest {
  const parsed = tryParseDigest(value);
  if (parsed) return parsed;
  if (DIGEST_GRAMMAR.test(value) && !/^sha(256|512):/.test(value)) {
    throw new RegistryError('DIGEST_INVALID', 'unsupported digest algorithm; use sha256 or sha512', { digest: value });
  }
  throw new RegistryError('DIGEST_INVALID', 'invalid digest', { digest: value });
}

export function looksLikeDigest(value: string): boolean {
  return value.includes(':');
}

export function isDigestAlgorithm(value: string): value is DigestAlgorithm {
  return value === 'sha256' || value === 'sha512';
}

export function newHash(algorithm: DigestAlgorithm): Hash {
  return createHash(algorithm);
}

export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): Digest {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}` as Digest;
}

export function hashToDigest(algorithm: DigestAlgorithm, hash: Hash): Digest {
  return `${algorithm}:${hash.digest('hex')}` as Digest;
}
