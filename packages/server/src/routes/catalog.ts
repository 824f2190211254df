import type { Router } from '@koa/router';
import type { LocalRegistry } from '@wharf/registry-core';
import { visiblePage, type CatalogFilter } from '../auth/catalog-visibility.js';
import { oneMore, paginate } from './context.js';

/** `filter` (auth on): the caller sees only repositories it may pull. */
export function registerCatalog(router: Router, local: LocalRegistry, filter?: CatalogFilter): void {
  router.get(/^\/v2\/_catalog$/, async (ctx) => {
    const visible = filter?.(ctx);
    const list = (page: { n: number; last?: string }) => (visible ? visiblePage((p) => local.repositories(p), page, visible) : local.repositories(page));
    ctx.body = { repositories: (await paginate(ctx, '/v2/_catalog', oneMore(list))) ?? [] };
  });
}
