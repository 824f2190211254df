import type { BlobInfo } from './blob-store.js';
import type { Digest } from './digest.js';
import type { Descriptor, ParsedManifest } from './manifest.js';
import type { ReferrersQuery, ReferrersSlice } from './referrers-page.js';

export interface StoredManifest {
  readonly digest: Digest;
  readonly mediaType: string;
  readonly bytes: Buffer;
  /** Set when the manifest is served although it may be out of date (a cached copy, upstream down). */
  readonly warning?: string;
}

export interface Page {
  readonly n?: number;
  readonly last?: string;
}

/**
 * A listing asked for `n` + 1 entries, cut to `n`: whether that extra entry was there, which says
 * another page follows. `items` is shortened in place.
 */
export function cutToPage<T>(items: T[], n: number): boolean {
  const more = items.length > n;
  if (more) items.length = n;
  return more;
}

export interface MetadataReader {
  /** A blob linked to the repository; a blob in another repository is absent here. */
  blob(repo: string, digest: Digest): Promise<BlobInfo | undefined>;
  manifest(repo: string, reference: Digest): Promise<StoredManifest | undefined>;
  /** Resolves a tag and returns its manifest in one step. */
  taggedManifest(repo: string, tag: string): Promise<StoredManifest | undefined>;
  /** undefined when the repository does not exist. */
  tags(repo: string, page: Page): Promise<string[] | undefined>;
  repositories(page: Page): Promise<string[]>;
  referrers(repo: string, subject: Digest): Promise<Descriptor[]>;
  /** One page of `subject`'s referrers (see referrersPage), reading no more of them than it needs. */
  referrersPage(repo: string, subject: Digest, query: ReferrersQuery): Promise<ReferrersSlice>;
  repositoryExists(repo: string): Promise<boolean>;
  /**
   * Whether the repository holds a manifest: what makes a name local to those who pull it. Blobs
   * alone (a push under way or cut short, an image whose manifests were deleted, until the next
   * collection) do not, as in the catalog.
   */
  repositoryHasManifests(repo: string): Promise<boolean>;
  /** Repositories the blob is linked in, by name, at most `limit`: the sources of a mount that names no `from`. */
  repositoriesWithBlob(digest: Digest, limit: number): Promise<string[]>;
}

export interface MetadataWriter {
  linkBlob(repo: string, blob: BlobInfo): Promise<void>;
  /**
   * `blob(repo, digest)`, with the link's age started over first when it is over a second old. A blob
   * HEAD is how a push asks whether it may skip a layer: renewed, the link is as safe from garbage
   * collection (its grace) as one the push had uploaded, until the manifest that references it comes.
   */
  renewBlobLink(repo: string, digest: Digest): Promise<BlobInfo | undefined>;
  /**
   * `manifest(repo, digest)`, with its gc grace started over first when it is untagged and its grace
   * is over a second old. A manifest HEAD by digest is how a push asks whether it may skip a child of
   * the index it pushes next: renewed, the child is as safe from `delete_untagged` as one just pushed.
   */
  renewedManifest(repo: string, digest: Digest): Promise<StoredManifest | undefined>;
  unlinkBlob(repo: string, digest: Digest): Promise<boolean>;
  /**
   * Stores a manifest and its tags in one transaction, after checking in the same transaction that every
   * blob and child manifest it references is present in the repository (MANIFEST_BLOB_UNKNOWN if not).
   */
  putManifest(repo: string, manifest: ParsedManifest, bytes: Buffer, tags: readonly string[]): Promise<void>;
  /** Deletes a manifest and every tag that points at it. */
  deleteManifest(repo: string, digest: Digest): Promise<boolean>;
  deleteTag(repo: string, tag: string): Promise<boolean>;
}

export type MetadataStore = MetadataReader & MetadataWriter;
