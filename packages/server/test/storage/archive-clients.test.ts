import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { request } from 'node:http';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import {
  containersConfig,
  isolatedPodman,
  lowerCaseTempDir,
  removeTree,
  requireTool,
  run,
  skopeo,
  type ContainersConfig,
  type Podman,
} from '../helpers/clients.js';
import { pushImage } from '../helpers/oci.js';
import { buildOciLayout, layoutRef, tar, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { sha256, storageConfig, wharf } from './helpers.js';

const hex = (digest: string) => digest.slice('sha256:'.length);

/**
 * Import and export against real clients: tarballs made by `podman save` and `skopeo copy …
 * docker-archive:` go in (from a file, from stdin gzip-compressed, through POST /admin/import) and pull
 * back with skopeo; exports (CLI and GET /admin/export) are read by `podman load` and `skopeo copy
 * oci-archive:`, digests compared.
 */
describe('wharf import and export with podman and skopeo', () => {
  let reg: TestRegistry;
  let dir: string;
  let layout: OciLayout;
  let config: ContainersConfig;
  let host: string;
  let configFile: string;
  let podmans = 0;
  const freshPodman = (): Promise<Podman> => isolatedPodman(join(dir, `podman-${++podmans}`), config);
  /** The config digest of what a registry serves for a tag (single-platform), pulled with skopeo. */
  const pulledConfig = async (ref: string) => sha256((await skopeo(config, ['inspect', '--tls-verify=false', '--config', '--raw', `docker://${host}/${ref}`])).bytes);

  beforeAll(async () => {
    await requireTool('podman', 'podman');
    await requireTool('skopeo', 'skopeo');
    dir = await lowerCaseTempDir('wharf-archive-');
    layout = await buildOciLayout(join(dir, 'layout'));
    config = await containersConfig(join(dir, 'containers'));
    reg = await startRegistry();
    host = new URL(reg.url).host;
    configFile = await storageConfig(reg.root);
  }, 60_000);

  afterAll(async () => {
    await reg?.close();
    if (dir) await removeTree(dir);
  }, 60_000);

  test('a podman save tarball imports under the names it carries, and skopeo pulls it back', async () => {
    const podman = await freshPodman();
    await podman.run(['pull', ...podman.policyArgs, `oci:${layout.dir}:single`]);
    await podman.run(['tag', hex(layout.single.config.digest), 'localhost/alice/saved:1']);
    const file = join(dir, 'podman-save.tar');
    await podman.run(['save', '--format', 'docker-archive', '-o', file, 'localhost/alice/saved:1']);

    const result = await wharf(['import', file, '--config', configFile]);
    expect(result.code).toBe(0);
    expect(result.stdout.toString()).toMatch(/^imported alice\/saved:1 sha256:[0-9a-f]{64}$/m);
    expect(result.stdout.toString()).toMatch(/^docker-archive: 1 image, 3 blobs stored/m);
    expect(await pulledConfig('alice/saved:1')).toBe(layout.single.config.digest);
    const out = join(dir, 'pulled-saved');
    await skopeo(config, ['copy', '--src-tls-verify=false', `docker://${host}/alice/saved:1`, `oci:${out}:x`]);
    const pulled = JSON.parse((await skopeo(config, ['inspect', `oci:${out}:x`])).stdout) as { Layers: string[] };
    expect(pulled.Layers).toHaveLength(layout.single.layers.length);
  }, 120_000);

  test('a skopeo docker-archive tarball, gzip-compressed, imports from standard input with --repository and --tag', async () => {
    const file = join(dir, 'skopeo.tar');
    await skopeo(config, ['copy', `oci:${layout.dir}:single`, `docker-archive:${file}:whatever/name:7`]);
    const gz = gzipSync(await readFile(file));
    const result = await wharf(['import', '-', '--repository', 'bob/from-stdin', '--tag', 'gz', '--config', configFile], { input: gz });
    expect(result.text()).toMatch(/^imported bob\/from-stdin:gz sha256:/m);
    expect(result.code).toBe(0);
    expect(await pulledConfig('bob/from-stdin:gz')).toBe(layout.single.config.digest);
    const tags = JSON.parse((await skopeo(config, ['list-tags', '--tls-verify=false', `docker://${host}/bob/from-stdin`])).stdout) as { Tags: string[] };
    expect(tags.Tags).toEqual(['gz']);
  }, 120_000);

  test('an OCI layout tarball through POST /admin/import keeps every manifest byte for byte, tagged by ref.name', async () => {
    const file = join(dir, 'layout.tar');
    await run('tar', ['-C', layout.dir, '-cf', file, '.']);
    const res = await fetch(`${reg.url}/admin/import?repository=carol/layout`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-tar' },
      // streamed, as automation would send a large tarball
      body: createReadStream(file) as unknown as RequestInit['body'],
      duplex: 'half',
    } as RequestInit);
    const body = (await res.json()) as { format: string; images: { repository: string; tags: string[]; digest: string }[] };
    expect(res.status).toBe(201);
    expect(body.format).toBe('oci-layout');
    expect(body.images.map((i) => [i.repository, i.tags, i.digest])).toEqual([
      ['carol/layout', ['single'], layout.single.manifest.digest],
      ['carol/layout', ['multi'], layout.multi.index.digest],
    ]);
    const raw = await skopeo(config, ['inspect', '--tls-verify=false', '--raw', `docker://${host}/carol/layout:multi`]);
    expect(sha256(raw.bytes)).toBe(layout.multi.index.digest);
    const arm = layout.multi.images.find((i) => i.platform.architecture === 'arm64')!;
    const armConfig = await skopeo(config, ['--override-arch', 'arm64', '--override-variant', 'v8', 'inspect', '--tls-verify=false', '--config', '--raw', `docker://${host}/carol/layout:multi`]);
    expect(sha256(armConfig.bytes)).toBe(arm.config.digest);
    expect((await layoutRef(layout.dir, 'single')).digest).toBe(layout.single.manifest.digest);
  }, 120_000);

  test('wharf export > out.tar: podman load takes it (image ID = config digest), skopeo oci-archive: reads the same manifest digest', async () => {
    const exported = await wharf(['export', 'carol/layout:single', '--config', configFile]);
    expect(exported.code).toBe(0);
    expect(exported.stderr).toMatch(/exported carol\/layout:single: 1 manifest, 3 blobs/);
    const file = join(dir, 'export-single.tar');
    await writeFile(file, exported.stdout);

    const podman = await freshPodman();
    const loaded = await podman.run(['load', '-i', file]);
    expect(loaded.stdout).toMatch(/Loaded image/);
    const info = (JSON.parse((await podman.run(['image', 'inspect', hex(layout.single.config.digest)])).stdout) as { Id: string }[])[0]!;
    expect(info.Id).toBe(hex(layout.single.config.digest));

    const inspected = JSON.parse((await skopeo(config, ['inspect', `oci-archive:${file}`])).stdout) as { Digest: string };
    expect(inspected.Digest).toBe(layout.single.manifest.digest);
    const copy = join(dir, 'from-archive');
    await skopeo(config, ['copy', `oci-archive:${file}`, `oci:${copy}:x`]);
    expect((await layoutRef(copy, 'x')).digest).toBe(layout.single.manifest.digest);

    // The image imported from podman save (a Docker manifest, written as OCI) loads as the same image too.
    const docker = await wharf(['export', 'alice/saved:1', '-o', join(dir, 'export-saved.tar'), '--config', configFile]);
    expect(docker.stderr).toMatch(/note: alice\/saved:1 is a Docker manifest/);
    const other = await freshPodman();
    await other.run(['load', '-i', join(dir, 'export-saved.tar')]);
    const loadedSaved = (JSON.parse((await other.run(['image', 'inspect', hex(layout.single.config.digest)])).stdout) as { Id: string }[])[0]!;
    expect(loadedSaved.Id).toBe(hex(layout.single.config.digest));
  }, 180_000);

  test('GET /admin/export of an index and an image: multi-arch, both named; skopeo copies them back with the same digests', async () => {
    const res = await fetch(`${reg.url}/admin/export?ref=carol/layout:multi&ref=alice/saved:1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/x-tar');
    const file = join(dir, 'export-two.tar');
    await writeFile(file, Buffer.from(await res.arrayBuffer()));

    const raw = await skopeo(config, ['inspect', '--raw', `oci-archive:${file}:carol/layout:multi`]);
    expect(sha256(raw.bytes)).toBe(layout.multi.index.digest);
    await skopeo(config, ['copy', '--all', `oci-archive:${file}:carol/layout:multi`, `docker://${host}/dave/roundtrip:1`, '--dest-tls-verify=false']);
    const back = await skopeo(config, ['inspect', '--tls-verify=false', '--raw', `docker://${host}/dave/roundtrip:1`]);
    expect(sha256(back.bytes)).toBe(layout.multi.index.digest);
    // alice/saved:1 came from docker save: a Docker manifest, written as OCI (as skopeo would), so its
    // manifest digest is new, but config (the image ID) and layers are the same bytes.
    const savedConfig = await skopeo(config, ['inspect', '--config', '--raw', `oci-archive:${file}:alice/saved:1`]);
    expect(sha256(savedConfig.bytes)).toBe(await pulledConfig('alice/saved:1'));
    const savedLayers = JSON.parse((await skopeo(config, ['inspect', `oci-archive:${file}:alice/saved:1`])).stdout) as { Layers: string[] };
    const servedLayers = JSON.parse((await skopeo(config, ['inspect', '--tls-verify=false', `docker://${host}/alice/saved:1`])).stdout) as { Layers: string[] };
    expect(savedLayers.Layers).toEqual(servedLayers.Layers);
  }, 180_000);

  test('an image saved from a pull through the proxy (named proxy/...) is refused, not imported where no pull reaches it', async () => {
    const file = join(dir, 'proxied.tar');
    await skopeo(config, ['copy', `oci:${layout.dir}:single`, `docker-archive:${file}:wharf.example.com/proxy/docker.io/library/alpine:3.20`]);
    // The server's configuration has the proxy on (the CLI's other tests' has it off).
    const proxyOn = join(reg.root, 'proxy-on.toml');
    await writeFile(proxyOn, (await readFile(configFile, 'utf8')).replace('[proxy]\nenabled = false', '[proxy]\nenabled = true'));
    const result = await wharf(['import', file, '--config', proxyOn]);
    expect(result.code).not.toBe(0);
    expect(result.text()).toContain('proxy/docker.io/library/alpine is under proxy/, the dependency proxy\'s read-only names: import it into a repository of your own (--repository NAME');
    const named = await wharf(['import', file, '--repository', 'proxy/docker.io/library/alpine', '--config', proxyOn]);
    expect(named.code).not.toBe(0);
    const res = await fetch(`${reg.url}/admin/import?repository=proxy/x/y&tag=1`, { method: 'POST', body: await readFile(file) });
    expect(res.status).toBe(405);
    expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('UNSUPPORTED');
    // Nothing stored under those names; the same tarball goes where it is told.
    const catalog = (await (await fetch(`${reg.url}/v2/_catalog`)).json()) as { repositories: string[] };
    expect(catalog.repositories.filter((r) => r.startsWith('proxy/'))).toEqual([]);
    const renamed = await wharf(['import', file, '--repository', 'alice/alpine', '--tag', '3.20', '--config', configFile]);
    expect(renamed.code).toBe(0);
    expect(await pulledConfig('alice/alpine:3.20')).toBe(layout.single.config.digest);
  }, 120_000);

  test('wharf export to a folder that does not exist says so in one line, exit 1, no stack trace', async () => {
    // carol/layout:single was imported by a test above.
    const out = await wharf(['export', 'carol/layout:single', '-o', join(dir, 'no-such-folder', 'x.tar'), '--config', configFile]);
    expect(out.code).toBe(1);
    expect(out.stderr).toMatch(/^wharf: ENOENT: no such file or directory, open '.*no-such-folder\/x\.tar'\n$/);
  });

  test('wharf export -o FILE cut short (a blob file gone) exits 1 and leaves no truncated tarball at FILE', async () => {
    const { layer } = await pushImage(reg.url, 'dave/cut', '1');
    const hex = layer.digest.slice('sha256:'.length);
    await rm(join(reg.root, 'registry', 'blobs', 'sha256', hex.slice(0, 2), hex));
    const folder = join(dir, 'cut-export');
    await mkdir(folder);
    const out = await wharf(['export', 'dave/cut:1', '-o', join(folder, 'cut.tar'), '--config', configFile]);
    expect(out.code).toBe(1);
    expect(await readdir(folder)).toEqual([]);
  });

  test('wharf export of an image that is not there names it in words, not JSON', async () => {
    const out = await wharf(['export', 'nosuch/x:1', '--config', configFile]);
    expect(out).toMatchObject({ code: 1, stderr: 'wharf: no such image (ref: nosuch/x:1)\n' });
  });

  test('an unknown image is a 404 before any byte; a broken tarball a 400 and nothing stored', async () => {
    const missing = await fetch(`${reg.url}/admin/export?ref=nobody/here:1`);
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('MANIFEST_UNKNOWN');
    const bad = await fetch(`${reg.url}/admin/import?repository=eve/bad`, { method: 'POST', body: Buffer.from('this is not a tarball at all, not even close') });
    expect(bad.status).toBeGreaterThanOrEqual(400);
    expect(bad.status).toBeLessThan(500);
    expect((await fetch(`${reg.url}/v2/eve/bad/tags/list`)).status).toBe(404);
  });

  test('an import refused at its first entry reads the rest of the body and drops it: the client, still sending, gets its answer', async () => {
    // An entry under blobs/ whose content is not its digest, then 24 MiB more: far more than the
    // socket buffers hold, so the client finishes sending only if the server reads on.
    const body = tar([
      { path: `blobs/sha256/${'a'.repeat(64)}`, content: Buffer.from('not what the name says') },
      { path: 'junk/big', content: randomBytes(24 * 1024 * 1024) },
    ]);
    const url = new URL(`${reg.url}/admin/import?repository=eve/early`);
    const outcome = await new Promise<{ status?: number; code?: string; sent: boolean }>((resolve) => {
      let sent = false;
      let closed = false;
      let answer: { status: number; code: string } | undefined;
      // The answer comes as soon as the entry is refused; the body goes on being read meanwhile.
      const settle = () => {
        if (closed && answer) resolve({ ...answer, sent });
      };
      const req = request({ host: url.hostname, port: url.port, path: `${url.pathname}${url.search}`, method: 'POST', headers: { 'content-length': body.length } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          answer = { status: res.statusCode!, code: (JSON.parse(Buffer.concat(chunks).toString()) as { errors: { code: string }[] }).errors[0]!.code };
          settle();
        });
      });
      req.on('finish', () => (sent = true));
      req.on('close', () => {
        closed = true;
        settle();
      });
      req.on('error', (err: NodeJS.ErrnoException) => resolve({ code: err.code ?? err.message, sent }));
      req.end(body);
    });
    expect(outcome).toEqual({ status: 400, code: 'DIGEST_INVALID', sent: true });
  });
});
