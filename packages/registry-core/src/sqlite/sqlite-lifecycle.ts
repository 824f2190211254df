import type { Statement } from 'better-sqlite3';
import type { Digest } from '../digest.js';
import type { SqliteDatabase } from './database.js';
import { deferredWrites, flushDeferredWrites } from './deferred-writes.js';

/** A manifest row as garbage collection sees it. */
export interface GraphManifest {
  readonly digest: Digest;
  readonly createdAt: number;
  /** When its grace last started over other than by a push (a tag left it, a push's HEAD asked for it). */
  readonly graceFrom?: number;
  readonly subject?: Digest;
}

export interface GraphReference {
  readonly parent: Digest;
  readonly child: Digest;
  readonly kind: 'blob' | 'manifest';
}

export interface TagRecord {
  readonly name: string;
  readonly digest: Digest;
  readonly updatedAt: number;
  /** When a GET or HEAD by this tag last served it (written at most once a minute); undefined: never. */
  readonly lastPulledAt?: number;
}

export interface LinkRecord {
  readonly digest: Digest;
  readonly linkedAt: number;
  readonly size: number;
}

/** Everything of one repository that decides what garbage collection keeps. */
export interface RepositoryGraph {
  readonly manifests: readonly GraphManifest[];
  readonly references: readonly GraphReference[];
  readonly tags: readonly TagRecord[];
  readonly links: readonly LinkRecord[];
}

/** What goes from one repository: manifests (their tags and references with them) and blob links. */
export interface RepositoryGarbage {
  readonly manifests: readonly Digest[];
  readonly links: readonly LinkRecord[];
}

export interface DanglingReference {
  readonly repo: string;
  readonly digest: Digest;
  readonly child: Digest;
  readonly kind: 'blob' | 'manifest';
}

/**
 * How long a lease protects a blob past its last renewal: its holder renews it every LEASE_RENEW_MS
 * (blob-leases.ts) while it works (a monolithic push streams for as long as the client sends), so a
 * lease whose holder died (kill -9, a crash) stops protecting the blob within this.
 */
export const LEASE_TTL_MS = 10 * 60_000;

/**
 * The queries of garbage collection, retention and fsck on the registry's SQLite metadata. It belongs to
 * a SqliteMetadataStore (`store.lifecycle()`) and tells the store's manifest cache about every manifest
 * or tag it changes. Each change that must not interleave with a push runs in one BEGIN IMMEDIATE
 * transaction that re-checks its condition, and a file removal that depends on that condition runs
 * inside the same transaction (see gc/garbage-collector.ts for why).
 */
export class SqliteLifecycle {
  private readonly q: Record<string, Statement>;

