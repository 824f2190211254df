import { randomUUID } from 'node:crypto';
import { openConfiguredDatabase } from './configured-database.js';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import {
  flushDeferredWrites,
  FsBlobStore,
  FsUploadSessions,
  LocalRegistry,
  SqliteMetadataStore,
  removeIngestLeftovers,
  sqliteDriverVersion,
  type SqliteDatabase,
} from '@wharf/registry-core';
import { anyOwnerLive, BlobFills, CacheEviction, CacheIndex, DEFAULT_POLICY, PullThroughRepository } from '@wharf/proxy';
import type { Logger } from 'pino';
import { createHandler } from './app.js';
import { createLogger, settleLog } from './logger.js';
import { capConnections, connectionLimit } from './http/connection-cap.js';
import { createRedirectServer, createWharfServer, updateCertificate } from './http/listeners.js';
import { RequestsInFlight } from './http/request-log.js';
import { drainServers } from './lifecycle.js';
import { WharfMetrics } from './metrics/metrics.js';
import { prepareTls } from './tls/tls-setup.js';
import { ConfigError, type WharfConfig } from './config.js';
import { findUpstream } from './proxy-config.js';
import { ProxyResolver } from './proxy-resolver.js';
import { LocalResolver, type RepositoryResolver } from './repositories.js';
import { buildUpstream } from './upstreams.js';
import type { AuthService, AuthTuning } from './auth/auth-service.js';
import { StorageMaintenance } from './storage-maintenance.js';
import { checkStorage } from './storage-check.js';
import { CacheSweeper } from './cache-sweeper.js';

export interface RunningServer {
  readonly url: string;
  readonly port: number;
  readonly server: Server;
  readonly local: LocalRegistry;
  readonly db: SqliteDatabase;
  /** Pull-through repositories by upstream key (empty when the proxy is disabled). */
  readonly proxies: ReadonlyMap<string, PullThroughRepository>;
  readonly fills: BlobFills;
  readonly eviction: CacheEviction;
  /** Garbage collection (also scheduled by [gc] interval), fsck, import and export of this registry. */
  readonly storage: StorageMaintenance;
  /** Accounts and tokens (undefined when auth is disabled). */
  readonly auth?: AuthService;
  /** `https` when [tls] is on; `url` says it too. */
  readonly protocol: 'http' | 'https';
  /** Where the server logs. */
  readonly logger: Logger;
  /** The Prometheus metrics (served on /metrics when [metrics] enabled). */
  readonly metrics: WharfMetrics;
  /** The plain-HTTP listener of [tls] redirect_http. */
  readonly redirectUrl?: string;
  /** The self-signed CA clients must trust ([tls] self_signed). */
  readonly caFile?: string;
  /**
   * Graceful stop: stop accepting, let requests and blob fills in flight finish for up to `timeoutMs`
   * (default: shutdown_timeout), cut the rest, close the database. Safe to call twice.
   */
  close(options?: { readonly timeoutMs?: number }): Promise<void>;
}

export interface StartOptions {
  readonly logger?: Logger;
  /** Internal knobs of auth for tests (bcrypt cost, login limits, where the admin password goes). */
  readonly auth?: AuthTuning;
}

/**
 * At shutdown, how long log lines still buffered may take to reach standard output before they are
 * dropped (a log reader that stopped reading must not keep a stopping server alive).
 */
const LOG_SETTLE_MS = 5_000;

/**
 * The storage folders made and checked (storage-check.ts), and what crashes left in the temporary one
 * cleared.
 */
async function prepareStorage(config: WharfConfig, logger: Logger): Promise<void> {
  await checkStorage(config, true);
  // Leftovers of pushes and imports a crash interrupted. With no other server on this storage (none
  // holds an owner lock in the temporary folder: proxy/fill-owner.ts), none is being received: all go
  // now, before the database opens (a crash on a full disk may have left the file that fills it).
  // With another one running, only those older than an abandoned upload (see staleIngestAge).
  const temp = config.temporaryRegistryStorage;
  const alone = !anyOwnerLive(temp, await readdir(temp));
  // A file that cannot be removed (an immutable one, a permission) is no reason not to start.
  const removed = await removeIngestLeftovers(temp, alone ? undefined : new Date(Date.now() - staleIngestAge(config))).catch((err: unknown) => {
    logger.warn({ err }, 'removing the temporary files of interrupted pushes and imports failed');
    return 0;
  });
  if (removed > 0) logger.info({ removed, alone }, 'temporary files of interrupted pushes and imports removed');
}

