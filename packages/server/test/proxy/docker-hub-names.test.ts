import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { WHARF_CLI } from '../helpers/wharf-process.js';
import { CountingForwarder } from './helpers/counting-forwarder.js';

type Image = Awaited<ReturnType<typeof pushImage>>;

/** Runs the built `wharf` CLI; its exit code and output. */
function wharf(args: readonly string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [WHARF_CLI, ...args], { env: { PATH: process.env.PATH } }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/**
 * The built-in `docker.io` upstream, its url pointed at a local Wharf (through a forwarder that counts
 * what it is asked) and nothing else configured: its aliases and Docker Hub's `library/` prefix for
 * one-component names are the built-in's, not a configured `library_prefix`.
 */
describe('the built-in docker.io upstream: one-component names are official images under library/', () => {
  let up: TestRegistry;
  let fwd: CountingForwarder;
  let proxy: TestRegistry;

  beforeAll(async () => {
    up = await startRegistry();
    fwd = await CountingForwarder.start(up.url);
    proxy = await startRegistry({ settings: { proxy: { retries: 0, upstreams: { 'docker.io': { url: fwd.url } } } } });
  });
  afterAll(async () => {
    await proxy?.close();
    await fwd?.close();
    await up?.close();
  });

  /** GETs of `path` (on the proxy) and the bytes, checked against what was pushed. */
  async function pull(path: string, image: Image): Promise<void> {
    const manifest = await fetch(`${proxy.url}/v2/proxy/${path}/manifests/1`);
    expect([path, manifest.status]).toEqual([path, 200]);
    expect(manifest.headers.get('docker-content-digest')).toBe(image.manifest.digest);
    expect(Buffer.from(await manifest.arrayBuffer()).equals(image.manifest.bytes)).toBe(true);
    const layer = await fetch(`${proxy.url}/v2/proxy/${path}/blobs/${image.layer.digest}`);
    expect([path, layer.status]).toEqual([path, 200]);
    expect(Buffer.from(await layer.arrayBuffer()).equals(image.layer.bytes)).toBe(true);
  }

  /** Upstream requests (any method) for paths under /v2/<repo>/. */
  const askedFor = (repo: string) => fwd.seen.filter((r) => r.path.startsWith(`/v2/${repo}/`)).map((r) => `${r.method} ${r.path}`);

  test('proxy/docker.io/alpine and proxy/docker/busybox fetch /v2/library/<name>/ upstream, manifests and blobs', async () => {
    const alpine = await pushImage(up.url, 'library/alpine', '1');
    const busybox = await pushImage(up.url, 'library/busybox', '1');
    await pull('docker.io/alpine', alpine);
    await pull('docker/busybox', busybox);
    await pull('index.docker.io/busybox', busybox);
    expect(askedFor('library/alpine')).toEqual(['GET /v2/library/alpine/manifests/1', `GET /v2/library/alpine/blobs/${alpine.layer.digest}`]);
    // The second name of the same image is the same cached repository: nothing more asked.
    expect(askedFor('library/busybox')).toEqual(['GET /v2/library/busybox/manifests/1', `GET /v2/library/busybox/blobs/${busybox.layer.digest}`]);
    // Never the name without its prefix.
    expect(askedFor('alpine')).toEqual([]);
    expect(askedFor('busybox')).toEqual([]);
  });

  test('library/<name> spelt out is the same repository as <name>, cached once, never library/library/', async () => {
    const redis = await pushImage(up.url, 'library/redis', '1');
    await pull('docker/redis', redis);
    await pull('docker/library/redis', redis);
    expect(askedFor('library/redis')).toEqual(['GET /v2/library/redis/manifests/1', `GET /v2/library/redis/blobs/${redis.layer.digest}`]);
    expect(askedFor('library/library')).toEqual([]);
  });

  test('names of two components or more are not prefixed', async () => {
    const tool = await pushImage(up.url, 'bitnami/redis', '1');
    const deep = await pushImage(up.url, 'team/sub/app', '1');
    await pull('docker/bitnami/redis', tool);
    await pull('docker.io/team/sub/app', deep);
    expect(askedFor('bitnami/redis')).toEqual(['GET /v2/bitnami/redis/manifests/1', `GET /v2/bitnami/redis/blobs/${tool.layer.digest}`]);
    expect(askedFor('team/sub/app')).toEqual(['GET /v2/team/sub/app/manifests/1', `GET /v2/team/sub/app/blobs/${deep.layer.digest}`]);
    expect(askedFor('library/bitnami')).toEqual([]);
    expect(askedFor('library/team')).toEqual([]);
  });

  /** The cached file of a blob in proxy_storage. */
  const cachedFile = (digest: string) => join(proxy.config.proxyStorage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

  /**
   * Pulls the image's manifest, config and layer through `path`, waits for the blob fills to be in
   * the cache (files and rows), and checks that a second pull asks the upstream nothing.
   */
  async function pullAndCache(path: string, repo: string, image: Image): Promise<void> {
    await pull(path, image);
    const config = await fetch(`${proxy.url}/v2/proxy/${path}/blobs/${image.config.digest}`);
    expect(Buffer.from(await config.arrayBuffer()).equals(image.config.bytes)).toBe(true);
    await proxy.fills.settled();
    expect([existsSync(cachedFile(image.config.digest)), existsSync(cachedFile(image.layer.digest))]).toEqual([true, true]);
    const before = askedFor(repo).length;
    await pull(path, image);
    expect(askedFor(repo).length).toBe(before);
  }

  /** After a purge: the blob files are gone, and the next pull fetches the manifest and the layer upstream again. */
  async function expectPurged(path: string, repo: string, image: Image): Promise<void> {
    expect([existsSync(cachedFile(image.config.digest)), existsSync(cachedFile(image.layer.digest))]).toEqual([false, false]);
    const manifestPath = `/v2/${repo}/manifests/1`;
    const layerPath = `/v2/${repo}/blobs/${image.layer.digest}`;
    const before = [fwd.count('GET', manifestPath), fwd.count('GET', layerPath)];
    await pull(path, image);
    expect([fwd.count('GET', manifestPath), fwd.count('GET', layerPath)]).toEqual([before[0]! + 1, before[1]! + 1]);
    await proxy.fills.settled();
    expect(existsSync(cachedFile(image.layer.digest))).toBe(true);
  }

  test('`wharf proxy purge docker <one-component name>`, run while the server runs, forgets library/<name>: files gone, the next pull asks the upstream', async () => {
    const image = await pushImage(up.url, 'library/cli-purged', '1', 'cli-purged');
    const kept = await pushImage(up.url, 'library/cli-kept', '1', 'cli-kept');
    await pullAndCache('docker/cli-purged', 'library/cli-purged', image);
    await pullAndCache('docker/cli-kept', 'library/cli-kept', kept);

    // The command reads the same database and proxy_storage as the running server.
    const file = join(proxy.root, 'purge.toml');
    const q = JSON.stringify;
    await writeFile(
      file,
      [
        'listen = "127.0.0.1:0"',
        `registry_storage = ${q(proxy.config.registryStorage)}`,
        `temporary_registry_storage = ${q(proxy.config.temporaryRegistryStorage)}`,
        `proxy_storage = ${q(proxy.config.proxyStorage)}`,
        `database = ${q(proxy.config.database)}`,
        '[auth]',
        'enabled = false',
        '[proxy.upstreams."docker.io"]',
        `url = ${q(fwd.url)}`,
        '',
      ].join('\n'),
    );
    // A name no repository can have is a usage error (exit 2), not "0 purged".
    for (const bad of ['BAD NAME', 'library/Cli-Purged', '../x']) {
      const refused = await wharf(['proxy', 'purge', 'docker', bad, '--config', file]);
      expect([bad, refused.code, refused.stdout]).toEqual([bad, 2, '']);
      expect(refused.stderr).toContain('is not a repository name');
    }
    const run = await wharf(['proxy', 'purge', 'docker', 'cli-purged', '--config', file]);
    const bytes = image.config.bytes.length + image.layer.bytes.length;
    expect(run).toEqual({ code: 0, stdout: `purged docker.io/library/cli-purged: 1 manifest, 2 blobs, ${bytes} bytes\n`, stderr: '' });

    await expectPurged('docker/cli-purged', 'library/cli-purged', image);
    // Another repository of the same upstream is still cached.
    const before = askedFor('library/cli-kept').length;
    await pull('docker/cli-kept', kept);
    expect(askedFor('library/cli-kept').length).toBe(before);
    expect(existsSync(cachedFile(kept.layer.digest))).toBe(true);
  });

  test('DELETE /admin/proxy/cache/docker/<one-component name> purges library/<name>: files gone, the next pull asks the upstream', async () => {
    const image = await pushImage(up.url, 'library/admin-purged', '1', 'admin-purged');
    await pullAndCache('docker.io/admin-purged', 'library/admin-purged', image);
    const res = await fetch(`${proxy.url}/admin/proxy/cache/docker/admin-purged`, { method: 'DELETE' });
    expect(res.status).toBe(200);
    const bytes = image.config.bytes.length + image.layer.bytes.length;
    expect(await res.json()).toEqual({ upstream: 'docker.io', repository: 'library/admin-purged', purged: { manifests: 1, blobs: 2, bytes } });
    await expectPurged('docker.io/admin-purged', 'library/admin-purged', image);
  });
});
