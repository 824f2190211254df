import type { Router } from '@koa/router';
import { MAX_MANIFEST_BYTES, MediaType, type Descriptor } from '@wharf/registry-core';
import { warningHeader } from '../http/warning-header.js';
import { capture, digestParam, repository, type RouteDeps } from './context.js';

/** The index around the descriptors, in bytes: `{"schemaVersion":2,"mediaType":"...","manifests":[` and `]}`. */
const INDEX_FRAME = Buffer.byteLength(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] }));

/**
 * One page of a subject's referrers: all of them when their index fits in a manifest's 4 MiB (what
 * clients read at most: oras-go stops there), else those after `last` in digest order, as many as
 * fit, and whether more follow. The spec: "A Link header MUST be included in the response when the
 * descriptor list cannot be returned in a single manifest."
 */
export function referrersPage(all: readonly Descriptor[], last: string | undefined, limit = MAX_MANIFEST_BYTES): { items: Descriptor[]; more: boolean } {
  const sizes = all.map((d) => Buffer.byteLength(JSON.stringify(d)));
  const whole = INDEX_FRAME + sizes.reduce((sum, n) => sum + n, 0) + Math.max(0, all.length - 1);
  if (last === undefined && whole <= limit) return { items: [...all], more: false };
  // Paged: in digest order, which a page's `last` can name whatever is pushed between two pages.
  const order = all.map((d, i) => ({ d, size: sizes[i]! })).sort((a, b) => (a.d.digest < b.d.digest ? -1 : a.d.digest > b.d.digest ? 1 : 0));
  const after = last === undefined ? order : order.filter((e) => e.d.digest > last);
  const items: Descriptor[] = [];
  let bytes = INDEX_FRAME;
  for (const { d, size } of after) {
    const adds = size + (items.length > 0 ? 1 : 0);
    // At least one to a page, so that paging always moves on.
    if (items.length > 0 && bytes + adds > limit) break;
    items.push(d);
    bytes += adds;
  }
  return { items, more: items.length < after.length };
}

export function registerReferrers(router: Router, deps: RouteDeps): void {
  router.get(/^\/v2\/(.+)\/referrers\/([^/]+)$/, async (ctx) => {
    const target = await repository(ctx, deps, 'referrers');
    const subject = digestParam(capture(ctx, 1));
    const listed = await target.reader.listReferrers(target.repo, subject);
    if (listed.warning) ctx.set('Warning', warningHeader(listed.warning));
    let manifests = listed.descriptors;
    const artifactType = ctx.query.artifactType;
    if (typeof artifactType === 'string' && artifactType !== '') {
      manifests = manifests.filter((m) => m.artifactType === artifactType);
      ctx.set('OCI-Filters-Applied', 'artifactType');
    }
    const last = typeof ctx.query.last === 'string' && ctx.query.last !== '' ? ctx.query.last : undefined;
    const page = referrersPage(manifests, last);
    if (page.more) {
      // The next page's query: this one's (artifactType, containerd's ns) with the page's last digest.
      const next = new URLSearchParams(ctx.querystring);
      next.set('last', page.items.at(-1)!.digest);
      ctx.set('Link', `<${ctx.path}?${next.toString()}>; rel="next"`);
    }
    ctx.set('Content-Type', MediaType.OciIndex);
    ctx.body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: page.items }));
  });
}
