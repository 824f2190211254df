import type { Router, RouterContext } from '@koa/router';
import { goneSignal } from '../http/gone-signal.js';
import type { Context } from 'koa';
import { readSmallBody } from '../http/body.js';
import { clientOf } from '../http/client-address.js';
import type { AuthService } from '../auth/auth-service.js';
import { AuthFailure, parseBasic } from '../auth/credentials.js';
import { ANONYMOUS, type Principal } from '../auth/permissions.js';
import { formatScope, parseScopes, type AccessEntry } from '../auth/scope.js';

/** A token request form is a few hundred bytes; this is generous. */
const MAX_FORM_BYTES = 64 * 1024;

/**
 * Scopes one token request may ask for. A client asks for one repository, two with a mount's source,
 * a few for a build's cache sources; each scope costs a grant, and the token carries what is granted.
 * Unbounded, an anonymous caller asked for 1,200 in one request (a 177 KB token, each kept among the
 * verified ones at its first use).
 */
const MAX_SCOPES = 100;

function tooManyScopes(ctx: Context, count: number): boolean {
  if (count <= MAX_SCOPES) return false;
  oauthError(ctx, 'invalid_scope', `at most ${MAX_SCOPES} scopes in one token request (got ${count})`);
  return true;
}

/** OAuth2's error reply (RFC 6749 §5.2) for a malformed request; credentials problems are 401 UNAUTHORIZED. */
function oauthError(ctx: Context, error: string, description: string): void {
  ctx.status = 400;
  ctx.body = { error, error_description: description };
}

/** Token replies must never be cached by anything in between. */
function noStore(ctx: Context): void {
  ctx.set('Cache-Control', 'no-store');
  ctx.set('Pragma', 'no-cache');
}

/**
 * The token endpoint of Docker registry v2 auth, /auth/token: GET with Basic credentials (or none,
 * for an anonymous token) and repeated `scope`, and the OAuth2 POST form (grant_type=password or
 * refresh_token) that containerd tries first. The grant is what was asked and is allowed.
 * Nothing here is logged but the request line without its query (request-log.ts).
 */
export function registerTokenEndpoint(router: Router, auth: AuthService): void {
  const reply = async (ctx: Context, principal: Principal, access: AccessEntry[], refresh: boolean, oauth: boolean) => {
    // The login first: the bearer token of the sign-in that makes it ends with it too.
    const login = refresh ? auth.createRefreshToken(principal) : undefined;
    const issued = await auth.issue(login?.principal ?? principal, access);
    const refreshToken = login?.secret;
    noStore(ctx);
    ctx.body = {
      token: issued.token,
      access_token: issued.token,
      expires_in: issued.expiresIn,
      issued_at: issued.issuedAt.toISOString(),
      ...(oauth ? { scope: access.map(formatScope).join(' ') } : {}),
      ...(refreshToken ? { refresh_token: refreshToken } : {}),
    };
  };

  const withBasicChallenge = async (ctx: Context, work: () => Promise<void>) => {
    try {
      await work();
    } catch (err) {
      if (err instanceof AuthFailure) ctx.set('WWW-Authenticate', `Basic realm="${auth.config.service}"`);
      throw err;
    }
  };

  router.get('/auth/token', async (ctx: RouterContext) => {
    await withBasicChallenge(ctx, async () => {
      const params = new URLSearchParams(ctx.querystring);
      const header = ctx.get('Authorization');
      const scopes = parseScopes(params.getAll('scope'));
      if (tooManyScopes(ctx, scopes.length)) return;
      let principal: Principal = ANONYMOUS;
      if (/^Basic\s/i.test(header)) {
        const basic = parseBasic(header);
        if (!basic) throw new AuthFailure('malformed Basic credentials', 'basic');
        // Docker's daemon asks a mirror with its Docker Hub login: what anyone may pull from the
        // mirror's upstream it gets, without a look at credentials that are not Wharf's.
        if (!(await auth.anonymousMirrorPull(scopes))) principal = await auth.login(basic.user, basic.password, clientOf(ctx.req).address, goneSignal(ctx.res));
      }
      const access = auth.grant(principal, scopes);
      await reply(ctx, principal, access, params.get('offline_token') === 'true', false);
    });
  });

  router.post('/auth/token', async (ctx: RouterContext) => {
    await withBasicChallenge(ctx, async () => {
      if (!ctx.is('application/x-www-form-urlencoded')) {
        return oauthError(ctx, 'invalid_request', 'the body must be application/x-www-form-urlencoded');
      }
      const form = new URLSearchParams((await readSmallBody(ctx.req, MAX_FORM_BYTES)).toString('utf8'));
      if (!form.get('client_id')) return oauthError(ctx, 'invalid_request', 'client_id is required');
      const grantType = form.get('grant_type');
      const scopes = parseScopes(form.getAll('scope'));
      if (tooManyScopes(ctx, scopes.length)) return;
      let principal: Principal;
      if (grantType === 'password') {
        const username = form.get('username');
        const password = form.get('password');
        if (!username || password === null) return oauthError(ctx, 'invalid_request', 'username and password are required');
        principal = await auth.login(username, password, clientOf(ctx.req).address, goneSignal(ctx.res));
      } else if (grantType === 'refresh_token') {
        const refreshToken = form.get('refresh_token');
        if (!refreshToken) return oauthError(ctx, 'invalid_request', 'refresh_token is required');
        principal = auth.refresh(refreshToken, clientOf(ctx.req).address);
      } else {
        return oauthError(ctx, 'unsupported_grant_type', 'grant_type must be password or refresh_token');
      }
      const access = auth.grant(principal, scopes);
      // A refresh token only when asked for (access_type=offline), as the OAuth2 form of the spec says:
      // containerd posts a password grant for every pull and would otherwise pile up long-lived secrets.
      await reply(ctx, principal, access, grantType === 'password' && form.get('access_type') === 'offline', true);
    });
  });
}
