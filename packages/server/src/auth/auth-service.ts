import { isIP } from 'node:net';
import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';
import { carriedIPv4, ipv6Groups } from '@wharf/proxy';
import { RegistryError, isValidRepositoryName, type SqliteDatabase } from '@wharf/registry-core';
import type { Logger } from 'pino';
import { isValidAccountName, type AuthConfig, type Role } from '../auth-config.js';
import type { WharfConfig } from '../config.js';
import { findUpstream, type ProxyConfig, type UpstreamAccess } from '../proxy-config.js';
import { Accounts } from './accounts.js';
import { refuseGroupNamedLikeUser } from './group-clash.js';
import { AuthStore } from './auth-store.js';
import { KnownAddresses } from './known-addresses.js';
import { clientWentAway } from './bcrypt-thread.js';
import { DEFAULT_LOGIN_LIMITS, LoginLimiter, type LoginLimits } from './login-limiter.js';
import { ConfigError } from '../config-error.js';
import { PRODUCTION_BCRYPT_COST, checkNewPassword, hashPassword } from './passwords.js';
import { ACTIONS, ANONYMOUS, allowedActions, mayListCatalog, mayUseUpstream, type Action, type Policy, type Principal } from './permissions.js';
import { CATALOG_SCOPE, type AccessEntry, type ResourceScope } from './scope.js';
import { generatePassword } from './secrets.js';
import { TokenIssuer, loadSigningKey, type IssuedToken } from './token-issuer.js';
import { AuthFailure, parseBasic, type Credentials } from './credentials.js';

/** Refresh tokens (offline_token=true, access_type=offline) live this long, or as long as their PAT. */
export const REFRESH_TOKEN_TTL_MS = 30 * 86_400_000;

/** Internal knobs for tests; never configuration. */
export interface AuthTuning {
  /** bcrypt cost of hashes Wharf makes (the bootstrap admin); default 12. */
  readonly bcryptCost?: number;
  readonly loginLimits?: LoginLimits;
  /** Where the generated admin password is shown once; default standard error (never the JSON log). */
  readonly announce?: (text: string) => void;
}

export interface AuthServiceOptions {
  readonly config: WharfConfig;
  readonly db: SqliteDatabase;
  /** Whether a name is a local repository, one holding a manifest (mirror-mode pulls of other names go upstream). */
  readonly isLocalRepository: (name: string) => Promise<boolean>;
  readonly logger: Logger;
  readonly tuning?: AuthTuning;
}

/** One password check, shared by the clients that sent the same credentials at once. */
interface Verification {
  readonly check: Promise<Principal | undefined>;
  /** Aborted once no client waits on it any more. */
  readonly abandoned: AbortController;
  waiting: number;
}

/** The check's answer, unless the client goes first (`gone`); the last client to go abandons the check. */
async function waitFor(verification: Verification, gone: AbortSignal | undefined): Promise<Principal | undefined> {
  if (!gone) {
    verification.waiting += 1;
    try {
      return await verification.check;
    } finally {
      verification.waiting -= 1;
    }
  }
  if (gone.aborted) throw clientWentAway();
  verification.waiting += 1;
  let leave: (() => void) | undefined;
  try {
    return await Promise.race([
      verification.check,
      new Promise<never>((_, reject) => {
        leave = () => {
          verification.waiting -= 1;
          leave = undefined;
          if (verification.waiting === 0) verification.abandoned.abort();
          reject(clientWentAway());
        };
        gone.addEventListener('abort', leave, { once: true });
      }),
    ]);
  } finally {
    if (leave) {
      gone.removeEventListener('abort', leave);
      verification.waiting -= 1;
    }
  }
}

/**
 * The client an address stands for: an IPv4 address carried in IPv6 (IPv4-mapped, NAT64's
 * `64:ff9b::/96`, whose gateway puts every IPv4 client under one prefix) is that IPv4 address.
 */
export function clientAddress(ip: string | undefined): string {
  if (ip === undefined || ip === '') return 'unknown';
  if (isIP(ip) !== 6) return ip;
  return carriedIPv4(ip.replace(/%.*$/, '')) ?? ip.toLowerCase();
}

/**
 * The network an address is in, for the password checks' turns and a looser failed-login limit: an
 * IPv6 client's /64, which one host or site holds whole (an attacker with one has 2^64 addresses);
 * an IPv4 client's address itself.
 */
