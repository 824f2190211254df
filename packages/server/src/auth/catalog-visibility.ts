import type { Context } from 'koa';
import { ANONYMOUS, allowedActions, type Principal } from './permissions.js';
import type { AuthService } from './auth-service.js';

/** With auth on: which repositories a caller sees in `_catalog` (those it may pull). */
export type CatalogFilter = (ctx: Context) => ((repo: string) => boolean) | undefined;

export function catalogFilter(auth: AuthService): CatalogFilter {
  return (ctx) => {
    const principal = (ctx.state.principal as Principal | undefined) ?? ANONYMOUS;
    const policy = auth.policy();
    return (repo) => allowedActions(principal, { kind: 'repository', name: repo }, policy).has('pull');
  };
}

/**
 * One page of a listing that skips what `visible` refuses: reads the store in batches after `last`
 * until the page is full or the listing ends, so pagination (`n`, `last`, Link) works as without it.
 */
export async function visiblePage(
  list: (page: { n: number; last?: string }) => Promise<string[]>,
  page: { n: number; last?: string },
  visible: (repo: string) => boolean,
): Promise<string[]> {
  const out: string[] = [];
  const batch = Math.max(100, Math.min(page.n, 1000));
  let after = page.last;
  for (;;) {
    const names = await list({ n: batch, ...(after !== undefined ? { last: after } : {}) });
    for (const name of names) {
      if (out.length >= page.n) return out;
      if (visible(name)) out.push(name);
    }
    if (names.length < batch || out.length >= page.n) return out;
    after = names.at(-1);
  }
}
