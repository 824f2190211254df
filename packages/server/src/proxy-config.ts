import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { MirrorStrategy } from '@wharf/proxy';
import { isValidRepositoryName } from '@wharf/registry-core';
import { ConfigError } from './config-error.js';
import { configDuration, parseDuration, timerProblem } from './duration.js';

export interface UpstreamConfig {
  /** The path component under /v2/proxy/ that names it. */
  readonly key: string;
  readonly url: string;
  readonly aliases: readonly string[];
  readonly username?: string;
  readonly password?: string;
  /** PEM certificates trusted for this upstream's HTTPS (and its mirrors'), besides the system's. */
  readonly ca?: string;
  /** Docker Hub puts one-component names under library/. */
  readonly officialPrefix?: string;
  /** Further URLs serving the same content; with `url` first, used by `strategy`. */
  readonly mirrors: readonly string[];
  /**
   * The mirrors are replicas of the same registry, sharing its accounts: `username` and `password`
   * go to them (and the token realms they name) too. Unset: mirrors are asked anonymously.
   */
  readonly mirrorCredentials?: boolean;
  readonly strategy: MirrorStrategy;
  readonly hedgeDelay: number;
  /** striped: bytes per range request (unset: from the number of mirrors, see MirroredUpstream). */
  readonly stripeSize?: number;
  /**
   * Who may pull through this upstream when auth is enabled: any signed-in user ("authenticated"),
   * everyone ("anonymous"), or members of the named groups. Unset: "authenticated", or "anonymous"
   * with `[proxy] anonymous = true`.
   */
  readonly access?: UpstreamAccess;
  /** Its cache and request policies: `[proxy]`'s, or its own where its table sets them. */
  readonly policy?: UpstreamPolicy;
  /**
   * Where its table stands among `[proxy.upstreams.*]` (0 first); unset for a built-in left alone.
   * (Keys that are whole numbers come first whatever their place: JavaScript orders an object so.)
   */
  readonly configuredAt?: number;
}

/**
 * What `[proxy]` sets for every upstream and `[proxy.upstreams.<key>]` may set for its own: how long
 * a tag's check and a 404 stand, the rate-limit floor, the outage back-off, timeouts and retries.
 */
export interface UpstreamPolicy {
  readonly manifestTtl: number;
  readonly absentTtl: number;
  readonly rateLimitFloor: number;
  /** After an upstream request ends in an outage, how long the upstream is not asked again (ms; 0: always asked). */
  readonly outageBackoff: number;
  readonly connectTimeout: number;
  readonly firstByteTimeout: number;
  readonly idleTimeout: number;
  /** The slowest a blob's body may come, bytes per second over each `idleTimeout` (0: no limit). */
  readonly minSpeed: number;
  readonly retries: number;
}

/** The keys of UpstreamPolicy in the configuration file. */
const POLICY_KEYS = ['manifest_ttl', 'absent_ttl', 'rate_limit_floor', 'outage_backoff', 'connect_timeout', 'first_byte_timeout', 'idle_timeout', 'min_speed', 'retries'] as const;

export type UpstreamAccess = 'authenticated' | 'anonymous' | readonly string[];

/** `[proxy]`; its UpstreamPolicy is every upstream's that does not set its own. */
export interface ProxyConfig extends UpstreamPolicy {
  readonly enabled: boolean;
  /** Serve anonymous clients from any address (otherwise only loopback clients may use the proxy). */
  readonly anonymous: boolean;
  /** Docker `registry-mirrors` mode: a pull of a name that is not local goes to this upstream. */
  readonly defaultUpstream?: string;
  /** Cached content not accessed for this long is evicted (ms). */
  readonly cacheTtl: number;
  /** Upper bound of cached blob bytes, least recently used evicted first (0: none). */
  readonly maxSize: number;
  /** How often the eviction sweep runs (ms). */
  readonly evictionInterval: number;
  /** Fills write their blocks with O_DIRECT (where the file system takes it) and read the blob back once complete. */
  readonly directIo: boolean;
  readonly upstreams: readonly UpstreamConfig[];
  /** The egress proxy upstream requests go through, from HTTP_PROXY / HTTPS_PROXY / NO_PROXY. */
  readonly egress?: EgressProxy;
}

