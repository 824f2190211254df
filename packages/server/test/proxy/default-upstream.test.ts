import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { buildLayout, pull, removeTemps, seed, type Layout } from './helpers/tools.js';

describe('[proxy] default_upstream (Docker registry-mirrors mode)', () => {
  let up: TestRegistry;
  let proxy: TestRegistry;
  let upstreamImage: Awaited<ReturnType<typeof pushImage>>;
  let layout: Layout;

  beforeAll(async () => {
    up = await startRegistry();
    upstreamImage = await pushImage(up.url, 'library/app', '1', 'upstream');
    layout = await buildLayout('default-upstream');
    await seed(layout, new URL(up.url).host, 'library/real', 'library/multi');
    proxy = await startRegistry({ settings: { proxy: { default_upstream: 'up', retries: 0, upstreams: { up: { url: up.url } } } } });
  });
  afterAll(async () => {
    await proxy?.close();
    await up?.close();
    await removeTemps();
  });

  test('a read of a name with no local repository is served from the default upstream, with OCI-Namespace', async () => {
    const res = await fetch(`${proxy.url}/v2/library/app/manifests/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(upstreamImage.manifest.digest);
    expect(res.headers.get('oci-namespace')).toBe('up');
    const layer = await fetch(`${proxy.url}/v2/library/app/blobs/${upstreamImage.layer.digest}`);
    expect(layer.status).toBe(200);
    expect(Buffer.from(await layer.arrayBuffer()).equals(upstreamImage.layer.bytes)).toBe(true);
  });

  test('skopeo pulls a non-local name at the registry root, as a Docker mirror client would', async () => {
    const host = new URL(proxy.url).host;
    expect(await pull(`${host}/library/real:1`)).toBe(layout.single);
    expect(await pull(`${host}/library/multi:1`, { all: true })).toBe(layout.multi);
  });

  test('the upstream answering 404 is a 404', async () => {
    const res = await fetch(`${proxy.url}/v2/library/nothing/manifests/1`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('MANIFEST_UNKNOWN');
  });

  test('a local repository of the same name wins', async () => {
    await pushImage(up.url, 'team/shared', '1', 'upstream');
    const local = await pushImage(proxy.url, 'team/shared', '1', 'local');
    const res = await fetch(`${proxy.url}/v2/team/shared/manifests/1`);
    expect(res.headers.get('docker-content-digest')).toBe(local.manifest.digest);
    expect(res.headers.get('oci-namespace')).toBeNull();
  });

  test('pushes stay local, even to a name the upstream has; that name is local from then on', async () => {
    await pushImage(up.url, 'team/pushed', '1', 'upstream');
    expect((await fetch(`${proxy.url}/v2/team/pushed/manifests/1`)).headers.get('oci-namespace')).toBe('up');
    const pushed = await pushImage(proxy.url, 'team/pushed', '2', 'local');
    expect((await fetch(`${up.url}/v2/team/pushed/manifests/2`)).status).toBe(404);
    const res = await fetch(`${proxy.url}/v2/team/pushed/manifests/2`);
    expect(res.headers.get('docker-content-digest')).toBe(pushed.manifest.digest);
    // The local repository now hides the upstream one, tag 1 included.
    expect((await fetch(`${proxy.url}/v2/team/pushed/manifests/1`)).status).toBe(404);
  });
});
