import type { Readable } from 'node:stream';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { hashToDigest, newHash, parseDigest, type Digest } from '@wharf/registry-core';

/**
 * `body` as it streams, but its last chunk only once the whole matches `digest` and `size`: otherwise
 * the stream fails before it (the client's connection is cut), so a complete-looking corrupt blob
 * never goes out. One chunk is held back at a time; nothing else is buffered.
 */
export function verifiedBody(body: Readable, digest: Digest, size: number): Readable {
  const { algorithm } = parseDigest(digest);
  const hash = newHash(algorithm);
  let seen = 0;
  let held: Buffer | undefined;
  const check = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      if (seen > size) return done(new Error(`upstream sent more than the ${size} bytes of the blob`));
      hash.update(chunk);
      const previous = held;
      held = chunk;
      done(null, previous);
    },
    flush(done) {
      if (seen !== size) return done(new Error(`upstream sent ${seen} of the ${size} bytes of the blob`));
      const actual = hashToDigest(algorithm, hash);
      if (actual !== digest) return done(new Error(`upstream blob does not match its digest (got ${actual})`));
      done(null, held);
    },
  });
  // Either side failing destroys the other; the error reaches whoever reads `check`.
  pipeline(body, check).catch(() => undefined);
  return check;
}
