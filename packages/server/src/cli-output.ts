import { createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/**
 * Writes `source` to the file `path` whole or not at all: into a temporary file beside it, renamed
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
    const out = createWriteStream(partial, { flags: 'wx' });
    await pipeline(source, out);
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
