import { setTimeout as sleep } from 'node:timers/promises';
import type { Statement } from 'better-sqlite3';
import type { BlobInfo } from '../blob-store.js';
import type { Digest } from '../digest.js';
import { RegistryError } from '../errors.js';
import type { Descriptor, ParsedManifest } from '../manifest.js';
import type { MetadataStore, Page, StoredManifest } from '../metadata-store.js';
import { referrersPage, type ReferrersQuery, type ReferrersSlice } from '../referrers-page.js';
import type { SqliteDatabase } from './database.js';
import { isBusy, withBusyTimeout } from './busy.js';
import { ManifestCache, OUTSIDE_WRITES_SEEN_MS } from './manifest-cache.js';
import { SqliteLifecycle } from './sqlite-lifecycle.js';

interface ManifestRow {
  digest: string;
  media_type: string;
  content: Buffer;
  broken: number;
}

/** Served with a manifest that fsck --repair found referencing missing or corrupt content. */
export const BROKEN_MANIFEST_WARNING = 'this manifest references content that is missing or corrupt (wharf fsck); push the image again';

/** Unbounded pages are still bounded: a client that asks for everything gets this many at a time. */
export const MAX_PAGE = 10_000;

/** Rows a listing reads at most: a page of MAX_PAGE, and one more to learn that another page follows. */
function limitOf(page: Page): number {
  return page.n === undefined ? MAX_PAGE : Math.max(0, Math.min(page.n, MAX_PAGE + 1));
}

/**
 * Metadata in SQLite: repositories, repository→blob links, manifests kept byte for byte, their
 * references, and tags. Statements are prepared once; every multi-row change is one transaction.
 */
/** A link or an untagged manifest HEAD-ed again within this long (ms) is not written again. */
const RENEW_MS = 1000;
/** Manifests whose grace a store remembers as needing no renewal (see graceSeen). */
const GRACE_SEEN_MAX = 10_000;
/** How long a renewal asks for a lock another process holds (see writeUnheld). */
const RENEW_WAIT_MS = 2000;

export class SqliteMetadataStore implements MetadataStore {
  private readonly q: Record<string, Statement>;

  private readonly cache = new ManifestCache();
  /**
   * `repo@digest` → since when a manifest HEAD-ed by a push is known to need no renewal (tagged, or its
   * grace started): asked again within RENEW_MS, no query (one per HEAD cost a quarter of the HEADs a
   * second). A tag removed meanwhile starts the grace itself; another process's writes clear it, as they do
   * the manifest cache. Cleared whole too when it grows past GRACE_SEEN_MAX.
   */
  private readonly graceSeen = new Map<string, number>();
  private life: SqliteLifecycle | undefined;
  /** SQLite's data_version as last read, and when: it changes when another connection commits. */
  private dataVersion: unknown;
  private dataVersionAt = -Infinity;

