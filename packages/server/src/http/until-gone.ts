import type { EventEmitter } from 'node:events';

/**
 * Waits on one thing at a time unless the client goes away first (its response emits 'close').
 * Racing each wait against one long-lived "gone" promise instead would add a reaction to that promise
 * per chunk, all kept until the response ends: tens of MiB per client over a large blob.
 */
export class UntilGone {
  private gone = false;
  private abandon: ((err: Error) => void) | undefined;

  constructor(res: EventEmitter) {
    res.once('close', () => {
      this.gone = true;
      this.abandon?.(new Error('client went away'));
    });
  }

  wait<T>(work: Promise<T>): Promise<T> {
    if (this.gone) return Promise.reject(new Error('client went away'));
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
}
