import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { mkdir, readdir, stat, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { LEASE_RENEW_MS, type BlobLeases } from '../src/blob-leases.js';
import type { BlobStore } from '../src/blob-store.js';
import { GarbageCollector } from '../src/gc/garbage-collector.js';
import { LocalRegistry } from '../src/local-registry.js';
import { openDatabase } from '../src/sqlite/database.js';
import { LEASE_TTL_MS } from '../src/sqlite/sqlite-lifecycle.js';
import { BROKEN_MANIFEST_WARNING, SqliteMetadataStore } from '../src/sqlite/sqlite-metadata-store.js';
import { gcFixture, pushImage, type GcFixture } from './gc-helpers.js';
import { OCI_INDEX, EMPTY_JSON, bytesOf, ociIndexBytes, readAll, sha256, streamOf } from './helpers.js';

const exists = (path: string) => stat(path).then(
  () => true,
  () => false,
);

describe('garbage collection: mark and sweep', () => {
  let fx: GcFixture;

  beforeEach(async () => {
    fx = await gcFixture();
  });

  afterEach(async () => {
    await fx.close();
  });

  const fileOf = (digest: string) => fx.blobs.pathOf(digest as `sha256:${string}`);

  test('a tagged image survives, with its manifest, links, rows and files', async () => {
    const image = await pushImage(fx.registry, 'alice/app', '1', ['layer one', 'layer two']);
    const report = await fx.collect({ deleteUntagged: true });
    expect(report.manifests).toEqual([]);
    expect(report.blobs).toEqual([]);
    expect(report.links).toBe(0);
    expect((await fx.registry.manifest('alice/app', '1'))?.digest).toBe(image.digest);
    for (const d of [image.config, ...image.layers]) {
      expect(await fx.registry.blob('alice/app', d.digest)).toEqual({ digest: d.digest, size: d.size });
      expect(await exists(fileOf(d.digest))).toBe(true);
    }
  });

  test("an image deleted by digest loses its unique blobs; a blob another image shares stays", async () => {
    const kept = await pushImage(fx.registry, 'alice/app', '1', ['shared base', 'kept top']);
    const gone = await pushImage(fx.registry, 'alice/app', '2', ['shared base', 'gone top']);
    const elsewhere = await pushImage(fx.registry, 'bob/other', 'x', ['gone top']);
    expect(await fx.registry.deleteManifest('alice/app', gone.digest)).toBe(true);

    const report = await fx.collect();
    const goneTop = gone.layers[1]!.digest;
    // gone's config is unique: row, link and file go.
    expect(report.blobs.map((b) => b.digest)).toEqual([gone.config.digest]);
    expect(report.bytes).toBe(gone.config.size);
    expect(await exists(fileOf(gone.config.digest))).toBe(false);
    // the shared base stays (kept references it), and so does the top layer bob/other still uses,
    // though alice/app no longer links it.
    expect(await fx.registry.blob('alice/app', kept.layers[0]!.digest)).toBeDefined();
    expect(await fx.registry.blob('alice/app', goneTop)).toBeUndefined();
    expect(await fx.registry.blob('bob/other', goneTop)).toBeDefined();
    expect(await exists(fileOf(goneTop))).toBe(true);
    expect(report.links).toBe(2); // alice/app → gone's config and gone top
    expect((await fx.registry.manifest('bob/other', 'x'))?.digest).toBe(elsewhere.digest);
  });

  test('a deleted tag leaves an untagged manifest: kept without --delete-untagged, collected with it', async () => {
    const image = await pushImage(fx.registry, 'alice/app', 'old', ['old layer']);
    expect(await fx.registry.deleteManifest('alice/app', 'old')).toBe(true);
    expect((await fx.collect()).manifests).toEqual([]);
    expect(await fx.registry.manifest('alice/app', image.digest)).toBeDefined();

    const report = await fx.collect({ deleteUntagged: true });
    expect(report.manifests).toEqual([{ repo: 'alice/app', digest: image.digest }]);
    expect(report.blobs.map((b) => b.digest).sort()).toEqual([image.config.digest, image.layers[0]!.digest].sort());
    expect(await fx.registry.manifest('alice/app', image.digest)).toBeUndefined();
    for (const d of [image.config, ...image.layers]) expect(await exists(fileOf(d.digest))).toBe(false);
    expect(report.repositories).toBe(1); // nothing left in alice/app
    expect(await fx.registry.tags('alice/app', {})).toBeUndefined();
  });

  test('the children of a tagged index are kept, untagged as they are', async () => {
    const amd = await pushImage(fx.registry, 'alice/multi', undefined, ['amd64 layer']);
    const arm = await pushImage(fx.registry, 'alice/multi', undefined, ['arm64 layer']);
    const index = ociIndexBytes([
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: amd.digest, size: amd.bytes.length, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: arm.digest, size: arm.bytes.length, platform: { os: 'linux', architecture: 'arm64' } },
    ]);
    await fx.registry.putManifest('alice/multi', '1', index, OCI_INDEX);
    const stray = await pushImage(fx.registry, 'alice/multi', undefined, ['stray layer']);

    const report = await fx.collect({ deleteUntagged: true });
    expect(report.manifests).toEqual([{ repo: 'alice/multi', digest: stray.digest }]);
    for (const child of [amd, arm]) {
      expect(await fx.registry.manifest('alice/multi', child.digest)).toBeDefined();
      expect(await exists(fileOf(child.layers[0]!.digest))).toBe(true);
    }
    expect(await exists(fileOf(stray.layers[0]!.digest))).toBe(false);
  });

  test('a referrer of a kept manifest is kept; it goes with its subject', async () => {
    const image = await pushImage(fx.registry, 'alice/signed', '1', ['signed layer']);
    await fx.registry.putBlob('alice/signed', streamOf(EMPTY_JSON), { digest: sha256(EMPTY_JSON), size: EMPTY_JSON.length });
    const signature = await pushImage(fx.registry, 'alice/signed', undefined, ['signature payload'], {
      artifactType: 'application/vnd.example.signature',
      subject: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: image.digest, size: image.bytes.length },
    });
    let report = await fx.collect({ deleteUntagged: true });
    expect(report.manifests).toEqual([]);
    expect(await fx.registry.referrers('alice/signed', image.digest)).toHaveLength(1);
    expect(await exists(fileOf(signature.layers[0]!.digest))).toBe(true);

    await fx.registry.deleteManifest('alice/signed', '1');
    report = await fx.collect({ deleteUntagged: true });
    expect(report.manifests.map((m) => m.digest).sort()).toEqual([image.digest, signature.digest].sort());
    expect(await exists(fileOf(signature.layers[0]!.digest))).toBe(false);
    expect(await exists(fileOf(sha256(EMPTY_JSON)))).toBe(false);
  });

  test('the grace period keeps a freshly linked blob (pushed before its manifest) and a fresh untagged manifest', async () => {
    const early = Buffer.from('a layer whose manifest is not pushed yet');
    await fx.registry.putBlob('alice/app', streamOf(early), { digest: sha256(early), size: early.length });
    const untagged = await pushImage(fx.registry, 'alice/app', undefined, ['fresh untagged']);

    const withinGrace = await fx.gc.run({ grace: 3_600_000, deleteUntagged: true });
    expect(withinGrace.links).toBe(0);
    expect(withinGrace.blobs).toEqual([]);
    expect(withinGrace.manifests).toEqual([]);
    expect(await fx.registry.blob('alice/app', sha256(early))).toBeDefined();
    expect(await exists(fileOf(sha256(early)))).toBe(true);

    // An hour later, neither has a reason to stay.
    const later = await fx.collect({ ageMs: 3_600_001, grace: 3_600_000, deleteUntagged: true });
    expect(later.manifests).toEqual([{ repo: 'alice/app', digest: untagged.digest }]);
    expect(later.blobs.map((b) => b.digest)).toContain(sha256(early));
    expect(await exists(fileOf(sha256(early)))).toBe(false);
  });

  test('a manifest pushed again starts its grace period over, as a blob pushed again does', async () => {
    // A platform manifest, untagged since its old index was deleted an hour ago.
    const child = await pushImage(fx.registry, 'alice/multi', undefined, ['amd64 layer']);
    const hourAgo = Date.now() - 3_600_000;
    fx.db.prepare('UPDATE manifests SET created_at = ?').run(hourAgo);
    fx.db.prepare('UPDATE repository_blobs SET linked_at = ?').run(hourAgo);
    fx.db.prepare('UPDATE blobs SET created_at = ?').run(hourAgo);
    // A client pushes a new multi-arch image: that manifest again (its blobs are there, not sent
    // again), and the collector runs before the index comes.
    await fx.registry.putManifest('alice/multi', child.digest, child.bytes, 'application/vnd.oci.image.manifest.v1+json');
    const report = await fx.gc.run({ grace: 10 * 60_000, deleteUntagged: true });
    expect(report.manifests).toEqual([]);
    expect(report.blobs).toEqual([]);
    const index = ociIndexBytes([{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: child.digest, size: child.bytes.length, platform: { os: 'linux', architecture: 'amd64' } }]);
    await expect(fx.registry.putManifest('alice/multi', 'latest', index, OCI_INDEX)).resolves.toBeDefined();
  });

  test('with deleteUntagged, a manifest a tag moved off or left keeps its grace from then, not from its push', async () => {
    // Pushed two hours ago; a pull resolves `latest` (or `stable`) to it just before the tag moves.
    const old = await pushImage(fx.registry, 'alice/app', 'latest', ['base', 'old top']);
    const stable = await pushImage(fx.registry, 'alice/app', 'stable', ['base', 'stable top']);
    const twoHoursAgo = Date.now() - 7_200_000;
    fx.db.prepare('UPDATE manifests SET created_at = ?').run(twoHoursAgo);
    fx.db.prepare('UPDATE repository_blobs SET linked_at = ?').run(twoHoursAgo);
    fx.db.prepare('UPDATE blobs SET created_at = ?').run(twoHoursAgo);
    // A push moves `latest` to a new image, a DELETE by tag removes `stable`, a gc runs at once.
    const fresh = await pushImage(fx.registry, 'alice/app', 'latest', ['base', 'new top']);
    expect(await fx.registry.deleteManifest('alice/app', 'stable')).toBe(true);
    const now = await fx.gc.run({ grace: 10 * 60_000, deleteUntagged: true });
    expect(now.manifests).toEqual([]);
    expect(now.blobs).toEqual([]);
    // The pull that got the old manifest still gets every layer of it.
    for (const layer of [...old.layers, ...stable.layers]) expect(await fx.registry.blob('alice/app', layer.digest)).toBeDefined();

    // Once the grace has passed since they lost their tags, they go; their records go with them.
    const later = await fx.collect({ ageMs: 10 * 60_000 + 1, grace: 10 * 60_000, deleteUntagged: true });
    expect(later.manifests.map((m) => m.digest).sort()).toEqual([old.digest, stable.digest].sort());
    expect(await exists(fileOf(old.layers[1]!.digest))).toBe(false);
    expect(await fx.registry.manifest('alice/app', 'latest')).toMatchObject({ digest: fresh.digest });
    expect(fx.db.prepare('SELECT COUNT(*) FROM manifest_grace').pluck().get()).toBe(0);
  });

  test('without deleteUntagged, a manifest a tag moved off stays, and the same tag put again on it records nothing', async () => {
    const image = await pushImage(fx.registry, 'alice/app', 'latest', ['only top']);
    await fx.registry.putManifest('alice/app', 'latest', image.bytes, 'application/vnd.oci.image.manifest.v1+json');
    expect(fx.db.prepare('SELECT COUNT(*) FROM manifest_grace').pluck().get()).toBe(0);
    await pushImage(fx.registry, 'alice/app', 'latest', ['other top']);
    expect(fx.db.prepare('SELECT digest FROM manifest_grace').pluck().all()).toEqual([image.digest]);
    expect((await fx.collect({ ageMs: 86_400_000 })).manifests).toEqual([]);
    // A DELETE by digest takes the record with the manifest.
    expect(await fx.registry.deleteManifest('alice/app', image.digest)).toBe(true);
    expect(fx.db.prepare('SELECT COUNT(*) FROM manifest_grace').pluck().get()).toBe(0);
  });

  test("with deleteUntagged, a push's HEAD by digest starts an untagged child's grace over, so its index is taken", async () => {
    // Two platform manifests, untagged since their old index was deleted two hours ago.
    const skipped = await pushImage(fx.registry, 'alice/multi', undefined, ['amd64 layer']);
    const other = await pushImage(fx.registry, 'alice/multi', undefined, ['arm64 layer']);
    const twoHoursAgo = Date.now() - 7_200_000;
    fx.db.prepare('UPDATE manifests SET created_at = ?').run(twoHoursAgo);
    fx.db.prepare('UPDATE repository_blobs SET linked_at = ?').run(twoHoursAgo);
    fx.db.prepare('UPDATE blobs SET created_at = ?').run(twoHoursAgo);
    // A push of a new index asks for the one child by digest (HEAD, by someone who may push) and
    // skips it; a pull's GET of the other renews nothing. A collection runs before the index comes.
    expect((await fx.registry.manifest('alice/multi', skipped.digest, { renew: true }))?.digest).toBe(skipped.digest);
    expect((await fx.registry.manifest('alice/multi', other.digest))?.digest).toBe(other.digest);
    const report = await fx.gc.run({ grace: 10 * 60_000, deleteUntagged: true });
    expect(report.manifests).toEqual([{ repo: 'alice/multi', digest: other.digest }]);
    const index = ociIndexBytes([{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: skipped.digest, size: skipped.bytes.length, platform: { os: 'linux', architecture: 'amd64' } }]);
    await expect(fx.registry.putManifest('alice/multi', 'latest', index, OCI_INDEX)).resolves.toBeDefined();
    // A renewal of a manifest a collection took finds it absent, and records nothing.
    expect(await fx.registry.manifest('alice/multi', other.digest, { renew: true })).toBeUndefined();
    expect(fx.db.prepare('SELECT digest FROM manifest_grace').pluck().all()).toEqual([skipped.digest]);
  });

  test('a dry run deletes nothing and reports what a real run then deletes', async () => {
    const kept = await pushImage(fx.registry, 'alice/app', '1', ['base', 'top 1']);
    const gone = await pushImage(fx.registry, 'alice/app', '2', ['base', 'top 2']);
    await fx.registry.deleteManifest('alice/app', '2');
    const orphan = bytesOf(100, 7);
    await mkdir(dirname(fileOf(sha256(orphan))), { recursive: true });
    await writeFile(fileOf(sha256(orphan)), orphan);
    const old = new Date(Date.now() - 7_200_000);
    await utimes(fileOf(sha256(orphan)), old, old);

    const files = async () => (await readdir(fx.blobs.root, { recursive: true })).sort();
    const before = await files();
    const dry = await fx.collect({ deleteUntagged: true, dryRun: true });
    expect(dry.dryRun).toBe(true);
    expect(await files()).toEqual(before);
    expect(await fx.registry.manifest('alice/app', gone.digest)).toBeDefined();
    expect(await fx.registry.blob('alice/app', gone.layers[1]!.digest)).toBeDefined();

    const real = await fx.collect({ deleteUntagged: true });
    expect(dry.manifests).toEqual(real.manifests);
    expect(dry.links).toBe(real.links);
    expect(dry.blobs.map((b) => b.digest).sort()).toEqual(real.blobs.map((b) => b.digest).sort());
    expect(dry.bytes).toBe(real.bytes);
    expect(dry.orphans).toEqual({ files: 1, bytes: 100 });
    expect(real.orphans).toEqual({ files: 1, bytes: 100 });
    expect(real.manifests).toEqual([{ repo: 'alice/app', digest: gone.digest }]);
    expect(await exists(fileOf(sha256(orphan)))).toBe(false);
    expect(await fx.registry.manifest('alice/app', '1')).toBeDefined();
    void kept;
  });

  test('a fresh orphan file stays, and a row left without file or links by an interrupted gc is cleaned up', async () => {
    const orphan = Buffer.from('a file written a moment ago, its link not committed yet');
    await mkdir(dirname(fileOf(sha256(orphan))), { recursive: true });
    await writeFile(fileOf(sha256(orphan)), orphan);
    expect((await fx.gc.run({ grace: 3_600_000, deleteUntagged: false })).orphans.files).toBe(0);
    expect(await exists(fileOf(sha256(orphan)))).toBe(true);

    const stale = Buffer.from('row without file');
    await fx.registry.putBlob('alice/app', streamOf(stale), { digest: sha256(stale), size: stale.length });
    await fx.registry.deleteBlob('alice/app', sha256(stale));
    await fx.blobs.remove(sha256(stale));
    const report = await fx.collect();
    expect(report.blobs).toEqual([{ digest: sha256(stale), size: stale.length }]);
    expect(report.bytes).toBe(0); // the file was already gone
    expect(report.errors).toEqual([]);
    expect(fx.metadata.lifecycle().blobRow(sha256(stale))).toBeUndefined();
  });

  test('deleting manifests through gc clears the manifest cache of the repository', async () => {
    const image = await pushImage(fx.registry, 'alice/app', 'temp', ['cached']);
    expect(await fx.registry.manifest('alice/app', image.digest)).toBeDefined(); // now cached
    await fx.registry.deleteManifest('alice/app', 'temp');
    await fx.collect({ deleteUntagged: true });
    expect(await fx.registry.manifest('alice/app', image.digest)).toBeUndefined();
  });

  test("a second server on the same storage stops serving a manifest this server's gc removed before its blobs go", async () => {
    const image = await pushImage(fx.registry, 'alice/app', 'temp', ['only here too']);
    const layer = fileOf(image.layers[0]!.digest);
    const otherDb = openDatabase(join(fx.dir, 'metadata.db'));
    try {
      // The other server has the image cached.
      const other = new SqliteMetadataStore(otherDb);
      expect(await other.taggedManifest('alice/app', 'temp')).toBeDefined();
      expect(await other.manifest('alice/app', image.digest)).toBeDefined();
      expect(await fx.metadata.deleteTag('alice/app', 'temp')).toBe(true);
      let done = false;
      // This server's own gc, as its timer runs it (no pause between transactions).
      const run = fx.gc.run({ grace: 0, deleteUntagged: true, now: Date.now() + 1000 }).finally(() => (done = true));
      const servedWithoutLayer: string[] = [];
      while (!done) {
        const byDigest = await other.manifest('alice/app', image.digest);
        if (byDigest && !(await exists(layer))) servedWithoutLayer.push('by digest');
        // As often as the gc lets go of the event loop: its steps are short without a pause.
        await new Promise((resolve) => setImmediate(resolve));
      }
      expect((await run).manifests).toEqual([{ repo: 'alice/app', digest: image.digest }]);
      expect(await exists(layer)).toBe(false);
      expect(servedWithoutLayer).toEqual([]);
    } finally {
      otherDb.close();
    }
  });

  test('a gc in another process (wharf gc beside the server): the server stops serving a manifest it removed before its blobs go', async () => {
    const image = await pushImage(fx.registry, 'alice/app', 'temp', ['only here']);
    const layer = fileOf(image.layers[0]!.digest);
    // The server has both reads cached.
    expect(await fx.metadata.taggedManifest('alice/app', 'temp')).toBeDefined();
    expect(await fx.metadata.manifest('alice/app', image.digest)).toBeDefined();
    // The other process: its own connection to the same database, gc as `wharf gc` runs it.
    const otherDb = openDatabase(join(fx.dir, 'metadata.db'));
    try {
      const other = new SqliteMetadataStore(otherDb);
      expect(await other.deleteTag('alice/app', 'temp')).toBe(true);
      const gc = new GarbageCollector({ metadata: other, blobs: fx.blobs, pauseMs: 2 });
      let done = false;
      const run = gc.run({ grace: 0, deleteUntagged: true, now: Date.now() + 1000 }).finally(() => (done = true));
      // Meanwhile the server is asked for the image, as clients pull it.
      const servedWithoutLayer: string[] = [];
      while (!done) {
        const byTag = await fx.metadata.taggedManifest('alice/app', 'temp');
        const byDigest = await fx.metadata.manifest('alice/app', image.digest);
        if ((byTag || byDigest) && !(await exists(layer))) servedWithoutLayer.push(byTag ? 'by tag' : 'by digest');
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      const report = await run;
      expect(report.manifests).toEqual([{ repo: 'alice/app', digest: image.digest }]);
      expect(await exists(layer)).toBe(false);
      expect(servedWithoutLayer).toEqual([]);
      expect(await fx.metadata.manifest('alice/app', image.digest)).toBeUndefined();
    } finally {
      otherDb.close();
    }
  });
});

