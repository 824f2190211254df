import type { ServerResponse } from 'node:http';

/**
 * Aborted when the response closes before it has finished: its client went away (a password check
 * waiting for its turn is dropped then, see BcryptThread). One listener on this response alone.
 */
export function goneSignal(res: ServerResponse): AbortSignal {
  const controller = new AbortController();
  if (res.closed) {
    if (!res.writableFinished) controller.abort();
  } else {
    res.once('close', () => {
      if (!res.writableFinished) controller.abort();
    });
  }
  return controller.signal;
}
