import type { Readable } from 'node:stream';
import { LEASE_RENEW_MS, type BlobLeases } from './blob-leases.js';
import type { BlobInfo, BlobStore, ByteRange, UnsizedBlob } from './blob-store.js';
import { parseDigest, tryParseDigest, type Digest, type DigestAlgorithm } from './digest.js';
import { RegistryError } from './errors.js';
import { parseManifest, type Descriptor } from './manifest.js';
import { cutToPage, type MetadataStore, type Page, type StoredManifest } from './metadata-store.js';
import { assertTag, isValidRepositoryName, isValidTag } from './reference.js';
import type { PutManifestResult, ReferrersPage, RepositoryReader, RepositoryWriter, TagPage } from './registry.js';
import type { ReferrersQuery } from './referrers-page.js';
import type { ChunkPosition, UploadSessions, UploadStatus } from './uploads.js';

/** Repositories looked at for the source of a mount that names no `from`. */
const MOUNT_SOURCES = 100;

/**
 * The private registry: blobs in a content-addressed store, everything else in the metadata store, and
 * a repository serves only what is linked to it.
 */
export class LocalRegistry implements RepositoryReader, RepositoryWriter {
  constructor(
    private readonly blobs: BlobStore,
    private readonly metadata: MetadataStore,
    private readonly uploads: UploadSessions,
    /** Without leases, garbage collection must not run while this registry writes. */
    private readonly leases?: BlobLeases,
  ) {}

  /** Runs `work` (which places a blob's file and links it) under a lease on the digest, renewed while it runs. */
  private async leased<T>(digest: Digest, work: () => Promise<T>): Promise<T> {
    const leases = this.leases;
    if (!leases) return work();
    let id = await leases.lease(digest);
    let done = false;
    // A renewal that fails (the database busy for a moment) is tried again at the next one; a lease
    // found gone (the process stopped for longer than a lease lasts) is taken anew.
    const renew = async (): Promise<void> => {
      if ((await leases.renew(id)) || done) return;
      const fresh = await leases.lease(digest);
      if (done) await leases.release(fresh);
      else id = fresh;
    };
    const renewal = setInterval(() => void renew().catch(() => undefined), LEASE_RENEW_MS);
    renewal.unref();
    try {
      return await work();
    } finally {
      done = true;
      clearInterval(renewal);
      await leases.release(id);
    }
  }

  async manifest(repo: string, reference: string, options: { readonly renew?: boolean } = {}): Promise<StoredManifest | undefined> {
    const digest = tryParseDigest(reference);
    if (digest) return this.manifestByDigest(repo, digest.digest, options.renew === true);
    if (reference.includes(':')) parseDigest(reference); // throws DIGEST_INVALID for a malformed digest
    assertTag(reference);
    return this.metadata.taggedManifest(repo, reference);
  }

  peekManifest(repo: string, reference: string, options: { readonly renew?: boolean } = {}): Promise<StoredManifest | undefined> {
    const digest = tryParseDigest(reference);
    if (digest) return this.manifestByDigest(repo, digest.digest, options.renew === true);
    return isValidTag(reference) ? this.metadata.taggedManifest(repo, reference) : Promise.resolve(undefined);
  }

  /** With `renew` (a push's HEAD), an untagged manifest's gc grace starts over (MetadataWriter.renewedManifest). */
  private manifestByDigest(repo: string, digest: Digest, renew: boolean): Promise<StoredManifest | undefined> {
    return renew ? this.metadata.renewedManifest(repo, digest) : this.metadata.manifest(repo, digest);
  }

  blob(repo: string, digest: Digest): Promise<BlobInfo | undefined> {
    return this.metadata.blob(repo, digest);
  }

  /** A HEAD's (or a conditional GET's) look at a blob: its link renewed, see MetadataWriter.renewBlobLink. */
  statBlob(repo: string, digest: Digest, options: { readonly renew?: boolean } = {}): Promise<BlobInfo | undefined> {
    return options.renew === false ? this.metadata.blob(repo, digest) : this.metadata.renewBlobLink(repo, digest);
  }

  openBlob(_repo: string, blob: BlobInfo | UnsizedBlob, range?: ByteRange): Promise<Readable | undefined> {
    // The whole of a blob whose size the metadata holds is that range: the store need not stat its
    // file to learn it (a file shorter than that fails the stream, as a cut one would).
    const whole = blob.size !== undefined && blob.size > 0 ? { start: 0, end: blob.size - 1 } : undefined;
    return this.blobs.open(blob.digest, range ?? whole);
  }

  tags(repo: string, page: Page): Promise<string[] | undefined> {
    return this.metadata.tags(repo, page);
  }

  async listTags(repo: string, n: number, last?: string): Promise<TagPage | undefined> {
    // One more than the page holds says whether another page follows.
    const tags = await this.metadata.tags(repo, { n: n + 1, ...(last !== undefined ? { last } : {}) });
    if (!tags) return undefined;
    return { tags, more: cutToPage(tags, n) };
  }

  referrers(repo: string, subject: Digest): Promise<Descriptor[]> {
    return this.metadata.referrers(repo, subject);
  }

  async listReferrers(repo: string, subject: Digest, query: ReferrersQuery = {}): Promise<ReferrersPage> {
    return this.metadata.referrersPage(repo, subject, query);
  }

