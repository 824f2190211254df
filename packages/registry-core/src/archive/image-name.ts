import { tryParseDigest, type Digest } from '../digest.js';
import { isValidRepositoryName, isValidTag } from '../reference.js';

export interface ImageName {
  readonly repo: string;
  readonly tag?: string;
  readonly digest?: Digest;
}

/**
 * `alice/app:1`, `alice/app@sha256:…`, `localhost/alice/app:1`, `docker.io/library/alpine:3.20`,
 * `127.0.0.1:5000/alice/app` → repository, tag, digest. A first component that is a host (it has a
 * "." or a ":", or is "localhost") is dropped: Wharf's repository names have no host. undefined when
 * the rest is not a valid repository name, tag or digest.
 */
export function parseImageName(value: string): ImageName | undefined {
  let rest = value.trim();
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    const parsed = tryParseDigest(rest.slice(at + 1));
    if (!parsed) return undefined;
    digest = parsed.digest;
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isValidTag(tag)) return undefined;
  }
  const parts = rest.split('/');
  if (parts.length > 1 && /[.:]|^localhost$/.test(parts[0]!)) parts.shift();
  const repo = parts.join('/');
  if (!isValidRepositoryName(repo)) return undefined;
  return { repo, ...(tag !== undefined ? { tag } : {}), ...(digest ? { digest } : {}) };
}
