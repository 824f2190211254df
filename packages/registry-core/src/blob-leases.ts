import type { Digest } from './digest.js';

/**
 * Keeps a blob's file from garbage collection while a push places it in the blob store and links it:
 * taken before the file is moved into place, released once the link is committed. Garbage collection
 * deletes no blob row and no blob file while a lease on the digest is live, so a push never ends with
 * a link to a file that a concurrent sweep removed.
 */
export interface BlobLeases {
  lease(digest: Digest): number | Promise<number>;
  release(id: number): void | Promise<void>;
}
