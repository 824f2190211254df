import { afterEach, beforeAll, beforeEach, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { closeSync, constants, openSync, readSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AlignedBlocks, BLOCK_SIZE } from '../src/aligned-blocks.js';
import type { HeldBytes } from '@wharf/registry-core';
import { FillWriter, fillBudget } from '../src/fill-writer.js';

/** Whether the file system of `dir` takes O_DIRECT (tmpfs did not before Linux 6.6). */
async function takesDirect(dir: string): Promise<boolean> {
  const probe = join(dir, 'probe');
  await (await open(probe, 'w')).close();
  try {
    await (await open(probe, constants.O_WRONLY | constants.O_DIRECT)).close();
    return true;
  } catch {
    return false;
  }
}

/** Pushes `bytes` in `chunk`-sized pieces, waiting for room whenever the writer asks. */
async function pushAll(writer: FillWriter, bytes: Buffer, chunk: number): Promise<void> {
  for (let at = 0; at < bytes.length; at += chunk) {
    if (!writer.push(bytes.subarray(at, at + chunk))) await writer.room();
  }
}

/** Fills in `dir`, each writing a file of its own; `closeAll` closes every writer and its handle. */
function fillsIn(dir: string): { start(name: string): Promise<FillWriter>; closeAll(): Promise<void> } {
  const writers: FillWriter[] = [];
  const handles: FileHandle[] = [];
  return {
    async start(name) {
      const handle = await open(join(dir, name), 'w');
      handles.push(handle);
      const writer = await FillWriter.open(join(dir, name), handle);
      writers.push(writer);
      return writer;
    },
    async closeAll() {
      for (const writer of writers) await writer.close();
      for (const handle of handles) await handle.close().catch(() => undefined);
    },
  };
}

describe.each([
  ['with O_DIRECT', true],
  ['through the page cache', false],
])('FillWriter %s', (_name, direct) => {
  let dir: string;
  let path: string;
  let handle: FileHandle;
  let writer: FillWriter;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-fill-writer-'));
    path = join(dir, 'fill');
    handle = await open(path, 'w');
    writer = await FillWriter.open(path, handle, { direct });
  });
  afterEach(async () => {
    await writer.close();
    await handle.close().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  test('every byte lands in the file, across blocks and in a last block of odd size', async () => {
    const bytes = randomBytes(3 * BLOCK_SIZE + 12_345);
    const seen: number[] = [];
    writer.onWritten = (written) => seen.push(written);
    await pushAll(writer, bytes, 65_537);
    await writer.finish();
    // O_DIRECT where the file system takes it (the temp dirs of CI do).
    expect(writer.writesDirect).toBe(direct && (await takesDirect(dir)));
    expect(writer.written).toBe(bytes.length);
    // Two blocks are written at once and may land in either order: `written` only grows, in whole blocks.
    expect(seen.at(-1)).toBe(bytes.length);
    for (const [i, written] of seen.entries()) {
      expect(written === bytes.length || written % BLOCK_SIZE === 0).toBe(true);
      if (i > 0) expect(written).toBeGreaterThan(seen[i - 1]!);
    }
    expect((await readFile(path)).equals(bytes)).toBe(true);
    // The read-back leaves the file as it is.
    await writer.warm(path);
    expect((await readFile(path)).equals(bytes)).toBe(true);
  });

  test('two blocks go to disk at once, and `written` never counts a byte the file lacks', async () => {
    const bytes = randomBytes(6 * BLOCK_SIZE + 4096);
    const checked: number[] = [];
    writer.onWritten = (written) => {
      // Read back at once: every byte up to `written` is in the file already.
      const fd = openSync(path, 'r');
      try {
        const back = Buffer.alloc(written);
        expect(readSync(fd, back, 0, written, 0)).toBe(written);
        expect(back.equals(bytes.subarray(0, written))).toBe(true);
      } finally {
        closeSync(fd);
      }
      checked.push(written);
    };
    // Three blocks pushed at once: two writes start, the third waits for a slot.
    writer.push(bytes.subarray(0, 3 * BLOCK_SIZE));
    expect(writer.writesInFlight).toBe(2);
    await writer.room();
    await pushAll(writer, bytes.subarray(3 * BLOCK_SIZE), 300_001);
    await writer.finish();
    expect(writer.writesInFlight).toBe(0);
    expect(checked.at(-1)).toBe(bytes.length);
    expect((await readFile(path)).equals(bytes)).toBe(true);
  });

  test('bytes not yet on disk are lent from memory; once their block left memory, view says so', async () => {
    const bytes = randomBytes(BLOCK_SIZE / 2);
    writer.push(bytes);
    expect(writer.written).toBe(0);
    const held = writer.view(1000, bytes.length)!;
    expect(held.bytes.equals(bytes.subarray(1000))).toBe(true);
    held.release();
    // A limit short of what is there is honoured.
    const part = writer.view(0, 10)!;
    expect(part.bytes.length).toBe(10);
    part.release();
    // Ten more blocks: the first leaves the window once written.
    await pushAll(writer, randomBytes(10 * BLOCK_SIZE), 256 * 1024);
    await writer.finish();
    expect(writer.view(1000, bytes.length)).toBeUndefined();
    expect((await readFile(path)).subarray(0, bytes.length).equals(bytes)).toBe(true);
  });

  test('a view still lent keeps its bytes while the fill moves far past them', async () => {
    const first = randomBytes(BLOCK_SIZE);
    await pushAll(writer, first, BLOCK_SIZE);
    const held = writer.view(0, BLOCK_SIZE)!;
    const copy = Buffer.from(held.bytes);
    await pushAll(writer, randomBytes(40 * BLOCK_SIZE), 512 * 1024);
    await writer.finish();
    expect(held.bytes.equals(copy)).toBe(true);
    held.release();
    held.release(); // twice does nothing
    expect((await readFile(path)).subarray(0, BLOCK_SIZE).equals(first)).toBe(true);
  });

  test('nothing is taken after finish()', async () => {
    writer.push(randomBytes(1000));
    await writer.finish();
    await writer.finish();
    expect(() => writer.push(Buffer.alloc(1))).toThrow('push() after finish()');
    expect((await readFile(path)).length).toBe(1000);
  });

  test('a failed write is reported at once through onFailed, with nothing more pushed', async () => {
    await writer.close();
    await handle.close();
    writer = await FillWriter.open(path, handle, { direct: false });
    const failed = new Promise<Error>((resolve) => (writer.onFailed = resolve));
    writer.push(randomBytes(BLOCK_SIZE));
    expect((await failed).message).toMatch(/closed|EBADF/i);
  });

  test('an empty fill writes nothing', async () => {
    await writer.finish();
    expect(writer.written).toBe(0);
    expect((await readFile(path)).length).toBe(0);
  });

  test('a failed write fails the writer: push, room and finish reject', async () => {
    await writer.close();
    await handle.close();
    // Every write through the page cache now fails (the descriptor is closed).
    writer = await FillWriter.open(path, handle, { direct: false });
    const bytes = randomBytes(2 * BLOCK_SIZE);
    writer.push(bytes);
    await expect(writer.finish()).rejects.toThrow();
    expect(() => writer.push(bytes)).toThrow();
    await expect(writer.room()).rejects.toThrow();
  });
});

describe('AlignedBlocks', () => {
  test('hands out distinct page-aligned blocks up to its count, takes them back, and lets its memory go when idle', async () => {
    const pool = new AlignedBlocks(3);
    const blocks = [pool.take(), pool.take(), pool.take()];
    expect(blocks.every((b) => b?.length === BLOCK_SIZE)).toBe(true);
    expect(new Set(blocks.map((b) => b!.byteOffset)).size).toBe(3);
    expect(blocks.every((b) => b!.byteOffset % 4096 === 0)).toBe(true);
    expect(pool.take()).toBeUndefined();
    for (const b of blocks) pool.give(b!);
    expect(pool.taken).toBe(0);
    const again = pool.take()!;
    expect(again.buffer).toBe(blocks[0]!.buffer);
    pool.give(again);
    await sleep(1100);
    const fresh = pool.take()!;
    expect(fresh.buffer).not.toBe(blocks[0]!.buffer);
    // A block of the memory let go is not taken back into the new one.
    pool.give(blocks[1]!);
    expect(pool.taken).toBe(1);
    pool.give(fresh);
  });
});

describe('FillWriter, many fills at once', () => {
  test('with the aligned blocks nearly all out, written blocks leave a fill at once', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-fill-writers-'));
    const { start, closeAll } = fillsIn(dir);
    try {
      // One fill alone keeps its written blocks: clients a little behind are sent them from memory.
      const alone = await start('alone');
      await pushAll(alone, randomBytes(2 * BLOCK_SIZE), BLOCK_SIZE);
      await alone.finish();
      const kept = alone.view(0, 10);
      expect(kept).toBeDefined();
      kept!.release();
      // Seven more fills, four blocks each held by a client's send: the pool of 32 is nearly out.
      const held: HeldBytes[] = [];
      for (let i = 0; i < 7; i++) {
        const w = await start(`busy-${i}`);
        for (let b = 0; b < 4; b++) {
          w.push(randomBytes(b < 3 ? BLOCK_SIZE : 1));
          held.push(w.view(b * BLOCK_SIZE, b * BLOCK_SIZE + 1)!);
        }
      }
      const late = await start('late');
      const bytes = randomBytes(3 * BLOCK_SIZE);
      await pushAll(late, bytes, BLOCK_SIZE);
      await late.finish();
      expect(late.view(0, 10)).toBeUndefined();
      expect((await readFile(join(dir, 'late'))).equals(bytes)).toBe(true);
      for (const h of held) h.release();
    } finally {
      await closeAll();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('fills together', () => {
  /**
   * `count` fills at once, the fills' budget at `limit` blocks, each fill's bytes pushed by `drive`:
   * every file holds its bytes, and every block comes back once they are closed.
   */
  async function manyFills(count: number, limit: number, drive: (writer: FillWriter, bytes: Buffer) => Promise<void>): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-fill-budget-'));
    const saved = fillBudget.limit;
    fillBudget.limit = limit;
    try {
      fillBudget.resetPeak();
      const fills = await Promise.all(
        Array.from({ length: count }, async (_, i) => {
          const path = join(dir, `fill-${i}`);
          const handle = await open(path, 'w');
          return { path, handle, bytes: randomBytes(4 * BLOCK_SIZE + 1000 * i), writer: await FillWriter.open(path, handle) };
        }),
      );
      await Promise.all(fills.map(({ writer, bytes }) => drive(writer, bytes)));
      for (const { path, bytes } of fills) expect((await readFile(path)).equals(bytes)).toBe(true);
      for (const { writer, handle } of fills) {
        await writer.close();
        await handle.close();
      }
      expect(fillBudget.blocks).toBe(0);
    } finally {
      fillBudget.limit = saved;
      await rm(dir, { recursive: true, force: true });
    }
  }

  test('many fills at once hold at most two blocks each past their budget, write every byte, and give every block back', async () => {
    await manyFills(24, 4, async (writer, bytes) => {
      await pushAll(writer, bytes, 65_536);
      await writer.finish();
    });
    // Unbounded, each fill held its unwritten blocks and the one it was filling: 72 in all here.
    expect(fillBudget.peak).toBeGreaterThanOrEqual(4);
    expect(fillBudget.peak).toBeLessThanOrEqual(4 + 2 * 24);
  });

  test('past the budget, a chunk across a block boundary waits for the write: one block per fill, and the caller reuses its memory only after room()', async () => {
    let heldAny = false;
    await manyFills(24, 4, async (writer, bytes) => {
      // As a socket reader does: every chunk read into the same memory, 100,000 bytes at a time
      // (across a block boundary now and then), overwritten once the writer lets go of it.
      const scratch = Buffer.alloc(100_000);
      for (let at = 0; at < bytes.length; at += scratch.length) {
        const n = bytes.copy(scratch, 0, at, at + scratch.length);
        const more = writer.push(scratch.subarray(0, n));
        if (writer.holding) heldAny = true;
        if (!more) await writer.room();
        scratch.fill(0xee);
      }
      await writer.finish();
    });
    expect(heldAny).toBe(true);
    // Two blocks each before (a chunk across a boundary took the next block while the full one was
    // written): 48 here.
    expect(fillBudget.peak).toBeLessThanOrEqual(4 + 24);
  });

  test("a chunk held past the budget is the blob's end when the body ends before room() settles", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-fill-budget-'));
    const limit = fillBudget.limit;
    fillBudget.limit = 1;
    try {
      const path = join(dir, 'fill');
      const handle = await open(path, 'w');
      const writer = await FillWriter.open(path, handle);
      const bytes = randomBytes(BLOCK_SIZE + 5000);
      // One block: the budget is spent, and a fill may always hold one.
      expect(writer.push(bytes.subarray(0, BLOCK_SIZE - 5000))).toBe(true);
      // The next chunk crosses the block's end: its rest is held until the block is written.
      expect(writer.push(bytes.subarray(BLOCK_SIZE - 5000))).toBe(false);
      expect(writer.holding).toBe(true);
      const room = writer.room();
      await writer.finish();
      await room;
      expect((await readFile(path)).equals(bytes)).toBe(true);
      await writer.close();
      await handle.close();
      expect(fillBudget.blocks).toBe(0);
    } finally {
      fillBudget.limit = limit;
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('at the budget, a fill lets its written blocks go rather than wait on other fills; paused, its own writes wake it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-fill-budget-'));
    const opened: { writer: FillWriter; handle: FileHandle }[] = [];
    const fill = async () => {
      const path = join(dir, `fill-${opened.length}`);
      const handle = await open(path, 'w');
      const writer = await FillWriter.open(path, handle);
      opened.push({ writer, handle });
      return writer;
    };
    try {
      expect(fillBudget.blocks).toBe(0);
      // A: three blocks on disk, kept for clients a little behind, and a fourth begun.
      const a = await fill();
      await pushAll(a, randomBytes(3 * BLOCK_SIZE), 65_536);
      while (a.written < 3 * BLOCK_SIZE) await sleep(5);
      expect(a.push(Buffer.alloc(10))).toBe(true);
      expect(fillBudget.blocks).toBe(4);
      // Fills with slow upstreams spend the rest of the budget, one block begun each.
      const idle = fillBudget.limit - 4;
      for (let i = 0; i < idle; i++) expect((await fill()).push(Buffer.alloc(10))).toBe(true);
      expect(fillBudget.spent).toBe(true);
      // A goes on: it gives up its written blocks instead of waiting for another fill to end.
      expect(a.push(Buffer.alloc(10))).toBe(true);
      expect(fillBudget.spent).toBe(false);
      // B, with the budget spent again, pauses once it holds a block being written and one being
      // filled, and resumes as soon as its own write is done.
      while (!fillBudget.spent) expect((await fill()).push(Buffer.alloc(10))).toBe(true);
      const b = await fill();
      const bytes = randomBytes(3 * BLOCK_SIZE);
      let paused = false;
      for (let at = 0; at < bytes.length; at += 65_536) {
        if (!b.push(bytes.subarray(at, at + 65_536))) {
          paused = true;
          await b.room();
        }
      }
      expect(paused).toBe(true);
      await b.finish();
      expect((await readFile(join(dir, `fill-${opened.length - 1}`))).equals(bytes)).toBe(true);
    } finally {
      for (const { writer, handle } of opened) {
        await writer.close();
        await handle.close().catch(() => undefined);
      }
      expect(fillBudget.blocks).toBe(0);
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a room() still waiting when the fill is closed rejects', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-fill-budget-'));
    try {
      const path = join(dir, 'fill');
      const handle = await open(path, 'w');
      const writer = await FillWriter.open(path, handle, { direct: false });
      let at = 0;
      const bytes = randomBytes(8 * BLOCK_SIZE);
      while (writer.push(bytes.subarray(at, at + 65_536))) at += 65_536;
      const room = writer.room();
      await writer.close();
      await expect(room).rejects.toThrow(/closed/);
      await handle.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a fill waiting on the budget fails at once when one of its writes fails', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-fill-budget-'));
    const limit = fillBudget.limit;
    fillBudget.limit = 1;
    try {
      const path = join(dir, 'fill');
      const handle = await open(path, 'w');
      const writer = await FillWriter.open(path, handle, { direct: false });
      // Writes fail: the descriptor is closed under the writer.
      await handle.close();
      const bytes = randomBytes(4 * BLOCK_SIZE);
      await expect(pushAll(writer, bytes, 65_536)).rejects.toThrow();
      await writer.close();
      expect(fillBudget.blocks).toBe(0);
    } finally {
      fillBudget.limit = limit;
      await rm(dir, { recursive: true, force: true });
    }
  });
});

type Read = (...args: unknown[]) => Promise<unknown>;
/** The prototype of node's FileHandle, whose `read` the read-back calls. */
let handleProto: { read: Read };
beforeAll(async () => {
  const handle = await open(process.execPath, 'r');
  handleProto = Object.getPrototypeOf(handle) as { read: Read };
  await handle.close();
});

/** Counts FileHandle reads until stop(). */
function countReads(): { readonly count: number; stop(): void } {
  const read = handleProto.read;
  const counter = { count: 0, stop: () => void (handleProto.read = read) };
  handleProto.read = function (this: unknown, ...args: unknown[]) {
    counter.count += 1;
    return read.apply(this, args);
  };
  return counter;
}

describe('FillWriter read-back', () => {
  test('after O_DIRECT writes it reads into the blocks the fills gave back, not into new memory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-fill-writer-'));
    const path = join(dir, 'fill');
    const handle = await open(path, 'w');
    const writer = await FillWriter.open(path, handle);
    try {
      const bytes = randomBytes(3 * BLOCK_SIZE);
      await pushAll(writer, bytes, 65_536);
      await writer.finish();
      expect(writer.writesDirect).toBe(await takesDirect(dir));
      const fresh: number[] = [];
      const allocUnsafeSlow = Buffer.allocUnsafeSlow;
      Buffer.allocUnsafeSlow = (size: number) => {
        fresh.push(size);
        return allocUnsafeSlow(size);
      };
      const reads = countReads();
      try {
        await writer.warm(path);
      } finally {
        Buffer.allocUnsafeSlow = allocUnsafeSlow;
        reads.stop();
      }
      // The read-back ran (it does after O_DIRECT writes only), in whole blocks...
      expect(reads.count).toBe(writer.writesDirect ? 3 : 0);
      // ...and took no fresh memory: two MiB per fill, four layers finishing at once took 8 MiB more at
      // the image pull's peak RSS.
      expect(fresh).toEqual([]);
      expect((await readFile(path)).equals(bytes)).toBe(true);
    } finally {
      await writer.close();
      await handle.close().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a failed read waits for the other before the blocks go back: a fill that takes them next keeps its bytes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-fill-writer-'));
    const read = handleProto.read;
    const { start, closeAll } = fillsIn(dir);
    try {
      const a = await start('a');
      await pushAll(a, Buffer.alloc(3 * BLOCK_SIZE, 0x11), BLOCK_SIZE);
      await a.finish();
      await a.close();
      // The read-back's read at 0 fails at once (EIO); its read at 1 MiB lands 50 ms later.
      handleProto.read = function (this: unknown, ...args: unknown[]) {
        const [buffer, offset, length, position] = args as [Buffer, number, number, number];
        if (position === 0) return Promise.reject(Object.assign(new Error('EIO: i/o error, read'), { code: 'EIO' }));
        if (position === BLOCK_SIZE) {
          return new Promise((resolve) =>
            setTimeout(() => {
              buffer.fill(0xee, offset, offset + length);
              resolve({ bytesRead: length, buffer });
            }, 50),
          );
        }
        return read.apply(this, args);
      };
      const warming = a.warm(join(dir, 'a')).then(
        () => 'read back',
        (err: Error) => err.message,
      );
      // Another layer's fill goes on meanwhile, taking blocks from the pool.
      const b = await start('b');
      expect(await warming).toMatch(/EIO/);
      const bytes = randomBytes(2 * BLOCK_SIZE);
      b.push(bytes.subarray(0, BLOCK_SIZE / 2));
      await sleep(100);
      handleProto.read = read;
      b.push(bytes.subarray(BLOCK_SIZE / 2));
      for (let at = 0; at < bytes.length; at += BLOCK_SIZE) {
        const held = b.view(at, at + BLOCK_SIZE);
        if (held) expect(held.bytes.equals(bytes.subarray(at, at + BLOCK_SIZE))).toBe(true);
        held?.release();
      }
      await b.finish();
      // Given back while the late read was still landing, a block took 0xee over b's bytes.
      expect((await readFile(join(dir, 'b'))).equals(bytes)).toBe(true);
    } finally {
      handleProto.read = read;
      await closeAll();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
