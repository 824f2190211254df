import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { FsBlobStore, type ByteRange, type Digest } from '@wharf/registry-core';
import type { BlobFill } from '../src/blob-fill.js';
import { BlobFills } from '../src/blob-fills.js';
import { writeKeptNote } from '../src/fill-note.js';
import { FillOwner } from '../src/fill-owner.js';
import { UpstreamError, type UpstreamBlob } from '../src/upstream.js';

const MiB = 1024 * 1024;
const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/**
 * Fakes the wall clock and its timeouts only (a remnant's deadline is a Date and a setTimeout): the
 * test moves time to a deadline instead of waiting for it, while the fills' I/O, their streams and
 * the test's own sleeps (node:timers/promises) run as usual.
 */
function fakeClock(): void {
  jest.useFakeTimers({ doNotFake: ['hrtime', 'nextTick', 'performance', 'queueMicrotask', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval'] });
}

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; !check(); i++) {
    if (i > 2000) throw new Error('timed out');
    await sleep(5);
  }
}

/**
 * An upstream the test drives: each fetch is recorded with its range and answered from `bytes` (the
 * range as a 206, else the whole) through a PassThrough the test may cut.
 */
function upstreamOf(bytes: Buffer) {
  const asked: (ByteRange | undefined)[] = [];
  const bodies: PassThrough[] = [];
  /** Answer a range request with the whole blob, as an upstream without range support does. */
  let ignoreRanges = false;
  let down = false;
  /** Thrown at range requests, when set. */
  let rangeError: Error | undefined;
  const fetch = async (range?: ByteRange): Promise<UpstreamBlob | undefined> => {
    asked.push(range);
    if (down) throw new UpstreamError('unreachable', 'upstream up is unreachable (ECONNREFUSED)');
    if (range && rangeError) throw rangeError;
    const body = new PassThrough();
    bodies.push(body);
    if (range && !ignoreRanges) return { size: bytes.length, range, body };
    return { size: bytes.length, body };
  };
  return {
    asked,
    bodies,
    fetch,
    ignoreRanges: () => void (ignoreRanges = true),
    setDown: (value: boolean) => void (down = value),
    refuseRanges: (err: Error) => void (rangeError = err),
  };
}

describe('BlobFills: a download its upstream cut leaves its bytes for the next fill', () => {
  let dir: string;
  let temp: string;
  let store: FsBlobStore;
  let fills: BlobFills;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-remnant-'));
    temp = join(dir, 'tmp');
    await mkdir(temp);
    store = new FsBlobStore(join(dir, 'blobs'), temp);
    fills = new BlobFills({ store, tempRoot: temp });
  });
  afterEach(async () => {
    await fills.settled();
    await fills.close();
    jest.useRealTimers();
    await rm(dir, { recursive: true, force: true });
  });

  /** Starts a fill of `bytes`, lets `sent` bytes in, waits until `written` are on disk, then cuts the body. */
  async function cutFill(up: ReturnType<typeof upstreamOf>, bytes: Buffer, sent: number, written: number): Promise<BlobFill> {
    const fill = (await fills.join(sha256(bytes), up.fetch))!;
    up.bodies.at(-1)!.write(bytes.subarray(0, sent));
    await until(() => fill.written >= written);
    up.bodies.at(-1)!.destroy(new Error('read ECONNRESET'));
    await expect(fill.done).rejects.toThrow(/ECONNRESET/);
    await until(() => fills.running === 0);
    return fill;
  }

  const tempFiles = async () => (await readdir(temp)).filter((f) => f.startsWith('fill-'));
  /** The notes in the temp folder, by the file they are about. */
  const notes = async () => {
    const found: Record<string, { digest: string; size: number; length: number; expiresAt: number }> = {};
    for (const f of await tempFiles()) if (f.endsWith('.kept')) found[f.slice(0, -'.kept'.length)] = JSON.parse(await readFile(join(temp, f), 'utf8'));
    return found;
  };

  test('the next fill asks only for the bytes after the whole blocks kept, and its readers get the whole blob', async () => {
    const bytes = randomBytes(5 * MiB + 123);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    await cutFill(up, bytes, 2 * MiB + 500_000, 2 * MiB);
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    // The file, and its note of exactly what was kept (a crash now keeps it too).
    const [file] = await tempFiles();
    expect(await tempFiles()).toEqual([file, `${file}.kept`]);
    expect(await notes()).toEqual({ [file!]: { digest, size: bytes.length, length: 2 * MiB, expiresAt: expect.any(Number), prefix: sha256(bytes.subarray(0, 2 * MiB)) } });

    const fill = (await fills.join(digest, up.fetch))!;
    expect(up.asked).toEqual([undefined, { start: 2 * MiB, end: bytes.length - 1 }]);
    expect(fill.resumedFrom).toBe(2 * MiB);
    expect(fill.size).toBe(bytes.length);
    // Readers of the bytes kept are served from the file before any new byte has come.
    const whole = readAll(fill.reader());
    const tail = readAll(fill.reader({ start: 2 * MiB - 10, end: 3 * MiB }));
    up.bodies.at(-1)!.end(bytes.subarray(2 * MiB));
    expect((await whole).equals(bytes)).toBe(true);
    expect((await tail).equals(bytes.subarray(2 * MiB - 10, 3 * MiB + 1))).toBe(true);
    expect(await fill.done).toEqual({ digest, size: bytes.length });
    expect((await readFile(store.pathOf(digest))).equals(bytes)).toBe(true);
    expect(fills.remnantOf(digest)).toBe(0);
    expect(fills.started).toBe(2);
    expect(fills.resumed).toBe(1);
    expect(await tempFiles()).toEqual([]);
  });

  /** Cuts a fill from upstream `origin` that sent `wrong` (the blob's size, other bytes) after `sent` bytes. */
  async function cutWrong(origin: string, digest: Digest, wrong: Buffer, sent: number): Promise<void> {
    const hostile = upstreamOf(wrong);
    const fill = (await fills.join(digest, hostile.fetch, undefined, origin))!;
    hostile.bodies[0]!.write(wrong.subarray(0, sent));
    await until(() => fill.written >= sent);
    hostile.bodies[0]!.destroy(new Error('read ECONNRESET'));
    await expect(fill.done).rejects.toThrow(/ECONNRESET/);
    await until(() => fills.running === 0);
  }

  test('bytes kept of one upstream\'s download are gone on from only by a fill from that upstream: one that sent wrong bytes and cut spoils no other\'s pull', async () => {
    const bytes = randomBytes(3 * MiB + 7);
    const digest = sha256(bytes);
    await cutWrong('hostile', digest, randomBytes(bytes.length), 2 * MiB);
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    // Whose they are is in their note (a tag of the upstream's name), for a restart.
    expect(Object.values(await notes())).toEqual([expect.objectContaining({ digest, length: 2 * MiB, origin: expect.stringMatching(/^[0-9a-f]{32}$/) })]);

    const good = upstreamOf(bytes);
    const fill = (await fills.join(digest, good.fetch, undefined, 'good'))!;
    // The whole blob from the other upstream, not the rest after the bytes kept.
    expect(good.asked).toEqual([undefined]);
    expect(fill.resumedFrom).toBe(0);
    const whole = readAll(fill.reader());
    good.bodies[0]!.end(bytes);
    expect((await whole).equals(bytes)).toBe(true);
    expect(await fill.done).toEqual({ digest, size: bytes.length });
    // Once the blob is stored, the bytes kept of the other download go.
    await until(() => fills.remnantOf(digest) === 0);
    for (let i = 0; (await tempFiles()).length > 0 && i < 400; i++) await sleep(5);
    expect(await tempFiles()).toEqual([]);
  });

  test('whose bytes kept are outlives a restart, and the same upstream still goes on from them', async () => {
    const bytes = randomBytes(3 * MiB + 7);
    const digest = sha256(bytes);
    await cutWrong('a', digest, bytes, 2 * MiB);
    await fills.close();
    fills = new BlobFills({ store, tempRoot: temp });
    expect(await fills.restore()).toBe(1);
    // Another upstream downloads the whole blob, and leaves the bytes kept alone while it runs.
    const other = upstreamOf(bytes);
    const fromOther = (await fills.join(digest, other.fetch, undefined, 'b'))!;
    expect(other.asked).toEqual([undefined]);
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    other.bodies[0]!.destroy(new Error('read ECONNRESET'));
    await expect(fromOther.done).rejects.toThrow(/ECONNRESET/);
    await until(() => fills.running === 0);
    // Cut before a whole block: it kept nothing, and the first upstream's bytes are still there.
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    const same = upstreamOf(bytes);
    const fill = (await fills.join(digest, same.fetch, undefined, 'a'))!;
    expect(same.asked).toEqual([{ start: 2 * MiB, end: bytes.length - 1 }]);
    same.bodies[0]!.end(bytes.subarray(2 * MiB));
    expect((await readAll(fill.reader())).equals(bytes)).toBe(true);
    expect(await fill.done).toEqual({ digest, size: bytes.length });
  });

  test('a download from another upstream cut with more kept replaces the bytes kept before, whose file goes', async () => {
    const bytes = randomBytes(4 * MiB + 7);
    const digest = sha256(bytes);
    await cutWrong('a', digest, bytes, 1 * MiB);
    const [first] = (await tempFiles()).filter((f) => !f.endsWith('.kept'));
    await cutWrong('b', digest, bytes, 2 * MiB);
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    let files: string[] = [];
    for (let i = 0; i < 400; i++, await sleep(5)) if ((files = (await tempFiles()).filter((f) => !f.endsWith('.kept'))).length === 1) break;
    expect(files).toHaveLength(1);
    expect(files).not.toContain(first);
  });

  test('bytes kept that are not those received (a machine crash) are checked before the range is asked: the whole blob is downloaded instead, and no reader gets them', async () => {
    const bytes = randomBytes(3 * MiB);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    await cutFill(up, bytes, 2 * MiB, 2 * MiB);
    const [file] = await tempFiles();
    const handle = await open(join(temp, file!), 'r+');
    await handle.write(Buffer.from([bytes[1000]! ^ 0xff]), 0, 1, 1000);
    await handle.close();

    const fill = (await fills.join(digest, up.fetch))!;
    // No range request: the whole blob, from byte 0.
    expect(up.asked).toEqual([undefined, undefined]);
    expect(fill.resumedFrom).toBe(0);
    expect(fills.keptMismatched).toBe(1);
    // A client resuming inside the bytes kept gets the bytes of this download.
    const tail = readAll(fill.reader({ start: 500, end: bytes.length - 1 }));
    up.bodies.at(-1)!.end(bytes);
    expect((await tail).equals(bytes.subarray(500))).toBe(true);
    expect(await fill.done).toEqual({ digest, size: bytes.length });
    expect((await readFile(store.pathOf(digest))).equals(bytes)).toBe(true);
    expect(fills.remnantOf(digest)).toBe(0);
    expect(await tempFiles()).toEqual([]);
  });

  test('a body that fails before the fill going on from kept bytes reads it fails the fill, and keeps them, without an unhandled error', async () => {
    const bytes = randomBytes(24 * MiB);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    await cutFill(up, bytes, 16 * MiB, 16 * MiB);
    const fill = (await fills.join(digest, up.fetch))!;
    // Hashing 16 MiB takes milliseconds; the body fails before the fill reads it.
    up.bodies.at(-1)!.destroy(new Error('read ECONNRESET'));
    await expect(fill.done).rejects.toThrow(/ECONNRESET/);
    await until(() => fills.running === 0);
    expect(fills.remnantOf(digest)).toBe(16 * MiB);
  });

  test('an upstream that answers the range with the whole blob: the fill starts from 0 and the bytes kept go', async () => {
    const bytes = randomBytes(3 * MiB);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    await cutFill(up, bytes, 2 * MiB + 1, 2 * MiB);
    up.ignoreRanges();
    const fill = (await fills.join(digest, up.fetch))!;
    expect(fill.resumedFrom).toBe(0);
    expect(up.asked).toHaveLength(2);
    up.bodies.at(-1)!.end(bytes);
    expect((await readAll(fill.reader())).equals(bytes)).toBe(true);
    expect(await fill.done).toEqual({ digest, size: bytes.length });
    expect(fills.resumed).toBe(0);
    expect(await tempFiles()).toEqual([]);
  });

  test('bytes kept that were removed from the temp folder meanwhile: the next fill asks for the whole blob', async () => {
    const bytes = randomBytes(3 * MiB);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    await cutFill(up, bytes, 2 * MiB, 2 * MiB);
    for (const file of await tempFiles()) await rm(join(temp, file));
    const fill = (await fills.join(digest, up.fetch))!;
    expect(up.asked).toEqual([undefined, undefined]);
    up.bodies.at(-1)!.end(bytes);
    expect(await fill.done).toEqual({ digest, size: bytes.length });
  });

  test('an upstream still down when the next fill starts: the bytes stay kept for the try after', async () => {
    const bytes = randomBytes(3 * MiB);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    await cutFill(up, bytes, 2 * MiB, 2 * MiB);
    up.setDown(true);
    await expect(fills.join(digest, up.fetch)).rejects.toThrow(/ECONNREFUSED/);
    await expect(fills.join(digest, up.fetch)).rejects.toThrow(/ECONNREFUSED/);
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    up.setDown(false);
    const fill = (await fills.join(digest, up.fetch))!;
    expect(fill.resumedFrom).toBe(2 * MiB);
    up.bodies.at(-1)!.end(bytes.subarray(2 * MiB));
    expect(await fill.done).toEqual({ digest, size: bytes.length });
    // The bytes kept were read and checked once, not at each try.
    expect(fills.keptReads).toBe(1);
  });

  test.each([416, 500, 501])('an upstream that refuses the range (%i) but serves the whole blob: the fill starts from 0 at once', async (status) => {
    const bytes = randomBytes(3 * MiB);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    await cutFill(up, bytes, 2 * MiB, 2 * MiB);
    up.refuseRanges(new UpstreamError('server-error', `upstream up answered ${status} to blob GET`, status));
    const fill = (await fills.join(digest, up.fetch))!;
    expect(up.asked).toEqual([undefined, { start: 2 * MiB, end: bytes.length - 1 }, undefined]);
    expect(fill.resumedFrom).toBe(0);
    up.bodies.at(-1)!.end(bytes);
    expect(await fill.done).toEqual({ digest, size: bytes.length });
    expect(await tempFiles()).toEqual([]);
  });

  test.each([503, 429])('a range answered %i (the upstream overloaded): the bytes stay kept, and the whole blob is not asked for', async (status) => {
    const bytes = randomBytes(3 * MiB);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    await cutFill(up, bytes, 2 * MiB, 2 * MiB);
    up.refuseRanges(new UpstreamError(status === 429 ? 'rate-limited' : 'server-error', `upstream up answered ${status} to blob GET`, status));
    await expect(fills.join(digest, up.fetch)).rejects.toThrow(String(status));
    expect(up.asked).toEqual([undefined, { start: 2 * MiB, end: bytes.length - 1 }]);
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    expect(fills.remnantBytes).toBe(2 * MiB);
  });

  test('a remnant put back after a try the upstream was down for keeps its deadline', async () => {
    // The clock stands still unless the test moves it: the remnant is kept at `keptAt` exactly.
    fakeClock();
    fills = new BlobFills({ store, tempRoot: temp, remnantTtlMs: 60_000 });
    const bytes = randomBytes(3 * MiB);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    await cutFill(up, bytes, 2 * MiB, 2 * MiB);
    const keptAt = Date.now();
    await jest.advanceTimersByTimeAsync(40_000);
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    up.setDown(true);
    await expect(fills.join(digest, up.fetch)).rejects.toThrow(/ECONNREFUSED/);
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    // Gone 60 s after it was first kept, not 60 s after the failed try (that would be at keptAt + 100 s).
    await jest.advanceTimersByTimeAsync(keptAt + 60_000 - 1 - Date.now());
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    await jest.advanceTimersByTimeAsync(1);
    expect(fills.remnantOf(digest)).toBe(0);
  });

  test('remnants hold at most remnant_max_bytes together: the oldest go first, and one larger alone is not kept', async () => {
    fills = new BlobFills({ store, tempRoot: temp, remnantMaxBytes: 3 * MiB });
    const [a, b, c] = [randomBytes(3 * MiB), randomBytes(3 * MiB), randomBytes(5 * MiB)];
    await cutFill(upstreamOf(a), a, 2 * MiB, 2 * MiB);
    await cutFill(upstreamOf(b), b, 2 * MiB, 2 * MiB);
    expect(fills.remnantOf(sha256(a))).toBe(0);
    expect(fills.remnantOf(sha256(b))).toBe(2 * MiB);
    await cutFill(upstreamOf(c), c, 4 * MiB, 4 * MiB);
    expect(fills.remnantOf(sha256(c))).toBe(0);
    expect(fills.remnantOf(sha256(b))).toBe(2 * MiB);
    await sleep(20);
    // The one kept, and its note: those that went took theirs along.
    expect(Object.values(await notes()).map((n) => n.digest)).toEqual([sha256(b)]);
    expect(await tempFiles()).toHaveLength(2);
  });

  test('a remnant whose file cannot be removed: no unhandled rejection when it expires, and close() resolves', async () => {
    /** Puts a directory with something in it where the fill's file was: rm() without `recursive` fails. */
    const jam = async (): Promise<void> => {
      for (const file of await tempFiles()) {
        if ((await stat(join(temp, file))).isDirectory()) continue;
        await rm(join(temp, file));
        await mkdir(join(temp, file, 'x'), { recursive: true });
      }
    };
    // The test environment (jest-environment.js) fails a test in which a rejection went unhandled.
    try {
      // The remnant expires when the test moves the clock past its deadline, after its file is jammed.
      fakeClock();
      fills = new BlobFills({ store, tempRoot: temp, remnantTtlMs: 60_000 });
      const a = randomBytes(3 * MiB);
      await cutFill(upstreamOf(a), a, 2 * MiB, 2 * MiB);
      await jam();
      expect(fills.remnantOf(sha256(a))).toBe(2 * MiB);
      await jest.advanceTimersByTimeAsync(60_000);
      expect(fills.remnantOf(sha256(a))).toBe(0);
      jest.useRealTimers();

      fills = new BlobFills({ store, tempRoot: temp });
      const b = randomBytes(3 * MiB);
      await cutFill(upstreamOf(b), b, 2 * MiB, 2 * MiB);
      await jam();
      await expect(fills.close()).resolves.toBeUndefined();
      expect(fills.remnantOf(sha256(b))).toBe(0);
      await sleep(50);
    } finally {
      for (const file of await readdir(temp)) await rm(join(temp, file), { recursive: true, force: true });
    }
  });

  test('a fill of the wrong bytes, one cut before its first whole block, or one of unknown size keeps nothing', async () => {
    const wrong = randomBytes(3 * MiB);
    const up = upstreamOf(wrong);
    const digest = sha256(randomBytes(3 * MiB));
    const fill = (await fills.join(digest, up.fetch))!;
    up.bodies.at(-1)!.end(wrong);
    await expect(fill.done).rejects.toThrow(/does not match its digest/);
    expect(fills.remnantOf(digest)).toBe(0);

    const short = randomBytes(3 * MiB);
    await cutFill(upstreamOf(short), short, MiB - 1, 0);
    expect(fills.remnantOf(sha256(short))).toBe(0);

    const unsized = randomBytes(3 * MiB);
    const body = new PassThrough();
    const noSize = (await fills.join(sha256(unsized), async () => ({ body })))!;
    body.write(unsized.subarray(0, 2 * MiB));
    await until(() => noSize.written >= 2 * MiB);
    body.destroy(new Error('read ECONNRESET'));
    await expect(noSize.done).rejects.toThrow();
    await until(() => fills.running === 0);
    expect(fills.remnantOf(sha256(unsized))).toBe(0);
    expect(await tempFiles()).toEqual([]);
  });

  test('bytes kept go after remnant_ttl; a fill cut after close keeps nothing', async () => {
    fills = new BlobFills({ store, tempRoot: temp, remnantTtlMs: 100 });
    const a = randomBytes(2 * MiB + 10);
    await cutFill(upstreamOf(a), a, 2 * MiB, MiB);
    expect(fills.remnantOf(sha256(a))).toBeGreaterThan(0);
    await until(() => fills.remnantOf(sha256(a)) === 0);
    await sleep(20);
    expect(await tempFiles()).toEqual([]);

    fills = new BlobFills({ store, tempRoot: temp });
    await fills.close();
    const c = randomBytes(2 * MiB + 10);
    await cutFill(upstreamOf(c), c, 2 * MiB, MiB);
    expect(fills.remnantOf(sha256(c))).toBe(0);
    expect(await tempFiles()).toEqual([]);
  });

  test('close leaves the bytes kept with a note; restore at the next start takes them back, and the fill goes on from them', async () => {
    const bytes = randomBytes(3 * MiB + 5);
    const digest = sha256(bytes);
    await cutFill(upstreamOf(bytes), bytes, 2 * MiB + 7, 2 * MiB);
    await fills.close();
    expect(fills.remnantOf(digest)).toBe(0);
    const [file, note] = (await tempFiles()).sort();
    expect(note).toBe(`${file}.kept`);

    fills = new BlobFills({ store, tempRoot: temp });
    expect(await fills.restore()).toBe(1);
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
    // Renamed as this server's, with its note: a crash after this start keeps the bytes too.
    const [taken, takenNote] = (await tempFiles()).sort();
    expect(taken).not.toBe(file);
    expect(takenNote).toBe(`${taken}.kept`);
    expect((await notes())[taken!]).toMatchObject({ digest, size: bytes.length, length: 2 * MiB });
    const up = upstreamOf(bytes);
    const fill = (await fills.join(digest, up.fetch))!;
    expect(up.asked).toEqual([{ start: 2 * MiB, end: bytes.length - 1 }]);
    up.bodies.at(-1)!.end(bytes.subarray(2 * MiB));
    expect((await readAll(fill.reader())).equals(bytes)).toBe(true);
    expect(await fill.done).toEqual({ digest, size: bytes.length });
    expect(await tempFiles()).toEqual([]);
  });

  test('a remnant lent to a fill still waiting for its range answer at close is noted too, and stays when the answer fails after', async () => {
    const bytes = randomBytes(3 * MiB);
    const digest = sha256(bytes);
    await cutFill(upstreamOf(bytes), bytes, 2 * MiB, 2 * MiB);
    let fail!: (err: Error) => void;
    let asked = false;
    const stalled = (): Promise<UpstreamBlob | undefined> =>
      new Promise((_resolve, reject) => {
        asked = true;
        fail = reject;
      });
    const joining = fills.join(digest, stalled);
    await until(() => asked);
    await fills.close();
    fail(new UpstreamError('timeout', 'upstream up timed out'));
    await expect(joining).rejects.toThrow(/timed out/);
    const [file, note] = (await tempFiles()).sort();
    expect(note).toBe(`${file}.kept`);

    fills = new BlobFills({ store, tempRoot: temp });
    expect(await fills.restore()).toBe(1);
    expect(fills.remnantOf(digest)).toBe(2 * MiB);
  });

  test('a running fill notes the bytes it has on disk as it goes: after a crash (no close), restore takes them back and the next fill goes on from them', async () => {
    const bytes = randomBytes(6 * MiB + 77);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    const fill = (await fills.join(digest, up.fetch))!;
    const body = up.bodies.at(-1)!;
    const [file] = await tempFiles();
    // The first note comes a second into the fill (a timer notes the block on disk by then); the next one a second later.
    body.write(bytes.subarray(0, MiB + 10));
    await until(() => fill.written >= MiB);
    let noted = 0;
    const poll = async () => {
      await sleep(10);
      noted = (await notes())[file!]?.length ?? 0;
      return noted;
    };
    for (let i = 0; (await poll()) < MiB; i++) if (i > 400) throw new Error('no note of the first block');
    expect(noted).toBe(MiB);
    body.write(bytes.subarray(MiB + 10, 4 * MiB + 10));
    await until(() => fill.written >= 4 * MiB);
    for (let i = 0; (await poll()) < 4 * MiB; i++) if (i > 400) throw new Error('the note did not follow the fill');
    expect((await notes())[file!]).toEqual({ digest, size: bytes.length, length: 4 * MiB, expiresAt: expect.any(Number), prefix: sha256(bytes.subarray(0, 4 * MiB)) });

    // A second server starting on this storage leaves the files of this one, which runs, alone.
    const other = new BlobFills({ store, tempRoot: temp });
    expect(await other.restore()).toBe(0);
    expect(await notes()).toEqual({ [file!]: expect.objectContaining({ length: 4 * MiB }) });
    await other.close();

    // The temp folder as a crash (kill -9) would leave it now: the files of a process that is gone.
    const crashed = join(dir, 'crashed');
    await mkdir(crashed);
    // (Its lock went with the process: none is copied.)
    for (const f of await tempFiles()) await writeFile(join(crashed, f), await readFile(join(temp, f)));
    // This server's fill ends well: its note goes with its file, and none comes back after.
    body.end(bytes.subarray(4 * MiB + 10));
    expect(await fill.done).toEqual({ digest, size: bytes.length });
    await sleep(1200);
    expect(await tempFiles()).toEqual([]);

    const restarted = new BlobFills({ store: new FsBlobStore(join(dir, 'blobs2'), crashed), tempRoot: crashed });
    try {
      expect(await restarted.restore()).toBe(1);
      expect(restarted.remnantOf(digest)).toBe(4 * MiB);
      const again = upstreamOf(bytes);
      const resumed = (await restarted.join(digest, again.fetch))!;
      expect(again.asked).toEqual([{ start: 4 * MiB, end: bytes.length - 1 }]);
      again.bodies.at(-1)!.end(bytes.subarray(4 * MiB));
      expect((await readAll(resumed.reader())).equals(bytes)).toBe(true);
      expect(await resumed.done).toEqual({ digest, size: bytes.length });
      expect((await readdir(crashed)).filter((f) => f.startsWith('fill-'))).toEqual([]);
    } finally {
      await restarted.close();
    }
  });

  test('a fast fill notes its bytes every 8 MiB, not only every second: clients resuming after a crash are never 16 MiB past its note', async () => {
    // The note's clock (performance.now, and its timer) stands still: a note can come only from the
    // 8 MiB rule, whatever the machine's load (the fill's I/O and the test's sleeps run as usual).
    jest.useFakeTimers({ doNotFake: ['hrtime', 'nextTick', 'queueMicrotask', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval', 'Date'] });
    const bytes = randomBytes(12 * MiB);
    const digest = sha256(bytes);
    const up = upstreamOf(bytes);
    const fill = (await fills.join(digest, up.fetch))!;
    const [file] = await tempFiles();
    up.bodies.at(-1)!.write(bytes.subarray(0, 10 * MiB));
    let first: { length: number } | undefined;
    for (let i = 0; !first && i < 2000; i++) {
      await sleep(5);
      first = (await notes())[file!];
    }
    jest.useRealTimers();
    up.bodies.at(-1)!.end(bytes.subarray(10 * MiB));
    expect(await fill.done).toEqual({ digest, size: bytes.length });
    // At the first whole block past 8 MiB on disk: 8 MiB, or up to 10 when writes completed out of order.
    expect(first).toMatchObject({ digest });
    expect(first!.length).toBeGreaterThanOrEqual(8 * MiB);
    expect(first!.length).toBeLessThanOrEqual(10 * MiB);
    expect(first).toMatchObject({ prefix: sha256(bytes.subarray(0, first!.length)) });
  });

  test('two notes of one file written at once both land, and close() while a remnant just kept is noted keeps it', async () => {
    // Each write has a name of its own for its new note: neither renames the other's away.
    const path = join(temp, 'fill-x');
    const kept = { digest: sha256(Buffer.from('x')), size: 3 * MiB, length: MiB, expiresAt: Date.now() + 60_000, prefix: sha256(Buffer.from('y')) };
    for (let i = 0; i < 50; i++) {
      const results = await Promise.allSettled([writeKeptNote(path, kept), writeKeptNote(path, kept)]);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    }
    await rm(`${path}.kept`);
    // The shutdown's close() while the fill its upstream just cut writes its note: the remnant stays.
    for (let i = 0; i < 10; i++) {
      const bytes = randomBytes(3 * MiB + 5);
      const digest = sha256(bytes);
      const up = upstreamOf(bytes);
      const fill = (await fills.join(digest, up.fetch))!;
      up.bodies.at(-1)!.write(bytes.subarray(0, 2 * MiB + 7));
      await until(() => fill.written >= 2 * MiB);
      up.bodies.at(-1)!.destroy(new Error('read ECONNRESET'));
      await new Promise<void>((resolve) => {
        const poll = (): void => void (fills.remnantOf(digest) > 0 ? resolve() : setImmediate(poll));
        poll();
      });
      await fills.close();
      await fill.done.catch(() => undefined);
      expect(Object.values(await notes()).map((n) => n.digest)).toEqual([digest]);
      for (const f of await tempFiles()) await rm(join(temp, f));
      fills = new BlobFills({ store, tempRoot: temp });
    }
  });

  test('restore removes every other fill file: no note, an expired or broken note, a file shorter than its note says', async () => {
    // The clock stands still unless the test moves it: no remnant taken back expires meanwhile.
    fakeClock();
    const ttl = 30_000;
    const zeros = sha256(Buffer.alloc(2 * MiB));
    const note = (digest: string, extra: Record<string, unknown> = {}) => JSON.stringify({ digest, size: 3 * MiB, length: 2 * MiB, expiresAt: Date.now() + 60_000, prefix: zeros, ...extra });
    const twoMiB = Buffer.alloc(2 * MiB);
    const d = (n: number) => sha256(Buffer.from([n]));
    await writeFile(join(temp, 'fill-crashed'), twoMiB);
    await writeFile(join(temp, 'fill-expired'), twoMiB);
    await writeFile(join(temp, 'fill-expired.kept'), note(d(1), { expiresAt: Date.now() - 1 }));
    await writeFile(join(temp, 'fill-broken'), twoMiB);
    await writeFile(join(temp, 'fill-broken.kept'), '{"digest":"sha256:nope"');
    await writeFile(join(temp, 'fill-odd'), twoMiB);
    await writeFile(join(temp, 'fill-odd.kept'), note(d(2), { length: MiB + 1 }));
    await writeFile(join(temp, 'fill-short'), Buffer.alloc(MiB));
    await writeFile(join(temp, 'fill-short.kept'), note(d(3)));
    await writeFile(join(temp, 'fill-orphan.kept'), note(d(4)));
    await writeFile(join(temp, 'fill-good'), twoMiB);
    await writeFile(join(temp, 'fill-good.kept'), note(d(5)));
    // A deadline 30 days ahead is cut to this server's TTL (and no TimeoutOverflowWarning).
    await writeFile(join(temp, 'fill-far'), twoMiB);
    await writeFile(join(temp, 'fill-far.kept'), note(d(6), { expiresAt: Date.now() + 30 * 86_400_000 }));
    // Not a file: restore leaves it and goes on (the server must start).
    await mkdir(join(temp, 'fill-dir', 'x'), { recursive: true });
    await writeFile(join(temp, 'fill-crashed.kept.0a1b2c3d.new'), '{"digest"');
    // Files named after their owner: one whose lock nobody holds (its process is gone) is taken back,
    // and its lock file removed.
    const deadTag = '0123456789abcdef';
    await writeFile(join(temp, `owner-${deadTag}.lock`), '');
    await writeFile(join(temp, `fill-${deadTag}-a`), twoMiB);
    await writeFile(join(temp, `fill-${deadTag}-a.kept`), note(d(7)));
    // Those of a server still running on this storage (its lock held): left to it, note or not.
    const live = FillOwner.take(temp);
    await writeFile(join(temp, `fill-${live.tag}-b`), twoMiB);
    await writeFile(join(temp, `fill-${live.tag}-b.kept`), note(d(8)));
    await writeFile(join(temp, `fill-${live.tag}-c`), twoMiB);
    await writeFile(join(temp, `fill-${live.tag}-c.kept.0a1b2c3d.new`), note(d(9)));
    fills = new BlobFills({ store, tempRoot: temp, remnantTtlMs: ttl });
    expect(await fills.restore()).toBe(3);
    await rm(join(temp, 'fill-dir'), { recursive: true });
    expect(fills.remnantOf(d(5))).toBe(2 * MiB);
    expect(fills.remnantOf(d(6))).toBe(2 * MiB);
    expect(fills.remnantOf(d(7))).toBe(2 * MiB);
    for (const n of [1, 2, 3, 4, 8, 9]) expect(fills.remnantOf(d(n))).toBe(0);
    const left = (await tempFiles()).sort();
    expect(left.filter((f) => f.includes(live.tag))).toEqual([`fill-${live.tag}-b`, `fill-${live.tag}-b.kept`, `fill-${live.tag}-c`, `fill-${live.tag}-c.kept.0a1b2c3d.new`]);
    // The three taken back, renamed as this instance's, each with its note (the deadline cut to the TTL written down too).
    const taken = Object.values(await notes()).filter((n) => [d(5), d(6), d(7)].includes(n.digest as Digest));
    expect(taken).toHaveLength(3);
    for (const n of taken) expect(n.expiresAt).toBeLessThanOrEqual(Date.now() + ttl);
    expect(left.filter((f) => !f.includes(live.tag))).toHaveLength(6);
    const locks = (await readdir(temp)).filter((f) => f.startsWith('owner-'));
    expect(locks).not.toContain(`owner-${deadTag}.lock`);
    expect(locks).toContain(`owner-${live.tag}.lock`);
    await live.release();
    expect((await readdir(temp)).filter((f) => f.startsWith(`owner-${live.tag}`))).toEqual([]);
    // The one noted to go in 30 days goes at the TTL.
    await jest.advanceTimersByTimeAsync(ttl - 1);
    expect(fills.remnantOf(d(6))).toBe(2 * MiB);
    await jest.advanceTimersByTimeAsync(1);
    expect(fills.remnantOf(d(6))).toBe(0);
  });

});
