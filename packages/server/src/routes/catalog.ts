import type { Router, RouterContext } from '@koa/router';
import type { LocalRegistry } from '@wharf/registry-core';
import { pageParams, setNextLink } from './context.js';

export function registerCatalog(router: Router, local: LocalRegistry): void {
  router.get(/^\/v2\/_catalog$/, async (ctx) => {
    const page = pageParams(ctx);
    if (page.n === 0) {
      ctx.body = { repositories: [] };
      return;
    }
    const repositories = await local.repositories({ ...page, ...(page.n !== undefined ? { n: page.n + 1 } : {}) });
    if (page.n !== undefined && repositories.length > page.n) {
      repositories.length = page.n;
      setNextLink(ctx, '/v2/_catalog', page.n, repositories.at(-1));
    }
    ctx.body = { repositories };
  });
}