/** A forward proxy for upstream requests (CONNECT tunnels), as the usual environment variables give it. */
export interface EgressProxy {
  /** For http:// upstreams. */
  readonly http?: string;
  /** For https:// upstreams. */
  readonly https?: string;
  /** Hosts reached directly: comma-separated names, domain suffixes, host:port, or "*". */
  readonly noProxy?: string;
  /** The variables `http` and `https` were read from (`https_proxy` or `HTTPS_PROXY`, say), for messages. */
  readonly variables?: { readonly http?: string; readonly https?: string };
}

/** Upstreams every Wharf knows; `[proxy.upstreams.<key>]` overrides or adds. */
const NO_MIRRORS = { mirrors: [], strategy: 'failover', hedgeDelay: 500 } as const;

export const BUILT_IN_UPSTREAMS: readonly UpstreamConfig[] = ([
  { key: 'docker.io', url: 'https://registry-1.docker.io', aliases: ['docker', 'index.docker.io', 'registry-1.docker.io'], officialPrefix: 'library/' },
  { key: 'ghcr.io', url: 'https://ghcr.io', aliases: ['ghcr'] },
  { key: 'quay.io', url: 'https://quay.io', aliases: ['quay'] },
  { key: 'registry.k8s.io', url: 'https://registry.k8s.io', aliases: ['k8s'] },
  { key: 'gcr.io', url: 'https://gcr.io', aliases: ['gcr'] },
  { key: 'k8s.gcr.io', url: 'https://k8s.gcr.io', aliases: [] },
  { key: 'nvcr.io', url: 'https://nvcr.io', aliases: ['nvcr'] },
  { key: 'registry.gitlab.com', url: 'https://registry.gitlab.com', aliases: ['gitlab'] },
  { key: 'docker.cloudsmith.io', url: 'https://docker.cloudsmith.io', aliases: ['cloudsmith'] },
  { key: 'mcr.microsoft.com', url: 'https://mcr.microsoft.com', aliases: ['mcr'] },
  { key: 'public.ecr.aws', url: 'https://public.ecr.aws', aliases: ['ecr'] },
] as const).map((u) => ({ ...NO_MIRRORS, ...u }));

const PROXY_KEYS = new Set([
  'enabled', 'anonymous', 'default_upstream', 'manifest_ttl', 'absent_ttl', 'rate_limit_floor', 'outage_backoff',
  'connect_timeout', 'first_byte_timeout', 'idle_timeout', 'min_speed', 'retries', 'upstreams',
  'cache_ttl', 'max_size', 'eviction_interval', 'direct_io',
]);

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4,
};

/** "50GB", "500MiB", "0", or a number of bytes. */
export function parseSize(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  return m && unit !== undefined ? Math.floor(Number(m[1]) * unit) : undefined;
}
const UPSTREAM_KEYS = new Set<string>(['url', 'aliases', 'username', 'password', 'password_env', 'library_prefix', 'mirrors', 'mirror_credentials', 'strategy', 'hedge_delay', 'access', 'ca_file', 'stripe_size', ...POLICY_KEYS]);
const STRATEGIES: readonly MirrorStrategy[] = ['failover', 'hedged', 'striped', 'adaptive'];

function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/** `timer`: the duration sets a timer, and is refused past what one keeps (see MAX_TIMER_MS). */
function duration(table: Record<string, unknown>, key: string, fallback: string, timer = false, where = 'proxy'): number {
  const raw = table[key] ?? fallback;
  const ms = configDuration(raw);
  if (ms === undefined || !Number.isFinite(ms) || ms < 0) {
    throw new ConfigError(`"${where}.${key}" must be a duration such as "5m" or "30s" (got ${JSON.stringify(raw)})`);
  }
  const tooLong = timer ? timerProblem(ms) : undefined;
  if (tooLong) throw new ConfigError(`"${where}.${key}" ${tooLong} (got ${JSON.stringify(raw)})`);
  return ms;
}

