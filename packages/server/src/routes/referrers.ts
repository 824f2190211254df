import type { Router } from '@koa/router';
import { MediaType } from '@wharf/registry-core';
import { warningHeader } from '../http/warning-header.js';
import { capture, digestParam, repository, type RouteDeps } from './context.js';

export function registerReferrers(router: Router, deps: RouteDeps): void {
  router.get(/^\/v2\/(.+)\/referrers\/([^/]+)$/, async (ctx) => {
    const target = await repository(ctx, deps, 'referrers');
    const subject = digestParam(capture(ctx, 1));
    const artifactType = typeof ctx.query.artifactType === 'string' && ctx.query.artifactType !== '' ? ctx.query.artifactType : undefined;
    const last = typeof ctx.query.last === 'string' && ctx.query.last !== '' ? ctx.query.last : undefined;
    // A page: all of them when their index fits in 4 MiB, else in digest order (referrers-page.ts).
    const page = await target.reader.listReferrers(target.repo, subject, { ...(artifactType !== undefined ? { artifactType } : {}), ...(last !== undefined ? { last } : {}) });
    if (page.warning) ctx.set('Warning', warningHeader(page.warning));
    if (artifactType !== undefined) ctx.set('OCI-Filters-Applied', 'artifactType');
    if (page.more && page.descriptors.length > 0) {
      // The next page's query: this one's (artifactType, containerd's ns) with the page's last digest.
      const next = new URLSearchParams(ctx.querystring);
      next.set('last', page.descriptors.at(-1)!.digest);
      ctx.set('Link', `<${ctx.path}?${next.toString()}>; rel="next"`);
    }
    ctx.set('Content-Type', MediaType.OciIndex);
    ctx.body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: page.descriptors }));
  });
}
