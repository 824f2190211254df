import { mkdir } from 'node:fs/promises';
import { openConfiguredDatabase } from './configured-database.js';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { CacheEviction, FillOwner, proxyBlobCatalog, type EvictionReport } from '@wharf/proxy';
import {
  flushDeferredWrites,
  FsBlobStore,
  FsUploadSessions,
  GarbageCollector,
  LocalRegistry,
  SqliteMetadataStore,
  exportArchive,
  fsck,
  importArchive,
  registryCatalog,
  type ExportPlan,
  type FsckOptions,
  type FsckReport,
  type GcReport,
  type ImportOptions,
  type ImportResult,
  type SqliteDatabase,
} from '@wharf/registry-core';
import type { Logger } from 'pino';
import type { WharfConfig } from './config.js';

export interface StorageDeps {
  readonly config: WharfConfig;
  readonly db: SqliteDatabase;
  /** The store the registry reads through (its manifest cache must see what gc deletes). */
  readonly metadata: SqliteMetadataStore;
  readonly registryBlobs: FsBlobStore;
  readonly proxyBlobs: FsBlobStore;
  readonly local: LocalRegistry;
  readonly eviction: CacheEviction;
  readonly logger?: Logger;
  /** GarbageCollectorDeps.pauseMs: set where the database is shared with a running server (the CLI). */
  readonly gcPauseMs?: number;
}

export interface GcRunOptions {
  readonly dryRun?: boolean;
  /** Default: `[gc] delete_untagged`. */
  readonly deleteUntagged?: boolean;
  /** Default: `[gc] grace` (ms). */
  readonly grace?: number;
  readonly signal?: AbortSignal;
}

export interface StorageGcReport {
  readonly gc: GcReport;
  /** The proxy cache's eviction sweep (not run by a dry run: it has no dry mode). */
  readonly proxy?: EvictionReport;
}

/**
 * Storage lifecycle for one registry: garbage collection with retention (and the proxy cache's
 * eviction in the same run), fsck, import and export. The server holds one (with the scheduled gc of
 * `[gc] interval`); the CLI opens one on the database directly (`openStorage`), also while a server runs.
 */
export class StorageMaintenance {
  private running: Promise<StorageGcReport> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly stopping = new AbortController();

  constructor(private readonly deps: StorageDeps) {}

  /** One collection: retention, then mark and sweep of the registry store, then the proxy cache sweep. */
  gc(options: GcRunOptions = {}): Promise<StorageGcReport> {
    const run = async (): Promise<StorageGcReport> => {
      const { config } = this.deps;
      const signal = options.signal ? AbortSignal.any([options.signal, this.stopping.signal]) : this.stopping.signal;
      const collector = new GarbageCollector({
        metadata: this.deps.metadata,
        blobs: this.deps.registryBlobs,
        ...(this.deps.gcPauseMs !== undefined ? { pauseMs: this.deps.gcPauseMs } : {}),
      });
      const gc = await collector.run({
        grace: options.grace ?? config.gc.grace,
        deleteUntagged: options.deleteUntagged ?? config.gc.deleteUntagged,
        dryRun: options.dryRun ?? false,
        retention: config.gc.retention,
        signal,
      });
      if (options.dryRun) return { gc };
      const proxy = await this.deps.eviction.sweep({ cacheTtl: config.proxy.cacheTtl, maxSize: config.proxy.maxSize });
      return { gc, proxy };
    };
    // One collection at a time in this process; another waits for it and then runs its own.
    const next = (this.running ?? Promise.resolve()).catch(() => undefined).then(run);
    this.running = next;
    return next.finally(() => {
      if (this.running === next) this.running = undefined;
    });
  }

  fsck(options: FsckOptions): Promise<FsckReport> {
    return fsck(
      {
        metadata: this.deps.metadata,
        catalogs: [registryCatalog(this.deps.metadata, this.deps.registryBlobs), proxyBlobCatalog(this.deps.db, this.deps.proxyBlobs)],
        uploadsDir: join(this.deps.config.temporaryRegistryStorage, 'uploads'),
      },
      { grace: this.deps.config.gc.grace, ...options },
    );
  }

