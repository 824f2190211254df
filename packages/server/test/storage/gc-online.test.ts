import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { blobFile, exists, pullAndCheck, pushLayers, storageConfig, wharf, type CliResult, type PushedImage } from './helpers.js';

/**
 * Online garbage collection under load: 8 clients push, pull and delete images for 12 s (the issue
 * asks for 30 s; 12 s keeps the suite within its time budget and still spans dozens of collections)
 * while collections run back to back in the server process with a 2 s grace period and
 * delete_untagged, and a `wharf gc` runs from the CLI against the same database meanwhile.
 */
const LOAD_MS = 12_000;
const CLIENTS = 8;
const GRACE_MS = 2_000;

describe('garbage collection while 8 clients push and pull', () => {
  let reg: TestRegistry;
  /** Images deleted before the load: their own blobs must be gone from disk at the end. */
  const deletedBefore: PushedImage[] = [];
  const kept: PushedImage[] = [];
  const deletedDuring: PushedImage[] = [];
  /** Layers of deleted images, pushed again later: garbage that a client links while gc sweeps it. */
  const recycled: { layer: Buffer; at: number }[] = [];
  let recycledPushes = 0;
  const failures: string[] = [];
  let collections = 0;
  let deletedByInProcess = 0;
  let cli: CliResult | undefined;
  /** Layers every image carries: they stay referenced throughout, whatever else goes. */
  const bases = [randomBytes(48 * 1024), randomBytes(16 * 1024)];

  beforeAll(async () => {
    reg = await startRegistry();
    const configFile = await storageConfig(reg.root);
    for (let i = 0; i < 6; i++) {
      const image = await pushLayers(reg.url, 'pre/gone', `v${i}`, [bases[i % 2]!, randomBytes(40 * 1024)]);
      const res = await fetch(`${reg.url}/v2/pre/gone/manifests/${image.digest}`, { method: 'DELETE' });
      expect(res.status).toBe(202);
      deletedBefore.push(image);
      recycled.push({ layer: image.blobs[2]!.bytes, at: Date.now() });
    }
    await sleep(GRACE_MS + 100); // what was deleted is now older than the grace period

    const deadline = Date.now() + LOAD_MS;
    // On a machine busy with other work, the load goes on past LOAD_MS (30 s at most) until it has
    // done what the test checks: collections during it, recycled layers, images kept.
    let pushed = 0;
    const enough = () => collections > 5 && recycledPushes > CLIENTS && pushed > CLIENTS * 8;
    const loading = () => Date.now() < deadline || (!enough() && Date.now() < deadline + 30_000);
    let stopped = false;
    const collector = (async () => {
      while (!stopped) {
        const { gc } = await reg.storage.gc({ grace: GRACE_MS, deleteUntagged: true });
        collections += 1;
        deletedByInProcess += gc.blobs.length;
        if (gc.errors.length > 0) failures.push(...gc.errors);
        await sleep(50);
      }
    })();
    const client = async (id: number) => {
      const repo = `load/r${id % 4}`;
      const mine: PushedImage[] = [];
      for (let n = 0; loading(); n++) {
        try {
          // Every fourth image reuses a layer of an image deleted a while ago (garbage by now).
          const old = n % 4 === 3 ? recycled.find((r) => Date.now() - r.at > GRACE_MS) : undefined;
          if (old) recycledPushes += 1;
          const second = old?.layer ?? randomBytes(16 * 1024 + ((id * 7919 + n * 104729) % (96 * 1024)));
          const image = await pushLayers(reg.url, repo, `c${id}-${n}`, [bases[n % 2]!, second]);
          await pullAndCheck(reg.url, image);
          mine.push(image);
          pushed += 1;
          const earlier = mine[(n * 31) % mine.length]!;
          await pullAndCheck(reg.url, earlier);
          if (n % 3 === 2) {
            const victim = mine.splice((n * 17) % (mine.length - 1), 1)[0]!;
            const res = await fetch(`${reg.url}/v2/${repo}/manifests/${victim.digest}`, { method: 'DELETE' });
            if (res.status !== 202) throw new Error(`delete ${victim.digest}: ${res.status}`);
            deletedDuring.push(victim);
            recycled.push({ layer: victim.blobs[2]!.bytes, at: Date.now() });
            if (recycled.length > 40) recycled.splice(0, recycled.length - 40);
          }
        } catch (err) {
          failures.push(`client ${id}: ${(err as Error).message}`);
        }
      }
      kept.push(...mine);
    };
    const cliRun = (async () => {
      await sleep(LOAD_MS / 3);
      cli = await wharf(['gc', '--config', configFile, '--delete-untagged', '--grace', '2']);
    })();
    await Promise.all([...Array.from({ length: CLIENTS }, (_, i) => client(i)), cliRun]);
    stopped = true;
    await collector;
    // A last collection once the grace period has passed for everything deleted during the load.
    await sleep(GRACE_MS + 100);
    await reg.storage.gc({ grace: GRACE_MS, deleteUntagged: true });
  }, LOAD_MS + 90_000);

  afterAll(async () => {
    await reg?.close();
  });

  test('no push, pull or collection failed during the load, and collections did delete meanwhile', () => {
    expect(failures).toEqual([]);
    expect(collections).toBeGreaterThan(5);
    expect(deletedByInProcess).toBeGreaterThan(deletedBefore.length);
    expect(kept.length).toBeGreaterThan(CLIENTS * 5);
    expect(recycledPushes).toBeGreaterThan(CLIENTS);
    expect(cli?.code).toBe(0);
    expect(cli?.text()).toMatch(/^gc: \d+ tags \(retention\), \d+ manifests/m);
  });

  test('every image still tagged pulls back, manifest and blobs checked by sha256', async () => {
    for (const image of kept) await pullAndCheck(reg.url, image);
  }, 60_000);

  test('what was deleted before and during the load is gone from disk (its own blobs), shared layers stay', async () => {
    const keptBlobs = new Set(kept.flatMap((i) => i.blobs.map((b) => b.digest)));
    const gone = [...deletedBefore, ...deletedDuring].flatMap((i) => i.blobs.map((b) => b.digest)).filter((d) => !keptBlobs.has(d));
    expect(gone.length).toBeGreaterThan(deletedBefore.length * 2);
    for (const digest of gone) expect({ digest, onDisk: await exists(blobFile(reg.root, digest)) }).toEqual({ digest, onDisk: false });
    for (const base of keptBlobs) expect(await exists(blobFile(reg.root, base))).toBe(true);
    for (const image of deletedBefore) {
      expect((await fetch(`${reg.url}/v2/pre/gone/manifests/${image.digest}`)).status).toBe(404);
    }
  });

  test('fsck finds nothing wrong afterwards', async () => {
    const report = await reg.storage.fsck({ repair: false });
    expect(report.findings.filter((f) => f.severity === 'error')).toEqual([]);
  });
});
