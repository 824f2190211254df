import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { StoredManifest } from '@wharf/registry-core';
import type { ReadAccess } from '../auth/auth-middleware.js';
import { requestInfo, type RepositoryResolver, type ResolvedRepository } from '../repositories.js';
import { clientOf } from './client-address.js';
import { arrivedAt } from './pipelined-order.js';
import { notModified } from './conditional.js';
import { wantsListImage } from './legacy-accept.js';
import { decodeCapture } from './path-segments.js';
import { trackRequest, type RequestTrackingDeps } from './request-log.js';
import { warningHeader } from './warning-header.js';

const MANIFEST = /^\/v2\/(.+)\/manifests\/([^/]+)$/;

export interface ManifestFastPathDeps {
  readonly resolver: RepositoryResolver;
  /**
   * With auth: whether the request may pull the name as resolved, and push it (undefined: it may not
   * pull, or the auth middleware must answer it; auth/auth-middleware.ts readAccess).
   */
  readonly access?: (authorization: string | undefined, ip: string | undefined, name: string, resolved: ResolvedRepository) => Promise<ReadAccess | undefined>;
  readonly tracking: RequestTrackingDeps;
  /** Without auth: only this machine's clients may push (http/local-writes.ts), not a request forwarded to it. */
  readonly localWritesOnly?: boolean;
  /** While shutting down, responses close their connection (as app.ts does for every other request). */
  readonly draining?: () => boolean;
}

/**
 * GET and HEAD of a manifest the registry can answer from its own storage, without Koa. A CI fleet
 * with ImagePullPolicy=Always asks for the same tags all day, and Koa's per-request context, middleware
 * chain and router cost more than the answer itself (measured with wrk on a cached tag: 8,800 req/s
 * through Koa, 13,000-16,000 here).
 *
 * Only successes are answered here: the request is handed to `next` (the Koa app) whenever anything
 * else could be the answer: another method or path, a name the resolver refuses, a request auth does
 * not plainly allow (Basic credentials included, so failed-login limits count once), a manifest that
 * is absent or needs the upstream. No step before that hand-over asks an upstream or changes state, so
 * the full path decides as if this one did not exist. The response carries what the Koa route sends
 * (routes/manifests.ts), and the request is logged and counted the same way.
 */
export function withManifestFastPath(deps: ManifestFastPathDeps, next: RequestListener): RequestListener {
  return function handle(req: IncomingMessage, res: ServerResponse): void {
    const method = req.method;
    const url = req.url ?? '';
    if ((method !== 'GET' && method !== 'HEAD') || !url.startsWith('/v2/')) {
      next(req, res);
      return;
    }
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const m = MANIFEST.exec(path);
    if (!m) {
      next(req, res);
      return;
    }
    const started = arrivedAt(req) ?? performance.now();
    lookUp(deps, req, decodeCapture(m[1]!), decodeCapture(m[2]!), q < 0 ? '' : url.slice(q + 1)).then(
      (found) => {
        if (!found) return next(req, res);
        try {
          send(deps, req, res, path, started, found);
        } catch (err) {
          // Nothing may escape this callback: an unhandled rejection ends the process.
          deps.tracking.logger.error({ err }, 'manifest answer failed; connection cut');
          res.destroy();
        }
      },
      // An unexpected failure (the database): the full path meets it too and answers it properly.
      () => next(req, res),
    );
  };
}

/** A manifest the fast path answers, and where from. */
interface Found {
  /** The repository name as the client wrote it (for the log line and metrics). */
  readonly name: string;
  readonly target: ResolvedRepository;
  readonly manifest: StoredManifest;
}

async function lookUp(
  deps: ManifestFastPathDeps,
  req: IncomingMessage,
  name: string,
  reference: string,
  query: string,
): Promise<Found | undefined> {
  const client = clientOf(req);
  let target: ResolvedRepository;
  try {
    target = await deps.resolver.resolve(name, new URLSearchParams(query), requestInfo(req, 'manifest'));
  } catch {
    return undefined;
  }
  // Without auth, anyone may push, or with localWritesOnly this machine's clients alone.
  const access = deps.access ? await deps.access(req.headers.authorization || undefined, client.address, name, target) : { mayPush: !deps.localWritesOnly || client.local };
  if (!access) return undefined;
  // A push's HEAD by digest starts an untagged manifest's gc grace over, as the full path's does.
  const manifest = await target.reader.peekManifest(target.repo, reference, { renew: req.method === 'HEAD' && access.mayPush });
  // A list asked for as its image (http/legacy-accept.ts) takes the full path.
  if (manifest && wantsListImage(req.headers.accept, manifest.mediaType, reference)) return undefined;
  return manifest && { name, target, manifest };
}

function send(
  deps: ManifestFastPathDeps,
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  started: number,
  { name, target, manifest }: Found,
): void {
  const reqId = trackRequest(req, res, path, deps.tracking, { started, route: { route: 'manifest', repository: name } });
  const etag = `"${manifest.digest}"`;
  // One flat header list for writeHead: no per-header setHeader bookkeeping.
  const headers: (string | number)[] = [
    'X-Request-Id', reqId,
    'Docker-Distribution-API-Version', 'registry/2.0',
    'Content-Type', manifest.mediaType,
    'Docker-Content-Digest', manifest.digest,
    'ETag', etag,
    'Content-Length', manifest.bytes.length,
  ];
  if (target.namespace) headers.push('OCI-Namespace', target.namespace);
  if (manifest.warning) headers.push('Warning', warningHeader(manifest.warning));
  if (deps.draining?.()) headers.push('Connection', 'close');
  const unchanged = notModified(req.headers['if-none-match'], etag);
  res.writeHead(unchanged ? 304 : 200, headers as string[]);
  res.end(req.method === 'HEAD' || unchanged ? undefined : manifest.bytes);
}
