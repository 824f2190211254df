import type { IncomingMessage, ServerResponse } from 'node:http';
import { reasonPhrase } from './reason-phrase.js';

/** Why a request's framing is refused before any route sees it: its status, reason phrase and message. */
interface Refusal {
  readonly status: number;
  readonly reason: string;
  readonly message: string;
}

/**
 * What node's parser lets through and RFC 9112 refuses. A request with two Host lines (node keeps
 * the first: a challenge's realm was built from it) or, in HTTP/1.1, none (node's own answer to it
 * is a bare 400, without the OCI body: Wharf's listeners leave it to this check); a transfer coding
 * other than chunked (`gzip, chunked` put the still-compressed bytes into an upload); a
 * Transfer-Encoding in HTTP/1.0, which has none; an HTTP major version other than 1.
 */
export function framingRefusal(req: IncomingMessage): Refusal | undefined {
  if (req.httpVersionMajor !== 1) return { status: 505, reason: 'HTTP Version Not Supported', message: `HTTP/${req.httpVersion} is not supported; use HTTP/1.1` };
  let hosts = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) if (req.rawHeaders[i]!.toLowerCase() === 'host') hosts++;
  if (hosts > 1) return { status: 400, reason: 'Bad Request', message: 'the request has more than one Host header' };
  if (hosts === 0 && req.httpVersionMinor >= 1) return { status: 400, reason: 'Bad Request', message: 'an HTTP/1.1 request needs a Host header' };
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) {
    if (req.httpVersionMinor === 0) return { status: 400, reason: 'Bad Request', message: 'Transfer-Encoding is not part of HTTP/1.0' };
    const codings = te
      .split(',')
      .map((c) => c.trim().toLowerCase())
      .filter((c) => c !== '');
    if (codings.length !== 1 || codings[0] !== 'chunked') {
      return { status: 501, reason: 'Not Implemented', message: `Transfer-Encoding ${JSON.stringify(te)} is not supported; send the body as it is, or chunked` };
    }
  }
  return undefined;
}

/** Answers `refusal` with the OCI error body and closes the connection: what follows on it cannot be framed. */
export function refuseFraming(res: ServerResponse, refusal: Refusal, reqId: string): void {
  const body = `${JSON.stringify({ errors: [{ code: 'UNSUPPORTED', message: refusal.message, detail: null }] })}\n`;
  res.shouldKeepAlive = false;
  res.writeHead(refusal.status, reasonPhrase(refusal.reason, refusal.message), {
    'X-Request-Id': reqId,
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Docker-Distribution-API-Version': 'registry/2.0',
    Connection: 'close',
  });
  res.end(body);
}
