import type { EventEmitter } from 'node:events';

/**
 * Raises `emitter`'s listener limit by one for a listener about to be added, so that it does not count
 * against the room others need: a streamed answer (an export's pipeline) adds 'close' listeners up to
 * node's limit, and one more per response printed a memory leak warning at every such request. An
 * emitter without a limit (0) keeps none.
 */
export function roomForOneMoreListener(emitter: EventEmitter): void {
  const max = emitter.getMaxListeners();
  if (max !== 0) emitter.setMaxListeners(max + 1);
}
