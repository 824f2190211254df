import type { Router, RouterContext } from '@koa/router';
import { RegistryError, digestOf, isDigestAlgorithm, parseDigest, tryParseDigest, type ChunkPosition, type UploadStatus } from '@wharf/registry-core';
import type { Context } from 'koa';
import { declaredLength, emptyBody, hasBody } from '../http/body.js';
import { parseContentRange, uploadRange } from '../http/range.js';
import { requestInfo, writerOf, type ResolvedRepository } from '../repositories.js';
import { mountFromCache } from './cache-mount.js';
import { capture, digestParam, repository, type RouteDeps } from './context.js';

const START = /^\/v2\/(.+)\/blobs\/uploads\/?$/;
const SESSION = /^\/v2\/(.+)\/blobs\/uploads\/([^/]+)$/;

function uploadUnknown(id: string): RegistryError {
  return new RegistryError('BLOB_UPLOAD_UNKNOWN', 'blob upload unknown to registry', { id });
}

/**
 * A query parameter that must appear at most once. Given twice (`?digest=D&digest=D`) it arrives as an
 * array, which a `typeof … === 'string'` test would take for absent: a monolithic upload would then open
 * an empty session and drop its body. Refused instead, with the code of what the parameter names.
 */
function singleParam(ctx: Context, name: 'digest' | 'mount' | 'from'): string | undefined {
  const value = ctx.query[name];
  if (!Array.isArray(value)) return value;
  const code = name === 'from' ? 'NAME_INVALID' : 'DIGEST_INVALID';
  throw new RegistryError(code, `the ${name} query parameter is given more than once`, { [name]: value });
}

/** The reply headers of an open session: where to send the next chunk and how much is there. */
function describeSession(ctx: Context, name: string, upload: UploadStatus): void {
  ctx.set('Location', `/v2/${name}/blobs/uploads/${upload.id}`);
  ctx.set('Range', uploadRange(upload.size));
  ctx.set('Docker-Upload-UUID', upload.id);
  emptyBody(ctx);
}

/**
 * A chunk that does not start where the upload ends, or whose Content-Range does not parse (416), is
 * answered with where the upload stands, as the Docker registry API (and the OCI spec's first drafts)
 * have it for every 416 of a PATCH: Location, Range and the session's id, so that a client resumes
 * without asking first. `size` is the session's as the request found it. Rethrows `err` in every case.
 */
function resumeAfter(ctx: Context, name: string, id: string, err: unknown, size?: number): never {
  if (err instanceof RegistryError && err.code === 'RANGE_INVALID') {
    const expectedStart = (err.detail as { expectedStart?: unknown } | undefined)?.expectedStart;
    const end = typeof expectedStart === 'number' ? expectedStart : size;
    if (end !== undefined) ctx.state.errorHeaders = { Location: `/v2/${name}/blobs/uploads/${id}`, Range: uploadRange(end), 'Docker-Upload-UUID': id };
  }
  throw err;
}

/** The request's Content-Range, if any; one that does not parse is a 416 saying where the session stands. */
function chunkPosition(ctx: Context, name: string, id: string, session: UploadStatus): ChunkPosition {
  try {
    return parseContentRange(ctx.get('Content-Range') || undefined);
  } catch (err) {
    return resumeAfter(ctx, name, id, err, session.size);
  }
}

function describeBlob(ctx: Context, name: string, digest: string): void {
  ctx.status = 201;
  ctx.set('Location', `/v2/${name}/blobs/${digest}`);
  ctx.set('Docker-Content-Digest', digest);
  emptyBody(ctx);
}

