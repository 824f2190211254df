import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Digest } from '@wharf/registry-core';

/** What the next matching requests get instead of a correct answer. */
/** hold: half a blob's body, then the rest once `holdGate` resolves (400 ms later without one). */
/** portal: 200 with an HTML page, as a captive portal or a misconfigured gateway answers. */
/** mute: a blob's status and headers, then not a byte of its body. */
/** trickle: half a blob's body, then 64 bytes every 20 ms (never silent, never done) until the connection goes. */
export type Fault = 'wrong-bytes' | 'truncate' | 'reset' | '400' | '500' | '503' | '429' | 'stall' | 'hold' | 'deny' | 'portal' | 'mute' | 'trickle';

export interface SeenRequest {
  readonly method: string;
  readonly path: string;
  readonly query: string;
  readonly authorization?: string;
  readonly range?: string;
  readonly at: number;
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}` as Digest;

/**
 * A real, deliberately misbehaving registry: serves /v2/<repo>/blobs/<digest> and
 * /v2/<repo>/manifests/<ref>, counts requests per "METHOD path", and can be told to corrupt,
 * truncate, reset, fail, rate-limit or stall; to require Bearer (with its own /token) or Basic auth;
 * and to redirect blob GETs to another server.
 */
export class FakeUpstream {
  url = '';
  readonly requests: SeenRequest[] = [];
  readonly blobs = new Map<string, Buffer>();
  readonly manifests = new Map<string, { bytes: Buffer; mediaType: string }>();
  fault: Fault | undefined;
  /** How many matching requests get the fault (then it clears). */
  faultTimes = Infinity;
  /** Which request paths the fault applies to. */
  faultOn: RegExp = /\/v2\/.+\/(blobs|manifests)\//;
  auth: 'none' | 'bearer' | 'basic' = 'none';
  credentials = { username: 'alice', password: 's3cret' };
  tokenExpiresIn = 300;
  /** The Bearer challenge names this base URL's `/token` as its realm, instead of its own. */
  realmBase: string | undefined;
  /** The Bearer challenge names its realm as a path (`/token`), relative to the registry. */
  relativeRealm = false;
  /** Base URL blob GETs are redirected to (307), same path. */
  redirectBlobsTo: string | undefined;
  /** Blob HEADs are redirected too (as registries that answer HEAD from their storage do). */
  redirectBlobHeads = false;
  /** Most tags in one tag-list page whatever n asks (Docker Hub caps its pages too); more pages are linked. */
  tagPageSize = Infinity;
  /** Range answers come with their first byte flipped (a mirror or CDN serving bad bytes). */
  corruptRanges = false;
  /** The Retry-After of the '429' and '503' faults. */
  retryAfter = '1';
  /** Registry requests are answered this long after they came (a mirror farther away). */
  delayMs = 0;
  /** Blob GETs are answered 200 with the whole blob whatever their Range (a CDN that drops it). */
  ignoreRange = false;
  /** Blob answers carry no Content-Length: sent chunked (a 206's Content-Range still says the size). */
  chunked = false;
  /** Tag-list pages start from the first tag whatever `last` says (a broken upstream). */
  ignoreLast = false;
  /** The order tags are listed and paged in (`last` included): bytes (distribution's, Docker Hub's) by default. */
  tagOrder: (a: string, b: string) => number = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  /** Sent instead of the tag list, when set. */
  tagListBody: string | undefined;
  /** Referrers index entries by "repo@subject"; repositories without any answer 404 (no referrers API). */
  readonly referrers = new Map<string, unknown[]>();
  /** Sent as `RateLimit-Remaining: <n>;w=21600` on manifest answers, when set (as Docker Hub does). */
  rateLimitRemaining: number | undefined;
  /**
   * Challenges to requests without credentials are held until this many have come, then sent
   * together: first requests that were all in flight at once (a runtime pulling layers in parallel).
   */
  challengeTogether = 0;
  /**
   * Challenges to requests without credentials, but the first, are sent this much later: requests
   * challenged after the token that answers them has come (ms; 0: at once).
   */
  challengeLateMs = 0;
  private challenged = 0;
  /** Token answers are held until `releaseTokens()` while set: a slow token service. */
  holdTokens = false;
  /** With the 'hold' fault: the rest of the body waits for this (a test's own moment, not a delay). */
  private holdGate: Promise<void> | undefined;
  private openHoldGate: (() => void) | undefined;

  /** From now on 'hold' answers send their second half when the returned function is called (or `openHold`, or `close`). */
  holdUntilOpened(): () => void {
    this.openHold();
    let open!: () => void;
    this.holdGate = new Promise<void>((resolve) => (open = resolve));
    this.openHoldGate = open;
    return open;
  }

  /** Sends the second halves held by `holdUntilOpened`'s gate; later 'hold' answers wait 400 ms again. */
  openHold(): void {
    this.openHoldGate?.();
    this.openHoldGate = undefined;
    this.holdGate = undefined;
  }
  private readonly heldTokens: (() => void)[] = [];
  private readonly heldChallenges: (() => void)[] = [];
  /** TCP connections accepted. */
  connections = 0;
  private readonly issued = new Set<string>();
  private server!: Server;

  /** `host`: the loopback address it listens on (another than 127.0.0.1 stands for a host elsewhere). */
  static async start(host = '127.0.0.1'): Promise<FakeUpstream> {
    const up = new FakeUpstream();
    up.server = createServer((req, res) => {
      if (up.delayMs > 0 && !req.url?.startsWith('/token')) setTimeout(() => up.handle(req, res), up.delayMs);
      else up.handle(req, res);
    });
    up.server.on('connection', () => (up.connections += 1));
    await new Promise<void>((resolve) => up.server.listen(0, host, resolve));
    up.url = `http://${host}:${(up.server.address() as AddressInfo).port}`;
    return up;
  }

  addBlob(bytes: Buffer): Digest {
    const digest = sha256(bytes);
    this.blobs.set(digest, bytes);
    return digest;
  }

  addManifest(repo: string, tag: string, doc: unknown, mediaType = 'application/vnd.oci.image.manifest.v1+json'): Digest {
    const bytes = Buffer.from(JSON.stringify(doc));
    const digest = sha256(bytes);
    this.manifests.set(`${repo}@${digest}`, { bytes, mediaType });
    this.manifests.set(`${repo}:${tag}`, { bytes, mediaType });
    return digest;
  }

  /** Requests seen for "METHOD path" (path without the query). */
  count(method: string, path: string): number {
    return this.requests.filter((r) => r.method === method && r.path === path).length;
  }

  async close(): Promise<void> {
    this.openHold();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const [path = '/', query = ''] = (req.url ?? '/').split('?');
    this.requests.push({
      method: req.method!,
      path,
      query,
      ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
      ...(req.headers.range ? { range: req.headers.range } : {}),
      at: Date.now(),
    });
    if (path === '/token') return this.token(req, res);
    if (!this.authorized(req, path, res)) return;
    const fault = this.fault && this.faultTimes > 0 && this.faultOn.test(path) ? this.fault : undefined;
    if (fault && --this.faultTimes <= 0) this.fault = undefined;
    if (fault === 'stall') return; // accepted, never answered
    // Refused even with a fresh token: a repository made private, credentials that lost access.
    if (fault === 'deny') return this.challenge(path, res);
    if (fault === '400') return void res.writeHead(400, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNSUPPORTED","message":"not here"}]}');
    if (fault === '500') return void res.writeHead(500, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNKNOWN"}]}');
    if (fault === 'portal') return void res.writeHead(200, { 'content-type': 'text/html' }).end('<html><body>Sign in to the network</body></html>');
    if (fault === '429') return void res.writeHead(429, { 'retry-after': this.retryAfter, 'content-type': 'application/json' }).end('{"errors":[{"code":"TOOMANYREQUESTS"}]}');
    if (fault === '503') return void res.writeHead(503, { 'retry-after': this.retryAfter, 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAVAILABLE"}]}');
    const list = /^\/v2\/(.+)\/tags\/list$/.exec(path);
    if (list) return this.tagList(list[1]!, new URLSearchParams(query), res);
    const referrers = /^\/v2\/(.+)\/referrers\/([^/]+)$/.exec(path);
    if (referrers) {
      const manifests = this.referrers.get(`${referrers[1]}@${referrers[2]}`);
      if (!manifests) return void res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"NOT_FOUND"}]}');
      return void res
        .writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json' })
        .end(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }));
    }
    const m = /^\/v2\/(.+)\/(blobs|manifests)\/([^/]+)$/.exec(path);
    if (!m) return void res.writeHead(path === '/v2/' ? 200 : 404, { 'content-type': 'application/json' }).end('{}');
    const [, repo, kind, ref] = m as unknown as [string, string, string, string];
    if (kind === 'manifests') {
      const manifest = this.manifests.get(ref.includes(':') ? `${repo}@${ref}` : `${repo}:${ref}`);
      if (!manifest) return void res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"MANIFEST_UNKNOWN"}]}');
      const limit = this.rateLimitRemaining === undefined ? {} : { 'ratelimit-remaining': `${this.rateLimitRemaining};w=21600` };
      res.writeHead(200, { 'content-type': manifest.mediaType, 'content-length': manifest.bytes.length, 'docker-content-digest': sha256(manifest.bytes), ...limit });
      return void res.end(req.method === 'HEAD' ? undefined : manifest.bytes);
    }
    const bytes = this.blobs.get(ref);
    if (!bytes) return void res.writeHead(404).end();
    if (this.redirectBlobsTo && (req.method === 'GET' || this.redirectBlobHeads)) return void res.writeHead(307, { location: `${this.redirectBlobsTo}${req.url}` }).end();
    const range = this.ignoreRange ? null : /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    // An open-ended range (`bytes=<start>-`) goes to the blob's end.
    const rangeEnd = range ? Math.min(range[2] === '' ? Infinity : Number(range[2]), bytes.length - 1) : 0;
    let body = fault === 'wrong-bytes' ? randomBytes(bytes.length) : range ? bytes.subarray(Number(range[1]), rangeEnd + 1) : bytes;
    if (range && this.corruptRanges) {
      body = Buffer.from(body);
      body[0] = body[0]! ^ 0xff;
    }
    res.writeHead(range ? 206 : 200, {
      'content-type': 'application/octet-stream',
      ...(this.chunked ? {} : { 'content-length': body.length }),
      'docker-content-digest': ref,
      ...(range ? { 'content-range': `bytes ${range[1]}-${rangeEnd}/${bytes.length}` } : {}),
    });
    if (req.method === 'HEAD') return void res.end();
    if (fault === 'mute') return void res.flushHeaders();
    if (fault === 'hold') {
      const half = Math.floor(body.length / 2);
      const gate = this.holdGate;
      res.write(body.subarray(0, half), () => {
        if (gate) void gate.then(() => res.end(body.subarray(half)));
        else setTimeout(() => res.end(body.subarray(half)), 400);
      });
      return;
    }
    if (fault === 'trickle') {
      let at = Math.floor(body.length / 2);
      res.write(body.subarray(0, at));
      const timer = setInterval(() => {
        if (res.destroyed || at >= body.length - 64) return void clearInterval(timer);
        res.write(body.subarray(at, at + 64));
        at += 64;
      }, 20);
      res.on('close', () => clearInterval(timer));
      return;
    }
    if (fault === 'truncate' || fault === 'reset') {
      // Half the announced bytes, then a clean FIN (truncate) or an RST (reset).
      res.write(body.subarray(0, Math.floor(body.length / 2)), () => {
        setTimeout(() => (fault === 'reset' ? res.socket?.resetAndDestroy() : res.socket?.end()), 20);
      });
      return;
    }
    res.end(body);
  }

  /** The repository's tags, lexically, from `last`, at most min(n, tagPageSize), with a Link to the rest. */
  private tagList(repo: string, params: URLSearchParams, res: ServerResponse): void {
    if (this.tagListBody !== undefined) return void res.writeHead(200, { 'content-type': 'application/json' }).end(this.tagListBody);
    const all = [...this.manifests.keys()].filter((k) => k.startsWith(`${repo}:`)).map((k) => k.slice(repo.length + 1)).sort(this.tagOrder);
    if (all.length === 0) return void res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"NAME_UNKNOWN"}]}');
    const last = this.ignoreLast ? null : params.get('last');
    const n = Math.min(params.has('n') ? Number(params.get('n')) : Infinity, this.tagPageSize);
    const after = last === null ? all : all.filter((t) => this.tagOrder(t, last) > 0);
    const tags = after.slice(0, n);
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (tags.length < after.length) headers.link = `</v2/${repo}/tags/list?n=${n}&last=${encodeURIComponent(tags.at(-1)!)}>; rel="next"`;
    res.writeHead(200, headers).end(JSON.stringify({ name: repo, tags }));
  }

  private basicOk(header: string | undefined): boolean {
    const { username, password } = this.credentials;
    return header === `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
  }

  private authorized(req: IncomingMessage, path: string, res: ServerResponse): boolean {
    const header = req.headers.authorization;
    if (this.auth === 'none') return true;
    if (this.auth === 'basic' && this.basicOk(header)) return true;
    if (this.auth === 'bearer' && header?.startsWith('Bearer ') && this.issued.has(header.slice(7))) return true;
    if (header === undefined && this.heldChallenges.length + 1 < this.challengeTogether) {
      this.heldChallenges.push(() => this.challenge(path, res));
      return false;
    }
    for (const send of this.heldChallenges.splice(0)) send();
    if (header === undefined && this.challengeLateMs > 0 && this.challenged++ > 0) setTimeout(() => this.challenge(path, res), this.challengeLateMs);
    else this.challenge(path, res);
    return false;
  }

  private challenge(path: string, res: ServerResponse): void {
    const repo = /^\/v2\/(.+)\/(?:blobs|manifests|tags|referrers)\//.exec(path)?.[1];
    res.writeHead(401, {
      'content-type': 'application/json',
      'www-authenticate':
        this.auth === 'basic' ? 'Basic realm="fake"' : `Bearer realm="${this.relativeRealm ? '' : (this.realmBase ?? this.url)}/token",service="fake-registry"${repo ? `,scope="repository:${repo}:pull"` : ''}`,
    });
    res.end('{"errors":[{"code":"UNAUTHORIZED"}]}');
  }

  /** Sends the token answers held (see `holdTokens`), and holds no more. */
  releaseTokens(): void {
    this.holdTokens = false;
    for (const send of this.heldTokens.splice(0)) send();
  }

  private token(req: IncomingMessage, res: ServerResponse): void {
    if (this.holdTokens) return void this.heldTokens.push(() => this.token(req, res));
    if (!this.basicOk(req.headers.authorization)) return void res.writeHead(401).end();
    const token = randomBytes(12).toString('hex');
    this.issued.add(token);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, expires_in: this.tokenExpiresIn }));
  }
}
