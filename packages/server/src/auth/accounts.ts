import { createHash, createHmac, randomBytes } from 'node:crypto';
import type { AuthConfig } from '../auth-config.js';
import { TOKEN_PREFIX, type AuthStore, type StoredToken } from './auth-store.js';
import type { HashOptions } from './bcrypt-thread.js';
import { hashPassword, verifyPassword } from './passwords.js';
import type { Principal } from './permissions.js';
import { safeEqual } from './secrets.js';

export interface Account {
  readonly name: string;
  readonly admin: boolean;
  readonly passwordHash: string;
  /** Users of configuration.toml are read-only; the CLI manages the database's. */
  readonly source: 'config' | 'database';
  /** When a database user was added (milliseconds). */
  readonly createdAt?: number;
}

/** A verified password stays verified this long in memory (bcrypt at cost 12 takes about 0.3 s). */
const VERIFIED_TTL_MS = 60_000;
/** Entries the verified and the refused credentials each keep at most; a full cache starts over. */
const CACHE_MAX = 10_000;
/**
 * Refused credentials are remembered this long: sent again unchanged they are no new guess, and are
 * refused at once, without bcrypt's time and without counting against the login limits.
 */
const REFUSED_TTL_MS = 5 * 60_000;
/** last_used_at is written at most this often per token. */
const TOUCH_INTERVAL_MS = 60_000;

/**
 * Users (configuration, then database) and their credentials: passwords, personal access tokens,
 * CI tokens and refresh tokens, each turned into a Principal or refused.
 */
export class Accounts {
  private readonly configUsers: ReadonlyMap<string, Account>;
  /** HMAC(process key, user NUL password) → the stored hash it matched and until when. */
  private readonly verified = new Map<string, { hash: string; until: number }>();
  /** HMAC(process key, user NUL password, or the token) → the stored hash it failed against ('' for none) and until when. */
  private readonly refused = new Map<string, { hash: string; until: number }>();
  private readonly cacheKey = randomBytes(32);
  /** Hashes to check a missing user's password against, by bcrypt cost (see `dummyHash`). */
  private readonly dummies = new Map<number, Promise<string>>();

  constructor(
    readonly store: AuthStore,
    private readonly config: AuthConfig,
    private readonly bcryptCost: number,
  ) {
    this.configUsers = new Map(config.users.map((u) => [u.name, { name: u.name, admin: u.admin, passwordHash: u.passwordHash, source: 'config' as const }]));
  }

  find(name: string): Account | undefined {
    const fromConfig = this.configUsers.get(name);
    if (fromConfig) return fromConfig;
    const stored = this.store.user(name);
    return stored && { name: stored.name, admin: stored.admin, passwordHash: stored.passwordHash, source: 'database', createdAt: stored.createdAt };
  }

