import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDistribution, type Distribution } from '../helpers/distribution.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { buildLayout, pull, removeTemps, run, seed, type Layout } from './helpers/tools.js';

const TTL_MS = 1000;

describe('pull-through from CNCF distribution (docker-registry) with htpasswd auth', () => {
  let layout: Layout;
  let dist: Distribution;
  let proxy: TestRegistry;
  let host: string;

  beforeAll(async () => {
    layout = await buildLayout('distribution-upstream');
    dist = await startDistribution({ htpasswd: { username: 'alice', password: 's3cret' } });
    await seed(layout, dist.host, 'alice/app', 'alice/multi', 'alice:s3cret');
    proxy = await startRegistry({
      settings: {
        proxy: {
          manifest_ttl: `${TTL_MS}ms`,
          retries: 0,
          upstreams: {
            dist: { url: dist.url, username: 'alice', password: 's3cret' },
            'dist-anonymous': { url: dist.url },
          },
        },
      },
    });
    host = new URL(proxy.url).host;
  });
  afterAll(async () => {
    await proxy?.close();
    await dist?.close();
    await removeTemps();
  });

  test('the upstream really requires credentials', async () => {
    expect((await fetch(`${dist.url}/v2/alice/app/manifests/1`)).status).toBe(401);
  });

  test('skopeo pulls by tag with the configured username/password; the manifest digest is the upstream one', async () => {
    expect(await pull(`${host}/proxy/dist/alice/app:1`)).toBe(layout.single);
  });

  test('skopeo pulls by digest', async () => {
    expect(await pull(`${host}/proxy/dist/alice/app@${layout.single}`)).toBe(layout.single);
  });

  test('skopeo copy --all of a two-platform index keeps the index digest', async () => {
    expect(await pull(`${host}/proxy/dist/alice/multi:1`, { all: true })).toBe(layout.multi);
  });

  test('without configured credentials: 502 UPSTREAM_ERROR, and the upstream challenge never reaches the client', async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/dist-anonymous/alice/app/manifests/1`);
    expect(res.status).toBe(502);
    expect(res.headers.get('www-authenticate')).toBeNull();
    const body = (await res.json()) as { errors: { code: string }[] };
    expect(body.errors[0]!.code).toBe('UPSTREAM_ERROR');
  });

  test("?ns= naming a registry no upstream is configured for is not answered from Wharf's own repository of that name", async () => {
    // A repository of Wharf's own, named as the one registry.corp.example holds (another image, there).
    await run('skopeo', ['copy', '--all', '--dest-tls-verify=false', `oci:${layout.dir}:multi`, `docker://${host}/team/app:1`]);
    const accept = { accept: 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json' };
    // containerd with a catch-all hosts.toml, pulling registry.corp.example/team/app:1: a 404 sends it on to that registry.
    const foreign = await fetch(`${proxy.url}/v2/team/app/manifests/1?ns=registry.corp.example`, { headers: accept });
    expect(foreign.status).toBe(404);
    expect(((await foreign.json()) as { errors: { code: string; message: string }[] }).errors[0]).toMatchObject({ code: 'NAME_UNKNOWN', message: expect.stringContaining('registry.corp.example') });
    const head = await fetch(`${proxy.url}/v2/team/app/manifests/1?ns=registry.corp.example`, { method: 'HEAD', headers: accept });
    expect(head.status).toBe(404);
    expect((await fetch(`${proxy.url}/v2/team/app/tags/list?ns=registry.corp.example`)).status).toBe(404);
    // A blob HEAD answers as the GET would.
    const config = JSON.parse(await (await fetch(`${proxy.url}/v2/team/app/manifests/1`, { headers: accept })).text()) as { manifests: { digest: string }[] };
    expect((await fetch(`${proxy.url}/v2/team/app/blobs/${config.manifests[0]!.digest}?ns=registry.corp.example`, { method: 'HEAD' })).status).toBe(404);
    // Another registry on Wharf's host name or address, on another port: not Wharf.
    const port = Number(new URL(proxy.url).port);
    expect((await fetch(`${proxy.url}/v2/team/app/manifests/1?ns=localhost:${port + 1}`, { headers: accept })).status).toBe(404);
    // localhost of a client on another machine (forwarded for it): that machine's registry, not Wharf.
    const remote = { ...accept, 'x-forwarded-for': '10.1.2.3' };
    expect((await fetch(`${proxy.url}/v2/team/app/manifests/1?ns=localhost:${port}`, { headers: remote })).status).toBe(404);
    expect((await fetch(`${proxy.url}/v2/team/app/manifests/1?ns=127.0.0.1:${port}`, { headers: remote })).status).toBe(404);
    // Wharf's own name (its images pulled through the same catch-all, under the name the client came by
    // or another of its names on its port) and no ns at all: its own repository.
    for (const query of [`?ns=${host}`, `?ns=${host.toUpperCase()}`, `?ns=localhost:${port}`, `?ns=[::1]:${port}`, '']) {
      const own = await fetch(`${proxy.url}/v2/team/app/manifests/1${query}`, { headers: accept });
      expect(own.status).toBe(200);
      expect(own.headers.get('docker-content-digest')).toBe(layout.multi);
    }
  });

  test('skopeo list-tags lists the upstream tags, pulled through the proxy or not; ?n= and Link page through them', async () => {
    // Pushed straight to the upstream: the proxy has never seen it.
    await run('skopeo', ['copy', '--dest-tls-verify=false', '--dest-creds', 'alice:s3cret', `oci:${layout.dir}:single`, `docker://${dist.host}/alice/app:2`]);
    const { stdout } = await run('skopeo', ['list-tags', '--tls-verify=false', `docker://${host}/proxy/dist/alice/app`]);
    expect((JSON.parse(stdout) as { Tags: string[] }).Tags).toEqual(['1', '2']);
    const first = await fetch(`${proxy.url}/v2/proxy/dist/alice/app/tags/list?n=1`);
    expect(await first.json()).toEqual({ name: 'proxy/dist/alice/app', tags: ['1'] });
    expect(first.headers.get('link')).toBe('</v2/proxy/dist/alice/app/tags/list?n=1&last=1>; rel="next"');
    const second = await fetch(`${proxy.url}/v2/proxy/dist/alice/app/tags/list?n=1&last=1`);
    expect(await second.json()).toEqual({ name: 'proxy/dist/alice/app', tags: ['2'] });
    expect(second.headers.get('link')).toBeNull();
  });

  test("containerd's ?ns= tag list keeps its ns in the Link, so the next page comes from the same upstream", async () => {
    const first = await fetch(`${proxy.url}/v2/alice/app/tags/list?ns=dist&n=1`);
    expect(await first.json()).toEqual({ name: 'alice/app', tags: ['1'] });
    const link = first.headers.get('link');
    expect(link).toBe('</v2/alice/app/tags/list?n=1&last=1&ns=dist>; rel="next"');
    const second = await fetch(`${proxy.url}${/^<([^>]+)>/.exec(link!)![1]}`);
    expect(second.headers.get('oci-namespace')).toBe('dist');
    expect(await second.json()).toEqual({ name: 'alice/app', tags: ['2'] });
  });

  test('tags of a repository the upstream does not have: 404 NAME_UNKNOWN', async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/dist/alice/nothing-here/tags/list`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('NAME_UNKNOWN');
  });

  test('referrers: distribution has no referrers API, so the proxy reads its tag schema; none is an empty index, never a 404', async () => {
    const auth = { Authorization: `Basic ${Buffer.from('alice:s3cret').toString('base64')}` };
    const none = await fetch(`${proxy.url}/v2/proxy/dist/alice/multi/referrers/${layout.multi}`);
    expect(none.status).toBe(200);
    expect(none.headers.get('content-type')).toBe('application/vnd.oci.image.index.v1+json');
    expect(((await none.json()) as { manifests: unknown[] }).manifests).toEqual([]);

    // A client of an upstream without the API (oras, notation) pushes the referrer and tags an index
    // listing it with the subject's sha256-<hex>.
    const subject = await fetch(`${dist.url}/v2/alice/app/manifests/${layout.single}`, { headers: { ...auth, Accept: 'application/vnd.oci.image.manifest.v1+json' } });
    const referrer = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: layout.single, size: (await subject.arrayBuffer()).byteLength, artifactType: 'application/x-test' };
    const index = JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [referrer] });
    const put = await fetch(`${dist.url}/v2/alice/app/manifests/sha256-${layout.single.slice('sha256:'.length)}`, {
      method: 'PUT',
      headers: { ...auth, 'Content-Type': 'application/vnd.oci.image.index.v1+json' },
      body: index,
    });
    expect(put.status).toBe(201);
    const res = await fetch(`${proxy.url}/v2/proxy/dist/alice/app/referrers/${layout.single}?artifactType=application/x-test`);
    expect(res.status).toBe(200);
    expect(res.headers.get('oci-filters-applied')).toBe('artifactType');
    expect(((await res.json()) as { manifests: unknown[] }).manifests).toEqual([referrer]);
  });

  test('upstream killed: cached images still pull with skopeo (Warning on the manifest); uncached → 502', async () => {
    await dist.kill();
    await sleep(TTL_MS + 100);
    expect(await pull(`${host}/proxy/dist/alice/app:1`)).toBe(layout.single);
    expect(await pull(`${host}/proxy/dist/alice/multi:1`, { all: true })).toBe(layout.multi);
    const res = await fetch(`${proxy.url}/v2/proxy/dist/alice/app/manifests/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('warning')).toMatch(/^299 - ".+"$/);
    const cold = await fetch(`${proxy.url}/v2/proxy/dist/alice/other/manifests/1`);
    expect(cold.status).toBe(502);
    // The tag list is the upstream's as last listed through the proxy (an earlier test's list, before
    // the referrers' tag-schema index was pushed), not only the tags pulled (2 never was).
    const { stdout } = await run('skopeo', ['list-tags', '--tls-verify=false', `docker://${host}/proxy/dist/alice/app`]);
    expect((JSON.parse(stdout) as { Tags: string[] }).Tags).toEqual(['1', '2']);
    // Nothing pulled from this one: the upstream's failure.
    expect((await fetch(`${proxy.url}/v2/proxy/dist/alice/other/tags/list`)).status).toBe(502);
  });
});
