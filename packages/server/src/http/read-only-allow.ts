import type { Context, Middleware } from 'koa';
import type { RepositoryResolver, Resource } from '../repositories.js';
import { requestInfo } from '../repositories.js';
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
 * OPTIONS on a read-only repository's path answers the `Allow` its 405s send, not every method the
 * router has for the path (`Allow: POST` on a proxy name's upload path, whose POST is a 405).
 * Wraps the router: its `allowedMethods` sets `Allow` after the routes found none for OPTIONS.
 * Resolved as a write is: a name that pulls read from an upstream (`default_upstream`, `?ns=`)
 * still takes pushes, which stay local, so only `proxy/...` names are read-only.
 */
export function readOnlyOptions(resolver: RepositoryResolver): Middleware {
  return async (ctx, next) => {
    await next();
    if (ctx.method !== 'OPTIONS' || ctx.status !== 200) return;
    if (!ctx.response.get('Allow')) return;
    const { route, repository } = classifyRoute(ctx.path);
    if (!repository || !isResource(route)) return;
    const target = await resolver
      .resolve(repository, new URLSearchParams(ctx.querystring), requestInfo(ctx.req, route, 'PUT'))
      .catch(() => undefined);
    if (!target || target.writer) return;
    ctx.set('Allow', readOnlyAllow(matchedLayers(ctx)));
  };
}

function isResource(route: string): route is Resource {
  return route === 'manifest' || route === 'blob' || route === 'upload' || route === 'tags' || route === 'referrers';
}
