import { describe, expect, test } from '@jest/globals';
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { exposedGc } from '../src/exposed-gc.js';
import { pageAligned, pageAlignedLive } from '../src/page-aligned.js';

describe('pageAligned', () => {
  test('a buffer of the size asked, at the start of memory of its own (a WebAssembly memory: page-aligned), that file reads fill', () => {
    const dir = mkdtempSync(join(tmpdir(), 'wharf-aligned-'));
    try {
      const bytes = randomBytes(3 * 64 * 1024 + 100);
      writeFileSync(join(dir, 'f'), bytes);
      for (const size of [64 * 1024, 512 * 1024, 100_000]) {
        const buffer = pageAligned(size);
        expect(buffer.length).toBe(size);
        // Its own memory, from its first byte: a plain Buffer.allocUnsafeSlow is a malloc'd block
        // (16 bytes past a page boundary), an allocUnsafe one a slice of a shared pool.
        expect(buffer.byteOffset).toBe(0);
        expect(buffer.buffer.byteLength % (64 * 1024)).toBe(0);
        expect(buffer.buffer.byteLength - size).toBeLessThan(64 * 1024);
        expect(Object.prototype.toString.call(buffer.buffer)).toBe('[object ArrayBuffer]');
        const fd = openSync(join(dir, 'f'), 'r');
        try {
          const n = readSync(fd, buffer, 0, Math.min(size, bytes.length), 0);
          expect(buffer.subarray(0, n).equals(bytes.subarray(0, n))).toBe(true);
        } finally {
          closeSync(fd);
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('memories that nobody holds any more stop counting once collected, so the cap on them is never used up for good', async () => {
    const gc = exposedGc();
    expect(gc).toBeDefined();
    const before = pageAlignedLive();
    // Made and dropped inside a function of their own, so that nothing here holds them.
    const made = ((): number => Array.from({ length: 8 }, () => pageAligned(64 * 1024)).filter((b) => b.length === 64 * 1024).length)();
    expect(made).toBe(8);
    expect(pageAlignedLive()).toBe(before + 8);
    // FinalizationRegistry callbacks run after a collection, on a later turn.
    for (let i = 0; i < 20 && pageAlignedLive() > before; i++) {
      gc!();
      await sleep(20);
    }
    // (the first test's buffers may go too)
    expect(pageAlignedLive()).toBeLessThanOrEqual(before);
  });
});
