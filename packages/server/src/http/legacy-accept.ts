import { MediaType, RegistryError, parseManifest, tryParseDigest, type Descriptor, type Digest, type StoredManifest } from '@wharf/registry-core';

/**
 * Docker's backward compatibility for manifest lists (Image Manifest V2 Schema 2, "Backward
 * compatibility"), as distribution and Docker Hub keep it: a manifest list asked for by tag with an
 * `Accept` that names the schema 2 image manifest and no index type is answered with the list's
 * linux/amd64 image, its own bytes, type and digest. Scripts and tools written against Docker Hub
 * (`curl -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' …`, reg, dependabot's
 * Docker updater) read a config and layers there, and got a list from Wharf. By digest, the list
 * itself (a digest names those bytes); with no `Accept`, a wildcard, or an index type named (the
 * list's, or the OCI index's: a client that reads one reads the other, where distribution would
 * still rewrite), the list too, as every current client asks. OCI indexes are served as they are,
 * whatever the `Accept`.
 */
export function wantsListImage(accept: string | undefined, mediaType: string, reference: string): boolean {
  if (mediaType !== MediaType.DockerManifestList || reference.includes(':') || accept === undefined) return false;
  const types = new Set(accept.split(',').map((t) => t.split(';')[0]!.trim().toLowerCase()));
  if (types.has('*/*') || types.has('application/*')) return false;
  return types.has(MediaType.DockerManifest) && !types.has(MediaType.DockerManifestList) && !types.has(MediaType.OciIndex);
}

/** The digest of a manifest list's linux/amd64 image, if it lists one (the list as the store read it back). */
export function linuxAmd64Image(list: StoredManifest): Digest | undefined {
  let children: readonly Descriptor[];
  try {
    children = parseManifest(list.bytes, list.mediaType, tryParseDigest(list.digest)?.algorithm, { stored: true }).manifests;
  } catch {
    return undefined;
  }
  const amd64 = children.find((child) => {
    const platform = child.platform as { architecture?: unknown; os?: unknown } | undefined;
    return platform?.architecture === 'amd64' && platform.os === 'linux';
  });
  return amd64?.digest;
}

/**
 * The image `wantsListImage` asks for, read as any manifest of the repository is (`read`: from the
 * store, or through the proxy), with the list's Warning when only the list was a stale copy. A list
 * without one, or whose image cannot be read, is MANIFEST_UNKNOWN, as distribution answers.
 */
export async function listImage(list: StoredManifest, reference: string, read: (digest: Digest) => Promise<StoredManifest | undefined>): Promise<StoredManifest> {
  const digest = linuxAmd64Image(list);
  const image = digest === undefined ? undefined : await read(digest);
  if (!image) {
    const why = digest === undefined ? 'lists no linux/amd64 image' : `lists ${digest} for linux/amd64, which is not here`;
    throw new RegistryError('MANIFEST_UNKNOWN', `${reference} is a manifest list that ${why}, and the request's Accept does not take a manifest list`, { reference });
  }
  return list.warning !== undefined && image.warning === undefined ? { ...image, warning: list.warning } : image;
}
