import { ConfigError } from '../config-error.js';

export interface MetricsConfig {
  /** Serve /metrics (Prometheus text format). */
  readonly enabled: boolean;
  /**
   * Bearer token for scrapers that are not on this machine. Loopback clients need none; without a
   * token, /metrics answers loopback clients only.
   */
  readonly token?: string;
}

const METRICS_KEYS = new Set(['enabled', 'token', 'token_env']);

function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/** `secrets` false: a `token_env` that is not set is read as no token (see LoadOptions.secrets). */
export function buildMetricsConfig(raw: unknown, env: NodeJS.ProcessEnv, secrets = true): MetricsConfig {
  const table = raw === undefined ? {} : raw;
  if (!isTable(table)) throw new ConfigError('"metrics" must be a table');
  for (const k of Object.keys(table)) if (!METRICS_KEYS.has(k)) throw new ConfigError(`unknown key "metrics.${k}"`);
  const enabled = table.enabled ?? true;
  if (typeof enabled !== 'boolean') throw new ConfigError('"metrics.enabled" must be true or false');
  for (const k of ['token', 'token_env']) {
    if (table[k] !== undefined && (typeof table[k] !== 'string' || table[k] === '')) throw new ConfigError(`"metrics.${k}" must be a non-empty string`);
  }
  let token = table.token as string | undefined;
  if (table.token_env !== undefined) {
    token = env[table.token_env as string];
    if ((token === undefined || token === '') && secrets) throw new ConfigError(`"metrics.token_env" names ${String(table.token_env)}, which is not set`);
    if (token === '') token = undefined;
  }
  if (token !== undefined && token.length < 16) throw new ConfigError('"metrics.token" must be at least 16 characters (openssl rand -hex 32)');
  return { enabled, ...(token !== undefined ? { token } : {}) };
}