  importArchive(source: Readable, options: ImportOptions = {}): Promise<ImportResult> {
    // Names under proxy/ are the dependency proxy's: an image saved from a pull through it is named so.
    const refusal = (repo: string): string | undefined =>
      this.deps.config.proxy.enabled && repo.startsWith('proxy/')
        ? `${repo} is under proxy/, the dependency proxy's read-only names: import it into a repository of your own (--repository NAME, or ?repository= on /admin/import)`
        : undefined;
    return importArchive(source, { registry: this.deps.local, tempRoot: this.deps.config.temporaryRegistryStorage, refusal }, options);
  }

  exportArchive(refs: readonly string[], signal?: AbortSignal): Promise<{ plan: ExportPlan; stream: Readable }> {
    return exportArchive(this.deps.local, refs, signal);
  }

  /** Starts the in-process collection every `[gc] interval` (none when it is 0). */
  schedule(): void {
    const interval = this.deps.config.gc.interval;
    if (interval <= 0 || this.timer) return;
    this.timer = setInterval(() => void this.scheduled(), Math.max(1000, interval));
    this.timer.unref();
  }

  private async scheduled(): Promise<void> {
    if (this.running) return; // the previous run is not done: skip this turn
    const log = this.deps.logger;
    try {
      const report = await this.gc();
      log?.info(summary(report), 'garbage collection finished');
    } catch (err) {
      if (this.stopping.signal.aborted) return;
      log?.warn({ err }, 'garbage collection failed');
    }
  }

  /** Stops the schedule and a collection in progress (between two of its transactions), and waits for it. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.stopping.abort();
    await this.running?.catch(() => undefined);
  }
}

/** GarbageCollectorDeps.pauseMs of the command line's gc: the lock is let go 2 ms between its writes. */
const CLI_GC_PAUSE_MS = 2;

/** The numbers of a collection, for a log line. */
export function summary(report: StorageGcReport): Record<string, number | boolean> {
  const { gc, proxy } = report;
  return {
    dryRun: gc.dryRun,
    tags: gc.tags.length,
    manifests: gc.manifests.length,
    links: gc.links,
    blobs: gc.blobs.length,
    bytes: gc.bytes,
    orphanFiles: gc.orphans.files,
    orphanBytes: gc.orphans.bytes,
    errors: gc.errors.length,
    durationMs: gc.durationMs,
    ...(proxy ? { proxyManifests: proxy.manifests, proxyBlobs: proxy.blobs, proxyBytes: proxy.bytes } : {}),
  };
}

/**
 * The stores of a configuration, opened for the CLI: the same database (WAL: a running server keeps
 * working) and folders the server uses. close() closes the database.
 */
export async function openStorage(config: WharfConfig): Promise<{ storage: StorageMaintenance; deps: StorageDeps; close(): Promise<void> }> {
  for (const folder of [config.registryStorage, config.temporaryRegistryStorage, config.proxyStorage]) await mkdir(folder, { recursive: true, mode: 0o700 });
  const db = openConfiguredDatabase(config.database);
  // Held while the command runs (an import spools its entries into the temporary folder): a server
  // starting meanwhile sees another owner there and leaves young temp files alone (server.ts).
  const owner = FillOwner.take(config.temporaryRegistryStorage);
  try {
    const uploads = new FsUploadSessions(config.temporaryRegistryStorage);
    await uploads.init();
    const metadata = new SqliteMetadataStore(db);
    const registryBlobs = new FsBlobStore(config.registryStorage, config.temporaryRegistryStorage);
    const proxyBlobs = new FsBlobStore(config.proxyStorage, config.temporaryRegistryStorage);
    const local = new LocalRegistry(registryBlobs, metadata, uploads, metadata.lifecycle());
    const eviction = new CacheEviction(db, proxyBlobs);
    // A server may be running on the same database: its writes get the lock between ours.
    const deps: StorageDeps = { config, db, metadata, registryBlobs, proxyBlobs, local, eviction, gcPauseMs: CLI_GC_PAUSE_MS };
    const close = async () => {
      flushDeferredWrites(db, { waitMs: 2_000 });
      db.close();
      await owner.release();
    };
    return { storage: new StorageMaintenance(deps), deps, close };
  } catch (err) {
    db.close();
    void owner.release();
    throw err;
  }
}
