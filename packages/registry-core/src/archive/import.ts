import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { open, readFile, unlink, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { PassThrough, Readable, finished } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { tarStream } from './tar.js';
import type { BlobInfo } from '../blob-store.js';
import { hashToDigest, newHash, tryParseDigest, type Digest, type DigestAlgorithm } from '../digest.js';
import { RegistryError } from '../errors.js';
import { hashingStage } from '../hashing.js';
import { JsonShapeError, parseBoundedJson } from '../json-shape.js';
import type { LocalRegistry } from '../local-registry.js';
import { MAX_MANIFEST_BYTES, parseManifest, type Descriptor, type ParsedManifest } from '../manifest.js';
import { MediaType } from '../media-types.js';
import { assertRepositoryName, assertTag } from '../reference.js';
import { parseImageName } from './image-name.js';

export interface ImportOptions {
  /** Store every image of the archive in this repository (its tags kept unless `tag` is given). */
  readonly repository?: string;
  /** The tag, for an archive of one image; needs `repository`. */
  readonly tag?: string;
  readonly signal?: AbortSignal;
}

export interface ImportDeps {
  readonly registry: LocalRegistry;
  /** temporary_registry_storage: entries are spooled there (same filesystem as the blob store). */
  readonly tempRoot: string;
  /** Why nothing may be imported into `repo` (a name a push is refused too), or undefined. */
  readonly refusal?: (repo: string) => string | undefined;
}

export interface ImportedImage {
  readonly repository: string;
  readonly tags: readonly string[];
  readonly digest: Digest;
  readonly mediaType: string;
}

export interface ImportResult {
  readonly format: 'oci-layout' | 'docker-archive';
  readonly images: readonly ImportedImage[];
  /** Blob files moved into the store, and their bytes. */
  readonly blobs: number;
  readonly bytes: number;
}

const REF_NAME = 'org.opencontainers.image.ref.name';
const CONTAINERD_NAME = 'io.containerd.image.name';
/** index.json, manifest.json, repositories and configs are read whole; nothing else is. */
const MAX_JSON_BYTES = 16 * 1024 * 1024;
/**
 * Entries up to this size are read whole and written behind the reading, WRITES_BEHIND at once at
 * most: 2.25 MiB of memory at worst, less than one larger entry's write stream may hold (1 MiB each).
 * Every other entry streams to its file.
 */
const SMALL_ENTRY_BYTES = 256 * 1024;
const WRITES_BEHIND = 8;
const DOCKER_LAYER_TAR = 'application/vnd.docker.image.rootfs.diff.tar';
const DOCKER_LAYER_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip';

interface Spooled {
  readonly file: string;
  readonly digest: Digest;
  readonly size: number;
  /** The repository it was adopted into (the file has moved there); others mount it from there. */
  adoptedTo?: string;
}

function invalid(message: string, detail?: unknown): RegistryError {
  return new RegistryError('MANIFEST_INVALID', message, detail);
}

/**
 * Imports a `docker save` tarball (manifest.json, repositories, layer tars, config JSON) or an OCI image
 * layout tarball (oci-layout, index.json, blobs/<algorithm>/<hex>), plain or gzip-compressed (told by its
 * magic bytes). A tar stream is read once, in order, and manifest.json or index.json may come after the
 * layers, so every entry is spooled to a file in the temporary storage while it is hashed (an entry named
 * by a digest must match it); no layer is ever held in memory. At the end the manifests are read, every
 * blob they need is moved into the blob store and linked, and the manifests are stored: OCI manifests byte
 * for byte, docker-save images as a Docker v2 schema 2 manifest over the layers exactly as they are.
 */
export async function importArchive(source: Readable, deps: ImportDeps, options: ImportOptions = {}): Promise<ImportResult> {
  if (options.tag !== undefined && options.repository === undefined) {
    throw new RegistryError('NAME_INVALID', 'a tag needs a repository (--repository with --tag)', { tag: options.tag });
  }
  if (options.repository !== undefined) {
    assertRepositoryName(options.repository);
    refuseName(deps, options.repository);
  }
  if (options.tag !== undefined) assertTag(options.tag);
  const archive = new SpooledArchive(deps.tempRoot);
  try {
    await archive.read(source, options.signal);
    const importer = new Importer(archive, deps, options);
    if (archive.has('index.json') && archive.has('oci-layout')) return await importer.ociLayout();
    if (archive.has('manifest.json')) return await importer.dockerArchive();
    throw invalid('not an image archive: no manifest.json (docker save) and no oci-layout and index.json (OCI image layout)');
  } finally {
    await archive.cleanup();
  }
}

/** The names a `docker save` manifest.json entry gives its image. */
function repoTagsOf(entry: unknown): string[] {
  const tags = (entry as { RepoTags?: unknown } | null)?.RepoTags;
  return Array.isArray(tags) ? tags.filter((t): t is string => typeof t === 'string') : [];
}

function refuseName(deps: ImportDeps, repo: string): void {
  const reason = deps.refusal?.(repo);
  if (reason !== undefined) throw new RegistryError('UNSUPPORTED', reason, { repository: repo });
}

/** Entries of a tar stream, each in its own temp file, by name and by digest. */
class SpooledArchive {
  private readonly byName = new Map<string, Spooled>();
  private readonly byDigest = new Map<Digest, Spooled>();
  private readonly aliases = new Map<string, string>();
  private readonly files: string[] = [];
  private readonly writes = new Set<Promise<void>>();
  private writeFailure: unknown;
  private readonly prefix = `ingest-import-${randomUUID()}-`;

  constructor(private readonly tempRoot: string) {}

  async read(source: Readable, signal?: AbortSignal): Promise<void> {
    const stages = await decompressed(source);
    const extract = tarStream().extract();
    const feeding = pipeline([...stages, extract], signal ? { signal } : {}).then(
      () => undefined,
      (err: unknown) => err,
    );
    try {
      for await (const entry of extract) {
        signal?.throwIfAborted();
        const name = normalizeName(entry.header.name);
        const type = entry.header.type ?? 'file';
        if ((type === 'file' || type === 'contiguous-file') && name !== '') {
          await this.spool(name, entry as unknown as AsyncIterable<Buffer>, entry.header.size ?? Infinity);
          continue;
        }
        if (type === 'symlink' && entry.header.linkname) {
          this.aliases.set(name, normalizeName(posix.join(posix.dirname(name), entry.header.linkname)));
        } else if (type === 'link' && entry.header.linkname) {
          this.aliases.set(name, normalizeName(entry.header.linkname));
        }
        for await (const _ of entry) {
          // directories, links and pax headers carry no content we keep
        }
      }
    } catch (err) {
      extract.destroy(err as Error);
      throw asArchiveError(await orFeedingError(feeding, err));
    }
    const failed = await feeding;
    if (failed) throw asArchiveError(failed);
    await this.writesDone();
  }

  /**
   * One entry into a temp file of its own, hashed on the way. Not fsynced: most entries of an archive
   * are never stored (a docker save's `json` and `VERSION` files, or whatever else a tar holds), so
   * only what is adopted into the blob store is, then (`durable`).
   */
  private async spool(name: string, entry: AsyncIterable<Buffer>, size: number): Promise<void> {
    // A small entry's write failed (a full disk): nothing more is read, however large.
    if (this.writeFailure !== undefined) throw this.writeFailure;
    const expected = digestNamed(name);
    const algorithm: DigestAlgorithm = expected ? (expected.split(':')[0] as DigestAlgorithm) : 'sha256';
    const file = join(this.tempRoot, `${this.prefix}${this.files.length}`);
    this.files.push(file);
    const hash = newHash(algorithm);
    const counter = { bytes: 0 };
    // A small entry is read whole and written while the next ones are read: one at a time, an
    // archive of many small entries waited on a file's open, write and close for each of them.
    let small: Buffer | undefined;
    if (size <= SMALL_ENTRY_BYTES) {
      const chunks: Buffer[] = [];
      for await (const chunk of hashingStage(hash, counter)(entry)) chunks.push(chunk);
      small = Buffer.concat(chunks);
    } else {
      const sink = createWriteStream(file, { highWaterMark: 1024 * 1024 });
      try {
        await pipeline(entry, hashingStage(hash, counter), sink);
      } catch (err) {
        // The pipeline may reject while the file is still being opened (always, on Node 20, for an entry
        // cut at once): its open would then create the file after `cleanup` removed it.
        if (!sink.closed) await once(sink, 'close');
        throw err;
      }
    }
    const digest = hashToDigest(algorithm, hash);
    if (expected && digest !== expected) {
      throw new RegistryError('DIGEST_INVALID', 'an archive entry does not match the digest in its name', { entry: name, expected, actual: digest });
    }
    const known = this.byDigest.get(digest);
    if (known) {
      // The same content twice: keep the first copy.
      this.byName.set(name, known);
      if (!small) await unlinkIfThere(file);
      return;
    }
    if (small) await this.writeBehind(file, small);
    const spooled: Spooled = { file, digest, size: counter.bytes };
    this.byName.set(name, spooled);
    this.byDigest.set(digest, spooled);
  }

  /** Writes `bytes` to `file` with at most WRITES_BEHIND others under way; a failure is thrown by a later call or `writesDone`. */
  private async writeBehind(file: string, bytes: Buffer): Promise<void> {
    if (this.writeFailure !== undefined) throw this.writeFailure;
    while (this.writes.size >= WRITES_BEHIND) await Promise.race(this.writes);
    if (this.writeFailure !== undefined) throw this.writeFailure;
    const write: Promise<void> = writeFile(file, bytes).then(
      () => void this.writes.delete(write),
      (err: unknown) => {
        this.writeFailure ??= err;
        this.writes.delete(write);
      },
    );
    this.writes.add(write);
  }

  private async writesDone(): Promise<void> {
    await Promise.all(this.writes);
    if (this.writeFailure !== undefined) throw this.writeFailure;
  }

  has(name: string): boolean {
    return this.get(name) !== undefined;
  }

  get(name: string): Spooled | undefined {
    let current = normalizeName(name);
    for (let hops = 0; hops < 16; hops++) {
      const found = this.byName.get(current);
      if (found) return found;
      const next = this.aliases.get(current);
      if (next === undefined) return undefined;
      current = next;
    }
    return undefined;
  }

  blob(digest: Digest): Spooled | undefined {
    return this.byDigest.get(digest);
  }

  async readSmall(spooled: Spooled, cap: number, what: string): Promise<Buffer> {
    if (spooled.size > cap) throw new RegistryError('TOO_LARGE', `${what} is larger than ${cap} bytes`, { size: spooled.size });
    return readFile(spooled.file);
  }

  async json(name: string): Promise<unknown> {
    const spooled = this.get(name);
    if (!spooled) throw invalid(`the archive has no ${name}`);
    try {
      return parseBoundedJson(await this.readSmall(spooled, MAX_JSON_BYTES, name));
    } catch (err) {
      if (err instanceof RegistryError) throw err;
      if (err instanceof JsonShapeError) throw invalid(`${name} in the archive is refused: ${err.message}`);
      throw invalid(`${name} in the archive is not valid JSON`);
    }
  }

  async cleanup(): Promise<void> {
    // A write still under way (the read failed meanwhile) would create its file after the unlink.
    await Promise.all(this.writes);
    await Promise.all(this.files.map(unlinkIfThere));
  }
}

interface NamedImage {
  readonly repo: string;
  readonly tags: string[];
}

class Importer {
  private blobCount = 0;
  private bytes = 0;

  private readonly registry: LocalRegistry;

  constructor(
    private readonly archive: SpooledArchive,
    private readonly deps: ImportDeps,
    private readonly options: ImportOptions,
  ) {
    this.registry = deps.registry;
  }

  /** Refuses the archive before anything is stored when a name it gives an image may not be imported into. */
  private checkNames(names: readonly { repo?: string }[]): void {
    if (this.options.repository !== undefined) return;
    for (const n of names) if (n.repo) refuseName(this.deps, n.repo);
  }

  async ociLayout(): Promise<ImportResult> {
    const index = (await this.archive.json('index.json')) as { manifests?: unknown };
    if (!Array.isArray(index.manifests) || index.manifests.length === 0) throw invalid('index.json lists no manifests');
    // One entry per manifest; several index.json entries may name the same manifest with other tags.
    const byDigest = new Map<Digest, { descriptor: Descriptor; names: { repo?: string; tag?: string }[] }>();
    for (const raw of index.manifests as Descriptor[]) {
      if (typeof raw?.digest !== 'string' || !tryParseDigest(raw.digest) || typeof raw.mediaType !== 'string') {
        throw invalid('index.json has an entry without a valid digest and mediaType');
      }
      let entry = byDigest.get(raw.digest);
      if (!entry) byDigest.set(raw.digest, (entry = { descriptor: raw, names: [] }));
      entry.names.push(ociName(raw.annotations));
    }
    this.checkSingle(byDigest.size);
    this.checkNames([...byDigest.values()].flatMap((e) => e.names));
    const images: ImportedImage[] = [];
    for (const { descriptor, names } of byDigest.values()) {
      for (const target of this.targets(names, descriptor.digest)) {
        const { bytes, manifest } = await this.storeTree(target.repo, descriptor.digest, descriptor.mediaType);
        await this.putTop(target, bytes, manifest);
        images.push({ repository: target.repo, tags: target.tags, digest: manifest.digest, mediaType: manifest.mediaType });
      }
    }
    return { format: 'oci-layout', images, blobs: this.blobCount, bytes: this.bytes };
  }

  async dockerArchive(): Promise<ImportResult> {
    const entries = (await this.archive.json('manifest.json')) as unknown;
    if (!Array.isArray(entries) || entries.length === 0) throw invalid('manifest.json lists no images');
    this.checkSingle(entries.length);
    this.checkNames(entries.flatMap((raw) => repoTagsOf(raw).map((t) => parseImageName(t) ?? {})));
    const images: ImportedImage[] = [];
    for (const [i, raw] of entries.entries()) {
      const entry = raw as { Config?: unknown; RepoTags?: unknown; Layers?: unknown };
      if (typeof entry.Config !== 'string' || !Array.isArray(entry.Layers) || entry.Layers.some((l) => typeof l !== 'string')) {
        throw invalid(`manifest.json entry ${i} needs Config and Layers`);
      }
      const config = this.archive.get(entry.Config);
      if (!config) throw invalid(`manifest.json names ${entry.Config}, which is not in the archive`);
      const configDoc = (await this.archive.json(entry.Config)) as { rootfs?: { diff_ids?: unknown } } | null;
      const diffIds = Array.isArray(configDoc?.rootfs?.diff_ids) ? (configDoc.rootfs.diff_ids as unknown[]) : undefined;
      const layers: Descriptor[] = [];
      for (const [n, path] of (entry.Layers as string[]).entries()) {
        const layer = this.archive.get(path);
        if (!layer) throw invalid(`manifest.json names ${path}, which is not in the archive`);
        const mediaType = await layerMediaType(layer.file);
        if (mediaType === DOCKER_LAYER_TAR && diffIds && diffIds[n] !== undefined && diffIds[n] !== layer.digest) {
          throw new RegistryError('DIGEST_INVALID', 'a layer does not match the diff_id of its config', { layer: path, expected: diffIds[n], actual: layer.digest });
        }
        layers.push({ mediaType, digest: layer.digest, size: layer.size });
      }
      const doc = {
        schemaVersion: 2,
        mediaType: MediaType.DockerManifest,
        config: { mediaType: MediaType.DockerConfig, size: config.size, digest: config.digest },
        layers,
      };
      const bytes = Buffer.from(JSON.stringify(doc, null, 3));
      const manifest = parseManifest(bytes, MediaType.DockerManifest);
      const names = repoTagsOf(entry).map((t) => parseImageName(t) ?? {});
      for (const target of this.targets(names, manifest.digest)) {
        for (const blob of manifest.blobs) await this.ensureBlob(target.repo, blob);
        await this.putTop(target, bytes, manifest);
        images.push({ repository: target.repo, tags: target.tags, digest: manifest.digest, mediaType: manifest.mediaType });
      }
    }
    return { format: 'docker-archive', images, blobs: this.blobCount, bytes: this.bytes };
  }

  private checkSingle(count: number): void {
    if (this.options.tag !== undefined && count > 1) {
      throw new RegistryError('TAG_INVALID', `the archive holds ${count} images; --tag names one (leave it out to keep the archive's tags)`, { images: count });
    }
  }

  /** Where an image goes: the repository and tag given, or the names the archive gives it. */
  private targets(names: readonly { repo?: string; tag?: string }[], digest: Digest): NamedImage[] {
    if (this.options.repository !== undefined) {
      const tags = this.options.tag !== undefined ? [this.options.tag] : unique(names.flatMap((n) => (n.tag ? [n.tag] : [])));
      return [{ repo: this.options.repository, tags }];
    }
    const out = new Map<string, string[]>();
    for (const n of names) {
      if (!n.repo) continue;
      const tags = out.get(n.repo) ?? [];
      if (n.tag && !tags.includes(n.tag)) tags.push(n.tag);
      out.set(n.repo, tags);
    }
    if (out.size === 0) {
      throw new RegistryError('NAME_INVALID', 'the archive does not name this image; give a repository (--repository, and --tag)', { digest });
    }
    return [...out].map(([repo, tags]) => ({ repo, tags }));
  }

  /** Stores a manifest's blobs and child manifests (not the manifest itself); returns it parsed. */
  private async storeTree(repo: string, digest: Digest, mediaType: string, depth = 0): Promise<{ bytes: Buffer; manifest: ParsedManifest }> {
    if (depth > 8) throw invalid('manifests nest too deep');
    const spooled = this.archive.blob(digest);
    if (!spooled) throw invalid('a manifest is missing from the archive', { digest });
    const bytes = await this.archive.readSmall(spooled, MAX_MANIFEST_BYTES, `manifest ${digest}`);
    const manifest = parseManifest(bytes, mediaType, tryParseDigest(digest)!.algorithm);
    for (const child of manifest.manifests) {
      // A child the archive holds is put again, as a push would: that restarts its age, so a collection
      // running meanwhile does not take it (untagged and old) before its index is in. One the archive
      // lacks may already be in the repository.
      if (!this.archive.blob(child.digest) && (await this.registry.manifest(repo, child.digest))) continue;
      const stored = await this.storeTree(repo, child.digest, child.mediaType, depth + 1);
      await this.registry.putManifest(repo, child.digest, stored.bytes, child.mediaType);
    }
    for (const blob of manifest.blobs) await this.ensureBlob(repo, blob);
    return { bytes, manifest };
  }

  private async ensureBlob(repo: string, descriptor: Descriptor): Promise<void> {
    // Found linked, the link is renewed as a push's HEAD renews it: a link older than the grace would
    // otherwise be a collection's to take before the manifest that needs it is in.
    const linked = await this.registry.statBlob(repo, descriptor.digest);
    if (linked) return;
    const spooled = this.archive.blob(descriptor.digest);
    if (!spooled) throw new RegistryError('MANIFEST_BLOB_UNKNOWN', 'a blob is missing from the archive', { digest: descriptor.digest });
    if (spooled.size !== descriptor.size) {
      throw invalid('a blob in the archive does not have the size its descriptor says', { digest: descriptor.digest, size: descriptor.size, actual: spooled.size });
    }
    const blob: BlobInfo = { digest: spooled.digest, size: spooled.size };
    if (spooled.adoptedTo !== undefined) {
      if (!(await this.registry.mountBlob(repo, blob.digest, spooled.adoptedTo))) {
        throw new RegistryError('BLOB_UNKNOWN', 'a blob imported a moment ago is gone', { digest: blob.digest });
      }
      return;
    }
    await durable(spooled.file);
    await this.registry.adoptBlob(repo, spooled.file, blob);
    spooled.adoptedTo = repo;
    this.blobCount += 1;
    this.bytes += blob.size;
  }

  private async putTop(target: NamedImage, bytes: Buffer, manifest: ParsedManifest): Promise<void> {
    const [first, ...more] = target.tags;
    await this.registry.putManifest(target.repo, first ?? manifest.digest, bytes, manifest.mediaType, more);
  }
}

/** The name an OCI index.json entry gives its manifest (io.containerd.image.name, or a ref.name tag or reference). */
function ociName(annotations: Record<string, string> | undefined): { repo?: string; tag?: string } {
  const full = annotations?.[CONTAINERD_NAME];
  const ref = annotations?.[REF_NAME];
  const fromFull = full ? parseImageName(full) : undefined;
  if (ref && /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/.test(ref)) return { ...(fromFull ? { repo: fromFull.repo } : {}), tag: ref };
  const fromRef = ref ? parseImageName(ref) : undefined;
  const name = fromRef ?? fromFull;
  return name ? { repo: name.repo, ...(name.tag ? { tag: name.tag } : {}) } : {};
}

/** `blobs/sha256/<hex>` → its digest; `<hex>.tar`, `<hex>.json` or `<hex>` (docker save) → sha256:<hex>. */
function digestNamed(name: string): Digest | undefined {
  const oci = /^blobs\/(sha256|sha512)\/([a-f0-9]+)$/.exec(name);
  if (oci) {
    const parsed = tryParseDigest(`${oci[1]}:${oci[2]}`);
    if (!parsed) throw new RegistryError('DIGEST_INVALID', 'an archive entry under blobs/ is not named by a digest', { entry: name });
    return parsed.digest;
  }
  const base = /^([a-f0-9]{64})(?:\.tar|\.json)?$/.exec(posix.basename(name));
  return base ? (`sha256:${base[1]}` as Digest) : undefined;
}

function normalizeName(name: string): string {
  const normal = posix.normalize(name.replace(/\\/g, '/')).replace(/^(\.\/)+/, '').replace(/\/+$/, '');
  return normal === '.' ? '' : normal.replace(/^\/+/, '');
}

/**
 * The source, gunzipped when it starts with gzip's magic bytes. The source is read through a pipe
 * into a stream of our own, which is what the pipeline destroys when the import fails: never the
 * source, which stays its owner's. An HTTP request's body is then read to its end and dropped by
 * the server after the error's answer (node resumes it then, which a `readable` listener left on it
 * would prevent: the client, still sending, was cut 2 s later instead of seeing its answer).
 */
async function decompressed(source: Readable): Promise<(Readable | NodeJS.ReadWriteStream)[]> {
  const head: Buffer[] = [];
  let length = 0;
  let ended = false;
  const iterator = source.iterator({ destroyOnReturn: false }) as AsyncIterableIterator<Buffer | Uint8Array>;
  try {
    while (length < 2) {
      const next = await iterator.next();
      if (next.done) {
        ended = true;
        break;
      }
      const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
      head.push(chunk);
      length += chunk.length;
    }
  } finally {
    // Stops listening without destroying the source.
    await iterator.return?.();
  }
  const first = head[0];
  const isGzip = first !== undefined && (first.length >= 2 ? first[0] === 0x1f && first[1] === 0x8b : first[0] === 0x1f && head[1]?.[0] === 0x8b);
  let rest: Readable;
  if (ended) {
    rest = Readable.from(head, { objectMode: false });
  } else {
    const pass = new PassThrough();
    rest = pass;
    for (const chunk of head) pass.write(chunk);
    // A pipe does not pass on its source's end by error or premature close: told here, the import
    // fails instead of waiting for the rest for ever.
    finished(source, (err) => {
      if (err) pass.destroy(err);
    });
    source.pipe(pass);
  }
  return isGzip ? [rest, createGunzip()] : [rest];
}

/** fsync: a spooled file's bytes are on disk before the blob store takes it in. */
async function durable(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function unlinkIfThere(file: string): Promise<void> {
  await unlink(file).catch((err: unknown) => {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw err;
  });
}

async function layerMediaType(file: string): Promise<string> {
  const handle = await open(file, 'r');
  try {
    const magic = Buffer.alloc(4);
    const { bytesRead } = await handle.read(magic, 0, 4, 0);
    if (bytesRead >= 2 && magic[0] === 0x1f && magic[1] === 0x8b) return DOCKER_LAYER_GZIP;
    if (bytesRead === 4 && magic.readUInt32LE(0) === 0xfd2fb528) {
      throw invalid('zstd-compressed layers cannot go in a Docker v2 schema 2 manifest; import an OCI layout instead');
    }
    return DOCKER_LAYER_TAR;
  } finally {
    await handle.close();
  }
}

/**
 * A tar or gzip stream that does not parse is the client's to fix (MANIFEST_INVALID, 400); a file system
 * error (ENOSPC, EIO: a code like E…) stays what it is.
 */
function asArchiveError(err: unknown): unknown {
  if (err instanceof RegistryError) return err;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return err;
  return invalid(`not a readable tar archive (plain or gzip): ${(err as Error).message ?? String(err)}`);
}

async function orFeedingError(feeding: Promise<unknown>, err: unknown): Promise<unknown> {
  // A broken input (bad gzip, truncated tar) surfaces in the feeding pipeline; prefer its message.
  const fed = await Promise.race([feeding, new Promise((r) => setTimeout(r, 50, undefined))]);
  return fed instanceof Error && !(err instanceof RegistryError) ? fed : err;
}

function unique<T>(values: readonly T[]): T[] {
  return [...new Set(values)];
}
