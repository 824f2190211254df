import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Context, Next } from 'koa';
import type { Logger } from 'pino';
import { onConnectionClose } from './connection-close.js';
import { classifyRoute, type ClassifiedRoute, type RouteLabel } from './route-label.js';
import { clientOf } from './client-address.js';
import { arrivedAt } from './pipelined-order.js';

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

/**
 * Counts the requests between their start and their log line (the observer's `finished` comes after
 * the line), passing both on to `next`. A shutdown waits on it after cutting connections: the server's
 * close callback can come before the cut sockets' 'close' events, which are what write the lines of
 * the requests they carried.
 */
export class RequestsInFlight implements RequestObserver {
  private count = 0;
  private readonly waiters: (() => void)[] = [];

  constructor(private readonly next?: RequestObserver) {}

  started(route: RouteLabel): void {
    this.count++;
    this.next?.started(route);
  }

  finished(observation: RequestObservation): void {
    this.next?.finished(observation);
    this.count--;
    if (this.count === 0) for (const resolve of this.waiters.splice(0)) resolve();
  }

  /** Resolves once no request is in flight (every one has written its line). */
  idle(): Promise<void> {
    if (this.count === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}

/**
 * 5xx answers that say what the client sent is not supported (a transfer coding, HTTP/2 on an
 * HTTP/1.1 line, an unknown method): anyone can send them, so they are logged as the 4xx are, not as
 * the server's own errors that alerting watches.
 */
const CLIENTS_FAULT = new Set([501, 505]);

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

export interface RequestTrackingDeps {
  readonly logger: Logger;
  readonly observer?: RequestObserver | undefined;
}

/**
 * One log line per request, written when the response is done (streams included): method, route,
 * repository, path (never the query string, which may carry credentials), status, bytes in and out,
 * duration, request id (`X-Request-Id` when the client sent a sane one, generated otherwise). No
 * header is logged, so no credential can be. The observer sees the start and the end.
 *
 * Returns the request id, which the caller sends back as `X-Request-Id`. `error` (the error code,
 * and for a failure on our side or the upstream's, 5xx and 429, its message) is asked when the
 * response closes; `started` (performance.now()) defaults to when the request arrived (now, unless it waited
 * behind another of its connection: see pipelined-order.ts); `route`, when the caller already
 * knows it, saves classifying the path again.
 */
export function trackRequest(
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  deps: RequestTrackingDeps,
  options: {
    readonly error?: () => { code: string; reason?: string } | undefined;
    /** Fields the route adds to the line (`mountedFrom`), asked when the response closes. */
    readonly fields?: () => Readonly<Record<string, string | number>> | undefined;
    readonly started?: number;
    readonly route?: ClassifiedRoute;
  } = {},
): string {
  const { logger, observer } = deps;
  const started = options.started ?? arrivedAt(req) ?? performance.now();
  const given = req.headers['x-request-id'];
  const reqId = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
  const { route, repository } = options.route ?? classifyRoute(path);
  const method = req.method ?? 'GET';
  // Taken now: by the time the response closes, the request may have let go of its socket.
  const socket = req.socket;
  const client = clientOf(req).address;
  observer?.started(route);
  let ended = false;
  let forget: (() => void) | undefined;
  const end = (): void => {
    if (ended) return;
    ended = true;
    forget?.();
    const traffic = socket ? trafficOf(socket) : { bytesIn: 0, bytesOut: 0 };
    // 499, as nginx logs it: the client went away before a response was sent.
    const status = res.headersSent ? res.statusCode : 499;
    const durationMs = Math.round((performance.now() - started) * 10) / 10;
    const level = res.statusCode >= 500 && !CLIENTS_FAULT.has(res.statusCode) ? 'error' : QUIET_ROUTES.has(route) ? 'debug' : 'info';
    if (logger.isLevelEnabled(level)) {
      const error = options.error?.();
      const fields = {
        reqId,
        method,
        route,
        ...(repository !== undefined ? { repository } : {}),
        ...(client !== undefined ? { client } : {}),
        path,
        status,
        bytesIn: traffic.bytesIn,
        bytesOut: traffic.bytesOut,
        durationMs,
        ...options.fields?.(),
        ...(error ? { error: error.code } : {}),
        // Why a pull through the proxy failed (refused, 500, TLS...): the client saw it, so should the log.
        ...(error?.reason ? { reason: error.reason } : {}),
        ...(res.writableFinished ? {} : { aborted: true }),
      };
      logger[level](fields, 'request');
    }
    observer?.finished({ route, method, status, durationMs, bytesIn: traffic.bytesIn, bytesOut: traffic.bytesOut });
  };
  res.once('close', end);
  // A response queued behind another on its connection (pipelined requests) emits no 'close' when
  // the connection closes: without this its line never came, and a shutdown waited its whole
  // deadline for it.
  if (socket) forget = onConnectionClose(socket, end);
  return reqId;
}

/** trackRequest for every request that goes through Koa. */
export function requestLog(logger: Logger, observer?: RequestObserver) {
  const deps = { logger, observer };
  return async function requestLogMiddleware(ctx: Context, next: Next): Promise<void> {
    const reqId = trackRequest(ctx.req, ctx.res, ctx.path, deps, {
      error: () => ctx.state.error as { code: string; reason?: string } | undefined,
      fields: () => ctx.state.logFields as Record<string, string | number> | undefined,
    });
    ctx.state.reqId = reqId;
    ctx.set('X-Request-Id', reqId);
    await next();
  };
}
