import type { Readable } from 'node:stream';

const SERVER_PACED = Symbol.for('wharf.serverPaced');

/**
 * Marks a body whose pauses are the server's (it holds bytes back until something it waits for is
 * done), not a client that stopped reading: the HTTP layer keeps the socket's idle timeout off while
 * it sends it.
 */
export function markServerPaced<T extends Readable>(body: T): T {
  (body as unknown as Record<symbol, boolean>)[SERVER_PACED] = true;
  return body;
}

export function isServerPaced(body: Readable): boolean {
  return (body as unknown as Record<symbol, boolean | undefined>)[SERVER_PACED] === true;
}
