import { decodeCapture } from '../http/path-segments.js';
import type { Action } from './permissions.js';

/**
 * What a /v2 request needs, from its method and path. The patterns and their order are those of the
 * route modules (routes/*.ts), so the name checked here is the name the route serves; a request this
 * table does not know needs an administrator (deny by default: a new route must be added here).
 */
export type RouteAccess =
  | { readonly kind: 'base' }
  | { readonly kind: 'catalog' }
  | { readonly kind: 'repository'; readonly name: string; readonly actions: readonly Action[]; readonly uploadStart: boolean }
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

/**
 * In registration order (app.ts): the first row whose method and pattern match is the route that
 * answers. Every upload step needs push, reads of a session included: a session is part of a push.
 */
const ROUTES: readonly (readonly [readonly string[], RegExp, readonly Action[] | 'base' | 'catalog', boolean?])[] = [
  [READ, BASE, 'base'],
  [READ, CATALOG, 'catalog'],
  [['POST'], UPLOAD_START, ['push'], true],
  [READ, UPLOAD_SESSION, ['push']],
  [['PATCH'], UPLOAD_SESSION, ['push']],
  [['PUT'], UPLOAD_SESSION, ['push']],
  [['DELETE'], UPLOAD_SESSION, ['push']],
  [READ, BLOB, ['pull']],
  [['DELETE'], BLOB, ['delete']],
  [READ, MANIFEST, ['pull']],
  [['PUT'], MANIFEST, ['push']],
  [['DELETE'], MANIFEST, ['delete']],
  [READ, TAGS, ['pull']],
  [READ, REFERRERS, ['pull']],
];


export function routeAccess(method: string, path: string): RouteAccess {
  for (const [methods, pattern, needs, uploadStart] of ROUTES) {
    if (!methods.includes(method)) continue;
    const m = pattern.exec(path);
    if (!m) continue;
    if (needs === 'base') return { kind: 'base' };
    if (needs === 'catalog') return { kind: 'catalog' };
    return { kind: 'repository', name: decodeCapture(m[1]!), actions: needs, uploadStart: uploadStart === true };
  }
  return { kind: 'unknown' };
}
