import { describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Digest } from '@wharf/registry-core';
import { verifiedBody } from '../src/verified-body.js';

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

/** What a consumer of `body` got before it ended or failed. */
async function consume(body: Readable): Promise<{ bytes: number; failed: boolean }> {
  let bytes = 0;
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) bytes += chunk.length;
    return { bytes, failed: false };
  } catch {
    return { bytes, failed: true };
  }
}

/** `bytes` as a stream of 64 KiB chunks. */
const chunked = (bytes: Buffer) => Readable.from(Array.from({ length: Math.ceil(bytes.length / 65536) }, (_, i) => bytes.subarray(i * 65536, (i + 1) * 65536)));

describe('verifiedBody', () => {
  const bytes = randomBytes(1024 * 1024 + 5);

  test('passes a blob that matches its digest whole', async () => {
    expect(await consume(verifiedBody(chunked(bytes), sha256(bytes), bytes.length))).toEqual({ bytes: bytes.length, failed: false });
  });

  test('fails before the last chunk when the digest does not match: no complete-looking body', async () => {
    const wrong = randomBytes(bytes.length);
    const got = await consume(verifiedBody(chunked(wrong), sha256(bytes), bytes.length));
    expect(got.failed).toBe(true);
    expect(got.bytes).toBeLessThan(bytes.length);
  });

  test('fails when the body is shorter or longer than the size', async () => {
    expect((await consume(verifiedBody(chunked(bytes.subarray(0, 1000)), sha256(bytes), bytes.length))).failed).toBe(true);
    expect((await consume(verifiedBody(chunked(Buffer.concat([bytes, Buffer.from('x')])), sha256(bytes), bytes.length))).failed).toBe(true);
  });
});
