import { RegistryError, isValidRepositoryName } from '@wharf/registry-core';
import { goneSignal } from '../http/gone-signal.js';
import type { Context, Next } from 'koa';
import { clientOf } from '../http/client-address.js';
import { requestInfo, type RepositoryResolver, type ResolvedRepository, type Resource } from '../repositories.js';
import type { AuthService } from './auth-service.js';
import { AuthFailure, type Credentials } from './credentials.js';
import { allowedActions, mayListCatalog, mayUseUpstream, type Action, type Principal, type Target } from './permissions.js';
import { rememberResolved } from '../routes/context.js';
import { routeAccess } from './route-access.js';
import { grantedActions } from './scope.js';
import { PLAIN_HOST } from '../http/plain-host.js';

/** `http(s)://<Host>/auth/token`, or the configured realm. A Host that is not a plain host[:port] is not echoed. */
export function realmOf(ctx: Context, configured: string | undefined): string {
  if (configured) return configured;
  const given = ctx.get('Host');
  const local = ctx.socket.localAddress ?? '127.0.0.1';
  const host = PLAIN_HOST.test(given) ? given : `${local.includes(':') ? `[${local}]` : local}:${ctx.socket.localPort ?? ''}`;
  return `${ctx.protocol}://${host}/auth/token`;
}

/**
 * Sets `WWW-Authenticate: Bearer realm=...,service=...[,scope=...][,error=...][,error_description=...]`.
 * `description` (RFC 6750 3) is what skopeo, podman and buildah print of a refusal.
 */
export function challenge(ctx: Context, auth: AuthService, scope?: string, error?: 'insufficient_scope' | 'invalid_token', description?: string): void {
  const parts = [`realm="${realmOf(ctx, auth.config.realm)}"`, `service="${auth.config.service}"`];
  if (scope) parts.push(`scope="${scope}"`);
  if (error) parts.push(`error="${error}"`);
  // RFC 6750 allows printable ASCII but '"' and '\\' here.
  if (description) parts.push(`error_description="${description.replace(/[^\x20-\x7e]|["\\]/g, ' ')}"`);
  ctx.set('WWW-Authenticate', `Bearer ${parts.join(',')}`);
}

function unauthorized(detail?: unknown): RegistryError {
  return new RegistryError('UNAUTHORIZED', 'authentication required', detail);
}

/**
 * A bearer token without the access a request needs: 401 `insufficient_scope`, for the client to ask
 * for a token that has it. When the token service would not grant it (`why`: the policy refuses the
 * signed-in caller), no new token can help, and the caller is told why: in the challenge's
 * `error_description` and in the message (Docker prints it), as a refusal with Basic credentials
 * says it in its 403. Anonymous callers are asked to sign in.
 */
function insufficientScope(ctx: Context, auth: AuthService, who: Credentials, scope: string | undefined, why: string | undefined, detail: unknown): never {
  const told = who.principal.kind === 'anonymous' ? undefined : why;
  challenge(ctx, auth, scope, 'insufficient_scope', told);
  throw told === undefined ? unauthorized(detail) : new RegistryError('UNAUTHORIZED', `requested access to the resource is denied: ${told}`, detail);
}

/** Docker prints the message as it comes: the first words are what every registry says, the rest why. */
function denied(why: string, detail?: unknown): RegistryError {
  return new RegistryError('DENIED', `requested access to the resource is denied: ${why}`, detail);
}

const VERBS: Record<Action, string> = { pull: 'pull from', push: 'push to', delete: 'delete from' };

/** Who is asking, as a refusal names them: the user, or the user's token. */
function nameOf(p: Principal): string {
  return p.kind === 'user' ? p.name : p.kind === 'token' ? `${p.name}'s ${p.tokenType === 'ci' ? 'CI token' : 'access token'}` : 'anonymous';
}

function hasAll(have: ReadonlySet<string>, need: readonly string[]): boolean {
  return need.every((a) => have.has(a));
}

function isAdminUser(p: Principal): boolean {
  return p.kind === 'user' && p.admin;
}

/** What permissions see of a resolved name: a pull-through upstream, or a local repository. */
function targetOfResolved(name: string, resolved: ResolvedRepository): Target {
  // By the upstream's key: `ns` may name it by its host or an alias (what OCI-Namespace echoes).
  return resolved.upstream !== undefined && resolved.writer === undefined ? { kind: 'proxy', upstream: resolved.upstream } : { kind: 'repository', name };
}

/**
 * Whether what the caller may do on `name` (`allowed`) and what its token grants (a bearer token's
 * scope) include a push: a HEAD by one who may push starts a link's or untagged manifest's gc grace over.
 */
function mayPushWith(who: Credentials, allowed: ReadonlySet<Action>, name: string): boolean {
  return allowed.has('push') && (who.via !== 'bearer' || grantedActions(who.access, 'repository', name).has('push'));
}

/** What a read that the manifest fast path may answer can do besides pulling. */
export interface ReadAccess {
  /** A HEAD by digest starts an untagged manifest's gc grace over (routes/manifests.ts). */
  readonly mayPush: boolean;
}

