import { processLimit } from '@wharf/registry-core';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { roomForOneMoreListener } from './listener-room.js';

/** Descriptors kept out of the cap: blob files, the database, upstream sockets, log output. */
const RESERVED_FDS = 512;

/**
 * How many client connections may be open at once: `configured`, lowered to fit the process's limit
 * of open files (`limit`, read from /proc where undefined): less RESERVED_FDS, halved, since a
 * connection sending a blob holds the blob's file too. Past that limit every open(2) fails: the
 * pulls of every client, not only the new connections.
 */
export function connectionLimit(configured: number, limit = openFilesLimit()): number {
  if (limit === undefined) return configured;
  return Math.max(1, Math.min(configured, Math.floor((limit - RESERVED_FDS) / 2)));
}

/** The soft limit on open files (node raises it to the hard limit at start); undefined where unknown. */
function openFilesLimit(): number | undefined {
  return processLimit('Max open files');
}

export interface ConnectionCap {
  /** Connections open now. */
  readonly open: number;
  /** Connections idle between two requests now (for tests). */
  readonly idle: number;
}

/** The connection a response answers on, as its request started (a property: no closure per request). */
const SOCKET = Symbol('wharf.connection');

/** The TCP connection under a request's socket: itself, or the one a TLS socket wraps (node's `_parent`). */
function tcpOf(socket: Socket): Socket {
  return (socket as Socket & { _parent?: Socket | null })._parent ?? socket;
}

/**
 * At most `max` client connections at once. Each idle keep-alive connection holds about 12 KiB of
 * memory and a descriptor until `idle_timeout`: without a bound, a client that opened 12,000 took
 * the server from 84 to 220 MiB (173 with the default bound), and at the open files limit every
 * pull failed. Past seven eighths
 * of `max`, each new connection closes the one idle longest between two requests (its client
 * connects again when it next needs one, as after `idle_timeout`); a connection that has not sent
 * its first request, or is serving one, is never closed here; one that still sends the body of a
 * request already answered only at `max`, oldest first, when none is idle. Then, at `max`, the
 * connection that has waited longest without a whole first request (slow-loris clients: a header line
 * now and then, or a TLS handshake never finished) goes, rather than the new one: before, one client
 * holding `max` such connections open kept every other client out for as long as it cared to
 * (`read_header_timeout` ends each, and it connects again). Past `max`, with none of those, the new
 * connection is closed at once and `refused` is called.
 */
export function capConnections(server: Server, max: number, refused: (open: number) => void): ConnectionCap {
  const soft = max - Math.floor(max / 8);
  let open = 0;
  /** Sockets between two requests, longest idle first (a Map keeps insertion order). */
  const idle = new Map<Socket, true>();
  /**
   * Sockets whose request was answered while its body still arrives (node reads the rest), oldest
   * first: not idle, since closing one cuts a client reading its answer, but not served either, so
   * at the cap one goes rather than a new connection being refused (a client could otherwise hold
   * its place for good, a chunk now and then, without signing in).
   */
  const draining = new Map<Socket, true>();
  /** TCP connections that have not started a request yet, oldest first. */
  const waiting = new Map<Socket, true>();
  const inFlight = new WeakMap<Socket, number>();
  /** The request answered before its body ended, per socket, until the body does (see `answered`). */
  const bodyPending = new WeakMap<Socket, () => void>();
  const watched = new WeakSet<Socket>();

  server.on('connection', (socket: Socket) => {
    open += 1;
    socket.once('close', () => {
      open -= 1;
      waiting.delete(socket);
    });
    if (open > soft) {
      const longest = idle.keys().next();
      const oldestDraining = draining.keys().next();
      const oldestWaiting = waiting.keys().next();
      if (!longest.done) {
        idle.delete(longest.value);
        longest.value.destroy();
      } else if (open > max && !oldestDraining.done) {
        draining.delete(oldestDraining.value);
        oldestDraining.value.destroy();
      } else if (open > max && !oldestWaiting.done) {
        waiting.delete(oldestWaiting.value);
        oldestWaiting.value.destroy();
      } else if (open > max) {
        // Here rather than node's maxConnections, which refuses a connection even when one is idle.
        socket.destroy();
        refused(open);
        return;
      }
    }
    waiting.set(socket, true);
  });

  /** A request's answer and body are both done: its socket is idle once no other request is in flight. */
  const finished = (socket: Socket): void => {
    draining.delete(socket);
    const left = (inFlight.get(socket) ?? 1) - 1;
    inFlight.set(socket, left);
    if (left === 0 && !socket.destroyed) idle.set(socket, true);
  };
  /**
   * A response closed (`this`). One function for all of them, and listeners on the request only
   * when its body had not ended: a closure and three listeners per request took 17% of the
   * manifest GETs a second (13,700 against 16,600).
   */
  function answered(this: ServerResponse & { [SOCKET]?: Socket }): void {
    const req = this.req;
    // Its own, as the request started: node may have let go of req.socket by now.
    const socket = this[SOCKET];
    if (socket === undefined) return;
    if (req.complete || req.readableEnded || req.destroyed || socket.destroyed) {
      finished(socket);
      return;
    }
    // Answered before its body ended (a 401 or 404 to an upload): node reads the rest, and the client
    // still sends it. Draining until it does (unless other requests are in flight).
    if ((inFlight.get(socket) ?? 0) <= 1) draining.set(socket, true);
    let ended = false;
    const bodyDone = (): void => {
      if (ended) return;
      ended = true;
      req.off('end', bodyDone);
      req.off('close', bodyDone);
      if (bodyPending.get(socket) === bodyDone) bodyPending.delete(socket);
      finished(socket);
    };
    req.once('end', bodyDone);
    req.once('close', bodyDone);
    bodyPending.set(socket, bodyDone);
  }

  // Requests reach the handler through these three events (http/listeners.ts); each one is counted.
  const started = (req: IncomingMessage, res: ServerResponse): void => {
    // req.socket: the TLS socket over an HTTPS connection, the one a destroy must close.
    const socket = req.socket;
    // node parses a connection's next request only once the one before has all come in: a body a
    // handler paused and never read on ended without its 'end', and its request is done.
    bodyPending.get(socket)?.();
    waiting.delete(tcpOf(socket));
    idle.delete(socket);
    inFlight.set(socket, (inFlight.get(socket) ?? 0) + 1);
    if (!watched.has(socket)) {
      watched.add(socket);
      socket.once('close', () => {
        idle.delete(socket);
        draining.delete(socket);
      });
    }
    roomForOneMoreListener(res);
    (res as ServerResponse & { [SOCKET]?: Socket })[SOCKET] = socket;
    res.on('close', answered);
  };
  server.on('request', started);
  server.on('checkContinue', started);
  server.on('checkExpectation', started);

  return {
    get open() {
      return open;
    },
    get idle() {
      return idle.size;
    },
  };
}
