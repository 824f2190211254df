import { Router } from '@koa/router';
import type { LocalRegistry } from '@wharf/registry-core';
import type { RequestListener } from 'node:http';
import Koa from 'koa';
import type { Logger } from 'pino';
import { refuseUnknownExpectation } from './http/expect-continue.js';
import { ociErrors } from './http/oci-errors.js';
import { ClientAddresses, stampClient } from './http/client-address.js';
import { framingRefusal, refuseFraming } from './http/framing-guard.js';
import { inPipelinedOrder } from './http/pipelined-order.js';
import { readOnlyMethods } from './http/read-only-allow.js';
import { requestLog, trackRequest, type RequestObserver } from './http/request-log.js';
import { requestTimeout } from './http/request-timeout.js';
import { serverSideWait } from './http/server-wait.js';
import { registerHealth, type HealthDeps } from './routes/health.js';
import { registerMetrics } from './routes/metrics.js';
import type { MetricsConfig } from './metrics/metrics-config.js';
import type { WharfMetrics } from './metrics/metrics.js';
import type { RepositoryResolver } from './repositories.js';
import { authMiddleware, readAccess } from './auth/auth-middleware.js';
import { withManifestFastPath } from './http/manifest-fast-path.js';
import type { AuthService } from './auth/auth-service.js';
import { catalogFilter } from './auth/catalog-visibility.js';
import { registerTokenEndpoint } from './routes/token.js';
import { registerAdmin, type AdminDeps } from './routes/admin.js';
import { registerBase } from './routes/base.js';
import { registerBlobs } from './routes/blobs.js';
import { registerCatalog } from './routes/catalog.js';
import { registerManifests } from './routes/manifests.js';
import { registerReferrers } from './routes/referrers.js';
import { registerTags } from './routes/tags.js';
import { registerUploads } from './routes/uploads.js';
import { localWritesOnly } from './http/local-writes.js';

export interface AppOptions {
  readonly local: LocalRegistry;
  /** Decides which repository serves a name: the one place that knows local from pull-through. */
  readonly resolver: RepositoryResolver;
  readonly logger: Logger;
  readonly admin?: AdminDeps;
  /** Accounts and token auth; undefined when `[auth] enabled = false`. */
  readonly auth?: AuthService;
  /** Without auth: writes only from this machine's own clients, not forwarded ones (no `allow_anonymous_push`). */
  readonly localWritesOnly?: boolean;
  /** Operations: /health, /ready, /metrics, request metrics, request_timeout, shutdown. */
  readonly ops?: OpsOptions;
  /** `trusted_proxies`: peers whose X-Forwarded-For names the client (http/client-address.ts). */
  readonly trustedProxies?: readonly string[];
  /** `automatic_mount`: `?mount=` without `from` looks for a source repository. */
  readonly automaticMount?: boolean;
}

export interface OpsOptions {
  readonly health: HealthDeps;
  /** /metrics is served when given (`[metrics] enabled`). */
  readonly metrics?: { readonly metrics: WharfMetrics; readonly config: MetricsConfig };
  /** Sees every request start and finish (metrics). */
  readonly observer?: RequestObserver;
  /** request_timeout (ms; 0: none). */
  readonly requestTimeout?: number;
}

export function createApp(options: AppOptions): Koa {
  const app = new Koa({ proxy: false });
  app.silent = true;
  const deps = { resolver: options.resolver };

  const v2 = new Router();
  // Order matters where patterns overlap: uploads before blobs, the catalog before repository routes.
  registerBase(v2);
  registerCatalog(v2, options.local, options.auth ? catalogFilter(options.auth) : undefined);
  registerUploads(v2, deps, { automaticMount: options.automaticMount ?? false });
  registerBlobs(v2, deps);
  registerManifests(v2, deps);
  registerTags(v2, deps);
  registerReferrers(v2, deps);

  app.use(requestLog(options.logger, options.ops?.observer));
  app.use(serverSideWait());
  app.use(async (ctx, next) => {
    ctx.set('Docker-Distribution-API-Version', 'registry/2.0');
    // While shutting down, every response closes its connection so that the client reconnects elsewhere.
    if (options.ops?.health.draining()) ctx.set('Connection', 'close');
    await next();
  });
  app.use(ociErrors(options.logger));
  app.use(refuseUnknownExpectation);
  if (options.ops) {
    if (options.ops.requestTimeout) app.use(requestTimeout(options.ops.requestTimeout));
    // Before auth: probes and scrapers carry no registry credentials (/metrics checks its own).
    const ops = new Router();
    registerHealth(ops, options.ops.health);
    if (options.ops.metrics) registerMetrics(ops, options.ops.metrics.metrics, options.ops.metrics.config);
    app.use(ops.routes());
  }
  if (options.auth) {
    // /auth/token needs no credentials; everything under /v2 and /admin passes the auth middleware.
    const token = new Router();
    registerTokenEndpoint(token, options.auth);
    app.use(token.routes());
    app.use(authMiddleware({ auth: options.auth, resolver: options.resolver }));
  } else if (options.localWritesOnly) {
    app.use(localWritesOnly);
  }
  if (options.admin) {
    // Case-sensitive: /ADMIN/import is not /admin/import.
    const admin = new Router({ sensitive: true });
    registerAdmin(admin, options.admin);
    app.use(admin.routes());
  }
  app.use(readOnlyMethods(options.resolver));
  app.use(v2.routes());
  app.use(v2.allowedMethods({ throw: true }));
  return app;
}

/**
 * The request listener of every Wharf listener: manifest reads the registry answers from its own
 * storage take the fast path (http/manifest-fast-path.ts), everything else the Koa app.
 */
export function createHandler(options: AppOptions): RequestListener {
  const app = createApp(options);
  const draining = options.ops?.health.draining;
  const addresses = new ClientAddresses(options.trustedProxies);
  const tracking = { logger: options.logger, observer: options.ops?.observer };
  const listener = withManifestFastPath(
    {
      resolver: options.resolver,
      ...(options.auth ? { access: readAccess(options.auth) } : {}),
      ...(!options.auth && options.localWritesOnly ? { localWritesOnly: true } : {}),
      tracking,
      ...(draining ? { draining } : {}),
    },
    app.callback(),
  );
  return inPipelinedOrder((req, res) => {
    stampClient(req, addresses);
    const refusal = framingRefusal(req);
    if (refusal) {
      // Logged and counted as every other answer is.
      const reqId = trackRequest(req, res, (req.url ?? '/').split('?')[0]!, tracking, { error: () => ({ code: 'UNSUPPORTED', reason: refusal.message }) });
      return refuseFraming(res, refusal, reqId);
    }
    listener(req, res);
  });
}
