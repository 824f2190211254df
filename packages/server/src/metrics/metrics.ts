import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { cacheTotals, fillMemoryBytes, type BlobFills, type ProxyObserver, type PullThroughRepository } from '@wharf/proxy';
import { SEALED_UPLOAD_SUFFIX, type SqliteDatabase } from '@wharf/registry-core';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RequestObservation, RequestObserver } from '../http/request-log.js';
import type { RouteLabel } from '../http/route-label.js';

/** What the scrape-time metrics read: counted on each scrape, never kept in step by hand. */
export interface MetricsSources {
  readonly db: SqliteDatabase;
  /** Upload sessions are folders under `<temporary_registry_storage>/uploads`. */
  readonly temporaryRegistryStorage: string;
  readonly fills: BlobFills;
  /** Pull-through repositories by upstream key (filled in after construction). */
  readonly proxies: ReadonlyMap<string, PullThroughRepository>;
}

const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

function methodLabel(method: string): string {
  return METHODS.has(method) ? method : 'other';
}

/**
 * Count and total size of a blob store; zero when its table is not there (proxy never enabled). The
 * proxy cache's come from the row the database keeps up (cacheTotals), not from a scan.
 */
function blobTotals(db: SqliteDatabase, store: 'registry' | 'proxy'): { count: number; bytes: number } {
  try {
    if (store === 'proxy') {
      const { blobs, bytes } = cacheTotals(db);
      return { count: blobs, bytes };
    }
    const row = db.prepare('SELECT COUNT(*) AS count, COALESCE(SUM(size), 0) AS bytes FROM blobs').get() as { count: number; bytes: number };
    return { count: Number(row.count), bytes: Number(row.bytes) };
  } catch {
    return { count: 0, bytes: 0 };
  }
}

/**
 * How often the event loop's delay is sampled (nodejs_eventloop_lag_* metrics). prom-client's 10 ms
 * woke an idle server 100 times a second. Every stall of 100 ms or more still lands in a sample.
 */
const EVENT_LOOP_SAMPLE_MS = 100;

/**
 * One route's request numbers, kept as plain numbers and handed to prom-client when it is scraped:
 * prom-client validates and hashes a label set on every inc, children included, which was 4% of a
 * cached manifest GET's CPU. Only the duration histogram is observed per request (it has no other API).
 */
interface RouteNumbers {
  inFlight: number;
  received: number;
  sent: number;
  /** Answered requests by method, then status. */
  readonly answered: Map<string, Map<number, number>>;
  /** The histogram's child by method. */
  readonly duration: Map<string, ReturnType<Histogram<'route' | 'method'>['labels']>>;
}

/**
 * Wharf's Prometheus metrics, in a registry of their own (never prom-client's global one: two servers in
 * one process keep separate numbers). Labels are small fixed sets: routes (http/route-label.ts),
 * methods, statuses, upstream keys, and `store` = registry | proxy.
 */