  constructor(
    private readonly db: SqliteDatabase,
    /** Clears the manifest cache of a repository. */
    private readonly forget: (repo: string) => void,
  ) {
    const s = (sql: string) => db.prepare(sql);
    this.q = {
      repoId: s('SELECT id FROM repositories WHERE name = ?'),
      repositories: s('SELECT name FROM repositories ORDER BY name'),
      graphManifests: s(`SELECT m.digest, m.created_at, m.subject, g.started_at FROM manifests m
                         LEFT JOIN manifest_grace g ON g.repository_id = m.repository_id AND g.digest = m.digest
                         WHERE m.repository_id = ?`),
      graphRefs: s('SELECT parent, child, kind FROM manifest_references WHERE repository_id = ?'),
      graphTags: s('SELECT name, digest, updated_at, last_pulled_at FROM tags WHERE repository_id = ?'),
      graphLinks: s(`SELECT rb.digest, rb.linked_at, b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest
                     WHERE rb.repository_id = ?`),
      deleteManifest: s('DELETE FROM manifests WHERE repository_id = ? AND digest = ?'),
      deleteLink: s('DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?'),
      deleteEmptyRepo: s(`DELETE FROM repositories WHERE id = ? AND NOT EXISTS (SELECT 1 FROM manifests WHERE repository_id = ?)
                          AND NOT EXISTS (SELECT 1 FROM repository_blobs WHERE repository_id = ?)`),
      retireTag: s(`DELETE FROM tags WHERE repository_id = (SELECT id FROM repositories WHERE name = ?) AND name = ? AND digest = ?
                    AND updated_at = ? AND last_pulled_at IS ?`),
      notePull: s('UPDATE tags SET last_pulled_at = ? WHERE repository_id = (SELECT id FROM repositories WHERE name = ?) AND name = ?'),
      blobRow: s('SELECT size, created_at FROM blobs WHERE digest = ?'),
      hasLink: s('SELECT 1 FROM repository_blobs WHERE digest = ? LIMIT 1'),
      linkCount: s('SELECT COUNT(*) AS n FROM repository_blobs WHERE digest = ?'),
      hasLease: s('SELECT 1 FROM blob_leases WHERE digest = ? AND expires_at > ? LIMIT 1'),
      leaseUntil: s('SELECT MAX(expires_at) AS until FROM blob_leases WHERE digest = ? AND expires_at > ?'),
      deleteBlob: s('DELETE FROM blobs WHERE digest = ?'),
      deleteLinksOf: s('DELETE FROM repository_blobs WHERE digest = ?'),
      unlinkedBlobs: s(`SELECT digest, size FROM blobs b WHERE created_at < ?
                        AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest) ORDER BY digest`),
      lease: s('INSERT INTO blob_leases (digest, expires_at) VALUES (?, ?)'),
      release: s('DELETE FROM blob_leases WHERE id = ?'),
      renewLease: s('UPDATE blob_leases SET expires_at = ? WHERE id = ?'),
      expireLeases: s('DELETE FROM blob_leases WHERE expires_at <= ?'),
      blobRows: s(`SELECT b.digest, b.size, (SELECT COUNT(*) FROM repository_blobs rb WHERE rb.digest = b.digest) AS links
                   FROM blobs b ORDER BY b.digest`),
      dangling: s(`SELECT r.name AS repo, ref.parent AS digest, ref.child AS child, ref.kind AS kind
                   FROM manifest_references ref JOIN repositories r ON r.id = ref.repository_id
                   WHERE (ref.kind = 'blob' AND NOT EXISTS (SELECT 1 FROM repository_blobs rb
                            WHERE rb.repository_id = ref.repository_id AND rb.digest = ref.child))
                      OR (ref.kind = 'manifest' AND NOT EXISTS (SELECT 1 FROM manifests c
                            WHERE c.repository_id = ref.repository_id AND c.digest = ref.child))
                   ORDER BY r.name, ref.parent`),
      referencing: s(`SELECT r.name AS repo, ref.parent AS digest FROM manifest_references ref
                      JOIN repositories r ON r.id = ref.repository_id WHERE ref.child = ? AND ref.kind = 'blob'`),
      setBroken: s('UPDATE manifests SET broken = ? WHERE repository_id = (SELECT id FROM repositories WHERE name = ?) AND digest = ? AND broken <> ?'),
      broken: s(`SELECT r.name AS repo, m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id
                 WHERE m.broken = 1 ORDER BY r.name, m.digest`),
      tagsOf: s(`SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.name = ? AND t.digest = ? ORDER BY t.name`),
      counts: s(`SELECT (SELECT COUNT(*) FROM repositories) AS repositories, (SELECT COUNT(*) FROM manifests) AS manifests,
                 (SELECT COUNT(*) FROM tags) AS tags, (SELECT COUNT(*) FROM blobs) AS blobs,
                 (SELECT COALESCE(SUM(size), 0) FROM blobs) AS bytes`),
    };
  }

  /** Every repository name, also those without manifests. */
  repositories(): string[] {
    return (this.q.repositories!.all() as { name: string }[]).map((r) => r.name);
  }

  graph(repo: string): RepositoryGraph | undefined {
    const id = this.repoId(repo);
    return id === undefined ? undefined : this.loadGraph(id);
  }

