import { isValidRepositoryName } from '@wharf/registry-core';
import { decodeCapture } from './path-segments.js';

/**
 * A request's route as a small, fixed set of names: the `route` label of metrics and the `route` field
 * of the request log. Never the raw path, which would give every repository and digest its own series.
 */
export type RouteLabel =
  | 'base'
  | 'catalog'
  | 'blob'
  | 'upload'
  | 'manifest'
  | 'tags'
  | 'referrers'
  | 'token'
  | 'admin'
  | 'health'
  | 'metrics'
  | 'other';

export const ROUTE_LABELS: readonly RouteLabel[] = [
  'base', 'catalog', 'blob', 'upload', 'manifest', 'tags', 'referrers', 'token', 'admin', 'health', 'metrics', 'other',
];

export interface ClassifiedRoute {
  readonly route: RouteLabel;
  /** The repository name of a /v2/<name>/... route, when it is a valid name. */
  readonly repository?: string;
}

// The patterns of routes/*.ts, in the order app.ts registers them (uploads before blobs).
const REPOSITORY_ROUTES: readonly (readonly [RegExp, RouteLabel])[] = [
  [/^\/v2\/(.+)\/blobs\/uploads(?:\/[^/]*)?$/, 'upload'],
  [/^\/v2\/(.+)\/blobs\/([^/]+)$/, 'blob'],
  [/^\/v2\/(.+)\/manifests\/([^/]+)$/, 'manifest'],
  [/^\/v2\/(.+)\/tags\/list$/, 'tags'],
  [/^\/v2\/(.+)\/referrers\/([^/]+)$/, 'referrers'],
];


export function classifyRoute(path: string): ClassifiedRoute {
  if (path === '/v2' || path === '/v2/') return { route: 'base' };
  if (path === '/v2/_catalog') return { route: 'catalog' };
  if (path.startsWith('/v2/')) {
    for (const [pattern, route] of REPOSITORY_ROUTES) {
      const m = pattern.exec(path);
      if (!m) continue;
      const name = decodeCapture(m[1]!);
      return isValidRepositoryName(name) ? { route, repository: name } : { route };
    }
    return { route: 'other' };
  }
  if (path === '/auth/token') return { route: 'token' };
  if (path.startsWith('/admin/')) return { route: 'admin' };
  if (path === '/health' || path === '/ready') return { route: 'health' };
  if (path === '/metrics') return { route: 'metrics' };
  return { route: 'other' };
}

/**
 * Requests that move a blob: downloads (GET/HEAD of a blob, which may wait on an upstream fill) and
 * every upload step. They are limited by idle time on the socket, never by a total time.
 */
export function isBlobTransfer(method: string, route: RouteLabel): boolean {
  return route === 'upload' || (route === 'blob' && (method === 'GET' || method === 'HEAD'));
}