export class WharfMetrics implements RequestObserver {
  readonly registry = new Registry();
  private readonly duration: Histogram<'route' | 'method'>;
  private readonly upstreamRequests: Counter<'upstream' | 'status'>;
  private readonly hits: Counter<'upstream' | 'kind'>;
  private readonly misses: Counter<'upstream' | 'kind'>;
  private readonly saved: Counter<'upstream'>;
  private readonly unhandled: Counter;
  private readonly evictedBlobs: Counter<'reason'>;
  private readonly evictedBytes: Counter<'reason'>;

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
    const routes = this.routes;
    new Counter({
      name: 'wharf_http_requests_total',
      help: 'HTTP requests answered, by route, method and status',
      labelNames: ['route', 'method', 'status'],
      registers,
      collect() {
        this.reset();
        for (const [route, numbers] of routes) {
          for (const [method, statuses] of numbers.answered) for (const [status, count] of statuses) this.inc({ route, method, status: String(status) }, count);
        }
      },
    });
    this.duration = new Histogram({
      name: 'wharf_http_request_duration_seconds',
      help: 'Time from request to the end of the response, by route and method',
      labelNames: ['route', 'method'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    const bytesByRoute = (name: string, help: string, bytes: (numbers: RouteNumbers) => number) =>
      new Counter({
        name,
        help,
        labelNames: ['route'],
        registers,
        collect() {
          this.reset();
          for (const [route, numbers] of routes) if (bytes(numbers) > 0) this.inc({ route }, bytes(numbers));
        },
      });
    bytesByRoute('wharf_http_received_bytes_total', 'Bytes of requests (head and body) read from clients, by route', (n) => n.received);
    bytesByRoute('wharf_http_sent_bytes_total', 'Bytes of responses (head and body) written to clients, by route', (n) => n.sent);
    new Gauge({
      name: 'wharf_http_requests_in_flight',
      help: 'Requests being served now, by route',
      labelNames: ['route'],
      registers,
      collect() {
        this.reset();
        for (const [route, numbers] of routes) this.set({ route }, numbers.inFlight);
      },
    });
    this.unhandled = new Counter({ name: 'wharf_unhandled_rejections_total', help: 'Promise rejections nothing handled (bugs; each is logged at error): alert on any', registers });
    this.evictedBlobs = new Counter({
      name: 'wharf_proxy_cache_evicted_blobs_total',
      help: 'Cached proxy blobs removed by this server, by reason (expired: cache_ttl; size: max_size; purge)',
      labelNames: ['reason'],
      registers,
    });
    this.evictedBytes = new Counter({ name: 'wharf_proxy_cache_evicted_bytes_total', help: 'Bytes of cached proxy blobs removed by this server, by reason', labelNames: ['reason'], registers });

    new Gauge({
      name: 'wharf_uploads_in_progress',
      help: 'Blob upload sessions open (started and neither completed, cancelled nor expired)',
      registers,
      async collect() {
        const entries = await readdir(join(sources.temporaryRegistryStorage, 'uploads')).catch(() => [] as string[]);
        // A sealed upload's file is a completed upload on its way into the store.
        this.set(entries.filter((entry) => !entry.endsWith(SEALED_UPLOAD_SUFFIX)).length);
      },
    });
    new Gauge({
      name: 'wharf_blobs_stored',
      help: 'Blobs stored, by store (registry: pushed; proxy: cached from upstreams)',
      labelNames: ['store'],
      registers,
      collect() {
        this.set({ store: 'registry' }, blobTotals(sources.db, 'registry').count);
        this.set({ store: 'proxy' }, blobTotals(sources.db, 'proxy').count);
      },
    });
    new Gauge({
      name: 'wharf_blob_bytes_stored',
      help: 'Bytes of blobs stored, by store',
      labelNames: ['store'],
      registers,
      collect() {
        this.set({ store: 'registry' }, blobTotals(sources.db, 'registry').bytes);
        this.set({ store: 'proxy' }, blobTotals(sources.db, 'proxy').bytes);
      },
    });

    this.hits = new Counter({ name: 'wharf_proxy_cache_hits_total', help: 'Proxy reads answered from the cache, by upstream and kind (manifest, blob)', labelNames: ['upstream', 'kind'], registers });
    this.misses = new Counter({ name: 'wharf_proxy_cache_misses_total', help: 'Proxy reads that needed the upstream, by upstream and kind', labelNames: ['upstream', 'kind'], registers });
    this.upstreamRequests = new Counter({
      name: 'wharf_proxy_upstream_requests_total',
      help: 'HTTP requests sent to upstream registries, by upstream and status ("error": no response)',
      labelNames: ['upstream', 'status'],
      registers,
    });
    this.saved = new Counter({ name: 'wharf_proxy_bytes_saved_total', help: 'Blob bytes served from the proxy cache instead of downloaded again, by upstream', labelNames: ['upstream'], registers });
    new Gauge({
      name: 'wharf_proxy_fills_in_flight',
      help: 'Upstream blob downloads running now (each shared by every client waiting for that blob)',
      registers,
      collect() {
        this.set(sources.fills.running);
      },
    });
    new Gauge({
      name: 'wharf_proxy_fill_memory_bytes',
      help: 'Memory the running upstream blob downloads hold for their clients and the disk (32 MiB before they pause)',
      registers,
      collect() {
        this.set(fillMemoryBytes());
      },
    });
    new Counter({
      name: 'wharf_proxy_fills_total',
      help: 'Upstream blob downloads started',
      registers,
      collect() {
        this.reset();
        this.inc(sources.fills.started);
      },
    });
    new Gauge({
      name: 'wharf_proxy_fill_remnant_bytes',
      help: 'Bytes kept in the temp folder of upstream blob downloads cut short, for the next download of each blob to go on from',
      registers,
      collect() {
        this.set(sources.fills.remnantBytes);
      },
    });
    new Counter({
      name: 'wharf_proxy_fills_resumed_total',
      help: 'Upstream blob downloads that went on from the bytes a download cut short had left',
      registers,
      collect() {
        this.reset();
        this.inc(sources.fills.resumed);
      },
    });
    new Counter({
      name: 'wharf_proxy_stale_served_total',
      help: 'Manifests served from the cache while the upstream could not be asked, by upstream',
      labelNames: ['upstream'],
      registers,
      collect() {
        this.reset();
        for (const [upstream, repository] of sources.proxies) this.inc({ upstream }, repository.staleServed);
      },
    });
    new Gauge({
      name: 'wharf_proxy_upstream_down',
      help: '1 while an upstream is taken as not answering (its requests get a short deadline), by upstream',
      labelNames: ['upstream'],
      registers,
      collect() {
        this.reset();
        for (const [upstream, repository] of sources.proxies) this.set({ upstream }, repository.upstream.isOffline ? 1 : 0);
      },
    });
    new Gauge({
      name: 'wharf_proxy_upstream_rate_limit_remaining',
      help: 'Last RateLimit-Remaining an upstream sent, by upstream',
      labelNames: ['upstream'],
      registers,
      collect() {
        this.reset();
        for (const [upstream, repository] of sources.proxies) {
          if (repository.rateLimitRemaining !== undefined) this.set({ upstream }, repository.rateLimitRemaining);
        }
      },
    });
  }

  /** Request numbers by route (a small fixed set: http/route-label.ts). */
  private readonly routes = new Map<RouteLabel, RouteNumbers>();

  private numbersOf(route: RouteLabel): RouteNumbers {
    let numbers = this.routes.get(route);
    if (!numbers) {
      numbers = { inFlight: 0, received: 0, sent: 0, answered: new Map(), duration: new Map() };
      this.routes.set(route, numbers);
    }
    return numbers;
  }

  /** A promise rejection nothing handled (`wharf serve` logs it and goes on). */
  unhandledRejection(): void {
    this.unhandled.inc();
  }

  started(route: RouteLabel): void {
    this.numbersOf(route).inFlight += 1;
  }

  finished(o: RequestObservation): void {
    const numbers = this.numbersOf(o.route);
    const method = methodLabel(o.method);
    numbers.inFlight -= 1;
    let statuses = numbers.answered.get(method);
    if (!statuses) numbers.answered.set(method, (statuses = new Map()));
    statuses.set(o.status, (statuses.get(o.status) ?? 0) + 1);
    let duration = numbers.duration.get(method);
    if (!duration) numbers.duration.set(method, (duration = this.duration.labels({ route: o.route, method })));
    duration.observe(o.durationMs / 1000);
    numbers.received += o.bytesIn;
    numbers.sent += o.bytesOut;
  }

  /** The hooks the pull-through repositories call. */
  readonly proxy: ProxyObserver = {
    cacheHit: (upstream, kind) => this.hits.inc({ upstream, kind }),
    cacheMiss: (upstream, kind) => this.misses.inc({ upstream, kind }),
    servedFromCache: (upstream, bytes) => this.saved.inc({ upstream }, bytes),
    evicted: (reason, blobs, bytes) => {
      this.evictedBlobs.inc({ reason }, blobs);
      this.evictedBytes.inc({ reason }, bytes);
    },
  };

  /** For an upstream's HTTP client: one call per request sent, with its status or "error". */
  upstreamRequest(upstream: string, status: number | 'error'): void {
    this.upstreamRequests.inc({ upstream, status: String(status) });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
