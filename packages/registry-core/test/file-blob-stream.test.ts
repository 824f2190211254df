import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { fstatSync, openSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBlobStream } from '../src/fs/file-blob-stream.js';

describe('FileBlobStream', () => {
  let dir: string;
  let path: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-fbs-'));
    path = join(dir, 'blob');
    await writeFile(path, randomBytes(1024 * 1024));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('destroyed while a read is in flight, it closes its descriptor only after the read returns', async () => {
    const fd = openSync(path, 'r');
    const stream = new FileBlobStream(fd, 0, 1024 * 1024 - 1, 256 * 1024);
    stream.read(0); // starts a read of the file
    stream.destroy();
    // The read is still queued: the descriptor must still be ours, or the read could land elsewhere.
    expect(() => fstatSync(fd)).not.toThrow();
    await new Promise<void>((resolve) => stream.once('close', () => resolve()));
    expect(() => fstatSync(fd)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });

  test('destroyed with no read in flight, it closes its descriptor', async () => {
    const fd = openSync(path, 'r');
    const stream = new FileBlobStream(fd, 0, 1024 * 1024 - 1, 256 * 1024);
    stream.destroy();
    await new Promise<void>((resolve) => stream.once('close', () => resolve()));
    expect(() => fstatSync(fd)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });
});
