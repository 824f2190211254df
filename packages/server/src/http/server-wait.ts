import type { Context, Next } from 'koa';

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
    const socket = ctx.req.socket;
    const idle = socket.timeout;
    if ((ctx.method !== 'GET' && ctx.method !== 'HEAD') || !idle) return next();
    socket.setTimeout(0);
    try {
      await next();
    } finally {
      // Before Koa writes the response (or just after a stream's head went out): from here on the
      // client is the one to keep bytes moving.
      if (!socket.destroyed) socket.setTimeout(idle);
    }
  };
}
