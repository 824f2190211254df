import { UpstreamError } from './upstream.js';
import { discard, isRegistryError, readRefusal, readUpTo, type Answer, type Headers } from './upstream-answer.js';
import { TokenCache, parseChallenge, tokenOf } from './token-auth.js';

/** Token service answers are small JSON documents. */
const MAX_TOKEN_BYTES = 1024 * 1024;

/** How the credentials reach a token service: the upstream client's own requests. */
export interface TokenTransport {
  /** A GET of `url` with `headers` (and no others of ours), redirects followed, whatever its status. */
  get(url: string, headers: Record<string, string>): Promise<Answer>;
  /** The failure a 429 or 5xx answer of `who` is: retried as the registry's own would be. */
  retryable(res: Answer, who: string): Promise<never>;
}

/** Who an upstream is and what Wharf's configuration gives it. */
export interface UpstreamIdentity {
  /** The upstream's key, for messages. */
  readonly name: string;
  /** Its base URL (with any path prefix). */
  readonly base: string;
  /** Its origin: the only one our credentials go to. */
  readonly origin: string;
  readonly username?: string | undefined;
  readonly password?: string | undefined;
}

/**
 * `promise`, or the abort reason of `signal` if it aborts first: for waiting on work shared with other
 * requests, which one request's cancellation must not cancel.
 */
function untilAborted<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}

/**
 * What requests to an upstream carry, and how its 401 challenges are answered: Basic credentials
 * once it asked for them, or Bearer tokens fetched from the realm of its challenge for exactly the
 * pull scope needed, cached until they expire and fetched once for every request that needs them.
 * A redirect target (a CDN, the registry registry.k8s.io sends its pulls to) may challenge too: its
 * token is fetched without our credentials and goes to it alone.
 */
export class UpstreamCredentials {
  private readonly name: string;
  private readonly base: string;
  private readonly origin: string;
  private readonly username: string | undefined;
  private readonly password: string | undefined;
  private readonly tokens = new TokenCache();
  /**
   * Token fetches in flight, by token key, with the URL asked: requests that need the same token
   * (sixteen pipelines pulling one image at once, a runtime's parallel layers) wait for one fetch.
   */
  private readonly fetching = new Map<string, { readonly url: string; readonly done: Promise<true> }>();
  /** Set once the upstream challenged with Basic: from then on credentials go with every request. */
  private basicOnly = false;

  constructor(
    identity: UpstreamIdentity,
    private readonly transport: TokenTransport,
  ) {
    ({ name: this.name, base: this.base, origin: this.origin, username: this.username, password: this.password } = identity);
  }

  /**
   * Waits for a token for `repo` from the upstream that is on its way, if one is: that spares a 401
   * and a second fetch. Its failure is the caller's too, as if it had been challenged and joined it.
   */
  async tokenUnderway(repo: string, signal?: AbortSignal): Promise<void> {
    const coming = this.fetching.get(tokenKey(this.origin, repo));
    if (coming) await untilAborted(coming.done, signal);
  }

  /** What a request to `origin` for `repo` carries: its token, or (the upstream's origin only) our Basic credentials. */
  header(origin: string, repo: string): Record<string, string> {
    const token = this.tokens.get(tokenKey(origin, repo));
    if (token) return { authorization: `Bearer ${token}` };
    if (origin === this.origin && this.basicOnly && this.username !== undefined) return { authorization: this.basic() };
    return {};
  }

  private basic(): string {
    return `Basic ${Buffer.from(`${this.username ?? ''}:${this.password ?? ''}`).toString('base64')}`;
  }

