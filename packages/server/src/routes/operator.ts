import type { RouterContext } from '@koa/router';
import { RegistryError } from '@wharf/registry-core';
import { clientOf } from '../http/client-address.js';

/**
 * Whether the caller may use an operator endpoint: with auth on, the auth middleware said it is an
 * administrator (a request it did not see, whatever the reason, is refused); with auth off, a
 * loopback client.
 */
export function assertOperator(ctx: RouterContext, authEnabled: boolean): void {
  if (authEnabled ? ctx.state.administrator !== true : !clientOf(ctx.req).local) {
    throw new RegistryError('DENIED', authEnabled ? 'admin endpoints answer administrators only' : 'admin endpoints answer local clients only', undefined);
  }
}
