import type { EventEmitter } from 'node:events';
import { onConnectionClose } from './connection-close.js';

/** What a connection tells: that it has closed, and whether it has already. */
interface Connection extends EventEmitter {
  readonly destroyed: boolean;
}

/**
 * Waits on one thing at a time unless the client goes away first: its response emits 'close', or
 * its connection does. The connection is watched too since a response queued behind another on the
 * same connection (pipelined GETs) is told nothing when the connection closes: its writes and its end
 * would wait for ever, each holding a blob's descriptor. Racing each wait against one long-lived
 * "gone" promise instead would add a reaction to that promise per chunk, all kept until the response
 * ends: tens of MiB per client over a large blob. `dispose` lets go of the listeners (a kept-alive
 * connection serves many responses).
 */
export class UntilGone {
  private gone: boolean;
  private abandon: ((err: Error) => void) | undefined;
  private readonly forget: (() => void) | undefined;
  private readonly onGone = (): void => {
    this.gone = true;
    this.abandon?.(new Error('client went away'));
  };

  constructor(
    private readonly res: EventEmitter & { readonly closed?: boolean },
    connection?: Connection,
  ) {
    this.gone = res.closed === true || connection?.destroyed === true;
    res.once('close', this.onGone);
    this.forget = connection ? onConnectionClose(connection, this.onGone) : undefined;
  }

  wait<T>(work: Promise<T>): Promise<T> {
    if (this.gone) {
      // Nobody waits for it any more: its failure (a fill failing later) must not go unhandled.
      work.catch(() => undefined);
      return Promise.reject(new Error('client went away'));
    }
    return new Promise<T>((resolve, reject) => {
      this.abandon = reject;
      work.then(
        (value) => {
          this.abandon = undefined;
          resolve(value);
        },
        (err: unknown) => {
          this.abandon = undefined;
          reject(err);
        },
      );
    });
  }

  dispose(): void {
    this.res.removeListener('close', this.onGone);
    this.forget?.();
  }
}
