import type { ServerResponse } from 'node:http';
import { roomForOneMoreListener } from './listener-room.js';

/** One controller per response, shared by every caller of goneSignal and abandon. */
const controllers = new WeakMap<ServerResponse, AbortController>();

function controllerOf(res: ServerResponse): AbortController {
  let controller = controllers.get(res);
  if (controller) return controller;
  const created = new AbortController();
  controller = created;
  controllers.set(res, created);
  if (res.closed) {
    if (!res.writableFinished) created.abort();
  } else {
    roomForOneMoreListener(res);
    res.once('close', () => {
      if (!res.writableFinished) created.abort();
    });
  }
  return created;
}

/**
 * Aborted when nobody waits for the response's work any more: its client went away before it had
 * finished, or the server answered for it already (request_timeout's 503, see `abandon`). A password
 * check waiting for its turn is dropped then (see BcryptThread). One listener per response.
 */
export function goneSignal(res: ServerResponse): AbortSignal {
  return controllerOf(res).signal;
}

/** The response was answered without its handler's work (a timeout): what waits on goneSignal stops. */
export function abandon(res: ServerResponse): void {
  controllerOf(res).abort();
}
