import { digestOf, tryParseDigest, type Digest, type DigestAlgorithm } from './digest.js';
import { RegistryError } from './errors.js';
import { JsonShapeError, parseBoundedJson } from './json-shape.js';
import {
  MediaType,
  bareMediaType,
  isIndexMediaType,
  isManifestMediaType,
  isNonDistributable,
  type ManifestMediaType,
} from './media-types.js';

export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export interface Descriptor {
  readonly mediaType: string;
  readonly digest: Digest;
  readonly size: number;
  readonly artifactType?: string;
  readonly annotations?: Record<string, string>;
  readonly urls?: readonly string[];
  readonly platform?: unknown;
}

/** What the registry needs to know of a manifest; the bytes themselves are kept as received. */
export interface ParsedManifest {
  readonly mediaType: ManifestMediaType;
  readonly digest: Digest;
  readonly size: number;
  /** `artifactType`, or for an image manifest without one, its config media type (for referrers). */
  readonly artifactType?: string;
  readonly subject?: Descriptor;
  readonly annotations?: Record<string, string>;
  /**
   * Blobs the manifest needs present in the repository: an image's config and distributable layers,
   * an index's entries that are not manifests.
   */
  readonly blobs: readonly Descriptor[];
  /** Child manifests (an index's entries of a manifest media type). */
  readonly manifests: readonly Descriptor[];
}

function invalid(message: string, detail?: unknown): RegistryError {
  return new RegistryError('MANIFEST_INVALID', message, detail);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function stringMap(value: unknown, where: string): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value) || Object.values(value).some((v) => typeof v !== 'string')) {
    throw invalid(`${where} must be a map of strings`);
  }
  return value as Record<string, string>;
}

function descriptor(value: unknown, where: string): Descriptor {
  if (!isObject(value)) throw invalid(`${where} must be a descriptor object`);
  const { mediaType, digest, size } = value;
  if (typeof mediaType !== 'string' || mediaType === '') throw invalid(`${where}.mediaType is missing`);
  if (typeof digest !== 'string' || !tryParseDigest(digest)) throw invalid(`${where}.digest is not a valid digest`, { digest });
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw invalid(`${where}.size must be a non-negative integer`);
  if (value.urls !== undefined && (!Array.isArray(value.urls) || value.urls.some((u) => typeof u !== 'string'))) {
    throw invalid(`${where}.urls must be an array of strings`);
  }
  if (value.artifactType !== undefined && typeof value.artifactType !== 'string') throw invalid(`${where}.artifactType must be a string`);
  return {
    mediaType,
    digest: digest as Digest,
    size,
    ...(typeof value.artifactType === 'string' ? { artifactType: value.artifactType } : {}),
    ...(value.annotations !== undefined ? { annotations: stringMap(value.annotations, `${where}.annotations`)! } : {}),
    ...(Array.isArray(value.urls) ? { urls: value.urls as string[] } : {}),
    ...(value.platform !== undefined ? { platform: value.platform } : {}),
  };
}

/**
 * Decides the manifest's media type from the request's Content-Type and the document's own
 * `mediaType`. They must agree when both are given; a known Content-Type alone is enough (the OCI
 * image manifest's `mediaType` field is optional), and so is a known `mediaType` when the client sent
 * no Content-Type.
 */
function effectiveMediaType(contentType: string | undefined, declared: unknown): ManifestMediaType {
  const fromHeader = bareMediaType(contentType);
  if (declared !== undefined && typeof declared !== 'string') throw invalid('mediaType must be a string');
  if (fromHeader && isManifestMediaType(fromHeader)) {
    if (declared !== undefined && declared !== fromHeader) {
      throw invalid('Content-Type does not match the manifest mediaType', { contentType: fromHeader, mediaType: declared });
    }
    return fromHeader;
  }
  if (fromHeader && fromHeader !== 'application/json' && fromHeader !== 'application/octet-stream') {
    throw invalid('unsupported manifest media type', { contentType: fromHeader });
  }
  if (isManifestMediaType(declared)) return declared;
  throw invalid('manifest media type is missing or unsupported; send a Content-Type of a manifest media type', {
    mediaType: declared,
  });
}

/**
 * Parses and validates manifest bytes as received. Throws MANIFEST_INVALID for anything a client must
 * fix, TOO_LARGE over the cap. Never re-serialises: the digest is of exactly these bytes.
 */
