import type { Router } from '@koa/router';
import { RegistryError } from '@wharf/registry-core';
import { warningHeader } from '../http/warning-header.js';
import { capture, paginate, repository, type RouteDeps } from './context.js';

export function registerTags(router: Router, deps: RouteDeps): void {
  router.get(/^\/v2\/(.+)\/tags\/list$/, async (ctx) => {
    const name = capture(ctx, 0);
    const target = await repository(ctx, deps, 'tags');
    const tags = await paginate(ctx, `/v2/${name}/tags/list`, async (page) => {
      const listed = await target.reader.listTags(target.repo, page.n, page.last);
      if (listed?.warning) ctx.set('Warning', warningHeader(listed.warning));
      return listed && { items: listed.tags, more: listed.more };
    });
    if (tags === undefined) throw new RegistryError('NAME_UNKNOWN', 'repository name not known to registry', { name });
    ctx.body = { name, tags };
  });
}
