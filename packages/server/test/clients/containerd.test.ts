import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, relative } from 'node:path';
import { gzipSync } from 'node:zlib';
import {
  containersConfig,
  requireTool,
  shortTempDir,
  skopeo,
  startContainerd,
  type Containerd,
  type ContainersConfig,
} from '../helpers/clients.js';
import { buildOciLayout, noise, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, sha256, tar, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** The DIGEST column of `ctr images ls` for `ref`. */
async function listedDigest(containerd: Containerd, ref: string): Promise<string | undefined> {
  const { stdout } = await containerd.ctr(['images', 'ls']);
  for (const line of stdout.split('\n').slice(1)) {
    const [name, , digest] = line.trim().split(/\s+/);
    if (name === ref) return digest;
  }
  return undefined;
}

/** The digests in containerd's content store. */
async function contentDigests(containerd: Containerd): Promise<Set<string>> {
  const { stdout } = await containerd.ctr(['content', 'ls', '-q']);
  return new Set(stdout.split('\n').map((l) => l.trim()).filter(Boolean));
}

/** An OCI layout folder as a tar stream, for `ctr images import`. */
async function layoutTar(dir: string): Promise<Buffer> {
  const entries: { path: string; content?: Buffer }[] = [];
  const walk = async (folder: string) => {
    for (const entry of (await readdir(folder, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      const full = join(folder, entry.name);
      if (entry.isDirectory()) {
        entries.push({ path: relative(dir, full) });
        await walk(full);
      } else {
        entries.push({ path: relative(dir, full), content: await readFile(full) });
      }
    }
  };
  await walk(dir);
  return tar(entries);
}

interface Forwarded {
  readonly method: string;
  readonly path: string;
  readonly range: string | undefined;
  readonly status: number;
  readonly contentRange: string | undefined;
  readonly cut: boolean;
}

/**
 * A misbehaving hop in front of Wharf: forwards every request, except that the first GET of `cutPath`
 * gets its headers and `cutAfter` bytes of body, then the connection is destroyed.
 */
async function startCuttingProxy(target: string, cutPath: string, cutAfter: number): Promise<{ host: string; seen: Forwarded[]; server: Server }> {
  const seen: Forwarded[] = [];
  let cutDone = false;
  const server = createServer((req, res) => {
    const upstream = request(new URL(req.url!, target), { method: req.method, headers: req.headers }, (up) => {
      const cut = !cutDone && req.method === 'GET' && req.url === cutPath;
      if (cut) cutDone = true;
      seen.push({
        method: req.method!,
        path: req.url!,
        range: req.headers.range,
        status: up.statusCode!,
        contentRange: up.headers['content-range'] as string | undefined,
        cut,
      });
      res.writeHead(up.statusCode!, up.headers);
      if (!cut) {
        up.pipe(res);
        return;
      }
      let sent = 0;
      up.on('data', (chunk: Buffer) => {
        if (sent >= cutAfter) return;
        const part = chunk.subarray(0, cutAfter - sent);
        sent += part.length;
        res.write(part, () => {
          if (sent >= cutAfter) {
            up.destroy();
            res.socket?.destroy();
          }
        });
      });
    });
    upstream.on('error', () => res.socket?.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { host: `127.0.0.1:${(server.address() as AddressInfo).port}`, seen, server };
}

describe('containerd (ctr) against a real Wharf', () => {
  let reg: TestRegistry;
  let dir: string;
  let layout: OciLayout;
  let config: ContainersConfig;
  let containerd: Containerd | undefined;
  let host: string;
  const ctr = (...args: string[]) => containerd!.ctr(args);
  const rawDigest = async (ref: string) =>
    sha256((await skopeo(config, ['inspect', '--raw', '--tls-verify=false', `docker://${host}/${ref}`])).bytes);

  beforeAll(async () => {
    await requireTool('containerd', 'containerd');
    await requireTool('ctr', 'containerd');
    await requireTool('skopeo', 'skopeo');
    dir = await shortTempDir();
    layout = await buildOciLayout(join(dir, 'layout'));
    config = await containersConfig(join(dir, 'containers'));
    reg = await startRegistry();
    host = new URL(reg.url).host;
    await skopeo(config, ['copy', `oci:${layout.dir}:single`, `docker://${host}/alice/app:1`, '--dest-tls-verify=false']);
    await skopeo(config, ['copy', '--all', `oci:${layout.dir}:multi`, `docker://${host}/alice/multi:1`, '--dest-tls-verify=false']);
    containerd = await startContainerd(join(dir, 'ctrd'));
  }, 120_000);

  afterAll(async () => {
    // Always stop the daemon, even when beforeAll or a test failed.
    await containerd?.close();
    await reg?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  test('pull by tag unpacks the image, and images ls shows the manifest digest', async () => {
    await ctr('images', 'pull', '--plain-http', '--snapshotter', 'native', `${host}/alice/app:1`);
    expect(await listedDigest(containerd!, `${host}/alice/app:1`)).toBe(layout.single.manifest.digest);
    const content = await contentDigests(containerd!);
    for (const d of [layout.single.manifest, layout.single.config, ...layout.single.layers]) expect(content).toContain(d.digest);
    // Unpacked: the snapshot of the top layer exists.
    const { stdout } = await ctr('snapshots', '--snapshotter', 'native', 'ls');
    expect(stdout.trim().split('\n').length).toBeGreaterThan(layout.single.layers.length);
  }, 120_000);

  test('pull by digest resolves the same manifest', async () => {
    const ref = `${host}/alice/app@${layout.single.manifest.digest}`;
    await ctr('images', 'pull', '--plain-http', '--snapshotter', 'native', ref);
    expect(await listedDigest(containerd!, ref)).toBe(layout.single.manifest.digest);
  }, 120_000);

  test('tag + push stores a byte-identical manifest (skopeo inspect --raw)', async () => {
    await ctr('images', 'pull', '--plain-http', '--snapshotter', 'native', `${host}/alice/app:1`);
    await ctr('images', 'tag', '--force', `${host}/alice/app:1`, `${host}/alice/ctr:1`);
    await ctr('images', 'push', '--plain-http', `${host}/alice/ctr:1`);
    expect(await rawDigest('alice/ctr:1')).toBe(layout.single.manifest.digest);
    for (const d of [layout.single.config, ...layout.single.layers]) {
      const head = await fetch(`${reg.url}/v2/alice/ctr/blobs/${d.digest}`, { method: 'HEAD' });
      expect(head.status).toBe(200);
      expect(head.headers.get('content-length')).toBe(String(d.size));
    }
  }, 120_000);

  test('pull --all-platforms fetches the index and both platform images', async () => {
    const ref = `${host}/alice/multi:1`;
    await ctr('images', 'pull', '--plain-http', '--all-platforms', ref);
    expect(await listedDigest(containerd!, ref)).toBe(layout.multi.index.digest);
    const content = await contentDigests(containerd!);
    expect(content).toContain(layout.multi.index.digest);
    for (const image of layout.multi.images) {
      for (const d of [image.manifest, image.config, ...image.layers]) expect(content).toContain(d.digest);
    }
  }, 120_000);

  /** Imports the layout as `<host>/<repo>:single` and `:multi`: images with no registry source, so a push must upload. */
  async function importLayout(repo: string): Promise<void> {
    const archive = join(dir, 'layout.tar');
    await writeFile(archive, await layoutTar(layout.dir));
    await ctr('images', 'import', '--base-name', `${host}/${repo}`, '--all-platforms', '--no-unpack', archive);
  }

  test('push of an imported image uploads every blob (no mount source) and the manifest byte for byte', async () => {
    await importLayout('carol/imported');
    expect(await listedDigest(containerd!, `${host}/carol/imported:single`)).toBe(layout.single.manifest.digest);
    await ctr('images', 'push', '--plain-http', `${host}/carol/imported:single`);
    expect(await rawDigest('carol/imported:single')).toBe(layout.single.manifest.digest);
    for (const d of [layout.single.config, ...layout.single.layers]) {
      const res = await fetch(`${reg.url}/v2/carol/imported/blobs/${d.digest}`);
      expect(res.status).toBe(200);
      expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(d.digest);
    }
  }, 120_000);

  test('push of an imported index uploads both platform images and the index byte for byte', async () => {
    await importLayout('carol/indexed');
    expect(await listedDigest(containerd!, `${host}/carol/indexed:multi`)).toBe(layout.multi.index.digest);
    await ctr('images', 'push', '--plain-http', `${host}/carol/indexed:multi`);
    expect(await rawDigest('carol/indexed:multi')).toBe(layout.multi.index.digest);
    for (const image of layout.multi.images) {
      expect(await rawDigest(`carol/indexed@${image.manifest.digest}`)).toBe(image.manifest.digest);
      for (const d of [image.config, ...image.layers]) {
        expect((await fetch(`${reg.url}/v2/carol/indexed/blobs/${d.digest}`, { method: 'HEAD' })).status).toBe(200);
      }
    }
  }, 120_000);

  test('a layer download cut off midway resumes with a Range request that Wharf answers 206', async () => {
    // A layer this daemon has never seen (containerd shares content between namespaces).
    const repo = 'erin/resume';
    const raw = tar([{ path: 'data.bin', content: noise('resumed layer', 3 * 1024 * 1024) }]);
    const layer = gzipSync(raw);
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256(raw)] } }));
    for (const b of [layer, config]) {
      const res = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/?digest=${sha256(b)}`, { method: 'POST', body: b });
      expect(res.status).toBe(201);
    }
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length },
        layers: [{ mediaType: OCI_LAYER_GZIP, digest: sha256(layer), size: layer.length }],
      }),
    );
    expect((await fetch(`${reg.url}/v2/${repo}/manifests/1`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body: manifest })).status).toBe(201);

    const layerPath = `/v2/${repo}/blobs/${sha256(layer)}`;
    const cutAfter = 1024 * 1024;
    const proxy = await startCuttingProxy(reg.url, layerPath, cutAfter);
    try {
      // containerd notices the short body and, within the same pull, asks for the rest with Range.
      const ref = `${proxy.host}/${repo}:1`;
      await ctr('images', 'pull', '--plain-http', '--snapshotter', 'native', ref);
      expect(await listedDigest(containerd!, ref)).toBe(sha256(manifest));
      expect(proxy.seen.filter((f) => f.path === layerPath && f.cut)).toHaveLength(1);
      const resumed = proxy.seen.filter((f) => f.path === layerPath && !f.cut);
      expect(resumed).toHaveLength(1);
      // containerd kept what it had and asked for the rest; Wharf served exactly that.
      const start = Number(/^bytes=(\d+)-$/.exec(resumed[0]!.range ?? '')?.[1]);
      expect(start).toBeGreaterThan(0);
      expect(start).toBeLessThanOrEqual(cutAfter);
      expect(resumed[0]!.status).toBe(206);
      expect(resumed[0]!.contentRange).toBe(`bytes ${start}-${layer.length - 1}/${layer.length}`);
      expect(await contentDigests(containerd!)).toContain(sha256(layer));
    } finally {
      proxy.server.closeAllConnections();
      await new Promise((r) => proxy.server.close(r));
    }
  }, 120_000);
});
