import { isValidRepositoryName } from '@wharf/registry-core';
import { ConfigError } from './config-error.js';
import { configDuration } from './duration.js';
import { isLoopback } from './http/loopback.js';
import type { ProxyConfig } from './proxy-config.js';

/** What a group member may do in the group's namespace: reader pulls, developer pushes, maintainer deletes. */
export type Role = 'reader' | 'developer' | 'maintainer';
export const ROLES: readonly Role[] = ['reader', 'developer', 'maintainer'];

/** A user defined in configuration.toml (read-only there; the CLI manages users in the database). */
export interface ConfigUser {
  readonly name: string;
  /** bcrypt, cost 10 or more. */
  readonly passwordHash: string;
  readonly admin: boolean;
}

export interface GroupConfig {
  readonly name: string;
  /** user name → role */
  readonly members: ReadonlyMap<string, Role>;
}

export interface AuthConfig {
  readonly enabled: boolean;
  /** The token service name: the `service` of challenges, the `iss` and `aud` of tokens. */
  readonly service: string;
  /** Absolute URL of /auth/token; undefined → derived per request from Host and the protocol. */
  readonly realm?: string;
  /** Lifetime of issued bearer tokens (ms), 60 s or more. */
  readonly tokenTtl: number;
  /** With auth disabled: the operator knows that a non-loopback `listen` makes an open registry. */
  readonly allowAnonymousPush: boolean;
  readonly users: readonly ConfigUser[];
  readonly groups: readonly GroupConfig[];
  /** Public repositories (`alice/site`) and namespaces (`team/*`): anonymous pull. */
  readonly public: readonly string[];
  /** WHARF_ADMIN_PASSWORD: the password of the `admin` created on the first start without any admin. */
  readonly initialAdminPassword?: string;
}

const AUTH_KEYS = new Set(['enabled', 'service', 'realm', 'token_ttl', 'allow_anonymous_push', 'users', 'groups', 'public']);
const USER_KEYS = new Set(['name', 'password_hash', 'admin']);
const GROUP_KEYS = new Set(['name', 'members']);

/** A user or group name is one repository path component (it names the namespace `<name>/*`). */
const ACCOUNT_NAME = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;
/** Names that would own a namespace with another meaning. */
const RESERVED_NAMES = new Set(['proxy', '_catalog']);
const BCRYPT_HASH = /^\$2[aby]\$(\d{2})\$[./A-Za-z0-9]{53}$/;
export const MIN_BCRYPT_COST = 10;

export function isValidAccountName(name: string): boolean {
  return name.length <= 64 && ACCOUNT_NAME.test(name) && !RESERVED_NAMES.has(name);
}

/** `team/*` (a namespace) or `alice/site` (one repository); never the proxy's (see PROXY_NOT_PUBLIC). */
export function isValidPublicPattern(pattern: string): boolean {
  if (isProxyPattern(pattern)) return false;
  return pattern.endsWith('/*') ? isValidRepositoryName(pattern.slice(0, -2)) : isValidRepositoryName(pattern);
}

/** A public pattern that names the proxy's repositories (`proxy`, `proxy/*`, `proxy/...`). */
export function isProxyPattern(pattern: string): boolean {
  return pattern === 'proxy' || pattern.startsWith('proxy/');
}

/** Why `proxy/...` cannot be made public: it was accepted, listed, and did nothing. */
export const PROXY_NOT_PUBLIC = 'the proxy\'s repositories are opened by their upstream\'s "access" (access = "anonymous" in [proxy.upstreams.<key>]), not by being public';

/** The cost of a bcrypt hash, or undefined when it is not one. */
export function bcryptCost(hash: string): number | undefined {
  const m = BCRYPT_HASH.exec(hash);
  return m ? Number(m[1]) : undefined;
}

function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

function boolean(table: Record<string, unknown>, key: string, fallback: boolean, where = 'auth'): boolean {
  const raw = table[key] ?? fallback;
  if (typeof raw !== 'boolean') throw new ConfigError(`"${where}.${key}" must be true or false`);
  return raw;
}

function users(raw: unknown): ConfigUser[] {
  if (raw === undefined) return [];
  if (!Array.isArray(raw)) throw new ConfigError('"auth.users" must be an array of tables ([[auth.users]])');
  const seen = new Set<string>();
  return raw.map((entry, i) => {
    const where = `auth.users[${i}]`;
    if (!isTable(entry)) throw new ConfigError(`"${where}" must be a table`);
    for (const k of Object.keys(entry)) if (!USER_KEYS.has(k)) throw new ConfigError(`unknown key "${where}.${k}"`);
    const name = entry.name;
    if (typeof name !== 'string' || !isValidAccountName(name)) {
      throw new ConfigError(`"${where}.name" must be a lower-case name of letters, digits, ".", "_" or "-" (not "proxy"); got ${JSON.stringify(name)}`);
    }
    if (seen.has(name)) throw new ConfigError(`"${where}.name": user "${name}" is defined twice`);
    seen.add(name);
    const hash = entry.password_hash;
    const cost = typeof hash === 'string' ? bcryptCost(hash) : undefined;
    if (cost === undefined) {
      throw new ConfigError(`"${where}.password_hash" (user "${name}") must be a bcrypt hash such as "$2b$12$..." (htpasswd -nbBC 12 user password)`);
    }
    if (cost < MIN_BCRYPT_COST) {
      throw new ConfigError(`"${where}.password_hash" (user "${name}") has bcrypt cost ${cost}; use ${MIN_BCRYPT_COST} or more (htpasswd -nbBC 12 user password)`);
    }
    return { name, passwordHash: hash as string, admin: boolean(entry, 'admin', false, where) };
  });
}

