import type { StoredManifest } from '../metadata-store.js';

/**
 * How often (ms) the store asks SQLite whether another process wrote to the database (`wharf gc`,
 * another command), clearing its whole manifest cache when one did: the longest a manifest another
 * process deleted is still served from the cache.
 */
export const OUTSIDE_WRITES_SEEN_MS = 100;

/**
 * Recently served manifests by repository and reference, so a hot tag costs a map lookup instead of a
 * three-table SQLite read and a BLOB copy. The store clears a repository's entries on every write to it,
 * and every entry once another process wrote (see OUTSIDE_WRITES_SEEN_MS); the TTL is a backstop.
 */
export class ManifestCache {
  private readonly entries = new Map<string, { manifest: StoredManifest | undefined; until: number }>();

  constructor(
    private readonly maxEntries = 4096,
    private readonly ttlMs = 2000,
  ) {}

  private static key(repo: string, reference: string): string {
    return `${repo}\u0000${reference}`;
  }

  get(repo: string, reference: string, now = Date.now()): { manifest: StoredManifest | undefined } | undefined {
    const key = ManifestCache.key(repo, reference);
    const hit = this.entries.get(key);
    if (!hit) return undefined;
    if (hit.until <= now) {
      this.entries.delete(key);
      return undefined;
    }
    return hit;
  }

  set(repo: string, reference: string, manifest: StoredManifest | undefined, now = Date.now()): void {
    if (this.entries.size >= this.maxEntries) {
      // Maps iterate in insertion order: drop the oldest.
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    this.entries.set(ManifestCache.key(repo, reference), { manifest, until: now + this.ttlMs });
  }

  clear(): void {
    this.entries.clear();
  }

  forgetRepository(repo: string): void {
    const prefix = `${repo}\u0000`;
    for (const key of this.entries.keys()) if (key.startsWith(prefix)) this.entries.delete(key);
  }
}
