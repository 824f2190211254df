import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import type { IncomingHttpHeaders } from 'node:http';
import { connect, isIP, type LookupFunction, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { connect as connectTls, createSecureContext, rootCertificates, type SecureContext } from 'node:tls';
import { AddressRefused } from './public-address.js';
import { SlabReader } from './slab-reader.js';

export interface PlainTimeouts {
  /** TCP connection, ms. */
  readonly connect: number;
  /** From the request sent to the end of the response head, ms. */
  readonly firstByte: number;
  /** Longest silence while the body streams (and is read), ms. */
  readonly idle: number;
}

/** A response whose body still streams, in chunks lent from reused memory. */
export interface PlainAnswer {
  readonly statusCode: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Readable;
  /** Gives a chunk of `body` back once its holder is done with it, for the next reads to reuse. */
  readonly recycle: (chunk: Buffer) => void;
  /**
   * The body is not wanted (a 401's, a 404's, a redirect's). One that leaves its connection reusable
   * and is short (at most DROP_LIMIT more bytes, framed by Content-Length or chunks) is read to its
   * end, for at most DROP_MS, so that the connection serves the next request; any other is cut with
   * its connection at once: waiting for a stalled or close-framed body would cost up to the idle timeout.
   */
  readonly drop: () => Promise<void>;
}

/** The most of an unwanted body read to keep its connection. */
export const DROP_LIMIT = 64 * 1024;
/** The longest an unwanted body is waited for. */
const DROP_MS = 250;

export interface PlainOptions {
  /** GET (the default) or HEAD. */
  readonly method?: 'GET' | 'HEAD';
  /** PEM certificates trusted for https:// besides the system's (an upstream behind a private CA). */
  readonly ca?: string;
  /**
   * Body bytes buffered before the socket stops being read, asked as bytes arrive (at most
   * BODY_HIGH_WATER): less when memory is short.
   */
  readonly bodyBuffer?: () => number;
  /**
   * Where a connection may go: `filter` gets the addresses the host resolves to (or the address in
   * the URL) and answers those it may connect to, or throws AddressRefused; checked on the lookup the
   * connection itself makes, so a name cannot resolve otherwise between a check and the connection.
   * Kept-alive connections are reused only by requests of the same `tag`, and `filter` sees a reused
   * one's address too. Unset: anywhere.
   */
  readonly addresses?: AddressPolicy;}

/** See PlainOptions.addresses. */
export interface AddressPolicy {
  readonly tag: string;
  readonly filter: (resolved: readonly string[]) => string[];
}

/** A response head is a few KiB; more is not a registry talking. */
const MAX_HEAD = 64 * 1024;
const MAX_CHUNK_LINE = 4 * 1024;
/** Body bytes buffered in the stream before the socket stops being read (see PlainOptions.bodyBuffer). */
export const BODY_HIGH_WATER = 1024 * 1024;
/** A body this small (or none) does not count among the downloads that make slabs small (SlabReader). */
const SMALL_BODY = 1024 * 1024;
/** An idle kept-alive connection is closed after this long (undici's default). */
const IDLE_MS = 4000;
/**
 * A server's `Keep-Alive: timeout=` less this is how long its connection is kept (undici's margin):
 * reused just as the server closes it, a request would be lost on the way.
 */
const KEEP_ALIVE_MARGIN_MS = 1000;
/** Idle connections kept per origin: manifests, tokens and blobs share them. */
const MAX_IDLE = 32;
/**
 * A HEAD's connection waits this long before it is lent again. A server that sends a body with its
 * HEAD answer anyway (it happens), in a later write, is caught meanwhile: bytes on an idle connection
 * drop it. Lent at once, those bytes would be taken for the next request's answer. Closing it instead
 * cost every tag revalidation a new connection, and a TLS handshake with real upstreams.
 */
export const AFTER_HEAD_MS = 50;

/**
 * One GET or HEAD over HTTP/1.1 or HTTPS, read into reused slabs (see SlabReader). The proxy talks to
 * its upstreams this way unless an egress proxy is in the way (then undici does). Blob bodies are why:
 * receiving through undici cost 1.2-3.0 CPU s/GiB on this VM over http:// against 0.33 s, and 1.3-1.8
 * against 0.7 over https:// (node decrypts a TLS socket into memory of ours too), and a cold pull's
 * event loop spent most of its time there. Manifests, tokens and lists go the same way, on the same
 * kept connections, so undici (about 9 MiB of memory) is not loaded at all.
 *
 * Connections are kept alive and reused per origin (and trusted CA) for IDLE_MS, as undici would:
 * a blob GET to Docker Hub is two requests (a redirect to its CDN), and each new TLS connection
 * costs round trips. A kept connection that turns out closed before it answers is replaced once.
 *
 * Answers with the head once it is in; the body follows as a Readable. Bodies framed by
 * Content-Length, chunked, or the end of the connection. Errors carry the codes the upstream's retry
 * logic knows: ETIMEDOUT for every timeout, ECONNRESET for a connection that ends too early, and
 * OpenSSL's codes for a certificate that is not trusted.
 */
export function plainRequest(
  url: URL,
  headers: Readonly<Record<string, string>>,
  timeouts: PlainTimeouts,
  signal?: AbortSignal,
  options: PlainOptions = {},
): Promise<PlainAnswer> {
  if (signal?.aborted) return Promise.reject(abortReason(signal));
  // An address in the URL is never looked up: checked here.
  const literal = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (options.addresses && isIP(literal)) {
    try {
      options.addresses.filter([literal]);
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }
  return new Promise((resolve, reject) => new Exchange(url, headers, timeouts, signal, options, resolve, reject, true));
}

/** Where a connection's reads and events go: the exchange using it, none while it is idle. */
interface Route {
  owner: Exchange | undefined;
  /** The connection's last exchange was a HEAD (see AFTER_HEAD_MS). */
  afterHead?: boolean;
}

/** Kept-alive connections waiting for their next request, by origin and trust. */
class IdleConnections {
  private readonly idle = new Map<string, Set<Socket>>();
  private readonly timers = new WeakMap<Socket, NodeJS.Timeout>();
  /** Connections not to be lent before this time (performance.now()). */
  private readonly notBefore = new WeakMap<Socket, number>();

  take(key: string): Socket | undefined {
    const now = performance.now();
    // The newest first: the oldest is the likeliest to have been closed by the server meanwhile.
    for (const socket of [...(this.idle.get(key) ?? [])].reverse()) {
      if ((this.notBefore.get(socket) ?? 0) > now && !socket.destroyed) continue;
      this.remove(key, socket);
      if (!socket.destroyed && socket.readyState === 'open') {
        socket.ref();
        return socket;
      }
      socket.destroy();
    }
    return undefined;
  }

  put(key: string, socket: Socket, idleMs = IDLE_MS, quarantineMs = 0): void {
    let sockets = this.idle.get(key);
    if (!sockets) this.idle.set(key, (sockets = new Set()));
    if (sockets.size >= MAX_IDLE) {
      socket.destroy();
      return;
    }
    sockets.add(socket);
    if (quarantineMs > 0) this.notBefore.set(socket, performance.now() + quarantineMs);
    else this.notBefore.delete(socket);
    const timer = setTimeout(() => this.drop(key, socket), idleMs);
    timer.unref();
    this.timers.set(socket, timer);
    // An idle connection keeps nobody waiting, and notices the server closing it.
    socket.unref();
    socket.resume();
  }

  /** An idle connection closed, failed or sent something unasked: it goes. */
  drop(key: string, socket: Socket): void {
    this.remove(key, socket);
    socket.destroy();
  }

  private remove(key: string, socket: Socket): void {
    clearTimeout(this.timers.get(socket));
    const sockets = this.idle.get(key);
    sockets?.delete(socket);
    if (sockets?.size === 0) this.idle.delete(key);
  }
}

const idleConnections = new IdleConnections();

const routes = new WeakMap<Socket, Route>();

/** A new connection to `url`'s origin whose reads and events follow `route`. */
function open(url: URL, key: string, options: PlainOptions, route: Route): Socket {
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const onread = {
    buffer: () => route.owner?.room() ?? IDLE_ROOM,
    callback: (n: number, buffer: Buffer) => {
      if (route.owner) return route.owner.read(n, buffer);
      // Bytes nobody asked for on an idle connection: it cannot be trusted with a request any more.
      idleConnections.drop(key, socket);
      return false;
    },
  };
  // node reads TLS sockets into `onread` memory too; its typings only know it for plain sockets.
  const secure = {
    host,
    port: Number(url.port || 443),
    ...(isIP(host) ? {} : { servername: host }),
    ...(options.ca !== undefined ? { secureContext: trusting(options.ca) } : {}),
    ALPNProtocols: ['http/1.1'],
    onread,
  };
  const checked = options.addresses ? { lookup: checkedLookup(options.addresses.filter) } : {};
  const socket = url.protocol === 'https:' ? connectTls({ ...secure, ...checked }) : connect({ host, port: Number(url.port || 80), onread, ...checked });
  socket.setNoDelay(true);
  socket.on('error', (err) => (route.owner ? route.owner.fail(err) : idleConnections.drop(key, socket)));
  socket.on('end', () => (route.owner ? route.owner.ended() : idleConnections.drop(key, socket)));
  socket.on('close', () => (route.owner ? route.owner.ended() : idleConnections.drop(key, socket)));
  return socket;
}

/** node's lookup, answering only the addresses `filter` keeps (its AddressRefused when none). */
function checkedLookup(filter: AddressPolicy['filter']): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, resolved) => {
      if (err) return callback(err, '', 0);
      let kept: string[];
      try {
        kept = filter(resolved.map((a) => a.address));
      } catch (refusal) {
        return callback(refusal as Error, '', 0);
      }
      const allowed = resolved.filter((a) => kept.includes(a.address));
      if (allowed.length === 0) return callback(new AddressRefused(hostname, resolved[0]?.address ?? hostname), '', 0);
      if (options.all) return (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, allowed);
      callback(null, allowed[0]!.address, allowed[0]!.family);
    });
  };
}

