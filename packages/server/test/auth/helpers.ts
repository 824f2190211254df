import { expect } from '@jest/globals';
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { Writable } from 'node:stream';
import bcrypt from 'bcryptjs';
import { pino, type Logger } from 'pino';
import type { LoginLimits } from '../../src/auth/login-limiter.js';
import { startRegistry, type StartRegistryOptions, type TestRegistry } from '../helpers/start-registry.js';

/** A pino logger at trace level writing into memory, to scan for secrets after a suite. */
export interface LogCapture {
  readonly logger: Logger;
  text(): string;
}

export function captureLog(): LogCapture {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString('utf8'));
      done();
    },
  });
  return { logger: pino({ level: 'trace' }, stream), text: () => chunks.join('') };
}

/**
 * Every secret a suite used: passwords, tokens, JWTs, Basic header values. `assertNotIn` fails
 * naming the kind of secret (never printing it) when one shows up in the text.
 */
export class Secrets {
  private readonly items = new Map<string, string>();

  add(kind: string, ...values: (string | undefined)[]): void {
    for (const v of values) if (v && v.length >= 6) this.items.set(v, kind);
  }

  /** A Basic credential: the password and the header value both count. */
  addBasic(user: string, password: string): void {
    this.add('password', password);
    this.add('basic header', Buffer.from(`${user}:${password}`).toString('base64'));
  }

  get size(): number {
    return this.items.size;
  }

  assertNotIn(text: string): void {
    const found = [...this.items].filter(([secret]) => text.includes(secret)).map(([, kind]) => kind);
    expect(found).toEqual([]);
  }
}

/** bcrypt hashes for [[auth.users]] (cost 10, the lowest configuration accepts), cached per password. */
const hashes = new Map<string, string>();
export function bcryptHash(password: string): string {
  let h = hashes.get(password);
  if (!h) {
    h = bcrypt.hashSync(password, 10);
    hashes.set(password, h);
  }
  return h;
}

export interface AuthRegistryOptions extends Omit<StartRegistryOptions, 'auth'> {
  /** Keys of the [auth] table; `enabled = true` is implied. */
  readonly authSettings?: Record<string, unknown>;
  readonly loginLimits?: LoginLimits;
  readonly announce?: (text: string) => void;
}

/** A registry with auth on, a cheap bcrypt for what it hashes itself, and (unless given) no login limits. */
export function startAuthRegistry(options: AuthRegistryOptions = {}): Promise<TestRegistry> {
  const { authSettings, loginLimits, announce, settings, ...rest } = options;
  return startRegistry({
    ...rest,
    settings: { ...settings, auth: { enabled: true, ...authSettings } },
    auth: {
      bcryptCost: 4,
      loginLimits: loginLimits ?? { maxFailures: 1_000_000, windowMs: 1000 },
      announce: announce ?? (() => undefined),
    },
  });
}

