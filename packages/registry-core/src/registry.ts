import type { Readable } from 'node:stream';
import type { BlobInfo, ByteRange, UnsizedBlob } from './blob-store.js';
import type { Digest, DigestAlgorithm } from './digest.js';
import type { Descriptor } from './manifest.js';
import type { ReferrersQuery } from './referrers-page.js';
import type { Page, StoredManifest } from './metadata-store.js';
import type { ChunkPosition, UploadStatus } from './uploads.js';

/** What pull routes need of a repository. The local registry and the pull-through proxy both provide it. */
export interface RepositoryReader {
  /**
   * `reference` is a tag or a digest. With `renew` (a HEAD by someone who may push), a local untagged
   * manifest's gc grace starts over (see MetadataWriter.renewedManifest).
   */
  manifest(repo: string, reference: string, options?: { readonly renew?: boolean }): Promise<StoredManifest | undefined>;
  /**
   * The manifest when this reader's own storage answers alone: no upstream is asked and nothing is
   * refused. undefined means "not answerable here": absent, an invalid reference, or (pull-through) a
   * tag due for revalidation; `manifest()` then decides, with its errors. `renew` as for `manifest()`.
   */
  peekManifest(repo: string, reference: string, options?: { readonly renew?: boolean }): Promise<StoredManifest | undefined>;
  /**
   * What a GET sends. Unsized only through the proxy, for a blob its upstream is sending without a
   * Content-Length: `statBlob` waits for its size; `openBlob` streams it as it comes, whole only.
   */
  blob(repo: string, digest: Digest): Promise<BlobInfo | UnsizedBlob | undefined>;
  /**
   * What a HEAD answers: the blob's size, without fetching its bytes (the proxy asks its upstream).
   * A local blob's link starts its gc grace over (a push skipping the layer: see
   * MetadataWriter.renewBlobLink), unless `renew` is false: asked by someone who may not push.
   */
  statBlob(repo: string, digest: Digest, options?: { readonly renew?: boolean }): Promise<BlobInfo | undefined>;
  /** `blob` as `blob()` or `statBlob()` found it; a range of a sized one only. */
  openBlob(repo: string, blob: BlobInfo | UnsizedBlob, range?: ByteRange): Promise<Readable | undefined>;
  /**
   * At most `n` of the repository's tags after `last`, and whether more follow; undefined when the
   * repository is unknown.
   */
  listTags(repo: string, n: number, last?: string): Promise<TagPage | undefined>;
  /**
   * The manifests whose subject is `subject` (none: an empty list, never absence, as the spec has
   * it), with a warning when they come from a kept copy because the upstream could not be asked.
   */
  /** One page of `subject`'s referrers (see referrersPage): `artifactType` filtered, after `last`. */
  listReferrers(repo: string, subject: Digest, query?: ReferrersQuery): Promise<ReferrersPage>;
}

/** One page of a tag list. */
export interface TagPage {
  readonly tags: string[];
  /** Tags follow these: the next page is the one after the last of them (a `Link` to it). */
  readonly more: boolean;
  /** Served from a kept copy because the upstream could not be asked, and why (a `Warning` header). */
  readonly warning?: string;
}

/** The referrers of a subject, a page of them. */
export interface ReferrersPage {
  readonly descriptors: Descriptor[];
  /** More follow, after the last of these (a `Link` to them). */
  readonly more?: boolean;
  /** Served from a kept copy because the upstream could not be asked, and why (a `Warning` header). */
  readonly warning?: string;
}

export interface PutManifestResult {
  readonly digest: Digest;
  readonly subject?: Digest;
}

/** What push and delete routes need. Only the local registry provides it. */
export interface RepositoryWriter {
  putManifest(repo: string, reference: string, bytes: Buffer, contentType: string | undefined, extraTags?: readonly string[]): Promise<PutManifestResult>;
  /** Deletes by digest (the manifest and its tags) or by tag (the tag only). false when absent. */
  deleteManifest(repo: string, reference: string): Promise<boolean>;
  deleteBlob(repo: string, digest: Digest): Promise<boolean>;
  putBlob(repo: string, body: Readable, expect: { digest: Digest; size?: number }, signal?: AbortSignal): Promise<BlobInfo>;
  mountBlob(repo: string, digest: Digest, from: string): Promise<BlobInfo | undefined>;
  /**
   * For a mount that names no `from`: the first of the repositories holding the blob that `mayRead`
   * accepts, by name, or undefined.
   */
  mountSource(digest: Digest, mayRead: (repo: string) => boolean): Promise<string | undefined>;
  beginUpload(repo: string, algorithm?: DigestAlgorithm): Promise<UploadStatus>;
  uploadStatus(repo: string, id: string): Promise<UploadStatus | undefined>;
  appendUpload(repo: string, id: string, chunk: Readable, position: ChunkPosition, signal?: AbortSignal): Promise<UploadStatus>;
  completeUpload(repo: string, id: string, digest: Digest, finalChunk?: { body: Readable; position: ChunkPosition }, signal?: AbortSignal): Promise<BlobInfo>;
  cancelUpload(repo: string, id: string): Promise<boolean>;
}