  /**
   * One repository's garbage collection in one BEGIN IMMEDIATE transaction: `plan` sees the graph as it
   * is now and names what goes, which is deleted before the transaction ends. A push to the repository
   * therefore happens wholly before (and its manifest or link is in the graph) or wholly after (and it
   * finds what survived). A repository left with no manifest and no link goes too. With `dryRun`, only
   * the plan.
   */
  collectRepository(repo: string, plan: (graph: RepositoryGraph) => RepositoryGarbage, dryRun = false): RepositoryGarbage & { readonly repositoryRemoved: boolean } {
    const run = () => {
      const id = this.repoId(repo);
      if (id === undefined) return { manifests: [], links: [], repositoryRemoved: false };
      const garbage = plan(this.loadGraph(id));
      if (dryRun) return { ...garbage, repositoryRemoved: false };
      for (const digest of garbage.manifests) this.q.deleteManifest!.run(id, digest);
      for (const link of garbage.links) this.q.deleteLink!.run(id, link.digest);
      const repositoryRemoved = this.q.deleteEmptyRepo!.run(id, id, id).changes > 0;
      return { ...garbage, repositoryRemoved };
    };
    const result = dryRun ? this.db.transaction(run)() : this.db.transaction(run).immediate();
    if (result.manifests.length > 0 || result.repositoryRemoved) this.forget(repo);
    return result;
  }

  tags(repo: string): TagRecord[] {
    flushDeferredWrites(this.db); // the pulls noted in the last seconds count for retention
    const id = this.repoId(repo);
    return id === undefined ? [] : this.loadTags(id);
  }

  /**
   * Deletes a tag, only if it is still as `seen` (read by `tags`): a tag pushed again meanwhile, even
   * to the same digest, or pulled (as written), stays.
   */
  retireTag(repo: string, seen: Pick<TagRecord, 'name' | 'digest' | 'updatedAt' | 'lastPulledAt'>): boolean {
    const removed = this.q.retireTag!.run(repo, seen.name, seen.digest, seen.updatedAt, seen.lastPulledAt ?? null).changes > 0;
    if (removed) this.forget(repo);
    return removed;
  }

  /**
   * Records a pull by tag: at most one write per tag a minute (per process), and none at all for the
   * pulls in between, so a hot tag served from the manifest cache stays cheap; deferred, so that many
   * tags' notes go to the database in one transaction and a pull never waits for it (DeferredWrites).
   */
  notePull(repo: string, tag: string, now = Date.now()): void {
    deferredWrites(this.db).note(`pull\u0000${repo}\u0000${tag}`, () => this.q.notePull!.run(now, repo, tag), now);
  }

  /** Blob rows that no repository links, created before `cutoff`. */
  unlinkedBlobs(cutoff: number): { digest: Digest; size: number }[] {
    return this.q.unlinkedBlobs!.all(cutoff) as { digest: Digest; size: number }[];
  }

  blobRow(digest: Digest): { size: number; createdAt: number } | undefined {
    const row = this.q.blobRow!.get(digest) as { size: number; created_at: number } | undefined;
    return row && { size: row.size, createdAt: row.created_at };
  }

  linkCount(digest: Digest): number {
    return (this.q.linkCount!.get(digest) as { n: number }).n;
  }

  /**
   * Deletes a blob that nothing links: in one BEGIN IMMEDIATE transaction, re-checks that the row is
   * older than `cutoff`, that no repository links it and that no lease protects it, deletes the row and
   * then runs `removeFile` (synchronous, still inside the transaction). undefined when the blob stays.
   */
  removeBlob(digest: Digest, cutoff: number, removeFile: () => boolean, now = Date.now()): { size: number; fileRemoved: boolean } | undefined {
    return this.db
      .transaction(() => {
        const row = this.q.blobRow!.get(digest) as { size: number; created_at: number } | undefined;
        if (!row || row.created_at >= cutoff) return undefined;
        if (this.q.hasLink!.get(digest) || this.q.hasLease!.get(digest, now)) return undefined;
        this.q.deleteBlob!.run(digest);
        return { size: row.size, fileRemoved: removeFile() };
      })
      .immediate();
  }

  /** Until when (ms) a push holds a lease on the blob; undefined when none does. */
  leaseUntil(digest: Digest, now = Date.now()): number | undefined {
    return (this.q.leaseUntil!.get(digest, now) as { until: number | null } | undefined)?.until ?? undefined;
  }

  /** Runs `removeFile` for a file without a blob row, if there is still no row and no lease (one transaction). */
  removeOrphanFile(digest: Digest, removeFile: () => boolean, now = Date.now()): boolean {
    return this.db
      .transaction(() => {
        if (this.q.blobRow!.get(digest) || this.q.hasLease!.get(digest, now)) return false;
        return removeFile();
      })
      .immediate();
  }

