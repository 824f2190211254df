import { RegistryError } from '@wharf/registry-core';
import type { Middleware } from 'koa';
import { clientOf } from './client-address.js';

const WRITES = new Set(['PUT', 'POST', 'PATCH', 'DELETE']);

/**
 * With `[auth] enabled = false` on a loopback address (what a start takes without
 * `allow_anonymous_push`), a registry's writes are for this machine's clients alone. A reverse proxy
 * or a tunnel on the same host connects from loopback too, and opened anonymous pushes and deletes to
 * everyone it forwards for: a request it forwarded (http/client-address.ts says which) may read, not
 * write. `allow_anonymous_push = true` runs an open registry on purpose, and this is not used.
 */
export const localWritesOnly: Middleware = async (ctx, next) => {
  const local = clientOf(ctx.req).local;
  // A read it forwarded is a pull's: its HEAD starts no gc grace over (routes/blobs.ts, manifests.ts).
  if (!local) ctx.state.mayPush = false;
  if (WRITES.has(ctx.method) && ctx.path.startsWith('/v2/') && !local) {
    throw new RegistryError(
      'DENIED',
      'with [auth] enabled = false, only clients on this machine may push or delete, and this request was forwarded (a proxy or tunnel): turn auth on, or set [auth] allow_anonymous_push = true to run an open registry on purpose',
    );
  }
  return next();
};
