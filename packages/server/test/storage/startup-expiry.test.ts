import { afterAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/**
 * Abandoned upload sessions are removed in the background: 20,000 expired ones took 44 s before the
 * port opened (the abuse audit), with the server down all the while.
 */
describe('expired upload sessions at start', () => {
  let reg: TestRegistry | undefined;
  let root: string | undefined;
  afterAll(async () => {
    await reg?.close();
    if (root) await rm(root, { recursive: true, force: true });
  });

  test('the server answers before they are all removed, and they all go', async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-expiry-'));
    const uploads = join(root, '_tmp', 'uploads');
    await mkdir(uploads, { recursive: true });
    const old = new Date(Date.now() - 3 * 86_400_000);
    const ids = Array.from({ length: 2000 }, () => randomUUID());
    for (let i = 0; i < ids.length; i += 100) {
      await Promise.all(
        ids.slice(i, i + 100).map(async (id) => {
          const folder = join(uploads, id);
          await mkdir(folder);
          await writeFile(join(folder, 'info.json'), JSON.stringify({ repo: 'old/app', algorithm: 'sha256', startedAt: old.toISOString() }));
          await writeFile(join(folder, 'data'), 'x');
          await utimes(join(folder, 'data'), old, old);
          await utimes(folder, old, old);
        }),
      );
    }
    reg = await startRegistry({ root });
    expect((await fetch(`${reg.url}/v2/`)).status).toBe(200);
    expect((await readdir(uploads)).length).toBeGreaterThan(0);
    const deadline = Date.now() + 120_000;
    while ((await readdir(uploads)).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(await readdir(uploads)).toEqual([]);
  });
});
