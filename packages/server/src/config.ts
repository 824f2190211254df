import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { configDuration, timerProblem } from './duration.js';

import { ConfigError, UsageError } from './config-error.js';
import { namedVariables, unknownWharfVariables } from './unknown-env.js';
import { invalidNetwork } from './http/client-address.js';
import { buildProxyConfig, nsHostWarnings, type ProxyConfig } from './proxy-config.js';
import { buildAuthConfig, checkAuthConfig, type AuthConfig } from './auth-config.js';
import { buildGcConfig, type GcConfig } from './gc-config.js';
import { TABLE_ENV_KEYS, applyTableEnv, booleanWord, tableEnvName } from './env-tables.js';
import { buildTlsConfig, type TlsConfig } from './tls/tls-config.js';
import { buildMetricsConfig, type MetricsConfig } from './metrics/metrics-config.js';

export { ConfigError };

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
/** `auto`: pretty when standard output is a terminal, JSON lines otherwise. */
export type LogFormat = 'auto' | 'json' | 'pretty';

export interface WharfConfig {
  /** host:port to listen on. */
  readonly listen: { readonly host: string; readonly port: number };
  readonly registryStorage: string;
  readonly temporaryRegistryStorage: string;
  readonly proxyStorage: string;
  readonly database: string;
  /** Upload sessions not written to for this long are removed (ms). */
  readonly uploadMaxAge: number;
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  /** On SIGTERM/SIGINT/SIGHUP, how long requests (and blob fills) in flight may take to finish (ms). */
  readonly shutdownTimeout: number;
  /** Longest time a client may take to send a request's headers (ms). */
  readonly readHeaderTimeout: number;
  /** Keep-alive connections and sockets with no traffic are closed after this long (ms). */
  readonly idleTimeout: number;
  /** Longest time of a request that does not move a blob (ms; 0: none). */
  readonly requestTimeout: number;
  /** Client connections open at once, at most (http/connection-cap.ts). */
  readonly maxConnections: number;
  /** Reverse proxies (addresses, CIDR ranges) whose X-Forwarded-For names the client. */
  readonly trustedProxies: readonly string[];
  /** `?mount=` without `from` looks for a source repository (OCI 1.1 automatic content discovery). */
  readonly automaticMount: boolean;
  readonly proxy: ProxyConfig;
  readonly auth: AuthConfig;
  readonly tls: TlsConfig;
  readonly metrics: MetricsConfig;
  /** `[gc]` and `[[retention]]`. */
  readonly gc: GcConfig;
  /** What reading the configuration found suspicious without refusing it, one sentence each (logged at start). */
  readonly warnings?: readonly string[];
}

type Kind = 'string' | 'path' | 'listen' | 'duration' | 'log_level' | 'log_format' | 'networks' | 'boolean' | 'count';

interface KeySpec {
  readonly kind: Kind;
  /** A duration that sets a timer: at most MAX_TIMER_MS. */
  readonly timer?: boolean;
  readonly required?: boolean;
  readonly default?: string;
  readonly doc: string;
}

/**
 * Every key, with its default and its meaning, in one place. Each can be overridden from the
 * environment as WHARF_<KEY> (upper case): WHARF_LISTEN=127.0.0.1:5001.
 */
export const CONFIG_KEYS = {
  listen: { kind: 'listen', default: '0.0.0.0:5000', doc: 'address and port to listen on' },
  registry_storage: { kind: 'path', required: true, doc: 'folder for blobs pushed by users' },
  temporary_registry_storage: { kind: 'path', required: true, doc: 'folder for uploads and cache fills in progress (same filesystem)' },
  proxy_storage: { kind: 'path', required: true, doc: 'folder for blobs cached from upstreams (same filesystem)' },
  database: { kind: 'path', default: 'storage/wharf.db', doc: 'SQLite metadata database' },
  upload_max_age: { kind: 'duration', default: '24h', doc: 'abandoned upload sessions are removed after this long' },
  log_level: { kind: 'log_level', default: 'info', doc: 'fatal, error, warn, info, debug, trace or silent' },
  log_format: { kind: 'log_format', default: 'auto', doc: 'json, pretty, or auto (pretty on a terminal)' },
  shutdown_timeout: { kind: 'duration', timer: true, default: '30s', doc: 'on SIGTERM/SIGINT/SIGHUP, how long requests in flight may take to finish' },
  read_header_timeout: { kind: 'duration', timer: true, default: '20s', doc: 'longest time a client may take to send the request headers' },
  idle_timeout: { kind: 'duration', timer: true, default: '2m', doc: 'idle keep-alive connections and silent sockets are closed after this long' },
  request_timeout: { kind: 'duration', timer: true, default: '2m', doc: 'longest time of a request that does not move a blob (0: none)' },
  max_connections: {
    kind: 'count',
    default: '4096',
    doc: 'client connections open at once, at most (idle keep-alive ones make room first); lowered to fit the open files limit',
  },
  trusted_proxies: { kind: 'networks', doc: 'reverse proxies (addresses or CIDR ranges) whose X-Forwarded-For names the client; comma-separated in the environment' },
  automatic_mount: {
    kind: 'boolean',
    default: 'false',
    doc: 'POST ?mount= without from mounts the blob from a repository the caller may pull (OCI 1.1 automatic content discovery); off: a new upload session, as distribution answers',
  },
} as const satisfies Record<string, KeySpec>;

