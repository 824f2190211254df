/** A parsed `WWW-Authenticate` challenge. */
export interface Challenge {
  readonly scheme: 'bearer' | 'basic';
  readonly params: Readonly<Record<string, string>>;
}

/** Parses `Bearer realm="…",service="…",scope="…"` (quoted or bare values; commas inside quotes kept). */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*(\w+)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const scheme = m[1]!.toLowerCase();
  if (scheme !== 'bearer' && scheme !== 'basic') return undefined;
  const params: Record<string, string> = {};
  for (const p of m[2]!.matchAll(/(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g)) {
    params[p[1]!.toLowerCase()] = (p[2] ?? p[3] ?? '').replace(/\\(.)/g, '$1');
  }
  return { scheme, params };
}

interface CachedToken {
  readonly token: string;
  readonly expiresAt: number;
}

/** Bearer tokens by realm, service and scope, kept until shortly before they expire. */
export class TokenCache {
  private readonly tokens = new Map<string, CachedToken>();

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
    this.tokens.set(key, { token, expiresAt: now + lifetime - Math.min(30_000, lifetime / 4) });
  }
}
