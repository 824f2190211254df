import { createHash } from 'node:crypto';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';

export function sha256(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export interface Blob {
  readonly digest: string;
  readonly bytes: Buffer;
}

export function blob(content: string | Buffer): Blob {
  const bytes = typeof content === 'string' ? Buffer.from(content) : content;
  return { digest: sha256(bytes), bytes };
}

/** Pushes a blob monolithically (POST ?digest=) and fails loudly if the registry refuses. */
export async function pushBlob(url: string, repo: string, b: Blob): Promise<void> {
  const res = await fetch(`${url}/v2/${repo}/blobs/uploads/?digest=${b.digest}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream' },
    body: b.bytes,
  });
  if (res.status !== 201) throw new Error(`push blob ${b.digest}: ${res.status} ${await res.text()}`);
}

/** An image manifest (bytes and digest) for a config and layers, with optional extra fields. */
export function imageManifest(config: Blob, layers: Blob[], extra: Record<string, unknown> = {}, mediaType = OCI_MANIFEST) {
  const doc = {
    schemaVersion: 2,
    mediaType,
    config: { mediaType: mediaType === OCI_MANIFEST ? 'application/vnd.oci.image.config.v1+json' : 'application/vnd.docker.container.image.v1+json', digest: config.digest, size: config.bytes.length },
    layers: layers.map((l) => ({
      mediaType: mediaType === OCI_MANIFEST ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.docker.image.rootfs.diff.tar.gzip',
      digest: l.digest,
      size: l.bytes.length,
    })),
    ...extra,
  };
  const bytes = Buffer.from(JSON.stringify(doc, null, 2));
  return { bytes, digest: sha256(bytes), mediaType, size: bytes.length };
}

/** Pushes a config, layers and a manifest; returns the manifest. */
export async function pushImage(url: string, repo: string, tag: string, seed = tag) {
  const config = blob(`{"architecture":"amd64","os":"linux","seed":"${seed}"}`);
  const layer = blob(`layer of ${repo}:${seed}`);
  await pushBlob(url, repo, config);
  await pushBlob(url, repo, layer);
  const manifest = imageManifest(config, [layer]);
  const res = await fetch(`${url}/v2/${repo}/manifests/${tag}`, {
    method: 'PUT',
    headers: { 'Content-Type': manifest.mediaType },
    body: manifest.bytes,
  });
  if (res.status !== 201) throw new Error(`push manifest ${repo}:${tag}: ${res.status} ${await res.text()}`);
  return { manifest, config, layer };
}
