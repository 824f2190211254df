import { describe, expect, test } from '@jest/globals';
import { EventEmitter } from 'node:events';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { UntilGone } from '../../src/http/until-gone.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

describe('UntilGone', () => {
  test('passes through what it waits on, value or error', async () => {
    const until = new UntilGone(new EventEmitter());
    expect(await until.wait(Promise.resolve(7))).toBe(7);
    await expect(until.wait(Promise.reject(new Error('disk')))).rejects.toThrow('disk');
  });

  test('a wait in progress fails when the client goes away, and so does every later one', async () => {
    const res = new EventEmitter();
    const until = new UntilGone(res);
    const pending = until.wait(new Promise<void>(() => undefined));
    res.emit('close');
    await expect(pending).rejects.toThrow('client went away');
    await expect(until.wait(Promise.resolve(1))).rejects.toThrow('client went away');
  });

  test('a long send keeps nothing per wait (a 64 GiB blob in 64 KiB chunks is a million of them)', async () => {
    const res = new EventEmitter();
    const until = new UntilGone(res);
    const heap = (): number => {
      gc();
      return process.memoryUsage().heapUsed;
    };
    const before = heap();
    for (let i = 0; i < 200_000; i++) await until.wait(Promise.resolve(i));
    // Racing each wait against one "gone" promise keeps a reaction per wait: over 20 MiB here.
    expect(heap() - before).toBeLessThan(4 * 1024 * 1024);
    res.emit('close');
  });
});
