import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdir, open, rm, utimes, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { blobFile, exists, pullAndCheck, pushLayers, repush, sha256, storageConfig, wharf, type PushedImage } from './helpers.js';

/** `wharf fsck [--repair]` as a child process on the storage of a running server. */
describe('wharf fsck', () => {
  let reg: TestRegistry;
  let configFile: string;
  let corrupted: PushedImage;
  let missing: PushedImage;
  let intact: PushedImage;
  let orphan: string;

  beforeAll(async () => {
    reg = await startRegistry();
    configFile = await storageConfig(reg.root);
    corrupted = await pushLayers(reg.url, 'alice/app', '1', [randomBytes(300_000), randomBytes(1000)]);
    missing = await pushLayers(reg.url, 'bob/web', 'latest', [randomBytes(2000)]);
    intact = await pushLayers(reg.url, 'carol/ok', '1', [randomBytes(3000)]);
  });

  afterAll(async () => {
    await reg?.close();
  });

  test('a clean store: exit code 0', async () => {
    const result = await wharf(['fsck', '--config', configFile]);
    expect(result.stdout.toString()).toMatch(/^fsck: 7 files \(.+\) checked: 0 problems, 0 notices$/m);
    expect(result.code).toBe(0);
  });

  test('finds a flipped byte, a missing file and an orphan file, one clear line each; exit code 1', async () => {
    const victim = blobFile(reg.root, corrupted.blobs[1]!.digest);
    const handle = await open(victim, 'r+');
    const one = Buffer.alloc(1);
    await handle.read(one, 0, 1, 4242);
    one[0] = one[0]! ^ 0x01;
    await handle.write(one, 0, 1, 4242);
    await handle.close();
    await rm(blobFile(reg.root, missing.blobs[1]!.digest));
    const bytes = randomBytes(777);
    orphan = sha256(bytes);
    await mkdir(dirname(blobFile(reg.root, orphan)), { recursive: true });
    await writeFile(blobFile(reg.root, orphan), bytes);
    const old = new Date(Date.now() - 3 * 3_600_000);
    await utimes(blobFile(reg.root, orphan), old, old);

    const result = await wharf(['fsck', '--config', configFile]);
    const out = result.stdout.toString();
    expect(out).toContain(`error: registry: blob ${corrupted.blobs[1]!.digest} is corrupt: its file hashes to sha256:`);
    expect(out).toContain(`error: registry: blob ${missing.blobs[1]!.digest} (2000 bytes, linked by 1 repository) has no file`);
    expect(out).toContain(`error: registry: blob file ${orphan} (777 bytes) has no metadata`);
    expect(out).toContain(`error: registry: manifest alice/app@${corrupted.digest} (tags: 1) references missing content: blob ${corrupted.blobs[1]!.digest}`);
    expect(out).toContain(`error: registry: manifest bob/web@${missing.digest} (tags: latest) references missing content: blob ${missing.blobs[1]!.digest}`);
    expect(out).toMatch(/checked: 5 problems, 0 notices$/m);
    expect(out).not.toContain('carol/ok');
    expect(result.code).toBe(1);
  });

  test('--repair removes the corrupt and orphan files, drops the missing one, marks the manifests; they remain problems', async () => {
    const result = await wharf(['fsck', '--repair', '--config', configFile]);
    const out = result.stdout.toString();
    expect(out).toContain(`repaired: registry: blob ${corrupted.blobs[1]!.digest} is corrupt`);
    expect(out).toContain(`repaired: registry: blob file ${orphan} (777 bytes) has no metadata; removed`);
    expect(out).toContain(`repaired: registry: blob ${missing.blobs[1]!.digest} (2000 bytes, linked by 1 repository) has no file; its rows dropped`);
    expect(out).toMatch(/marked broken/);
    expect(out).toMatch(/checked: 2 problems remaining, 3 repaired, 0 notices$/m);
    expect(result.code).toBe(1);
    expect(await exists(blobFile(reg.root, corrupted.blobs[1]!.digest))).toBe(false);
    expect(await exists(blobFile(reg.root, orphan))).toBe(false);

    // The server (its manifest cache at most 2 s behind) serves the broken manifest with a Warning; the corrupt blob is gone.
    await new Promise((r) => setTimeout(r, 2100));
    const res = await fetch(`${reg.url}/v2/alice/app/manifests/1`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('warning')).toMatch(/^299 - ".*missing or corrupt.*wharf fsck.*"$/);
    expect((await fetch(`${reg.url}/v2/alice/app/blobs/${corrupted.blobs[1]!.digest}`)).status).toBe(404);
    await pullAndCheck(reg.url, intact);
  });

  test('pushed again, the images are whole: no warning, exit code 0', async () => {
    await repush(reg.url, corrupted);
    await repush(reg.url, missing);
    await pullAndCheck(reg.url, corrupted);
    await pullAndCheck(reg.url, missing);
    const res = await fetch(`${reg.url}/v2/alice/app/manifests/1`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    expect(res.headers.get('warning')).toBeNull();
    const result = await wharf(['fsck', '--config', configFile]);
    expect(result.stdout.toString()).toMatch(/checked: 0 problems, 0 notices$/m);
    expect(result.code).toBe(0);
  });
});
