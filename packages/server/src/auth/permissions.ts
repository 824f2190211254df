import type { Role } from '../auth-config.js';
import type { UpstreamAccess } from '../proxy-config.js';

/**
 * Who may do what: pure functions of a principal, a target and the policy, with no I/O, so that
 * every rule is unit-tested and the middleware and the token endpoint decide alike.
 */

export type Action = 'pull' | 'push' | 'delete';
export const ACTIONS: readonly Action[] = ['pull', 'push', 'delete'];

export const ROLE_ACTIONS: Readonly<Record<Role, readonly Action[]>> = {
  reader: ['pull'],
  developer: ['pull', 'push'],
  maintainer: ['pull', 'push', 'delete'],
};

/** What a CI token may do in its namespace (never delete). */
const CI_ACTIONS: readonly Action[] = ['pull', 'push'];

export type Principal =
  | { readonly kind: 'anonymous' }
  /** Signed in with the user's password (or a token issued for that). */
  | {
      readonly kind: 'user';
      readonly name: string;
      readonly admin: boolean;
      /**
       * Which password the user signed in with (Accounts.credentialOf of the hash it was checked
       * against), for the tokens issued to this sign-in: a new password ends them.
       */
      readonly credential?: string;
      /** The login (refresh token) this sign-in came through: its bearer tokens end with it. */
      readonly login?: number;
    }
  /** A personal access token (`pat`: a subset of the user's actions) or a CI token (`ci`: one namespace). */
  | {
      readonly kind: 'token';
      readonly name: string;
      readonly admin: boolean;
      readonly tokenId: number;
      readonly tokenType: 'pat' | 'ci';
      readonly scopes: readonly Action[];
      /** CI tokens: push and pull only `<namespace>/*`. */
      readonly namespace?: string;
      /** The login (refresh token got with this token) this sign-in came through: its bearer tokens end with it. */
      readonly login?: number;
    };

/** A local repository, or a pull-through repository of an upstream (by upstream key). */
export type Target = { readonly kind: 'repository'; readonly name: string } | { readonly kind: 'proxy'; readonly upstream: string };

export interface Policy {
  /** group → member → role */
  readonly groups: ReadonlyMap<string, ReadonlyMap<string, Role>>;
  /** `alice/site` or `team/*`: pull for everyone, anonymous included. */
  readonly publicPatterns: readonly string[];
  /** An upstream's access rule; undefined when no such upstream is configured. */
  upstreamAccess(upstream: string): UpstreamAccess | undefined;
}

export const ANONYMOUS: Principal = { kind: 'anonymous' };

/** Whether `name` lies in namespace `ns` (`team/app`, `team/sub/app` are in `team`). */
export function inNamespace(name: string, ns: string): boolean {
  return name.startsWith(`${ns}/`);
}

export function isPublic(name: string, patterns: readonly string[]): boolean {
  return patterns.some((p) => (p.endsWith('/*') ? inNamespace(name, p.slice(0, -2)) : p === name));
}

/** The user's own rights on a local repository (admin, owner, group role), before any token limits. */
export function userActions(user: { readonly name: string; readonly admin: boolean }, name: string, policy: Policy): Set<Action> {
  if (user.admin || inNamespace(name, user.name)) return new Set(ACTIONS);
  const out = new Set<Action>();
  for (const [group, members] of policy.groups) {
    const role = members.get(user.name);
    if (role && inNamespace(name, group)) for (const a of ROLE_ACTIONS[role]) out.add(a);
  }
  return out;
}

function isMember(user: string, groups: readonly string[], policy: Policy): boolean {
  return groups.some((g) => policy.groups.get(g)?.has(user) ?? false);
}

/** Whether the principal may pull through `upstream` (the proxy is read-only: pull is all there is). */
export function mayUseUpstream(principal: Principal, upstream: string, policy: Policy): boolean {
  const access = policy.upstreamAccess(upstream);
  if (access === undefined) return false;
  if (access === 'anonymous') return true;
  if (principal.kind === 'anonymous') return false;
  if (principal.kind === 'token' && principal.tokenType === 'pat' && !principal.scopes.includes('pull')) return false;
  if (access === 'authenticated') return true;
  return principal.admin || isMember(principal.name, access, policy);
}

/** Everything the principal may do on the target. */
export function allowedActions(principal: Principal, target: Target, policy: Policy): Set<Action> {
  if (target.kind === 'proxy') return new Set<Action>(mayUseUpstream(principal, target.upstream, policy) ? ['pull'] : []);
  const name = target.name;
  const out = new Set<Action>(isPublic(name, policy.publicPatterns) ? ['pull'] : []);
  if (principal.kind === 'anonymous') return out;
  let own = userActions(principal, name, policy);
  if (principal.kind === 'token') {
    const limit = principal.tokenType === 'ci' ? (principal.namespace && inNamespace(name, principal.namespace) ? CI_ACTIONS : []) : principal.scopes;
    own = new Set([...own].filter((a) => limit.includes(a)));
  }
  for (const a of own) out.add(a);
  return out;
}

/** `_catalog` is for signed-in users (and tokens that may pull), and lists only what they may pull. */
export function mayListCatalog(principal: Principal): boolean {
  if (principal.kind === 'anonymous') return false;
  if (principal.kind === 'token') return principal.tokenType === 'pat' && principal.scopes.includes('pull');
  return true;
}

/** Whether a user with these rights may create a CI token for `namespace` (developer or more there). */
export function mayCreateCiToken(user: { readonly name: string; readonly admin: boolean }, namespace: string, policy: Policy): boolean {
  const actions = userActions(user, `${namespace}/x`, policy);
  return actions.has('pull') && actions.has('push');
}

/** Only actions the principal's credential could ever carry (PAT scopes) are valid in a PAT. */
export function parseActions(text: string): Action[] | undefined {
  const parts = text.split(',').map((a) => a.trim()).filter((a) => a !== '');
  if (parts.length === 0 || parts.some((a) => !ACTIONS.includes(a as Action))) return undefined;
  return ACTIONS.filter((a) => parts.includes(a));
}