  constructor(private readonly db: SqliteDatabase) {
    const s = (sql: string) => db.prepare(sql);
    this.q = {
      repoId: s('SELECT id FROM repositories WHERE name = ?'),
      dataVersion: s('PRAGMA data_version').pluck(),
      hasManifests: s('SELECT 1 FROM manifests m JOIN repositories r ON r.id = m.repository_id WHERE r.name = ? LIMIT 1'),
      insertRepo: s('INSERT INTO repositories (name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING'),
      blob: s(`SELECT b.size AS size FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
               JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?`),
      blobById: s(`SELECT b.size AS size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest
                   WHERE rb.repository_id = ? AND rb.digest = ?`),
      insertBlob: s('INSERT INTO blobs (digest, size, created_at) VALUES (?, ?, ?) ON CONFLICT(digest) DO NOTHING'),
      link: s('INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET linked_at = excluded.linked_at'),
      // A blob back after fsck --repair dropped it: the links the manifests it marked broken lost with
      // it (healBroken). Only broken manifests: a link a DELETE removed on purpose stays removed.
      relinkBroken: s(`INSERT INTO repository_blobs (repository_id, digest, linked_at)
                       SELECT DISTINCT ref.repository_id, ref.child, ? FROM manifest_references ref
                       JOIN manifests m ON m.repository_id = ref.repository_id AND m.digest = ref.parent
                       WHERE ref.child = ? AND ref.kind = 'blob' AND m.broken = 1
                       ON CONFLICT DO NOTHING`),
      // The broken manifests referencing the blob, and whether each still lacks anything (a blob not
      // linked, a child manifest not there: what fsck calls a dangling reference).
      brokenReferencing: s(`SELECT DISTINCT r.name AS repo, m.digest AS digest, NOT EXISTS (
                              SELECT 1 FROM manifest_references d WHERE d.repository_id = m.repository_id AND d.parent = m.digest
                              AND ((d.kind = 'blob' AND NOT EXISTS (SELECT 1 FROM repository_blobs rb
                                      WHERE rb.repository_id = d.repository_id AND rb.digest = d.child))
                                OR (d.kind = 'manifest' AND NOT EXISTS (SELECT 1 FROM manifests c
                                      WHERE c.repository_id = d.repository_id AND c.digest = d.child)))) AS whole
                            FROM manifest_references ref
                            JOIN manifests m ON m.repository_id = ref.repository_id AND m.digest = ref.parent
                            JOIN repositories r ON r.id = m.repository_id
                            WHERE ref.child = ? AND ref.kind = 'blob' AND m.broken = 1`),
      clearBroken: s('UPDATE manifests SET broken = 0 WHERE repository_id = (SELECT id FROM repositories WHERE name = ?) AND digest = ?'),
      linkAge: s(`SELECT rb.linked_at, b.size FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
                  JOIN blobs b ON b.digest = rb.digest WHERE r.name = ? AND rb.digest = ?`),
      renewLink: s(`UPDATE repository_blobs SET linked_at = ?
                    WHERE repository_id = (SELECT id FROM repositories WHERE name = ?) AND digest = ? AND linked_at < ?`),
      holders: s(`SELECT r.name AS name FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id
                  WHERE rb.digest = ? ORDER BY r.name LIMIT ?`),
      unlink: s(`DELETE FROM repository_blobs WHERE digest = ? AND repository_id = (SELECT id FROM repositories WHERE name = ?)`),
      manifest: s(`SELECT m.digest, m.media_type, m.content, m.broken FROM manifests m JOIN repositories r ON r.id = m.repository_id
                   WHERE r.name = ? AND m.digest = ?`),
      manifestExists: s('SELECT 1 FROM manifests WHERE repository_id = ? AND digest = ?'),
      tagged: s(`SELECT m.digest, m.media_type, m.content, m.broken FROM tags t JOIN repositories r ON r.id = t.repository_id
                 JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest
                 WHERE r.name = ? AND t.name = ?`),
      // A manifest pushed again is as new as the push: its GC grace starts over, as a blob's link does
      // (an untagged platform manifest put again for a new index, before the index comes).
      insertManifest: s(`INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, annotations, size, content, created_at)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET broken = 0, created_at = excluded.created_at`),
      insertRef: s('INSERT INTO manifest_references (repository_id, parent, child, kind) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING'),
      upsertTag: s(`INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (?, ?, ?, ?)
                    ON CONFLICT(repository_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at`),
      deleteManifest: s('DELETE FROM manifests WHERE digest = ? AND repository_id = (SELECT id FROM repositories WHERE name = ?)'),
      deleteTag: s('DELETE FROM tags WHERE name = ? AND repository_id = (SELECT id FROM repositories WHERE name = ?) RETURNING repository_id, digest'),
      // The manifest a tag left: gc's grace for an untagged manifest counts from then too (schema.ts).
      // Never moved back: a renewal's time is taken before it waits for the lock.
      startGrace: s(`INSERT INTO manifest_grace (repository_id, digest, started_at) VALUES (?, ?, ?)
                     ON CONFLICT DO UPDATE SET started_at = MAX(started_at, excluded.started_at)`),
      // The manifest a tag leaves when a push moves it to another one, in the same step.
      tagLeaves: s(`INSERT INTO manifest_grace (repository_id, digest, started_at)
                    SELECT repository_id, digest, ? FROM tags WHERE repository_id = ? AND name = ? AND digest <> ?
                    ON CONFLICT DO UPDATE SET started_at = MAX(started_at, excluded.started_at)`),
      graceOf: s(`SELECT MAX(m.created_at, COALESCE(g.started_at, 0)) AS since,
                    EXISTS (SELECT 1 FROM tags t WHERE t.digest = m.digest AND t.repository_id = m.repository_id) AS tagged
                  FROM manifests m JOIN repositories r ON r.id = m.repository_id
                  LEFT JOIN manifest_grace g ON g.repository_id = m.repository_id AND g.digest = m.digest
                  WHERE r.name = ? AND m.digest = ?`),
      // Changes nothing (0 changes) if the manifest is gone: a collection took it first.
      renewGrace: s(`INSERT INTO manifest_grace (repository_id, digest, started_at)
                     SELECT m.repository_id, m.digest, ? FROM manifests m JOIN repositories r ON r.id = m.repository_id
                     WHERE r.name = ? AND m.digest = ?
                     ON CONFLICT DO UPDATE SET started_at = MAX(started_at, excluded.started_at)`),
      // The spec's order: lexical, case-insensitive ("A" and "a" by bytes between themselves). The
      // first condition on the name lets a page start with a seek into tags_listing, not a scan.
      tags: s(`SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id
               WHERE r.name = ? AND t.name COLLATE NOCASE >= ? AND (t.name COLLATE NOCASE, t.name) > (?, ?)
               ORDER BY t.name COLLATE NOCASE, t.name LIMIT ?`),
      repositories: s(`SELECT r.name FROM repositories r WHERE r.name > ?
                       AND EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id) ORDER BY r.name LIMIT ?`),
      // A subject's referrers in two orders (referrersPage): as pushed (all of them, for `referrers`),
      // and by digest after a page's end, which the manifests_referrers index gives without a sort.
      // `@type IS NULL`: no artifactType asked.
      referrersByAge: s(`SELECT m.digest, m.media_type, m.artifact_type, m.annotations, m.size FROM manifests m
                         JOIN repositories r ON r.id = m.repository_id WHERE r.name = @repo AND m.subject = @subject
                         AND (@type IS NULL OR m.artifact_type = @type) ORDER BY m.created_at, m.digest`),
      referrersByDigest: s(`SELECT m.digest, m.media_type, m.artifact_type, m.annotations, m.size FROM manifests m
                            JOIN repositories r ON r.id = m.repository_id WHERE r.name = @repo AND m.subject = @subject
                            AND (@type IS NULL OR m.artifact_type = @type) AND m.digest > @after ORDER BY m.digest`),
    };
  }

