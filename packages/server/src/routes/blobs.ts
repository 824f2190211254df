import type { Router, RouterContext } from '@koa/router';
import { RegistryError } from '@wharf/registry-core';
import { emptyBody } from '../http/body.js';
import { notModified, rangeApplies } from '../http/conditional.js';
import { sendStream } from '../http/send-stream.js';
import { planMultipart } from '../http/multipart-ranges.js';
import { parseRanges } from '../http/range.js';
import { writerOf } from '../repositories.js';
import { capture, digestParam, repository, type RouteDeps } from './context.js';

const BLOB = /^\/v2\/(.+)\/blobs\/([^/]+)$/;

/**
 * A blob of unknown size (a proxy's upstream sent it without a Content-Length) may be sent as it
 * comes to a whole-blob GET over HTTP/1.1: chunked, so a body cut because its digest failed is seen
 * as cut. A range needs the size (Content-Range), and an HTTP/1.0 client ends a body without a length
 * at the connection's close, a cut one included: both wait until the whole blob is in.
 */
function streamsUnsized(ctx: RouterContext): boolean {
  return !ctx.get('Range') && (ctx.req.httpVersionMajor > 1 || ctx.req.httpVersionMinor >= 1);
}

export function registerBlobs(router: Router, deps: RouteDeps): void {
  const serve = async (ctx: RouterContext) => {
    const target = await repository(ctx, deps, 'blob');
    const digest = digestParam(capture(ctx, 1));
    // A HEAD needs the size only, and so does a GET the client already has (its ETag is the digest):
    // through the proxy, a cold blob is asked about, not downloaded.
    const known = notModified(ctx.get('If-None-Match') || undefined, `"${digest}"`);
    // Only a push needs the link's grace started over (set by the auth middleware; with auth off,
    // anyone may push): one who may only pull must not keep an unreferenced layer from gc by asking.
    const stat = { renew: ctx.state.mayPush !== false };
    let blob = ctx.method === 'HEAD' || known ? await target.reader.statBlob(target.repo, digest, stat) : await target.reader.blob(target.repo, digest);
    if (!blob) throw new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry', { digest });
    if (blob.size === undefined && !streamsUnsized(ctx)) blob = await target.reader.statBlob(target.repo, digest, stat);
    if (!blob) throw new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry', { digest });

    ctx.set('Docker-Content-Digest', blob.digest);
    ctx.set('Accept-Ranges', 'bytes');
    const etag = `"${blob.digest}"`;
    ctx.set('ETag', etag);
    ctx.set('Cache-Control', 'max-age=31536000');
    if (known) {
      ctx.status = 304;
      return;
    }
    const size = blob.size;
    // Unsized: only a whole-blob GET gets here (streamsUnsized).
    const ranges = size !== undefined && rangeApplies(ctx.get('If-Range') || undefined, etag) ? parseRanges(ctx.get('Range') || undefined, size) : undefined;
    if (ranges === 'unsatisfiable') {
      ctx.set('Content-Range', `bytes */${size}`);
      throw new RegistryError('RANGE_INVALID', 'requested range not satisfiable', { size });
    }
    const multipart = ranges && ranges.length > 1 ? planMultipart(ranges, size!) : undefined;
    if (multipart) {
      ctx.status = 206;
      ctx.set('Content-Type', multipart.contentType);
      ctx.length = multipart.length;
      if (ctx.method === 'HEAD') return;
      const found = blob;
      if (target.writer || target.cache?.holds(target.repo, digest)) {
        // A stored blob, or one the proxy's cache holds whole: each part read on its own, nothing
        // between them (two bytes at the ends of a 4 GiB layer are not 4 GiB read).
        sendStream(ctx, multipart.body({ kind: 'parts', open: (range) => target.reader.openBlob(target.repo, found, range) }));
        return;
      }
      // Through the proxy, a blob being downloaded: one reader of the span, which follows the download.
      const span = await target.reader.openBlob(target.repo, blob, multipart.span);
      if (!span) throw new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry', { digest });
      sendStream(ctx, multipart.body({ kind: 'span', stream: span }));
      return;
    }
    // Several ranges out of order, overlapping, asking for every byte, or too many: the whole blob.
    const range = ranges?.length === 1 ? ranges[0] : undefined;
    ctx.set('Content-Type', 'application/octet-stream');
    if (range) {
      ctx.status = 206;
      ctx.set('Content-Range', `bytes ${range.start}-${range.end}/${size}`);
    } else {
      ctx.status = 200;
    }
    const length = range ? range.end - range.start + 1 : size;
    if (ctx.method === 'HEAD') {
      if (length !== undefined) ctx.length = length;
      return;
    }
    const body = await target.reader.openBlob(target.repo, blob, range);
    if (!body) throw new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry', { digest });
    // Unsized (the proxy's upstream did not say it): chunked, its end once the digest matched.
    if (length !== undefined) ctx.length = length;
    sendStream(ctx, body);
  };

  router.get(BLOB, serve);
  router.head(BLOB, serve);
  router.delete(BLOB, async (ctx) => {
    const target = await repository(ctx, deps, 'blob');
    const digest = digestParam(capture(ctx, 1));
    if (!(await writerOf(target).deleteBlob(target.repo, digest))) {
      throw new RegistryError('BLOB_UNKNOWN', 'blob unknown to registry', { digest });
    }
    ctx.status = 202;
    ctx.set('Docker-Content-Digest', digest);
    emptyBody(ctx);
  });
}