export function registerUploads(router: Router, deps: RouteDeps, options: { readonly automaticMount: boolean }): void {
  // POST: a new session, a monolithic upload (?digest=), or a cross-repository mount (?mount=&from=,
  // or ?mount= alone).
  router.post(START, async (ctx) => {
    const name = capture(ctx, 0);
    const target = await repository(ctx, deps, 'upload');
    const writer = writerOf(target);
    const mount = singleParam(ctx, 'mount');
    const from = singleParam(ctx, 'from');
    const digest = singleParam(ctx, 'digest');

    if (typeof mount === 'string' && mount !== '') {
      const wanted = tryParseDigest(mount);
      // Set by the auth middleware; with auth off anyone may read any repository.
      const mayPull = (ctx.state.mayPull as ((repo: string, resolved?: ResolvedRepository) => boolean) | undefined) ?? (() => true);
      let source: string | undefined;
      if (wanted && typeof from === 'string' && from !== '') {
        const fromTarget = await deps.resolver.resolve(from, new URLSearchParams(), requestInfo(ctx.req, 'upload', 'POST')).catch(() => undefined);
        if (fromTarget?.writer === writer && mayPull(fromTarget.repo)) {
          source = fromTarget.repo;
        } else if (fromTarget?.cache && mayPull(from, fromTarget)) {
          const copied = await mountFromCache(ctx, { reader: target.reader, writer }, target.repo, fromTarget.cache, fromTarget.repo, wanted.digest);
          if (copied) {
            ctx.state.logFields = { mountedFrom: from };
            return describeBlob(ctx, name, copied.digest);
          }
        }
        // Anything else falls back to an upload.
      } else if (wanted && from === undefined && options.automaticMount) {
        // No `from` (OCI 1.1's automatic content discovery, when `automatic_mount` is on): the first
        // repository holding the blob that the caller may pull, so a 201 never tells anyone a blob
        // exists where they cannot read. Off by default: the conformance suite requires the new
        // session distribution answers (202) for a digest it takes to be nowhere, whatever the
        // registry holds.
        source = await writer.mountSource(wanted.digest, mayPull);
      }
      const mounted = wanted && source !== undefined ? await writer.mountBlob(target.repo, wanted.digest, source) : undefined;
      if (mounted) {
        // The log line tells a mount from a one-request upload (both a POST answered 201).
        ctx.state.logFields = { mountedFrom: source! };
        return describeBlob(ctx, name, mounted.digest);
      }
    } else if (typeof digest === 'string') {
      const expect = digestParam(digest);
      const size = declaredLength(ctx.req);
      // No body, and the digest of a blob that is not empty: a client opening a session with the digest
      // it will send (ollama), not a one-request upload of 0 bytes. It gets the session distribution
      // opens for any POST with ?digest=, hashing with that digest's algorithm; the empty blob itself
      // is still pushed in this one request.
      const { algorithm } = parseDigest(expect);
      const empty = digestOf(Buffer.alloc(0), algorithm);
      if (hasBody(ctx.req) || expect === empty) {
        try {
          const blob = await writer.putBlob(target.repo, ctx.req, { digest: expect, ...(size !== undefined ? { size } : {}) });
          return describeBlob(ctx, name, blob.digest);
        } catch (err) {
          // The same announcement with chunked framing: a body that turned out empty.
          const emptyChunked = size === undefined && err instanceof RegistryError && err.code === 'DIGEST_INVALID' && (err.detail as { actual?: string } | undefined)?.actual === empty;
          if (!emptyChunked) throw err;
        }
      }
      const upload = await writer.beginUpload(target.repo, algorithm);
      ctx.status = 202;
      return describeSession(ctx, name, upload);
    }

    const algorithm = ctx.query['digest-algorithm'];
    if (algorithm !== undefined && (typeof algorithm !== 'string' || !isDigestAlgorithm(algorithm))) {
      throw new RegistryError('DIGEST_INVALID', 'unsupported digest algorithm; use sha256 or sha512', { algorithm });
    }
    const upload = await writer.beginUpload(target.repo, algorithm);
    ctx.status = 202;
    describeSession(ctx, name, upload);
  });

  router.get(SESSION, async (ctx) => {
    const target = await repository(ctx, deps, 'upload');
    const id = capture(ctx, 1);
    const upload = await writerOf(target).uploadStatus(target.repo, id);
    if (!upload) throw uploadUnknown(id);
    ctx.status = 204;
    describeSession(ctx, capture(ctx, 0), upload);
  });

  // PATCH: a chunk with Content-Range, or (Docker-lineage clients) the whole blob as one streamed body.
  router.patch(SESSION, async (ctx) => {
    const target = await repository(ctx, deps, 'upload');
    const id = capture(ctx, 1);
    const writer = writerOf(target);
    const session = await writer.uploadStatus(target.repo, id);
    if (!session) throw uploadUnknown(id);
    const position = chunkPosition(ctx, capture(ctx, 0), id, session);
    const upload = await writer.appendUpload(target.repo, id, ctx.req, position).catch((err: unknown) => resumeAfter(ctx, capture(ctx, 0), id, err));
    ctx.status = 202;
    describeSession(ctx, capture(ctx, 0), upload);
  });

  // PUT: closes the session with the digest of the whole blob, after an optional last chunk.
  router.put(SESSION, async (ctx) => {
    const target = await repository(ctx, deps, 'upload');
    const writer = writerOf(target);
    const id = capture(ctx, 1);
    const digest = singleParam(ctx, 'digest');
    if (digest === undefined || digest === '') {
      throw new RegistryError('DIGEST_INVALID', 'the digest query parameter is required to complete an upload', undefined);
    }
    const expect = parseDigest(digest).digest;
    const session = await writer.uploadStatus(target.repo, id);
    if (!session) throw uploadUnknown(id);
    const finalChunk = hasBody(ctx.req) ? { body: ctx.req, position: chunkPosition(ctx, capture(ctx, 0), id, session) } : undefined;
    const blob = await writer.completeUpload(target.repo, id, expect, finalChunk).catch((err: unknown) => resumeAfter(ctx, capture(ctx, 0), id, err));
    describeBlob(ctx, capture(ctx, 0), blob.digest);
  });

  router.delete(SESSION, async (ctx) => {
    const target = await repository(ctx, deps, 'upload');
    const id = capture(ctx, 1);
    if (!(await writerOf(target).cancelUpload(target.repo, id))) throw uploadUnknown(id);
    ctx.status = 204;
    ctx.body = null;
  });
}