  async blob(repo: string, digest: Digest): Promise<BlobInfo | undefined> {
    const row = this.q.blob!.get(repo, digest) as { size: number } | undefined;
    return row ? { digest, size: row.size } : this.linkAbsent();
  }

  /**
   * A link gone may be another process's gc, which removes a manifest with its links: the cached
   * manifests are checked now, not up to OUTSIDE_WRITES_SEEN_MS later, so that the manifest is not
   * served after its layer has answered 404.
   */
  private linkAbsent(): undefined {
    this.noticeOutsideWrites(true);
    return undefined;
  }

  async manifest(repo: string, digest: Digest): Promise<StoredManifest | undefined> {
    return this.cached(repo, digest, () => toStored(this.q.manifest!.get(repo, digest) as ManifestRow | undefined));
  }

  async taggedManifest(repo: string, tag: string): Promise<StoredManifest | undefined> {
    // A tag and a digest never collide as keys: a digest contains ':', a tag cannot.
    const manifest = this.cached(repo, tag, () => toStored(this.q.tagged!.get(repo, tag) as ManifestRow | undefined));
    if (manifest) this.lifecycle().notePull(repo, tag);
    return manifest;
  }

  /** Garbage collection, retention and fsck queries, sharing this store's manifest cache. */
  lifecycle(): SqliteLifecycle {
    return (this.life ??= new SqliteLifecycle(this.db, (repo) => this.cache.forgetRepository(repo)));
  }