  /**
   * fsck --repair of a blob whose file is missing or corrupt: in one transaction, unless a lease protects
   * it (a push is placing it) or `stillBad` now says otherwise, deletes its links and row, then runs
   * `removeFile` (for a corrupt file). Returns the repositories that lost a link, or undefined.
   */
  dropBlob(digest: Digest, stillBad: () => boolean, removeFile: () => void, now = Date.now()): string[] | undefined {
    return this.db
      .transaction(() => {
        if (this.q.hasLease!.get(digest, now) || !stillBad()) return undefined;
        const repos = (this.db
          .prepare('SELECT r.name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id WHERE rb.digest = ?')
          .all(digest) as { name: string }[]).map((r) => r.name);
        this.q.deleteLinksOf!.run(digest);
        this.q.deleteBlob!.run(digest);
        removeFile();
        return repos;
      })
      .immediate();
  }

  /** Keeps `digest`'s file from garbage collection until released (or LEASE_TTL_MS past its last renewal). */
  lease(digest: Digest, now = Date.now()): number {
    return Number(this.q.lease!.run(digest, now + LEASE_TTL_MS).lastInsertRowid);
  }

  release(id: number): void {
    this.q.release!.run(id);
  }

  /** Keeps the lease `id` another LEASE_TTL_MS; false when it is gone (expired and swept). */
  renew(id: number, now = Date.now()): boolean {
    return this.q.renewLease!.run(now + LEASE_TTL_MS, id).changes > 0;
  }

  expireLeases(now = Date.now()): number {
    return this.q.expireLeases!.run(now).changes;
  }

  blobRows(): IterableIterator<{ digest: Digest; size: number; links: number }> {
    return this.q.blobRows!.iterate() as IterableIterator<{ digest: Digest; size: number; links: number }>;
  }

  /** Manifests with a blob reference not linked in their repository, or a child manifest not there. */
  danglingReferences(): DanglingReference[] {
    return this.q.dangling!.all() as DanglingReference[];
  }

  /** Manifests that reference a blob (by any repository). */
  manifestsReferencing(blob: Digest): { repo: string; digest: Digest }[] {
    return this.q.referencing!.all(blob) as { repo: string; digest: Digest }[];
  }

  /** Sets or clears a manifest's `broken` flag; true when it changed. */
  setBroken(repo: string, digest: Digest, broken: boolean): boolean {
    const flag = broken ? 1 : 0;
    const changed = this.q.setBroken!.run(flag, repo, digest, flag).changes > 0;
    if (changed) this.forget(repo);
    return changed;
  }

  brokenManifests(): { repo: string; digest: Digest }[] {
    return this.q.broken!.all() as { repo: string; digest: Digest }[];
  }

  tagsOf(repo: string, digest: Digest): string[] {
    return (this.q.tagsOf!.all(repo, digest) as { name: string }[]).map((r) => r.name);
  }

  counts(): { repositories: number; manifests: number; tags: number; blobs: number; bytes: number } {
    return this.q.counts!.get() as { repositories: number; manifests: number; tags: number; blobs: number; bytes: number };
  }

  private repoId(repo: string): number | undefined {
    return (this.q.repoId!.get(repo) as { id: number } | undefined)?.id;
  }

  private loadTags(id: number): TagRecord[] {
    return (this.q.graphTags!.all(id) as { name: string; digest: Digest; updated_at: number; last_pulled_at: number | null }[]).map((t) => ({
      name: t.name,
      digest: t.digest,
      updatedAt: t.updated_at,
      ...(t.last_pulled_at !== null ? { lastPulledAt: t.last_pulled_at } : {}),
    }));
  }

  private loadGraph(id: number): RepositoryGraph {
    const manifests = (this.q.graphManifests!.all(id) as { digest: Digest; created_at: number; subject: Digest | null; started_at: number | null }[]).map((m) => ({
      digest: m.digest,
      createdAt: m.created_at,
      ...(m.started_at !== null ? { graceFrom: m.started_at } : {}),
      ...(m.subject ? { subject: m.subject } : {}),
    }));
    const references = this.q.graphRefs!.all(id) as GraphReference[];
    const links = (this.q.graphLinks!.all(id) as { digest: Digest; linked_at: number; size: number }[]).map((l) => ({
      digest: l.digest,
      linkedAt: l.linked_at,
      size: l.size,
    }));
    return { manifests, references, tags: this.loadTags(id), links };
  }
}
