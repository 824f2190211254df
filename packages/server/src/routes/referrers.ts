import type { Router, RouterContext } from '@koa/router';
import { MediaType } from '@wharf/registry-core';
import { warningHeader } from '../http/warning-header.js';
import { capture, digestParam, repository, type RouteDeps } from './context.js';

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
    ctx.set('Content-Type', MediaType.OciIndex);
    ctx.body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests }));
  });
}
