import { randomUUID } from 'node:crypto';
import type { Context, Next } from 'koa';
import type { Logger } from 'pino';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * One log line per request, written when the response is done (streams included): method, path
 * (never the query string, which may carry credentials), status, bytes, duration, request id.
 */
export function requestLog(logger: Logger) {
  return async function requestLogMiddleware(ctx: Context, next: Next): Promise<void> {
    const started = performance.now();
    const given = ctx.get('X-Request-Id');
    const reqId = REQUEST_ID.test(given) ? given : randomUUID();
    ctx.state.reqId = reqId;
    ctx.set('X-Request-Id', reqId);
    ctx.res.once('close', () => {
      const fields = {
        reqId,
        method: ctx.method,
        path: ctx.path,
        // 499, as nginx logs it: the client went away before a response was sent.
        status: ctx.res.headersSent ? ctx.res.statusCode : 499,
        bytesOut: ctx.res.getHeader('content-length') !== undefined ? Number(ctx.res.getHeader('content-length')) : undefined,
        durationMs: Math.round((performance.now() - started) * 10) / 10,
        ...(ctx.state.errorCode ? { error: ctx.state.errorCode } : {}),
        ...(ctx.res.writableFinished ? {} : { aborted: true }),
      };
      if (ctx.res.statusCode >= 500) logger.error(fields, 'request');
      else logger.info(fields, 'request');
    });
    await next();
  };
}
