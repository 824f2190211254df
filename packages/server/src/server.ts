import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import {
  FsBlobStore,
  FsUploadSessions,
  LocalRegistry,
  SqliteMetadataStore,
  openDatabase,
  type SqliteDatabase,
} from '@wharf/registry-core';
import { BlobFills, CacheEviction, CacheIndex, PullThroughRepository } from '@wharf/proxy';
import { pino, type Logger } from 'pino';
import { createApp } from './app.js';
import { ConfigError, type WharfConfig } from './config.js';
import { findUpstream } from './proxy-config.js';
import { ProxyResolver } from './proxy-resolver.js';
import { LocalResolver, type RepositoryResolver } from './repositories.js';
import { buildUpstream } from './upstreams.js';
import { AuthService, type AuthTuning } from './auth/auth-service.js';

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
  /** Accounts and tokens (undefined when auth is disabled). */
  readonly auth?: AuthService;
  close(): Promise<void>;
}

export interface StartOptions {
  readonly logger?: Logger;
  /** Internal knobs of auth for tests (bcrypt cost, login limits, where the admin password goes). */
  readonly auth?: AuthTuning;
}

/**
 * The three storage folders must share one filesystem: blobs are written to the temporary folder and
 * renamed into place, and only a same-filesystem rename is atomic.
 */
async function prepareStorage(config: WharfConfig): Promise<void> {
  const folders = {
    registry_storage: config.registryStorage,
    temporary_registry_storage: config.temporaryRegistryStorage,
    proxy_storage: config.proxyStorage,
  };
  const devices = new Map<string, number>();
  for (const [key, folder] of Object.entries(folders)) {
    try {
      await mkdir(folder, { recursive: true });
      devices.set(key, (await stat(folder)).dev);
    } catch (err) {
      throw new ConfigError(`"${key}" (${folder}) is not a usable folder: ${(err as Error).message}`);
    }
  }
  const tempDevice = devices.get('temporary_registry_storage');
  for (const key of ['registry_storage', 'proxy_storage']) {
    if (devices.get(key) !== tempDevice) {
      throw new ConfigError(
        `"temporary_registry_storage" (${config.temporaryRegistryStorage}) must be on the same filesystem as "${key}" (${folders[key as keyof typeof folders]}), so that finished blobs are moved into place atomically`,
      );
    }
  }
  // Leftovers of writes interrupted by a crash: no ingest is running before we start.
  for (const entry of await readdir(config.temporaryRegistryStorage)) {
    if (entry.startsWith('ingest-') || entry.startsWith('fill-')) await rm(join(config.temporaryRegistryStorage, entry), { force: true });
  }
}

export async function startServer(config: WharfConfig, options: StartOptions = {}): Promise<RunningServer> {
  const logger = options.logger ?? pino({ level: config.logLevel });
  await prepareStorage(config);
  const db = openDatabase(config.database);
  const uploads = new FsUploadSessions(config.temporaryRegistryStorage);
  await uploads.init();
  const local = new LocalRegistry(
    new FsBlobStore(config.registryStorage, config.temporaryRegistryStorage),
    new SqliteMetadataStore(db),
    uploads,
  );
  const proxyBlobs = new FsBlobStore(config.proxyStorage, config.temporaryRegistryStorage);
  const fills = new BlobFills({ store: proxyBlobs, tempRoot: config.temporaryRegistryStorage });
  const proxies = new Map<string, PullThroughRepository>();
  const eviction = new CacheEviction(db, proxyBlobs, fills);
  let resolver: RepositoryResolver = new LocalResolver(local);
  if (config.proxy.enabled) {
    const index = new CacheIndex(db);
    const proxyLog = logger.child({ component: 'proxy' });
    for (const u of config.proxy.upstreams) {
      const repository: PullThroughRepository = new PullThroughRepository(
        buildUpstream(u, config.proxy, (remaining) => {
          repository.rateLimitRemaining = remaining;
        }),
        index,
        proxyBlobs,
        fills,
        { manifestTtl: config.proxy.manifestTtl, absentTtl: config.proxy.absentTtl, rateLimitFloor: config.proxy.rateLimitFloor },
        proxyLog,
      );
      proxies.set(u.key, repository);
    }
    resolver = new ProxyResolver(local, config.proxy, proxies, { loopbackOnly: !config.auth.enabled });
  }
  const auth = config.auth.enabled
    ? await AuthService.create({ config, db, repositoryExists: (name) => local.repositoryExists(name), logger, ...(options.auth ? { tuning: options.auth } : {}) })
    : undefined;
  const app = createApp({
    ...(auth ? { auth } : {}),
    local,
    resolver,
    logger,
    admin: { eviction, resolveUpstream: (name) => findUpstream(config.proxy, name), authEnabled: config.auth.enabled },
  });

  const server = createServer(app.callback());
  // Blob transfers are limited by idle time, never by total time (a multi-GB layer takes a while).
  server.requestTimeout = 0;
  server.headersTimeout = 60_000;
  server.keepAliveTimeout = 65_000;
  server.timeout = 300_000;

  const expireUploads = async () => {
    try {
      const removed = await uploads.expire(new Date(Date.now() - config.uploadMaxAge));
      if (removed > 0) logger.info({ removed }, 'abandoned upload sessions removed');
    } catch (err) {
      logger.warn({ err }, 'upload expiry failed');
    }
  };
  await expireUploads();
  const expiry = setInterval(expireUploads, Math.max(60_000, Math.min(config.uploadMaxAge / 4, 3_600_000)));
  expiry.unref();
  const sweep = async () => {
    try {
      const report = await eviction.sweep({ cacheTtl: config.proxy.cacheTtl, maxSize: config.proxy.maxSize });
      if (report.blobs + report.manifests > 0) logger.info(report, 'proxy cache evicted');
    } catch (err) {
      logger.warn({ err }, 'proxy cache eviction failed');
    }
  };
  const sweeper = config.proxy.enabled ? setInterval(sweep, Math.max(1000, config.proxy.evictionInterval)) : undefined;
  sweeper?.unref();

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `http://${host === '0.0.0.0' || host === '[::]' ? '127.0.0.1' : host}:${address.port}`;
  logger.info({ listen: `${host}:${address.port}`, registryStorage: config.registryStorage, database: config.database }, 'wharf listening');

  let closed: Promise<void> | undefined;
  return {
    url,
    port: address.port,
    server,
    local,
    db,
    proxies,
    fills,
    eviction,
    ...(auth ? { auth } : {}),
    close() {
      closed ??= (async () => {
        clearInterval(expiry);
        if (sweeper) clearInterval(sweeper);
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeIdleConnections();
          setTimeout(() => server.closeAllConnections(), 5_000).unref();
        });
        db.close();
      })();
      return closed;
    },
  };
}
