import type { Router, RouterContext } from '@koa/router';
import { MAX_MANIFEST_BYTES, RegistryError, isValidTag } from '@wharf/registry-core';
import { emptyBody, readSmallBody } from '../http/body.js';
import { notModified } from '../http/conditional.js';
import { listImage, wantsListImage } from '../http/legacy-accept.js';
import { warningHeader } from '../http/warning-header.js';
import { writerOf, type ResolvedRepository } from '../repositories.js';
import { capture, repository, type RouteDeps } from './context.js';

const MANIFEST = /^\/v2\/(.+)\/manifests\/([^/]+)$/;


/**
 * A proxied name says whose answer it is, and that it may be a remembered one: a pipeline racing a
 * push to the upstream otherwise sees a plain 404 for up to absent_ttl with nothing saying why. A
 * local repository that a pull would otherwise have read from an upstream (`default_upstream`,
 * `?ns=`) says that it is local, and where the upstream's images of that name are: one push to it
 * hides every upstream tag it does not have.
 */
function manifestUnknown(reference: string, target: ResolvedRepository | undefined, mayUseUpstream: (upstream: string) => boolean = () => true): RegistryError {
  const upstream = target?.namespace;
  if (upstream === undefined) {
    // Named only to a caller who may pull through it (auth's per-upstream access).
    const shadows = target?.shadows !== undefined && mayUseUpstream(target.shadows) ? target.shadows : undefined;
    if (shadows === undefined) return new RegistryError('MANIFEST_UNKNOWN', 'manifest unknown to registry', { reference });
    const message = `manifest unknown to registry: ${target!.repo} is a repository of this server, so its pulls are not read from ${shadows}; that upstream's images of this name are under proxy/${shadows}/${target!.repo}`;
    return new RegistryError('MANIFEST_UNKNOWN', message, { reference, repository: target!.repo, upstream: shadows });
  }
  // A digest names content that never changes: only a tag can appear upstream a moment later.
  const remembered = reference.includes(':') ? 'remembered for [proxy] absent_ttl' : 'remembered for [proxy] absent_ttl, so a tag pushed there a moment ago may take that long to show';
  return new RegistryError('MANIFEST_UNKNOWN', `manifest unknown to upstream ${upstream} (its 404 is ${remembered})`, { reference, upstream });
}

/**
 * The reference in the path. One that is neither a digest (those have a `:`, and are checked where they
 * are parsed) nor a valid tag names no manifest: TAG_INVALID, answered 404 because it is in the path
 * (see `errorStatus`), where a bad `?tag=` is a 400.
 */
function pathReference(ctx: RouterContext): string {
  const reference = capture(ctx, 1);
  if (!reference.includes(':') && !isValidTag(reference)) {
    ctx.state.invalidPathReference = true;
    throw new RegistryError('TAG_INVALID', 'invalid tag', { tag: reference });
  }
  return reference;
}

export function registerManifests(router: Router, deps: RouteDeps): void {
  const serve = async (ctx: RouterContext) => {
    const target = await repository(ctx, deps, 'manifest');
    const reference = pathReference(ctx);
    // A push's HEAD by digest (a child its index will reference, not sent again) starts an untagged
    // manifest's gc grace over, as a blob HEAD does a layer's; one who may only pull renews nothing.
    const renew = ctx.method === 'HEAD' && ctx.state.mayPush !== false;
    let manifest = await target.reader.manifest(target.repo, reference, { renew });
    if (!manifest) throw manifestUnknown(reference, target, ctx.state.mayUseUpstream as ((upstream: string) => boolean) | undefined);
    if (wantsListImage(ctx.get('Accept') || undefined, manifest.mediaType, reference)) {
      manifest = await listImage(manifest, reference, (digest) => target.reader.manifest(target.repo, digest));
    }
    ctx.status = 200;
    ctx.set('Content-Type', manifest.mediaType);
    ctx.set('Docker-Content-Digest', manifest.digest);
    const etag = `"${manifest.digest}"`;
    ctx.set('ETag', etag);
    if (manifest.warning) ctx.set('Warning', warningHeader(manifest.warning));
    if (notModified(ctx.get('If-None-Match') || undefined, etag)) {
      ctx.status = 304;
      return;
    }
    if (ctx.method === 'HEAD') {
      ctx.length = manifest.bytes.length;
      return;
    }
    ctx.body = manifest.bytes;
  };
  router.get(MANIFEST, serve);
  router.head(MANIFEST, serve);

  router.put(MANIFEST, async (ctx) => {
    const name = capture(ctx, 0);
    const target = await repository(ctx, deps, 'manifest');
    const reference = pathReference(ctx);
    const writer = writerOf(target);
    const bytes = await readSmallBody(ctx.req, MAX_MANIFEST_BYTES);
    const tagParams = ctx.query.tag;
    const extraTags = tagParams === undefined ? [] : Array.isArray(tagParams) ? tagParams : [tagParams];
    const result = await writer.putManifest(target.repo, reference, bytes, ctx.get('Content-Type') || undefined, extraTags);
    ctx.status = 201;
    ctx.set('Location', `/v2/${name}/manifests/${result.digest}`);
    ctx.set('Docker-Content-Digest', result.digest);
    if (result.subject) ctx.set('OCI-Subject', result.subject);
    // The tags of ?tag= were all applied (a refused one fails the whole PUT): say so, one header each.
    if (extraTags.length > 0) ctx.set('OCI-Tag', [...new Set(extraTags)]);
    emptyBody(ctx);
  });

  router.delete(MANIFEST, async (ctx) => {
    const target = await repository(ctx, deps, 'manifest');
    const reference = pathReference(ctx);
    if (!(await writerOf(target).deleteManifest(target.repo, reference))) throw manifestUnknown(reference, undefined);
    ctx.status = 202;
    emptyBody(ctx);
  });
}
