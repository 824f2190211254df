import { createReadStream, existsSync, statSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { hashToDigest, newHash, parseDigest, type Digest } from '../digest.js';
import type { FsBlobStore } from '../fs/fs-blob-store.js';
import type { SqliteMetadataStore } from '../sqlite/sqlite-metadata-store.js';
import { SEALED_UPLOAD_SUFFIX } from '../uploads.js';
import { blobFiles, type BlobFile } from './blob-files.js';
import { removeFileSync } from './garbage-collector.js';

/**
 * What fsck needs of one blob store and the metadata that describes it. The registry store's comes
 * from `registryCatalog`; the proxy package provides one for its cache.
 */
export interface BlobCatalog {
  readonly name: string;
  readonly blobs: FsBlobStore;
  /** The row of a blob; undefined when the metadata does not know it. */
  row(digest: Digest): { readonly size: number } | undefined;
  /** Every row, with how many repositories link it. */
  rows(): { readonly digest: Digest; readonly size: number; readonly links: number }[];
  /**
   * Repair of a blob whose file is missing or corrupt: in one transaction, if `stillBad()` and no push is
   * placing the blob, deletes its links and row and runs `removeFile`. true when done.
   */
  drop(digest: Digest, stillBad: () => boolean, removeFile: () => void): boolean;
  /** Removes a file that has no row, if there is still none (and no push is placing it). */
  removeOrphan(digest: Digest, removeFile: () => boolean): boolean;
  /** Until when (ms) a push holds the blob (a lease); undefined when none does, or the store has no leases. */
  leasedUntil?(digest: Digest): number | undefined;
}

export type FindingKind =
  | 'corrupt'
  | 'orphan'
  | 'recent-file'
  | 'unexpected-file'
  | 'missing'
  | 'stale-row'
  | 'size-mismatch'
  | 'broken-manifest'
  | 'whole-manifest'
  | 'upload';

export interface FsckFinding {
  readonly store: string;
  readonly kind: FindingKind;
  /** Errors are problems; notices are reported and change no exit code. */
  readonly severity: 'error' | 'notice';
  readonly message: string;
  /** --repair dealt with it (an error that was repaired is no longer a problem). */
  readonly repaired: boolean;
}

export interface FsckProgress {
  readonly files: number;
  readonly totalFiles: number;
  readonly bytes: number;
  readonly totalBytes: number;
}

export interface FsckOptions {
  readonly repair: boolean;
  /** Files without a row younger than this (ms) may be a push in progress: a notice, never removed. Default 1 h. */
  readonly grace?: number;
  readonly now?: number;
  readonly onProgress?: (progress: FsckProgress) => void;
  /** Called with each finding as it is made (the CLI prints them as they come). */
  readonly onFinding?: (finding: FsckFinding) => void;
  readonly signal?: AbortSignal;
}

export interface FsckReport {
  readonly findings: readonly FsckFinding[];
  readonly files: number;
  readonly bytes: number;
  /** Errors not repaired: the exit code is non-zero when this is. */
  readonly problems: number;
  readonly repaired: number;
}

export interface FsckTargets {
  readonly metadata: SqliteMetadataStore;
  /** The registry store first (its findings decide which manifests are broken); others (the proxy cache) after it. */
  readonly catalogs: readonly BlobCatalog[];
  /** `<temporary_registry_storage>/uploads`. */
  readonly uploadsDir?: string;
}

/** The registry store's catalog: blobs rows and repository links, through the store's lifecycle queries. */
export function registryCatalog(metadata: SqliteMetadataStore, blobs: FsBlobStore): BlobCatalog {
  const life = metadata.lifecycle();
  return {
    name: 'registry',
    blobs,
    row: (digest) => life.blobRow(digest),
    rows: () => [...life.blobRows()],
    drop: (digest, stillBad, removeFile) => life.dropBlob(digest, stillBad, removeFile) !== undefined,
    removeOrphan: (digest, removeFile) => life.removeOrphanFile(digest, removeFile),
    leasedUntil: (digest) => life.leaseUntil(digest),
  };
}

const HOUR = 3_600_000;

/**
 * Checks every blob file against its name (re-hashing it), files without metadata, metadata without
 * files, manifests whose content is missing, and reports unfinished uploads. With `repair`: removes
 * corrupt and orphan files, drops the rows of missing blobs, and flags the manifests that reference
 * missing content as broken (they are still served, with a Warning header; see BROKEN_MANIFEST_WARNING).
 */
export async function fsck(targets: FsckTargets, options: FsckOptions): Promise<FsckReport> {
  const now = options.now ?? Date.now();
  const grace = options.grace ?? HOUR;
  const findings: FsckFinding[] = [];
  const report = (finding: FsckFinding) => {
    findings.push(finding);
    options.onFinding?.(finding);
  };

  const lists: BlobFile[][] = [];
  let totalFiles = 0;
  let totalBytes = 0;
  for (const catalog of targets.catalogs) {
    const files: BlobFile[] = [];
    for await (const file of blobFiles(catalog.blobs.root)) {
      files.push(file);
      totalBytes += file.size;
    }
    totalFiles += files.length;
    lists.push(files);
  }
  const progress = { files: 0, totalFiles, bytes: 0, totalBytes };
  options.onProgress?.({ ...progress });

  /** Blobs of the registry store whose content is gone or bad and still linked (for the manifest pass). */
  const unusable = new Set<Digest>();
  for (const [index, catalog] of targets.catalogs.entries()) {
    const store = catalog.name;
    const present = new Set<Digest>();
    const bad = new Set<Digest>();
    for (const file of lists[index]!) {
      options.signal?.throwIfAborted();
      if (!file.digest) {
        const repaired = options.repair && removeIfSameFile(file);
        report({ store, kind: 'unexpected-file', severity: 'error', message: `${store}: ${file.path} is not a blob file (its name is not the digest its folder says)${repaired ? '; removed' : ''}`, repaired });
        progress.files += 1;
        progress.bytes += file.size;
        options.onProgress?.({ ...progress });
        continue;
      }
      const digest = file.digest;
      const actual = await hashFileWithProgress(file.path, digest, (n) => {
        progress.bytes += n;
        // The last file's last bytes are told with its count, below: not "100%, 3/4 files" first.
        if (progress.bytes < totalBytes) options.onProgress?.({ ...progress });
      });
      progress.files += 1;
      options.onProgress?.({ ...progress });
      if (actual === undefined) continue; // removed meanwhile (gc, a repair): the row pass decides
      if (actual !== digest) {
        bad.add(digest);
        const repaired = options.repair && catalog.drop(digest, () => isSameFile(file), () => removeIfSameFile(file));
        if (!repaired && index === 0) unusable.add(digest);
        report({
          store,
          kind: 'corrupt',
          severity: 'error',
          message: `${store}: blob ${digest} is corrupt: its file hashes to ${actual}${repaired ? '; file removed and its rows dropped' : ''}`,
          repaired,
        });
        continue;
      }
      present.add(digest);
      const row = catalog.row(digest);
      if (!row) {
        // A gc deletes the row, then the file, then commits: a row gone since the file was hashed has
        // taken its file along (or a push has placed it again since). Not an orphan; nothing to repair.
        if (!isSameFile(file)) continue;
        if (file.mtimeMs >= now - grace) {
          report({ store, kind: 'recent-file', severity: 'notice', message: `${store}: blob ${digest} has no metadata yet (written less than ${Math.round(grace / 60_000)} min ago: a push in progress?)`, repaired: false });
          continue;
        }
        // A push placing it, or one killed before its link (its lease runs out 10 minutes after its
        // last renewal): no error, and nothing --repair may remove yet; said so, with until when.
        const held = catalog.leasedUntil?.(digest);
        if (held !== undefined) {
          report({ store, kind: 'recent-file', severity: 'notice', message: `${store}: blob ${digest} has no metadata yet: a push holds it until ${new Date(held).toISOString()} (one in progress, or one stopped; then gc or fsck --repair removes it)`, repaired: false });
          continue;
        }
        const repaired = options.repair && catalog.removeOrphan(digest, () => removeIfSameFile(file));
        report({ store, kind: 'orphan', severity: 'error', message: `${store}: blob file ${digest} (${file.size} bytes) has no metadata${repaired ? '; removed' : ''}`, repaired });
      } else if (row.size !== file.size) {
        if (index === 0) unusable.add(digest);
        report({ store, kind: 'size-mismatch', severity: 'error', message: `${store}: blob ${digest} is ${file.size} bytes on disk, ${row.size} in the metadata`, repaired: false });
      }
    }

    // Metadata without files.
    for (const row of catalog.rows()) {
      if (present.has(row.digest) || bad.has(row.digest)) continue;
      const path = catalog.blobs.pathOf(row.digest);
      if (existsSync(path)) continue; // placed after the walk
      if (row.links === 0) {
        const repaired = options.repair && catalog.drop(row.digest, () => !existsSync(path), () => undefined);
        report({ store, kind: 'stale-row', severity: 'notice', message: `${store}: blob ${row.digest} has a row but no file and no links (an interrupted gc; the next gc removes it)${repaired ? '; row dropped' : ''}`, repaired });
        continue;
      }
      const repaired = options.repair && catalog.drop(row.digest, () => !existsSync(path), () => undefined);
      if (!repaired && index === 0) unusable.add(row.digest);
      report({
        store,
        kind: 'missing',
        severity: 'error',
        message: `${store}: blob ${row.digest} (${row.size} bytes, linked by ${row.links} ${row.links === 1 ? 'repository' : 'repositories'}) has no file${repaired ? '; its rows dropped' : ''}`,
        repaired,
      });
    }
  }

  checkManifests(targets.metadata, unusable, options.repair, report);
  if (targets.uploadsDir) await reportUploads(targets.uploadsDir, now, report);

  const problems = findings.filter((f) => f.severity === 'error' && !f.repaired).length;
  const repaired = findings.filter((f) => f.repaired).length;
  return { findings, files: totalFiles, bytes: totalBytes, problems, repaired };
}

/** Manifests that reference a blob not linked, a blob whose file is gone or bad, or a child manifest not there. */
function checkManifests(metadata: SqliteMetadataStore, unusable: ReadonlySet<Digest>, repair: boolean, report: (f: FsckFinding) => void): void {
  const life = metadata.lifecycle();
  const broken = new Map<string, { repo: string; digest: Digest; missing: string[] }>();
  const add = (repo: string, digest: Digest, what: string) => {
    const key = `${repo}@${digest}`;
    let entry = broken.get(key);
    if (!entry) broken.set(key, (entry = { repo, digest, missing: [] }));
    if (!entry.missing.includes(what)) entry.missing.push(what);
  };
  for (const ref of life.danglingReferences()) add(ref.repo, ref.digest, `${ref.kind} ${ref.child}`);
  for (const blob of unusable) for (const m of life.manifestsReferencing(blob)) add(m.repo, m.digest, `blob ${blob}`);
  for (const entry of broken.values()) {
    if (repair) life.setBroken(entry.repo, entry.digest, true);
    const tags = life.tagsOf(entry.repo, entry.digest);
    report({
      store: 'registry',
      kind: 'broken-manifest',
      severity: 'error',
      message: `registry: manifest ${entry.repo}@${entry.digest}${tags.length ? ` (tags: ${tags.join(', ')})` : ''} references missing content: ${entry.missing.join(', ')}${repair ? '; marked broken (served with a Warning until pushed again)' : ''}`,
      repaired: false,
    });
  }
  for (const flagged of life.brokenManifests()) {
    if (broken.has(`${flagged.repo}@${flagged.digest}`)) continue;
    if (repair) life.setBroken(flagged.repo, flagged.digest, false);
    report({
      store: 'registry',
      kind: 'whole-manifest',
      severity: 'notice',
      message: `registry: manifest ${flagged.repo}@${flagged.digest} is marked broken but its content is all there${repair ? '; mark cleared' : ''}`,
      repaired: repair,
    });
  }
}

async function reportUploads(dir: string, now: number, report: (f: FsckFinding) => void): Promise<void> {
  let ids: string[];
  try {
    ids = (await readdir(dir)).sort();
  } catch {
    return;
  }
  // A sealed upload's file is a completed upload, not an unfinished one.
  for (const id of ids.filter((entry) => !entry.endsWith(SEALED_UPLOAD_SUFFIX))) {
    const folder = join(dir, id);
    let repo = '?';
    let startedAt: number | undefined;
    try {
      const info = JSON.parse(await readFile(join(folder, 'info.json'), 'utf8')) as { repo?: string; startedAt?: string };
      repo = info.repo ?? '?';
      startedAt = info.startedAt ? Date.parse(info.startedAt) : undefined;
    } catch {
      // a session being created, or a leftover without info
    }
    const data = await stat(join(folder, 'data')).catch(() => undefined);
    const size = data?.size ?? 0;
    const written = data ? formatAge(now - data.mtimeMs) : 'never';
    report({
      store: 'uploads',
      kind: 'upload',
      severity: 'notice',
      message: `uploads: unfinished upload ${id} to ${repo}: ${size} bytes received, started ${startedAt !== undefined ? `${formatAge(now - startedAt)} ago` : 'at an unknown time'}, last written ${written}${data ? ' ago' : ''}`,
      repaired: false,
    });
  }
}

export function formatAge(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86_400)}d`;
}

/** The digest of a file's content, reporting bytes as they are read; undefined when it is gone. */
async function hashFileWithProgress(path: string, expected: Digest, onBytes: (n: number) => void): Promise<Digest | undefined> {
  const { algorithm } = parseDigest(expected);
  const hash = newHash(algorithm);
  try {
    for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) {
      hash.update(chunk);
      onBytes(chunk.length);
    }
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return undefined;
    throw err;
  }
  return hashToDigest(algorithm, hash);
}

/** Whether the file at `file.path` is still the one that was examined (a push may have replaced it since). */
function isSameFile(file: BlobFile): boolean {
  try {
    return statSync(file.path).ino === file.ino;
  } catch {
    return false;
  }
}

function removeIfSameFile(file: BlobFile): boolean {
  try {
    return isSameFile(file) && removeFileSync(file.path);
  } catch {
    return false; // a folder, or not ours to remove
  }
}
