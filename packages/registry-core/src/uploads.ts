import type { Readable } from 'node:stream';
import type { BlobInfo } from './blob-store.js';
import type { Digest, DigestAlgorithm } from './digest.js';

/**
 * A sealed upload's folder in the uploads folder is `<id>` followed by this: a completed upload's
 * session, moved aside whole while its verified bytes go into the store. (Older versions left a file
 * of that name, the bytes alone, to the uploads' expiry.)
 */
export const SEALED_UPLOAD_SUFFIX = '.sealed';

export interface UploadStatus {
  readonly id: string;
  readonly repo: string;
  /** Bytes received so far. */
  readonly size: number;
  readonly startedAt: Date;
}

/** Where the bytes of a PATCH go: `start` is the Content-Range start, when the client sent one. */
export interface ChunkPosition {
  readonly start?: number;
  readonly end?: number;
}

/**
 * Resumable upload sessions. Sessions live on disk, so they survive a restart; the running hash is kept
 * in memory while the process lives and rebuilt from the file when it is missing.
 */
export interface UploadSessions {
  begin(repo: string, algorithm?: DigestAlgorithm): Promise<UploadStatus>;
  status(repo: string, id: string): Promise<UploadStatus | undefined>;
  append(repo: string, id: string, chunk: Readable, position: ChunkPosition, signal?: AbortSignal): Promise<UploadStatus>;
  /**
   * Verifies the whole upload against `digest` and hands back the file to adopt into the blob store. A
   * sealed session is gone: it takes no more chunks (BLOB_UPLOAD_UNKNOWN) and a cancel finds nothing, so
   * the file stays as verified and belongs to the caller; a refused seal (DIGEST_INVALID) leaves the
   * session as it was.
   */
  seal(repo: string, id: string, digest: Digest): Promise<{ blob: BlobInfo; file: string }>;
  /**
   * Ends what `seal` began. `stored`: the caller moved the file into the store, and what is left of the
   * session goes. Not stored (a full disk, a database that refused the link): the session comes back as
   * it was before the seal, so that the client can complete it again, and its bytes are not left behind
   * for the uploads' expiry with no session to reach them.
   */
  settle(repo: string, id: string, stored: boolean): Promise<void>;
  /**
   * For a whole blob brought to a session that holds no bytes yet (the completing PUT of a monolithic
   * upload): runs `store`, which places the blob by itself, under the session's lock, and ends the
   * session once it has succeeded, as a seal would. Undefined, and `store` not run, when the session
   * has bytes (the caller appends and seals instead). A failed `store` leaves the session as it was;
   * a cancel meanwhile aborts the signal `store` gets, and the call fails BLOB_UPLOAD_UNKNOWN.
   */
  takeWhole<T>(repo: string, id: string, store: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T | undefined>;
  /**
   * Removes the session; false when there is none. Serialised with the session's chunks and seal: a
   * chunk being written is stopped (its append fails BLOB_UPLOAD_UNKNOWN), never acknowledged into a
   * removed session.
   */
  cancel(repo: string, id: string): Promise<boolean>;
  /** Removes sessions not written to since `olderThan`; returns how many. */
  expire(olderThan: Date): Promise<number>;
}
