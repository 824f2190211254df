import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { tarStream } from './tar.js';
import { digestOf, parseDigest, type Digest } from '../digest.js';
import { RegistryError } from '../errors.js';
import type { LocalRegistry } from '../local-registry.js';
import { parseManifest } from '../manifest.js';
import { MediaType, isIndexMediaType } from '../media-types.js';
import type { StoredManifest } from '../metadata-store.js';
import { parseImageName } from './image-name.js';

const REF_NAME = 'org.opencontainers.image.ref.name';
const CONTAINERD_NAME = 'io.containerd.image.name';

export interface ExportedImage {
  /** As asked: `alice/app:1` or `alice/app@sha256:…`. */
  readonly ref: string;
  readonly repo: string;
  readonly tag?: string;
  /** The manifest as written (a Docker one converted to OCI: see asOci). */
  readonly manifest: StoredManifest;
  /** The digest the registry serves, when the manifest had to be converted to OCI. */
  readonly convertedFrom?: Digest;
  /** For an image manifest: its config and layers (docker-save's manifest.json lists them). */
  readonly image?: { readonly config: Digest; readonly layers: readonly Digest[] };
}

/** Everything an export writes, resolved before the first byte (so a missing image is an error, not a cut stream). */
export interface ExportPlan {
  readonly images: readonly ExportedImage[];
  /** Every manifest (tops and index children) by digest. */
  readonly manifests: ReadonlyMap<Digest, Buffer>;
  /** Every blob, with a repository that links it. */
  readonly blobs: ReadonlyMap<Digest, { readonly repo: string; readonly size: number }>;
}

/**
 * Resolves `alice/app:1`, `alice/app@sha256:…` (and `alice/app`, meaning `:latest`): the manifests,
 * the children of an index (every platform), and the blobs, each checked to be linked in its repository.
 */
export async function planExport(registry: LocalRegistry, refs: readonly string[]): Promise<ExportPlan> {
  if (refs.length === 0) throw new RegistryError('NAME_INVALID', 'name at least one image to export', undefined);
  const images: ExportedImage[] = [];
  const manifests = new Map<Digest, Buffer>();
  const blobs = new Map<Digest, { repo: string; size: number }>();
  const visit = async (repo: string, manifest: StoredManifest, depth: number): Promise<{ written: StoredManifest; image: ExportedImage['image'] }> => {
    if (depth > 8) throw new RegistryError('MANIFEST_INVALID', 'manifests nest too deep', { digest: manifest.digest });
    const parsed = parseManifest(manifest.bytes, manifest.mediaType, parseDigest(manifest.digest).algorithm, { stored: true });
    const children = new Map<Digest, StoredManifest>();
    for (const child of parsed.manifests) {
      const stored = await registry.manifest(repo, child.digest);
      if (!stored) throw new RegistryError('MANIFEST_UNKNOWN', 'an index references a manifest that is not in the repository', { repo, digest: child.digest });
      children.set(child.digest, (await visit(repo, stored, depth + 1)).written);
    }
    const written = asOci(manifest, children);
    manifests.set(written.digest, written.bytes);
    for (const b of parsed.blobs) {
      if (blobs.has(b.digest)) continue;
      const info = await registry.blob(repo, b.digest);
      if (!info) throw new RegistryError('BLOB_UNKNOWN', 'a manifest references a blob that is not in the repository', { repo, digest: b.digest });
      blobs.set(b.digest, { repo, size: info.size });
    }
    if (isIndexMediaType(manifest.mediaType) || parsed.blobs.length === 0) return { written, image: undefined };
    return { written, image: { config: parsed.blobs[0]!.digest, layers: parsed.blobs.slice(1).map((b) => b.digest) } };
  };
  for (const ref of refs) {
    const name = parseImageName(ref);
    if (!name) throw new RegistryError('NAME_INVALID', 'not an image reference (alice/app:1 or alice/app@sha256:…)', { ref });
    const reference = name.digest ?? name.tag ?? 'latest';
    const manifest = await registry.manifest(name.repo, reference);
    if (!manifest) throw new RegistryError('MANIFEST_UNKNOWN', 'no such image', { ref });
    const { written, image } = await visit(name.repo, manifest, 0);
    const tag = name.digest ? undefined : (name.tag ?? 'latest');
    images.push({
      ref,
      repo: name.repo,
      ...(tag ? { tag } : {}),
      manifest: written,
      ...(written.digest !== manifest.digest ? { convertedFrom: manifest.digest } : {}),
      ...(image ? { image } : {}),
    });
  }
  return { images, manifests, blobs };
}

const OCI_LAYER_TYPES: Record<string, string> = {
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.docker.image.rootfs.diff.tar': 'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  [MediaType.DockerConfig]: MediaType.OciConfig,
};

/**
 * A Docker v2 schema 2 manifest or manifest list as OCI (an index's children already converted), what
 * skopeo and podman also do when they write an OCI layout: their oci: and oci-archive: transports find
 * only OCI media types in index.json. Config and layer blobs stay byte for byte (the image ID, the
 * config digest, is unchanged); only the manifest, and so its digest, is new. OCI manifests pass as
 * they are.
 */
