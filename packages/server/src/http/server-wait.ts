import type { Socket } from 'node:net';
import type { Context, Next } from 'koa';

/** Holds on each socket whose idle timeout is off: the timeout it had, and how many hold it off. */
const holds = new WeakMap<Socket, { count: number; readonly idle: number }>();

/**
 * Turns the socket's idle timeout (`idle_timeout`) off until the returned release is called: the
 * socket is quiet because the server is waiting, not the client. Holds nest (a request waiting for
 * the proxy, then its body for a fill): the timeout comes back with the last release, as it was.
 */
export function holdIdleTimeout(socket: Socket): () => void {
  let hold = holds.get(socket);
  if (!hold) {
    if (!socket.timeout) return () => undefined;
    hold = { count: 0, idle: socket.timeout };
    holds.set(socket, hold);
    socket.setTimeout(0);
  }
  hold.count += 1;
  const held = hold;
  let released = false;
  return () => {
    if (released) return;
    released = true;
    held.count -= 1;
    if (held.count > 0) return;
    holds.delete(socket);
    if (!socket.destroyed) socket.setTimeout(held.idle);
  };
}

/**
 * A GET or HEAD has nothing more to receive: until its response starts, any wait is the server's
 * (an upstream being asked through the proxy, a download whose size the upstream did not say), not
 * a client that stopped moving bytes, which is what the socket's idle timeout (`idle_timeout`) is
 * for. So that timeout is off until the response starts; `request_timeout` and the upstream's own
 * timeouts bound the wait. Without this, a proxied manifest that took `idle_timeout` to come cost the
 * client its connection, with no answer at all.
 */
export function serverSideWait() {
  return async function serverSideWaitMiddleware(ctx: Context, next: Next): Promise<void> {
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') return next();
    const release = holdIdleTimeout(ctx.req.socket);
    try {
      await next();
    } finally {
      // Before Koa writes the response (or just after a stream's head went out): from here on the
      // client is the one to keep bytes moving.
      release();
    }
  };
}
