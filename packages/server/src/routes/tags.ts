import type { Router, RouterContext } from '@koa/router';
import { RegistryError } from '@wharf/registry-core';
import { capture, pageParams, repository, setNextLink, type RouteDeps } from './context.js';

export function registerTags(router: Router, deps: RouteDeps): void {
  router.get(/^\/v2\/(.+)\/tags\/list$/, async (ctx) => {
    const name = capture(ctx, 0);
    const target = await repository(ctx, deps);
    const page = pageParams(ctx);
    if (page.n === 0) {
      if ((await target.reader.tags(target.repo, { n: 0 })) === undefined) throw nameUnknown(name);
      ctx.body = { name, tags: [] };
      return;
    }
    // One more than asked tells whether a next page exists.
    const tags = await target.reader.tags(target.repo, { ...page, ...(page.n !== undefined ? { n: page.n + 1 } : {}) });
    if (tags === undefined) throw nameUnknown(name);
    if (page.n !== undefined && tags.length > page.n) {
      tags.length = page.n;
      setNextLink(ctx, `/v2/${name}/tags/list`, page.n, tags.at(-1));
    }
    ctx.body = { name, tags };
  });
}

function nameUnknown(name: string): RegistryError {
  return new RegistryError('NAME_UNKNOWN', 'repository name not known to registry', { name });
}