function asOci(manifest: StoredManifest, children: ReadonlyMap<Digest, StoredManifest>): StoredManifest {
  let doc: Record<string, unknown>;
  let mediaType: string;
  if (manifest.mediaType === MediaType.DockerManifest) {
    const source = JSON.parse(manifest.bytes.toString('utf8')) as { config: { mediaType: string }; layers: { mediaType: string }[] | null };
    mediaType = MediaType.OciManifest;
    doc = {
      ...source,
      mediaType,
      config: { ...source.config, mediaType: OCI_LAYER_TYPES[source.config.mediaType] ?? source.config.mediaType },
      layers: (source.layers ?? []).map((l) => ({ ...l, mediaType: OCI_LAYER_TYPES[l.mediaType] ?? l.mediaType })),
    };
  } else if (manifest.mediaType === MediaType.DockerManifestList) {
    const source = JSON.parse(manifest.bytes.toString('utf8')) as { manifests: { digest: Digest; mediaType: string; size: number }[] | null };
    mediaType = MediaType.OciIndex;
    doc = {
      ...source,
      mediaType,
      manifests: (source.manifests ?? []).map((m) => {
        const child = children.get(m.digest);
        return child ? { ...m, mediaType: child.mediaType, digest: child.digest, size: child.bytes.length } : { ...m, mediaType: OCI_LAYER_TYPES[m.mediaType] ?? m.mediaType };
      }),
    };
  } else {
    return manifest;
  }
  const bytes = Buffer.from(JSON.stringify(doc));
  return { digest: digestOf(bytes), mediaType, bytes };
}

function blobPath(digest: Digest): string {
  const { algorithm, hex } = parseDigest(digest);
  return `blobs/${algorithm}/${hex}`;
}

/** The image name written into the archive: `alice/app:1`, or `alice/app@sha256:…` for a digest. */
function nameOf(image: ExportedImage): string {
  return image.tag !== undefined ? `${image.repo}:${image.tag}` : `${image.repo}@${image.manifest.digest}`;
}

/**
 * The plan as an OCI image layout tarball: `oci-layout`, `index.json` (one entry per image, named by the
 * `org.opencontainers.image.ref.name` and `io.containerd.image.name` annotations), a docker-save style
 * `manifest.json` for the single-platform images (so a docker load older than 25 takes it too), then
 * every manifest and blob under `blobs/<algorithm>/<hex>`, each blob streamed from the store.
 */
export function writeExport(registry: LocalRegistry, plan: ExportPlan, signal?: AbortSignal): Readable {
  const pack = tarStream().pack();
  const mtime = new Date(0);
  const file = (name: string, size: number) => ({ name, size, mode: 0o644, mtime, type: 'file' as const, uname: 'root', gname: 'root', uid: 0, gid: 0 });
  const small = (name: string, bytes: Buffer) =>
    new Promise<void>((resolve, reject) => pack.entry(file(name, bytes.length), bytes, (err) => (err ? reject(err) : resolve())));
  const dir = (name: string) =>
    new Promise<void>((resolve, reject) =>
      pack.entry({ name, mode: 0o755, mtime, type: 'directory', uname: 'root', gname: 'root', uid: 0, gid: 0 }, (err) => (err ? reject(err) : resolve())),
    );

  const index = {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: plan.images.map((image) => ({
      mediaType: image.manifest.mediaType,
      digest: image.manifest.digest,
      size: image.manifest.bytes.length,
      annotations: { [CONTAINERD_NAME]: nameOf(image), [REF_NAME]: nameOf(image) },
    })),
  };
  const dockerManifest = plan.images
    .filter((image) => image.image)
    .map((image) => ({
      Config: blobPath(image.image!.config),
      RepoTags: image.tag !== undefined ? [nameOf(image)] : [],
      Layers: image.image!.layers.map(blobPath),
    }));

  const write = async () => {
    await small('oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })));
    await small('index.json', Buffer.from(JSON.stringify(index)));
    if (dockerManifest.length > 0) await small('manifest.json', Buffer.from(JSON.stringify(dockerManifest)));
    await dir('blobs/');
    const algorithms = new Set([...plan.manifests.keys(), ...plan.blobs.keys()].map((d) => parseDigest(d).algorithm));
    for (const algorithm of [...algorithms].sort()) await dir(`blobs/${algorithm}/`);
    for (const [digest, bytes] of plan.manifests) await small(blobPath(digest), bytes);
    for (const [digest, { repo, size }] of plan.blobs) {
      signal?.throwIfAborted();
      const body = await registry.openBlob(repo, { digest, size });
      if (!body) throw new RegistryError('BLOB_UNKNOWN', 'a blob file is missing from the store', { repo, digest });
      const entry = pack.entry(file(blobPath(digest), size));
      await pipeline(body, entry);
    }
    pack.finalize();
  };
  write().catch((err: unknown) => pack.destroy(err as Error));
  // tar-stream's streams are streamx streams: hand out a Node Readable (Koa, pipeline and stdout want one).
  return Readable.from(pack as AsyncIterable<Buffer>, { objectMode: false });
}

/** planExport, then writeExport. */
export async function exportArchive(registry: LocalRegistry, refs: readonly string[], signal?: AbortSignal): Promise<{ plan: ExportPlan; stream: Readable }> {
  const plan = await planExport(registry, refs);
  return { plan, stream: writeExport(registry, plan, signal) };
}
