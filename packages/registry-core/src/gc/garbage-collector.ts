import { unlinkSync } from 'node:fs';
import { setImmediate as yieldToEventLoop, setTimeout as sleep } from 'node:timers/promises';
import type { Digest } from '../digest.js';
import type { FsBlobStore } from '../fs/fs-blob-store.js';
import type { SqliteMetadataStore } from '../sqlite/sqlite-metadata-store.js';
import type { LinkRecord } from '../sqlite/sqlite-lifecycle.js';
import { blobFiles } from './blob-files.js';
import { markRepository } from './mark.js';
import { matchingRule, planRetention, type RetentionRule, type RetiredTag } from './retention.js';
import { OUTSIDE_WRITES_SEEN_MS } from '../sqlite/manifest-cache.js';

/**
 * Online garbage collection of the registry store.
 *
 * Phases: retention (tags), then per repository mark and sweep of manifests and blob links (one BEGIN
 * IMMEDIATE transaction per repository, see SqliteLifecycle.collectRepository), then blobs that no
 * repository links any more, then blob files that have no row at all. Uploads in progress are separate
 * files under the temporary storage and never touched.
 *
 * Why a push running meanwhile never ends with a link to a missing file:
 * - A push places a blob's file and then links it (LocalRegistry.putBlob, completeUpload, mountBlob,
 *   adoptBlob), all under a lease on the digest (a `blob_leases` row written before the file moves).
 * - The sweep deletes a blob in one BEGIN IMMEDIATE transaction that re-checks "no link, no live lease,
 *   row older than the grace period", deletes the row, and unlinks the file before COMMIT.
 * - SQLite serialises that transaction with the push's lease insert. Lease first: the sweep sees it and
 *   keeps the blob. Sweep first: the file is gone before the push places its own copy (rename), and the
 *   push's link re-inserts the blob row (`INSERT ... ON CONFLICT DO NOTHING` finds none).
 * - Orphan files (no row) are removed under the same rule: one transaction that re-checks "no row, no
 *   lease". A manifest PUT checks its links in its own transaction, so it sees the links either before
 *   or after a repository's sweep, never half of it.
 * - kill -9 at any point: the sweep transaction either committed (row and file gone) or not (both stay;
 *   at worst the file was unlinked just before the crash and the row stays without links, which fsck
 *   reports as a stale row, not an error, and the next gc removes).
 *
 * The grace period keeps blobs pushed for a manifest that is not there yet, and (with deleteUntagged)
 * manifests pushed by digest for an index that is not there yet.
 */
export interface GcOptions {
  /** Links, blobs, orphan files and (with deleteUntagged) untagged manifests younger than this (ms) stay. */
  readonly grace: number;
  readonly deleteUntagged: boolean;
  readonly dryRun?: boolean;
  readonly retention?: readonly RetentionRule[];
  readonly now?: number;
  readonly signal?: AbortSignal;
}

export interface GcReport {
  readonly dryRun: boolean;
  /** Tags removed by retention. */
  readonly tags: readonly RetiredTag[];
  readonly manifests: readonly { readonly repo: string; readonly digest: Digest }[];
  /** Repository→blob links removed. */
  readonly links: number;
  /** Repositories left empty and removed. */
  readonly repositories: number;
  readonly blobs: readonly { readonly digest: Digest; readonly size: number }[];
  /** Bytes of blob files removed (or that would be). */
  readonly bytes: number;
  /** Blob files that had no row. */
  readonly orphans: { readonly files: number; readonly bytes: number };
  /** Problems that did not stop the run (a file that could not be removed). */
  readonly errors: readonly string[];
  readonly durationMs: number;
}

export interface GarbageCollectorDeps {
  /** The same store instance the server reads through, so that its manifest cache learns of deletions. */
  readonly metadata: SqliteMetadataStore;
  readonly blobs: FsBlobStore;
  /**
   * How long to let go of the database between write transactions (ms). 0 (the default): the next
   * turn of the event loop, enough in the server, whose requests share its connection. A process
   * that shares the database with a running server (`wharf gc`) gives it a little time: the server's
   * writes poll for the lock (SQLite's busy handler, every 1-100 ms) and, with transactions back to
   * back, never found it free (a server's request stalled 600 ms in one audit).
   */
  readonly pauseMs?: number;
}

/** Removes a file synchronously; false when it was not there. */
export function removeFileSync(path: string): boolean {
  try {
    unlinkSync(path);
    return true;
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return false;
    throw err;
  }
}

export class GarbageCollector {
  constructor(private readonly deps: GarbageCollectorDeps) {}

