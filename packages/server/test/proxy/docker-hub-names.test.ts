import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { CountingForwarder } from './helpers/counting-forwarder.js';

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
  async function pull(path: string, image: Awaited<ReturnType<typeof pushImage>>): Promise<void> {
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
});
