import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { containersConfig, requireTool, skopeo as runSkopeo, type ContainersConfig } from '../helpers/clients.js';
import { buildOciLayout, layoutRef, readLayoutBlob, sha256, type LayoutImage, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

interface ManifestDoc {
  mediaType?: string;
  config: { digest: string };
  layers: { digest: string }[];
  manifests?: never;
}

interface IndexDoc {
  mediaType?: string;
  manifests: { digest: string; platform?: { architecture: string; variant?: string } }[];
}

describe('skopeo against a real Wharf', () => {
  let reg: TestRegistry;
  let dir: string;
  let layout: OciLayout;
  let config: ContainersConfig;
  let host: string;
  const skopeo = (...args: string[]) => runSkopeo(config, args);

  beforeAll(async () => {
    await requireTool('skopeo', 'skopeo');
    dir = await mkdtemp(join(tmpdir(), 'wharf-skopeo-'));
    layout = await buildOciLayout(join(dir, 'layout'));
    config = await containersConfig(join(dir, 'containers'));
    reg = await startRegistry();
    host = new URL(reg.url).host;
    // The images most tests read: pushed once, with skopeo itself.
    await skopeo('copy', `oci:${layout.dir}:single`, `docker://${host}/alice/app:1`, '--dest-tls-verify=false');
    await skopeo('copy', '--all', `oci:${layout.dir}:multi`, `docker://${host}/alice/multi:1`, '--dest-tls-verify=false');
  });

  afterAll(async () => {
    await reg?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** Pulls `source` into a new layout under the temp folder and returns the layout folder. */
  async function pullInto(name: string, source: string, ...flags: string[]): Promise<string> {
    const out = join(dir, name);
    await skopeo('copy', ...flags, '--src-tls-verify=false', `docker://${host}/${source}`, `oci:${out}:x`);
    return out;
  }

  /** Every blob of `image` in `out` is the source layout's blob, byte for byte. */
  async function expectSameImage(out: string, image: LayoutImage): Promise<void> {
    const manifestBytes = await readLayoutBlob(out, image.manifest.digest);
    expect(manifestBytes).toEqual(await readLayoutBlob(layout.dir, image.manifest.digest));
    const doc = JSON.parse(manifestBytes!.toString('utf8')) as ManifestDoc;
    expect(doc.config.digest).toBe(image.config.digest);
    expect(doc.layers.map((l) => l.digest)).toEqual(image.layers.map((l) => l.digest));
    for (const d of [image.config, ...image.layers]) {
      const pulled = await readLayoutBlob(out, d.digest);
      expect(pulled).toBeDefined();
      expect(sha256(pulled!)).toBe(d.digest);
      expect(pulled!.equals((await readLayoutBlob(layout.dir, d.digest))!)).toBe(true);
    }
  }

  test('copy oci: → docker:// stores the manifest byte for byte (inspect --raw hashes to the source digest)', async () => {
    const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/alice/app:1`);
    expect(sha256(raw.bytes)).toBe(layout.single.manifest.digest);
    expect(raw.bytes.equals((await readLayoutBlob(layout.dir, layout.single.manifest.digest))!)).toBe(true);
  });

  test('inspect reports the manifest digest, platform and layers', async () => {
    const info = JSON.parse((await skopeo('inspect', '--tls-verify=false', `docker://${host}/alice/app:1`)).stdout) as {
      Digest: string;
      Architecture: string;
      Os: string;
      Layers: string[];
      Labels: Record<string, string>;
    };
    expect(info.Digest).toBe(layout.single.manifest.digest);
    expect(info.Architecture).toBe('amd64');
    expect(info.Os).toBe('linux');
    expect(info.Layers).toEqual(layout.single.layers.map((l) => l.digest));
    expect(info.Labels).toEqual({ 'wharf.test': 'single' });
  });

  test('inspect --config --raw returns the config blob', async () => {
    const raw = await skopeo('inspect', '--config', '--raw', '--tls-verify=false', `docker://${host}/alice/app:1`);
    expect(sha256(raw.bytes)).toBe(layout.single.config.digest);
  });

  test('pull by tag gives back the same manifest and every blob', async () => {
    const out = await pullInto('by-tag', 'alice/app:1');
    expect((await layoutRef(out, 'x')).digest).toBe(layout.single.manifest.digest);
    await expectSameImage(out, layout.single);
  });

  test('pull by digest gives back the same manifest and every blob', async () => {
    const out = await pullInto('by-digest', `alice/app@${layout.single.manifest.digest}`);
    expect((await layoutRef(out, 'x')).digest).toBe(layout.single.manifest.digest);
    await expectSameImage(out, layout.single);
  });

  test('copy --all stores the two-platform index unchanged, and each platform manifest by digest', async () => {
    const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/alice/multi:1`);
    expect(sha256(raw.bytes)).toBe(layout.multi.index.digest);
    const doc = JSON.parse(raw.stdout) as IndexDoc;
    expect(doc.manifests.map((m) => m.digest)).toEqual(layout.multi.images.map((i) => i.manifest.digest));
    for (const image of layout.multi.images) {
      const child = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/alice/multi@${image.manifest.digest}`);
      expect(sha256(child.bytes)).toBe(image.manifest.digest);
    }
  });

  test('copy --all pulls the index back with both platform images', async () => {
    const out = await pullInto('all', 'alice/multi:1', '--all');
    expect((await layoutRef(out, 'x')).digest).toBe(layout.multi.index.digest);
    expect(await readLayoutBlob(out, layout.multi.index.digest)).toEqual(await readLayoutBlob(layout.dir, layout.multi.index.digest));
    for (const image of layout.multi.images) await expectSameImage(out, image);
  });

  test('--override-arch arm64 --override-variant v8 picks the arm64/v8 config from the index', async () => {
    const raw = await skopeo('--override-arch', 'arm64', '--override-variant', 'v8', 'inspect', '--config', '--raw', '--tls-verify=false', `docker://${host}/alice/multi:1`);
    const arm64 = layout.multi.images.find((i) => i.platform.architecture === 'arm64')!;
    expect(sha256(raw.bytes)).toBe(arm64.config.digest);
    expect((JSON.parse(raw.stdout) as { architecture: string; variant: string })).toMatchObject({ architecture: 'arm64', variant: 'v8' });
  });

  test('--override-arch amd64 picks the amd64 config from the index', async () => {
    const raw = await skopeo('--override-arch', 'amd64', 'inspect', '--config', '--raw', '--tls-verify=false', `docker://${host}/alice/multi:1`);
    const amd64 = layout.multi.images.find((i) => i.platform.architecture === 'amd64')!;
    expect(sha256(raw.bytes)).toBe(amd64.config.digest);
  });

  test('list-tags lists every tag of a repository', async () => {
    for (const tag of ['v2', 'latest', 'v1']) {
      await skopeo('copy', `oci:${layout.dir}:single`, `docker://${host}/alice/tags:${tag}`, '--dest-tls-verify=false');
    }
    const listed = JSON.parse((await skopeo('list-tags', '--tls-verify=false', `docker://${host}/alice/tags`)).stdout) as { Repository: string; Tags: string[] };
    expect(listed.Repository).toBe(`${host}/alice/tags`);
    expect([...listed.Tags].sort()).toEqual(['latest', 'v1', 'v2']);
  });

  test('delete removes the manifest: the tag no longer resolves and is no longer listed', async () => {
    await skopeo('copy', `oci:${layout.dir}:single`, `docker://${host}/alice/gone:1`, '--dest-tls-verify=false');
    await skopeo('delete', '--tls-verify=false', `docker://${host}/alice/gone:1`);
    await expect(skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/alice/gone:1`)).rejects.toThrow(/manifest unknown/i);
    await expect(skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/alice/gone@${layout.single.manifest.digest}`)).rejects.toThrow(/manifest unknown/i);
    const listed = JSON.parse((await skopeo('list-tags', '--tls-verify=false', `docker://${host}/alice/gone`)).stdout) as { Tags: string[] };
    expect(listed.Tags).toEqual([]);
    // The other repositories holding the same manifest are untouched.
    const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/alice/app:1`);
    expect(sha256(raw.bytes)).toBe(layout.single.manifest.digest);
  });

  test('registry-to-registry copy keeps the manifest digest', async () => {
    await skopeo('copy', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${host}/alice/app:1`, `docker://${host}/alice/copy:1`);
    const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/alice/copy:1`);
    expect(sha256(raw.bytes)).toBe(layout.single.manifest.digest);
    const out = await pullInto('copy', 'alice/copy:1');
    await expectSameImage(out, layout.single);
  });

  test('copy --format v2s2 pushes a Docker schema 2 manifest that pulls back unchanged', async () => {
    await skopeo('copy', '--format', 'v2s2', `oci:${layout.dir}:single`, `docker://${host}/alice/docker:1`, '--dest-tls-verify=false');
    const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/alice/docker:1`);
    const doc = JSON.parse(raw.stdout) as ManifestDoc;
    expect(doc.mediaType).toBe('application/vnd.docker.distribution.manifest.v2+json');
    expect(doc.layers.map((l) => l.digest)).toEqual(layout.single.layers.map((l) => l.digest));
    const info = JSON.parse((await skopeo('inspect', '--tls-verify=false', `docker://${host}/alice/docker:1`)).stdout) as { Digest: string };
    expect(info.Digest).toBe(sha256(raw.bytes));
    const res = await fetch(`${reg.url}/v2/alice/docker/manifests/1`, { method: 'HEAD' });
    expect(res.headers.get('content-type')).toBe('application/vnd.docker.distribution.manifest.v2+json');
    expect(res.headers.get('docker-content-digest')).toBe(sha256(raw.bytes));
    // Pulled into `dir:` (which keeps the manifest as it is, unlike `oci:`), every byte is the same.
    const out = join(dir, 'docker');
    await skopeo('copy', '--src-tls-verify=false', `docker://${host}/alice/docker:1`, `dir:${out}`);
    expect((await readFile(join(out, 'manifest.json'))).equals(raw.bytes)).toBe(true);
    expect(doc.config.digest).toBe(layout.single.config.digest);
    for (const d of [layout.single.config, ...layout.single.layers]) {
      const pulled = await readFile(join(out, d.digest.slice('sha256:'.length)));
      expect(pulled.equals((await readLayoutBlob(layout.dir, d.digest))!)).toBe(true);
    }
  });

  test('parallel copies of one image into one repository all succeed with the same digest', async () => {
    const tags = ['p1', 'p2', 'p3', 'p4'];
    await Promise.all(tags.map((tag) => skopeo('copy', `oci:${layout.dir}:single`, `docker://${host}/alice/parallel:${tag}`, '--dest-tls-verify=false')));
    for (const tag of tags) {
      const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/alice/parallel:${tag}`);
      expect(sha256(raw.bytes)).toBe(layout.single.manifest.digest);
    }
    const out = await pullInto('parallel', 'alice/parallel:p3');
    await expectSameImage(out, layout.single);
  });
});
