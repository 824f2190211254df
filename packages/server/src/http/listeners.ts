import { createServer as createHttpServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { Server as TlsServer } from 'node:tls';
import type { TlsMaterial } from '../tls/tls-files.js';
import { continueWhenRead } from './expect-continue.js';
import { answerRefusedRequests, rawErrorResponse } from './raw-refusals.js';
import { PLAIN_HOST } from './plain-host.js';

export interface ListenerTimeouts {
  /** Longest time a client may take to send a request's headers (ms). */
  readonly readHeaderTimeout: number;
  /** Keep-alive connections and silent sockets are closed after this long (ms; 0: never). */
  readonly idleTimeout: number;
}

/**
 * Node checks header deadlines on a timer (connectionsCheckingInterval, 30 s by default): tick fast
 * enough that a slow-loris connection is cut soon after `read_header_timeout`, not up to 30 s later.
 */
function checkingInterval(t: ListenerTimeouts): number {
  return Math.max(100, Math.min(5_000, Math.floor(t.readHeaderTimeout / 4)));
}

/**
 * Timeouts every listener gets. There is no total request time (`requestTimeout` = 0): blob uploads
 * and downloads are limited by idle time on the socket only; other requests have their own deadline
 * (http/request-timeout.ts).
 */
function applyTimeouts(server: Server, t: ListenerTimeouts): void {
  server.requestTimeout = 0;
  server.headersTimeout = t.readHeaderTimeout;
  server.keepAliveTimeout = t.idleTimeout;
  server.timeout = t.idleTimeout;
}

/**
 * The largest request head read (node's default is 16 KiB). containers/image (podman, buildah, skopeo,
 * CRI-O) fetches the missing chunks of a zstd:chunked or eStargz layer with one GET of up to 1024
 * ranges: a Range header of 18-22 KB, more with a bearer token. Over the limit the answer is a 431,
 * which that client does not retry with fewer ranges (it does after a 400), so the pull failed.
 * distribution (Go) reads 1 MiB.
 */
export const MAX_HEADER_BYTES = 32 * 1024;

/** The server on `listen`: HTTPS when TLS material is given, plain HTTP otherwise. */
export function createWharfServer(handler: RequestListener, timeouts: ListenerTimeouts, tls?: TlsMaterial): Server {
  // A request without Host is refused by the handler (http/framing-guard.ts), with the OCI body.
  const common = { connectionsCheckingInterval: checkingInterval(timeouts), requireHostHeader: false, maxHeaderSize: MAX_HEADER_BYTES };
  const server = tls
    ? createHttpsServer({ ...common, cert: tls.cert, key: tls.key, handshakeTimeout: timeouts.readHeaderTimeout }, handler)
    : createHttpServer(common, handler);
  applyTimeouts(server, timeouts);
  // Handled, `checkContinue` replaces node's automatic 100 Continue (and the 'request' event).
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    continueWhenRead(req, res);
    handler(req, res);
  });
  // Any other Expect: the app answers it (an OCI error, logged), not node's bare 417.
  server.on('checkExpectation', handler);
  answerRefusedRequests(server);
  if (tls) answerPlainHttp(server, timeouts.readHeaderTimeout);
  return server;
}

/** Every TLS connection starts with a handshake record (content type 22). */
const TLS_HANDSHAKE = 0x16;
const HOST_HEADER = /^host:[ \t]*([^\r\n]*)/im;

/**
 * A client that speaks plain HTTP to the HTTPS port (an `http://` URL, `--plain-http`, an insecure
 * registry setting) gets a 400 that says what to do, as Go's servers answer, instead of a connection
 * closed without a word. The first bytes tell: the connection is handed to TLS with them put back
 * (node's TLS socket reads what its socket already holds), or answered here. A connection that sends
 * nothing is cut after `read_header_timeout` or when the server drains.
 */
