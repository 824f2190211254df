import type { SqliteDatabase, SqliteStatement as Statement } from '@wharf/registry-core';
import type { KnownAddressStore } from './known-addresses.js';
import type { Action } from './permissions.js';
import { hashSecret, newSecret, safeEqual } from './secrets.js';

/** Users, tokens and public marks live in the registry's SQLite database; these tables are ours. */
const SCHEMA = `
  CREATE TABLE IF NOT EXISTS auth_users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS auth_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL CHECK (type IN ('pat', 'ci', 'refresh')),
    hash TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL,
    name TEXT,
    scopes TEXT NOT NULL,
    namespace TEXT,
    parent_id INTEGER,
    expires_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    credential TEXT
  );
  CREATE INDEX IF NOT EXISTS auth_tokens_user ON auth_tokens (user);
  -- The expired refresh tokens each new one sweeps, and a user's most recently used ones (the cap):
  -- found without a scan of the table, which a flood of logins made grow (8 ms a login at 80,000 rows).
  CREATE INDEX IF NOT EXISTS auth_tokens_expiry ON auth_tokens (type, expires_at);
  CREATE INDEX IF NOT EXISTS auth_tokens_user_used ON auth_tokens (user, type, COALESCE(last_used_at, created_at));
  DROP INDEX IF EXISTS auth_tokens_user_type;
  CREATE TABLE IF NOT EXISTS auth_public (
    pattern TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS auth_known_addresses (
    user TEXT NOT NULL,
    address TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (user, address)
  ) WITHOUT ROWID;
`;

export type TokenType = 'pat' | 'ci' | 'refresh';

export const TOKEN_PREFIX: Readonly<Record<TokenType, string>> = { pat: 'wharf_pat_', ci: 'wharf_ci_', refresh: 'wharf_rt_' };

export interface StoredUser {
  readonly name: string;
  readonly passwordHash: string;
  readonly admin: boolean;
  readonly createdAt: number;
}

export interface StoredToken {
  readonly id: number;
  readonly type: TokenType;
  readonly user: string;
  readonly name?: string;
  readonly scopes: readonly Action[];
  readonly namespace?: string;
  /** Refresh tokens got from a PAT or CI token keep its limits and die with it. */
  readonly parentId?: number;
  /** A refresh token got with a password: which password (see Accounts.credentialOf), so that a new one ends it. */
  readonly credential?: string;
  readonly expiresAt: number;
  readonly revoked: boolean;
  readonly createdAt: number;
  readonly lastUsedAt?: number;
}

interface TokenRow {
  id: number;
  type: TokenType;
  hash: string;
  user: string;
  name: string | null;
  scopes: string;
  namespace: string | null;
  parent_id: number | null;
  expires_at: number;
  revoked: number;
  created_at: number;
  last_used_at: number | null;
  credential: string | null;
}

function toToken(row: TokenRow): StoredToken {
  return {
    id: row.id,
    type: row.type,
    user: row.user,
    ...(row.name !== null ? { name: row.name } : {}),
    scopes: row.scopes === '' ? [] : (row.scopes.split(',') as Action[]),
    ...(row.namespace !== null ? { namespace: row.namespace } : {}),
    ...(row.parent_id !== null ? { parentId: row.parent_id } : {}),
    ...(row.credential !== null ? { credential: row.credential } : {}),
    expiresAt: row.expires_at,
    revoked: row.revoked !== 0,
    createdAt: row.created_at,
    ...(row.last_used_at !== null ? { lastUsedAt: row.last_used_at } : {}),
  };
}

export interface NewToken {
  readonly type: TokenType;
  readonly user: string;
  readonly name?: string;
  readonly scopes: readonly Action[];
  readonly namespace?: string;
  readonly parentId?: number;
  readonly credential?: string;
  readonly expiresAt: number;
}

/**
 * Refresh tokens a user keeps at most (each `docker login` makes one, which lives 30 days): one
 * account minting them in a loop cannot grow the table without bound. Past it those unused longest
 * go (a token's use is noted, at most a minute late), so a shared CI account logging in for every job
 * ends its jobs' old logins before the build agent's or laptop's it uses between them.
 */
export const MAX_REFRESH_PER_USER = 10_000;

/** SQLite storage of accounts. Secrets are stored as sha256 hashes, never as given. */
export class AuthStore {
  private readonly q: Record<string, Statement>;

