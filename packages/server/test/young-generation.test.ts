import { describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { holdYoungGeneration } from '../src/young-generation.js';

const module = fileURLToPath(new URL('../dist/young-generation.js', import.meta.url));

/** The young generation's size after a burst of short-lived allocations, in a fresh node. */
function newSpaceAfterLoad(flags: string[], hold: boolean): number {
  const script = `
    import { getHeapSpaceStatistics } from 'node:v8';
    import { holdYoungGeneration } from ${JSON.stringify(module)};
    if (${hold}) holdYoungGeneration();
    let keep = [];
    for (let i = 0; i < 3e6; i++) { keep.push({ a: i, b: 'x' + i }); if (keep.length > 2e5) keep = []; }
    process.stdout.write(String(getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size));
  `;
  const r = spawnSync(process.execPath, [...flags, '--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
  expect(r.stderr).toBe('');
  return Number(r.stdout);
}

const MiB = 1024 * 1024;

describe('holdYoungGeneration', () => {
  test('without --max-semi-space-size the young generation stays at its initial size under load', () => {
    const grown = newSpaceAfterLoad([], false);
    const held = newSpaceAfterLoad([], true);
    expect(grown).toBeGreaterThan(8 * MiB);
    expect(held).toBeLessThanOrEqual(grown);
    // V8 12 and later declare a minimum growth factor of 2 and may not hold it (see the module).
    if (Number(process.versions.v8.split('.')[0]) < 12) expect(held).toBeLessThanOrEqual(2 * MiB);
  });

  test('leaves the young generation alone when the operator chose its size', () => {
    expect(holdYoungGeneration(['--max-semi-space-size=8'], '')).toBe(false);
    expect(holdYoungGeneration([], '--max_semi_space_size=8')).toBe(false);
    // Grown to the operator's two semi-spaces of 4 MiB (V8 13 under load sometimes counts a page
    // more), not held at the initial two of 1 MiB.
    expect(newSpaceAfterLoad(['--max-semi-space-size=4'], true)).toBeGreaterThanOrEqual(8 * MiB);
  });
});
