import { maxHeaderSize, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { reasonPhrase } from './reason-phrase.js';

/**
 * An OCI error written straight to a socket, for refusals made before any request object exists:
 * `{"errors":[{code,message,detail:null}]}` with `Connection: close`; to a HEAD (`head`), its
 * headers alone (RFC 9110 9.3.2: no content), the message still in the status line.
 */
export function rawErrorResponse(status: number, reason: string, code: string, message: string, head = false): string {
  const body = `${JSON.stringify({ errors: [{ code, message, detail: null }] })}\n`;
  return [
    `HTTP/1.1 ${status} ${reasonPhrase(reason, message)}`,
    'Content-Type: application/json; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Docker-Distribution-API-Version: registry/2.0',
    'Connection: close',
    '',
    head ? '' : body,
  ].join('\r\n');
}

/**
 * Whether a request node's parser refused was a HEAD, as far as the bytes it hands over with the
 * error show (the packet it was parsing, which starts the request unless its head came in pieces).
 */
function refusedHead(err: NodeJS.ErrnoException): boolean {
  const raw = (err as { rawPacket?: unknown }).rawPacket;
  return Buffer.isBuffer(raw) && raw.subarray(0, 5).toString('latin1') === 'HEAD ';
}

/** How long a refused connection's remaining bytes are read and dropped before it is closed. */
const REFUSAL_LINGER_MS = 2_000;

/** What a request node's HTTP parser refused gets, by the parser's error code. */
function refusalOf(code: string | undefined, maxHeaderSize: number, head: boolean): string {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return rawErrorResponse(431, 'Request Header Fields Too Large', 'TOO_LARGE', `the request's head is larger than the ${maxHeaderSize} bytes this server reads`, head);
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return rawErrorResponse(413, 'Payload Too Large', 'TOO_LARGE', "the request body's chunk extensions are too large", head);
    case 'HPE_INVALID_METHOD':
      // RFC 9110 15.6.2: a method the server does not recognize is a 501, not the client's malformed request.
      return rawErrorResponse(501, 'Not Implemented', 'UNSUPPORTED', 'the request method is not one this server knows (a registry takes GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS)', head);
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return rawErrorResponse(408, 'Request Timeout', 'REQUEST_TIMEOUT', "the request's headers did not arrive within read_header_timeout", head);
    default:
      return rawErrorResponse(400, 'Bad Request', 'UNSUPPORTED', 'malformed HTTP request (its method, framing or headers)', head);
  }
}

/**
 * Requests node refuses before the app sees them get the OCI error body too, with node's own
 * statuses: a head over the header size limit (431), a malformed one, a bad Content-Length or
 * Transfer-Encoding (400), a head that took too long (408); an unknown method gets 501. Node's default answers
 * these with a bare status line. As node does, nothing is written once an answer to the request has
 * started going out, and the connection is closed. CONNECT, which node drops without a word, gets a 405.
 */
export function answerRefusedRequests(server: Server): void {
  // The parser stays in its error state: more bytes from the client raise the error again.
  const answered = new WeakSet<Duplex>();
  const headLimit = (server as Server & { maxHeaderSize?: number }).maxHeaderSize ?? maxHeaderSize;
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (answered.has(socket)) return;
    answered.add(socket);
    const inFlight = (socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
      socket.destroy();
      return;
    }
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' || inFlight) {
      // A client too slow with its head (slow-loris) gets no more of this connection's time. A body
      // broken mid-request has a response object whose route may still write to the socket: it must
      // find it destroyed (a write after end() would be an 'error' event nobody listens to).
      socket.write(refusalOf(err.code, headLimit, refusedHead(err)));
      socket.destroy();
      return;
    }
    // The answer, then our side closed; what the client still sends (the rest of a huge head) is read
    // and dropped for a moment, or the kernel resets the connection and the answer with it.
    socket.on('error', () => socket.destroy());
    socket.end(refusalOf(err.code, headLimit, refusedHead(err)));
    socket.resume();
    socket.once('end', () => socket.destroy());
    setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS).unref();
  });
  server.on('connect', (_req: unknown, socket: Duplex) => {
    socket.end(rawErrorResponse(405, 'Method Not Allowed', 'UNSUPPORTED', 'CONNECT: this is a registry, not a forward proxy'));
  });
}
