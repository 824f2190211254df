import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { SignJWT, calculateJwkThumbprint, exportJWK, jwtVerify } from 'jose';
import type { Logger } from 'pino';
import type { AccessEntry } from './scope.js';

const ALGORITHM = 'ES256';

/** Verified tokens remembered at most. */
const VERIFIED_CACHE_SIZE = 4096;
/**
 * Longer tokens are verified at each use, not remembered: a token of a few scopes is about 1 KiB, and
 * 4,096 of the longest a request may ask for (100 scopes) would hold over 100 MiB.
 */
const MAX_REMEMBERED_TOKEN = 8 * 1024;

/** The registry's signing key: ES256 (P-256), a PKCS#8 PEM file with mode 0600, made on first start. */
export interface SigningKey {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** RFC 7638 JWK thumbprint of the public key. */
  readonly kid: string;
}

function isP256(key: KeyObject): boolean {
  return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
}

async function fromPrivateKey(privateKey: KeyObject): Promise<SigningKey> {
  const publicKey = createPublicKey(privateKey);
  return { privateKey, publicKey, kid: await calculateJwkThumbprint(await exportJWK(publicKey), 'sha256') };
}

/**
 * Loads the key from `file`, or generates one there (a file created by a concurrent start wins).
 * `file` undefined: an in-memory key (an in-memory database has nowhere to keep one).
 */
export async function loadSigningKey(file: string | undefined, logger: Logger): Promise<SigningKey> {
  if (file === undefined) return fromPrivateKey(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
  let pem: string | undefined;
  try {
    pem = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (pem === undefined) {
    await mkdir(dirname(file), { recursive: true, mode: 0o700 });
    const generated = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const text = generated.export({ type: 'pkcs8', format: 'pem' }) as string;
    try {
      await writeFile(file, text, { mode: 0o600, flag: 'wx' });
      logger.info({ file }, 'token signing key generated');
      pem = text;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      pem = await readFile(file, 'utf8');
    }
  }
  const mode = (await stat(file)).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    logger.warn({ file, mode: mode.toString(8) }, 'token signing key was readable by others; mode set to 0600');
    await chmod(file, 0o600);
  }
  const privateKey = createPrivateKey(pem);
  if (!isP256(privateKey)) throw new Error(`${file} is not an EC P-256 private key (ES256)`);
  return fromPrivateKey(privateKey);
}

export interface IssuedToken {
  readonly token: string;
  /** Seconds. */
  readonly expiresIn: number;
  readonly issuedAt: Date;
}

export interface VerifiedToken {
  /** '' for an anonymous token. */
  readonly subject: string;
  readonly access: readonly AccessEntry[];
  /** The personal access or CI token it was issued for, re-checked on every use. */
  readonly tokenId?: number;
  /** When it was issued, in seconds (`iat`). */
  readonly issuedAt: number;
  /** Of a user's token: which password it was got with (`cred`, see Accounts.credentialOf). */
  readonly credential?: string;
}

function isAccessList(value: unknown): value is AccessEntry[] {
  return (
    Array.isArray(value) &&
    value.every(
      (e) =>
        typeof e === 'object' &&
        e !== null &&
        typeof (e as AccessEntry).type === 'string' &&
        typeof (e as AccessEntry).name === 'string' &&
        Array.isArray((e as AccessEntry).actions) &&
        (e as AccessEntry).actions.every((a) => typeof a === 'string'),
    )
  );
}

/** Issues and verifies the registry's bearer tokens (JWT, ES256 through jose). */
export class TokenIssuer {
  constructor(
    private readonly key: SigningKey,
    private readonly service: string,
    /** ms */
    private readonly ttl: number,
  ) {}

  get kid(): string {
    return this.key.kid;
  }

  async issue(subject: string, access: readonly AccessEntry[], tokenId?: number, credential?: string): Promise<IssuedToken> {
    const now = Math.floor(Date.now() / 1000);
    const expiresIn = Math.max(60, Math.floor(this.ttl / 1000));
    const claims = {
      access: access.map((a) => ({ type: a.type, name: a.name, actions: [...a.actions] })),
      ...(tokenId !== undefined ? { tid: tokenId } : {}),
      ...(credential !== undefined ? { cred: credential } : {}),
    };
    const token = await new SignJWT(claims)
      .setProtectedHeader({ alg: ALGORITHM, typ: 'JWT', kid: this.key.kid })
      .setIssuer(this.service)
      .setAudience(this.service)
      .setSubject(subject)
      .setIssuedAt(now)
      .setNotBefore(now)
      .setExpirationTime(now + expiresIn)
      .setJti(randomUUID())
      .sign(this.key.privateKey);
    return { token, expiresIn, issuedAt: new Date(now * 1000) };
  }

  /**
   * The token's claims when its ES256 signature is ours and iss, aud, exp and nbf hold; undefined
   * otherwise. The algorithm is pinned, so `alg: none` and HS256/RS256 confusion never verify.
   */
  async verify(token: string): Promise<VerifiedToken | undefined> {
    // A pull sends the same token with every request: an ES256 verification costs far more than the
    // rest of a manifest GET, so tokens that verified are remembered until they expire. Only tokens
    // that verified are kept (keyed by the whole token), so a forged one is checked every time.
    const now = Date.now();
    const known = this.verified.get(token);
    if (known) {
      if (known.notBefore <= now && now < known.expiresAt) return known.claims;
      this.verified.delete(token);
    }
    const claims = await this.verifySignature(token);
    if (claims && token.length <= MAX_REMEMBERED_TOKEN) {
      if (this.verified.size >= VERIFIED_CACHE_SIZE) this.verified.delete(this.verified.keys().next().value!);
      this.verified.set(token, claims);
    }
    return claims?.claims;
  }

  private readonly verified = new Map<string, { claims: VerifiedToken; expiresAt: number; notBefore: number }>();

  private async verifySignature(token: string): Promise<{ claims: VerifiedToken; expiresAt: number; notBefore: number } | undefined> {
    try {
      const { payload } = await jwtVerify(token, this.key.publicKey, {
        algorithms: [ALGORITHM],
        issuer: this.service,
        audience: this.service,
        requiredClaims: ['sub', 'exp', 'nbf', 'iat', 'jti'],
      });
      if (typeof payload.sub !== 'string' || !isAccessList(payload.access)) return undefined;
      const tid = payload.tid;
      if (tid !== undefined && (typeof tid !== 'number' || !Number.isSafeInteger(tid))) return undefined;
      const cred = payload.cred;
      if (cred !== undefined && typeof cred !== 'string') return undefined;
      return {
        claims: {
          subject: payload.sub,
          access: payload.access,
          issuedAt: payload.iat!,
          ...(tid !== undefined ? { tokenId: tid } : {}),
          ...(cred !== undefined ? { credential: cred } : {}),
        },
        expiresAt: payload.exp! * 1000,
        notBefore: payload.nbf! * 1000,
      };
    } catch {
      return undefined;
    }
  }
}
