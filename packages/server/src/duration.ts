const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** "90d", "24h", "5m", "30s", "1h30m", "250ms" → milliseconds; undefined when it is not a duration. */
export function parseDuration(value: string): number | undefined {
  const text = value.trim();
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d|w))+$/.test(text)) return undefined;
  let total = 0;
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/g)) total += Number(m[1]) * UNITS[m[2]!]!;
  return total;
}

/**
 * A duration as configuration gives it: a string such as "24h" (parseDuration), or a number of seconds
 * (a TOML number, or a string of digits from the environment); undefined for anything else.
 */
export function configDuration(raw: unknown): number | undefined {
  if (typeof raw === 'number') return raw * 1000;
  if (typeof raw !== 'string') return undefined;
  return /^\d+$/.test(raw) ? Number(raw) * 1000 : parseDuration(raw);
}

/**
 * The longest delay Node.js's timers keep (2^31 - 1 ms, 24.8 days): a longer one fires after 1 ms, so a
 * `gc.interval` of "30d" ran about 660 collections a second and a `request_timeout` of "30d" cut every
 * request. Durations that set a timer are refused above it.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** `ms` when a timer can keep it; otherwise a message for the key's ConfigError. */
export function timerProblem(ms: number): string | undefined {
  return ms > MAX_TIMER_MS ? 'must be at most "24d" (the longest timer Node.js keeps)' : undefined;
}
