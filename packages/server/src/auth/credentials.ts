import { RegistryError } from '@wharf/registry-core';
import type { Principal } from './permissions.js';
import type { AccessEntry } from './scope.js';

// Kept apart from auth-service.ts, which loads bcryptjs and jose: the HTTP layer needs these whether
// or not auth is on, and a server with auth off never loads either library.

/** What the Authorization header of a request proved. */
export type Credentials =
  | { readonly via: 'none'; readonly principal: Principal }
  | { readonly via: 'basic'; readonly principal: Principal }
  | { readonly via: 'bearer'; readonly principal: Principal; readonly access: readonly AccessEntry[] };

/** A refused credential: 401 with a challenge (`invalid_token` for a bearer token). */
export class AuthFailure extends RegistryError {
  constructor(
    message: string,
    readonly scheme: 'basic' | 'bearer',
  ) {
    super('UNAUTHORIZED', message, undefined);
  }
}

export function parseBasic(header: string): { user: string; password: string } | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
  if (!m) return undefined;
  const text = Buffer.from(m[1]!, 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon < 0) return undefined;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}
