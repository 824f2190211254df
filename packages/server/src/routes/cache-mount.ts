import { RegistryError, type BlobInfo, type Digest, type RepositoryReader, type RepositoryWriter } from '@wharf/registry-core';
import type { Readable } from 'node:stream';
import type { Context } from 'koa';
import { goneSignal } from '../http/gone-signal.js';
import { holdIdleTimeout } from '../http/server-wait.js';
import type { CachedBlobs } from '../repositories.js';

/** Copies under way, by digest, per local store: a second mount of the same blob waits for the first. */
const copying = new WeakMap<RepositoryWriter, Map<Digest, Promise<unknown>>>();

/**
 * A mount into the local repository `repo` from a pull-through repository (`cachedRepo` of `cache`),
 * for a caller who may pull through it. An image built `FROM` a proxied one and pushed to a local
 * repository names the proxied one as the source of its base layers (Docker's and BuildKit's pushes
 * do), which then need not be uploaded.
 *
 * The blob is linked when the repository, or the local store, holds it already (the caller has shown
 * it may read these bytes); otherwise the cache's copy is written into the local store through the
 * usual ingest, hashed again, one copy of a digest at a time (the mounts that come meanwhile link it).
 * undefined (a plain upload follows) when the cache does not hold it for that repository, or holds
 * bytes that no longer match their digest.
 */
export async function mountFromCache(
  ctx: Context,
  local: { readonly reader: RepositoryReader; readonly writer: RepositoryWriter },
  repo: string,
  cache: CachedBlobs,
  cachedRepo: string,
  digest: Digest,
): Promise<BlobInfo | undefined> {
  // The copy is the server's work, however long a large layer takes: the client has nothing to send.
  const release = holdIdleTimeout(ctx.req.socket);
  try {
    const here = await local.reader.blob(repo, digest);
    if (here?.size !== undefined) return { digest, size: here.size };
    const cached = await cache.openCached(cachedRepo, digest);
    if (!cached) return undefined;
    try {
      const running = inFlight(local.writer);
      const earlier = running.get(digest);
      if (earlier) {
        // Another mount is copying it: linked from there once it is in (a failed copy: an upload).
        await earlier.catch(() => undefined);
        return await linkStored(local.writer, repo, digest);
      }
      const work = (async () => (await linkStored(local.writer, repo, digest)) ?? (await copyInto(ctx, local.writer, repo, cached)))();
      running.set(digest, work);
      try {
        return await work;
      } finally {
        running.delete(digest);
      }
    } finally {
      cached.body.destroy();
    }
  } finally {
    release();
  }
}

function inFlight(writer: RepositoryWriter): Map<Digest, Promise<unknown>> {
  let map = copying.get(writer);
  if (!map) copying.set(writer, (map = new Map()));
  return map;
}

/** The blob linked to `repo` from a local repository that holds it, when one does. */
async function linkStored(writer: RepositoryWriter, repo: string, digest: Digest): Promise<BlobInfo | undefined> {
  const holder = await writer.mountSource(digest, () => true);
  return holder === undefined ? undefined : writer.mountBlob(repo, digest, holder);
}

async function copyInto(ctx: Context, writer: RepositoryWriter, repo: string, cached: { readonly blob: BlobInfo; readonly body: Readable }): Promise<BlobInfo | undefined> {
  try {
    return await writer.putBlob(repo, cached.body, cached.blob, goneSignal(ctx.res));
  } catch (err) {
    if (!(err instanceof RegistryError) || (err.code !== 'DIGEST_INVALID' && err.code !== 'SIZE_INVALID')) throw err;
    // In the request's log line; `wharf fsck --repair` drops the cached file.
    ctx.state.logFields = { mountFromCacheFailed: err.message };
    return undefined;
  }
}