export function addressGroup(ip: string | undefined): string {
  const client = clientAddress(ip);
  if (isIP(client) !== 6) return client;
  return `${ipv6Groups(client.replace(/%.*$/, '')).slice(0, 4).map((g) => g.toString(16)).join(':')}::/64`;
}

/** The failed-login keys of an address: the address, and for IPv6 its /64 too (NETWORK_FACTOR times looser). */
function addressKeys(ip: string | undefined): string[] {
  const client = clientAddress(ip);
  const group = addressGroup(ip);
  return group === client ? [`ip:${client}`] : [`ip:${client}`, `net:${group}`];
}

/**
 * Accounts, credentials, grants and tokens: the one object the middleware and the token endpoint
 * ask. Decisions themselves are the pure functions of permissions.ts.
 */
export class AuthService {
  readonly accounts: Accounts;
  private readonly groups: ReadonlyMap<string, ReadonlyMap<string, Role>>;
  private readonly limiter: LoginLimiter;
  /** Where each user signed in from lately: guesses at their password from elsewhere do not lock them out there. */
  private readonly knownAddresses: KnownAddresses;
  /** Logins being checked, by a hash of user name and password, with the clients waiting on each. */
  private readonly verifying = new Map<string, Verification>();

  private constructor(
    readonly config: AuthConfig,
    private readonly proxy: ProxyConfig,
    private readonly issuer: TokenIssuer,
    store: AuthStore,
    private readonly isLocalRepository: (name: string) => Promise<boolean>,
    private readonly logger: Logger,
    tuning: AuthTuning,
  ) {
    this.accounts = new Accounts(store, config, tuning.bcryptCost ?? PRODUCTION_BCRYPT_COST);
    this.knownAddresses = new KnownAddresses(store.knownAddressStore(), Date.now, (message, err) => logger.warn({ err }, message));
    this.groups = new Map(config.groups.map((g) => [g.name, g.members]));
    this.limiter = new LoginLimiter(tuning.loginLimits ?? DEFAULT_LOGIN_LIMITS);
  }

  static async create(options: AuthServiceOptions): Promise<AuthService> {
    const { config, db, logger } = options;
    const tuning = options.tuning ?? {};
    const keyFile = config.database === ':memory:' ? undefined : join(dirname(config.database), 'auth', 'signing-key.pem');
    const key = await loadSigningKey(keyFile, logger);
    const store = new AuthStore(db);
    refuseGroupNamedLikeUser(config.auth.groups, store.users().map((u) => u.name));
    const service = new AuthService(
      config.auth,
      config.proxy,
      new TokenIssuer(key, config.auth.service, config.auth.tokenTtl),
      store,
      options.isLocalRepository,
      logger,
      tuning,
    );
    await service.ensureAdmin(tuning);
    // The hash a missing user's password is checked against, made now rather than at the first such login.
    await service.accounts.dummyHash();
    // Users taken out of configuration.toml since the last start: their tokens end with them.
    const orphans = store.revokeOrphans(config.auth.users.map((u) => u.name));
    if (orphans.tokens > 0) logger.warn({ users: orphans.users, tokens: orphans.tokens }, 'revoked the tokens of users no longer configured');
    return service;
  }

  get store(): AuthStore {
    return this.accounts.store;
  }

  /**
   * First start with no administrator anywhere: `admin` with WHARF_ADMIN_PASSWORD, or a generated
   * password shown once on standard error (never in the JSON log).
   */
  private async ensureAdmin(tuning: AuthTuning): Promise<void> {
    if (this.accounts.hasAdmin()) return;
    if (this.accounts.find('admin') || this.groups.has('admin')) {
      const advice = 'no administrator is configured and the name "admin" is taken; create one with "wharf user add <name> --admin"';
      this.logger.warn(advice);
      // Where the first start's password would have been: an operator watching for it learns why there is none.
      (tuning.announce ?? ((text: string) => process.stderr.write(text)))(`\nwharf: ${advice}\n\n`);
      return;
    }
    const given = this.config.initialAdminPassword;
    // The same rules as `wharf user passwd`: the first administrator is no exception.
    const problem = given === undefined ? undefined : checkNewPassword(given);
    if (problem) throw new ConfigError(`WHARF_ADMIN_PASSWORD: ${problem}`);
    const password = given ?? generatePassword();
    this.store.addUser('admin', await hashPassword(password, tuning.bcryptCost ?? PRODUCTION_BCRYPT_COST), true);
    this.logger.info({ user: 'admin', passwordFrom: given ? 'WHARF_ADMIN_PASSWORD' : 'generated' }, 'administrator created');
    if (!given) {
      const announce = tuning.announce ?? ((text: string) => process.stderr.write(text));
      announce(
        `\nwharf: created the administrator "admin" with the password\n\n    ${password}\n\n` +
          'It is shown only this once. Sign in with "docker login" (or podman/skopeo login) and change it with "wharf user passwd admin" (from a clone: pnpm wharf user passwd admin).\n\n',
      );
    }
  }

