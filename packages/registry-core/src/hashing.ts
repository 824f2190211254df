import type { Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { newHash, type DigestAlgorithm } from './digest.js';
import { RegistryError } from './errors.js';
import { noteReceived } from './young-garbage.js';

/**
 * A pipeline stage that hashes and counts what passes through it, and stops the stream as soon as it
 * grows past `maxSize` (so an oversized body never fills the disk).
 */
export function hashingStage(hash: Hash, counter: { bytes: number }, maxSize?: number) {
  return async function* hashing(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    for await (const chunk of source) {
      counter.bytes += chunk.length;
      if (maxSize !== undefined && counter.bytes > maxSize) {
        throw new RegistryError('SIZE_INVALID', 'content is larger than its declared size', { expected: maxSize });
      }
      hash.update(chunk);
      noteReceived(chunk.length);
      yield chunk;
    }
  };
}

/** Hashes a whole file (used to rebuild an upload's running hash after a restart). */
export async function hashFile(path: string, algorithm: DigestAlgorithm, hash: Hash = newHash(algorithm)): Promise<{ hash: Hash; size: number }> {
  let size = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { hash, size };
}
