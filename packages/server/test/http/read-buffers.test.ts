import { describe, expect, test } from '@jest/globals';
import { ReadBufferPool } from '../../src/http/read-buffers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('ReadBufferPool', () => {
  test('sends share the budget: the first get the largest buffers, later ones what is left, never less than the minimum', () => {
    const pool = new ReadBufferPool(4 * MiB, 1 * MiB, 64 * KiB);
    const sizes: number[] = [];
    for (let i = 0; i < 4; i++) {
      const size = pool.sizeFor(100 * MiB, 2);
      sizes.push(size);
      pool.take(size);
      pool.take(size);
    }
    expect(sizes).toEqual([1 * MiB, 1 * MiB, 64 * KiB, 64 * KiB]);
    expect(pool.heldBytes).toBe(4 * MiB + 4 * 64 * KiB);
  });

  test('a small blob gets buffers its own size', () => {
    const pool = new ReadBufferPool(4 * MiB, 1 * MiB, 64 * KiB);
    expect(pool.sizeFor(700, 2)).toBe(700);
    expect(pool.sizeFor(0, 2)).toBe(1);
  });

  test('given-back buffers are reused; those a socket may still read are not', () => {
    const pool = new ReadBufferPool(4 * MiB, 1 * MiB, 64 * KiB);
    const a = pool.take(1 * MiB);
    const b = pool.take(1 * MiB);
    pool.give(a, true);
    pool.give(b, false);
    expect(pool.heldBytes).toBe(0);
    expect(pool.spareBytes).toBe(1 * MiB);
    expect(pool.take(1 * MiB)).toBe(a);
    expect(pool.take(1 * MiB)).not.toBe(b);
  });

  test('spares and held buffers together stay within the budget', () => {
    const pool = new ReadBufferPool(2 * MiB, 1 * MiB, 64 * KiB);
    const held = [pool.take(1 * MiB), pool.take(1 * MiB)];
    const extra = pool.take(64 * KiB);
    // Given back while the budget is still in use: only what fits is kept.
    pool.give(extra, true);
    for (const buffer of held) pool.give(buffer, true);
    expect(pool.spareBytes).toBe(2 * MiB);
    // A send of another size, once the spares would overrun the budget, lets them go.
    pool.take(512 * KiB);
    pool.take(512 * KiB);
    expect(pool.spareBytes + pool.heldBytes).toBeLessThanOrEqual(2 * MiB);
  });

  test('spares go (and are reported released) once no send has held a buffer for the idle time, and stay while sends come', async () => {
    let released = 0;
    const pool = new ReadBufferPool(4 * MiB, 1 * MiB, 64 * KiB, 50, () => (released += 1));
    const a = pool.take(1 * MiB);
    pool.give(a, true);
    expect(pool.spareBytes).toBe(1 * MiB);
    await new Promise((resolve) => setTimeout(resolve, 30));
    // A send in between starts the wait again.
    pool.give(pool.take(1 * MiB), true);
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(pool.spareBytes).toBe(1 * MiB);
    // Held buffers keep the spares too.
    const held = pool.take(64 * KiB);
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(pool.spareBytes).toBe(1 * MiB);
    expect(released).toBe(0);
    pool.give(held, true);
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(pool.spareBytes).toBe(0);
    expect(released).toBe(1);
  });

  test('spares go after the idle time even when the last buffer given back was not reusable', async () => {
    let released = 0;
    const pool = new ReadBufferPool(4 * MiB, 1 * MiB, 64 * KiB, 30, () => (released += 1));
    const a = pool.take(1 * MiB);
    const b = pool.take(1 * MiB);
    pool.give(a, true);
    pool.give(b, false);
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(pool.spareBytes).toBe(0);
    expect(released).toBe(1);
  });
});
