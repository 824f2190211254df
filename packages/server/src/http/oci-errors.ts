import type { IncomingMessage, ServerResponse } from 'node:http';
import { RegistryError, isBusy, isStorageFull } from '@wharf/registry-core';
import type { Context, Next } from 'koa';
import type { Logger } from 'pino';
import { errorStatus } from './error-status.js';
import { continueIfBodyArrived } from './expect-continue.js';
import { matchedLayers, readOnlyAllow } from './read-only-allow.js';
import { reasonPhrase } from './reason-phrase.js';

/**
 * Headers a route may have set for the success it did not reach; an error body must not carry them.
 * A blob's year-long Cache-Control above all: a cache in front of Wharf would keep a 502 "try again"
 * for a year. Content-Range goes too, unless the error is the 416 whose size it gives.
 */
/** Headers of a success that an error answer must not carry (a blob's year-long Cache-Control, say). */
/** The OCI error body of `error`. */
export function errorBody(error: RegistryError): { errors: { code: string; message: string; detail: unknown }[] } {
  return { errors: [{ code: error.code, message: error.message, detail: error.detail ?? null }] };
}

export const SUCCESS_ONLY_HEADERS = ['content-length', 'content-type', 'docker-content-digest', 'etag', 'location', 'accept-ranges', 'cache-control'];

/** Errors a client causes by going away or sending a broken body: no stack trace, no 500 in the log. */
const CLIENT_STREAM_ERRORS = new Set(['ECONNRESET', 'ERR_STREAM_PREMATURE_CLOSE', 'ECONNABORTED', 'EPIPE', 'ABORT_ERR']);

export function isClientStreamError(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { code?: string; message?: string; name?: string };
  return CLIENT_STREAM_ERRORS.has(e.code ?? '') || e.message === 'aborted' || e.name === 'AbortError';
}

/**
 * First middleware: turns every failure into the OCI error body `{"errors":[{code,message,detail}]}`
 * with the status from ERROR_STATUS (through errorStatus). Once headers are out, the only safe move is to cut the connection.
 */
export function ociErrors(logger: Logger) {
  return async function ociErrorMiddleware(ctx: Context, next: Next): Promise<void> {
    try {
      await next();
      if (ctx.status === 404 && ctx.body === undefined && !ctx.state.routed) {
        throw new RegistryError('NOT_FOUND', 'no such endpoint', { path: ctx.path });
      }
    } catch (err) {
      if (ctx.headerSent || !ctx.writable) {
        // A connection gone already (the client left, or node refused its request mid-body and closed
        // it) is the client's doing: no warning with a stack for each, which would hide the cuts that are ours.
        if (ctx.req.socket.destroyed) logger.debug({ err: err instanceof Error ? err.message : String(err), reqId: ctx.state.reqId }, 'error after the connection closed');
        else logger.warn({ err, reqId: ctx.state.reqId }, 'error after response started; connection cut');
        ctx.req.socket.destroy();
        return;
      }
      let error: RegistryError;
      let routerRefused = false;
      if (err instanceof RegistryError) {
        error = err;
      } else if (isClientStreamError(err)) {
        error = new RegistryError('BLOB_UPLOAD_INVALID', 'request body ended early', undefined);
      } else if (isStorageFull(err)) {
        // A write found no room (the disk, a quota, the database's file system): nothing of the
        // request was stored, and the same request succeeds once space is freed. The code says what
        // happened: no stack.
        const { code, syscall, message } = err as { code?: string; syscall?: string; message?: string };
        logger.error({ reqId: ctx.state.reqId, code, syscall, reason: message }, 'no space left on storage');
        error = new RegistryError('INSUFFICIENT_STORAGE', 'no space left on storage; nothing of this request was stored', undefined);
      } else if (isBusy(err)) {
        // Another process (a `wharf` command, a backup through the sqlite3 shell) held the database's
        // write lock past its busy timeout: nothing of the request was written, and the same request
        // succeeds once the lock is free. A 503 with Retry-After is what clients retry, not a 500.
        logger.warn({ reqId: ctx.state.reqId, code: (err as { code?: string }).code }, 'database busy: another process holds its write lock');
        error = new RegistryError('UNAVAILABLE', 'the metadata database is busy (another process holds its write lock); try again', { retryAfter: 1 });
      } else if (typeof err === 'object' && err !== null && [405, 501].includes((err as { status?: number }).status ?? 0)) {
        // 405 from the router for a known path, 501 for a method it implements nowhere (PROPFIND...).
        // Both are the client asking for something we do not do, never a server failure.
        error = new RegistryError('UNSUPPORTED', 'method not allowed on this endpoint', { method: ctx.method });
        routerRefused = true;
      } else {
        logger.error({ err, reqId: ctx.state.reqId }, 'unexpected error');
        error = new RegistryError('UNKNOWN', 'internal server error', undefined);
      }
      for (const h of SUCCESS_ONLY_HEADERS) ctx.remove(h);
      const retryAfter = (error.detail as { retryAfter?: unknown } | undefined)?.retryAfter;
      if (typeof retryAfter === 'number') ctx.set('Retry-After', String(retryAfter));
      ctx.status = errorStatus(error, ctx.state.invalidPathReference === true);
      if (ctx.status !== 416) ctx.remove('content-range');
      if (ctx.status === 405) ctx.set('Allow', allowedMethods(ctx, routerRefused));
      // What a route said a client needs to go on after this error (an upload's 416: where it resumes).
      const errorHeaders = ctx.state.errorHeaders as Record<string, string> | undefined;
      if (errorHeaders) ctx.set(errorHeaders);
      if (!ctx.req.complete) {
        // A body the route destroyed (its write failed: a full disk, a session cancelled mid-chunk) is
        // read no further, and its connection ends once the client stops sending: the client is told
        // so, or it would queue its next request on the connection (undici does) and see it reset.
        if (ctx.req.destroyed) ctx.set('Connection', 'close');
        continueIfBodyArrived(ctx.req);
        lingerForBody(ctx.req, ctx.res);
      }
      ctx.body = errorBody(error);
      // Docker shows a 5xx as its status line alone, containerd any error of a HEAD or of a push
      // (`unexpected status: 403 Forbidden`), and a HEAD has no body: the reason phrase is the one
      // place their users see why.
      ctx.message = reasonPhrase(ctx.message, error.message);
      // Why, for a failure on our side or the upstream's, and for a refusal (who may not do what).
      const logged = ctx.status >= 500 || ctx.status === 429 || ctx.status === 401 || ctx.status === 403;
      ctx.state.error = { code: error.code, ...(logged ? { reason: error.message } : {}) };
    }
  };
}


