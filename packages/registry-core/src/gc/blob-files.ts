import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { tryParseDigest, type Digest } from '../digest.js';
import { isNotFound } from '../fs/fs-blob-store.js';

export interface BlobFile {
  readonly path: string;
  /** undefined for a file whose place does not name a digest (`blobs/sha256/ab/<not hex>`). */
  readonly digest?: Digest;
  readonly size: number;
  readonly mtimeMs: number;
  readonly ctimeMs: number;
  readonly ino: number;
}

/**
 * Every file under `<root>/blobs/<algorithm>/<hex[0:2]>/`, in a stable order. A name that is not the
 * digest its place says, or anything that is not a regular file, comes back without `digest`.
 */
export async function* blobFiles(root: string): AsyncGenerator<BlobFile> {
  const base = join(root, 'blobs');
  for (const algorithm of await list(base)) {
    // A file where a folder belongs (blobs/sha256/x, blobs/md5) is no blob either: reported, not skipped.
    const algorithmFolder = join(base, algorithm);
    const strayAlgorithm = await strayFile(algorithmFolder);
    if (strayAlgorithm) {
      yield strayAlgorithm;
      continue;
    }
    for (const prefix of await list(algorithmFolder)) {
      const folder = join(algorithmFolder, prefix);
      const strayPrefix = await strayFile(folder);
      if (strayPrefix) {
        yield strayPrefix;
        continue;
      }
      for (const name of await list(folder)) {
        const path = join(folder, name);
        const s = await lstat(path).catch((err: unknown) => {
          if (isNotFound(err)) return undefined; // removed meanwhile
          throw err;
        });
        if (!s) continue;
        const parsed = tryParseDigest(`${algorithm}:${name}`);
        const valid = s.isFile() && parsed !== undefined && name.startsWith(prefix);
        yield { path, ...(valid ? { digest: parsed.digest } : {}), size: s.size, mtimeMs: s.mtimeMs, ctimeMs: s.ctimeMs, ino: s.ino };
      }
    }
  }
}

/** `path` as a BlobFile without a digest when it is something other than a folder; undefined for a folder or nothing. */
async function strayFile(path: string): Promise<BlobFile | undefined> {
  const s = await lstat(path).catch((err: unknown) => {
    if (isNotFound(err)) return undefined;
    throw err;
  });
  return s && !s.isDirectory() ? { path, size: s.size, mtimeMs: s.mtimeMs, ctimeMs: s.ctimeMs, ino: s.ino } : undefined;
}

async function list(folder: string): Promise<string[]> {
  try {
    return (await readdir(folder)).sort();
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (isNotFound(err) || code === 'ENOTDIR') return [];
    throw err;
  }
}
