/** A parsed `WWW-Authenticate` challenge. */
export interface Challenge {
  readonly scheme: 'bearer' | 'basic';
  readonly params: Readonly<Record<string, string>>;
}

const TOKEN = /[!#$%&'*+.^_`|~0-9A-Za-z-]+/y;
const QUOTED = /"((?:[^"\\]|\\.)*)"/y;
const BARE = /[^,\s]*/y;

/** Every challenge of a `WWW-Authenticate` value: `Scheme param=value, param="value", Other …`. */
function challengesOf(header: string): { scheme: string; params: Record<string, string> }[] {
  const found: { scheme: string; params: Record<string, string> }[] = [];
  const at = (re: RegExp, i: number): RegExpExecArray | null => {
    re.lastIndex = i;
    return re.exec(header);
  };
  let i = 0;
  while (i < header.length) {
    while (i < header.length && /[\s,]/.test(header[i]!)) i++;
    const name = at(TOKEN, i);
    if (!name) {
      i++; // not a token: skip a character
      continue;
    }
    i += name[0].length;
    let j = i;
    while (j < header.length && /[ \t]/.test(header[j]!)) j++;
    if (header[j] === '=' && header[j + 1] !== '=') {
      // a parameter of the challenge before it
      j++;
      while (j < header.length && /[ \t]/.test(header[j]!)) j++;
      const quoted = at(QUOTED, j);
      const value = quoted ? quoted[1]!.replace(/\\(.)/g, '$1') : at(BARE, j)![0];
      i = j + (quoted ? quoted[0].length : value.length);
      const challenge = found.at(-1);
      if (challenge) challenge.params[name[0].toLowerCase()] = value;
    } else {
      found.push({ scheme: name[0].toLowerCase(), params: {} });
    }
  }
  return found;
}

/**
 * The challenge to answer in a `WWW-Authenticate` value (several may come in one value, or in two
 * header lines joined with a comma): Bearer if offered, else Basic, else none.
 * Parameters are quoted or bare; commas inside quotes are kept.
 */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const all = challengesOf(header);
  const pick = all.find((c) => c.scheme === 'bearer') ?? all.find((c) => c.scheme === 'basic');
  return pick ? { scheme: pick.scheme as Challenge['scheme'], params: pick.params } : undefined;
}

/** What a token service's answer gives: the token, and its lifetime in seconds (60 unless it says). */
export interface TokenAnswer {
  readonly token: string;
  readonly expiresIn: number;
}

/**
 * The token in a token service's parsed JSON answer (`token`, or OAuth's `access_token`), or undefined
 * when there is none. The answer is a third party's: anything JSON can hold may come (`null`, a number,
 * an array), and none of it may throw here, which would pass for a network failure.
 */
export function tokenOf(doc: unknown): TokenAnswer | undefined {
  if (typeof doc !== 'object' || doc === null) return undefined;
  const { token, access_token: accessToken, expires_in: expiresIn } = doc as Record<string, unknown>;
  const found = usable(token) ? token : usable(accessToken) ? accessToken : undefined;
  return found ? { token: found, expiresIn: typeof expiresIn === 'number' ? expiresIn : 60 } : undefined;
}

/**
 * A token that can go in an Authorization header: visible ASCII only (a bearer token has no space
 * either). One with a line break or a NUL could not be sent, and node's refusal to send the header
 * read as the upstream unreachable.
 */
function usable(token: unknown): token is string {
  return typeof token === 'string' && /^[\x21-\x7e]+$/.test(token);
}

interface CachedToken {
  readonly token: string;
  readonly expiresAt: number;
}

/**
 * Tokens kept at most: one per upstream repository pulled through, so a scan of many names would
 * otherwise grow the cache for ever (an expired token went only when its repository was asked again).
 */
const MAX_TOKENS = 1024;

/** Bearer tokens by realm, service and scope, kept until shortly before they expire. */
export class TokenCache {
  private readonly tokens = new Map<string, CachedToken>();

  /** How many are held (for tests and metrics). */
  get size(): number {
    return this.tokens.size;
  }

  get(key: string, now = Date.now()): string | undefined {
    const hit = this.tokens.get(key);
    if (!hit) return undefined;
    if (hit.expiresAt <= now) {
      this.tokens.delete(key);
      return undefined;
    }
    return hit.token;
  }

  set(key: string, token: string, expiresInSeconds: number, now = Date.now()): void {
    // The spec's floor is 60 s; keep a margin so a token never expires in flight.
    const lifetime = Math.max(expiresInSeconds, 60) * 1000;
    // Re-inserted, so that the map's order is the order tokens were last fetched in.
    this.tokens.delete(key);
    this.tokens.set(key, { token, expiresAt: now + lifetime - Math.min(30_000, lifetime / 4) });
    if (this.tokens.size <= MAX_TOKENS) return;
    for (const [k, cached] of this.tokens) if (cached.expiresAt <= now) this.tokens.delete(k);
    // Still too many live ones: the oldest fetched go first.
    for (const k of this.tokens.keys()) {
      if (this.tokens.size <= MAX_TOKENS) break;
      this.tokens.delete(k);
    }
  }
}
