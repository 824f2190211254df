import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import { DROP_LIMIT } from './plain-http.js';

export type Headers = IncomingHttpHeaders;

/** A response whose body still streams. */
export interface Answer {
  readonly statusCode: number;
  readonly headers: Headers;
  readonly body: Readable;
  /** The URL that answered (the last hop of any redirects); set by `send`. */
  readonly url?: URL;
  /** Set by `authorized`: the host that answered 401 still did so with the token it asked for. */
  readonly refused?: boolean;
  /** Set by `send`: the Authorization the last hop carried, which a 401 refused (if any). */
  readonly authorization?: string;
  /** Set when the body's chunks are lent (see UpstreamBlob.recycle). */
  readonly recycle?: (chunk: Buffer) => void;
  /** Set for plainRequest's answers: drops the body, keeping the connection when that is cheap. */
  readonly drop?: () => Promise<void>;
}

/**
 * Reads a body whole, failing with `tooLarge()` past `limit` bytes. Chunks come through 'data' events,
 * each as it was lent (an async iterator may hand over several joined into a copy), and are given
 * back to their slab once copied.
 */
export function readUpTo({ body, recycle }: Answer, limit: number, tooLarge: () => Error): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // A body that failed in the read that brought its head (a broken first chunk) failed before we
    // listen: its 'error' and 'close' are gone, and waiting would hang until someone's timeout.
    if (body.errored) {
      reject(body.errored);
      return;
    }
    if (body.destroyed && !body.readableEnded) {
      reject(new Error('the upstream body was closed before its end'));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const giveBack = (): void => {
      if (recycle) for (const chunk of chunks.splice(0)) recycle(chunk);
    };
    body.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        body.destroy();
        giveBack();
        reject(tooLarge());
        return;
      }
      chunks.push(chunk);
    });
    body.once('end', () => {
      const whole = Buffer.concat(chunks, size);
      giveBack();
      resolve(whole);
    });
    body.once('error', (err) => {
      giveBack();
      reject(err);
    });
    // 'close' without 'end' or 'error': destroyed by someone else (an abort).
    body.once('close', () => {
      if (!body.readableEnded) reject(new Error('the upstream body was closed before its end'));
    });
  });
}

/** Drops a body we do not need (plainRequest's decides itself whether to keep its connection). */
export async function discard({ body, drop }: Answer): Promise<void> {
  if (drop) return drop();
  // undici's: read up to the limit (its connection kept), else cut.
  const dump = (body as Readable & { dump?: (opts?: { limit: number }) => Promise<void> }).dump;
  if (dump) await dump.call(body, { limit: DROP_LIMIT }).catch(() => undefined);
  else body.destroy();
}

/** The most of a refusal's body read to learn what it says (an OCI error document is a few hundred bytes). */
const REFUSAL_BYTES = 64 * 1024;

/** The longest wait for a refusal's body: a page that trickles, or never ends, is no error document. */
const REFUSAL_WAIT_MS = 1000;

/**
 * Reads a refusal's body (a 401's or 403's) for the error document it may hold; an empty buffer
 * when it is larger than REFUSAL_BYTES, takes longer than REFUSAL_WAIT_MS, or cannot be read.
 */
export function readRefusal(res: Answer): Promise<Buffer> {
  const timer = setTimeout(() => res.body.destroy(), REFUSAL_WAIT_MS);
  return readUpTo(res, REFUSAL_BYTES, () => new Error('refusal body too large'))
    .catch(() => Buffer.alloc(0))
    .finally(() => clearTimeout(timer));
}

/**
 * Whether `bytes` is a registry's error document (`{"errors":[{"code":...}]}`, the OCI distribution
 * spec's), not a firewall's or a proxy's page: only a registry's refusal speaks for the repository.
 */
export function isRegistryError(bytes: Buffer): boolean {
  try {
    const doc = JSON.parse(bytes.toString('utf8')) as { errors?: unknown };
    return Array.isArray(doc.errors) && doc.errors.length > 0 && doc.errors.every((e) => typeof (e as { code?: unknown } | null)?.code === 'string');
  } catch {
    return false;
  }
}