/**
 * A push's or an import's temp file not written to for this long is a crash's leftover, whatever
 * process wrote it: as long as an abandoned upload session is kept, and an hour at least. Not less:
 * an import leaves the entries it has read untouched until the whole archive is in (a slow archive
 * takes long), and with `idle_timeout = 0` a push's client may be silent for as long as it likes.
 */
function staleIngestAge(config: Pick<WharfConfig, 'uploadMaxAge'>): number {
  return Math.max(MIN_STALE_INGEST_MS, config.uploadMaxAge);
}
const MIN_STALE_INGEST_MS = 3_600_000;

export async function startServer(config: WharfConfig, options: StartOptions = {}): Promise<RunningServer> {
  const logger = options.logger ?? createLogger({ level: config.logLevel, format: config.logFormat });
  for (const warning of config.warnings ?? []) logger.warn(warning);
  await prepareStorage(config, logger);
  // Certificates before the database: a bad [tls] pair stops the start with nothing opened.
  const tls = await prepareTls(config.tls, config.listen.port, logger);
  const db = openConfiguredDatabase(config.database);
  const uploads = new FsUploadSessions(config.temporaryRegistryStorage);
  await uploads.init();
  const metadata = new SqliteMetadataStore(db);
  const registryBlobs = new FsBlobStore(config.registryStorage, config.temporaryRegistryStorage);
  // Leases keep what a push is placing from a concurrent garbage collection (gc/garbage-collector.ts).
  const local = new LocalRegistry(registryBlobs, metadata, uploads, metadata.lifecycle());
  const proxyBlobs = new FsBlobStore(config.proxyStorage, config.temporaryRegistryStorage);
  // Each blob a fill stores counts toward max_size (the sweeper below, once it exists: fills restored
  // just now may end before).
  let cached = (_size: number): void => undefined;
  const fills = new BlobFills({ store: proxyBlobs, tempRoot: config.temporaryRegistryStorage, directIo: config.proxy.directIo, onStored: (blob) => cached(blob.size) });
  const restored = await fills.restore();
  if (restored > 0) logger.info({ restored }, 'blob downloads cut short before the restart go on from their bytes');
  const proxies = new Map<string, PullThroughRepository>();
  const metrics = new WharfMetrics({ db, temporaryRegistryStorage: config.temporaryRegistryStorage, fills, proxies });
  const eviction = new CacheEviction(db, proxyBlobs, fills, metrics.proxy);
  const storage = new StorageMaintenance({ config, db, metadata, registryBlobs, proxyBlobs, local, eviction, logger: logger.child({ component: 'gc' }) });
  let resolver: RepositoryResolver = new LocalResolver(local);
  if (config.proxy.enabled) {
    const index = new CacheIndex(db);
    const proxyLog = logger.child({ component: 'proxy' });
    for (const u of config.proxy.upstreams) {
      const policy = u.policy ?? config.proxy;
      const repository: PullThroughRepository = new PullThroughRepository(
        buildUpstream(
          u,
          config.proxy,
          (remaining) => repository.noteRateLimit(remaining),
          (status) => metrics.upstreamRequest(u.key, status),
          proxyLog,
        ),
        index,
        proxyBlobs,
        fills,
        {
          manifestTtl: policy.manifestTtl,
          absentTtl: policy.absentTtl,
          rateLimitFloor: policy.rateLimitFloor,
          outageBackoff: policy.outageBackoff,
          // Never longer than an ordinary request's wait for its first byte.
          outageProbeTimeout: Math.min(DEFAULT_POLICY.outageProbeTimeout!, policy.firstByteTimeout),
        },
        proxyLog,
        metrics.proxy,
      );
      proxies.set(u.key, repository);
    }
    // What Wharf goes by besides what a request shows: its public address behind a proxy, its certificate's names.
    const ownHosts = config.auth.realm ? [new URL(config.auth.realm).host] : [];
    resolver = new ProxyResolver(local, config.proxy, proxies, { loopbackOnly: !config.auth.enabled, ownHosts, ownNames: config.tls.hosts });
  }
  let auth: AuthService | undefined;
  try {
    // Loaded only when auth is on: it brings bcryptjs and jose (about 3 MiB of RSS).
    auth = config.auth.enabled
      ? await (await import('./auth/auth-service.js')).AuthService.create({ config, db, isLocalRepository: (name) => local.repositoryHasManifests(name), logger, ...(options.auth ? { tuning: options.auth } : {}) })
      : undefined;
  } catch (err) {
    // A first start refused (WHARF_ADMIN_PASSWORD too short, say) leaves nothing open behind it.
    db.close();
    // The kept bytes restore() took back, noted again for the next start.
    await fills.close();
    throw err;
  }
  let draining = false;
  // Counted so that a shutdown can wait for the log lines of the requests it cuts.
  const requests = new RequestsInFlight(metrics);
  const handler = createHandler({
    ...(auth ? { auth } : {}),
    localWritesOnly: !config.auth.enabled && !config.auth.allowAnonymousPush,
    trustedProxies: config.trustedProxies,
    automaticMount: config.automaticMount,
    local,
    resolver,
    logger,
    admin: { eviction, resolveUpstream: (name) => findUpstream(config.proxy, name), authEnabled: config.auth.enabled, storage },
    ops: {
      health: { db, temporaryRegistryStorage: config.temporaryRegistryStorage, ...(config.database === ':memory:' ? {} : { databaseFolder: dirname(config.database) }), draining: () => draining, logger: logger.child({ component: 'health' }) },
      ...(config.metrics.enabled ? { metrics: { metrics, config: config.metrics } } : {}),
      observer: requests,
      requestTimeout: config.requestTimeout,
    },
  });

  // HTTPS on `listen` with [tls]; header, idle and keep-alive timeouts (http/listeners.ts).
  const timeouts = { readHeaderTimeout: config.readHeaderTimeout, idleTimeout: config.idleTimeout };
  const server = createWharfServer(handler, timeouts, tls?.material);
  const maxConnections = connectionLimit(config.maxConnections);
  if (maxConnections < config.maxConnections) logger.warn({ maxConnections, configured: config.maxConnections }, 'max_connections lowered to fit the limit of open files');
  let lastRefusal = 0;
  const refused = (open: number): void => {
    // One line a minute: a flood of refusals would otherwise flood the log too.
    if (Date.now() - lastRefusal < 60_000) return;
    lastRefusal = Date.now();
    logger.warn({ open, maxConnections }, 'new connections refused: max_connections are open and none is idle');
  };
  capConnections(server, maxConnections, refused);
  const tlsRefresh = tls
    ? setInterval(() => {
        tls.refresh().then(
          (next) => {
            if (next) updateCertificate(server, next);
          },
          (err: unknown) => logger.warn({ err }, 'TLS certificate check failed'),
        );
      }, 12 * 3_600_000)
    : undefined;
  tlsRefresh?.unref();

  const expireUploads = async () => {
    try {
      const removed = await uploads.expire(new Date(Date.now() - config.uploadMaxAge));
      if (removed > 0) logger.info({ removed }, 'abandoned upload sessions removed');
      // What a crash of another server on this storage left (a start alone removes them all).
      const leftovers = await removeIngestLeftovers(config.temporaryRegistryStorage, new Date(Date.now() - staleIngestAge(config)));
      if (leftovers > 0) logger.info({ removed: leftovers }, 'temporary files of interrupted pushes and imports removed');
    } catch (err) {
      logger.warn({ err }, 'upload expiry failed');
    }
  };
  // Not awaited: thousands of expired sessions took 44 s (about 2 ms each) before the port opened (the
  // abuse audit). Serving meanwhile is safe: a session is looked at and removed under its lock.
  // (A close does not wait for it: a process exiting cuts it between two sessions, as a crash would.)
  const firstExpiry = expireUploads();
  const expiry = setInterval(expireUploads, Math.max(60_000, Math.min(config.uploadMaxAge / 4, 3_600_000)));
  expiry.unref();
  const sweeper = config.proxy.enabled ? new CacheSweeper(eviction, { cacheTtl: config.proxy.cacheTtl, maxSize: config.proxy.maxSize }, config.proxy.evictionInterval, logger) : undefined;
  if (sweeper) cached = (size) => sweeper.stored(size);

  const listen = (s: Server, at: { host: string; port: number }) =>
    new Promise<AddressInfo>((resolve, reject) => {
      s.once('error', reject);
      s.listen(at.port, at.host, () => {
        s.off('error', reject);
        resolve(s.address() as AddressInfo);
      });
    });
  const hostOf = (a: AddressInfo) => {
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return host === '0.0.0.0' || host === '[::]' ? '127.0.0.1' : host;
  };
  /** A start that cannot listen leaves nothing running, and the kept bytes noted for the next start. */
  const undoStart = async (): Promise<void> => {
    clearInterval(expiry);
    await firstExpiry;
    await sweeper?.stop();
    clearInterval(tlsRefresh);
    db.close();
    await fills.close();
  };
  let address: AddressInfo;
  try {
    address = await listen(server, config.listen);
  } catch (err) {
    await undoStart();
    const code = (err as NodeJS.ErrnoException).code;
    // ENOTFOUND: a host name that does not resolve; EINVAL: an address no interface can take (fe80::1
    // without its zone).
    if (code === 'EADDRINUSE' || code === 'EACCES' || code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EINVAL' || code === 'EAFNOSUPPORT') {
      // Port 5000 is often taken (macOS AirPlay): say which setting moves it, not a stack trace.
      throw new ConfigError(`cannot listen on ${config.listen.host}:${config.listen.port} (${code}): set "listen" in the configuration, or WHARF_LISTEN=127.0.0.1:5001`);
    }
    throw err;
  }
  const protocol = tls ? 'https' : 'http';
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `${protocol}://${hostOf(address)}:${address.port}`;
  let redirect: Server | undefined;
  let redirectUrl: string | undefined;
  if (config.tls.redirectHttp) {
    redirect = createRedirectServer(() => address.port, timeouts);
    // Its own share: a flood of plain-HTTP connections must not take the descriptors HTTPS needs.
    capConnections(redirect, Math.max(1, Math.floor(maxConnections / 8)), refused);
    try {
      const at = await listen(redirect, config.tls.redirectHttp);
      redirectUrl = `http://${hostOf(at)}:${at.port}`;
    } catch (err) {
      server.close();
      await undoStart();
      throw new ConfigError(`"tls.redirect_http": cannot listen on ${config.tls.redirectHttp.host}:${config.tls.redirectHttp.port}: ${(err as Error).message}`);
    }
  }
  logger.info(
    {
      listen: `${host}:${address.port}`,
      protocol,
      ...(redirectUrl ? { redirectHttp: redirectUrl } : {}),
      registryStorage: config.registryStorage,
      database: config.database,
      node: process.version,
      sqlite: `${sqliteDriverVersion()}, SQLite ${String(db.prepare('SELECT sqlite_version()').pluck().get())}`,
    },
    'wharf listening',
  );

  storage.schedule();
  let closed: Promise<void> | undefined;
  return {
    url,
    logger,
    port: address.port,
    server,
    local,
    db,
    proxies,
    fills,
    eviction,
    storage,
    ...(auth ? { auth } : {}),
    protocol,
    metrics,
    ...(redirectUrl ? { redirectUrl } : {}),
    ...(tls?.caFile ? { caFile: tls.caFile } : {}),
    close(closeOptions = {}) {
      closed ??= (async () => {
        draining = true;
        clearInterval(expiry);
        const sweeping = sweeper?.stop();
        clearInterval(tlsRefresh);
        const timeoutMs = closeOptions.timeoutMs ?? config.shutdownTimeout;
        const report = await drainServers({
          servers: redirect ? [server, redirect] : [server],
          background: () => fills.settled(),
          abandonBackground: () => fills.abandon(),
          requestsDone: () => requests.idle(),
          timeoutMs,
          logger,
        });
        // The bytes kept of downloads cut short (those abandoned at the deadline too), for the next start.
        await fills.close();
        await sweeping;
        await storage.stop();
        if (!flushDeferredWrites(db, { waitMs: 2_000 })) logger.warn('pull and access times of the last seconds not written: the database stayed locked by another process');
        db.close();
        logger.info({ cut: report.cut, fillsAbandoned: report.backgroundAbandoned }, 'wharf stopped');
        await settleLog(logger, LOG_SETTLE_MS);
      })();
      return closed;
    },
  };
}
