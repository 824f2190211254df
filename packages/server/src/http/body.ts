import type { IncomingMessage } from 'node:http';
import { RegistryError } from '@wharf/registry-core';

/** Where a body of no declared length starts; it doubles as it comes, up to the limit. */
const FIRST_BYTES = 16 * 1024;

/**
 * Reads a small request body (a manifest, a token form) into memory, refusing with TOO_LARGE as soon
 * as it passes `limit`. Blobs never come through here. Each chunk is copied into one buffer as it
 * comes: kept as they came, a body sent in 1-byte chunks (chunked encoding) held a Buffer per byte,
 * each a slice that kept its socket read alive, about 300 bytes of memory per byte of body (a 4 MiB
 * manifest took 1.2 GiB; 50 token forms of 64 KiB, sent without credentials, 370-700 MiB).
 */
export async function readSmallBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    throw new RegistryError('TOO_LARGE', `body is larger than ${limit} bytes`, { size: declared, limit });
  }
  let body = Buffer.allocUnsafe(Number.isFinite(declared) && declared >= 0 ? declared : Math.min(limit, FIRST_BYTES));
  let total = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    if (total + chunk.length > limit) throw new RegistryError('TOO_LARGE', `body is larger than ${limit} bytes`, { limit });
    if (total + chunk.length > body.length) {
      const grown = Buffer.allocUnsafe(Math.min(limit, Math.max(body.length * 2, total + chunk.length)));
      body.copy(grown, 0, 0, total);
      body = grown;
    }
    chunk.copy(body, total);
    total += chunk.length;
  }
  return total === body.length ? body : Buffer.from(body.subarray(0, total));
}

/** Whether a request carries a body to read (a final PUT chunk, say). */
export function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  if (length !== undefined) return Number(length) > 0;
  return req.headers['transfer-encoding'] !== undefined;
}

/** Content-Length as a number, when the client declared one. */
export function declaredLength(req: IncomingMessage): number | undefined {
  const length = req.headers['content-length'];
  if (length === undefined || !/^\d+$/.test(length)) return undefined;
  return Number(length);
}

/** An empty reply body that keeps the status (Koa would turn `null` into 204, or write the status text). */
export function emptyBody(ctx: { body: unknown; remove(field: string): void }): void {
  ctx.body = '';
  ctx.remove('Content-Type');
}