function groups(raw: unknown, userNames: ReadonlySet<string>): GroupConfig[] {
  if (raw === undefined) return [];
  if (!Array.isArray(raw)) throw new ConfigError('"auth.groups" must be an array of tables ([[auth.groups]])');
  const seen = new Set<string>();
  return raw.map((entry, i) => {
    const where = `auth.groups[${i}]`;
    if (!isTable(entry)) throw new ConfigError(`"${where}" must be a table`);
    for (const k of Object.keys(entry)) if (!GROUP_KEYS.has(k)) throw new ConfigError(`unknown key "${where}.${k}"`);
    const name = entry.name;
    if (typeof name !== 'string' || !isValidAccountName(name)) {
      throw new ConfigError(`"${where}.name" must be a lower-case name of letters, digits, ".", "_" or "-" (not "proxy"); got ${JSON.stringify(name)}`);
    }
    if (seen.has(name)) throw new ConfigError(`"${where}.name": group "${name}" is defined twice`);
    if (userNames.has(name)) throw new ConfigError(`"${where}.name": "${name}" is also a user; a namespace has one owner`);
    seen.add(name);
    const members = entry.members ?? {};
    if (!isTable(members)) throw new ConfigError(`"${where}.members" must be a table such as { alice = "maintainer", bob = "reader" }`);
    const map = new Map<string, Role>();
    for (const [user, role] of Object.entries(members)) {
      if (!isValidAccountName(user)) throw new ConfigError(`"${where}.members": "${user}" is not a valid user name`);
      if (!ROLES.includes(role as Role)) {
        throw new ConfigError(`"${where}.members.${user}" must be one of ${ROLES.join(', ')} (got ${JSON.stringify(role)})`);
      }
      map.set(user, role as Role);
    }
    return { name, members: map };
  });
}

export function buildAuthConfig(raw: unknown, env: NodeJS.ProcessEnv): AuthConfig {
  const table = raw === undefined ? {} : raw;
  if (!isTable(table)) throw new ConfigError('"auth" must be a table');
  for (const k of Object.keys(table)) if (!AUTH_KEYS.has(k)) throw new ConfigError(`unknown key "auth.${k}"`);
  const service = table.service ?? 'wharf';
  if (typeof service !== 'string' || !/^[A-Za-z0-9._:-]{1,253}$/.test(service)) {
    throw new ConfigError(`"auth.service" must be a name of letters, digits, ".", "_", ":" or "-" (got ${JSON.stringify(service)})`);
  }
  const realm = table.realm;
  if (realm !== undefined) {
    let ok = false;
    try {
      const url = new URL(String(realm));
      ok = typeof realm === 'string' && (url.protocol === 'http:' || url.protocol === 'https:') && !/["\\\s]/.test(realm);
    } catch {
      ok = false;
    }
    if (!ok) throw new ConfigError(`"auth.realm" must be an absolute http(s) URL of /auth/token, such as "https://wharf.example.com/auth/token"`);
  }
  const ttlRaw = table.token_ttl ?? '5m';
  const tokenTtl = configDuration(ttlRaw);
  if (tokenTtl === undefined || !Number.isFinite(tokenTtl) || tokenTtl < 60_000 || tokenTtl > 86_400_000) {
    throw new ConfigError(`"auth.token_ttl" must be a duration from "60s" to "24h" (got ${JSON.stringify(ttlRaw)})`);
  }
  const configUsers = users(table.users);
  const publicPatterns = table.public ?? [];
  if (Array.isArray(publicPatterns) && publicPatterns.some((p) => typeof p === 'string' && isProxyPattern(p))) {
    throw new ConfigError(`"auth.public": ${PROXY_NOT_PUBLIC}`);
  }
  if (!Array.isArray(publicPatterns) || publicPatterns.some((p) => typeof p !== 'string' || !isValidPublicPattern(p))) {
    throw new ConfigError('"auth.public" must be an array of repository names ("alice/site") or namespaces ("team/*")');
  }
  const adminPassword = env.WHARF_ADMIN_PASSWORD;
  return {
    enabled: boolean(table, 'enabled', true),
    service,
    ...(typeof realm === 'string' ? { realm } : {}),
    tokenTtl,
    allowAnonymousPush: boolean(table, 'allow_anonymous_push', false),
    users: configUsers,
    groups: groups(table.groups, new Set(configUsers.map((u) => u.name))),
    public: publicPatterns as string[],
    ...(adminPassword !== undefined && adminPassword !== '' ? { initialAdminPassword: adminPassword } : {}),
  };
}

/**
 * Checks across tables: Wharf never becomes an open registry on a public interface by accident, and
 * an upstream's `access` names only configured groups.
 */
export function checkAuthConfig(auth: AuthConfig, listen: { readonly host: string }, proxy: ProxyConfig): void {
  if (!auth.enabled && !auth.allowAnonymousPush && !(isLoopback(listen.host) || listen.host === 'localhost')) {
    throw new ConfigError(
      `"auth.enabled" = false is allowed only when "listen" is a loopback address (got "${listen.host}"): anyone could push and delete. ` +
        'Turn auth on, listen on 127.0.0.1, or set [auth] allow_anonymous_push = true to run an open registry on purpose',
    );
  }
  const groupNames = new Set(auth.groups.map((g) => g.name));
  for (const u of proxy.upstreams) {
    if (Array.isArray(u.access)) {
      for (const g of u.access) {
        if (!groupNames.has(g)) throw new ConfigError(`"proxy.upstreams.${u.key}.access" names group "${g}", which is not in [[auth.groups]]`);
      }
    }
  }
}