  async run(options: GcOptions): Promise<GcReport> {
    const started = Date.now();
    const now = options.now ?? started;
    const cutoff = now - options.grace;
    const dryRun = options.dryRun ?? false;
    const life = this.deps.metadata.lifecycle();
    const errors: string[] = [];
    const check = () => options.signal?.throwIfAborted();
    // A dry run only reads: it holds no lock to let go of.
    const pauseMs = dryRun ? 0 : (this.deps.pauseMs ?? 0);
    const letGo = () => (pauseMs > 0 ? sleep(pauseMs) : yieldToEventLoop());

    if (!dryRun) life.expireLeases(now);

    // Retention: tags first, so that what they leave untagged is collected in this same run.
    const tags: RetiredTag[] = [];
    const retired = new Map<string, Set<Digest>>();
    const ignoredTags = new Map<string, Set<string>>();
    const repositories = life.repositories();
    if (options.retention && options.retention.length > 0) {
      for (const repo of repositories) {
        const rule = matchingRule(options.retention, repo);
        if (!rule) continue;
        const seen = life.tags(repo);
        const byName = new Map(seen.map((t) => [t.name, t]));
        for (const t of planRetention(repo, seen, rule, now)) {
          if (!dryRun && !life.retireTag(repo, byName.get(t.tag)!)) continue;
          tags.push(t);
          setOf(retired, repo).add(t.digest);
          setOf(ignoredTags, repo).add(t.tag);
        }
      }
      check();
    }

    // Mark and sweep manifests and links, one repository per transaction.
    const manifests: { repo: string; digest: Digest }[] = [];
    const removedLinks: LinkRecord[] = [];
    let links = 0;
    let emptied = 0;
    for (const repo of repositories) {
      try {
        const garbage = life.collectRepository(
          repo,
          (graph) =>
            markRepository(graph, {
              deleteUntagged: options.deleteUntagged,
              cutoff,
              ...(retired.has(repo) ? { retired: retired.get(repo)! } : {}),
              ...(dryRun && ignoredTags.has(repo) ? { ignoredTags: ignoredTags.get(repo)! } : {}),
            }),
          dryRun,
        );
        for (const digest of garbage.manifests) manifests.push({ repo, digest });
        links += garbage.links.length;
        removedLinks.push(...garbage.links);
        if (garbage.repositoryRemoved) emptied += 1;
      } catch (err) {
        // A busy database (another writer past busy_timeout): this repository waits for the next run.
        errors.push(`repository ${repo}: ${(err as Error).message}`);
      }
      await letGo();
      check();
    }

    // Another process sharing the database (a server beside `wharf gc`, or a second server on the same
    // storage) may serve the manifests just removed from its cache until it sees this process's
    // writes (OUTSIDE_WRITES_SEEN_MS): their blobs go once it has.
    if (!dryRun && manifests.length > 0) await sleep(2 * OUTSIDE_WRITES_SEEN_MS);

    // Blobs that nothing links.
    const blobs: { digest: Digest; size: number }[] = [];
    let bytes = 0;
    if (dryRun) {
      const wouldGo = new Map<Digest, number>();
      for (const link of removedLinks) wouldGo.set(link.digest, (wouldGo.get(link.digest) ?? 0) + 1);
      for (const b of life.unlinkedBlobs(cutoff)) blobs.push(b);
      for (const [digest, count] of wouldGo) {
        const row = life.blobRow(digest);
        if (row && row.createdAt < cutoff && life.linkCount(digest) === count) blobs.push({ digest, size: row.size });
      }
      for (const b of blobs) bytes += b.size;
    } else {
      let n = 0;
      for (const candidate of life.unlinkedBlobs(cutoff)) {
        try {
          const removed = life.removeBlob(candidate.digest, cutoff, () => removeFileSync(this.deps.blobs.pathOf(candidate.digest)), now);
          if (removed) {
            blobs.push({ digest: candidate.digest, size: removed.size });
            if (removed.fileRemoved) bytes += removed.size;
          }
        } catch (err) {
          errors.push(`blob ${candidate.digest}: ${(err as Error).message}`);
        }
        // Blob transactions are short: a pause every 16 of them, or a yield every 64.
        if (++n % (pauseMs > 0 ? 16 : 64) === 0) {
          await letGo();
          check();
        }
      }
    }
    check();

    // Files with no row (a push that crashed between placing the file and linking it, or leftovers).
    const orphans = { files: 0, bytes: 0 };
    let n = 0;
    for await (const file of blobFiles(this.deps.blobs.root)) {
      if (!file.digest || Math.max(file.mtimeMs, file.ctimeMs) >= cutoff || life.blobRow(file.digest)) continue;
      if (dryRun) {
        orphans.files += 1;
        orphans.bytes += file.size;
        continue;
      }
      try {
        if (life.removeOrphanFile(file.digest, () => removeFileSync(file.path), now)) {
          orphans.files += 1;
          orphans.bytes += file.size;
        }
      } catch (err) {
        errors.push(`file ${file.path}: ${(err as Error).message}`);
      }
      if (++n % 64 === 0) {
        await yieldToEventLoop();
        check();
      }
    }

    return {
      dryRun,
      tags,
      manifests,
      links,
      repositories: emptied,
      blobs,
      bytes,
      orphans,
      errors,
      durationMs: Date.now() - started,
    };
  }
}

function setOf<T>(map: Map<string, Set<T>>, key: string): Set<T> {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  return set;
}
