import { MAX_PAGE, RegistryError, cutToPage, parseDigest, type Digest } from '@wharf/registry-core';
import type { Context } from 'koa';
import { decodeCapture } from '../http/path-segments.js';
import { requestInfo, type RepositoryResolver, type ResolvedRepository, type Resource } from '../repositories.js';

export interface RouteDeps {
  readonly resolver: RepositoryResolver;
}

/**
 * The repository named by the route's first capture, validated and resolved for a route of `resource`:
 * as the auth middleware resolved it when it did (`rememberResolved`), so that the repository whose
 * rights were checked is the one that answers, whatever was pushed or deleted since.
 */
export function repository(ctx: Context, deps: RouteDeps, resource: Resource): Promise<ResolvedRepository> {
  const name = decodeCapture(ctx.captures[0] ?? '');
  const known = (ctx.state as { resolved?: Remembered }).resolved;
  const resolved =
    known && known.name === name && known.resource === resource
      ? Promise.resolve(known.target)
      : deps.resolver.resolve(name, new URLSearchParams(ctx.querystring), requestInfo(ctx.req, resource, ctx.method));
  return resolved.then((target) => {
    if (target.namespace) ctx.set('OCI-Namespace', target.namespace);
    return target;
  });
}

interface Remembered {
  readonly name: string;
  readonly resource: Resource;
  readonly target: ResolvedRepository;
}

/** Keeps what serves the request's repository, for `repository` to answer with. */
export function rememberResolved(ctx: Context, name: string, resource: Resource, target: ResolvedRepository): void {
  (ctx.state as { resolved?: Remembered }).resolved = { name, resource, target };
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

/** The largest page we answer; a listing without `n`, or with a larger one, is paginated with `Link`. */
export const MAX_PAGE_SIZE = MAX_PAGE;

/** One page of a listing, and whether entries follow it. */
export interface Listing {
  readonly items: string[];
  readonly more: boolean;
}

/**
 * A listing of a source that answers up to `n` entries after `last`: it is asked one entry more, whose
 * presence says another page follows.
 */
export function oneMore(list: (page: { n: number; last?: string }) => Promise<string[] | undefined>) {
  return async (page: { n: number; last?: string }): Promise<Listing | undefined> => {
    const items = await list({ ...page, n: page.n + 1 });
    return items && { items, more: cutToPage(items, page.n) };
  };
}

/**
 * Runs a paginated listing: when entries follow the page, sets `Link: <path?n=&last=>; rel="next"`
 * (`last` = the page's last entry) so the client can fetch the rest. undefined when the listing's owner
 * does not exist. An `ns` (containerd's choice of upstream) stays in the link: without it the next page
 * would list another registry's tags.
 */
export async function paginate(
  ctx: Context,
  path: string,
  list: (page: { n: number; last?: string }) => Promise<Listing | undefined>,
): Promise<string[] | undefined> {
  const page = pageParams(ctx);
  const size = Math.min(page.n ?? MAX_PAGE_SIZE, MAX_PAGE_SIZE);
  const listing = await list({ n: size, ...(page.last ? { last: page.last } : {}) });
  if (!listing) return undefined;
  const { items, more } = listing;
  if (more && items.length > 0) {
    const ns = typeof ctx.query.ns === 'string' && ctx.query.ns !== '' ? `&ns=${encodeURIComponent(ctx.query.ns)}` : '';
    ctx.set('Link', `<${path}?n=${size}&last=${encodeURIComponent(items.at(-1)!)}${ns}>; rel="next"`);
  }
  return items;
}
