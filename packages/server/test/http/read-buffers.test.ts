import { describe, expect, jest, test } from '@jest/globals';
import { ReadBufferPool, SendBuffers } from '../../src/http/read-buffers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('ReadBufferPool', () => {
  test('a send alone gets the largest buffers; sends together split the budget evenly, in halvings, never below the minimum', () => {
    const pool = new ReadBufferPool(8 * MiB, 2 * MiB, 64 * KiB);
    const sends = Array.from({ length: 40 }, () => new SendBuffers(pool, 2));
    const sizes: number[] = [];
    for (const [i, send] of sends.entries()) {
      send.get(0, 100 * MiB);
      if ([0, 1, 2, 3, 7, 39].includes(i)) sizes.push(pool.shareSize(2));
    }
    // 8 MiB over 1, 2, 3, 4, 8 and 40 sends of two buffers each; the largest for a send alone only.
    expect(sizes).toEqual([2 * MiB, 1 * MiB, 1 * MiB, 1 * MiB, 512 * KiB, 64 * KiB]);
    // The first send was given 2 MiB when it was alone; the last came in at the minimum.
    expect(sends[0]!.get(1, 100 * MiB).length).toBe(64 * KiB);
    expect(sends[39]!.get(0, 100 * MiB).length).toBe(64 * KiB);
  });

  test("a send's buffers shrink when others start, and stay so when they are done", () => {
    const pool = new ReadBufferPool(8 * MiB, 2 * MiB, 64 * KiB);
    const first = new SendBuffers(pool, 2);
    expect([first.get(0, 100 * MiB).length, first.get(1, 100 * MiB).length]).toEqual([2 * MiB, 2 * MiB]);
    const others = Array.from({ length: 7 }, () => new SendBuffers(pool, 2));
    for (const send of others) send.get(0, 100 * MiB);
    expect(others[6]!.get(0, 100 * MiB).length).toBe(512 * KiB);
    // Eight sends: 512 KiB each, the first too at its next reads.
    expect(first.get(0, 100 * MiB).length).toBe(512 * KiB);
    expect(first.get(1, 100 * MiB).length).toBe(512 * KiB);
    for (const send of others) send.release(true);
    // Growing back would churn through new buffers at the end of every burst.
    expect(first.get(0, 100 * MiB).length).toBe(512 * KiB);
    first.release(true);
    expect(pool.heldBytes).toBe(0);
  });

  test('a small blob gets a buffer its own size, and only as many as it reads', () => {
    const pool = new ReadBufferPool(4 * MiB, 1 * MiB, 64 * KiB);
    const send = new SendBuffers(pool, 2);
    expect(send.get(0, 700).length).toBe(700);
    expect(pool.heldBytes).toBe(700);
    expect(new SendBuffers(pool, 2).get(0, 0).length).toBe(1);
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

  test('spares stay within the budget, and a larger spare is split for a smaller take', () => {
    const pool = new ReadBufferPool(2 * MiB, 1 * MiB, 64 * KiB);
    const held = [pool.take(1 * MiB), pool.take(1 * MiB), pool.take(1 * MiB)];
    for (const buffer of held) pool.give(buffer, true);
    // Three given back, two kept: the spares alone stay within the budget.
    expect(pool.spareBytes).toBe(2 * MiB);
    const spare = held[1]!;
    const half = pool.take(512 * KiB);
    // Carved out of a spare, not allocated: same memory, and its other half is a spare now.
    expect(half.buffer).toBe(spare.buffer);
    expect(pool.spareBytes).toBe(1 * MiB + 512 * KiB);
    expect(pool.take(512 * KiB).buffer).toBe(spare.buffer);
    expect(pool.spareBytes).toBe(1 * MiB);
  });

  test('a send shrinking to its share gives its large buffer back for the next takes to split', () => {
    const pool = new ReadBufferPool(4 * MiB, 2 * MiB, 64 * KiB);
    const first = new SendBuffers(pool, 2);
    const large = first.get(0, 100 * MiB);
    first.get(1, 100 * MiB);
    // The budget is all held; a second send still gets its share, and the first shrinks at its next read.
    const second = new SendBuffers(pool, 2);
    expect(second.get(0, 100 * MiB).length).toBe(1 * MiB);
    const shrunk = first.get(0, 100 * MiB);
    expect(shrunk.length).toBe(1 * MiB);
    expect(shrunk.buffer).toBe(large.buffer);
  });

  test('spares go (and are reported released) once no send has held a buffer for the idle time, and stay while sends come', () => {
    // Fake timers: the idle time is exact, whatever else the machine runs (with real ones, a loaded
    // CI machine's late timer dropped the spares between two steps).
    jest.useFakeTimers();
    try {
      let released = 0;
      const pool = new ReadBufferPool(4 * MiB, 1 * MiB, 64 * KiB, 50, () => (released += 1));
      const a = pool.take(1 * MiB);
      pool.give(a, true);
      expect(pool.spareBytes).toBe(1 * MiB);
      jest.advanceTimersByTime(30);
      // A send in between starts the wait again.
      pool.give(pool.take(1 * MiB), true);
      jest.advanceTimersByTime(49);
      expect(pool.spareBytes).toBe(1 * MiB);
      // Held buffers keep the spares too.
      const held = pool.take(64 * KiB);
      jest.advanceTimersByTime(500);
      // (the 64 KiB were carved out of the spare)
      expect(pool.spareBytes).toBe(1 * MiB - 64 * KiB);
      expect(released).toBe(0);
      pool.give(held, true);
      jest.advanceTimersByTime(49);
      expect(pool.spareBytes).toBe(1 * MiB);
      jest.advanceTimersByTime(1);
      expect(pool.spareBytes).toBe(0);
      expect(released).toBe(1);
    } finally {
      jest.useRealTimers();
    }
  });

  test('buffers let go without being kept are collected each time they add up to half the budget', () => {
    let released = 0;
    const pool = new ReadBufferPool(4 * MiB, 1 * MiB, 64 * KiB, 60_000, () => (released += 1));
    // Sends whose sockets may still read their buffers: garbage, 1 MiB each.
    const held = [pool.take(1 * MiB), pool.take(1 * MiB), pool.take(1 * MiB)];
    pool.give(held[0]!, false);
    expect(released).toBe(0);
    pool.give(held[1]!, false);
    expect(released).toBe(1);
    pool.give(held[2]!, false);
    expect(released).toBe(1);
    // A small blob's buffer (not a size the spares keep) is let go too.
    pool.give(pool.take(1 * MiB + 1), true);
    expect(released).toBe(2);
    // Kept ones are no garbage.
    for (let i = 0; i < 4; i++) pool.give(pool.take(1 * MiB), true);
    expect(released).toBe(2);
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