  /** The policy as of now: public marks of the CLI take effect without a restart. */
  policy(): Policy {
    const proxy = this.proxy;
    return {
      groups: this.groups,
      publicPatterns: [...this.config.public, ...this.store.publicPatterns()],
      upstreamAccess(upstream: string): UpstreamAccess | undefined {
        if (!proxy.enabled) return undefined;
        const u = proxy.upstreams.find((x) => x.key === upstream);
        if (!u) return undefined;
        return u.access ?? (proxy.anonymous ? 'anonymous' : 'authenticated');
      },
    };
  }

  /**
   * Checks a user name and password (or a PAT/CI token as the password) with the failed-login limits
   * per address and per user: 429 with Retry-After while over them, 401 when wrong. The user's limit
   * does not hold back an address the user signed in from lately (KnownAddresses).
   */
  async login(user: string, password: string, ip: string | undefined, gone?: AbortSignal): Promise<Principal> {
    // With a token as the password the user name is free text ("ci" for every pipeline): only the
    // address counts, or one expired token would lock every job that says "ci" out.
    const isToken = Accounts.isTokenSecret(password);
    // A name no account can have (upper case, an e-mail address, 60 KB of anything) is no guess at
    // anyone's password: refused before anything is counted or kept. Before, each such name left a
    // key of its own size in the limiter: a flood of 60 KB names took the server to its heap limit.
    if (!isToken && !isValidAccountName(user)) {
      this.checkLimits(addressKeys(ip));
      throw new AuthFailure('invalid user name, password or token', 'basic');
    }
    const known = !isToken && this.knowsAddress(user, ip);
    const perUser = !isToken && !known;
    const address = addressGroup(ip);
    const keys = perUser ? [...addressKeys(ip), `user:${user}`] : addressKeys(ip);
    // The same wrong credentials again are no new guess: Docker's daemon sends its Docker Hub login
    // to every registry mirror with each pull, and the jobs of a runner repeat an expired token.
    // Counted each time, they would lock the runner's address, or a user of the same name, out.
    if (this.accounts.refusedBefore(user, password)) {
      this.checkLimits(keys);
      throw new AuthFailure('invalid user name, password or token', 'basic');
    }
    // The same credentials at the same time share one check, from whatever address: twenty nodes
    // pulling with one image pull secret must not use up the user's limit between them.
    const same = createHash('sha256').update(`${user}\0${password}`).digest('base64');
    let verification = this.verifying.get(same);
    if (!verification || verification.abandoned.signal.aborted) {
      this.checkLimits(keys);
      // Counted as failed until it passes: a password check takes bcrypt's time, and a burst of
      // guesses sent at once would otherwise all pass the limit before the first one had failed.
      const attempt = this.failed(keys);
      // Dropped before it runs when every client waiting on it has gone (a flood that hangs up).
      const abandoned = new AbortController();
      const check = (async () => {
        let principal: Principal | undefined;
        try {
          principal = isToken ? this.accounts.verifyToken(password) : await this.accounts.verifyPassword(user, password, { owner: address, signal: abandoned.signal, known });
        } catch (err) {
          this.limiter.forgive(keys, attempt); // no check was made: no guess to count
          throw err;
        }
        if (principal) {
          this.limiter.forgive(keys, attempt);
          // Only the user's own password clears the guesses at it: with a token, the user name is
          // anyone's to write, and anybody's token would wipe the count of guesses at another's password.
          if (!isToken) {
            this.limiter.clear(`user:${user}`);
            this.knownAddresses.remember(user, ip, this.accounts.find(user)?.createdAt);
          }
        }
        return principal;
      })();
      const entry: Verification = { check, abandoned, waiting: 0 };
      verification = entry;
      this.verifying.set(same, entry);
      void check.finally(() => this.verifying.get(same) === entry && this.verifying.delete(same)).catch(() => undefined);
    }
    const principal = await waitFor(verification, gone);
    if (!principal) throw new AuthFailure('invalid user name, password or token', 'basic');
    return principal;
  }