  private cached(repo: string, reference: string, read: () => StoredManifest | undefined): StoredManifest | undefined {
    const now = Date.now();
    this.noticeOutsideWrites();
    const hit = this.cache.get(repo, reference, now);
    if (hit) return hit.manifest;
    const manifest = read();
    this.cache.set(repo, reference, manifest, now);
    return manifest;
  }

  /**
   * Empties the manifest cache if another connection has committed since the last look. Asked at most
   * every OUTSIDE_WRITES_SEEN_MS unless `now` (a monotonic clock: a wall clock set back would pause the
   * checks): the pragma costs about 3 µs, a cache hit less than 1.
   */
  private noticeOutsideWrites(now = false): void {
    const at = performance.now();
    if (!now && at - this.dataVersionAt < OUTSIDE_WRITES_SEEN_MS) return;
    this.dataVersionAt = at;
    const version = this.q.dataVersion!.get();
    if (version !== this.dataVersion) {
      this.cache.clear();
      // Another process may have moved a tag without starting its manifest's grace (an older Wharf).
      this.graceSeen.clear();
    }
    this.dataVersion = version;
  }

  async repositoryExists(repo: string): Promise<boolean> {
    return this.q.repoId!.get(repo) !== undefined;
  }

  async repositoryHasManifests(repo: string): Promise<boolean> {
    return this.q.hasManifests!.get(repo) !== undefined;
  }

  async tags(repo: string, page: Page): Promise<string[] | undefined> {
    if (!(await this.repositoryExists(repo))) return undefined;
    const last = page.last ?? '';
    // Plucked: the names as they come, not an object per row (10,000 tags: 2.5x the requests a second).
    return this.q.tags!.pluck().all(repo, last, last, last, limitOf(page)) as string[];
  }

  async repositories(page: Page): Promise<string[]> {
    return this.q.repositories!.pluck().all(page.last ?? '', limitOf(page)) as string[];
  }

  async referrers(repo: string, subject: Digest): Promise<Descriptor[]> {
    return (this.q.referrersByAge!.all({ repo, subject, type: null }) as ReferrerRow[]).map(toDescriptor);
  }

  async referrersPage(repo: string, subject: Digest, query: ReferrersQuery): Promise<ReferrersSlice> {
    const type = query.artifactType ?? null;
    // Rows as they are stepped through: a page stops reading at its end (the loop's break ends the query).
    const rows = function* (statement: Statement, params: Record<string, unknown>): Generator<Descriptor> {
      for (const row of statement.iterate(params) as IterableIterator<ReferrerRow>) yield toDescriptor(row);
    };
    return referrersPage(
      () => rows(this.q.referrersByAge!, { repo, subject, type }),
      (after) => rows(this.q.referrersByDigest!, { repo, subject, type, after: after ?? '' }),
      query,
    );
  }

  async linkBlob(repo: string, blob: BlobInfo): Promise<void> {
    const now = Date.now();
    this.db.transaction(() => {
      const id = this.ensureRepository(repo, now);
      const added = this.q.insertBlob!.run(blob.digest, blob.size, now).changes > 0;
      this.q.link!.run(id, blob.digest, now);
      if (added) this.healBroken(blob.digest, now);
    })();
  }