function answerPlainHttp(server: Server, timeoutMs: number): void {
  const toTls = server.listeners('connection') as Array<(this: Server, socket: Socket) => void>;
  server.removeAllListeners('connection');
  // Connections not handed to TLS: silent so far, or answered in plain HTTP and being closed.
  const untrusted = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    untrusted.add(socket);
    // One deadline for the whole time here: the first byte, or the 400's going out and the close.
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    const onError = () => socket.destroy();
    const onClose = () => {
      clearTimeout(timer);
      untrusted.delete(socket);
    };
    const onReadable = () => {
      const first = socket.read() as Buffer | null;
      if (first === null) return;
      socket.off('readable', onReadable);
      if (first[0] === TLS_HANDSHAKE) {
        onClose();
        socket.off('error', onError);
        socket.off('close', onClose);
        socket.unshift(first);
        for (const listener of toTls) listener.call(server, socket);
        return;
      }
      socket.end(plainHttpAnswer(first));
      // The rest of the request is read and dropped until the client closes or the deadline.
      socket.resume();
    };
    socket.on('readable', onReadable);
    socket.on('error', onError);
    socket.on('close', onClose);
  });
  // Draining closes idle connections: none of these is serving a request.
  const closeIdle = server.closeIdleConnections.bind(server);
  server.closeIdleConnections = () => {
    for (const socket of untrusted) socket.destroy();
    closeIdle();
  };
}

function plainHttpAnswer(first: Buffer): string {
  // The Host the client used, port included: the port it reached is this one, whatever this
  // process listens on behind a port mapping or a load balancer.
  const given = HOST_HEADER.exec(first.toString('latin1'))?.[1]?.trim() ?? '';
  const where = PLAIN_HOST.test(given) ? `https://${given}/` : 'https://';
  return rawErrorResponse(400, 'Bad Request', 'UNSUPPORTED', `this port speaks HTTPS, and the request came in plain HTTP: use ${where} (and trust Wharf's certificate)`);
}

/** Serves a renewed certificate from now on; connections already open keep theirs. */
export function updateCertificate(server: Server, tls: TlsMaterial): void {
  (server as unknown as TlsServer).setSecureContext({ cert: tls.cert, key: tls.key });
}

/** Where a plain-HTTP request should go over HTTPS: the same host (from Host), the HTTPS port, the same path and query. */
export function httpsLocation(req: IncomingMessage, httpsPort: number): string {
  const given = req.headers.host ?? '';
  let host: string;
  if (PLAIN_HOST.test(given)) {
    host = given.replace(/:\d+$/, '');
  } else {
    const local = req.socket.localAddress ?? '127.0.0.1';
    host = local.includes(':') ? `[${local.replace(/^::ffff:/, '')}]` : local;
    if (host.startsWith('[') && !host.slice(1, -1).includes(':')) host = host.slice(1, -1);
  }
  const path = (req.url ?? '/').startsWith('/') ? (req.url ?? '/') : '/';
  return `https://${host}${httpsPort === 443 ? '' : `:${httpsPort}`}${path}`;
}

/**
 * `[tls] redirect_http`: a plain listener that sends every request to the HTTPS URL with 308 (the
 * method and body are kept), except /health, which answers here so that a load balancer can probe
 * over plain HTTP.
 */
export function createRedirectServer(httpsPort: () => number, timeouts: ListenerTimeouts): Server {
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/health' && (req.method === 'GET' || req.method === 'HEAD')) {
      const body = '{"status":"ok"}';
      res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    const location = httpsLocation(req, httpsPort());
    res.writeHead(308, { Location: location, 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close' });
    res.end(`Wharf answers over HTTPS: ${location}\n`);
    // Any body is discarded: after a 308 the client sends it again to the HTTPS URL.
    req.resume();
  };
  const server = createHttpServer({ connectionsCheckingInterval: checkingInterval(timeouts) }, handler);
  applyTimeouts(server, timeouts);
  return server;
}
