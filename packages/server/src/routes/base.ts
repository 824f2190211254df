import type { Router, RouterContext } from '@koa/router';

export function registerBase(router: Router): void {
  router.get(/^\/v2\/?$/, (ctx) => {
    ctx.body = {};
  });
}