/** Tables of settings, each validated by its own module. */
const TABLES = { proxy: true, auth: true, tls: true, metrics: true, gc: true, retention: true } as const;

type Key = keyof typeof CONFIG_KEYS;
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const LOG_FORMATS: readonly LogFormat[] = ['auto', 'json', 'pretty'];

export function envName(key: string): string {
  return `WHARF_${key.toUpperCase()}`;
}

export function parseListen(value: string, key = 'listen'): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]*)):(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new ConfigError(`"${key}" must be host:port, such as "0.0.0.0:5000" or "[::]:5000" (got "${value}")`);
  }
  const host = m[1] ?? m[2] ?? '';
  return { host: host === '' ? '0.0.0.0' : host, port };
}

export interface LoadOptions {
  /** Path of the TOML file; undefined → ./configuration.toml if it exists. */
  readonly file?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /**
   * Whether an upstream's `password_env` and the metrics' `token_env` must name a variable that is
   * set, an upstream's `ca_file` be read, and the egress proxy's variables be checked (default true). The server and `config check` need them; commands that work on the database or the files alone
   * (`user`, `token`, `repo`, `gc`, `fsck`, `proxy purge`, `healthcheck`) do not, and an operator
   * should not have to put Docker Hub's token into a shell to add a user.
   */
  readonly secrets?: boolean;
}

