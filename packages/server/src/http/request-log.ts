import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Context, Next } from 'koa';
import type { Logger } from 'pino';
import { classifyRoute, type RouteLabel } from './route-label.js';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** What one finished request did, for the log line and for metrics. */
export interface RequestObservation {
  readonly route: RouteLabel;
  readonly method: string;
  readonly status: number;
  readonly durationMs: number;
  /** Bytes of the request (head and body) read from the connection. */
  readonly bytesIn: number;
  /** Bytes of the response (head and body) written to the connection. */
  readonly bytesOut: number;
}

export interface RequestObserver {
  started(route: RouteLabel): void;
  finished(observation: RequestObservation): void;
}

/** Probes and scrapes are logged at debug: a load balancer asking every few seconds is not news. */
const QUIET_ROUTES: ReadonlySet<RouteLabel> = new Set(['health', 'metrics']);

/**
 * Per connection, the byte counters at the end of its previous request: a request's bytes are the
 * difference (keep-alive connections carry many requests, one after the other).
 */
const accounted = new WeakMap<Socket, { read: number; written: number }>();

function trafficOf(socket: Socket): { bytesIn: number; bytesOut: number } {
  const before = accounted.get(socket) ?? { read: 0, written: 0 };
  const now = { read: socket.bytesRead, written: socket.bytesWritten };
  accounted.set(socket, now);
  return { bytesIn: Math.max(0, now.read - before.read), bytesOut: Math.max(0, now.written - before.written) };
}

/**
 * One log line per request, written when the response is done (streams included): method, route,
 * repository, path (never the query string, which may carry credentials), status, bytes in and out,
 * duration, request id (`X-Request-Id` when the client sent a sane one, generated otherwise, and
 * returned). No header is logged, so no credential can be.
 */
export function requestLog(logger: Logger, observer?: RequestObserver) {
  return async function requestLogMiddleware(ctx: Context, next: Next): Promise<void> {
    const started = performance.now();
    const given = ctx.get('X-Request-Id');
    const reqId = REQUEST_ID.test(given) ? given : randomUUID();
    ctx.state.reqId = reqId;
    ctx.set('X-Request-Id', reqId);
    const { route, repository } = classifyRoute(ctx.path);
    // Taken now: by the time the response closes, the request may have let go of its socket.
    const socket = ctx.req.socket;
    observer?.started(route);
    ctx.res.once('close', () => {
      const traffic = socket ? trafficOf(socket) : { bytesIn: 0, bytesOut: 0 };
      // 499, as nginx logs it: the client went away before a response was sent.
      const status = ctx.res.headersSent ? ctx.res.statusCode : 499;
      const durationMs = Math.round((performance.now() - started) * 10) / 10;
      const fields = {
        reqId,
        method: ctx.method,
        route,
        ...(repository !== undefined ? { repository } : {}),
        path: ctx.path,
        status,
        bytesIn: traffic.bytesIn,
        bytesOut: traffic.bytesOut,
        durationMs,
        ...(ctx.state.errorCode ? { error: ctx.state.errorCode } : {}),
        ...(ctx.res.writableFinished ? {} : { aborted: true }),
      };
      if (ctx.res.statusCode >= 500) logger.error(fields, 'request');
      else if (QUIET_ROUTES.has(route)) logger.debug(fields, 'request');
      else logger.info(fields, 'request');
      observer?.finished({ route, method: ctx.method, status, durationMs, ...traffic });
    });
    await next();
  };
}
