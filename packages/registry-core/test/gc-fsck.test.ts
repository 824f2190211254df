import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdir, open, rm, utimes, writeFile } from 'node:fs/promises';
import { unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Digest } from '../src/digest.js';
import { fsck, registryCatalog, type FsckOptions } from '../src/gc/fsck.js';
import { BROKEN_MANIFEST_WARNING } from '../src/sqlite/sqlite-metadata-store.js';
import { gcFixture, pushImage, type GcFixture } from './gc-helpers.js';
import { bytesOf, sha256, streamOf } from './helpers.js';

describe('fsck', () => {
  let fx: GcFixture;

  beforeEach(async () => {
    fx = await gcFixture();
  });

  afterEach(async () => {
    await fx.close();
  });

  const run = (options: Partial<FsckOptions> = {}) =>
    fsck({ metadata: fx.metadata, catalogs: [registryCatalog(fx.metadata, fx.blobs)], uploadsDir: `${fx.tempRoot}/uploads` }, { repair: false, ...options });

  async function flipByte(digest: Digest, at = 10): Promise<void> {
    const handle = await open(fx.blobs.pathOf(digest), 'r+');
    try {
      const one = Buffer.alloc(1);
      await handle.read(one, 0, 1, at);
      one[0] = one[0]! ^ 0xff;
      await handle.write(one, 0, 1, at);
    } finally {
      await handle.close();
    }
  }

  async function plantFile(bytes: Buffer, ageMs: number): Promise<Digest> {
    const digest = sha256(bytes);
    const path = fx.blobs.pathOf(digest);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, bytes);
    const when = new Date(Date.now() - ageMs);
    await utimes(path, when, when);
    return digest;
  }

  test("an orphan file a push still holds (a killed push's lease) is a notice saying until when; once the lease runs out, --repair removes it", async () => {
    const orphan = await plantFile(bytesOf(1000, 5), 2 * 3_600_000);
    const life = fx.metadata.lifecycle();
    const lease = life.lease(orphan);
    const held = await run({ repair: true });
    expect(held.problems).toBe(0);
    expect(held.findings).toHaveLength(1);
    expect(held.findings[0]).toMatchObject({ kind: 'recent-file', severity: 'notice', repaired: false });
    expect(held.findings[0]!.message).toMatch(new RegExp(`blob ${orphan} has no metadata yet: a push holds it until \\d{4}-\\d\\d-\\d\\dT`));
    expect(await fx.blobs.stat(orphan)).toBeDefined();
    life.release(lease);
    const freed = await run({ repair: true });
    expect(freed.findings.map((f) => [f.kind, f.repaired])).toEqual([['orphan', true]]);
    expect(await fx.blobs.stat(orphan)).toBeUndefined();
  });

  test('a blob a gc removes while fsck reads it (row gone, then its file) is no orphan', async () => {
    const image = await pushImage(fx.registry, 'alice/app', '1', ['collected meanwhile']);
    const layer = image.layers[0]!.digest;
    const base = registryCatalog(fx.metadata, fx.blobs);
    // What fsck sees when another process's gc commits between its hash of the file and its row lookup.
    const collecting = { ...base, row: (digest: Digest) => (digest === layer ? (unlinkSync(fx.blobs.pathOf(digest)), undefined) : base.row(digest)) };
    const result = await fsck({ metadata: fx.metadata, catalogs: [collecting], uploadsDir: `${fx.tempRoot}/uploads` }, { repair: true, grace: 0 });
    expect(result.findings.filter((f) => f.kind === 'orphan')).toEqual([]);
    expect(result.problems).toBe(0);
  });

  test('a clean store has no findings', async () => {
    await pushImage(fx.registry, 'alice/app', '1', ['a', bytesOf(300_000, 1)]);
    const progress: { files: number; bytes: number; totalBytes: number }[] = [];
    const report = await run({ onProgress: (p) => progress.push({ ...p }) });
    expect(report.findings).toEqual([]);
    expect(report.problems).toBe(0);
    expect(report.files).toBe(3);
    expect(progress.at(-1)!.files).toBe(3);
    // All the bytes are told with all the files (a progress line read "100% 2/3 files").
    expect(progress.filter((p) => p.bytes === p.totalBytes).map((p) => p.files)).toEqual([3]);
  });

  test('finds a flipped byte, a missing file and an orphan file; --repair removes and drops them and marks the manifests', async () => {
    const corrupted = await pushImage(fx.registry, 'alice/app', '1', ['base', bytesOf(200_000, 2)]);
    const missing = await pushImage(fx.registry, 'bob/web', 'latest', ['web layer']);
    const intact = await pushImage(fx.registry, 'carol/ok', '1', ['fine']);
    await flipByte(corrupted.layers[1]!.digest);
    await rm(fx.blobs.pathOf(missing.layers[0]!.digest));
    const orphan = await plantFile(bytesOf(1000, 3), 2 * 3_600_000);
    const recent = await plantFile(bytesOf(1000, 4), 0);
    const session = await fx.registry.beginUpload('dave/up');
    await fx.registry.appendUpload('dave/up', session.id, streamOf('partial'), {});
    // A completed upload's verified file on its way into the store: no finding.
    await writeFile(`${fx.tempRoot}/uploads/00000000-0000-4000-8000-000000000000.sealed`, 'done');

    const found = await run();
    const kinds = found.findings.map((f) => f.kind).sort();
    expect(kinds).toEqual(['broken-manifest', 'broken-manifest', 'corrupt', 'missing', 'orphan', 'recent-file', 'upload']);
    expect(found.problems).toBe(5);
    const line = (kind: string) => found.findings.find((f) => f.kind === kind)!.message;
    expect(line('corrupt')).toContain(corrupted.layers[1]!.digest);
    expect(line('missing')).toContain(missing.layers[0]!.digest);
    expect(line('orphan')).toContain(orphan);
    expect(line('recent-file')).toContain(recent);
    expect(line('upload')).toMatch(new RegExp(`unfinished upload ${session.id} to dave/up: 7 bytes received, started \\d+s ago`));
    expect(found.findings.filter((f) => f.kind === 'broken-manifest').map((f) => f.message).join('\n')).toContain(`alice/app@${corrupted.digest} (tags: 1)`);

    const repaired = await run({ repair: true });
    expect(repaired.findings.filter((f) => f.repaired).map((f) => f.kind).sort()).toEqual(['corrupt', 'missing', 'orphan']);
    expect(repaired.problems).toBe(2); // the two manifests stay broken until pushed again
    expect(await fx.blobs.stat(corrupted.layers[1]!.digest)).toBeUndefined();
    expect(await fx.blobs.stat(orphan)).toBeUndefined();
    expect(await fx.blobs.stat(recent)).toBeDefined(); // maybe a push in progress: never removed
    expect(await fx.registry.blob('alice/app', corrupted.layers[1]!.digest)).toBeUndefined();
    expect(await fx.registry.blob('bob/web', missing.layers[0]!.digest)).toBeUndefined();
    expect((await fx.registry.manifest('alice/app', '1'))?.warning).toBe(BROKEN_MANIFEST_WARNING);
    expect((await fx.registry.manifest('carol/ok', '1'))?.warning).toBeUndefined();
    void intact;

    // Pushed again: whole, and fsck is clean (but for the notices).
    await pushImage(fx.registry, 'alice/app', '1', ['base', bytesOf(200_000, 2)]);
    await pushImage(fx.registry, 'bob/web', 'latest', ['web layer']);
    expect((await fx.registry.manifest('alice/app', '1'))?.warning).toBeUndefined();
    const after = await run();
    expect(after.problems).toBe(0);
    expect(after.findings.map((f) => f.kind).sort()).toEqual(['recent-file', 'upload']);
  });

  test('a layer several repositories share, lost and repaired: pushed again to one of them, every manifest that lacked only it is whole again', async () => {
    const shared = 'base layer of three images';
    const alice = await pushImage(fx.registry, 'alice/app', '1', [shared, 'alice layer']);
    const team = await pushImage(fx.registry, 'team/app', '2', [shared, 'team layer']);
    const carol = await pushImage(fx.registry, 'carol/x', '1', [shared, 'carol layer']);
    const sharedDigest = alice.layers[0]!.digest;
    await rm(fx.blobs.pathOf(sharedDigest));
    await rm(fx.blobs.pathOf(carol.layers[1]!.digest)); // carol's image lost a second layer
    const repaired = await run({ repair: true });
    expect(repaired.findings.filter((f) => f.kind === 'broken-manifest')).toHaveLength(3);
    expect((await fx.registry.manifest('team/app', '2'))?.warning).toBe(BROKEN_MANIFEST_WARNING);
    expect(await fx.registry.blob('team/app', sharedDigest)).toBeUndefined();

    // The shared layer pushed again, to alice/app only (the blob, not yet the manifest).
    await fx.registry.putBlob('alice/app', streamOf(shared), { digest: sharedDigest, size: Buffer.byteLength(shared) });
    for (const [repo, tag] of [['alice/app', '1'], ['team/app', '2']] as const) {
      expect((await fx.registry.manifest(repo, tag))?.warning).toBeUndefined();
      expect(await fx.registry.blob(repo, sharedDigest)).toEqual({ digest: sharedDigest, size: Buffer.byteLength(shared) });
    }
    // carol's image still lacks its own layer: linked to the shared one again, still broken.
    expect(await fx.registry.blob('carol/x', sharedDigest)).toBeDefined();
    expect((await fx.registry.manifest('carol/x', '1'))?.warning).toBe(BROKEN_MANIFEST_WARNING);
    const between = await run();
    expect(between.findings.map((f) => f.message)).toEqual([expect.stringContaining(`carol/x@${carol.digest} (tags: 1) references missing content: blob ${carol.layers[1]!.digest}`)]);

    await fx.registry.putBlob('someone/else', streamOf('carol layer'), { digest: carol.layers[1]!.digest, size: carol.layers[1]!.size });
    expect((await fx.registry.manifest('carol/x', '1'))?.warning).toBeUndefined();
    expect((await run()).findings).toEqual([]);
    void team;
  });

  test('a blob deleted from a repository on purpose is not linked back when the same bytes are pushed elsewhere', async () => {
    const image = await pushImage(fx.registry, 'alice/app', '1', ['leaked layer']);
    const digest = image.layers[0]!.digest;
    expect(await fx.registry.deleteBlob('alice/app', digest)).toBe(true);
    await fx.collect(); // no link left: its row and file go, so the push below makes a new row
    expect(await fx.blobs.stat(digest)).toBeUndefined();
    await fx.registry.putBlob('bob/app', streamOf('leaked layer'), { digest, size: image.layers[0]!.size });
    expect(await fx.registry.blob('alice/app', digest)).toBeUndefined();
  });

  test('files where the store has folders (blobs/sha256/x, blobs/md5) are reported, and removed by --repair', async () => {
    await mkdir(`${fx.blobs.root}/blobs/sha256`, { recursive: true });
    await writeFile(`${fx.blobs.root}/blobs/sha256/strayfile`, 'junk');
    await writeFile(`${fx.blobs.root}/blobs/md5`, 'junk');
    const found = await run();
    expect(found.findings.filter((f) => f.kind === 'unexpected-file').map((f) => f.message)).toEqual([
      expect.stringContaining('blobs/md5 is not a blob file'),
      expect.stringContaining('blobs/sha256/strayfile is not a blob file'),
    ]);
    const repaired = await run({ repair: true });
    expect(repaired.findings.filter((f) => f.kind === 'unexpected-file' && f.repaired)).toHaveLength(2);
    expect((await run()).findings.filter((f) => f.kind === 'unexpected-file')).toEqual([]);
  });

  test('a blob row with neither file nor links (an interrupted gc) is a notice, not a problem', async () => {
    const bytes = Buffer.from('unlinked and gone');
    await fx.registry.putBlob('alice/app', streamOf(bytes), { digest: sha256(bytes), size: bytes.length });
    await fx.registry.deleteBlob('alice/app', sha256(bytes));
    await rm(fx.blobs.pathOf(sha256(bytes)));
    const report = await run();
    expect(report.findings.map((f) => [f.kind, f.severity])).toEqual([['stale-row', 'notice']]);
    expect(report.problems).toBe(0);
    await run({ repair: true });
    expect(fx.metadata.lifecycle().blobRow(sha256(bytes))).toBeUndefined();
  });
});