/**
 * An aborted signal's reason as it is: a DOMException (AbortSignal.timeout's TimeoutError) too, which
 * `instanceof Error` misses where it comes from another realm; a reason that is no error, as an abort.
 */
function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  const isError = reason instanceof Error || (typeof reason === 'object' && reason !== null && typeof (reason as Error).message === 'string');
  return isError ? (reason as Error) : failure('ABORT_ERR', 'the request was aborted');
}

const contexts = new Map<string, SecureContext>();

/**
 * The system's roots and `ca`, made once per CA: building a trust store of some 150 roots costs
 * milliseconds of CPU, too much to pay for every connection.
 */
function trusting(ca: string): SecureContext {
  let context = contexts.get(ca);
  if (!context) contexts.set(ca, (context = createSecureContext({ ca: [...rootCertificates, ca] })));
  return context;
}

/** What an idle connection reads into (it should read nothing). */
const IDLE_ROOM = Buffer.allocUnsafeSlow(1024);

/** Failures of a reused connection before any answer that mean "the server had closed it meanwhile". */
const STALE = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);

type Framing =
  | { readonly kind: 'length'; remaining: number }
  | { readonly kind: 'chunked'; state: 'size' | 'data' | 'data-end' | 'trailer'; line: string; remaining: number }
  | { readonly kind: 'close' }
  | { readonly kind: 'none' };