export function basic(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

/** The parameters of a `WWW-Authenticate: Bearer k="v",...` challenge. */
export function parseChallenge(header: string | null): Record<string, string> | undefined {
  if (!header || !/^Bearer\s/i.test(header)) return undefined;
  const out: Record<string, string> = {};
  for (const m of header.slice(7).matchAll(/([a-z_]+)="([^"]*)"/g)) out[m[1]!] = m[2]!;
  return out;
}

export interface Credential {
  readonly user: string;
  readonly password: string;
}

export interface TokenReply {
  token: string;
  access_token: string;
  expires_in: number;
  issued_at: string;
  refresh_token?: string;
}

/** GET <realm>?service=&scope=... with Basic credentials (or none). */
export async function fetchToken(realm: string, service: string, scopes: readonly string[], cred?: Credential, extra = ''): Promise<Response> {
  const q = new URLSearchParams({ service });
  for (const s of scopes) q.append('scope', s);
  return fetch(`${realm}?${q.toString()}${extra}`, { headers: cred ? { Authorization: basic(cred.user, cred.password) } : {} });
}

/** The claims of a JWT (no verification: for assertions only). */
export function claimsOf(jwt: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8')) as Record<string, unknown>;
}

export type Flow = 'basic' | 'token';

/**
 * An HTTP client as registry clients behave: `basic` sends Basic credentials with every request;
 * `token` sends its bearer token for the scope, and on a 401 challenge fetches one from the realm
 * (with Basic credentials, or anonymously) and retries once.
 */
export class RegistryClient {
  private readonly tokens = new Map<string, string>();
  private current: string | undefined;
  private realm: { realm: string; service: string } | undefined;

  constructor(
    readonly base: string,
    readonly flow: Flow,
    readonly cred: Credential | undefined,
    private readonly secrets?: Secrets,
  ) {}

  private async token(scopes: string[]): Promise<string | Response> {
    const res = await fetchToken(this.realm!.realm, this.realm!.service, scopes, this.cred);
    if (res.status !== 200) return res;
    const token = ((await res.json()) as TokenReply).token;
    this.secrets?.add('jwt', token);
    return token;
  }

  async request(method: string, path: string, init: { body?: Buffer; headers?: Record<string, string> } = {}): Promise<Response> {
    const send = (auth: string | undefined) =>
      fetch(`${this.base}${path}`, {
        method,
        headers: { ...init.headers, ...(auth ? { Authorization: auth } : {}) },
        ...(init.body ? { body: init.body } : {}),
      });
    if (this.flow === 'basic') return send(this.cred ? basic(this.cred.user, this.cred.password) : undefined);
    if (!this.current) {
      // As `docker login`: the challenge of /v2/ names the realm, then a token without any scope.
      const ping = await fetch(`${this.base}/v2/`);
      await ping.arrayBuffer();
      const challenge = parseChallenge(ping.headers.get('www-authenticate'));
      if (!challenge?.realm) throw new Error(`/v2/ answered ${ping.status} without a Bearer challenge`);
      this.realm = { realm: challenge.realm, service: challenge.service ?? '' };
      const login = await this.token([]);
      if (typeof login !== 'string') return login;
      this.current = login;
    }
    const first = await send(`Bearer ${this.current}`);
    if (first.status !== 401) return first;
    const challenge = parseChallenge(first.headers.get('www-authenticate'));
    if (challenge?.error !== 'insufficient_scope' || !challenge.scope) return first;
    await first.arrayBuffer();
    let token = this.tokens.get(challenge.scope);
    if (!token || token === this.current) {
      const got = await this.token([challenge.scope]);
      if (typeof got !== 'string') return got;
      token = got;
      this.tokens.set(challenge.scope, token);
    }
    this.current = token;
    return send(`Bearer ${token}`);
  }
}

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** Pushes a small image (config, one layer, manifest) through `client`; the last response tells. */
export async function pushWith(client: RegistryClient, repo: string, tag: string, seed: string): Promise<Response> {
  const config = Buffer.from(`{"architecture":"amd64","os":"linux","seed":${JSON.stringify(seed)}}`);
  const layer = Buffer.from(`layer ${seed}`);
  for (const blob of [config, layer]) {
    const res = await client.request('POST', `/v2/${repo}/blobs/uploads/?digest=${sha256(blob)}`, {
      body: blob,
      headers: { 'Content-Type': 'application/octet-stream' },
    });
    if (res.status !== 201) return res;
    await res.arrayBuffer();
  }
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha256(layer), size: layer.length }],
    }),
  );
  return client.request('PUT', `/v2/${repo}/manifests/${tag}`, { body: manifest, headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' } });
}

/**
 * A request from a chosen loopback source address (127.0.0.x), so that per-address limits can be told
 * apart: its status, Retry-After and body.
 */
export function requestFrom(
  localAddress: string,
  url: string,
  headers: Record<string, string> = {},
  method = 'GET',
): Promise<{ status: number; retryAfter?: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, localAddress, headers: { ...headers, Connection: 'close' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          ...(res.headers['retry-after'] !== undefined ? { retryAfter: res.headers['retry-after'] } : {}),
          body: Buffer.concat(chunks).toString('utf8'),
        }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}
