import { describe, expect, test } from '@jest/globals';
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
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

  test('under a limit of the address space (ulimit -v), plain buffers: a memory reserves about 10 GiB of it, which would leave the process without room', () => {
    // The built module, in a process of its own started under the limit (turbo builds before the tests run).
    const built = fileURLToPath(new URL('../dist/page-aligned.js', import.meta.url));
    const script = `import { pageAligned, pageAlignedLive } from ${JSON.stringify(built)};
      const b = pageAligned(100000);
      console.log(JSON.stringify({ length: b.length, backing: b.buffer.byteLength, live: pageAlignedLive(), big: Buffer.allocUnsafeSlow(256 * 1024 * 1024).length }));`;
    const run = (limit: string): { length: number; backing: number; live: number; big: number } => {
      const r = spawnSync('bash', ['-c', `ulimit -v ${limit} && exec "$0" --input-type=module -e "$1"`, process.execPath, script], { encoding: 'utf8' });
      expect([r.status, r.stderr]).toEqual([0, '']);
      return JSON.parse(r.stdout) as { length: number; backing: number; live: number; big: number };
    };
    // Before: one memory took 10 GiB of the 12, and the next large buffer failed ("Array buffer allocation failed").
    expect(run('12000000')).toEqual({ length: 100000, backing: 100000, live: 0, big: 256 * 1024 * 1024 });
    // Without a limit: a memory of its own, two WebAssembly pages.
    expect(run('unlimited')).toEqual({ length: 100000, backing: 131072, live: 1, big: 256 * 1024 * 1024 });
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