  constructor(private readonly db: SqliteDatabase) {
    db.exec(SCHEMA);
    // Databases made before refresh tokens noted their password.
    const columns = db.prepare('PRAGMA table_info(auth_tokens)').all() as { name: string }[];
    if (!columns.some((c) => c.name === 'credential')) db.exec('ALTER TABLE auth_tokens ADD COLUMN credential TEXT');
    const s = (sql: string) => db.prepare(sql);
    this.q = {
      user: s('SELECT name, password_hash, admin, created_at FROM auth_users WHERE name = ?'),
      users: s('SELECT name, password_hash, admin, created_at FROM auth_users ORDER BY name'),
      hasAdmin: s('SELECT 1 FROM auth_users WHERE admin = 1 LIMIT 1'),
      addUser: s('INSERT INTO auth_users (name, password_hash, admin, created_at) VALUES (?, ?, ?, ?)'),
      setPassword: s('UPDATE auth_users SET password_hash = ? WHERE name = ?'),
      // Those signed in with the password: a refresh token obtained with a PAT or CI token has that token as its parent, and lives as long as it does.
      revokeRefresh: s("UPDATE auth_tokens SET revoked = 1 WHERE user = ? AND type = 'refresh' AND parent_id IS NULL"),
      removeUser: s('DELETE FROM auth_users WHERE name = ?'),
      removeUserTokens: s('UPDATE auth_tokens SET revoked = 1 WHERE user = ?'),
      addToken: s(`INSERT INTO auth_tokens (type, hash, user, name, scopes, namespace, parent_id, credential, expires_at, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
      tokenUsers: s('SELECT DISTINCT user FROM auth_tokens WHERE revoked = 0'),
      tokenByHash: s('SELECT * FROM auth_tokens WHERE hash = ?'),
      tokenById: s('SELECT * FROM auth_tokens WHERE id = ?'),
      tokens: s("SELECT * FROM auth_tokens WHERE type != 'refresh' ORDER BY id"),
      tokensOf: s("SELECT * FROM auth_tokens WHERE type != 'refresh' AND user = ? ORDER BY id"),
      logins: s("SELECT * FROM auth_tokens WHERE type = 'refresh' AND revoked = 0 AND expires_at > ? ORDER BY id"),
      loginsOf: s("SELECT * FROM auth_tokens WHERE type = 'refresh' AND revoked = 0 AND expires_at > ? AND user = ? ORDER BY id"),
      endLogins: s("UPDATE auth_tokens SET revoked = 1 WHERE type = 'refresh' AND revoked = 0 AND expires_at > ? AND user = ?"),
      revoke: s('UPDATE auth_tokens SET revoked = 1 WHERE id = ? OR parent_id = ?'),
      touch: s('UPDATE auth_tokens SET last_used_at = ? WHERE id = ?'),
      dropExpiredRefresh: s("DELETE FROM auth_tokens WHERE type = 'refresh' AND expires_at < ?"),
      // Past the MAX_REFRESH_PER_USER of a user's refresh tokens used (or made) last, the others go.
      // (Never the one just made: a clock stepped back would put it last.)
      dropOldestRefresh: s(`DELETE FROM auth_tokens WHERE id != ? AND id IN (
                              SELECT id FROM auth_tokens WHERE user = ? AND type = 'refresh'
                              ORDER BY COALESCE(last_used_at, created_at) DESC LIMIT -1 OFFSET ${MAX_REFRESH_PER_USER})`),
      publics: s('SELECT pattern FROM auth_public ORDER BY pattern'),
      addPublic: s('INSERT INTO auth_public (pattern, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING'),
      removePublic: s('DELETE FROM auth_public WHERE pattern = ?'),
      dropOldAddresses: s('DELETE FROM auth_known_addresses WHERE at < ?'),
      addresses: s('SELECT user, address, at FROM auth_known_addresses ORDER BY at'),
      saveAddress: s('INSERT INTO auth_known_addresses (user, address, at) VALUES (?, ?, ?) ON CONFLICT (user, address) DO UPDATE SET at = excluded.at'),
      trimAddresses: s(`DELETE FROM auth_known_addresses WHERE user = ? AND address NOT IN
                        (SELECT address FROM auth_known_addresses WHERE user = ? ORDER BY at DESC LIMIT ?)`),
      removeUserAddresses: s('DELETE FROM auth_known_addresses WHERE user = ?'),
    };
  }

  user(name: string): StoredUser | undefined {
    const row = this.q.user!.get(name) as { name: string; password_hash: string; admin: number; created_at: number } | undefined;
    return row && { name: row.name, passwordHash: row.password_hash, admin: row.admin !== 0, createdAt: row.created_at };
  }

  users(): StoredUser[] {
    return (this.q.users!.all() as { name: string; password_hash: string; admin: number; created_at: number }[]).map((row) => ({
      name: row.name,
      passwordHash: row.password_hash,
      admin: row.admin !== 0,
      createdAt: row.created_at,
    }));
  }

  hasAdmin(): boolean {
    return this.q.hasAdmin!.get() !== undefined;
  }

  /**
   * A new user. Tokens still held under that name were an earlier user's (removed, or a configuration
   * user taken out of configuration.toml): they are revoked, and never become the new user's.
   */
  addUser(name: string, passwordHash: string, admin: boolean): void {
    this.db.transaction(() => {
      this.q.removeUserTokens!.run(name);
      this.q.addUser!.run(name, passwordHash, admin ? 1 : 0, Date.now());
    })();
  }

  /**
   * Revokes the tokens of every user name that is neither in the database nor among `configured`
   * (users taken out of configuration.toml since the last start): they never come back to life for
   * a later user of the same name. Returns whose, and how many.
   */
  revokeOrphans(configured: readonly string[]): { users: string[]; tokens: number } {
    return this.db.transaction(() => {
      const revoked = { users: [] as string[], tokens: 0 };
      const live = new Set([...configured, ...this.users().map((u) => u.name)]);
      for (const { user } of this.q.tokenUsers!.all() as { user: string }[]) {
        if (live.has(user)) continue;
        revoked.users.push(user);
        revoked.tokens += this.q.removeUserTokens!.run(user).changes;
      }
      return revoked;
    })();
  }

  /**
   * A new password, which ends the refresh tokens signed in with the old one (`docker login` keeps one
   * for 30 days): whoever had the old password does not keep its access.
   */
  setPassword(name: string, passwordHash: string): boolean {
    return this.db.transaction(() => {
      this.q.revokeRefresh!.run(name);
      return this.q.setPassword!.run(passwordHash, name).changes > 0;
    })();
  }

  /** Removes the user, revokes every token of theirs and forgets where they signed in from. */
  removeUser(name: string): boolean {
    return this.db.transaction(() => {
      this.q.removeUserTokens!.run(name);
      this.q.removeUserAddresses!.run(name);
      return this.q.removeUser!.run(name).changes > 0;
    })();
  }

  /** Stores a new token; the secret is returned once and kept only as its hash. */
  createToken(token: NewToken): { id: number; secret: string } {
    const secret = newSecret(TOKEN_PREFIX[token.type]);
    const result = this.q.addToken!.run(
      token.type,
      hashSecret(secret),
      token.user,
      token.name ?? null,
      token.scopes.join(','),
      token.namespace ?? null,
      token.parentId ?? null,
      token.credential ?? null,
      token.expiresAt,
      Date.now(),
    );
    if (token.type === 'refresh') {
      this.q.dropExpiredRefresh!.run(Date.now());
      this.q.dropOldestRefresh!.run(result.lastInsertRowid, token.user);
    }
    return { id: Number(result.lastInsertRowid), secret };
  }

  /** The token a secret belongs to (whatever its state: the caller checks expiry and revocation). */
  findToken(secret: string): StoredToken | undefined {
    const hash = hashSecret(secret);
    const row = this.q.tokenByHash!.get(hash) as TokenRow | undefined;
    // The index lookup finds the row; the comparison that decides is constant-time.
    if (!row || !safeEqual(row.hash, hash)) return undefined;
    return toToken(row);
  }

  token(id: number): StoredToken | undefined {
    const row = this.q.tokenById!.get(id) as TokenRow | undefined;
    return row && toToken(row);
  }

  /** Personal access and CI tokens (refresh tokens are an implementation detail of logins). */
  tokens(user?: string): StoredToken[] {
    const rows = (user === undefined ? this.q.tokens!.all() : this.q.tokensOf!.all(user)) as TokenRow[];
    return rows.map(toToken);
  }

  /**
   * The logins in use: refresh tokens (what `docker login` keeps) neither revoked nor expired, of
   * every user or of `user`.
   */
  logins(user?: string): StoredToken[] {
    const rows = (user === undefined ? this.q.logins!.all(Date.now()) : this.q.loginsOf!.all(Date.now(), user)) as TokenRow[];
    return rows.map(toToken);
  }

  /** Ends every login of `user` (their refresh tokens, however obtained); how many were in use. */
  endLogins(user: string): number {
    return this.q.endLogins!.run(Date.now(), user).changes;
  }

  /** Revokes a token and the refresh tokens obtained with it. */
  revoke(id: number): boolean {
    return this.q.revoke!.run(id, id).changes > 0;
  }

  touch(id: number, at: number): void {
    this.q.touch!.run(at, id);
  }

  publicPatterns(): string[] {
    return (this.q.publics!.all() as { pattern: string }[]).map((r) => r.pattern);
  }

  addPublic(pattern: string): void {
    this.q.addPublic!.run(pattern, Date.now());
  }

  removePublic(pattern: string): boolean {
    return this.q.removePublic!.run(pattern).changes > 0;
  }

  /** The store of KnownAddresses: the addresses users signed in from, in this database. */
  knownAddressStore(): KnownAddressStore {
    return {
      load: (since) => {
        this.q.dropOldAddresses!.run(since);
        return this.q.addresses!.all() as { user: string; address: string; at: number }[];
      },
      save: (user, address, at, keep) => {
        this.db.transaction(() => {
          this.q.saveAddress!.run(user, address, at);
          this.q.trimAddresses!.run(user, user, keep);
        })();
      },
    };
  }
}
