/**
 * Emitted by a body with `true` when it starts waiting for the server's sake (a range waiting for
 * the whole blob's digest, a reader waiting for a download's next bytes), and `false` when that wait
 * ends: the HTTP layer keeps the socket's idle timeout off meanwhile, since the pause is not a client
 * that stopped reading.
 */
export const SERVER_WAIT = 'wharf:server-wait';
