import { describe, expect, test } from '@jest/globals';
import { EventEmitter } from 'node:events';
import type { ServerResponse } from 'node:http';
import { abandon, goneSignal } from '../../src/http/gone-signal.js';

/** What goneSignal reads of a response: an emitter of 'close', and whether it finished. */
function response(): ServerResponse & EventEmitter {
  return Object.assign(new EventEmitter(), { closed: false, writableFinished: false }) as unknown as ServerResponse & EventEmitter;
}

describe('goneSignal', () => {
  test('aborted when the response closes unfinished, or is abandoned; one controller per response', () => {
    const cut = response();
    const signal = goneSignal(cut);
    expect(goneSignal(cut)).toBe(signal);
    cut.emit('close');
    expect(signal.aborted).toBe(true);

    const answered = response();
    const kept = goneSignal(answered);
    (answered as { writableFinished: boolean }).writableFinished = true;
    answered.emit('close');
    expect(kept.aborted).toBe(false);

    const timedOut = response();
    const waiting = goneSignal(timedOut);
    abandon(timedOut);
    expect(waiting.aborted).toBe(true);
  });

  test("its own 'close' listener is counted: the response still has room for node's ten of others (an export's pipeline)", () => {
    // Before: an administrator's export (a Basic password checked, then a streamed tarball) printed
    // "MaxListenersExceededWarning: ... 12 close listeners added to [ServerResponse]" at every request.
    const res = response();
    const before = res.getMaxListeners();
    goneSignal(res);
    for (let i = 0; i < before; i++) res.on('close', () => undefined);
    expect(res.listenerCount('close')).toBe(before + 1);
    expect(res.listenerCount('close')).toBeLessThanOrEqual(res.getMaxListeners());
  });
});