/**
 * Whether a request with this Authorization header may pull `name`, served by `resolved`, by the rules
 * of the middleware below for a read; undefined when not, and also when the answer needs the
 * middleware's side effects (a Basic login counts against the failed-login limits, so it is checked
 * there once) or its refusal.
 */
export function readAccess(auth: AuthService) {
  return async function access(authorization: string | undefined, ip: string | undefined, name: string, resolved: ResolvedRepository): Promise<ReadAccess | undefined> {
    if (authorization !== undefined && !/^Bearer\s/i.test(authorization)) return undefined;
    let who: Credentials;
    try {
      who = await auth.authenticate(authorization, ip);
    } catch {
      return undefined;
    }
    if (who.via === 'bearer' && !grantedActions(who.access, 'repository', name).has('pull')) return undefined;
    const allowed = allowedActions(who.principal, targetOfResolved(name, resolved), auth.policy());
    return allowed.has('pull') ? { mayPush: mayPushWith(who, allowed, name) } : undefined;
  };
}

export interface AuthMiddlewareOptions {
  readonly auth: AuthService;
  readonly resolver: RepositoryResolver;
}

/**
 * Every /v2 and /admin request passes here when auth is enabled: who is asking (Basic, Bearer or
 * nobody), what the route needs (route-access.ts), and whether the repository that serves the name
 * (local, or a pull-through upstream) allows it. Missing credentials → 401 with a Bearer challenge;
 * a bearer token without the action → 401 insufficient_scope (clients fetch a new token); a
 * signed-in user without the right → 403 DENIED. /auth/token and anything else pass untouched.
 */