/**
 * An item's access time is written about once a minute while it is in use (DeferredWrites.note):
 * below two minutes, content in constant use could look unused to a sweep and be evicted.
 */
const MIN_CACHE_TTL_MS = 2 * 60_000;

function cacheTtl(table: Record<string, unknown>): number {
  const ms = duration(table, 'cache_ttl', '90d');
  if (ms < MIN_CACHE_TTL_MS) {
    throw new ConfigError(`"proxy.cache_ttl" must be at least 2m: access times are written about once a minute, so content in use could be evicted (got ${JSON.stringify(table.cache_ttl)})`);
  }
  return ms;
}

function integer(table: Record<string, unknown>, key: string, fallback: number, where = 'proxy'): number {
  const raw = table[key] ?? fallback;
  if (typeof raw !== 'number' || !Number.isInteger(raw) || raw < 0) throw new ConfigError(`"${where}.${key}" must be a non-negative integer`);
  return raw;
}

/**
 * The policy of the table at `where`: `[proxy]`'s (with the defaults), or an upstream's, each key it
 * does not set taken from `inherited` (`[proxy]`'s).
 */
function policyFrom(table: Record<string, unknown>, where: string, inherited?: UpstreamPolicy): UpstreamPolicy {
  const pick = (key: (typeof POLICY_KEYS)[number], parse: () => number, from: number | undefined): number => (table[key] === undefined && from !== undefined ? from : parse());
  return {
    manifestTtl: pick('manifest_ttl', () => duration(table, 'manifest_ttl', '5m', false, where), inherited?.manifestTtl),
    absentTtl: pick('absent_ttl', () => duration(table, 'absent_ttl', '1m', false, where), inherited?.absentTtl),
    rateLimitFloor: pick('rate_limit_floor', () => integer(table, 'rate_limit_floor', 10, where), inherited?.rateLimitFloor),
    outageBackoff: pick('outage_backoff', () => duration(table, 'outage_backoff', '30s', true, where), inherited?.outageBackoff),
    connectTimeout: pick('connect_timeout', () => duration(table, 'connect_timeout', '10s', true, where), inherited?.connectTimeout),
    firstByteTimeout: pick('first_byte_timeout', () => duration(table, 'first_byte_timeout', '30s', true, where), inherited?.firstByteTimeout),
    idleTimeout: pick('idle_timeout', () => duration(table, 'idle_timeout', '60s', true, where), inherited?.idleTimeout),
    minSpeed: pick('min_speed', () => speed(table, 'min_speed', '1KiB/s', where), inherited?.minSpeed),
    retries: pick('retries', () => integer(table, 'retries', 3, where), inherited?.retries),
  };
}

/** Bytes per second: "1KiB/s", "100KB/s", "0", or a number of bytes per second. */
function speed(table: Record<string, unknown>, key: string, fallback: string, where: string): number {
  const raw = table[key] ?? fallback;
  const bytes = parseSize(typeof raw === 'string' ? raw.replace(/\/\s*s\s*$/i, '') : raw);
  if (bytes === undefined) throw new ConfigError(`"${where}.${key}" must be a speed such as "1KiB/s" or "0" (got ${JSON.stringify(raw)})`);
  return bytes;
}

function size(table: Record<string, unknown>, key: string): number {
  const bytes = parseSize(table[key] ?? 0);
  if (bytes === undefined) throw new ConfigError(`"proxy.${key}" must be a size such as "50GB" or "500MiB" (got ${JSON.stringify(table[key])})`);
  return bytes;
}

function boolean(table: Record<string, unknown>, key: string, fallback: boolean): boolean {
  const raw = table[key] ?? fallback;
  if (typeof raw !== 'boolean') throw new ConfigError(`"proxy.${key}" must be true or false`);
  return raw;
}

