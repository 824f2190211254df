/** How long an address a user signed in from stays known. */
const KNOWN_FOR_MS = 30 * 86_400_000;
/** Addresses kept per user (the least recently used go first). */
const PER_USER = 32;
/** Users kept in all (the least recently signed in go first), so a flood of names cannot grow memory without end. */
const MAX_USERS = 100_000;

/**
 * The addresses each user has signed in from lately, in memory. A login from one of them is not held
 * back by the failed logins counted against the user's password from elsewhere: someone guessing at
 * a password from many addresses, with no account of their own, must not lock its owner out (the
 * administrator included, whose password alone opens /admin). Guesses from a known address still
 * count against that address.
 */
export class KnownAddresses {
  private readonly users = new Map<string, Map<string, number>>();

  constructor(private readonly now: () => number = Date.now) {}

  /** `user` just proved who they are from `address`. */
  remember(user: string, address: string | undefined): void {
    if (address === undefined) return;
    const addresses = this.users.get(user) ?? new Map<string, number>();
    this.users.delete(user);
    this.users.set(user, addresses);
    addresses.delete(address);
    addresses.set(address, this.now());
    if (addresses.size > PER_USER) addresses.delete(addresses.keys().next().value!);
    if (this.users.size > MAX_USERS) this.users.delete(this.users.keys().next().value!);
  }

  /** Whether `user` signed in from `address` within the last 30 days. */
  knows(user: string, address: string | undefined): boolean {
    if (address === undefined) return false;
    const at = this.users.get(user)?.get(address);
    return at !== undefined && this.now() - at < KNOWN_FOR_MS;
  }
}