export function authMiddleware(options: AuthMiddlewareOptions) {
  const { auth, resolver } = options;

  /**
   * Local repository, or the upstream that serves the name. The request's own repository is kept for
   * its route (`remember`): in a mirror mode, a name pushed or deleted between here and the route would
   * otherwise be served by what was not checked.
   */
  async function targetOf(ctx: Context, name: string, resource: Resource, principal: Principal, remember = false): Promise<Target> {
    try {
      const resolved = await resolver.resolve(name, new URLSearchParams(ctx.querystring), requestInfo(ctx.req, resource, ctx.method));
      if (remember) rememberResolved(ctx, name, resource, resolved);
      return targetOfResolved(name, resolved);
    } catch (err) {
      // An invalid name or unknown upstream: anonymous callers learn nothing before signing in.
      if (principal.kind === 'anonymous') return { kind: 'repository', name };
      throw err;
    }
  }

  /**
   * Refuses what `who` may not do. Anonymous callers are asked to sign in; with a bearer token, the
   * token lacks the access (insufficientScope: Docker, skopeo, podman print the challenge's
   * description); with a password, 403 DENIED saying why.
   */
  function refuse(ctx: Context, who: Credentials, scope: string | undefined, why: string, detail: unknown): never {
    if (who.via === 'bearer') insufficientScope(ctx, auth, who, scope, why, detail);
    if (who.principal.kind === 'anonymous') {
      challenge(ctx, auth, scope);
      throw unauthorized(detail);
    }
    throw denied(why, detail);
  }

  return async function authorize(ctx: Context, next: Next): Promise<void> {
    const path = ctx.path;
    // Whatever the case: a router that matched /ADMIN/import as /admin/import once made auth skip it.
    const isV2 = /^\/v2(?:\/|$)/i.test(path);
    const isAdmin = /^\/admin\//i.test(path);
    if (!isV2 && !isAdmin) return next();

    let who: Credentials;
    try {
      const authorization = ctx.get('Authorization') || undefined;
      const gone = authorization !== undefined && /^Basic\s/i.test(authorization) ? goneSignal(ctx.res) : undefined;
      who = await auth.authenticate(authorization, clientOf(ctx.req).address, gone);
    } catch (err) {
      if (err instanceof AuthFailure) {
        if (isAdmin) ctx.set('WWW-Authenticate', `Basic realm="${auth.config.service}"`);
        else challenge(ctx, auth, undefined, err.scheme === 'bearer' ? 'invalid_token' : undefined);
      }
      throw err;
    }
    const principal = who.principal;
    ctx.state.principal = principal;

    if (isAdmin) {
      // Operator endpoints: an administrator signed in with a password, never with a token (a bearer
      // token of an administrator is a subset of their rights, handed to every client they pull with).
      if (principal.kind === 'anonymous' || who.via !== 'basic') {
        ctx.set('WWW-Authenticate', `Basic realm="${auth.config.service}"`);
        throw new RegistryError('UNAUTHORIZED', "authentication required: /admin endpoints take an administrator's user name and password (Basic), never a token");
      }
      if (!isAdminUser(principal)) throw denied(`/admin endpoints answer administrators only, and ${nameOf(principal)} is not one`);
      ctx.state.administrator = true;
      return next();
    }

    const route = routeAccess(ctx.method, path);
    switch (route.kind) {
      case 'base':
        if (principal.kind === 'anonymous' && who.via === 'none') {
          challenge(ctx, auth);
          throw unauthorized();
        }
        return next();

      case 'catalog': {
        const scope = 'registry:catalog:*';
        const detail = [{ Type: 'registry', Name: 'catalog', Action: '*' }];
        const why = mayListCatalog(principal) ? undefined : `${nameOf(principal)} may not list the catalog`;
        if (who.via === 'bearer' && !grantedActions(who.access, 'registry', 'catalog').has('*')) insufficientScope(ctx, auth, who, scope, why, detail);
        if (why !== undefined) refuse(ctx, who, scope, why, detail);
        return next();
      }

      case 'repository': {
        const { name, resource, actions: needed } = route;
        // A cross-repository mount reads its source: the challenge names it too, as distribution's
        // does, so that a client asking for the scope it is challenged with gets a token that mounts.
        const from = route.uploadStart && typeof ctx.query.mount === 'string' ? ctx.query.from : undefined;
        const mountFrom = typeof from === 'string' && from !== name && isValidRepositoryName(from) ? from : undefined;
        const source = mountFrom !== undefined ? ` repository:${mountFrom}:pull` : '';
        // A push reads too (a blob HEAD before each upload): a write's challenge asks for pull,push,
        // as distribution's does, so that a client building its token request from the challenge
        // alone is not challenged again at its first HEAD.
        const asked = needed.includes('push') && !needed.includes('pull') ? ['pull', ...needed] : needed;
        const scope = isValidRepositoryName(name) ? `repository:${name}:${asked.join(',')}${source}` : undefined;
        const detail = needed.map((a) => ({ Type: 'repository', Name: name, Action: a }));
        const target = await targetOf(ctx, name, resource, principal, true);
        if (target.kind === 'proxy' && principal.kind !== 'anonymous' && needed.some((a) => a !== 'pull')) {
          // A push, upload or delete on a pull-through name, by someone signed in: nobody may, and
          // the route's UNSUPPORTED says where to push instead, where DENIED would not say why.
          return next();
        }
        const policy = auth.policy();
        const allowed: ReadonlySet<Action> = allowedActions(principal, target, policy);
        const missing = needed.filter((a) => !allowed.has(a)).map((a) => VERBS[a]);
        // A blob HEAD is how docker, skopeo and podman start each layer of a push: refused, it is the
        // first refusal a push meets, and "may not pull from" alone read as a wrong answer to a push.
        if (resource === 'blob' && ctx.method === 'HEAD' && missing.length > 0 && !allowed.has('push')) missing.push(VERBS.push);
        const why = missing.length === 0 ? undefined : `${nameOf(principal)} may not ${missing.join(' or ')} ${name}`;
        if (who.via === 'bearer' && !hasAll(grantedActions(who.access, 'repository', name), needed)) insufficientScope(ctx, auth, who, scope, why, detail);
        if (why !== undefined) refuse(ctx, who, scope, why, detail);
        // Whether the caller may pull through an upstream: a manifest's 404 in a local repository
        // that hides one names it only then (routes/manifests.ts).
        if (resource === 'manifest') ctx.state.mayUseUpstream = (upstream: string): boolean => mayUseUpstream(principal, upstream, policy);
        // Whether a blob or manifest HEAD is a push's (its link's, or an untagged manifest's, gc grace
        // starts over) or a pull's (it does not).
        if (resource === 'blob' || resource === 'manifest') {
          ctx.state.mayPush = mayPushWith(who, allowed, name);
        }
        if (route.uploadStart) {
          // A cross-repository mount reads its source too: the upload route links only from a
          // repository this says the caller may pull, and otherwise starts a plain upload.
          // `resolved`: what serves the name, when it was resolved (a pull-through source goes by
          // its upstream's access rule); a local repository otherwise.
          ctx.state.mayPull = (repo: string, resolved?: ResolvedRepository): boolean =>
            allowedActions(principal, resolved ? targetOfResolved(repo, resolved) : { kind: 'repository', name: repo }, policy).has('pull') &&
            (who.via !== 'bearer' || grantedActions(who.access, 'repository', repo).has('pull'));
          // The caller may pull the source but its token does not say so (one kept from the push's
          // first request, for that repository alone): challenged for the source too, as
          // distribution does, so the client comes back with a token that mounts rather than
          // uploading the blob again. Not when it may not: that stays a plain upload, telling
          // nothing of the source.
          // A pull-through source as well: its cached blobs are copied (routes/uploads.ts).
          const sourceTarget =
            mountFrom !== undefined && who.via === 'bearer' && !grantedActions(who.access, 'repository', mountFrom).has('pull')
              ? await targetOf(ctx, mountFrom, 'blob', principal).catch(() => undefined)
              : undefined;
          if (sourceTarget !== undefined && allowedActions(principal, sourceTarget, policy).has('pull')) {
            challenge(ctx, auth, scope, 'insufficient_scope');
            throw unauthorized([...detail, { Type: 'repository', Name: mountFrom, Action: 'pull' }]);
          }
        }
        return next();
      }

      case 'unknown':
        if (principal.kind === 'anonymous') {
          challenge(ctx, auth);
          throw unauthorized();
        }
        if (!principal.admin) throw denied(`${ctx.method} ${path} is not a request of the registry's API (a mistyped path?)`);
        return next();
    }
  };
}
