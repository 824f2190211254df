import { randomUUID } from 'node:crypto';
import { createWriteStream, fstat as fstatCallback, open as openCallback } from 'node:fs';
import { promisify } from 'node:util';
import { mkdir, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BlobInfo, BlobStore, ByteRange, IngestExpectation } from '../blob-store.js';
import { hashToDigest, newHash, parseDigest, type Digest } from '../digest.js';
import { RegistryError } from '../errors.js';
import { hashingStage } from '../hashing.js';
import { FileBlobStream, closeFile } from './file-blob-stream.js';

/** Bigger reads mean fewer syscalls and callbacks per GiB; 1 MiB measured about half the CPU of 256 KiB. */
const openFd = promisify(openCallback);
const fstatFd = promisify(fstatCallback);

const READ_CHUNK = 1024 * 1024;

/**
 * Content-addressed blob files: `<root>/blobs/<algorithm>/<hex[0:2]>/<hex>`. Every write goes to a temp
 * file under `tempRoot` (same filesystem, checked at start-up), is hashed while it streams, fsynced, and
 * renamed into place, so a reader never sees a partial blob.
 */
export class FsBlobStore implements BlobStore {
  constructor(
    readonly root: string,
    readonly tempRoot: string,
  ) {}

  pathOf(digest: Digest): string {
    const { algorithm, hex } = parseDigest(digest);
    return join(this.root, 'blobs', algorithm, hex.slice(0, 2), hex);
  }

  async stat(digest: Digest): Promise<BlobInfo | undefined> {
    try {
      const s = await stat(this.pathOf(digest));
      return { digest, size: s.size };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async open(digest: Digest, range?: ByteRange): Promise<Readable | undefined> {
    if (range && (range.start < 0 || range.end < range.start)) {
      throw new RegistryError('RANGE_INVALID', 'invalid byte range', { start: range.start, end: range.end });
    }
    // Open first, so that absence is known before any header goes out; then stream with callback
    // reads on the numeric fd (measured here: about a third less CPU per GiB than FileHandle reads).
    let fd: number;
    try {
      fd = await openFd(this.pathOf(digest), 'r');
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    if (range) return new FileBlobStream(fd, range.start, range.end, READ_CHUNK);
    const size = (await fstatFd(fd).catch((err: unknown) => {
      closeFile(fd);
      throw err;
    })).size;
    return new FileBlobStream(fd, 0, size - 1, READ_CHUNK);
  }

  async ingest(source: Readable, expect: IngestExpectation, signal?: AbortSignal): Promise<BlobInfo> {
    const algorithm = expect.digest ? parseDigest(expect.digest).algorithm : (expect.algorithm ?? 'sha256');
    const temp = join(this.tempRoot, `ingest-${randomUUID()}`);
    const hash = newHash(algorithm);
    const counter = { bytes: 0 };
    let adopted = false;
    // Opened before the stream exists: a write stream that opens its own file may still be opening it
    // when a failed pipeline has destroyed it, and the open then creates the file after the clean-up.
    const fd = await openFd(temp, 'w', 0o644);
    // flush: the file is fsynced before the stream closes, so what is renamed into place is on disk.
    const sink = createWriteStream(temp, { fd, flush: true, highWaterMark: 1024 * 1024 });
    try {
      await pipeline(source, hashingStage(hash, counter, expect.size), sink, signal ? { signal } : {});
      const digest = hashToDigest(algorithm, hash);
      if (expect.size !== undefined && counter.bytes !== expect.size) {
        throw new RegistryError('SIZE_INVALID', 'content size does not match the declared size', { expected: expect.size, actual: counter.bytes });
      }
      if (expect.digest && digest !== expect.digest) {
        throw new RegistryError('DIGEST_INVALID', 'content does not match the digest', { expected: expect.digest, actual: digest });
      }
      const blob = { digest, size: counter.bytes };
      await this.adopt(temp, blob);
      adopted = true;
      return blob;
    } finally {
      if (!adopted) {
        // A failed pipeline has destroyed the stream; its descriptor is closed once 'close' is out
        // (waited for without once(), which would reject with the stream's error instead).
        if (!sink.closed) await new Promise<void>((resolve) => sink.once('close', () => resolve()));
        await rm(temp, { force: true });
      }
    }
  }

  async adopt(file: string, blob: BlobInfo): Promise<void> {
    const target = this.pathOf(blob.digest);
    await mkdir(dirname(target), { recursive: true });
    // Content addressing makes this idempotent: an existing file already holds these bytes.
    await rename(file, target);
  }

  async remove(digest: Digest): Promise<boolean> {
    try {
      await unlink(this.pathOf(digest));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }
}

/**
 * Removes the temporary files of ingests (`ingest-*` under `tempRoot`: pushes, imports) not written
 * to since `olderThan`, or all of them without it: what a crash left. The caller knows how long a
 * running one may leave its file untouched (an import keeps the entries it has read until the whole
 * archive is in), and whether another process may be writing some. Returns how many went.
 */
export async function removeIngestLeftovers(tempRoot: string, olderThan?: Date): Promise<number> {
  let removed = 0;
  let failure: unknown;
  for (const entry of await readdir(tempRoot).catch(() => [] as string[])) {
    if (!entry.startsWith('ingest-')) continue;
    const file = join(tempRoot, entry);
    const s = await stat(file).catch(() => undefined);
    if (!s?.isFile() || (olderThan && s.mtime >= olderThan)) continue;
    // One that cannot go (a permission) does not keep the others: its error is thrown at the end.
    try {
      await rm(file, { force: true });
      removed += 1;
    } catch (err) {
      failure ??= err;
    }
  }
  if (failure !== undefined) throw failure;
  return removed;
}

export function isNotFound(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === 'ENOENT';
}
