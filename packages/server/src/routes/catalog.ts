import type { Router } from '@koa/router';
import type { LocalRegistry } from '@wharf/registry-core';
import { paginate } from './context.js';

export function registerCatalog(router: Router, local: LocalRegistry): void {
  router.get(/^\/v2\/_catalog$/, async (ctx) => {
    ctx.body = { repositories: (await paginate(ctx, '/v2/_catalog', (page) => local.repositories(page))) ?? [] };
  });
}