/** The PEM certificates of a `ca_file`, read when the configuration loads so that a bad path stops the start. */
function readCaFile(where: string, path: string): string {
  let pem: string;
  try {
    pem = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`"${where}": cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError(`"${where}": ${path} holds no PEM certificate`);
  return pem;
}

/** stripe_size's bounds: below, a range request's overhead outweighs its bytes; above, memory (two per mirror in flight). */
const MIN_STRIPE = 256 * 1024;
const MAX_STRIPE = 64 * 1024 * 1024;

/** Above this a hedge is no hedge: the first-byte timeout (30 s by default) has long ended the request. */
const MAX_HEDGE_DELAY_MS = 10 * 60_000;

/**
 * A registry's base URL from the configuration, without trailing slashes: http(s), a valid host and
 * port, and nothing a base URL cannot carry (a query, a fragment, credentials: those go in
 * `username` and `password`). A path is kept (a registry served under one).
 */
function registryUrl(where: string, value: unknown): string {
  if (typeof value !== 'string' || !/^https?:\/\/[^/]+/.test(value)) throw new ConfigError(`"${where}" must be an http(s) URL (got ${typeof value === 'string' ? JSON.stringify(withoutSecrets(value)) : JSON.stringify(value)})`);
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new ConfigError(`"${where}" is not a valid URL: ${withoutSecrets(value)} (a host, and a port from 1 to 65535 if any)`);
  }
  if (parsed.username || parsed.password) throw new ConfigError(`"${where}" must not hold credentials: give them as "username" and "password" (or "password_env")`);
  if (parsed.search || parsed.hash || value.includes('?') || value.includes('#')) throw new ConfigError(`"${where}" must be a base URL, without a query or fragment (got ${withoutSecrets(value)})`);
  return value.replace(/\/+$/, '');
}

/**
 * A URL as an error message may show it (messages go to standard error and the service's log): its
 * user information and its query or fragment, where credentials and tokens ride, hidden.
 */
function withoutSecrets(url: string): string {
  // Up to the last '@': a password may hold '/', '?' or '#' (a base64 token does), which end no user information.
  const hidden = url.replace(/^([^/]*\/\/).*@/s, '$1***@');
  return hidden.replace(/([?#]).*$/s, '$1***');
}

/** One key for the URLs of one registry: the host's case and a default port do not tell them apart. */
function sameServer(url: string): string {
  const parsed = new URL(url);
  return `${parsed.origin}${parsed.pathname.replace(/\/+$/, '')}`;
}

function upstream(key: string, raw: unknown, env: NodeJS.ProcessEnv, builtIn: UpstreamConfig | undefined, secrets: boolean, shared: UpstreamPolicy, fileDir: string): UpstreamConfig {
  const where = `proxy.upstreams.${key}`;
  if (!isTable(raw)) throw new ConfigError(`"${where}" must be a table`);
  for (const k of Object.keys(raw)) if (!UPSTREAM_KEYS.has(k)) throw new ConfigError(`unknown key "${where}.${k}"`);
  if (!/^[a-z0-9]+(?:[._-][a-z0-9]+)*$/.test(key)) {
    throw new ConfigError(`"${where}": the key must be lower case letters, digits, ".", "_" or "-" (it is a path component); give a host with a port or capitals a key like "myreg"`);
  }
  const url = registryUrl(`${where}.url`, raw.url ?? builtIn?.url);
  const aliases = raw.aliases ?? builtIn?.aliases ?? [];
  if (!Array.isArray(aliases) || aliases.some((a) => typeof a !== 'string' || !isValidRepositoryName(a) || a.includes('/'))) {
    throw new ConfigError(`"${where}.aliases" must be an array of lower-case names`);
  }
  for (const k of ['username', 'password', 'password_env', 'library_prefix', 'ca_file']) {
    if (raw[k] !== undefined && typeof raw[k] !== 'string') throw new ConfigError(`"${where}.${k}" must be a string`);
  }
  let password = raw.password as string | undefined;
  if (raw.password_env !== undefined) {
    password = env[raw.password_env as string];
    if (password === undefined && secrets) throw new ConfigError(`"${where}.password_env" names ${String(raw.password_env)}, which is not set`);
  }
  // Like the password, read only by what talks to the upstream (the file may be the service's alone).
  // A relative path is the configuration file's neighbour, as every other path in it is.
  const ca = raw.ca_file === undefined || !secrets ? undefined : readCaFile(`${where}.ca_file`, resolve(fileDir, raw.ca_file as string));
  const prefix = (raw.library_prefix as string | undefined) ?? builtIn?.officialPrefix;
  const rawMirrors = raw.mirrors ?? [];
  if (!Array.isArray(rawMirrors)) throw new ConfigError(`"${where}.mirrors" must be an array of http(s) URLs`);
  // Each server once: a mirror that is `url` again (a built-in's, say) or an earlier mirror is dropped.
  const seen = new Set([sameServer(url)]);
  const mirrors = rawMirrors.map((m, i) => registryUrl(`${where}.mirrors[${i}]`, m)).filter((m) => !seen.has(sameServer(m)) && seen.add(sameServer(m)));
  const strategy = raw.strategy ?? 'failover';
  if (!STRATEGIES.includes(strategy as MirrorStrategy)) {
    throw new ConfigError(`"${where}.strategy" must be one of ${STRATEGIES.join(', ')} (got ${JSON.stringify(strategy)})`);
  }
  const hedgeDelay = raw.hedge_delay === undefined ? 500 : typeof raw.hedge_delay === 'string' ? parseDuration(raw.hedge_delay) : undefined;
  if (hedgeDelay === undefined) throw new ConfigError(`"${where}.hedge_delay" must be a duration such as "300ms"`);
  if (hedgeDelay > MAX_HEDGE_DELAY_MS) throw new ConfigError(`"${where}.hedge_delay" must be at most 10m (got ${String(raw.hedge_delay)})`);
  // A strategy or a delay that cannot apply is a slip (a forgotten mirrors list, a strategy
  // changed without its delay) that would otherwise pass unnoticed.
  if (strategy !== 'failover' && mirrors.length === 0) {
    throw new ConfigError(`"${where}.strategy" is ${JSON.stringify(strategy)}, but the upstream has no mirrors besides its url: list them in "${where}.mirrors"`);
  }
  if (raw.hedge_delay !== undefined && strategy !== 'hedged') {
    throw new ConfigError(`"${where}.hedge_delay" applies to strategy = "hedged" only (the strategy is ${JSON.stringify(strategy)})`);
  }
  const mirrorCredentials = raw.mirror_credentials;
  if (mirrorCredentials !== undefined) {
    if (typeof mirrorCredentials !== 'boolean') throw new ConfigError(`"${where}.mirror_credentials" must be true or false`);
    if (mirrors.length === 0) throw new ConfigError(`"${where}.mirror_credentials" applies to an upstream with mirrors only: list them in "${where}.mirrors"`);
  }
  const stripeSize = raw.stripe_size === undefined ? undefined : parseSize(raw.stripe_size);
  if (raw.stripe_size !== undefined) {
    if (strategy !== 'striped') throw new ConfigError(`"${where}.stripe_size" applies to strategy = "striped" only (the strategy is ${JSON.stringify(strategy)})`);
    if (stripeSize === undefined || stripeSize < MIN_STRIPE || stripeSize > MAX_STRIPE) {
      throw new ConfigError(`"${where}.stripe_size" must be a size from "256KiB" to "64MiB" (got ${JSON.stringify(raw.stripe_size)})`);
    }
  }
  const access = raw.access;
  if (
    access !== undefined &&
    access !== 'authenticated' &&
    access !== 'anonymous' &&
    !(Array.isArray(access) && access.length > 0 && access.every((g) => typeof g === 'string' && g !== ''))
  ) {
    throw new ConfigError(`"${where}.access" must be "authenticated", "anonymous" or an array of group names (got ${JSON.stringify(access)})`);
  }
  return {
    key,
    url,
    aliases: aliases as string[],
    ...(raw.username !== undefined ? { username: raw.username as string } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(ca !== undefined ? { ca } : {}),
    ...(prefix ? { officialPrefix: prefix.endsWith('/') ? prefix : `${prefix}/` } : {}),
    mirrors,
    ...(mirrorCredentials === true ? { mirrorCredentials } : {}),
    strategy: strategy as MirrorStrategy,
    hedgeDelay,
    ...(stripeSize !== undefined ? { stripeSize } : {}),
    ...(access !== undefined ? { access: access as UpstreamAccess } : {}),
    policy: policyFrom(raw, where, shared),
  };
}

/**
 * `secrets` false: an upstream whose `password_env` is unset is read without its password, and `ca_file` is not read (see LoadOptions).
 * `fileDir`: the configuration file's folder, which a relative `ca_file` is taken from.
 */
export function buildProxyConfig(raw: unknown, env: NodeJS.ProcessEnv, secrets = true, fileDir = process.cwd()): ProxyConfig {
  const table = raw === undefined ? {} : raw;
  if (!isTable(table)) throw new ConfigError('"proxy" must be a table');
  for (const k of Object.keys(table)) if (!PROXY_KEYS.has(k)) throw new ConfigError(`unknown key "proxy.${k}"`);
  const configured = table.upstreams ?? {};
  if (!isTable(configured)) throw new ConfigError('"proxy.upstreams" must be a table of upstreams');
  const shared = policyFrom(table, 'proxy');
  const byKey = new Map<string, UpstreamConfig>(BUILT_IN_UPSTREAMS.map((u) => [u.key, { ...u, policy: shared }]));
  for (const [at, [key, value]] of Object.entries(configured).entries()) {
    byKey.set(key, { ...upstream(key, value, env, byKey.get(key), secrets, shared, fileDir), configuredAt: at });
  }
  const upstreams = [...byKey.values()];
  const names = new Map<string, string>();
  for (const u of upstreams) {
    for (const name of [u.key, ...u.aliases]) {
      const other = names.get(name);
      if (other && other !== u.key) throw new ConfigError(`proxy upstreams "${other}" and "${u.key}" both answer to "${name}"`);
      names.set(name, u.key);
    }
  }
  const defaultUpstream = table.default_upstream;
  if (defaultUpstream !== undefined && (typeof defaultUpstream !== 'string' || (defaultUpstream !== '' && !names.has(defaultUpstream)))) {
    throw new ConfigError(`"proxy.default_upstream" must name a configured upstream (got ${JSON.stringify(defaultUpstream)})`);
  }
  return {
    enabled: boolean(table, 'enabled', true),
    anonymous: boolean(table, 'anonymous', false),
    ...(typeof defaultUpstream === 'string' && defaultUpstream !== '' ? { defaultUpstream: names.get(defaultUpstream)! } : {}),
    ...shared,
    cacheTtl: cacheTtl(table),
    maxSize: size(table, 'max_size'),
    evictionInterval: duration(table, 'eviction_interval', '1h', true),
    directIo: boolean(table, 'direct_io', true),
    upstreams,
    // Upstream requests only: commands that send none do not stop on a variable meant for other programs.
    ...(secrets ? egressFrom(env) : {}),
  };
}

/** HTTP_PROXY, HTTPS_PROXY and NO_PROXY (or their lower-case forms, which win, as curl has it). */
function egressFrom(env: NodeJS.ProcessEnv): { egress?: EgressProxy } {
  /** The variable's value and the name it was read under. */
  const pick = (name: string): { value: string; from: string } | undefined => {
    for (const from of [name.toLowerCase(), name]) {
      const value = env[from];
      if (value !== undefined) return value.trim() === '' ? undefined : { value: value.trim(), from };
    }
    return undefined;
  };
  const proxyUrl = (name: string): { url: string; from: string } | undefined => {
    const picked = pick(name);
    if (picked === undefined) return undefined;
    const { value, from } = picked;
    // As curl: a proxy without a scheme is an http:// one.
    const full = /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`;
    let url: URL;
    try {
      url = new URL(full);
    } catch {
      throw new ConfigError(`${from} must be a URL such as http://proxy.example:3128`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(`${from} must be an http:// or https:// URL (got ${url.protocol})`);
    return { url: full, from };
  };
  const http = proxyUrl('HTTP_PROXY');
  const https = proxyUrl('HTTPS_PROXY');
  const noProxy = pick('NO_PROXY')?.value;
  if (http === undefined && https === undefined) return {};
  return {
    egress: {
      ...(http ? { http: http.url } : {}),
      ...(https ? { https: https.url } : {}),
      ...(noProxy ? { noProxy } : {}),
      variables: { ...(http ? { http: http.from } : {}), ...(https ? { https: https.from } : {}) },
    },
  };
}

/**
 * What `?ns=<registry>` names: each upstream's key and aliases, then each upstream's host (with its
 * port) that no key or alias already names. Two upstreams of one host (a built-in and an added one
 * with credentials, say) cannot both have it: the first configured does (in the order of the
 * `[proxy.upstreams.*]` tables, a built-in they leave alone after them), and `nsHostWarnings` says
 * so; an alias equal to the host (one without a port) sends it to another.
 */
export function nsTargets(upstreams: readonly UpstreamConfig[]): Map<string, UpstreamConfig> {
  const targets = new Map<string, UpstreamConfig>();
  for (const u of upstreams) for (const name of [u.key, ...u.aliases]) targets.set(name.toLowerCase(), u);
  for (const u of inConfiguredOrder(upstreams)) {
    const host = new URL(u.url).host.toLowerCase();
    if (!targets.has(host)) targets.set(host, u);
  }
  return targets;
}

/** A warning for each host two or more upstreams reach while no key or alias says which `?ns=` means. */
export function nsHostWarnings(upstreams: readonly UpstreamConfig[]): string[] {
  const named = new Set(upstreams.flatMap((u) => [u.key, ...u.aliases].map((n) => n.toLowerCase())));
  const byHost = new Map<string, string[]>();
  for (const u of inConfiguredOrder(upstreams)) {
    const host = new URL(u.url).host.toLowerCase();
    byHost.set(host, [...(byHost.get(host) ?? []), u.key]);
  }
  const warnings: string[] = [];
  for (const [host, keys] of byHost) {
    if (keys.length < 2 || named.has(host)) continue;
    const [first, ...others] = keys as [string, ...string[]];
    // An alias is a name without a port: a host with one is chosen by the order of the tables.
    const how = host.includes(':') ? `configure it before "${first}"` : `add "${host}" to its aliases`;
    warnings.push(
      `proxy upstreams ${keys.map((k) => JSON.stringify(k)).join(' and ')} all reach ${host}: a containerd pull with ?ns=${host} goes to "${first}", the first configured; to send it to ${others.map((k) => JSON.stringify(k)).join(' or ')}, ${how}`,
    );
  }
  return warnings;
}

/** The configured upstreams in the order of their tables, then the built-ins left alone. */
function inConfiguredOrder(upstreams: readonly UpstreamConfig[]): UpstreamConfig[] {
  return [...upstreams].sort((a, b) => (a.configuredAt ?? Number.MAX_SAFE_INTEGER) - (b.configuredAt ?? Number.MAX_SAFE_INTEGER));
}

/** The upstream a key or alias names. */
export function findUpstream(proxy: ProxyConfig, name: string): UpstreamConfig | undefined {
  return proxy.upstreams.find((u) => u.key === name || u.aliases.includes(name));
}
