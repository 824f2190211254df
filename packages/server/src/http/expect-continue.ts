import type { IncomingMessage, ServerResponse } from 'node:http';

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
    req.off('newListener', onListener);
    req.off('resume', send);
    if (!res.headersSent && !res.writableEnded && !res.destroyed) res.writeContinue();
  };
  const onListener = (event: string | symbol) => {
    if (event === 'data' || event === 'readable') send();
  };
  req.on('newListener', onListener);
  req.once('resume', send);
}
