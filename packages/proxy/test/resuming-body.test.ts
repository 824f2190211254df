import { describe, expect, test } from '@jest/globals';
import { Readable } from 'node:stream';
import { RESUMING, resumingBlob, skipFirst, type MinimumPace } from '../src/resuming-body.js';

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

  describe('with a minimum pace', () => {
    const blob = Buffer.alloc(400 * 1024, 7);
    const slow = (bytes: number) => Object.assign(new Error(`slow: ${bytes}`), { code: 'ETIMEDOUT' });
    const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

    test('a resume answered with the whole blob again counts the bytes it reads past: a long skip is no trickle', async () => {
      const pace: MinimumPace = { windowMs: 200, minBytes: 4 * 1024, slow };
      const first = new Readable({ read() {} });
      first.on('error', () => undefined);
      first.push(blob.subarray(0, 300 * 1024));
      setTimeout(() => first.destroy(new Error('reset')), 20);
      // The whole blob again, 25 KiB every 60 ms: its first 300 KiB (read past) take 3 windows.
      let at = 0;
      const whole = new Readable({
        read() {
          setTimeout(() => {
            const piece = blob.subarray(at, at + 25 * 1024);
            at += piece.length;
            this.push(piece.length > 0 ? piece : null);
          }, 60);
        },
      });
      const asked: number[] = [];
      const body = resumingBlob({ size: blob.length, body: first }, 0, blob.length - 1, async (from) => {
        asked.push(from);
        // One resume: a second would be the skip cut as a trickle.
        return asked.length === 1 ? skipFirst({ size: blob.length, body: whole }, from) : undefined;
      }, pace).body;
      const cuts: unknown[] = [];
      body.on(RESUMING, (err: unknown) => cuts.push(err));
      expect((await readAll(body)).equals(blob)).toBe(true);
      expect(asked).toEqual([300 * 1024]);
      expect(cuts).toEqual([expect.objectContaining({ message: 'reset' })]);
    });

    test('a window that starts with the reader holding the body back is not a trickle, though the reader then reads', async () => {
      const pace: MinimumPace = { windowMs: 300, minBytes: 10 * 1024 * 1024, slow };
      const part = new Readable({ read() {} });
      const asked: number[] = [];
      const body = resumingBlob({ size: blob.length, body: part }, 0, blob.length - 1, async (from) => {
        asked.push(from);
        return undefined;
      }, pace).body;
      body.on('error', () => undefined);
      const closed = new Promise((resolve) => body.once('close', resolve));
      // More than the body keeps: it holds the part back, and nobody reads for a window and more.
      part.push(blob.subarray(0, 128 * 1024));
      await sleep(400);
      // Then the reader takes all there is, and the part sends a little, for less than a window.
      const got: Buffer[] = [];
      body.on('data', (chunk: Buffer) => got.push(chunk));
      part.push(blob.subarray(128 * 1024, 129 * 1024));
      await sleep(250);
      part.push(blob.subarray(129 * 1024));
      part.push(null);
      await closed;
      expect(Buffer.concat(got).equals(blob)).toBe(true);
      expect(asked).toEqual([]);
    });
  });
});
