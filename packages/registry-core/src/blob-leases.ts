import type { Digest } from './digest.js';

/** How often a lease is renewed while its holder works. */
export const LEASE_RENEW_MS = 60_000;

/**
 * Keeps a blob's file from garbage collection while a push places it in the blob store and links it:
 * taken before the file is moved into place, released once the link is committed. Garbage collection
 * deletes no blob row and no blob file while a lease on the digest is live, so a push never ends with
 * a link to a file that a concurrent sweep removed.
 */
export interface BlobLeases {
  lease(digest: Digest): number | Promise<number>;
  release(id: number): void | Promise<void>;
  /**
   * Renewed every LEASE_RENEW_MS while held: a lease nobody renews (its process died) runs out.
   * False when the lease was gone (its holder stopped for longer than it lasts): it is taken anew.
   */
  renew(id: number): boolean | Promise<boolean>;
}
