// `wharf export -o FILE`: the file is the whole tarball or is not written; a cut export leaves no
// truncated tarball for a later `docker load` to take for the export.
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { writeFileWhole } from '../src/cli-output.js';

/** A stream that sends `sent`, then fails as an export does when a blob file goes missing. */
function failingAfter(sent: Buffer): Readable {
  let done = false;
  return new Readable({
    read() {
      if (done) this.destroy(new Error('a blob file is missing'));
      else this.push(sent);
      done = true;
    },
  });
}

describe('writeFileWhole', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-out-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a stream that fails leaves no file, and an earlier file at that path as it was', async () => {
    const path = join(dir, 'images.tar');
    await expect(writeFileWhole(path, failingAfter(Buffer.alloc(64 * 1024, 1)))).rejects.toThrow('a blob file is missing');
    expect(await readdir(dir)).toEqual([]);
    await writeFile(path, 'the previous export');
    await expect(writeFileWhole(path, failingAfter(Buffer.alloc(64 * 1024, 2)))).rejects.toThrow('a blob file is missing');
    expect(await readdir(dir)).toEqual(['images.tar']);
    expect(await readFile(path, 'utf8')).toBe('the previous export');
  });

  test('a stream that ends replaces the file whole, and a device is written as it is', async () => {
    const path = join(dir, 'images.tar');
    await writeFile(path, 'the previous export');
    const bytes = Buffer.alloc(256 * 1024, 7);
    await writeFileWhole(path, Readable.from([bytes.subarray(0, 1000), bytes.subarray(1000)]));
    expect((await readFile(path)).equals(bytes)).toBe(true);
    expect(await readdir(dir)).toEqual(['images.tar']);
    await writeFileWhole('/dev/null', Readable.from([bytes]));
  });
});
