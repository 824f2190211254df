import { describe, expect, test } from '@jest/globals';
import { PerformanceObserver, constants } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { exposedGc, fullGcSoon } from '../src/exposed-gc.js';

describe('fullGcSoon', () => {
  test('asked many times before it runs, collects once', async () => {
    expect(exposedGc()).toBeDefined();
    let major = 0;
    const observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) if ((entry as unknown as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) major += 1;
    });
    observer.observe({ entryTypes: ['gc'] });
    try {
      await sleep(50);
      major = 0;
      // As sixteen sends cut at once each let go of their buffers.
      for (let i = 0; i < 16; i++) fullGcSoon();
      await sleep(200);
      expect(major).toBeGreaterThanOrEqual(1);
      expect(major).toBeLessThanOrEqual(2);
      // And once it has run, the next request collects again.
      major = 0;
      fullGcSoon();
      await sleep(200);
      expect(major).toBeGreaterThanOrEqual(1);
    } finally {
      observer.disconnect();
    }
  });
});