  /**
   * A blob whose row is new may be one fsck --repair dropped (its file was lost or corrupt), with
   * the links of every repository that had it: a layer shared by several images. Pushed again to any
   * repository, it is linked again in each repository whose manifests fsck marked broken for it, and
   * a manifest with nothing missing any more is whole again (no Warning): before, each repository
   * had to push the image again, and fsck kept reporting "missing content" once the file was back.
   * Two index lookups for a blob nothing references (every new layer).
   */
  private healBroken(digest: Digest, now: number): void {
    this.q.relinkBroken!.run(now, digest);
    for (const row of this.q.brokenReferencing!.all(digest) as { repo: string; digest: Digest; whole: number }[]) {
      if (row.whole) this.q.clearBroken!.run(row.repo, row.digest);
      this.cache.forgetRepository(row.repo);
    }
  }

  async renewBlobLink(repo: string, digest: Digest): Promise<BlobInfo | undefined> {
    const now = Date.now();
    const link = this.q.linkAge!.get(repo, digest) as { linked_at: number; size: number } | undefined;
    if (!link) return this.linkAbsent();
    // One query for a link renewed in the last second (a HEAD had three: the cost of a layer check).
    if (link.linked_at >= now - RENEW_MS) return { digest, size: link.size };
    // A renewal that changed the row renewed a link that is still there: a collection that comes
    // after finds it young (SqliteLifecycle.collectRepository reads the ages in its transaction).
    // Otherwise a collection may have taken it first (or another request renewed it, or the lock
    // stayed taken): read again, and a link gone is absent (the client uploads the layer).
    if (await this.writeUnheld(() => this.q.renewLink!.run(now, repo, digest, now - RENEW_MS).changes > 0)) return { digest, size: link.size };
    return this.blob(repo, digest);
  }

  async renewedManifest(repo: string, digest: Digest): Promise<StoredManifest | undefined> {
    const now = Date.now();
    const key = `${repo}@${digest}`;
    this.noticeOutsideWrites();
    if ((this.graceSeen.get(key) ?? -Infinity) >= now - RENEW_MS) return this.manifest(repo, digest);
    const grace = this.q.graceOf!.get(repo, digest) as { since: number; tagged: number } | undefined;
    // Tagged, it is kept anyway; started in the last second, it needs nothing written.
    if (grace && (grace.tagged || grace.since >= now - RENEW_MS)) return this.seenGrace(key, grace.tagged ? now : grace.since, repo, digest);
    // Renewed, it is a manifest still there: a collection that comes after finds its grace started.
    // Otherwise a collection may have taken it (or the lock stayed taken): read again, not from the
    // cache of the last 0.1 s, and a manifest gone is absent (the client pushes it again).
    if (grace && (await this.writeUnheld(() => this.q.renewGrace!.run(now, repo, digest).changes > 0))) return this.seenGrace(key, now, repo, digest);
    this.noticeOutsideWrites(true);
    return this.manifest(repo, digest);
  }

  private seenGrace(key: string, since: number, repo: string, digest: Digest): Promise<StoredManifest | undefined> {
    if (this.graceSeen.size >= GRACE_SEEN_MAX) this.graceSeen.clear();
    this.graceSeen.set(key, since);
    return this.manifest(repo, digest);
  }

  /**
   * The write of a renewal, never waiting for the lock inside SQLite: better-sqlite3 waits there with
   * the event loop held, and a blob HEAD made every request wait with it while another process wrote
   * (2.5 s behind a `wharf` command's transaction, the diff review). Asked again every 10 ms instead,
   * for up to RENEW_WAIT_MS; then false, as for a write that changed nothing, and answered as before,
   * unrenewed, as on a database that refuses writes.
   */
  private async writeUnheld(write: () => boolean): Promise<boolean> {
    const until = Date.now() + RENEW_WAIT_MS;
    for (;;) {
      try {
        return withBusyTimeout(this.db, 0, write);
      } catch (err) {
        if (!isBusy(err) || Date.now() >= until) return false;
      }
      await sleep(10);
    }
  }

