import type { Readable } from 'node:stream';
import type { Digest, DigestAlgorithm } from './digest.js';

export interface BlobInfo {
  readonly digest: Digest;
  readonly size: number;
}

/**
 * A blob on its way whose size nobody has said yet: a proxy's upstream sent it without a
 * Content-Length. Its bytes can go out as they come (HTTP/1.1 chunked), the end once they matched
 * the digest.
 */
export interface UnsizedBlob {
  readonly digest: Digest;
  readonly size: undefined;
}

/** Inclusive byte range, as HTTP writes it. */
export interface ByteRange {
  readonly start: number;
  readonly end: number;
}

export interface BlobReader {
  stat(digest: Digest): Promise<BlobInfo | undefined>;
  open(digest: Digest, range?: ByteRange): Promise<Readable | undefined>;
}

export interface IngestExpectation {
  /** The digest the content must have; without it, the content is hashed with `algorithm`. */
  readonly digest?: Digest;
  readonly algorithm?: DigestAlgorithm;
  readonly size?: number;
}

export interface BlobWriter {
  /** Hashes while streaming to a temp file; moves it into place only if digest and size match. */
  ingest(source: Readable, expect: IngestExpectation, signal?: AbortSignal): Promise<BlobInfo>;
  /** Moves a verified file from the temporary storage into place (same filesystem: atomic rename). */
  adopt(file: string, blob: BlobInfo): Promise<void>;
  remove(digest: Digest): Promise<boolean>;
}

export type BlobStore = BlobReader & BlobWriter;
