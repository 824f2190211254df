import { RegistryError } from '@wharf/registry-core';
import type { Context, Next } from 'koa';
import { classifyRoute, isBlobTransfer } from './route-label.js';
import { isArchiveTransfer } from '../routes/admin-storage.js';
import { abandon } from './gone-signal.js';

/**
 * `request_timeout`: a deadline for requests that do not move a blob (manifests, tags, catalog,
 * tokens, admin). When it passes before the response has started, the client gets 503 UNAVAILABLE, or
 * 408 REQUEST_TIMEOUT when the server was reading its request body and that had not all arrived (a
 * client that stalls is no server overloaded, and clients retry a 503; a body the server had not
 * begun to read, a client waiting for its 100 Continue, say, is the server's delay), and the
 * connection is closed after it; the handler's late result is dropped, and its turn in the password
 * check line given up (goneSignal). Blob uploads and downloads
 * are exempt: they are limited by idle time on the socket (idle_timeout), never by a total time.
 * Goes inside the OCI error middleware, so the 503 has the usual error body.
 */
export function requestTimeout(ms: number) {
  return async function requestTimeoutMiddleware(ctx: Context, next: Next): Promise<void> {
    // Image import/export (whole tarballs) are exempt like blob transfers.
    if (ms <= 0 || isBlobTransfer(ctx.method, classifyRoute(ctx.path).route) || isArchiveTransfer(ctx.path)) return next();
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<'expired'>((resolve) => {
      timer = setTimeout(() => resolve('expired'), ms);
    });
    const work = next();
    try {
      const first = await Promise.race([work.then(() => 'done' as const), expired]);
      if (first === 'expired' && !ctx.headerSent) {
        // The handler goes on until its own I/O ends; nobody waits for it any more, and what it waits
        // for in a line (a password check) leaves the line.
        work.catch(() => undefined);
        abandon(ctx.res);
        ctx.set('Connection', 'close');
        // Reading began when a route attached to the body (flowing or 'readable'), whether or not a
        // first byte has come since.
        if (!ctx.req.complete && (ctx.req.readableFlowing !== null || ctx.req.readableDidRead)) throw new RegistryError('REQUEST_TIMEOUT', 'the request body did not arrive within the time the server allows (request_timeout)', { timeoutMs: ms });
        throw new RegistryError('UNAVAILABLE', 'the request took longer than the server allows (request_timeout)', { timeoutMs: ms });
      }
      await work;
    } finally {
      clearTimeout(timer);
    }
  };
}
