import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  containersConfig,
  isolatedPodman,
  lowerCaseTempDir,
  removeTree,
  requireTool,
  skopeo,
  type ContainersConfig,
  type Podman,
} from '../helpers/clients.js';
import { buildOciLayout, sha256, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

const hex = (digest: string) => digest.slice('sha256:'.length);

interface ImageInfo {
  Id: string;
  Digest: string;
  RepoDigests: string[];
  RepoTags: string[];
  Architecture: string;
}

describe('podman against a real Wharf', () => {
  let reg: TestRegistry;
  let dir: string;
  let layout: OciLayout;
  let config: ContainersConfig;
  let host: string;
  /** The podman that pulled the layout and pushed it. */
  let pusher: Podman;
  /** What `push --digestfile` wrote. */
  let pushedDigest: string;
  let podmans = 0;

  /** A podman with empty storage of its own. */
  const freshPodman = () => isolatedPodman(join(dir, `podman-${++podmans}`), config);
  const inspect = async (podman: Podman, ref: string) => (JSON.parse((await podman.run(['image', 'inspect', ref])).stdout) as ImageInfo[])[0]!;

  beforeAll(async () => {
    await requireTool('podman', 'podman');
    await requireTool('skopeo', 'skopeo');
    dir = await lowerCaseTempDir('wharf-podman-');
    layout = await buildOciLayout(join(dir, 'layout'));
    config = await containersConfig(join(dir, 'containers'));
    reg = await startRegistry();
    host = new URL(reg.url).host;
    pusher = await freshPodman();
    await pusher.run(['pull', ...pusher.policyArgs, `oci:${layout.dir}:single`]);
    await pusher.run(['tag', hex(layout.single.config.digest), `${host}/bob/pm:1`]);
    await pusher.run(['push', ...pusher.policyArgs, '--tls-verify=false', '--digestfile', join(dir, 'digest'), `${host}/bob/pm:1`]);
    pushedDigest = (await readFile(join(dir, 'digest'), 'utf8')).trim();
  }, 120_000);

  afterAll(async () => {
    await reg?.close();
    if (dir) await removeTree(dir);
  }, 60_000);

  test('pull oci: stores the image under its config digest', async () => {
    const info = await inspect(pusher, hex(layout.single.config.digest));
    expect(info.Id).toBe(hex(layout.single.config.digest));
    expect(info.Architecture).toBe('amd64');
  }, 120_000);

  test('push --digestfile names the manifest the registry serves, with the source config', async () => {
    expect(pushedDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    const res = await fetch(`${reg.url}/v2/bob/pm/manifests/1`, {
      headers: { Accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' },
    });
    expect(res.status).toBe(200);
    const bytes = Buffer.from(await res.arrayBuffer());
    expect(sha256(bytes)).toBe(pushedDigest);
    expect(res.headers.get('docker-content-digest')).toBe(pushedDigest);
    const doc = JSON.parse(bytes.toString('utf8')) as { config: { digest: string }; layers: unknown[] };
    expect(doc.config.digest).toBe(layout.single.config.digest);
    expect(doc.layers).toHaveLength(layout.single.layers.length);
    // Every blob the manifest names is there.
    for (const d of [doc.config, ...(doc.layers as { digest: string }[])]) {
      const head = await fetch(`${reg.url}/v2/bob/pm/blobs/${d.digest}`, { method: 'HEAD' });
      expect(head.status).toBe(200);
    }
  }, 120_000);

  test('a fresh podman pulls by tag, and the image ID is the config digest', async () => {
    const podman = await freshPodman();
    const pulled = await podman.run(['pull', ...podman.policyArgs, '--tls-verify=false', `${host}/bob/pm:1`]);
    expect(pulled.stdout.trim()).toBe(hex(layout.single.config.digest));
    const info = await inspect(podman, `${host}/bob/pm:1`);
    expect(info.Id).toBe(hex(layout.single.config.digest));
    expect(info.Digest).toBe(pushedDigest);
    expect(info.RepoDigests).toContain(`${host}/bob/pm@${pushedDigest}`);
  }, 120_000);

  test('a fresh podman pulls by digest', async () => {
    const podman = await freshPodman();
    const pulled = await podman.run(['pull', ...podman.policyArgs, '--tls-verify=false', `${host}/bob/pm@${pushedDigest}`]);
    expect(pulled.stdout.trim()).toBe(hex(layout.single.config.digest));
    const info = await inspect(podman, hex(layout.single.config.digest));
    expect(info.Digest).toBe(pushedDigest);
  }, 120_000);

  test('pull --platform linux/arm64/v8 of a two-platform index picks the arm64 image', async () => {
    await skopeo(config, ['copy', '--all', `oci:${layout.dir}:multi`, `docker://${host}/alice/multi:1`, '--dest-tls-verify=false']);
    const podman = await freshPodman();
    const arm64 = layout.multi.images.find((i) => i.platform.architecture === 'arm64')!;
    const pulled = await podman.run(['pull', ...podman.policyArgs, '--tls-verify=false', '--platform', 'linux/arm64/v8', `${host}/alice/multi:1`]);
    expect(pulled.stdout.trim()).toBe(hex(arm64.config.digest));
    const info = await inspect(podman, hex(arm64.config.digest));
    expect(info.Architecture).toBe('arm64');
    expect(info.RepoDigests).toContain(`${host}/alice/multi@${arm64.manifest.digest}`);
  }, 120_000);

  test('pull --platform linux/amd64 of the same index picks the amd64 image', async () => {
    await skopeo(config, ['copy', '--all', `oci:${layout.dir}:multi`, `docker://${host}/alice/multi:2`, '--dest-tls-verify=false']);
    const podman = await freshPodman();
    const amd64 = layout.multi.images.find((i) => i.platform.architecture === 'amd64')!;
    const pulled = await podman.run(['pull', ...podman.policyArgs, '--tls-verify=false', '--platform', 'linux/amd64', `${host}/alice/multi:2`]);
    expect(pulled.stdout.trim()).toBe(hex(amd64.config.digest));
  }, 120_000);

  test('search lists the repositories of the catalog, and --list-tags the tags of one', async () => {
    const found = await pusher.run(['search', '--tls-verify=false', '--format', '{{.Name}}', `${host}/`]);
    expect(found.stdout.split('\n').map((l) => l.trim())).toContain(`${host}/bob/pm`);
    // podman 4.3 ignores --format with --list-tags: read the NAME/TAG table.
    const tags = await pusher.run(['search', '--tls-verify=false', '--list-tags', `${host}/bob/pm`]);
    const rows = tags.stdout.trim().split('\n').slice(1).map((l) => l.trim().split(/\s+/));
    expect(rows).toEqual([[`${host}/bob/pm`, '1']]);
  }, 120_000);
});
