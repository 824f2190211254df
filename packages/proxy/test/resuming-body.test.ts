import { describe, expect, test } from '@jest/globals';
import { Readable } from 'node:stream';
import { resumingBlob } from '../src/resuming-body.js';

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

describe('resumingBlob', () => {
  const bytes = Buffer.from('0123456789');

  test('a part that failed before it was followed is resumed, not waited on for ever', async () => {
    const failed = Readable.from([bytes.subarray(0, 4)]);
    // As HttpUpstream's bodies: an error nobody listens for yet must not end the process.
    failed.on('error', () => undefined);
    failed.destroy(new Error('reset'));
    await new Promise((resolve) => setImmediate(resolve));
    const asked: number[] = [];
    const blob = resumingBlob({ size: bytes.length, body: failed }, 0, bytes.length - 1, async (from) => {
      asked.push(from);
      return { size: bytes.length, range: { start: from, end: bytes.length - 1 }, body: Readable.from([bytes.subarray(from)]) };
    });
    expect((await readAll(blob.body)).equals(bytes)).toBe(true);
    expect(asked).toEqual([0]);
  });

  test('with nothing to resume from, it fails as its part did', async () => {
    const failed = new Readable({ read() {} });
    failed.on('error', () => undefined);
    failed.destroy(new Error('reset'));
    await new Promise((resolve) => setImmediate(resolve));
    const blob = resumingBlob({ size: bytes.length, body: failed }, 0, bytes.length - 1, async () => undefined);
    await expect(readAll(blob.body)).rejects.toThrow('reset');
  });
});
