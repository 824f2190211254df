/**
 * Hooks for metrics, called by the pull-through repositories as things happen. The server wires them
 * to Prometheus counters; the proxy package knows nothing of metrics libraries. Every hook is optional
 * and must not throw.
 */
export interface ProxyObserver {
  /** A manifest or blob read answered from the cache (a tag re-checked upstream and unchanged included). */
  cacheHit?(upstream: string, kind: 'manifest' | 'blob'): void;
  /** A manifest or blob read that had to go to the upstream (or join a download already running). */
  cacheMiss?(upstream: string, kind: 'manifest' | 'blob'): void;
  /** Blob bytes sent to a client from the cache, with no upstream download. */
  servedFromCache?(upstream: string, bytes: number): void;
  /**
   * Cached blobs removed: `expired` (not used for cache_ttl), `size` (least recently used past
   * max_size, or larger than max_size alone), `purge` (an operator's purge).
   */
  evicted?(reason: 'expired' | 'size' | 'purge', blobs: number, bytes: number): void;
}
