import type { EventEmitter } from 'node:events';

/** Callbacks waiting for each connection's close: one listener per connection, however many wait. */
const waiting = new WeakMap<EventEmitter, Set<() => void>>();

/**
 * Calls `fn` once when `connection` closes; the returned function cancels that. Every request on a
 * connection may wait for its close (its log line, its blob send): pipelined requests would otherwise
 * add a listener each to the same socket, past node's warning at ten.
 */
export function onConnectionClose(connection: EventEmitter & { readonly destroyed?: boolean }, fn: () => void): () => void {
  // Closed already (while the route waited for an upstream, say): no 'close' is coming.
  if (connection.destroyed === true && !waiting.has(connection)) {
    fn();
    return () => undefined;
  }
  let callbacks = waiting.get(connection);
  if (!callbacks) {
    const set = new Set<() => void>();
    callbacks = set;
    waiting.set(connection, set);
    connection.once('close', () => {
      waiting.delete(connection);
      for (const callback of set) callback();
      set.clear();
    });
  }
  callbacks.add(fn);
  const set = callbacks;
  return () => void set.delete(fn);
}
