export interface LoginLimits {
  /** Failures allowed within the window; the next attempt is refused until the oldest one ages out. */
  readonly maxFailures: number;
  readonly windowMs: number;
}

export const DEFAULT_LOGIN_LIMITS: LoginLimits = { maxFailures: 10, windowMs: 5 * 60_000 };

/** Beyond this many tracked keys the oldest are dropped, so a flood of names cannot grow memory without end. */
const MAX_KEYS = 100_000;

/**
 * Keys of a network (`net:<IPv6 /64>`) allow this many times the failures of one address: a cloud
 * subnet is one /64 for all its machines, and one machine's wrong logins must not lock the others
 * out, while an attacker with the whole /64's addresses is still held to a number.
 */
export const NETWORK_FACTOR = 10;

/**
 * Failed logins per key (`ip:<address>`, `net:<IPv6 /64>`, `user:<name>`), a sliding window in
 * memory. While a key is over the limit every attempt is refused, right password or not: that is
 * what stops guessing.
 */
export class LoginLimiter {
  /**
   * Address keys and user keys apart, each map bounded on its own: addresses are cheap to come by
   * (an IPv6 /48 holds 65,536 /64s), and their keys crowding a user's out would wipe the count of
   * guesses at that user's password.
   */
  private readonly addresses = new Map<string, number[]>();
  private readonly users = new Map<string, number[]>();

  private mapOf(key: string): Map<string, number[]> {
    return key.startsWith('user:') ? this.users : this.addresses;
  }

  constructor(
    private readonly limits: LoginLimits = DEFAULT_LOGIN_LIMITS,
    private readonly now: () => number = Date.now,
  ) {}

  private recent(key: string, now: number): number[] {
    const failures = this.mapOf(key);
    const list = failures.get(key);
    if (!list) return [];
    const kept = list.filter((t) => t > now - this.limits.windowMs);
    if (kept.length === 0) failures.delete(key);
    else failures.set(key, kept);
    return kept;
  }

  /** Seconds until a blocked key may try again (undefined: not blocked). */
  retryAfter(keys: readonly string[]): number | undefined {
    const now = this.now();
    let wait: number | undefined;
    for (const key of keys) {
      const list = this.recent(key, now);
      const max = this.maxFor(key);
      if (list.length >= max) {
        const until = list[list.length - max]! + this.limits.windowMs;
        const seconds = Math.max(1, Math.ceil((until - now) / 1000));
        wait = Math.max(wait ?? 0, seconds);
      }
    }
    return wait;
  }

  /** Counts a failure against each key, at the time it returns. */
  fail(keys: readonly string[]): number {
    const now = this.now();
    for (const key of keys) {
      const list = this.recent(key, now);
      list.push(now);
      const failures = this.mapOf(key);
      failures.delete(key);
      failures.set(key, list.slice(-this.maxFor(key)));
      while (failures.size > MAX_KEYS) failures.delete(failures.keys().next().value!);
    }
    return now;
  }

  /** Takes back the failure counted at `at` (an attempt counted before it was checked, that passed). */
  forgive(keys: readonly string[], at: number): void {
    for (const key of keys) {
      const failures = this.mapOf(key);
      const list = failures.get(key);
      const i = list?.lastIndexOf(at) ?? -1;
      if (i >= 0) list!.splice(i, 1);
      // Nothing left to count: not kept (a check refused at once, busy, left one key per name).
      if (list?.length === 0) failures.delete(key);
    }
  }

  /** Keys with failures counted now (for tests). */
  get tracked(): number {
    return this.addresses.size + this.users.size;
  }

  private maxFor(key: string): number {
    return key.startsWith('net:') ? this.limits.maxFailures * NETWORK_FACTOR : this.limits.maxFailures;
  }

  /** A success clears the key's failures (used for the user, never for the address). */
  clear(key: string): void {
    this.mapOf(key).delete(key);
  }
}