/**
 * The `Allow` of a 405 (RFC 9110 15.5.6 makes it a MUST): the methods of the routes the path matched;
 * only the reads among them when the route itself refused (a read-only repository: the pull-through
 * proxy), and none on an upload path (a read-only name has no upload session to read). Empty when
 * nothing is allowed, as the RFC has it.
 */
function allowedMethods(ctx: Context, routerRefused: boolean): string {
  const matched = matchedLayers(ctx);
  return routerRefused ? [...new Set(matched.flatMap((layer) => layer.methods))].sort().join(', ') : readOnlyAllow(matched);
}

/**
 * After answering an error before its request's body was read to its end, the rest of the body may
 * keep coming (and is dropped) as long as it keeps coming: the connection is cut after LINGER_IDLE_MS
 * without a byte, or LINGER_MAX_MS in all.
 */
const LINGER_IDLE_MS = 2_000;
const LINGER_MAX_MS = 30_000;

/**
 * A body not read to its end when its error is answered (an upload refused or failed mid-way, a 401
 * to a large manifest PUT): node reads and drops the rest. Closing at once would reset a client still
 * writing, and a client that writes its whole body before reading (Go's, and with it docker,
 * containerd and the OCI conformance suite) then sees a broken pipe instead of the answer. A client
 * that stops sending is cut soon, not kept until idle_timeout, and one that would send for ever is
 * cut too.
 */
function lingerForBody(req: IncomingMessage, res: ServerResponse): void {
  // Taken now: node lets go of `req.socket` (it becomes null) once the request is over, or the
  // connection is gone already. A body the route destroyed (an upload's pipeline given up on when the
  // session was cancelled mid-chunk) has let go of it too, while its connection lives on, its socket
  // paused: the response's socket is that one, and the timer below closes it once no byte comes,
  // instead of idle_timeout later (a graceful shutdown waited for it until its deadline).
  const socket = (req.socket ?? res.socket) as IncomingMessage['socket'] | null;
  if (!socket || socket.destroyed) return;
  // A request with `Connection: close`, or an answer that says it (a body the route destroyed): node
  // closes the socket once the answer is out, and the bytes still coming make the kernel reset the
  // connection, the answer with it (the client sees EPIPE). So only the sending side is closed then,
  // and the rest is read and dropped as for a kept-alive one (or, destroyed, left until the timer below).
  const closing = !res.shouldKeepAlive || res.getHeader('connection') === 'close';
  if (closing) socket.destroySoon = () => void socket.end();
  res.once('finish', () => {
    if (req.complete) {
      if (closing) socket.destroy();
      return;
    }
    // Node drops the rest only of a body nobody began to read; one a route read part of (an import
    // that failed mid-archive) is resumed here, with nothing listening, or the client, still
    // sending, would stall until the timer below cut it.
    if (!req.destroyed) {
      req.unpipe();
      req.resume();
    }
    const started = Date.now();
    let seen = socket.bytesRead;
    const timer = setInterval(() => {
      if (req.complete || socket.destroyed) {
        clearInterval(timer);
        if (closing) socket.destroy();
        return;
      }
      if (socket.bytesRead === seen || Date.now() - started >= LINGER_MAX_MS) {
        clearInterval(timer);
        socket.destroy();
        return;
      }
      seen = socket.bytesRead;
    }, LINGER_IDLE_MS);
    timer.unref();
  });
}
