import { RegistryError } from '@wharf/registry-core';
import type { Context, Next } from 'koa';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Requests whose 100 Continue has not gone out: what sends it. */
const pending = new WeakMap<IncomingMessage, () => void>();

/**
 * `Expect: 100-continue`: the client waits for `100 Continue` before it sends the body. Node sends it
 * as soon as the headers arrive, before anything looked at the request: a push refused for want of
 * credentials or rights (401, 403), to a name that is read-only (405) or not valid (400), had its
 * whole body sent for nothing (curl, Go clients with ExpectContinueTimeout). Here the 100 goes out
 * when something starts reading the body (a 'data' or 'readable' listener, or a resume): after
 * authentication and routing. Answered without a read, the client never sends the body, and node
 * closes the connection after the answer (`Connection: close`), since the body is not on the wire.
 */
export function continueWhenRead(req: IncomingMessage, res: ServerResponse): void {
  let done = false;
  const send = () => {
    if (done) return;
    done = true;
    pending.delete(req);
    req.off('newListener', onListener);
    req.off('resume', send);
    if (!res.headersSent && !res.writableEnded && !res.destroyed) res.writeContinue();
  };
  pending.set(req, send);
  const onListener = (event: string | symbol) => {
    if (event === 'data' || event === 'readable') send();
  };
  req.on('newListener', onListener);
  req.once('resume', send);
}

/**
 * Before answering a request whose body was not read: a client may send its body without waiting
 * for the 100 (RFC 9110 10.1.1 allows it). When some of it has arrived, the 100 goes out first, so
 * that the connection stays open and the rest is read and dropped, as for any unread body, instead
 * of being cut under a client still writing (which would then miss the answer).
 */
export function continueIfBodyArrived(req: IncomingMessage): void {
  if (req.readableLength > 0 || req.complete) pending.get(req)?.();
}

/**
 * Refuses a request whose `Expect` is anything but 100-continue, the only expectation HTTP/1.1
 * defines, with 417 (RFC 9110 10.1.1), before its body is read.
 */
export async function refuseUnknownExpectation(ctx: Context, next: Next): Promise<void> {
  const expect = ctx.get('expect');
  if (expect !== '' && expect.toLowerCase() !== '100-continue') {
    throw new RegistryError('EXPECTATION_FAILED', `Expect: ${expect.slice(0, 100)} is not supported; only 100-continue is`, undefined);
  }
  await next();
}
