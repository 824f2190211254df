/** How long an address a user signed in from stays known. */
const KNOWN_FOR_MS = 30 * 86_400_000;
/** Addresses kept per user (the least recently used go first). */
const PER_USER = 32;
/** Users kept in all (the least recently signed in go first), so a flood of names cannot grow memory without end. */
const MAX_USERS = 100_000;
/** A known address's time is written again at most this often (docker signs in for every pull). */
const SAVE_EVERY_MS = 3_600_000;

/** Where known addresses outlive the process: the server restarting must not open a lockout window. */
export interface KnownAddressStore {
  /** The addresses remembered at or after `since` (ms), oldest first; older ones may be dropped. */
  load(since: number): readonly { readonly user: string; readonly address: string; readonly at: number }[];
  /** `user` signed in from `address` at `at`; at most `keep` addresses per user need be kept. */
  save(user: string, address: string, at: number, keep: number): void;
}

interface Seen {
  at: number;
  /** When `at` was last written to the store (0: never). */
  savedAt: number;
}

/**
 * The addresses each user has signed in from lately. A login from one of them is not held back by
 * the failed logins counted against the user's password from elsewhere: someone guessing at a
 * password from many addresses, with no account of their own, must not lock its owner out (the
 * administrator included, whose password alone opens /admin). Guesses from a known address still
 * count against that address. Kept in memory, and in `store` when given, so that a restart forgets
 * none of them.
 */
export class KnownAddresses {
  private readonly users = new Map<string, Map<string, Seen>>();
  /** Whether the last write to the store failed: a failure is told once, not at every sign-in after it. */
  private saveFailing = false;

  /** `warn` is told when the store cannot be read, and when writes to it start failing. */
  constructor(
    private readonly store?: KnownAddressStore,
    private readonly now: () => number = Date.now,
    private readonly warn: (message: string, err: unknown) => void = () => undefined,
  ) {
    if (!store) return;
    try {
      for (const r of store.load(this.now() - KNOWN_FOR_MS)) this.put(r.user, r.address, { at: r.at, savedAt: r.at });
    } catch (err) {
      // An unreadable table costs the memory of earlier sign-ins, not the start.
      this.warn('could not read the addresses users signed in from: failed logins from elsewhere may hold users back where they signed in before', err);
    }
  }

  /**
   * `user` just proved who they are from `address`. `since`: when the account of that name was added
   * (what was remembered of an earlier account of the name is not this one's, nor is its write).
   */
  remember(user: string, address: string | undefined, since = 0): void {
    if (address === undefined) return;
    const at = this.now();
    const prior = this.users.get(user)?.get(address);
    const seen = { at, savedAt: prior !== undefined && prior.at >= since ? prior.savedAt : 0 };
    this.put(user, address, seen);
    if (!this.store || at - seen.savedAt < SAVE_EVERY_MS) return;
    try {
      this.store.save(user, address, at, PER_USER);
      seen.savedAt = at;
      this.saveFailing = false;
    } catch (err) {
      // A database that cannot be written (a full disk) costs the restart's memory, not the login.
      if (!this.saveFailing) this.warn('could not save the address a user signed in from: a restart will forget it', err);
      this.saveFailing = true;
    }
  }

  /**
   * Whether `user` signed in from `address` within the last 30 days, and not before `since` (when
   * the account of that name was added: a user removed and added again is a new person, who must
   * not inherit the addresses the server remembers for the old one).
   */
  knows(user: string, address: string | undefined, since = 0): boolean {
    if (address === undefined) return false;
    const seen = this.users.get(user)?.get(address);
    return seen !== undefined && seen.at >= since && this.now() - seen.at < KNOWN_FOR_MS;
  }

  private put(user: string, address: string, seen: Seen): void {
    const addresses = this.users.get(user) ?? new Map<string, Seen>();
    this.users.delete(user);
    this.users.set(user, addresses);
    addresses.delete(address);
    addresses.set(address, seen);
    if (addresses.size > PER_USER) addresses.delete(addresses.keys().next().value!);
    if (this.users.size > MAX_USERS) this.users.delete(this.users.keys().next().value!);
  }
}