describe('garbage collection while pushes run', () => {
  let fx: GcFixture;

  beforeEach(async () => {
    fx = await gcFixture();
  });

  afterEach(async () => {
    await fx.close();
  });

  /** Blobs pushed once and unlinked again: garbage for the next sweep. */
  async function garbage(count: number, seed: number): Promise<Buffer[]> {
    const out: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      const bytes = bytesOf(64 + (i % 7), seed * 100_000 + i);
      await fx.registry.putBlob('tmp/garbage', streamOf(bytes), { digest: sha256(bytes), size: bytes.length });
      await fx.registry.deleteBlob('tmp/garbage', sha256(bytes));
      out.push(bytes);
    }
    return out;
  }

  test('a blob linked while the sweep runs is never lost', async () => {
    const blobs = await garbage(400, 1);
    // Everything is "old" to this run (its clock is an hour ahead), so only the lease and the re-check
    // at delete time protect what the concurrent pushes link.
    const sweeping = fx.gc.run({ grace: 0, deleteUntagged: false, now: Date.now() + 3_600_000 });
    const pushed: Buffer[] = [];
    const pushing = (async () => {
      for (let i = blobs.length - 1; i >= 0; i -= 3) {
        const bytes = blobs[i]!;
        await fx.registry.putBlob('alice/live', streamOf(bytes), { digest: sha256(bytes), size: bytes.length });
        pushed.push(bytes);
      }
    })();
    const [report] = await Promise.all([sweeping, pushing]);
    expect(report.errors).toEqual([]);
    expect(report.blobs.length).toBeGreaterThan(0); // the sweep did delete things meanwhile
    const deletedThenPushed = pushed.filter((b) => report.blobs.some((r) => r.digest === sha256(b))).length;
    expect(deletedThenPushed).toBeGreaterThan(0); // some were swept first and pushed back after
    for (const bytes of pushed) {
      const digest = sha256(bytes);
      expect(await fx.registry.blob('alice/live', digest)).toEqual({ digest, size: bytes.length });
      expect(await readAll(await fx.blobs.open(digest))).toEqual(bytes);
    }
    // And a second sweep (nothing concurrent, normal grace) leaves every freshly linked blob alone.
    await fx.gc.run({ grace: 3_600_000, deleteUntagged: true });
    for (const bytes of pushed) expect(await fx.blobs.stat(sha256(bytes))).toBeDefined();
  });

  test('a blob pushed again after gc deleted it gets its row and file back', async () => {
    const [bytes] = await garbage(1, 2);
    const digest = sha256(bytes!);
    const report = await fx.collect();
    expect(report.blobs.map((b) => b.digest)).toEqual([digest]);
    expect(fx.metadata.lifecycle().blobRow(digest)).toBeUndefined();
    await fx.registry.putBlob('alice/again', streamOf(bytes!), { digest, size: bytes!.length });
    expect(fx.metadata.lifecycle().blobRow(digest)?.size).toBe(bytes!.length);
    expect(await readAll(await fx.blobs.open(digest))).toEqual(bytes);
  });

  /** The registry's store, with a hook that runs between "file in place" and "link committed". */
  function storeWithHook(hook: () => Promise<void>): BlobStore {
    return {
      stat: (d) => fx.blobs.stat(d),
      open: (d, r) => fx.blobs.open(d, r),
      ingest: (src, e, sig) => fx.blobs.ingest(src, e, sig),
      remove: (d) => fx.blobs.remove(d),
      adopt: async (file, blob) => {
        await fx.blobs.adopt(file, blob);
        await hook();
      },
    };
  }

  test('an upload completing while gc sweeps its digest never links a missing file', async () => {
    const [bytes] = await garbage(1, 3);
    const digest = sha256(bytes!);
    // gc runs exactly in the window between the upload's file landing in place and its link.
    let swept: Awaited<ReturnType<GcFixture['collect']>> | undefined;
    const registry = fx.registryWith(storeWithHook(async () => {
      swept = await fx.collect();
    }));
    const session = await registry.beginUpload('alice/late');
    await registry.appendUpload('alice/late', session.id, streamOf(bytes!), {});
    await registry.completeUpload('alice/late', session.id, digest);
    expect(swept!.blobs).toEqual([]); // the lease kept the row and the file
    expect(await registry.blob('alice/late', digest)).toEqual({ digest, size: bytes!.length });
    expect(await readAll(await fx.blobs.open(digest))).toEqual(bytes);
  });

  test('without leases the same interleaving would lose the file (why pushes take one)', async () => {
    const [bytes] = await garbage(1, 4);
    const digest = sha256(bytes!);
    const registry = fx.registryWith(storeWithHook(async () => {
      await fx.collect();
    }), false);
    const session = await registry.beginUpload('alice/late');
    await registry.appendUpload('alice/late', session.id, streamOf(bytes!), {});
    await registry.completeUpload('alice/late', session.id, digest);
    expect(await registry.blob('alice/late', digest)).toBeDefined();
    expect(await fx.blobs.stat(digest)).toBeUndefined();
  });

  test('a lease whose holder died (kill -9 mid-push) protects its blob LEASE_TTL_MS past its last renewal, no longer', async () => {
    const [bytes] = await garbage(1, 5);
    const digest = sha256(bytes!);
    const life = fx.metadata.lifecycle();
    const t0 = Date.now();
    const id = life.lease(digest, t0); // never released: its process is gone
    expect((await fx.collect({ ageMs: 60_000 })).blobs).toEqual([]);
    life.renew(id, t0 + 9 * 60_000); // its last renewal
    expect((await fx.collect({ ageMs: 9 * 60_000 + LEASE_TTL_MS - 60_000 })).blobs).toEqual([]);
    expect((await fx.collect({ ageMs: 9 * 60_000 + LEASE_TTL_MS + 60_000 })).blobs.map((b) => b.digest)).toEqual([digest]);
    expect(LEASE_TTL_MS).toBeLessThanOrEqual(15 * 60_000);
  });

  test('a push renews its lease while its body streams, and releases it at the end', async () => {
    const life = fx.metadata.lifecycle();
    const renewed: number[] = [];
    const leases: BlobLeases = { lease: (d) => life.lease(d), release: (id) => life.release(id), renew: (id) => (renewed.push(id), life.renew(id)) };
    const registry = new LocalRegistry(fx.blobs, fx.metadata, fx.uploads, leases);
    const bytes = Buffer.from('a body that takes its time');
    const digest = sha256(bytes);
    let finish!: () => void;
    const body = new Readable({ read() {} });
    body.push(bytes.subarray(0, 5));
    const finished = new Promise<void>((resolve) => (finish = resolve));
    void finished.then(() => {
      body.push(bytes.subarray(5));
      body.push(null);
    });
    jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'clearImmediate', 'setTimeout', 'clearTimeout', 'queueMicrotask', 'hrtime', 'performance', 'Date'] });
    try {
      const pushing = registry.putBlob('alice/slow', body, { digest, size: bytes.length });
      await new Promise((r) => setTimeout(r, 50));
      jest.advanceTimersByTime(LEASE_RENEW_MS * 3);
      await new Promise((r) => setTimeout(r, 10));
      expect(renewed.length).toBe(3);
      const leased = () => (fx.db.prepare('SELECT COUNT(*) AS n FROM blob_leases').get() as { n: number }).n;
      expect(leased()).toBe(1);
      // Gone meanwhile (the process was stopped for longer than a lease lasts, and a sweep took it): taken anew.
      fx.db.prepare('DELETE FROM blob_leases').run();
      jest.advanceTimersByTime(LEASE_RENEW_MS);
      await new Promise((r) => setTimeout(r, 10));
      expect(renewed.length).toBe(4);
      expect(leased()).toBe(1);
      finish();
      await pushing;
      jest.advanceTimersByTime(LEASE_RENEW_MS * 3);
      expect(renewed.length).toBe(4); // no renewal after the release
      expect(fx.db.prepare('SELECT COUNT(*) AS n FROM blob_leases').get()).toEqual({ n: 0 });
    } finally {
      jest.useRealTimers();
    }
  });

  test('an upload in progress is never touched', async () => {
    const session = await fx.registry.beginUpload('alice/slow');
    await fx.registry.appendUpload('alice/slow', session.id, streamOf('first half, '), {});
    const report = await fx.collect({ deleteUntagged: true, ageMs: 86_400_000 });
    expect(report.errors).toEqual([]);
    expect((await fx.registry.uploadStatus('alice/slow', session.id))?.size).toBe('first half, '.length);
    await fx.registry.appendUpload('alice/slow', session.id, streamOf('second half'), {});
    const whole = Buffer.from('first half, second half');
    expect(await fx.registry.completeUpload('alice/slow', session.id, sha256(whole))).toEqual({ digest: sha256(whole), size: whole.length });
  });
});

describe('broken manifests are still served, with a warning', () => {
  test('a manifest flagged broken carries BROKEN_MANIFEST_WARNING until it is pushed again', async () => {
    const fx = await gcFixture();
    try {
      const image = await pushImage(fx.registry, 'alice/app', '1', ['layer']);
      expect(fx.metadata.lifecycle().setBroken('alice/app', image.digest, true)).toBe(true);
      expect((await fx.registry.manifest('alice/app', '1'))?.warning).toBe(BROKEN_MANIFEST_WARNING);
      expect((await fx.registry.manifest('alice/app', image.digest))?.warning).toBe(BROKEN_MANIFEST_WARNING);
      await fx.registry.putManifest('alice/app', '1', image.bytes, 'application/vnd.oci.image.manifest.v1+json');
      expect((await fx.registry.manifest('alice/app', '1'))?.warning).toBeUndefined();
    } finally {
      await fx.close();
    }
  });
});
