import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SharedReads } from '../../src/http/shared-reads.js';

const SEGMENT = 64 * 1024;

describe('SharedReads', () => {
  let dir: string;
  let fd: number;
  let other: number;
  const bytes = randomBytes(5 * SEGMENT + 100);
  const otherBytes = randomBytes(5 * SEGMENT);

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'shared-reads-'));
    writeFileSync(join(dir, 'a'), bytes);
    writeFileSync(join(dir, 'b'), otherBytes);
    fd = openSync(join(dir, 'a'), 'r');
    other = openSync(join(dir, 'b'), 'r');
  });
  afterAll(() => {
    closeSync(fd);
    closeSync(other);
    rmSync(dir, { recursive: true, force: true });
  });

  test('two readers of one key share the segment: the second reads nothing', async () => {
    const reads = new SharedReads(SEGMENT, 4 * SEGMENT);
    const first = await reads.chunk(fd, 'a', 10, bytes.length);
    const second = await reads.chunk(fd, 'a', 10, bytes.length);
    expect(first!.bytes.equals(bytes.subarray(10, SEGMENT))).toBe(true);
    expect(second!.bytes.buffer).toBe(first!.bytes.buffer);
    expect(reads.allocatedBytes).toBe(SEGMENT);
  });

  test('a segment grows as far as the file holds for sure, and no further', async () => {
    const reads = new SharedReads(SEGMENT, 4 * SEGMENT);
    const partial = await reads.chunk(fd, 'a', 0, 1000);
    expect(partial!.bytes.length).toBe(1000);
    const more = await reads.chunk(fd, 'a', 1000, 5000);
    expect(more!.bytes.equals(bytes.subarray(1000, 5000))).toBe(true);
  });

  test('a segment a write still points into is never reused; with all of them in use, the caller reads alone', async () => {
    const reads = new SharedReads(SEGMENT, 2 * SEGMENT);
    const a = await reads.chunk(fd, 'a', 0, bytes.length);
    const b = await reads.chunk(fd, 'a', SEGMENT, bytes.length);
    expect(await reads.chunk(other, 'b', 0, otherBytes.length)).toBeUndefined();
    const copyOfA = Buffer.from(a!.bytes);
    a!.release();
    const c = await reads.chunk(other, 'b', 0, otherBytes.length);
    expect(c!.bytes.equals(otherBytes.subarray(0, SEGMENT))).toBe(true);
    // b was held throughout and still holds its bytes; a's segment now holds b's file.
    expect(b!.bytes.equals(bytes.subarray(SEGMENT, 2 * SEGMENT))).toBe(true);
    expect(copyOfA.equals(bytes.subarray(0, SEGMENT))).toBe(true);
    // The reused segment is found again under its new key, not the old one.
    const again = await reads.chunk(fd, 'a', 0, bytes.length);
    expect(again).toBeUndefined();
    c!.release();
    b!.release();
    expect((await reads.chunk(fd, 'a', 0, bytes.length))!.bytes.equals(bytes.subarray(0, SEGMENT))).toBe(true);
  });

  test('a file shorter than it should be is an error, and its segment is not kept', async () => {
    const reads = new SharedReads(SEGMENT, 4 * SEGMENT);
    await expect(reads.chunk(fd, 'short', bytes.length, bytes.length + 10)).rejects.toThrow('shorter');
    expect(reads.allocatedBytes).toBe(0);
  });
});
