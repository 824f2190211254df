import { describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { hashingStage } from '../src/hashing.js';

async function through(chunks: readonly Buffer[], maxSize?: number): Promise<{ out: Buffer[]; digest: string; bytes: number }> {
  const hash = createHash('sha256');
  const counter = { bytes: 0 };
  const out: Buffer[] = [];
  async function* source() {
    yield* chunks;
  }
  for await (const chunk of hashingStage(hash, counter, maxSize)(source())) out.push(Buffer.from(chunk));
  return { out, digest: hash.digest('hex'), bytes: counter.bytes };
}

/**
 * The stage every pushed byte goes through: what it hashes and passes on is the body as sent, however
 * it was cut; small chunks go on in batches (a body in 1-byte chunks cost a hash update and a file
 * write per byte: 4.5-5 CPU s per MiB).
 */
describe('hashingStage', () => {
  const body = Buffer.from(Array.from({ length: 200_000 }, (_, i) => (i * 7919) % 251));
  const expected = createHash('sha256').update(body).digest('hex');

  test('a body in 1-byte chunks goes on in a few batches of 64 KiB, hashed and counted as sent', async () => {
    const { out, digest, bytes } = await through(Array.from(body, (b) => Buffer.of(b)));
    // The first goes on alone (nothing before it was small); the run after it is gathered.
    expect(out.map((c) => c.length)).toEqual([1, 65536, 65536, 65536, 200_000 - 1 - 3 * 65536]);
    expect(Buffer.concat(out).equals(body)).toBe(true);
    expect([digest, bytes]).toEqual([expected, body.length]);
  });

  test('large chunks go on as they came, a run of small ones between them gathered, in order; a small one right after a large one goes on at once', async () => {
    const cuts = [10, 20, 7, 70_000, 5, 5, 6, 30_000, 1, 99_946];
    const chunks: Buffer[] = [];
    let at = 0;
    for (const n of cuts) {
      chunks.push(body.subarray(at, at + n));
      at += n;
    }
    const { out, digest } = await through(chunks);
    expect(out.map((c) => c.length)).toEqual([10, 27, 70_000, 5, 11, 30_000, 1, 99_946]);
    expect(Buffer.concat(out).equals(body)).toBe(true);
    expect(digest).toBe(expected);
  });

  test('past maxSize it stops at once, though the bytes were only gathered', async () => {
    await expect(through(Array.from(body.subarray(0, 1000), (b) => Buffer.of(b)), 999)).rejects.toMatchObject({ code: 'SIZE_INVALID' });
  });
});