function failure(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

class Exchange {
  private readonly slabs = new SlabReader();
  private readonly socket: Socket;
  private readonly route: Route;
  private readonly key: string;
  /** The connection was kept from an earlier exchange. */
  private readonly reused: boolean;
  /** Reused after a HEAD: a head that does not parse may be that HEAD's stray body. */
  private readonly afterHead: boolean;
  /** A byte of the answer came in. */
  private answered = false;
  /** The connection may serve another request once this one's body is complete. */
  private keepAlive = true;
  /** How long the connection may wait idle for the next request (the server's hint, if it gave one). */
  private idleMs = IDLE_MS;
  private head: Buffer | undefined = Buffer.alloc(0);
  private body: Body | undefined;
  private framing: Framing = { kind: 'none' };
  private timer: NodeJS.Timeout | undefined;
  private finished = false;
  private readonly onAbort = (): void => {
    this.fail(abortReason(this.signal!));
  };

  constructor(
    private readonly url: URL,
    private readonly headers: Readonly<Record<string, string>>,
    private readonly timeouts: PlainTimeouts,
    private readonly signal: AbortSignal | undefined,
    private readonly options: PlainOptions,
    private readonly resolve: (answer: PlainAnswer) => void,
    private readonly reject: (err: Error) => void,
    mayReuse: boolean,
  ) {
    // Validated before a connection is taken or made.
    const request = requestHead(options.method ?? 'GET', url, headers);
    // A connection opened without the address check is not reused for a request that needs it.
    this.key = `${url.protocol}//${url.host}\n${options.ca ?? ''}${options.addresses ? `\n${options.addresses.tag}` : ''}`;
    const kept = mayReuse ? idleConnections.take(this.key) : undefined;
    // A reused connection is seen by the policy too (it may take the request's chain onto the internet).
    if (kept?.remoteAddress !== undefined && options.addresses) {
      try {
        options.addresses.filter([kept.remoteAddress]);
      } catch (err) {
        kept.destroy();
        throw err;
      }
    }
    this.reused = kept !== undefined;
    this.afterHead = kept !== undefined && routes.get(kept)?.afterHead === true;
    if (kept) {
      this.socket = kept;
      this.route = routes.get(kept)!;
      this.route.owner = this;
      this.arm(timeouts.firstByte, 'waiting for the response head from');
      kept.write(request);
    } else {
      this.route = { owner: this };
      this.socket = open(url, this.key, options, this.route);
      routes.set(this.socket, this.route);
      this.arm(timeouts.connect, 'connecting to');
      this.socket.once(url.protocol === 'https:' ? 'secureConnect' : 'connect', () => {
        if (this.route.owner !== this) return;
        this.arm(timeouts.firstByte, 'waiting for the response head from');
        this.socket.write(request);
      });
    }
    if (signal?.aborted) this.onAbort();
    else signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  /** The room last given for a socket read. */
  private lastRoom: Buffer | undefined;

  /** Room for the next socket read. */
  room(): Buffer {
    this.lastRoom = this.slabs.room();
    return this.lastRoom;
  }

  /**
   * The socket read `n` bytes into `buffer`: the last `room()`, or, for the first read on a kept
   * connection, the memory node took for it while it was idle (those bytes are copied into a slab).
   * Never false: pausing is `pause()`'s, which also stops the idle timer.
   */
  read(n: number, buffer: Buffer): boolean {
    if (this.finished) return true;
    this.answered = true;
    try {
      if (buffer !== this.lastRoom) buffer.copy(this.room(), 0, 0, n);
      this.lastRoom = undefined;
      // Body listeners run inside this call ('data' is emitted as the bytes are pushed).
      this.received(this.slabs.take(n));
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    }
    return true;
  }

  /** Bytes read from the socket, in a slab. */
  private received(bytes: Buffer): void {
    if (this.finished) return;
    if (this.head) {
      this.readHead(bytes);
      return;
    }
    this.timer?.refresh();
    this.readBody(bytes);
  }

  private readHead(bytes: Buffer): void {
    const before = this.head!.length;
    // Only what can still be head is copied (64 KiB at most); body bytes stay in their slab.
    const head = Buffer.concat([this.head!, bytes.subarray(0, MAX_HEAD + 4 - before)]);
    // The head ends at an empty line; a bare LF ends a line too (RFC 9112, 2.2).
    const crlf = head.indexOf('\r\n\r\n', Math.max(0, before - 3));
    const lf = head.indexOf('\n\n', Math.max(0, before - 1));
    const bare = lf >= 0 && (crlf < 0 || lf < crlf);
    const end = bare ? lf : crlf;
    if (end > MAX_HEAD || (end < 0 && head.length > MAX_HEAD)) {
      this.fail(failure('HPE_HEADER_OVERFLOW', 'the upstream sent a response head over 64 KiB'));
      return;
    }
    if (end < 0) {
      this.head = head;
      return;
    }
    const parsed = parseHead(head.subarray(0, end).toString('latin1'));
    const headLength = end + (bare ? 2 : 4);
    if (parsed instanceof Error) {
      this.fail(parsed);
      return;
    }
    const rest = bytes.subarray(headLength - before);
    if (parsed.statusCode < 200) {
      // An interim answer (100 Continue, 103 Early Hints): the real head follows.
      this.head = Buffer.alloc(0);
      if (rest.length > 0) this.readHead(rest);
      return;
    }
    this.head = undefined;
    if (parsed.http10 || /(?:^|,)\s*close\s*(?:,|$)/i.test(String(parsed.headers.connection ?? ''))) this.keepAlive = false;
    const hint = /(?:^|[,;\s])timeout\s*=\s*(\d+)/i.exec(String(parsed.headers['keep-alive'] ?? ''));
    if (hint) {
      this.idleMs = Math.min(IDLE_MS, Number(hint[1]) * 1000 - KEEP_ALIVE_MARGIN_MS);
      if (this.idleMs <= 0) this.keepAlive = false;
    }
    const framing = this.options.method === 'HEAD' ? NO_BODY : framingOf(parsed.statusCode, parsed.headers);
    if (framing instanceof Error) {
      this.fail(framing);
      return;
    }
    this.framing = framing;
    // A small answer (a manifest, a token, a refusal) is no download crowding the slabs.
    if (framing.kind === 'none' || (framing.kind === 'length' && framing.remaining <= SMALL_BODY)) this.slabs.notADownload();
    this.body = new Body(this);
    this.arm(this.timeouts.idle, 'receiving the body from');
    this.resolve({
      statusCode: parsed.statusCode,
      headers: parsed.headers,
      body: this.body,
      recycle: (chunk) => this.slabs.giveBack(chunk),
      drop: () => this.drop(),
    });
    if (this.framing.kind === 'none' || (this.framing.kind === 'length' && this.framing.remaining === 0)) {
      // Bytes after an empty body: not a connection to send another request on.
      if (rest.length > 0) this.keepAlive = false;
      this.finish();
    } else if (rest.length > 0) {
      this.readBody(rest);
    }
  }

  private readBody(bytes: Buffer): void {
    const framing = this.framing;
    if (framing.kind === 'close') {
      this.deliver(bytes);
    } else if (framing.kind === 'length') {
      const n = Math.min(framing.remaining, bytes.length);
      framing.remaining -= n;
      // More than the body: not a connection to send another request on.
      if (n < bytes.length) this.keepAlive = false;
      this.deliver(bytes.subarray(0, n));
      if (framing.remaining === 0) this.finish();
    } else if (framing.kind === 'chunked') {
      this.readChunked(framing, bytes);
    }
  }

  /** Transfer-Encoding: chunked: size lines, data, CRLF, ..., a 0 size, trailers, an empty line. */
  private readChunked(c: Extract<Framing, { kind: 'chunked' }>, bytes: Buffer): void {
    let i = 0;
    while (i < bytes.length && !this.finished) {
      if (c.state === 'data') {
        const n = Math.min(c.remaining, bytes.length - i);
        this.deliver(bytes.subarray(i, i + n));
        i += n;
        c.remaining -= n;
        if (c.remaining === 0) c.state = 'data-end';
        continue;
      }
      const nl = bytes.indexOf(10, i);
      c.line += bytes.toString('latin1', i, nl < 0 ? bytes.length : nl);
      if (c.line.length > MAX_CHUNK_LINE) {
        this.fail(failure('HPE_INVALID_CHUNK_SIZE', 'the upstream sent an overlong chunk line'));
        return;
      }
      if (nl < 0) return;
      i = nl + 1;
      const line = c.line.replace(/\r$/, '');
      c.line = '';
      if (c.state === 'data-end') {
        if (line !== '') {
          this.fail(failure('HPE_INVALID_CHUNK_SIZE', 'the upstream sent a chunk longer than its size'));
          return;
        }
        c.state = 'size';
      } else if (c.state === 'size') {
        const hex = /^([0-9a-fA-F]{1,13})[ \t]*(;.*)?$/.exec(line)?.[1];
        if (hex === undefined) {
          this.fail(failure('HPE_INVALID_CHUNK_SIZE', 'the upstream sent an invalid chunk size'));
          return;
        }
        c.remaining = Number.parseInt(hex, 16);
        c.state = c.remaining === 0 ? 'trailer' : 'data';
      } else if (line === '') {
        if (i < bytes.length) this.keepAlive = false;
        this.finish();
      }
    }
  }

  private deliver(view: Buffer): void {
    if (view.length === 0 || !this.body) return;
    if (!this.body.push(this.slabs.lend(view)) || this.body.readableLength >= this.bodyBuffer()) this.pause();
  }

  /** Body bytes buffered before the socket pauses. */
  bodyBuffer(): number {
    return this.options.bodyBuffer?.() ?? BODY_HIGH_WATER;
  }

  pause(): void {
    if (this.finished || this.socket.isPaused()) return;
    this.socket.pause();
    // Time spent waiting for the reader is not the upstream's silence.
    clearTimeout(this.timer);
  }

  resume(): void {
    if (this.finished || !this.socket.isPaused()) return;
    this.arm(this.timeouts.idle, 'receiving the body from');
    this.socket.resume();
  }

  /** The connection ended (or closed) before `finish`: the end of a close-framed body, else a failure. */
  ended(): void {
    if (this.finished) return;
    if (this.body && this.framing.kind === 'close') this.finish();
    else this.fail(failure('ECONNRESET', this.body ? 'the upstream closed the connection before the body ended' : 'the upstream closed the connection before answering'));
  }

  private finish(): void {
    this.finished = true;
    // After a HEAD, only once AFTER_HEAD_MS passed without a stray byte (IdleConnections).
    const reusable = this.keepAlive && this.framing.kind !== 'close' && !this.socket.destroyed;
    this.close(reusable);
    this.body?.push(null);
  }

  fail(err: Error): void {
    if (this.finished) return;
    this.finished = true;
    this.close(false);
    // A string for node's errors; a DOMException's (an AbortSignal.timeout's reason) is a number.
    const given: unknown = (err as { code?: unknown }).code;
    const code = typeof given === 'string' ? given : '';
    const stale = !this.answered && STALE.has(code);
    // Bytes a server sent with a HEAD answer later than AFTER_HEAD_MS, read as this answer's head.
    const strayBody = this.afterHead && !this.body && code.startsWith('HPE_');
    if (this.reused && (stale || strayBody) && !this.signal?.aborted) {
      // The kept connection had been closed by the server meanwhile: the same GET on a new one.
      try {
        new Exchange(this.url, this.headers, this.timeouts, this.signal, this.options, this.resolve, this.reject, false);
      } catch (retryErr) {
        this.reject(retryErr instanceof Error ? retryErr : new Error(String(retryErr)));
      }
      return;
    }
    if (this.body) this.body.destroy(err);
    else this.reject(err);
  }

  /** See PlainAnswer.drop. */
  drop(): Promise<void> {
    const body = this.body!;
    const framing = this.framing;
    const short = framing.kind === 'length' ? framing.remaining <= DROP_LIMIT : framing.kind === 'chunked';
    if (this.finished || !this.keepAlive || !short) {
      body.destroy();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      let size = 0;
      const done = (): void => {
        clearTimeout(timer);
        body.destroy();
        resolve();
      };
      const timer = setTimeout(done, DROP_MS);
      body.on('data', (chunk: Buffer) => {
        size += chunk.length;
        this.slabs.giveBack(chunk);
        if (size > DROP_LIMIT) done();
      });
      body.once('end', done);
      body.once('close', done);
    });
  }

  /** The reader went away: stop receiving. */
  abandon(): void {
    if (this.finished) return;
    this.finished = true;
    this.close(false);
  }

  /** Done with the connection: kept for the next request to this origin, or closed. */
  private close(keep: boolean): void {
    clearTimeout(this.timer);
    this.signal?.removeEventListener('abort', this.onAbort);
    this.route.owner = undefined;
    this.route.afterHead = this.options.method === 'HEAD';
    if (keep) idleConnections.put(this.key, this.socket, this.idleMs, this.options.method === 'HEAD' ? AFTER_HEAD_MS : 0);
    else this.socket.destroy();
    this.slabs.release();
  }

  private arm(ms: number, what: string): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.fail(failure('ETIMEDOUT', `timed out ${what} the upstream`)), ms);
    this.timer.unref();
  }
}