/** Reads the file and the environment, validates everything, and resolves relative paths. */
export function loadConfig(options: LoadOptions = {}): WharfConfig {
  const cwd = options.cwd ?? process.cwd();
  const env = options.env ?? process.env;
  const file = resolve(cwd, options.file ?? 'configuration.toml');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read configuration file ${file}: ${(err as Error).message}`);
  }
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`${file} is not valid TOML: ${(err as Error).message}`);
  }
  return buildConfig(doc, { env, fileDir: dirname(file), cwd, source: file, secrets: options.secrets ?? true });
}

type BuildOptions = { env?: NodeJS.ProcessEnv; fileDir?: string; cwd?: string; source?: string; secrets?: boolean };

/** Builds a configuration from a parsed document (tests build theirs in code with this). */
export function buildConfig(doc: Record<string, unknown>, options: BuildOptions = {}): WharfConfig {
  try {
    return assemble(doc, options);
  } catch (err) {
    throw namingTheVariable(err, options.env ?? {});
  }
}

/**
 * A refused value the environment set is named by its variable: the user set WHARF_PROXY_MAX_SIZE,
 * and a message about "proxy.max_size" alone sent them looking in the file. Only a key whose
 * variable's value the message quotes too: a key's value may come from elsewhere (the metrics token
 * from the variable `token_env` names), and a message may quote a key only to say what it depends on.
 */
function namingTheVariable(err: unknown, env: NodeJS.ProcessEnv): unknown {
  if (!(err instanceof ConfigError) || err instanceof UsageError) return err;
  const variables = [
    ...Object.keys(CONFIG_KEYS).map((key) => [key, envName(key)] as const),
    ...Object.entries(TABLE_ENV_KEYS).flatMap(([table, keys]) => Object.keys(keys).map((key) => [`${table}.${key}`, tableEnvName(table, key)] as const)),
  ];
  let message = err.message;
  for (const [key, name] of variables) {
    const quoted = `"${key}"`;
    const value = env[name]?.trim();
    if (value && message.includes(quoted) && message.includes(value)) message = message.replace(quoted, `${name} (for ${quoted})`);
  }
  return message === err.message ? err : new ConfigError(message);
}

function assemble(doc: Record<string, unknown>, options: BuildOptions): WharfConfig {
  const env = options.env ?? {};
  const cwd = options.cwd ?? process.cwd();
  const fileDir = options.fileDir ?? cwd;
  const source = options.source ?? 'configuration';
  for (const key of Object.keys(doc)) {
    if (!(key in CONFIG_KEYS) && !(key in TABLES)) throw new ConfigError(`${source}: unknown key "${key}"`);
  }
  doc = applyTableEnv(doc, env, cwd);
  // After the environment's overrides: WHARF_METRICS_TOKEN_ENV may name the variable that holds the token.
  const unknown = unknownWharfVariables(env, Object.keys(CONFIG_KEYS), namedVariables(doc));
  const warnings = unknown.map((name) => `the environment variable ${name} configures nothing (misspelled?); the variables are WHARF_<KEY> and WHARF_<TABLE>_<KEY>, such as WHARF_LISTEN and WHARF_PROXY_MANIFEST_TTL`);
  const values = {} as Record<Key, unknown>;
  for (const [key, spec] of Object.entries(CONFIG_KEYS) as [Key, KeySpec][]) {
    const fromEnv = env[envName(key)];
    let raw: unknown;
    let base = fileDir;
    let inFile = false;
    if (fromEnv !== undefined && fromEnv !== '') {
      raw = fromEnv;
      base = cwd;
    } else if (doc[key] !== undefined) {
      raw = doc[key];
      inFile = true;
    } else if (spec.required) {
      throw new ConfigError(`${source}: missing required key "${key}" (or set ${envName(key)})`);
    } else {
      // Next to the file, as the paths in it are: the same file names the same storage from any folder.
      raw = spec.default;
      if (spec.kind === 'path') refuseMovedDefault(key, raw as string, fileDir, cwd);
    }
    values[key] = spec.kind === 'boolean' ? flag(key, raw, !inFile) : convert(key, spec.kind, raw, base);
    const tooLong = spec.timer ? timerProblem(values[key] as number) : undefined;
    if (tooLong) throw new ConfigError(`"${key}" ${tooLong} (got "${String(raw)}")`);
  }
  // Sessions are swept every minute: a shorter age ended every upload between two chunks of a client.
  if ((values.upload_max_age as number) < 60_000) throw new ConfigError('"upload_max_age" must be at least "1m" (idle sessions are looked for every minute)');
  const proxy = buildProxyConfig(doc.proxy, env, options.secrets ?? true, fileDir);
  warnings.push(...nsHostWarnings(proxy.upstreams));
  const auth = buildAuthConfig(doc.auth, env);
  checkAuthConfig(auth, values.listen as WharfConfig['listen'], proxy);
  if (values.read_header_timeout === 0) throw new ConfigError('"read_header_timeout" must be more than 0: it is what cuts slow-loris clients');
  const tls = buildTlsConfig(doc.tls, {
    fileDir,
    database: values.database as string,
    registryStorage: values.registry_storage as string,
    parseListen,
  });
  return {
    ...(warnings.length > 0 ? { warnings } : {}),
    listen: values.listen as WharfConfig['listen'],
    registryStorage: values.registry_storage as string,
    temporaryRegistryStorage: values.temporary_registry_storage as string,
    proxyStorage: values.proxy_storage as string,
    database: values.database as string,
    uploadMaxAge: values.upload_max_age as number,
    logLevel: values.log_level as LogLevel,
    logFormat: values.log_format as LogFormat,
    shutdownTimeout: values.shutdown_timeout as number,
    readHeaderTimeout: values.read_header_timeout as number,
    idleTimeout: values.idle_timeout as number,
    requestTimeout: values.request_timeout as number,
    maxConnections: values.max_connections as number,
    trustedProxies: values.trusted_proxies as string[],
    automaticMount: values.automatic_mount as boolean,
    proxy,
    auth,
    tls,
    metrics: buildMetricsConfig(doc.metrics, env, options.secrets ?? true),
    gc: buildGcConfig(doc.gc, doc.retention),
  };
}

/**
 * A default path was relative to the working directory before it was relative to the file: an
 * install that relied on that would start on a new, empty database (with a new signing key and CA)
 * next to its file. It is refused instead, with the line that keeps the old one. So is a start where
 * both exist: one command run from another folder (`wharf user list`) made an empty database next
 * to the file, and the server then started on it with no word, its images gone from the catalog and
 * the next garbage collection deleting their blobs (the upgrade audit).
 */
function refuseMovedDefault(key: string, path: string, fileDir: string, cwd: string): void {
  const before = resolve(cwd, path);
  const now = resolve(fileDir, path);
  if (before === now || !existsSync(before)) return;
  if (existsSync(now)) {
    // The same file by two ways (a folder reached through a link): nothing to choose.
    if (realpathSync(before) === realpathSync(now)) return;
    throw new ConfigError(
      `"${key}" is not set, and its default, ${path}, names two files: ${now} (relative to the configuration file, as the default now is) and ${before} (relative to the folder Wharf runs in, as it was before); set ${key} to the one that holds your registry`,
    );
  }
  throw new ConfigError(
    `"${key}" is not set: its default, ${path}, is relative to the configuration file (${now}, which does not exist), no longer to the folder Wharf runs in (${before}, which does); set ${key} = "${before}" to keep using it`,
  );
}

function convert(key: string, kind: Kind, raw: unknown, base: string): unknown {
  if (kind === 'networks') return networks(key, raw);
  if (kind === 'count') return count(key, raw);
  if (typeof raw !== 'string' && !(kind === 'duration' && typeof raw === 'number')) {
    throw new ConfigError(`"${key}" must be a ${kind === 'duration' ? 'duration such as "24h" or a number of seconds' : 'string'} (got ${describe(raw)})`);
  }
  switch (kind) {
    case 'string':
      return raw;
    case 'path': {
      const text = raw as string;
      if (text.trim() === '') throw new ConfigError(`"${key}" must not be empty`);
      return text === ':memory:' ? text : isAbsolute(text) ? text : resolve(base, text);
    }
    case 'listen':
      return parseListen(raw as string, key);
    case 'duration': {
      const ms = configDuration(raw);
      if (ms === undefined || !Number.isFinite(ms) || ms < 0) {
        throw new ConfigError(`"${key}" must be a duration such as "90d", "24h", "5m" or "30s" (got "${String(raw)}")`);
      }
      return ms;
    }
    case 'log_level':
      if (!(LOG_LEVELS as readonly string[]).includes(raw as string)) {
        throw new ConfigError(`"${key}" must be one of ${LOG_LEVELS.join(', ')} (got "${String(raw)}")`);
      }
      return raw;
    case 'log_format':
      if (!(LOG_FORMATS as readonly string[]).includes(raw as string)) {
        throw new ConfigError(`"${key}" must be one of ${LOG_FORMATS.join(', ')} (got "${String(raw)}")`);
      }
      return raw;
  }
}

/** A whole number of at least 1, in the file or as the environment writes it. */
function count(key: string, raw: unknown): number {
  const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^\s*\d{1,9}\s*$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(`"${key}" must be a whole number of at least 1 (got ${describe(raw)})`);
  return n;
}

/** true or false in the file, as the tables' booleans; from the environment (or the default) also 1/yes/on, 0/no/off. */
function flag(key: string, raw: unknown, words: boolean): boolean {
  const v = typeof raw === 'boolean' ? raw : words && typeof raw === 'string' ? booleanWord(raw) : undefined;
  if (v === undefined) throw new ConfigError(`"${key}" must be true or false (got ${describe(raw)})`);
  return v;
}

/** An array of addresses and CIDR ranges, or the same comma-separated (from the environment); none when unset. */
function networks(key: string, raw: unknown): string[] {
  if (raw === undefined) return [];
  const list = typeof raw === 'string' ? raw.split(',').map((s) => s.trim()).filter((s) => s !== '') : raw;
  if (!Array.isArray(list) || list.some((v) => typeof v !== 'string')) {
    throw new ConfigError(`"${key}" must be an array of IP addresses or CIDR ranges, such as ["127.0.0.1", "10.0.0.0/8"] (got ${describe(raw)})`);
  }
  const wrong = invalidNetwork(list as string[]);
  if (wrong) throw new ConfigError(`"${key}": ${wrong}`);
  return list as string[];
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  return typeof value === 'object' ? 'a table' : `${typeof value} ${JSON.stringify(value)}`;
}