  repositories(page: Page): Promise<string[]> {
    return this.metadata.repositories(page);
  }

  repositoryHasManifests(repo: string): Promise<boolean> {
    return this.metadata.repositoryHasManifests(repo);
  }

  async putManifest(
    repo: string,
    reference: string,
    bytes: Buffer,
    contentType: string | undefined,
    extraTags: readonly string[] = [],
  ): Promise<PutManifestResult> {
    const byDigest = reference.includes(':') ? parseDigest(reference) : undefined;
    const manifest = parseManifest(bytes, contentType, byDigest?.algorithm ?? 'sha256');
    if (byDigest && byDigest.digest !== manifest.digest) {
      throw new RegistryError('DIGEST_INVALID', 'manifest content does not match the digest in the URL', {
        expected: byDigest.digest,
        actual: manifest.digest,
      });
    }
    const tags = byDigest ? [...extraTags] : [reference, ...extraTags];
    for (const tag of tags) assertTag(tag);
    await this.metadata.putManifest(repo, manifest, bytes, tags);
    return { digest: manifest.digest, ...(manifest.subject ? { subject: manifest.subject.digest } : {}) };
  }

  async deleteManifest(repo: string, reference: string): Promise<boolean> {
    if (reference.includes(':')) return this.metadata.deleteManifest(repo, parseDigest(reference).digest);
    assertTag(reference);
    return this.metadata.deleteTag(repo, reference);
  }

  deleteBlob(repo: string, digest: Digest): Promise<boolean> {
    return this.metadata.unlinkBlob(repo, digest);
  }

  async putBlob(repo: string, body: Readable, expect: { digest: Digest; size?: number }, signal?: AbortSignal): Promise<BlobInfo> {
    return this.leased(expect.digest, async () => {
      const blob = await this.blobs.ingest(body, expect, signal);
      await this.metadata.linkBlob(repo, blob);
      return blob;
    });
  }

  /** Moves a verified file (in the temporary storage) into the blob store and links it to `repo`. */
  adoptBlob(repo: string, file: string, blob: BlobInfo): Promise<void> {
    return this.leased(blob.digest, async () => {
      await this.blobs.adopt(file, blob);
      await this.metadata.linkBlob(repo, blob);
    });
  }

  async mountBlob(repo: string, digest: Digest, from: string): Promise<BlobInfo | undefined> {
    if (!isValidRepositoryName(from)) return undefined;
    return this.leased(digest, async () => {
      const blob = await this.metadata.blob(from, digest);
      if (!blob || !(await this.blobs.stat(digest))) return undefined;
      await this.metadata.linkBlob(repo, blob);
      return blob;
    });
  }

  async mountSource(digest: Digest, mayRead: (repo: string) => boolean): Promise<string | undefined> {
    // Bounded: a blob shared by thousands of repositories is looked for among the first of them.
    return (await this.metadata.repositoriesWithBlob(digest, MOUNT_SOURCES)).find(mayRead);
  }

  beginUpload(repo: string, algorithm?: DigestAlgorithm): Promise<UploadStatus> {
    return this.uploads.begin(repo, algorithm);
  }

  uploadStatus(repo: string, id: string): Promise<UploadStatus | undefined> {
    return this.uploads.status(repo, id);
  }

  appendUpload(repo: string, id: string, chunk: Readable, position: ChunkPosition, signal?: AbortSignal): Promise<UploadStatus> {
    return this.uploads.append(repo, id, chunk, position, signal);
  }

  async completeUpload(
    repo: string,
    id: string,
    digest: Digest,
    finalChunk?: { body: Readable; position: ChunkPosition },
    signal?: AbortSignal,
  ): Promise<BlobInfo> {
    let sealed: Awaited<ReturnType<UploadSessions['seal']>>;
    try {
      if (finalChunk && (finalChunk.position.start ?? 0) === 0) {
        // The whole blob in the completing PUT (a monolithic upload): stored as a one-request upload
        // is, without going through the session's file first.
        const { start, end } = finalChunk.position;
        const size = start !== undefined && end !== undefined ? end - start + 1 : undefined;
        const expect = { digest, ...(size !== undefined ? { size } : {}) };
        const whole = await this.uploads.takeWhole(repo, id, (stop) => this.putBlob(repo, finalChunk.body, expect, stop), signal);
        if (whole) return whole;
      }
      if (finalChunk) await this.uploads.append(repo, id, finalChunk.body, finalChunk.position, signal);
      sealed = await this.uploads.seal(repo, id, digest);
    } catch (err) {
      // As distribution does: a session whose content failed verification is gone.
      if (err instanceof RegistryError && err.code === 'DIGEST_INVALID') await this.uploads.cancel(repo, id);
      throw err;
    }
    // The session ended with the seal (a DELETE now finds nothing): the file is ours alone to adopt.
    // Should adopting fail (a full disk: the lease's or the link's row refused), the session comes back
    // as it was, and the client may complete it again once there is room.
    try {
      await this.adoptBlob(repo, sealed.file, sealed.blob);
    } catch (err) {
      await this.uploads.settle(repo, id, false).catch(() => undefined);
      throw err;
    }
    await this.uploads.settle(repo, id, true).catch(() => undefined);
    return sealed.blob;
  }

  cancelUpload(repo: string, id: string): Promise<boolean> {
    return this.uploads.cancel(repo, id);
  }
}
