import { isAbsolute, resolve } from 'node:path';
import { ConfigError } from './config-error.js';

/**
 * Environment overrides of the scalar keys inside tables: `[tls] cert` is WHARF_TLS_CERT,
 * `[proxy] manifest_ttl` is WHARF_PROXY_MANIFEST_TTL (WHARF_<TABLE>_<KEY>, upper case). A value from
 * the environment replaces the file's before the table is validated, so the table's own checks and
 * error messages apply to it. Nested tables and arrays of tables (`[proxy.upstreams.*]`,
 * `[[auth.users]]`) have no environment form.
 */
export type EnvKind = 'boolean' | 'integer' | 'string' | 'path' | 'list' | 'duration' | 'size';

export const TABLE_ENV_KEYS: Readonly<Record<string, Readonly<Record<string, EnvKind>>>> = {
  tls: { cert: 'path', key: 'path', self_signed: 'boolean', hosts: 'list', redirect_http: 'string' },
  metrics: { enabled: 'boolean', token: 'string', token_env: 'string' },
  proxy: {
    enabled: 'boolean',
    anonymous: 'boolean',
    default_upstream: 'string',
    manifest_ttl: 'duration',
    absent_ttl: 'duration',
    rate_limit_floor: 'integer',
    outage_backoff: 'duration',
    connect_timeout: 'duration',
    first_byte_timeout: 'duration',
    idle_timeout: 'duration',
    min_speed: 'string',
    retries: 'integer',
    cache_ttl: 'duration',
    max_size: 'size',
    eviction_interval: 'duration',
    direct_io: 'boolean',
  },
  auth: { enabled: 'boolean', service: 'string', realm: 'string', token_ttl: 'duration', allow_anonymous_push: 'boolean' },
  gc: { interval: 'duration', grace: 'duration', delete_untagged: 'boolean' },
};

/** A boolean as the environment writes it: true/1/yes/on or false/0/no/off (any case); undefined for anything else. */
export function booleanWord(text: string): boolean | undefined {
  const v = text.trim().toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(v)) return true;
  if (['false', '0', 'no', 'off'].includes(v)) return false;
  return undefined;
}

export function tableEnvName(table: string, key: string): string {
  return `WHARF_${table}_${key}`.toUpperCase();
}

function convert(name: string, kind: EnvKind, text: string, cwd: string): unknown {
  switch (kind) {
    case 'boolean': {
      const v = booleanWord(text);
      if (v === undefined) throw new ConfigError(`${name} must be true or false (got "${text}")`);
      return v;
    }
    case 'integer':
      if (!/^\d+$/.test(text.trim())) throw new ConfigError(`${name} must be a non-negative integer (got "${text}")`);
      return Number(text.trim());
    case 'path':
      // Relative paths from the environment are relative to the working directory, as for top-level keys.
      return isAbsolute(text) ? text : resolve(cwd, text);
    case 'list':
      return text.split(',').map((s) => s.trim()).filter((s) => s !== '');
    case 'string':
    case 'duration':
    case 'size':
      return text;
  }
}

/** The document with every WHARF_<TABLE>_<KEY> that is set (and not empty) applied to it. */
export function applyTableEnv(doc: Record<string, unknown>, env: NodeJS.ProcessEnv, cwd: string): Record<string, unknown> {
  let out = doc;
  for (const [table, keys] of Object.entries(TABLE_ENV_KEYS)) {
    for (const [key, kind] of Object.entries(keys)) {
      const name = tableEnvName(table, key);
      const text = env[name];
      if (text === undefined || text === '') continue;
      const current = out[table];
      const base = typeof current === 'object' && current !== null && !Array.isArray(current) ? (current as Record<string, unknown>) : {};
      if (out === doc) out = { ...doc };
      out[table] = { ...base, [key]: convert(name, kind, text, cwd) };
    }
  }
  return out;
}
