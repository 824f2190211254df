import { RegistryError, parseDigest, type Digest } from '@wharf/registry-core';
import type { Context } from 'koa';
import type { RepositoryResolver, ResolvedRepository } from '../repositories.js';

export interface RouteDeps {
  readonly resolver: RepositoryResolver;
}

/**
 * URL-decodes a path capture. Malformed percent-encoding (`%zz`, a lone `%`) is kept as written, so the
 * name, tag or digest check downstream refuses it with its own 4xx instead of a URIError becoming a 500.
 */
export function decodeCapture(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** The repository named by the route's first capture, validated and resolved. */
export function repository(ctx: Context, deps: RouteDeps): Promise<ResolvedRepository> {
  const name = decodeCapture(ctx.captures[0] ?? '');
  return deps.resolver
    .resolve(name, new URLSearchParams(ctx.querystring), { method: ctx.method, remoteAddress: ctx.socket.remoteAddress })
    .then((target) => {
      if (target.namespace) ctx.set('OCI-Namespace', target.namespace);
      return target;
    });
}

/** The route's capture at `index`, URL-decoded. */
export function capture(ctx: Context, index: number): string {
  return decodeCapture(ctx.captures[index] ?? '');
}

export function digestParam(value: string | undefined): Digest {
  if (value === undefined || value === '') throw new RegistryError('DIGEST_INVALID', 'a digest is required', undefined);
  return parseDigest(value).digest;
}

/** `n` and `last` of a paginated listing. */
export function pageParams(ctx: Context): { n?: number; last?: string } {
  const n = ctx.query.n;
  const last = ctx.query.last;
  const page: { n?: number; last?: string } = {};
  if (n !== undefined) {
    if (typeof n !== 'string' || !/^\d{1,9}$/.test(n)) {
      throw new RegistryError('PAGINATION_NUMBER_INVALID', 'n must be a non-negative integer', { n });
    }
    page.n = Number(n);
  }
  if (typeof last === 'string' && last !== '') page.last = last;
  return page;
}

/** Sets `Link: <path?n=&last=>; rel="next"` when a page was full and more may follow. */
export function setNextLink(ctx: Context, path: string, n: number, last: string | undefined): void {
  if (last === undefined) return;
  ctx.set('Link', `<${path}?n=${n}&last=${encodeURIComponent(last)}>; rel="next"`);
}
