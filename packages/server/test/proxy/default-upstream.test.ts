import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { buildLayout, pull, removeTemps, run, seed, type Layout } from './helpers/tools.js';

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

  test('the upstream answering 404 is a 404 that says whose answer it is, and that it is remembered a while', async () => {
    for (let i = 0; i < 2; i++) {
      const res = await fetch(`${proxy.url}/v2/library/nothing/manifests/1`);
      expect(res.status).toBe(404);
      const error = ((await res.json()) as { errors: { code: string; message: string }[] }).errors[0]!;
      expect(error.code).toBe('MANIFEST_UNKNOWN');
      expect(error.message).toMatch(/^manifest unknown to upstream up \(its 404 is remembered for \[proxy\] absent_ttl, so a tag pushed there/);
    }
    // A digest's content never changes: no word of a tag that may show up later.
    const byDigest = await fetch(`${proxy.url}/v2/library/nothing/manifests/sha256:${'5'.repeat(64)}`);
    expect(byDigest.status).toBe(404);
    const error = ((await byDigest.json()) as { errors: { code: string; message: string }[] }).errors[0]!;
    expect(error.message).toBe('manifest unknown to upstream up (its 404 is remembered for [proxy] absent_ttl)');
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
    // The local repository now hides the upstream one, tag 1 included; the 404 says so, and where the
    // upstream's tag is still read.
    const hidden = await fetch(`${proxy.url}/v2/team/pushed/manifests/1`);
    expect(hidden.status).toBe(404);
    const error = ((await hidden.json()) as { errors: { code: string; message: string }[] }).errors[0]!;
    expect(error.code).toBe('MANIFEST_UNKNOWN');
    expect(error.message).toBe(
      'manifest unknown to registry: team/pushed is a repository of this server, so its pulls are not read from up; that upstream\'s images of this name are under proxy/up/team/pushed',
    );
    expect((await fetch(`${proxy.url}/v2/proxy/up/team/pushed/manifests/1`)).status).toBe(200);
    // OPTIONS on a name that is not local yet: what a push may do there, as pushes stay local.
    const options = await fetch(`${proxy.url}/v2/team/not-yet/manifests/1`, { method: 'OPTIONS' });
    expect(options.headers.get('allow')?.split(', ').sort()).toEqual(['DELETE', 'GET', 'HEAD', 'PUT']);
    const uploads = await fetch(`${proxy.url}/v2/team/not-yet/blobs/uploads/`, { method: 'OPTIONS' });
    expect(uploads.headers.get('allow')?.split(', ')).toContain('POST');
    // A registry without an upstream for the name says nothing of one.
    const plain = await fetch(`${up.url}/v2/team/pushed/manifests/9`);
    expect(((await plain.json()) as { errors: { message: string }[] }).errors[0]!.message).toBe('manifest unknown to registry');
  });

  test("a client's push of an image whose layers the upstream has under that name uploads them, and lands locally", async () => {
    const host = new URL(proxy.url).host;
    // A blob HEAD, which clients send before uploading a layer, answers for the local repository...
    const config = await fetch(`${up.url}/v2/library/real/manifests/1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } }).then(
      async (r) => ((await r.json()) as { config: { digest: string } }).config.digest,
    );
    expect((await fetch(`${up.url}/v2/library/real/blobs/${config}`, { method: 'HEAD' })).status).toBe(200);
    expect((await fetch(`${proxy.url}/v2/library/real/blobs/${config}`, { method: 'HEAD' })).status).toBe(404);
    // ...while a GET, which is what pulls send, is still the upstream's.
    expect((await fetch(`${proxy.url}/v2/library/real/blobs/${config}`)).status).toBe(200);

    // Answered from the upstream, the HEADs made skopeo skip every upload, and its manifest was refused.
    await run('skopeo', ['copy', '--dest-tls-verify=false', `oci:${layout.dir}:single`, `docker://${host}/library/real:mine`]);
    const res = await fetch(`${proxy.url}/v2/library/real/manifests/mine`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('oci-namespace')).toBeNull();
    expect(res.headers.get('docker-content-digest')).toBe(layout.single);
    expect((await fetch(`${up.url}/v2/library/real/manifests/mine`)).status).toBe(404);
  });

  test('blobs alone do not make a name local: a push cut short, or an image whose manifests were deleted, leaves the upstream serving it', async () => {
    const upstream = await pushImage(up.url, 'team/cut', '1', 'upstream');
    // A push cut after its first layer: an uploaded blob, no manifest.
    const blob = Buffer.from('a layer of a push that never finished');
    const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
    const uploaded = await fetch(`${proxy.url}/v2/team/cut/blobs/uploads/?digest=${digest}`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: blob });
    expect(uploaded.status).toBe(201);
    const served = await fetch(`${proxy.url}/v2/team/cut/manifests/1`);
    expect(served.status).toBe(200);
    expect(served.headers.get('docker-content-digest')).toBe(upstream.manifest.digest);
    expect(served.headers.get('oci-namespace')).toBe('up');
    // An image pushed, then deleted: the name is the upstream's again (before any collection).
    const local = await pushImage(proxy.url, 'team/cut', '2', 'local');
    expect((await fetch(`${proxy.url}/v2/team/cut/manifests/1`)).status).toBe(404);
    expect((await fetch(`${proxy.url}/v2/team/cut/manifests/${local.manifest.digest}`, { method: 'DELETE' })).status).toBe(202);
    const again = await fetch(`${proxy.url}/v2/team/cut/manifests/1`);
    expect(again.status).toBe(200);
    expect(again.headers.get('docker-content-digest')).toBe(upstream.manifest.digest);
  });

  test('the status of an upload session on a name not local yet is the local session, not the upstream', async () => {
    await pushImage(up.url, 'team/resumed', '1', 'upstream');
    const started = await fetch(`${proxy.url}/v2/team/resumed/blobs/uploads/`, { method: 'POST' });
    expect(started.status).toBe(202);
    const location = new URL(started.headers.get('location')!, proxy.url).href;
    const patched = await fetch(location, { method: 'PATCH', headers: { 'content-type': 'application/octet-stream', 'content-range': '0-4' }, body: 'hello' });
    expect(patched.status).toBe(202);
    for (const method of ['GET', 'HEAD']) {
      const status = await fetch(new URL(patched.headers.get('location')!, proxy.url), { method });
      expect(status.status).toBe(204);
      expect(status.headers.get('range')).toBe('0-4');
      expect(status.headers.get('oci-namespace')).toBeNull();
    }
  });
});
