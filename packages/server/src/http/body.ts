import type { IncomingMessage } from 'node:http';
import { RegistryError } from '@wharf/registry-core';

/**
 * Reads a small request body (a manifest) into memory, refusing with TOO_LARGE as soon as it passes
 * `limit`. Blobs never come through here.
 */
export async function readSmallBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    throw new RegistryError('TOO_LARGE', `body is larger than ${limit} bytes`, { size: declared, limit });
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > limit) throw new RegistryError('TOO_LARGE', `body is larger than ${limit} bytes`, { limit });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, total);
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