export function parseManifest(
  bytes: Buffer,
  contentType: string | undefined,
  algorithm: DigestAlgorithm = 'sha256',
  { stored = false }: { /** Bytes kept before (read back, not received): what was accepted then is read as it was. */ stored?: boolean } = {},
): ParsedManifest {
  if (bytes.length > MAX_MANIFEST_BYTES) {
    throw new RegistryError('TOO_LARGE', `manifest is larger than ${MAX_MANIFEST_BYTES} bytes`, { size: bytes.length });
  }
  let doc: unknown;
  try {
    doc = parseBoundedJson(bytes);
  } catch (err) {
    if (err instanceof JsonShapeError) throw invalid(`manifest refused: ${err.message}`);
    throw invalid('manifest is not valid JSON');
  }
  if (!isObject(doc)) throw invalid('manifest must be a JSON object');
  if (doc.schemaVersion !== 2) {
    // A document with no schemaVersion at all may be no manifest: its media type, when that is none
    // of a manifest's, is the clearer refusal.
    if (doc.schemaVersion === undefined) effectiveMediaType(contentType, doc.mediaType);
    throw invalid('only schemaVersion 2 manifests are supported', { schemaVersion: doc.schemaVersion });
  }
  const mediaType = effectiveMediaType(contentType, doc.mediaType);
  if (!stored && doc.mediaType === undefined && (mediaType === MediaType.DockerManifest || mediaType === MediaType.DockerManifestList)) {
    // Docker's schema 2 makes the field part of the format (the OCI manifest's is optional): Docker's
    // own parser, and distribution, refuse a document without it, so it would be stored and then fail
    // every pull of a Docker engine that reads it itself.
    throw invalid(`a Docker manifest needs its mediaType field ("mediaType": "${mediaType}")`, { contentType: mediaType });
  }
  if (doc.artifactType !== undefined && typeof doc.artifactType !== 'string') throw invalid('artifactType must be a string');
  const subject = doc.subject === undefined ? undefined : descriptor(doc.subject, 'subject');
  const annotations = stringMap(doc.annotations, 'annotations');
  const base = {
    mediaType,
    digest: digestOf(bytes, algorithm),
    size: bytes.length,
    ...(subject ? { subject } : {}),
    ...(annotations ? { annotations } : {}),
  };

  if (isIndexMediaType(mediaType)) {
    const manifests = listField(doc.manifests);
    if (!manifests) throw invalid('an index needs a manifests array');
    if (doc.config !== undefined || doc.layers !== undefined) throw invalid('an index has no config or layers');
    const entries = manifests.map((m, i) => descriptor(m, `manifests[${i}]`));
    // An entry of a manifest's media type is a child manifest; any other is a blob of the repository.
    // BuildKit's registry cache (`--cache-to type=registry`) is an index of its layers and of a
    // `application/vnd.buildkit.cacheconfig.v0` config: distribution, Docker Hub and GHCR store it,
    // since they look an entry up among the repository's blobs, manifests among them.
    return {
      ...base,
      ...(typeof doc.artifactType === 'string' ? { artifactType: doc.artifactType } : {}),
      blobs: entries.filter((e) => !isManifestMediaType(bareMediaType(e.mediaType))),
      manifests: entries.filter((e) => isManifestMediaType(bareMediaType(e.mediaType))),
    };
  }

  if (doc.manifests !== undefined) throw invalid('an image manifest has no manifests array');
  const config = descriptor(doc.config, 'config');
  const listed = listField(doc.layers);
  if (!listed) throw invalid('an image manifest needs a layers array');
  const layers = listed.map((l, i) => descriptor(l, `layers[${i}]`));
  // Empty is as missing (image spec): listed under the config's media type.
  const artifactType = typeof doc.artifactType === 'string' && doc.artifactType !== '' ? doc.artifactType : config.mediaType;
  const blobs = [config, ...layers.filter((l) => !(isNonDistributable(l.mediaType) && l.urls && l.urls.length > 0))];
  return { ...base, artifactType, blobs, manifests: [] };
}

/**
 * A manifest's list field. An explicit `null` is an empty list: Go's image-spec and Docker types have no
 * `omitempty` on `layers` and `manifests`, so a Go client encodes an empty slice left nil as `null`
 * (oras-go before 2.0, and the tools built on it, sent artifacts so), and distribution reads it as empty.
 * A missing field stays refused, as the image spec requires it.
 */
function listField(value: unknown): readonly unknown[] | undefined {
  if (value === null) return [];
  return Array.isArray(value) ? value : undefined;
}
