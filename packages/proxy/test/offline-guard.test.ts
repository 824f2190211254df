import { describe, expect, jest, test } from '@jest/globals';
import type { Digest } from '@wharf/registry-core';
import { OfflineGuard } from '../src/offline-guard.js';
import { UpstreamError, type Upstream, type UpstreamHead } from '../src/upstream.js';

/** An upstream whose HEADs answer as the test says: per reference, a promise it settles. */
class Scripted implements Upstream {
  readonly name = 'up';
  readonly answers = new Map<string, (signal: AbortSignal | undefined) => Promise<UpstreamHead | undefined>>();
  head(_repo: string, ref: string, signal?: AbortSignal) {
    return this.answers.get(ref)!(signal);
  }
  async manifest() { return undefined; }
  async blob() { return undefined; }
  async statBlob() { return undefined; }
  async tags() { return undefined; }
  async referrers() { return undefined; }
}

/** Never answers: rejects with the signal's reason once it is aborted. */
const hang = (signal: AbortSignal | undefined): Promise<never> => new Promise((_, reject) => signal?.addEventListener('abort', () => reject(signal.reason as Error), { once: true }));

describe('OfflineGuard', () => {
  test('outage_backoff = 0s: an upstream that did not answer starts no period, and no log line says one did', async () => {
    const up = new Scripted();
    const warnings: string[] = [];
    const guard = new OfflineGuard(up, 0, 5_000, { warn: (_fields, message) => void warnings.push(message) });
    up.answers.set('down', async () => {
      throw new UpstreamError('unreachable', 'upstream up is unreachable (ECONNRESET)');
    });
    await expect(guard.head('a/app', 'down')).rejects.toMatchObject({ failure: 'unreachable' });
    expect(guard.isOffline).toBe(false);
    expect(warnings).toEqual([]);
  });

  test("a request whose short deadline passes after another request's answer ended the outage gets its 504, not a TypeError (500)", async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'queueMicrotask', 'setImmediate'] });
    try {
      const up = new Scripted();
      const guard = new OfflineGuard(up, 30_000, 5_000);
      up.answers.set('down', async () => {
        throw new UpstreamError('unreachable', 'upstream up is unreachable (ECONNRESET)');
      });
      await expect(guard.head('a/app', 'down')).rejects.toMatchObject({ failure: 'unreachable' });
      expect(guard.isOffline).toBe(true);

      // A request asked while the upstream is down: 5 s to be answered.
      up.answers.set('slow', hang);
      const slow = guard.head('a/app', 'slow');
      slow.catch(() => undefined);
      // Another one is answered meanwhile: the upstream is back, the period over.
      up.answers.set('fine', async () => ({ digest: `sha256:${'a'.repeat(64)}` as Digest, mediaType: 'application/vnd.oci.image.manifest.v1+json' }));
      await jest.advanceTimersByTimeAsync(1_000);
      await guard.head('a/app', 'fine');
      expect(guard.isOffline).toBe(false);

      // Before: reading the ended period's start threw "Cannot read properties of undefined".
      await jest.advanceTimersByTimeAsync(4_000);
      await expect(slow).rejects.toBeInstanceOf(UpstreamError);
      await expect(slow).rejects.toMatchObject({ failure: 'timeout', message: 'upstream up timed out (no answer within 5 s; not answering for 5 s)' });
      // Its deadline was the short one: it does not start a new period by itself.
      expect(guard.isOffline).toBe(false);
    } finally {
      jest.useRealTimers();
    }
  });
});
