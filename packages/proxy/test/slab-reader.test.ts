import { describe, expect, test } from '@jest/globals';
import { MIN_READ, SlabReader, readingNow, spareSlabs } from '../src/slab-reader.js';

/** One "socket read" of `n` bytes of `fill` into the reader's room. */
function read(reader: SlabReader, n: number, fill: number): Buffer {
  reader.room().fill(fill, 0, n);
  return reader.take(n);
}

describe('SlabReader', () => {
  test('reads land one after another in a slab; room is never under MIN_READ', () => {
    const reader = new SlabReader();
    const a = read(reader, 1000, 1);
    const b = read(reader, 2000, 2);
    expect(b.buffer).toBe(a.buffer);
    expect(b.byteOffset).toBe(a.byteOffset + 1000);
    for (let i = 0; i < 20; i++) expect(reader.room().length).toBeGreaterThanOrEqual(MIN_READ);
  });

  test('a slab is read into again only once every lent view came back, and a double give-back counts once', () => {
    const reader = new SlabReader();
    const first = read(reader, MIN_READ, 1);
    const x = reader.lend(first.subarray(0, 10));
    const y = reader.lend(first.subarray(10, 20));
    // Fill the slab so the next room is a new one.
    let next = read(reader, reader.room().length, 9);
    while (next.buffer === first.buffer) next = read(reader, reader.room().length, 9);
    reader.release();

    reader.giveBack(x);
    reader.giveBack(x);
    reader.giveBack(Buffer.from(first.subarray(10, 20)));
    // y is still out: no later reader may get x's slab, whatever was given back twice.
    const other = new SlabReader();
    for (let i = 0; i < 8; i++) expect(read(other, MIN_READ, 3).buffer).not.toBe(first.buffer);
    expect(y.every((byte) => byte === 1)).toBe(true);

    reader.giveBack(y);
    const again = new SlabReader();
    expect(again.room().buffer).toBe(first.buffer);
  });

  test('a released reader takes no slab when asked for room again (node asks once after the last read)', () => {
    const done = new SlabReader();
    const slab = read(done, 10, 1).buffer;
    done.release();
    expect(done.room().buffer).not.toBe(slab);
    // Its slab went back to the spares for the next reader.
    expect(new SlabReader().room().buffer).toBe(slab);
  });

  test('readers at once whose views come back in bursts (their fills wait for the disk together) keep reusing their own slabs', () => {
    const readers = [new SlabReader(), new SlabReader(), new SlabReader()];
    const seen = new Set<ArrayBufferLike>();
    for (let round = 0; round < 100; round++) {
      // Each body buffers three slabs' worth while its fill is paused...
      const out = readers.map((reader, i) =>
        Array.from({ length: 24 }, () => {
          const chunk = read(reader, MIN_READ, i);
          seen.add(chunk.buffer);
          return reader.lend(chunk);
        }),
      );
      // ...and hands it all over at once when the fill resumes.
      for (const [i, reader] of readers.entries()) for (const view of out[i]!) reader.giveBack(view);
    }
    // 7,200 reads of 64 KiB, 900 slabs' worth. With four spares shared by all, every round dropped
    // some that came back together and allocated anew: 200 and more slabs.
    expect(seen.size).toBeLessThanOrEqual(3 * 4);
    for (const reader of readers) reader.release();
  });

  test('four readers whose reads each fill a slab (loopback) and who hold four of them while paused reuse their own', () => {
    const readers = [new SlabReader(), new SlabReader(), new SlabReader(), new SlabReader()];
    const seen = new Set<ArrayBufferLike>();
    for (let round = 0; round < 50; round++) {
      const out = readers.map((reader, i) =>
        Array.from({ length: 4 }, () => {
          const chunk = read(reader, reader.room().length, i);
          seen.add(chunk.buffer);
          return reader.lend(chunk);
        }),
      );
      for (const [i, reader] of readers.entries()) for (const view of out[i]!) reader.giveBack(view);
    }
    // 800 slabs' worth of reads (four layers of 100 MiB). With two spares of their own, the readers
    // dropped what came back past them and allocated anew: 65 slabs.
    expect(seen.size).toBeLessThanOrEqual(4 * 6);
    for (const reader of readers) reader.release();
  });

  test('forty readers at once keep sixteen spare slabs of their own and one each past that, and none once released', () => {
    const readers = Array.from({ length: 40 }, () => new SlabReader());
    const out = readers.map((reader, i) => Array.from({ length: 4 }, () => reader.lend(read(reader, reader.room().length, i))));
    for (const [i, reader] of readers.entries()) for (const view of out[i]!) reader.giveBack(view);
    // 160 slabs came back at once: 16 kept by readers, one more by each that had none (a crowd: they
    // are small), 4 shared, the rest left to the collector.
    expect(spareSlabs()).toBeLessThanOrEqual(16 + 40 + 4);
    expect(spareSlabs()).toBeGreaterThanOrEqual(40);
    for (const reader of readers) reader.release();
    expect(spareSlabs()).toBeLessThanOrEqual(4);
  });

  test('past sixteen readers at once, new slabs are small; a reader alone again reads into large ones', () => {
    // Readers of the tests before that were never released still count.
    const base = readingNow();
    expect(base).toBeLessThan(16);
    const alone = new SlabReader();
    expect(alone.room().length).toBe(512 * 1024);
    alone.release();
    // Eighty downloads at once: each holds its slab and the one its paused body points into.
    const crowd = Array.from({ length: 80 }, () => new SlabReader());
    const rooms = crowd.map((reader) => reader.room().length);
    expect(readingNow()).toBe(base + 80);
    // The first sixteen may have taken large spares; the rest read into 128 KiB.
    expect(rooms.slice(17).every((n) => n === 2 * MIN_READ)).toBe(true);
    expect(rooms.reduce((a, b) => a + b, 0)).toBeLessThan(80 * 512 * 1024 * 0.4);
    for (const reader of crowd) {
      reader.take(reader.room().length);
      reader.release();
    }
    expect(readingNow()).toBe(base);
    // Small spares left by the crowd are not handed to a lone download.
    const after = new SlabReader();
    expect(after.room().length).toBe(512 * 1024);
    after.release();
    expect(readingNow()).toBe(base);
  });

  test('readers of small answers (manifests, tokens) do not count among the downloads that make slabs small', () => {
    const base = readingNow();
    const manifests = Array.from({ length: 20 }, () => new SlabReader());
    for (const reader of manifests) {
      reader.room();
      // Its head said a body of a few KiB (plain-http).
      reader.notADownload();
      reader.room();
    }
    expect(readingNow()).toBe(base);
    // A lone download beside them reads into large slabs.
    const download = new SlabReader();
    expect(download.room().length).toBe(512 * 1024);
    download.release();
    for (const reader of manifests) reader.release();
    expect(readingNow()).toBe(base);
  });

  test('lend refuses a view of anything but the current slab', () => {
    const reader = new SlabReader();
    read(reader, 10, 1);
    expect(() => reader.lend(Buffer.alloc(10))).toThrow(RangeError);
    expect(() => reader.take(reader.room().length + 1)).toThrow(RangeError);
  });
});
