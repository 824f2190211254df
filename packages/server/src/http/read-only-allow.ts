import type { Context, Middleware } from 'koa';
import type { RepositoryResolver, ResolvedRepository, Resource } from '../repositories.js';
import { requestInfo, writerOf } from '../repositories.js';
import { classifyRoute } from './route-label.js';

/** The routes `@koa/router` found for a request's path, whatever their methods. */
export type MatchedLayers = ReadonlyArray<{ readonly methods: readonly string[]; readonly path?: unknown }>;

export function matchedLayers(ctx: Context): MatchedLayers {
  return (ctx as { matched?: MatchedLayers }).matched ?? [];
}

/**
 * What a read-only repository (the pull-through proxy's) takes of the methods its path's routes
 * implement: the reads, and none of an upload route's, as it has no upload session to read.
 */
export function readOnlyAllow(matched: MatchedLayers): string {
  // Route paths are strings or regular expressions (`\/blobs\/uploads`): compared with slashes unescaped.
  const uploadPath = (layer: { readonly path?: unknown }) => String(layer.path).replaceAll('\\/', '/').includes('/blobs/uploads');
  const methods = new Set(matched.filter((layer) => !uploadPath(layer)).flatMap((layer) => layer.methods));
  return [...methods].filter((m) => m === 'GET' || m === 'HEAD').sort().join(', ');
}

/**
 * A read-only repository's (the pull-through proxy's) answers about methods, wrapping the router:
 * - OPTIONS answers the `Allow` its 405s send, not every method the router has for the path
 *   (`Allow: POST` on a proxy name's upload path, whose POST is a 405); the router's `allowedMethods`
 *   sets `Allow` after the routes found none for OPTIONS.
 * - A method no route of the path takes (`PUT …/blobs/uploads/`, `POST …/blobs/<digest>`) is refused
 *   as the routes refuse writes there, with the name's reason (where to push instead) and the reads
 *   it does take, not the router's "method not allowed" with a local name's `Allow`.
 * Resolved as a write is: a name that pulls read from an upstream (`default_upstream`, `?ns=`)
 * still takes pushes, which stay local, so only `proxy/...` names are read-only.
 */
export function readOnlyMethods(resolver: RepositoryResolver): Middleware {
  return async (ctx, next) => {
    try {
      await next();
    } catch (err) {
      if ((err as { status?: unknown } | null)?.status !== 405) throw err;
      const target = await readOnlyTarget(ctx, resolver);
      if (!target) throw err;
      writerOf(target); // a name without a writer: throws its UNSUPPORTED, as its routes' writes do
      throw err;
    }
    if (ctx.method !== 'OPTIONS' || ctx.status !== 200) return;
    if (!ctx.response.get('Allow')) return;
    if (await readOnlyTarget(ctx, resolver)) ctx.set('Allow', readOnlyAllow(matchedLayers(ctx)));
  };
}

/** The repository a request's path names, when it takes no writes; undefined for any other path. */
async function readOnlyTarget(ctx: Context, resolver: RepositoryResolver): Promise<ResolvedRepository | undefined> {
  const { route, repository } = classifyRoute(ctx.path);
  if (!repository || !isResource(route)) return undefined;
  const target = await resolver
    .resolve(repository, new URLSearchParams(ctx.querystring), requestInfo(ctx.req, route, 'PUT'))
    .catch(() => undefined);
  return target && !target.writer ? target : undefined;
}

function isResource(route: string): route is Resource {
  return route === 'manifest' || route === 'blob' || route === 'upload' || route === 'tags' || route === 'referrers';
}