  async repositoriesWithBlob(digest: Digest, limit: number): Promise<string[]> {
    return (this.q.holders!.all(digest, limit) as { name: string }[]).map((row) => row.name);
  }

  async unlinkBlob(repo: string, digest: Digest): Promise<boolean> {
    return this.q.unlink!.run(digest, repo).changes > 0;
  }

  async putManifest(repo: string, manifest: ParsedManifest, bytes: Buffer, tags: readonly string[]): Promise<void> {
    const now = Date.now();
    this.cache.forgetRepository(repo);
    this.db.transaction(() => {
      const id = this.ensureRepository(repo, now);
      for (const blob of manifest.blobs) {
        const row = this.q.blobById!.get(id, blob.digest) as { size: number } | undefined;
        if (!row) throw new RegistryError('MANIFEST_BLOB_UNKNOWN', 'manifest references a blob unknown to the repository', { digest: blob.digest });
        if (row.size !== blob.size) {
          throw new RegistryError('MANIFEST_INVALID', 'descriptor size does not match the stored blob', {
            digest: blob.digest,
            size: blob.size,
            stored: row.size,
          });
        }
      }
      for (const child of manifest.manifests) {
        if (!this.q.manifestExists!.get(id, child.digest)) {
          throw new RegistryError('MANIFEST_BLOB_UNKNOWN', 'index references a manifest unknown to the repository', { digest: child.digest });
        }
      }
      this.q.insertManifest!.run(
        id,
        manifest.digest,
        manifest.mediaType,
        manifest.artifactType ?? null,
        manifest.subject?.digest ?? null,
        manifest.annotations ? JSON.stringify(manifest.annotations) : null,
        bytes.length,
        bytes,
        now,
      );
      for (const blob of manifest.blobs) this.q.insertRef!.run(id, manifest.digest, blob.digest, 'blob');
      for (const child of manifest.manifests) this.q.insertRef!.run(id, manifest.digest, child.digest, 'manifest');
      for (const tag of tags) {
        this.q.tagLeaves!.run(now, id, tag, manifest.digest);
        this.q.upsertTag!.run(id, tag, manifest.digest, now);
      }
    })();
  }

  async deleteManifest(repo: string, digest: Digest): Promise<boolean> {
    this.cache.forgetRepository(repo);
    return this.q.deleteManifest!.run(digest, repo).changes > 0;
  }

  async deleteTag(repo: string, tag: string): Promise<boolean> {
    this.cache.forgetRepository(repo);
    return this.db.transaction(() => {
      const left = this.q.deleteTag!.get(tag, repo) as { repository_id: number; digest: Digest } | undefined;
      if (left) this.q.startGrace!.run(left.repository_id, left.digest, Date.now());
      return left !== undefined;
    })();
  }

  private ensureRepository(repo: string, now: number): number {
    this.q.insertRepo!.run(repo, now);
    return (this.q.repoId!.get(repo) as { id: number }).id;
  }
}

interface ReferrerRow {
  digest: Digest;
  media_type: string;
  artifact_type: string | null;
  annotations: string | null;
  size: number;
}

function toDescriptor(r: ReferrerRow): Descriptor {
  return {
    mediaType: r.media_type,
    digest: r.digest,
    size: r.size,
    ...(r.artifact_type ? { artifactType: r.artifact_type } : {}),
    ...(r.annotations ? { annotations: JSON.parse(r.annotations) as Record<string, string> } : {}),
  };
}

function toStored(row: ManifestRow | undefined): StoredManifest | undefined {
  if (!row) return undefined;
  return { digest: row.digest as Digest, mediaType: row.media_type, bytes: row.content, ...(row.broken ? { warning: BROKEN_MANIFEST_WARNING } : {}) };
}
