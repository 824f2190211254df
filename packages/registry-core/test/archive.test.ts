import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { readdir } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { exportArchive } from '../src/archive/export.js';
import { parseImageName } from '../src/archive/image-name.js';
import { importArchive } from '../src/archive/import.js';
import { gcFixture, pushImage, type GcFixture } from './gc-helpers.js';
import type { Digest } from '../src/digest.js';
import { OCI_INDEX, OCI_MANIFEST, bytesOf, descriptorOf, ociIndexBytes, readAll, sha256, streamOf } from './helpers.js';

interface Entry {
  readonly name: string;
  readonly content?: Buffer;
  readonly linkname?: string;
}

async function tarOf(entries: readonly Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) {
    if (e.linkname) pack.entry({ name: e.name, type: 'symlink', linkname: e.linkname });
    else pack.entry({ name: e.name }, e.content!);
  }
  pack.finalize();
  return readAll(Readable.from(pack as AsyncIterable<Buffer>));
}

async function untar(bytes: Buffer): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const extract = tar.extract();
  Readable.from([bytes]).pipe(extract as unknown as NodeJS.WritableStream);
  for await (const entry of extract) {
    out.set(entry.header.name, await readAll(entry as unknown as Readable));
  }
  return out;
}

/** A docker-save style archive (podman/skopeo docker-archive naming): <hex>.tar layers, <hex>.json config. */
function dockerSave(repoTags: string[], layerSeeds: number[]) {
  const layers = layerSeeds.map((s) => bytesOf(50_000 + s, s));
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => sha256(l)) } }),
  );
  const hex = (d: string) => d.slice('sha256:'.length);
  const entries: Entry[] = [
    ...layers.map((l) => ({ name: `${hex(sha256(l))}.tar`, content: l })),
    { name: `${hex(sha256(config))}.json`, content: config },
    {
      name: 'manifest.json',
      content: Buffer.from(JSON.stringify([{ Config: `${hex(sha256(config))}.json`, RepoTags: repoTags, Layers: layers.map((l) => `${hex(sha256(l))}.tar`) }])),
    },
    { name: 'repositories', content: Buffer.from('{}') },
  ];
  return { entries, layers, config };
}

/** A source that sends `sent` in one piece, then fails as a connection reset would. */
function breakingAfter(sent: Buffer): Readable {
  let done = false;
  return new Readable({
    read() {
      if (done) this.destroy(new Error('connection reset'));
      else this.push(sent);
      done = true;
    },
  });
}