  /** The principal of a refresh token (limited per address like a login). */
  refresh(secret: string, ip: string | undefined): Principal {
    const keys = addressKeys(ip);
    this.checkLimits(keys);
    const principal = this.accounts.verifyRefreshToken(secret);
    if (!principal) {
      // A login that ended (`wharf token revoke`, `user logout`, a new password, its 30 days) is
      // presented again at every pull until its client signs in again: that is no guess, and counted
      // as one it locked the address out (a CI runner, an office's NAT) after ten pulls.
      if (this.accounts.isEndedLogin(secret)) throw new AuthFailure('this login has ended (revoked, expired, or its password changed); sign in again', 'basic');
      this.failed(keys);
      throw new AuthFailure('invalid or expired refresh token', 'basic');
    }
    // A refresh token is what `docker login` keeps: its client's address is the user's.
    if (principal.kind === 'user') this.knownAddresses.remember(principal.name, ip, this.accounts.find(principal.name)?.createdAt);
    return principal;
  }

  /** Whether `user` signed in from `ip` lately, as the account that now has that name. */
  private knowsAddress(user: string, ip: string | undefined): boolean {
    if (ip === undefined) return false;
    const account = this.accounts.find(user);
    return account !== undefined && this.knownAddresses.knows(user, ip, account.createdAt);
  }

  private checkLimits(keys: readonly string[]): void {
    const wait = this.limiter.retryAfter(keys);
    if (wait !== undefined) {
      throw new RegistryError('TOOMANYREQUESTS', 'too many failed logins; try again later', { retryAfter: wait });
    }
  }

  /** Counts a failure (returns its time, for `forgive`). */
  private failed(keys: readonly string[]): number {
    const at = this.limiter.fail(keys);
    if (this.limiter.retryAfter(keys) !== undefined) this.logger.warn({ ip: keys[0]!.slice(3) }, 'failed logins over the limit');
    return at;
  }

  /** What the Authorization header proves; throws AuthFailure (401) or TOOMANYREQUESTS (429). */
  async authenticate(header: string | undefined, ip: string | undefined, gone?: AbortSignal): Promise<Credentials> {
    if (!header) return { via: 'none', principal: ANONYMOUS };
    if (/^Basic\s/i.test(header)) {
      const basic = parseBasic(header);
      if (!basic) throw new AuthFailure('malformed Basic credentials', 'basic');
      return { via: 'basic', principal: await this.login(basic.user, basic.password, ip, gone) };
    }
    const bearer = /^Bearer\s+([A-Za-z0-9._~+/-]+=*)\s*$/i.exec(header);
    if (bearer) {
      const verified = await this.issuer.verify(bearer[1]!);
      if (!verified) throw new AuthFailure('invalid or expired token', 'bearer');
      let principal: Principal | undefined;
      if (verified.tokenId !== undefined) {
        principal = this.accounts.principalOfToken(verified.tokenId);
        if (principal && principal.kind !== 'anonymous' && principal.name !== verified.subject) principal = undefined;
      } else {
        principal = verified.subject === '' ? ANONYMOUS : this.accounts.principalOfUser(verified.subject, verified.issuedAt, verified.credential);
      }
      if (!principal) throw new AuthFailure("the token was revoked, its user removed, or the user's password changed", 'bearer');
      return { via: 'bearer', principal, access: verified.access };
    }
    if (/^Bearer(\s|$)/i.test(header)) throw new AuthFailure('malformed bearer token', 'bearer');
    throw new AuthFailure('unsupported authorization scheme; use Basic or Bearer', 'basic');
  }

