import { describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { hashingStage } from '../src/hashing.js';

const MiB = 1024 * 1024;

describe('received bodies do not pile up as dead buffers', () => {
  test('hashing 96 MiB that arrives in fresh 64 KiB buffers keeps under 20 MiB of buffer memory', async () => {
    // As a socket delivers a body: a new Buffer per read, dead once hashed and written.
    async function* body(): AsyncGenerator<Buffer> {
      for (let i = 0; i < (96 * MiB) / (64 * 1024); i++) {
        const chunk = Buffer.allocUnsafeSlow(64 * 1024);
        chunk.fill(i & 0xff);
        yield chunk;
      }
    }
    const base = process.memoryUsage().arrayBuffers;
    let peak = 0;
    let bytes = 0;
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        bytes += chunk.length;
        peak = Math.max(peak, process.memoryUsage().arrayBuffers - base);
        done();
      },
    });
    await pipeline(Readable.from(body()), hashingStage(createHash('sha256'), { bytes: 0 }), sink);
    expect(bytes).toBe(96 * MiB);
    // V8 alone scavenges after 32 MiB of new ArrayBuffer memory, so the peak would be 32 MiB or more.
    expect(peak).toBeLessThan(20 * MiB);
  });
});