/** The body as a stream: reading it on resumes the socket, a full buffer pauses it. */
class Body extends Readable {
  constructor(private readonly exchange: Exchange) {
    super({ highWaterMark: BODY_HIGH_WATER });
    // The body may fail before its reader is attached (bytes follow the head at once): a reader
    // learns of it from `errored` or its iteration, and the process must not crash meanwhile.
    this.on('error', () => undefined);
  }

  override _read(): void {
    this.more();
  }

  /**
   * Readable asks for more (`_read`) whenever it holds less than BODY_HIGH_WATER, and not again until
   * a push: the exchange may want less buffered, so each read that takes bytes asks too.
   */
  override read(size?: number): Buffer | null {
    const chunk = super.read(size) as Buffer | null;
    this.more();
    return chunk;
  }

  private more(): void {
    if (this.readableLength < this.exchange.bodyBuffer()) this.exchange.resume();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    this.exchange.abandon();
    callback(err);
  }
}

function requestHead(method: 'GET' | 'HEAD', url: URL, headers: Readonly<Record<string, string>>): string {
  let head = `${method} ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || /[\r\n\0]/.test(value)) throw new TypeError(`invalid request header ${name}`);
    head += `${name}: ${value}\r\n`;
  }
  return `${head}\r\n`;
}

/** Headers that hold one value: a repeat (the same value, else refused above) is not joined. */
const SINGLE = new Set(['content-length', 'location']);

function parseHead(text: string): { statusCode: number; headers: IncomingHttpHeaders; http10: boolean } | Error {
  const lines = text.split(/\r?\n/);
  const status = /^HTTP\/1\.([01]) ([1-5]\d\d)(?: .*)?$/.exec(lines[0] ?? '');
  if (!status) return failure('HPE_INVALID_CONSTANT', 'the upstream did not answer in HTTP/1.1');
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).toLowerCase();
    if (colon <= 0 || !/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(name)) return failure('HPE_INVALID_HEADER_TOKEN', 'the upstream sent an invalid header line');
    const value = line.slice(colon + 1).trim();
    const previous = headers[name];
    if (previous !== undefined && name === 'content-length' && previous !== value) {
      return failure('HPE_UNEXPECTED_CONTENT_LENGTH', 'the upstream sent two different Content-Lengths');
    }
    if (previous !== undefined && name === 'location' && previous !== value) {
      return failure('HPE_INVALID_HEADER_TOKEN', 'the upstream sent two different Locations');
    }
    headers[name] = previous === undefined || SINGLE.has(name) ? value : `${previous}, ${value}`;
  }
  return { statusCode: Number(status[2]), headers: headers as IncomingHttpHeaders, http10: status[1] === '0' };
}

/** The answer to a HEAD, a 204 or a 304: a head only, whatever its Content-Length says. */
const NO_BODY: Framing = { kind: 'none' };

function framingOf(statusCode: number, headers: IncomingHttpHeaders): Framing | Error {
  if (statusCode === 204 || statusCode === 304) return NO_BODY;
  const coding = String(headers['transfer-encoding'] ?? '').trim().toLowerCase();
  if (coding !== '') {
    // Only chunked: a blob under any other coding (gzip, say) is not the bytes its digest names.
    if (coding !== 'chunked') return failure('HPE_INVALID_TRANSFER_ENCODING', `the upstream sent a body in an unsupported transfer coding (${coding})`);
    // Both framings at once is how requests get smuggled (RFC 9112, 6.3): trusted neither way.
    if (headers['content-length'] !== undefined) return failure('HPE_UNEXPECTED_CONTENT_LENGTH', 'the upstream sent both Transfer-Encoding and Content-Length');
    return { kind: 'chunked', state: 'size', line: '', remaining: 0 };
  }
  const length = headers['content-length'];
  if (length === undefined) return { kind: 'close' };
  if (!/^\d{1,15}$/.test(length)) return failure('HPE_INVALID_CONTENT_LENGTH', 'the upstream sent an invalid Content-Length');
  return { kind: 'length', remaining: Number(length) };
}