  /**
   * Answers the 401 challenge `origin` sent. From the upstream: Basic → our credentials; Bearer → a
   * token for the repository's pull scope, with our credentials. From another origin (a redirect
   * target): an anonymous token for the scope its challenge names; our credentials never go there,
   * nor to a realm it names. `sent` is the Authorization the challenged request carried. Resolves
   * true when the request has new credentials to be sent again with, false when the 401 stands.
   */
  async answer(repo: string, headers: Headers, origin: string, sent: string | undefined, signal?: AbortSignal): Promise<boolean> {
    const ours = origin === this.origin;
    const challenge = parseChallenge(String(headers['www-authenticate'] ?? ''));
    if (!challenge) return false;
    if (challenge.scheme === 'basic') {
      // Only a 401 to our credentials refuses them. `basicOnly` says nothing about this request: one
      // sent without them before another's challenge set it (parallel layer pulls, the first after a
      // start) is answered with them, not taken for a refusal.
      if (!ours || this.username === undefined || sent === this.basic()) return false;
      this.basicOnly = true;
      return true;
    }
    const realm = challenge.params.realm;
    if (!realm) return false;
    const url = tokenUrl(realm, origin);
    if (!url) throw new UpstreamError('unauthorized', `upstream ${this.name} named a token realm that is no HTTP URL`);
    const challenger = new URL(origin);
    if (!ours && (url.hostname !== challenger.hostname || (challenger.protocol === 'https:' && url.protocol !== 'https:'))) {
      // A redirect target names a realm elsewhere: Wharf is not sent to fetch from any URL a third
      // party chooses (an internal service, say) and hand back what it got.
      return false;
    }
    const credentials = ours && this.username !== undefined;
    if (credentials && url.protocol === 'http:' && this.base.startsWith('https:')) {
      // Our credentials would cross the network in clear, though the upstream itself is reached over TLS.
      throw new UpstreamError('unauthorized', `upstream ${this.name} named a plain-HTTP token realm; its credentials are not sent there`);
    }
    if (challenge.params.service) url.searchParams.set('service', challenge.params.service);
    url.searchParams.set('scope', ours || !challenge.params.scope ? `repository:${repo}:pull` : challenge.params.scope);
    const key = tokenKey(origin, repo);
    // A token came since this request was sent (another request's challenge fetched it): it is the
    // answer. Only the token the request carried is refused by this 401.
    const cached = this.tokens.get(key);
    if (cached !== undefined && sent !== `Bearer ${cached}`) return true;
    const pending = this.fetching.get(key);
    if (pending?.url === url.href) return untilAborted(pending.done, signal);
    // One fetch for every request that needs this token. It is no one request's: a client that goes
    // away does not cancel it for the others (the timeouts bound it).
    const done = this.fetchToken(url, ours, credentials, key);
    const entry = { url: url.href, done };
    this.fetching.set(key, entry);
    const settled = (): void => {
      if (this.fetching.get(key) === entry) this.fetching.delete(key);
    };
    done.then(settled, settled);
    return untilAborted(done, signal);
  }

  /** Fetches a token from the realm's `url` (for the upstream itself when `ours`) and caches it under `key`; fails as `authenticate` says. */
  private async fetchToken(url: URL, ours: boolean, credentials: boolean, key: string): Promise<true> {
    const res = await this.transport.get(url.href, credentials ? { authorization: this.basic() } : {});
    if (res.statusCode !== 200) {
      // A token service that is down or busy is retried as the registry would be.
      if (res.statusCode === 429 || res.statusCode >= 500) return this.transport.retryable(res, `token service of upstream ${this.name}`);
      // Asked for no one's token, a token service that refuses with an error document says the
      // repository is not to be pulled anonymously (ghcr.io's answer for a package that does not
      // exist, or is private); a firewall's page in front of it says nothing of the repository.
      if (ours && !credentials && (res.statusCode === 401 || res.statusCode === 403)) {
        if (isRegistryError(await readRefusal(res))) throw anonymousRefusal(this.name, res.statusCode, `token service of upstream ${this.name}`);
      } else {
        await discard(res);
      }
      throw new UpstreamError('unauthorized', `token service of upstream ${this.name} answered ${res.statusCode}`, res.statusCode);
    }
    const raw = await readUpTo(res, MAX_TOKEN_BYTES, () => new UpstreamError('unauthorized', `token service of upstream ${this.name} sent more than ${MAX_TOKEN_BYTES} bytes`));
    let doc: unknown;
    try {
      doc = JSON.parse(raw.toString('utf8'));
    } catch {
      throw new UpstreamError('unauthorized', `token service of upstream ${this.name} sent no JSON`);
    }
    const answer = tokenOf(doc);
    if (!answer) throw new UpstreamError('unauthorized', `token service of upstream ${this.name} sent no token`);
    this.tokens.set(key, answer.token, answer.expiresIn);
    return true;
  }
}

/**
 * An upstream's refusal of an anonymous pull (the registry's 401 or 403, or its token service's):
 * the repository does not exist there, or needs credentials Wharf was not given.
 */
export function anonymousRefusal(upstream: string, status: number, by = `upstream ${upstream}`): UpstreamError {
  return new UpstreamError(
    'denied',
    `${by} refuses an anonymous pull of this repository (${status}): it does not exist there, or is private (then give the upstream a username and password in Wharf's configuration)`,
    status,
  );
}

/** Tokens are kept per origin (the upstream's, or a redirect target's that challenged) and repository. */
function tokenKey(origin: string, repo: string): string {
  return `${origin} repository:${repo}:pull`;
}

/** The token service's URL: a realm given as a path (`/token`) is the registry's own; only HTTP(S). */
function tokenUrl(realm: string, base: string): URL | undefined {
  try {
    const url = new URL(realm, base);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url : undefined;
  } catch {
    return undefined;
  }
}
