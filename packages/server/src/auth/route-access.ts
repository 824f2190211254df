import { decodeCapture } from '../http/path-segments.js';
import type { Resource } from '../repositories.js';
import type { Action } from './permissions.js';

/**
 * What a /v2 request needs, from its method and path. The patterns and their order are those of the
 * route modules (routes/*.ts), so the name checked here is the name the route serves; a path this
 * table does not know needs an administrator (deny by default: a new route must be added here).
 */
export type RouteAccess =
  | { readonly kind: 'base' }
  | { readonly kind: 'catalog' }
  | { readonly kind: 'repository'; readonly name: string; readonly resource: Resource; readonly actions: readonly Action[]; readonly uploadStart: boolean }
  | { readonly kind: 'unknown' };

const BASE = /^\/v2\/?$/;
const CATALOG = /^\/v2\/_catalog$/;
const UPLOAD_START = /^\/v2\/(.+)\/blobs\/uploads\/?$/;
const UPLOAD_SESSION = /^\/v2\/(.+)\/blobs\/uploads\/([^/]+)$/;
const BLOB = /^\/v2\/(.+)\/blobs\/([^/]+)$/;
const MANIFEST = /^\/v2\/(.+)\/manifests\/([^/]+)$/;
const TAGS = /^\/v2\/(.+)\/tags\/list$/;
const REFERRERS = /^\/v2\/(.+)\/referrers\/([^/]+)$/;

const READ = ['GET', 'HEAD'];

interface Row {
  readonly methods: readonly string[];
  readonly pattern: RegExp;
  readonly resource: Resource;
  readonly needs: readonly Action[];
  readonly uploadStart: boolean;
}

const row = (methods: readonly string[], pattern: RegExp, resource: Resource, needs: readonly Action[], uploadStart = false): Row => ({ methods, pattern, resource, needs, uploadStart });

/**
 * In registration order (app.ts), after the base and catalog routes: the first row whose method and
 * pattern match is the route that answers. Every upload step needs push, reads of a session included:
 * a session is part of a push.
 */
const ROUTES: readonly Row[] = [
  row(['POST'], UPLOAD_START, 'upload', ['push'], true),
  row(READ, UPLOAD_SESSION, 'upload', ['push']),
  row(['PATCH', 'PUT', 'DELETE'], UPLOAD_SESSION, 'upload', ['push']),
  row(READ, BLOB, 'blob', ['pull']),
  row(['DELETE'], BLOB, 'blob', ['delete']),
  row(READ, MANIFEST, 'manifest', ['pull']),
  row(['PUT'], MANIFEST, 'manifest', ['push']),
  row(['DELETE'], MANIFEST, 'manifest', ['delete']),
  row(READ, TAGS, 'tags', ['pull']),
  row(READ, REFERRERS, 'referrers', ['pull']),
];

export function routeAccess(method: string, path: string): RouteAccess {
  if (READ.includes(method) && BASE.test(path)) return { kind: 'base' };
  if (READ.includes(method) && CATALOG.test(path)) return { kind: 'catalog' };
  for (const { methods, pattern, resource, needs, uploadStart } of ROUTES) {
    if (!methods.includes(method)) continue;
    const m = pattern.exec(path);
    if (!m) continue;
    return { kind: 'repository', name: decodeCapture(m[1]!), resource, actions: needs, uploadStart };
  }
  // A path of the API asked with a method it does not take: the router answers 405 with what it
  // takes (`Allow`), to whoever may see the repository; the rest are refused as before it.
  for (const { pattern, resource } of ROUTES) {
    const m = pattern.exec(path);
    if (m) return { kind: 'repository', name: decodeCapture(m[1]!), resource, actions: ['pull'], uploadStart: false };
  }
  if (BASE.test(path) || CATALOG.test(path)) return { kind: 'base' };
  return { kind: 'unknown' };
}
