import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/** The requests of one connection that have started and not finished, and those waiting to start. */
interface Connection {
  running: number;
  unsafeRunning: number;
  readonly waiting: { readonly req: IncomingMessage; readonly res: ServerResponse }[];
}

/**
 * Requests one connection may have waiting: node stops reading a connection whose answers pile up,
 * but requests held back here have no answer yet, and a slow unsafe request followed by a flood of
 * tiny pipelined ones grew the heap by hundreds of MiB. A connection past this is cut (clients that
 * pipeline at all send a few).
 */
const MAX_WAITING = 32;

/** When each request held back behind another of its connection arrived (performance.now()). */
const arrivals = new WeakMap<IncomingMessage, number>();

/** When `req` arrived, if it waited behind another request of its connection; undefined if it started at once. */
export function arrivedAt(req: IncomingMessage): number | undefined {
  return arrivals.get(req);
}

function isSafe(method: string | undefined): boolean {
  return method === 'GET' || method === 'HEAD' || method === 'OPTIONS';
}

/**
 * Runs pipelined requests as RFC 9112 (9.3.2) allows: in parallel only while they are all safe. Node
 * hands `listener` every request of a connection as it is parsed; a GET pipelined behind a blob
 * POST ran before the POST had stored the blob, and answered 404 for the blob the POST then reported
 * created. Now a request waits for every earlier unsafe one of its connection, and an unsafe one
 * for every earlier request. A request alone on its connection (what clients send) starts at once.
 */
export function inPipelinedOrder(listener: RequestListener): RequestListener {
  const connections = new WeakMap<Socket, Connection>();
  const mayStart = (c: Connection, req: IncomingMessage): boolean => (isSafe(req.method) ? c.unsafeRunning === 0 : c.running === 0);
  const start = (c: Connection, req: IncomingMessage, res: ServerResponse): void => {
    const unsafe = !isSafe(req.method);
    c.running++;
    if (unsafe) c.unsafeRunning++;
    res.once('close', () => {
      c.running--;
      if (unsafe) c.unsafeRunning--;
      while (c.waiting.length > 0 && mayStart(c, c.waiting[0]!.req)) {
        const next = c.waiting.shift()!;
        // Its connection gone (the client left): it is not run, so no unsafe request runs for nobody.
        if (next.req.socket.destroyed) continue;
        start(c, next.req, next.res);
      }
    });
    listener(req, res);
  };
  return (req, res) => {
    const socket = req.socket;
    let c = connections.get(socket);
    if (!c) {
      c = { running: 0, unsafeRunning: 0, waiting: [] };
      connections.set(socket, c);
    }
    if (c.waiting.length === 0 && mayStart(c, req)) start(c, req, res);
    else if (c.waiting.length < MAX_WAITING) {
      // Its wait is part of the time its client sees, and of its logged duration.
      arrivals.set(req, performance.now());
      c.waiting.push({ req, res });
    }
    else socket.destroy();
  };
}