  list(): Account[] {
    const out = new Map<string, Account>();
    for (const u of this.store.users()) out.set(u.name, { name: u.name, admin: u.admin, passwordHash: u.passwordHash, source: 'database' });
    for (const u of this.configUsers.values()) out.set(u.name, u);
    return [...out.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  hasAdmin(): boolean {
    return [...this.configUsers.values()].some((u) => u.admin) || this.store.hasAdmin();
  }

  /** The user's principal when the password is right; a missing user costs the same bcrypt time. */
  async verifyPassword(name: string, password: string, options: HashOptions = {}): Promise<Principal | undefined> {
    const account = this.find(name);
    if (!account) {
      await verifyPassword(password, await this.dummyHash(), options);
      this.remember(this.refused, this.credentialKey(name, password), '', REFUSED_TTL_MS);
      return undefined;
    }
    const key = this.credentialKey(name, password);
    const hit = this.verified.get(key);
    const principal = { kind: 'user', name: account.name, admin: account.admin, credential: credentialOf(account) } as const;
    if (hit && hit.until > Date.now() && safeEqual(hit.hash, account.passwordHash)) return principal;
    // The principal names the hash checked here, not the account's hash when its tokens are issued:
    // a password changed during the check (`wharf user passwd`) ends what the old one gets.
    if (!(await verifyPassword(password, account.passwordHash, options))) {
      this.remember(this.refused, key, account.passwordHash, REFUSED_TTL_MS);
      return undefined;
    }
    this.remember(this.verified, key, account.passwordHash, VERIFIED_TTL_MS);
    return principal;
  }

  /**
   * The hash a missing user's password is checked against, at the cost most users' hashes have: a
   * configuration file's hashes made at cost 10 answered a wrong password 4 times faster than the
   * cost-12 check of a user that does not exist, which told the names that do. AuthService makes it
   * at start, so that the first such check takes no longer either.
   */
  dummyHash(): Promise<string> {
    const costs = new Map<number, number>();
    for (const account of [...this.configUsers.values(), ...this.store.users()]) {
      const cost = bcryptCostOf(account.passwordHash);
      if (cost !== undefined) costs.set(cost, (costs.get(cost) ?? 0) + 1);
    }
    let cost = this.bcryptCost;
    let most = 0;
    for (const [c, n] of costs) {
      if (n > most || (n === most && c === this.bcryptCost)) [cost, most] = [c, n];
    }
    let dummy = this.dummies.get(cost);
    if (!dummy) {
      dummy = hashPassword('wharf-no-such-user', cost);
      this.dummies.set(cost, dummy);
    }
    return dummy;
  }

  /**
   * Whether exactly these credentials (a user's password, or a token whatever the user name) were
   * refused within REFUSED_TTL_MS, and the user's password has not changed since, nor the user come to
   * exist. A token once refused stays invalid: expiry and revocation never undo.
   */
  refusedBefore(name: string, secret: string): boolean {
    const hit = this.refused.get(this.credentialKey(name, secret));
    if (!hit || hit.until <= Date.now()) return false;
    return Accounts.isTokenSecret(secret) || safeEqual(hit.hash, this.find(name)?.passwordHash ?? '');
  }

  private credentialKey(name: string, secret: string): string {
    return createHmac('sha256', this.cacheKey)
      .update(Accounts.isTokenSecret(secret) ? `\0${secret}` : `${name}\0${secret}`)
      .digest('base64');
  }

  private remember(cache: Map<string, { hash: string; until: number }>, key: string, hash: string, ttlMs: number): void {
    if (cache.size >= CACHE_MAX) cache.clear();
    cache.set(key, { hash, until: Date.now() + ttlMs });
  }

  /** Whether a password is a token of ours (then it is never checked as a password). */
  static isTokenSecret(secret: string): boolean {
    return secret.startsWith(TOKEN_PREFIX.pat) || secret.startsWith(TOKEN_PREFIX.ci);
  }

  /** A personal access or CI token, valid now. */
  verifyToken(secret: string): Principal | undefined {
    if (!Accounts.isTokenSecret(secret)) return undefined;
    const token = this.store.findToken(secret);
    const principal = token && token.type !== 'refresh' ? this.tokenPrincipal(token, true) : undefined;
    if (!principal) this.remember(this.refused, this.credentialKey('', secret), '', REFUSED_TTL_MS);
    return principal;
  }

  /** The principal of a refresh token: its user, or the PAT/CI token it was obtained with. */
  verifyRefreshToken(secret: string): Principal | undefined {
    if (!secret.startsWith(TOKEN_PREFIX.refresh)) return undefined;
    const token = this.store.findToken(secret);
    if (!token || token.type !== 'refresh' || !this.isLive(token)) return undefined;
    this.touch(token);
    return this.loginPrincipal(token);
  }

  /**
   * Whether `secret` is a login of ours that ended (revoked, expired, its password or token gone): a
   * client that kept it (docker keeps its identity token until the next `docker login`) is no guesser.
   */
  isEndedLogin(secret: string): boolean {
    if (!secret.startsWith(TOKEN_PREFIX.refresh)) return false;
    return this.store.findToken(secret)?.type === 'refresh';
  }

  /** Who a live login (refresh token) signs in as; the login noted, so that its bearer tokens end with it. */
  private loginPrincipal(token: StoredToken): Principal | undefined {
    if (token.parentId !== undefined) {
      // Got with a personal access or CI token: lives as long as that token does.
      const parentToken = this.store.token(token.parentId);
      const parent = parentToken && parentToken.type !== 'refresh' ? this.tokenPrincipal(parentToken, false) : undefined;
      return parent && { ...parent, login: token.id };
    }
    const account = this.find(token.user);
    if (!account) return undefined;
    // Got with another password than the user's now (a configuration user's changed in
    // configuration.toml, which `wharf user passwd` cannot revoke): whoever had that one keeps nothing.
    // Tokens from before refresh tokens noted it carry none.
    const credential = credentialOf(account);
    if (token.credential !== undefined && !safeEqual(token.credential, credential)) return undefined;
    return { kind: 'user', name: account.name, admin: account.admin, credential: token.credential ?? credential, login: token.id };
  }

  /**
   * A refresh token (a login) for a principal that signed in with credentials: its secret, and the
   * principal noting the login (the bearer tokens issued with it end with the login).
   */
  createRefreshToken(principal: Principal, ttlMs: number): { secret: string; principal: Principal } | undefined {
    if (principal.kind === 'anonymous') return undefined;
    let expiresAt = Date.now() + ttlMs;
    if (principal.kind === 'token') {
      const parent = this.store.token(principal.tokenId);
      if (!parent) return undefined;
      expiresAt = Math.min(expiresAt, parent.expiresAt);
    }
    const credential = principal.kind === 'user' ? (principal.credential ?? this.credentialOf(principal.name)) : undefined;
    const created = this.store.createToken({
      type: 'refresh',
      user: principal.name,
      ...(credential !== undefined ? { credential } : {}),
      scopes: principal.kind === 'token' ? principal.scopes : [],
      ...(principal.kind === 'token' ? { parentId: principal.tokenId } : {}),
      ...(principal.kind === 'token' && principal.namespace ? { namespace: principal.namespace } : {}),
      expiresAt,
    });
    return { secret: created.secret, principal: { ...principal, login: created.id } };
  }

  /**
   * The principal a bearer token's `tid` names, re-checked: revoked or expired tokens (and logins, the
   * parent token of a login, a password changed since a login) stop at once.
   */
  principalOfToken(id: number): Principal | undefined {
    const token = this.store.token(id);
    if (!token) return undefined;
    if (token.type === 'refresh') return this.isLive(token) ? this.loginPrincipal(token) : undefined;
    return this.tokenPrincipal(token, false);
  }

  /** What a user's bearer and refresh tokens carry of the password they were got with (undefined: no such user). */
  credentialOf(name: string): string | undefined {
    const account = this.find(name);
    return account && credentialOf(account);
  }

  /**
   * The user `name`, for a bearer token issued to that name at `issuedAt` (seconds) with the password
   * `credential` names: undefined when the user is gone, was added after the token was issued (a user
   * removed, and another added under the name, never gets the first one's tokens), or has another
   * password now (whoever had the old one keeps none of its tokens). Tokens issued before they carried
   * the credential have none, and live out their `token_ttl`.
   */
  principalOfUser(name: string, issuedAt: number, credential?: string): Principal | undefined {
    const account = this.find(name);
    // `iat` is cut to the second: only a token certainly issued before the user was added is refused.
    if (!account || (account.createdAt !== undefined && (issuedAt + 1) * 1000 <= account.createdAt)) return undefined;
    const now = credentialOf(account);
    if (credential !== undefined && !safeEqual(credential, now)) return undefined;
    return { kind: 'user', name: account.name, admin: account.admin, credential: credential ?? now };
  }

  private isLive(token: StoredToken): boolean {
    return !token.revoked && token.expiresAt > Date.now();
  }

  private touch(token: StoredToken): void {
    const now = Date.now();
    if (token.lastUsedAt === undefined || now - token.lastUsedAt > TOUCH_INTERVAL_MS) this.store.touch(token.id, now);
  }

  private tokenPrincipal(token: StoredToken, touch: boolean): Extract<Principal, { kind: 'token' }> | undefined {
    if (!this.isLive(token)) return undefined;
    const account = this.find(token.user);
    if (!account) return undefined;
    if (touch) this.touch(token);
    return {
      kind: 'token',
      name: account.name,
      admin: account.admin,
      tokenId: token.id,
      tokenType: token.type === 'ci' ? 'ci' : 'pat',
      scopes: token.scopes,
      ...(token.namespace !== undefined ? { namespace: token.namespace } : {}),
    };
  }
}

/** Which password an account has now, as a refresh token notes it: a digest of its stored hash. */
function credentialOf(account: Account): string {
  return createHash('sha256').update(account.passwordHash).digest('base64url').slice(0, 22);
}

/** The cost a bcrypt hash was made with (`$2b$12$...`), or undefined for anything else. */
function bcryptCostOf(hash: string): number | undefined {
  const m = /^\$2[abxy]?\$(\d{2})\$/.exec(hash);
  return m ? Number(m[1]) : undefined;
}
