import { createWriteStream } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/**
 * Writes `source` to the file `path` whole or not at all: into a temporary file beside it, synced and renamed
 * over `path` once the last byte is written, removed if the stream fails. A tarball cut short must not
 * be left where a later `docker load` would take it for the export. A path that is no regular file
 * (`/dev/stdout`, a FIFO) is written as it is.
 */
export async function writeFileWhole(path: string, source: Readable): Promise<void> {
  const existing = await stat(path).catch(() => undefined);
  if (existing && !existing.isFile()) {
    await pipeline(source, createWriteStream(path));
    return;
  }
  const partial = join(dirname(path), `.${basename(path)}.partial-${process.pid}`);
  try {
    // Opened before the stream starts, and closed before anything is removed or renamed: a stream
    // that opened the file itself could still be opening it, on a busy machine, when a failed pipeline
    // had already removed the partial file, and so leave it behind (a CI run saw it). `flush` syncs
    // the file before the stream closes it, so the rename never publishes a file not yet on disk.
    const out = (await open(partial, 'wx')).createWriteStream({ flush: true });
    try {
      await pipeline(source, out);
    } finally {
      if (!out.closed) await new Promise<void>((resolve) => out.once('close', () => resolve()));
    }
    await rename(partial, path);
  } catch (err) {
    await rm(partial, { force: true });
    // A folder that is not there, or not writable: said of the path the user gave.
    const failed = err as NodeJS.ErrnoException;
    if (failed.path === partial) {
      failed.message = failed.message.replace(partial, path);
      failed.path = path;
    }
    throw err;
  }
}