  /**
   * What a repository scope may grant. `proxy/<upstream>/...` is the upstream's access; another name is
   * what the principal may do locally, plus pull when the proxy could serve it in a mirror mode (the
   * request itself is checked again against the repository that actually serves it, so a pull granted
   * on a local repository the principal may not read reads nothing). Granted whether or not the name
   * is a local repository: granted only when it was not, the token told anyone who may use an upstream
   * which private repositories exist. (A pull with `?ns=`, or in mirror mode, still does, by what
   * serves it: the README says so.)
   */
  private repositoryGrant(principal: Principal, name: string, policy: Policy): Set<Action> {
    if (!isValidRepositoryName(name)) return new Set();
    if (this.proxy.enabled && name.startsWith('proxy/')) {
      const upstream = findUpstream(this.proxy, name.split('/')[1]!);
      return upstream ? allowedActions(principal, { kind: 'proxy', upstream: upstream.key }, policy) : new Set();
    }
    const actions = allowedActions(principal, { kind: 'repository', name }, policy);
    if (!actions.has('pull') && this.proxy.enabled && this.proxy.upstreams.some((u) => mayUseUpstream(principal, u.key, policy))) actions.add('pull');
    return actions;
  }

  /**
   * Whether `scopes` ask only to pull names that Docker's registry-mirrors mode serves to anyone: not
   * local, from a default upstream open to anonymous callers. Such a token request gets the anonymous
   * token whatever credentials it carries, unchecked and uncounted: Docker's daemon sends a mirror the
   * credentials it holds for Docker Hub, never those for the mirror's host. Refused, they sent every
   * pull of a runner logged in to Docker Hub past Wharf, to Docker Hub; checked, ten Docker Hub
   * logins behind one address locked that address out of Wharf.
   */
  async anonymousMirrorPull(scopes: readonly ResourceScope[]): Promise<boolean> {
    const upstream = this.proxy.enabled ? this.proxy.defaultUpstream : undefined;
    if (upstream === undefined || scopes.length === 0 || !mayUseUpstream(ANONYMOUS, upstream, this.policy())) return false;
    for (const scope of scopes) {
      if (scope.type !== 'repository' || !scope.actions.every((a) => a === 'pull') || !isValidRepositoryName(scope.name)) return false;
      if (scope.name.startsWith('proxy/') || (await this.isLocalRepository(scope.name))) return false;
    }
    return true;
  }

  /**
   * The intersection of what was asked and what is allowed, one entry per resource (scopes asking
   * for the same repository add up); a partial grant is not an error.
   */
  grant(principal: Principal, scopes: readonly ResourceScope[]): AccessEntry[] {
    const policy = this.policy();
    const asked = new Map<string, Set<string>>();
    let catalog = false;
    for (const scope of scopes) {
      if (scope.type === 'repository') {
        const set = asked.get(scope.name) ?? new Set<string>();
        for (const a of scope.actions.includes('*') ? ACTIONS : scope.actions) set.add(a);
        asked.set(scope.name, set);
      } else if (scope.type === 'registry' && scope.name === 'catalog' && scope.actions.includes('*')) {
        catalog = true;
      }
    }
    const out: AccessEntry[] = [];
    for (const [name, wanted] of asked) {
      const allowed = this.repositoryGrant(principal, name, policy);
      const actions = ACTIONS.filter((a) => wanted.has(a) && allowed.has(a));
      if (actions.length > 0) out.push({ type: 'repository', name, actions });
    }
    if (catalog && mayListCatalog(principal)) out.push(CATALOG_SCOPE);
    return out;
  }

  issue(principal: Principal, access: readonly AccessEntry[]): Promise<IssuedToken> {
    const subject = principal.kind === 'anonymous' ? '' : principal.name;
    const credential = principal.kind === 'user' ? (principal.credential ?? this.accounts.credentialOf(principal.name)) : undefined;
    // A sign-in through a login (refresh token) names the login, a token's the token: revoking either
    // ends the bearer tokens at once.
    const tokenId = principal.kind === 'anonymous' ? undefined : (principal.login ?? (principal.kind === 'token' ? principal.tokenId : undefined));
    return this.issuer.issue(subject, access, tokenId, credential);
  }

  createRefreshToken(principal: Principal): { secret: string; principal: Principal } | undefined {
    return this.accounts.createRefreshToken(principal, REFRESH_TOKEN_TTL_MS);
  }
}
