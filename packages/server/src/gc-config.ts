import type { RetentionRule } from '@wharf/registry-core';
import { ConfigError } from './config-error.js';
import { configDuration, timerProblem } from './duration.js';

/** `[gc]` and `[[retention]]`: the scheduled garbage collection and what it removes. */
export interface GcConfig {
  /** How often the server collects garbage (ms); 0: never (run `wharf gc` instead). */
  readonly interval: number;
  /** Links, blobs and (with deleteUntagged) untagged manifests younger than this stay (ms). */
  readonly grace: number;
  /** Untagged manifests that no tag, index or kept subject reaches are deleted. */
  readonly deleteUntagged: boolean;
  /** Tag retention, applied before each collection; the first rule matching a repository applies. */
  readonly retention: readonly RetentionRule[];
}

const GC_KEYS = new Set(['interval', 'grace', 'delete_untagged']);
const RETENTION_KEYS = new Set(['repositories', 'keep_last', 'keep_tags', 'delete_older_than', 'delete_unpulled_for']);

function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/** `ms`, refused when no timer can wait that long (see MAX_TIMER_MS). */
function timer(where: string, ms: number): number {
  const problem = timerProblem(ms);
  if (problem) throw new ConfigError(`"${where}" ${problem}`);
  return ms;
}

function duration(where: string, raw: unknown): number {
  const ms = configDuration(raw);
  if (ms === undefined || !Number.isFinite(ms) || ms < 0) {
    throw new ConfigError(`"${where}" must be a duration such as "90d", "24h" or "30m" (got ${JSON.stringify(raw)})`);
  }
  return ms;
}

function rule(raw: unknown, index: number): RetentionRule {
  const where = `retention[${index}]`;
  if (!isTable(raw)) throw new ConfigError(`"${where}" must be a table ([[retention]])`);
  for (const k of Object.keys(raw)) if (!RETENTION_KEYS.has(k)) throw new ConfigError(`unknown key "${where}.${k}"`);
  const repositories = raw.repositories;
  if (typeof repositories !== 'string' || !/^[a-z0-9._\-/*?]+$/.test(repositories)) {
    throw new ConfigError(`"${where}.repositories" must be a repository name or glob such as "team/*" or "team/**"`);
  }
  let keepLast: number | undefined;
  if (raw.keep_last !== undefined) {
    if (typeof raw.keep_last !== 'number' || !Number.isInteger(raw.keep_last) || raw.keep_last < 0) {
      throw new ConfigError(`"${where}.keep_last" must be a non-negative integer`);
    }
    keepLast = raw.keep_last;
  }
  let keepTags: RegExp | undefined;
  if (raw.keep_tags !== undefined) {
    if (typeof raw.keep_tags !== 'string') throw new ConfigError(`"${where}.keep_tags" must be a regular expression in a string`);
    try {
      keepTags = new RegExp(raw.keep_tags);
    } catch (err) {
      throw new ConfigError(`"${where}.keep_tags" is not a valid regular expression: ${(err as Error).message}`);
    }
  }
  const deleteOlderThan = raw.delete_older_than === undefined ? undefined : duration(`${where}.delete_older_than`, raw.delete_older_than);
  const deleteUnpulledFor = raw.delete_unpulled_for === undefined ? undefined : duration(`${where}.delete_unpulled_for`, raw.delete_unpulled_for);
  if (deleteOlderThan === undefined && deleteUnpulledFor === undefined && (keepLast === undefined || keepLast === 0)) {
    throw new ConfigError(`"${where}" needs keep_last (1 or more), delete_older_than or delete_unpulled_for: as written it would keep or delete everything`);
  }
  return {
    repositories,
    ...(keepLast !== undefined ? { keepLast } : {}),
    ...(keepTags ? { keepTags } : {}),
    ...(deleteOlderThan !== undefined ? { deleteOlderThan } : {}),
    ...(deleteUnpulledFor !== undefined ? { deleteUnpulledFor } : {}),
  };
}

export function buildGcConfig(gcRaw: unknown, retentionRaw: unknown): GcConfig {
  const table = gcRaw === undefined ? {} : gcRaw;
  if (!isTable(table)) throw new ConfigError('"gc" must be a table');
  for (const k of Object.keys(table)) if (!GC_KEYS.has(k)) throw new ConfigError(`unknown key "gc.${k}"`);
  const deleteUntagged = table.delete_untagged ?? false;
  if (typeof deleteUntagged !== 'boolean') throw new ConfigError('"gc.delete_untagged" must be true or false');
  const rules = retentionRaw === undefined ? [] : retentionRaw;
  if (!Array.isArray(rules)) throw new ConfigError('"retention" must be an array of tables: write each rule as [[retention]]');
  return {
    interval: timer('gc.interval', duration('gc.interval', table.interval ?? '24h')),
    grace: duration('gc.grace', table.grace ?? '1h'),
    deleteUntagged,
    retention: rules.map(rule),
  };
}