describe('image archives', () => {
  let fx: GcFixture;

  beforeEach(async () => {
    fx = await gcFixture();
  });

  afterEach(async () => {
    await fx.close();
  });

  const deps = () => ({ registry: fx.registry, tempRoot: fx.tempRoot });
  const leftovers = async () => (await readdir(fx.tempRoot)).filter((f) => f.startsWith('ingest-'));

  test('image names: hosts are dropped, tags and digests kept', () => {
    expect(parseImageName('localhost/alice/app:1')).toEqual({ repo: 'alice/app', tag: '1' });
    expect(parseImageName('docker.io/library/alpine:3.20')).toEqual({ repo: 'library/alpine', tag: '3.20' });
    expect(parseImageName('127.0.0.1:5000/alice/app')).toEqual({ repo: 'alice/app' });
    expect(parseImageName(`alice/app@${sha256('x')}`)).toEqual({ repo: 'alice/app', digest: sha256('x') });
    expect(parseImageName('Alice/App:1')).toBeUndefined();
  });

  test('a docker save tarball becomes a Docker v2 schema 2 manifest over the layers as they are', async () => {
    const { entries, layers, config } = dockerSave(['localhost/alice/app:1', 'localhost/alice/app:latest'], [1, 2]);
    // manifest.json after the layers, as docker save writes it
    const result = await importArchive(Readable.from([await tarOf(entries)]), deps());
    expect(result.format).toBe('docker-archive');
    expect(result.images).toHaveLength(1);
    expect(result.images[0]).toMatchObject({ repository: 'alice/app', tags: ['1', 'latest'] });
    const stored = (await fx.registry.manifest('alice/app', '1'))!;
    expect(stored.mediaType).toBe('application/vnd.docker.distribution.manifest.v2+json');
    const doc = JSON.parse(stored.bytes.toString()) as { config: { digest: string }; layers: { mediaType: string; digest: string }[] };
    expect(doc.config.digest).toBe(sha256(config));
    expect(doc.layers.map((l) => [l.mediaType, l.digest])).toEqual(layers.map((l) => ['application/vnd.docker.image.rootfs.diff.tar', sha256(l)]));
    for (const l of layers) expect(await readAll(await fx.blobs.open(sha256(l)))).toEqual(l);
    expect((await fx.registry.manifest('alice/app', 'latest'))?.digest).toBe(stored.digest);
    expect(await leftovers()).toEqual([]);
  });

  test('gzip input is detected by its magic bytes, and --repository/--tag override the names', async () => {
    const { entries } = dockerSave(['alice/app:1'], [3]);
    const gz = gzipSync(await tarOf(entries));
    // delivered in one-byte and odd-sized pieces
    const pieces = [gz.subarray(0, 1), gz.subarray(1, 7), gz.subarray(7)];
    const result = await importArchive(Readable.from(pieces), deps(), { repository: 'ops/copy', tag: 'v9' });
    expect(result.images[0]).toMatchObject({ repository: 'ops/copy', tags: ['v9'] });
    expect(await fx.registry.manifest('ops/copy', 'v9')).toBeDefined();
    expect(await fx.registry.tags('alice/app', {})).toBeUndefined();
  });

  test('an entry whose content does not match the digest in its name is refused, and nothing is left behind', async () => {
    const { entries } = dockerSave(['alice/app:1'], [4]);
    const tampered = entries.map((e) => (e.name.endsWith('.tar') ? { ...e, content: Buffer.concat([e.content!, Buffer.from('!')]) } : e));
    await expect(importArchive(Readable.from([await tarOf(tampered)]), deps())).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
    expect(await leftovers()).toEqual([]);
    expect(await fx.registry.tags('alice/app', {})).toBeUndefined();
  });

  test('a manifest.json or image config that would parse into a huge object graph is refused before it is parsed', async () => {
    const { entries } = dockerSave(['alice/app:1'], [6]);
    // 8 MiB of `[` took 433 MiB of RSS to find invalid.
    const deep = entries.map((e) => (e.name === 'manifest.json' ? { ...e, content: Buffer.from('['.repeat(8 * 1024 * 1024)) } : e));
    await expect(importArchive(Readable.from([await tarOf(deep)]), deps())).rejects.toMatchObject({
      code: 'MANIFEST_INVALID',
      message: 'manifest.json in the archive is refused: it nests objects and arrays more than 64 deep',
    });
    const config = Buffer.from(`{"rootfs":{"diff_ids":[${Array(300_000).fill('{}').join(',')}]}}`);
    const configName = `${sha256(config).slice('sha256:'.length)}.json`;
    const bigConfig = entries.map((e) =>
      e.name.endsWith('.json') && e.name !== 'manifest.json'
        ? { name: configName, content: config }
        : e.name === 'manifest.json'
          ? { ...e, content: Buffer.from(e.content!.toString().replace(/[0-9a-f]{64}\.json/, configName)) }
          : e,
    );
    await expect(importArchive(Readable.from([await tarOf(bigConfig)]), deps())).rejects.toMatchObject({
      code: 'MANIFEST_INVALID',
      message: `${configName} in the archive is refused: it holds more than 100000 objects and arrays`,
    });
    expect(await leftovers()).toEqual([]);
    expect(await fx.registry.tags('alice/app', {})).toBeUndefined();
  });

  test('an archive without names needs --repository', async () => {
    const { entries } = dockerSave([], [5]);
    await expect(importArchive(Readable.from([await tarOf(entries)]), deps())).rejects.toMatchObject({ code: 'NAME_INVALID' });
    const result = await importArchive(Readable.from([await tarOf(entries)]), deps(), { repository: 'alice/unnamed', tag: '1' });
    expect(result.images[0]!.tags).toEqual(['1']);
  });

  test('export writes an OCI layout (and docker manifest.json) that imports back byte for byte, multi-arch included', async () => {
    const single = await pushImage(fx.registry, 'alice/app', '1', ['one', bytesOf(400_000, 9)]);
    const amd = await pushImage(fx.registry, 'alice/multi', undefined, ['amd']);
    const arm = await pushImage(fx.registry, 'alice/multi', undefined, ['arm']);
    const indexBytes = ociIndexBytes([
      { mediaType: OCI_MANIFEST, digest: amd.digest, size: amd.bytes.length, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: OCI_MANIFEST, digest: arm.digest, size: arm.bytes.length, platform: { os: 'linux', architecture: 'arm64' } },
    ]);
    await fx.registry.putManifest('alice/multi', '2', indexBytes, OCI_INDEX);

    const { stream } = await exportArchive(fx.registry, ['alice/app:1', 'alice/multi:2']);
    const tarball = await readAll(stream);
    const files = await untar(tarball);
    expect(JSON.parse(files.get('oci-layout')!.toString())).toEqual({ imageLayoutVersion: '1.0.0' });
    const index = JSON.parse(files.get('index.json')!.toString()) as { manifests: { digest: string; annotations: Record<string, string> }[] };
    expect(index.manifests.map((m) => [m.digest, m.annotations['org.opencontainers.image.ref.name']])).toEqual([
      [single.digest, 'alice/app:1'],
      [sha256(indexBytes), 'alice/multi:2'],
    ]);
    const dockerManifest = JSON.parse(files.get('manifest.json')!.toString()) as { RepoTags: string[]; Layers: string[] }[];
    expect(dockerManifest).toHaveLength(1); // the single-platform image only
    expect(dockerManifest[0]!.RepoTags).toEqual(['alice/app:1']);
    for (const [name, content] of files) {
      if (name.startsWith('blobs/sha256/') && content.length > 0) expect(sha256(content)).toBe(`sha256:${name.slice('blobs/sha256/'.length)}`);
    }
    for (const d of [amd.digest, arm.digest, amd.layers[0]!.digest, single.layers[1]!.digest]) {
      expect(files.has(`blobs/sha256/${d.slice(7)}`)).toBe(true);
    }

    const again = await importArchive(Readable.from([tarball]), deps(), { repository: 'copy/all' });
    expect(again.format).toBe('oci-layout');
    expect(again.images.map((i) => [i.digest, i.tags])).toEqual([
      [single.digest, ['1']],
      [sha256(indexBytes), ['2']],
    ]);
    expect((await fx.registry.manifest('copy/all', '2'))!.bytes).toEqual(indexBytes);
    expect((await fx.registry.manifest('copy/all', arm.digest))!.bytes).toEqual(arm.bytes);
    // and with the names the archive gives
    const named = await importArchive(Readable.from([tarball]), { registry: fx.registry, tempRoot: fx.tempRoot });
    expect(named.images.map((i) => `${i.repository}:${i.tags.join(',')}`)).toEqual(['alice/app:1', 'alice/multi:2']);
  });

  test('an import over what the repository holds renews its blob links and child manifests, as a push does (a collection meanwhile takes none)', async () => {
    const amd = await pushImage(fx.registry, 'alice/multi', undefined, ['amd layer']);
    const indexBytes = ociIndexBytes([{ mediaType: OCI_MANIFEST, digest: amd.digest, size: amd.bytes.length }]);
    await fx.registry.putManifest('alice/multi', '1', indexBytes, OCI_INDEX);
    const tarball = await readAll((await exportArchive(fx.registry, ['alice/multi:1'])).stream);
    // Long untagged and long linked: what a collection with delete_untagged may take.
    await fx.registry.deleteManifest('alice/multi', '1');
    const hourAgo = Date.now() - 3_600_000;
    fx.db.prepare('UPDATE repository_blobs SET linked_at = ?').run(hourAgo);
    fx.db.prepare('UPDATE manifests SET created_at = ?').run(hourAgo);
    const before = Date.now();
    await importArchive(Readable.from([tarball]), deps(), { repository: 'alice/multi', tag: '2' });
    const oldest = (table: string, column: string) => fx.db.prepare(`SELECT MIN(${column}) FROM ${table}`).pluck().get() as number;
    expect(oldest('repository_blobs', 'linked_at')).toBeGreaterThanOrEqual(before - 1000);
    expect(fx.db.prepare('SELECT created_at FROM manifests WHERE digest = ?').pluck().get(amd.digest) as number).toBeGreaterThanOrEqual(before - 1000);
  });

  test("BuildKit's registry cache, an index of blobs, exports with its blobs and imports back byte for byte", async () => {
    const layer = bytesOf(30_000, 21);
    const config = Buffer.from('{"layers":[],"records":[]}');
    const entries = [descriptorOf(layer, 'application/vnd.oci.image.layer.v1.tar+gzip'), descriptorOf(config, 'application/vnd.buildkit.cacheconfig.v0')];
    for (const [bytes, d] of [[layer, entries[0]!], [config, entries[1]!]] as const) await fx.registry.putBlob('alice/cache', streamOf(bytes), { digest: d.digest, size: d.size });
    const indexBytes = ociIndexBytes(entries);
    await fx.registry.putManifest('alice/cache', 'buildcache', indexBytes, OCI_INDEX);

    const { plan, stream } = await exportArchive(fx.registry, ['alice/cache:buildcache']);
    expect(plan.images[0]!.image).toBeUndefined(); // no docker manifest.json entry: it is no image
    const tarball = await readAll(stream);
    const files = await untar(tarball);
    expect(files.get(`blobs/sha256/${sha256(layer).slice(7)}`)).toEqual(layer);
    expect(files.get(`blobs/sha256/${sha256(config).slice(7)}`)).toEqual(config);

    const again = await importArchive(Readable.from([tarball]), deps(), { repository: 'copy/cache' });
    expect(again.images.map((i) => [i.digest, i.tags])).toEqual([[sha256(indexBytes), ['buildcache']]]);
    expect((await fx.registry.manifest('copy/cache', 'buildcache'))!.bytes).toEqual(indexBytes);
    expect(await fx.registry.blob('copy/cache', sha256(config) as Digest)).toMatchObject({ size: config.length });
  });

  test('a Docker manifest is exported as OCI (what skopeo and podman find in index.json); config and layers unchanged', async () => {
    const { entries, layers, config } = dockerSave(['alice/docker:1'], [11, 12]);
    const imported = await importArchive(Readable.from([await tarOf(entries)]), deps());
    const served = imported.images[0]!.digest;
    const { plan, stream } = await exportArchive(fx.registry, ['alice/docker:1']);
    expect(plan.images[0]!.convertedFrom).toBe(served);
    const files = await untar(await readAll(stream));
    const index = JSON.parse(files.get('index.json')!.toString()) as { manifests: { mediaType: string; digest: string }[] };
    expect(index.manifests[0]!.mediaType).toBe(OCI_MANIFEST);
    expect(index.manifests[0]!.digest).not.toBe(served);
    const oci = JSON.parse(files.get(`blobs/sha256/${index.manifests[0]!.digest.slice(7)}`)!.toString()) as {
      mediaType: string;
      config: { mediaType: string; digest: string };
      layers: { mediaType: string; digest: string }[];
    };
    expect(oci.mediaType).toBe(OCI_MANIFEST);
    expect(oci.config).toMatchObject({ mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config) });
    expect(oci.layers.map((l) => [l.mediaType, l.digest])).toEqual(layers.map((l) => ['application/vnd.oci.image.layer.v1.tar', sha256(l)]));
    expect(files.get(`blobs/sha256/${sha256(config).slice(7)}`)).toEqual(config);
  });

  test('a Docker manifest whose layers are null (a Go client\'s empty list) exports as an OCI manifest with no layers', async () => {
    const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    const configDigest = sha256(config);
    await fx.registry.putBlob('alice/empty', streamOf(config), { digest: configDigest, size: config.length });
    const bytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.docker.distribution.manifest.v2+json',
        config: { mediaType: 'application/vnd.docker.container.image.v1+json', digest: configDigest, size: config.length },
        layers: null,
      }),
    );
    await fx.registry.putManifest('alice/empty', '1', bytes, 'application/vnd.docker.distribution.manifest.v2+json');
    const { plan, stream } = await exportArchive(fx.registry, ['alice/empty:1']);
    expect(plan.images[0]!.convertedFrom).toBe(sha256(bytes));
    const files = await untar(await readAll(stream));
    const index = JSON.parse(files.get('index.json')!.toString()) as { manifests: { digest: string }[] };
    const oci = JSON.parse(files.get(`blobs/sha256/${index.manifests[0]!.digest.slice(7)}`)!.toString()) as { mediaType: string; layers: unknown };
    expect(oci).toMatchObject({ mediaType: OCI_MANIFEST, layers: [] });
    expect(files.get(`blobs/sha256/${configDigest.slice(7)}`)).toEqual(config);
  });

  test('export of an unknown image fails before any byte is written', async () => {
    await expect(exportArchive(fx.registry, ['alice/nothing:1'])).rejects.toMatchObject({ code: 'MANIFEST_UNKNOWN' });
  });

  test('a truncated archive is an error, not a partial import', async () => {
    const { entries } = dockerSave(['alice/app:1'], [6]);
    const whole = await tarOf(entries);
    await expect(importArchive(Readable.from([whole.subarray(0, 30_000)]), deps())).rejects.toThrow();
    expect(await fx.registry.tags('alice/app', {})).toBeUndefined();
    expect(await leftovers()).toEqual([]);
  });

  test('many small entries beside a large layer: the layer streams to its file, the rest are written behind the reading', async () => {
    const big = bytesOf(300_000, 7);
    const { entries } = dockerSave(['alice/mixed:1'], [8]);
    const hex = sha256(big).slice('sha256:'.length);
    const manifestEntry = entries.find((e) => e.name === 'manifest.json')!;
    const manifestJson = JSON.parse(manifestEntry.content!.toString()) as [{ Layers: string[] }];
    manifestJson[0].Layers.push(`${hex}.tar`);
    // The config's diff_ids are not checked by the import: the layer list is manifest.json's.
    const junk = Array.from({ length: 40 }, (_, i) => ({ name: `notes/${i}.txt`, content: Buffer.from(`note ${i}`) }));
    const archive: Entry[] = [
      ...junk.slice(0, 20),
      { name: `${hex}.tar`, content: big },
      ...junk.slice(20),
      ...entries.filter((e) => e !== manifestEntry),
      { name: 'manifest.json', content: Buffer.from(JSON.stringify(manifestJson)) },
    ];
    const result = await importArchive(Readable.from([await tarOf(archive)]), deps());
    expect(result.images[0]).toMatchObject({ repository: 'alice/mixed', tags: ['1'] });
    const doc = JSON.parse((await fx.registry.manifest('alice/mixed', '1'))!.bytes.toString()) as { layers: { digest: string }[] };
    expect(doc.layers.map((l) => l.digest)).toContain(sha256(big));
    for (const l of doc.layers) expect(sha256(await readAll((await fx.blobs.open(l.digest as never))!))).toBe(l.digest);
    expect(await leftovers()).toEqual([]);
  });

  test('a source that fails after many small entries leaves no temp file, however many writes were still under way', async () => {
    const junk = Array.from({ length: 200 }, (_, i) => ({ name: `junk/${i}`, content: bytesOf(2_000 + i, i) }));
    const whole = await tarOf(junk);
    for (let i = 0; i < 5; i++) {
      // Entries of about 2.5 KiB in the tar: about 150 of them, then the break.
      await expect(importArchive(breakingAfter(whole.subarray(0, 150 * 3_072 + 700)), deps())).rejects.toThrow();
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(await leftovers()).toEqual([]);
    }
  });

  test('a source that fails just inside an entry leaves no temp file, not even one still being opened', async () => {
    const { entries } = dockerSave(['alice/app:1'], [6]);
    const whole = await tarOf(entries);
    for (let i = 0; i < 20; i++) {
      // The first entry's header and a few bytes, then the connection breaks: its temp file is being
      // opened as the error comes.
      await expect(importArchive(breakingAfter(whole.subarray(0, 512 + 10)), deps())).rejects.toThrow();
      // Not only at once: a file still being opened would appear a moment after the removal.
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(await leftovers()).toEqual([]);
    }
  });
});
