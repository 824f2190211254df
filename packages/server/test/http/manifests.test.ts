import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { expectHeadError, expectOciError, expectRawOciError, manifestOf, pushBlobs, pushManifest, putManifest, rawRequest, uniqueRepo } from '../helpers/http.js';
import { DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, blob, imageManifest, pushImage, sha256 } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

const EMPTY_MEDIA_TYPE = 'application/vnd.oci.empty.v1+json';

describe('manifests', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => {
    await reg.close();
  });

  /** Pushes a config and a layer to `repo` and returns an OCI image manifest (not yet pushed) for them. */
  async function preparedImage(repo: string, seed: string, mediaType = OCI_MANIFEST) {
    const config = blob(`{"architecture":"amd64","os":"linux","seed":"${seed}"}`);
    const layer = blob(`layer ${seed}`);
    await pushBlobs(reg.url, repo, [config, layer]);
    return { config, layer, manifest: imageManifest(config, [layer], {}, mediaType) };
  }

  /**
   * An OCI manifest written by hand with odd spacing, key order and a trailing newline: re-serialising it
   * would change its digest.
   */
  async function oddlySpacedManifest(repo: string) {
    const config = blob('{"odd":true}');
    const layer = blob('odd layer');
    await pushBlobs(reg.url, repo, [config, layer]);
    const text =
      `{\n\t"layers" :[ {"size":${layer.bytes.length},   "digest":"${layer.digest}","mediaType":"application/vnd.oci.image.layer.v1.tar"} ],\r\n` +
      `  "config":{ "mediaType" : "application/vnd.oci.image.config.v1+json","digest":"${config.digest}" ,"size":${config.bytes.length}},\n` +
      `"schemaVersion":   2, "mediaType":"${OCI_MANIFEST}",  "annotations":{"note":"caf\\u00e9 \u00e9"}   }\n\n`;
    const bytes = Buffer.from(text);
    expect(Buffer.from(JSON.stringify(JSON.parse(text))).equals(bytes)).toBe(false);
    return { bytes, digest: sha256(bytes), mediaType: OCI_MANIFEST };
  }

  describe('push and pull', () => {
    test('PUT by tag answers 201 with Location and Docker-Content-Digest', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'put');
      const res = await putManifest(reg.url, repo, 'v1', manifest.bytes, manifest.mediaType);
      expect(res.status).toBe(201);
      expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
      expect(new URL(res.headers.get('location')!, reg.url).pathname).toBe(`/v2/${repo}/manifests/${manifest.digest}`);
    });

    test('GET by tag returns the exact bytes with Content-Type, Docker-Content-Digest and Content-Length', async () => {
      const repo = uniqueRepo('m');
      const manifest = await oddlySpacedManifest(repo);
      await pushManifest(reg.url, repo, 'odd', manifest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/odd`, { headers: { Accept: OCI_MANIFEST } });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(OCI_MANIFEST);
      expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
      expect(res.headers.get('content-length')).toBe(String(manifest.bytes.length));
      expect(Buffer.from(await res.arrayBuffer()).equals(manifest.bytes)).toBe(true);
    });

    test('GET by digest returns the exact bytes with Content-Type, Docker-Content-Digest and Content-Length', async () => {
      const repo = uniqueRepo('m');
      const manifest = await oddlySpacedManifest(repo);
      await pushManifest(reg.url, repo, 'odd', manifest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/${manifest.digest}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(OCI_MANIFEST);
      expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
      expect(res.headers.get('content-length')).toBe(String(manifest.bytes.length));
      expect(Buffer.from(await res.arrayBuffer()).equals(manifest.bytes)).toBe(true);
    });

    test('HEAD by tag answers 200 with Content-Type, Docker-Content-Digest and Content-Length and no body', async () => {
      const repo = uniqueRepo('m');
      const manifest = await oddlySpacedManifest(repo);
      await pushManifest(reg.url, repo, 'odd', manifest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/odd`, { method: 'HEAD' });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(OCI_MANIFEST);
      expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
      expect(res.headers.get('content-length')).toBe(String(manifest.bytes.length));
      expect((await res.arrayBuffer()).byteLength).toBe(0);
    });

    test('HEAD by digest answers 200 with Content-Type, Docker-Content-Digest and Content-Length and no body', async () => {
      const repo = uniqueRepo('m');
      const manifest = await oddlySpacedManifest(repo);
      await pushManifest(reg.url, repo, 'odd', manifest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/${manifest.digest}`, { method: 'HEAD' });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(OCI_MANIFEST);
      expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
      expect(res.headers.get('content-length')).toBe(String(manifest.bytes.length));
      expect((await res.arrayBuffer()).byteLength).toBe(0);
    });

    test('a Content-Type pushed with parameters is served bare, with no charset', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'charset');
      expect((await putManifest(reg.url, repo, 'v1', manifest.bytes, `${OCI_MANIFEST}; charset=utf-8`)).status).toBe(201);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/v1`);
      expect(res.headers.get('content-type')).toBe(OCI_MANIFEST);
      expect(Buffer.from(await res.arrayBuffer()).equals(manifest.bytes)).toBe(true);
    });

    test('PUT by a matching digest answers 201 and the manifest is reachable by that digest', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'by-digest');
      const res = await putManifest(reg.url, repo, manifest.digest, manifest.bytes, manifest.mediaType);
      expect(res.status).toBe(201);
      expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
      const got = await fetch(`${reg.url}/v2/${repo}/manifests/${manifest.digest}`);
      expect(got.status).toBe(200);
      expect(Buffer.from(await got.arrayBuffer()).equals(manifest.bytes)).toBe(true);
    });

    test('PUT by a digest that does not match the body answers 400 DIGEST_INVALID', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'mismatch');
      const other = sha256('not this manifest');
      await expectOciError(await putManifest(reg.url, repo, other, manifest.bytes, manifest.mediaType), 400, 'DIGEST_INVALID');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/${manifest.digest}`), 404, 'MANIFEST_UNKNOWN');
    });

    test('PUT by a sha512 digest stores the manifest under that digest', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'sha512');
      const digest = `sha512:${createHash('sha512').update(manifest.bytes).digest('hex')}`;
      const res = await putManifest(reg.url, repo, digest, manifest.bytes, manifest.mediaType);
      expect(res.status).toBe(201);
      expect(res.headers.get('docker-content-digest')).toBe(digest);
      const got = await fetch(`${reg.url}/v2/${repo}/manifests/${digest}`);
      expect(got.headers.get('docker-content-digest')).toBe(digest);
      expect(Buffer.from(await got.arrayBuffer()).equals(manifest.bytes)).toBe(true);
    });

    test('PUT by digest with ?tag=a&tag=b tags both, and names them in OCI-Tag', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'two-tags');
      const res = await putManifest(reg.url, repo, manifest.digest, manifest.bytes, manifest.mediaType, '?tag=a&tag=b');
      expect(res.status).toBe(201);
      expect(res.headers.get('oci-tag')).toBe('a, b');
      for (const tag of ['a', 'b']) {
        const got = await fetch(`${reg.url}/v2/${repo}/manifests/${tag}`);
        expect(got.status).toBe(200);
        expect(got.headers.get('docker-content-digest')).toBe(manifest.digest);
        await got.arrayBuffer();
      }
      const tags = await (await fetch(`${reg.url}/v2/${repo}/tags/list`)).json();
      expect(tags).toEqual({ name: repo, tags: ['a', 'b'] });
    });

    test('PUT by digest with an invalid ?tag= answers 400 TAG_INVALID (a malformed parameter) and stores nothing', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'bad-extra-tag');
      await expectOciError(await putManifest(reg.url, repo, manifest.digest, manifest.bytes, manifest.mediaType, '?tag=.hidden'), 400, 'TAG_INVALID');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/${manifest.digest}`), 404, 'MANIFEST_UNKNOWN');
    });

    test('PUT by tag with an invalid ?tag= answers 400 TAG_INVALID and tags nothing', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'bad-extra-tag-by-tag');
      await expectOciError(await putManifest(reg.url, repo, 'good', manifest.bytes, manifest.mediaType, '?tag=.bad'), 400, 'TAG_INVALID');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/good`), 404, 'MANIFEST_UNKNOWN');
    });

    test('re-PUT of a tag moves it to the new manifest', async () => {
      const repo = uniqueRepo('m');
      const first = await preparedImage(repo, 'first');
      const second = await preparedImage(repo, 'second');
      await pushManifest(reg.url, repo, 'latest', first.manifest);
      await pushManifest(reg.url, repo, 'latest', second.manifest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/latest`);
      expect(res.headers.get('docker-content-digest')).toBe(second.manifest.digest);
      expect(Buffer.from(await res.arrayBuffer()).equals(second.manifest.bytes)).toBe(true);
      expect((await fetch(`${reg.url}/v2/${repo}/manifests/${first.manifest.digest}`, { method: 'HEAD' })).status).toBe(200);
    });

    test('re-PUT of the same manifest under the same tag answers 201 again', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'again');
      await pushManifest(reg.url, repo, 'v1', manifest);
      const res = await putManifest(reg.url, repo, 'v1', manifest.bytes, manifest.mediaType);
      expect(res.status).toBe(201);
      expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
    });

    test('a manifest pushed to one repository is 404 MANIFEST_UNKNOWN in another', async () => {
      const one = uniqueRepo('m');
      const two = uniqueRepo('m');
      const { manifest } = await pushImage(reg.url, one, 'v1');
      await pushImage(reg.url, two, 'other');
      await expectOciError(await fetch(`${reg.url}/v2/${two}/manifests/${manifest.digest}`), 404, 'MANIFEST_UNKNOWN');
      await expectOciError(await fetch(`${reg.url}/v2/${two}/manifests/v1`), 404, 'MANIFEST_UNKNOWN');
    });
  });

  describe('manifest kinds', () => {
    test('a Docker v2 schema 2 manifest round-trips with its media type', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'docker', DOCKER_MANIFEST);
      await pushManifest(reg.url, repo, 'docker', manifest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/docker`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(DOCKER_MANIFEST);
      expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
      expect(Buffer.from(await res.arrayBuffer()).equals(manifest.bytes)).toBe(true);
    });

    test('a Docker v2 schema 2 manifest with no layers (a FROM scratch image of labels) is stored and served', async () => {
      const repo = uniqueRepo('m');
      const config = blob('{"architecture":"amd64","os":"linux","config":{"Labels":{"only":"labels"}}}');
      await pushBlobs(reg.url, repo, [config]);
      const manifest = imageManifest(config, [], {}, DOCKER_MANIFEST);
      await pushManifest(reg.url, repo, 'scratch', manifest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/scratch`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(DOCKER_MANIFEST);
      expect(Buffer.from(await res.arrayBuffer()).equals(manifest.bytes)).toBe(true);
    });

    test('`"layers": null` and `"manifests": null`, what Go clients send for an empty list, are stored and served byte for byte', async () => {
      const repo = uniqueRepo('m');
      const config = blob('{"architecture":"amd64","os":"linux"}');
      await pushBlobs(reg.url, repo, [config]);
      const image = manifestOf(
        { schemaVersion: 2, mediaType: DOCKER_MANIFEST, config: { mediaType: 'application/vnd.docker.container.image.v1+json', digest: config.digest, size: config.bytes.length }, layers: null },
        DOCKER_MANIFEST,
      );
      const index = manifestOf({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: null }, OCI_INDEX);
      for (const [tag, manifest] of [['nil-layers', image], ['nil-manifests', index]] as const) {
        await pushManifest(reg.url, repo, tag, manifest);
        const res = await fetch(`${reg.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: manifest.mediaType } });
        expect(res.status).toBe(200);
        expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
        expect(Buffer.from(await res.arrayBuffer()).equals(manifest.bytes)).toBe(true);
      }
    });

    test('a Docker manifest list round-trips with its media type', async () => {
      const repo = uniqueRepo('m');
      const amd = await preparedImage(repo, 'amd64', DOCKER_MANIFEST);
      const arm = await preparedImage(repo, 'arm64', DOCKER_MANIFEST);
      await pushManifest(reg.url, repo, amd.manifest.digest, amd.manifest);
      await pushManifest(reg.url, repo, arm.manifest.digest, arm.manifest);
      const list = manifestOf(
        {
          schemaVersion: 2,
          mediaType: DOCKER_LIST,
          manifests: [
            { mediaType: DOCKER_MANIFEST, digest: amd.manifest.digest, size: amd.manifest.size, platform: { architecture: 'amd64', os: 'linux' } },
            { mediaType: DOCKER_MANIFEST, digest: arm.manifest.digest, size: arm.manifest.size, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } },
          ],
        },
        DOCKER_LIST,
      );
      const put = await pushManifest(reg.url, repo, 'multi', list);
      expect(put.headers.get('docker-content-digest')).toBe(list.digest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/multi`);
      expect(res.headers.get('content-type')).toBe(DOCKER_LIST);
      expect(Buffer.from(await res.arrayBuffer()).equals(list.bytes)).toBe(true);
    });

    test("a Docker manifest list asked for by tag as a schema 2 image is its linux/amd64 image (Docker's backward compatibility)", async () => {
      const repo = uniqueRepo('m');
      const arm = await preparedImage(repo, 'arm64', DOCKER_MANIFEST);
      const amd = await preparedImage(repo, 'amd64', DOCKER_MANIFEST);
      const other = await preparedImage(repo, 'windows', DOCKER_MANIFEST);
      for (const image of [arm, amd, other]) await pushManifest(reg.url, repo, image.manifest.digest, image.manifest);
      const entry = (m: { digest: string; size: number }, platform: Record<string, string>) => ({ mediaType: DOCKER_MANIFEST, digest: m.digest, size: m.size, platform });
      const list = manifestOf(
        {
          schemaVersion: 2,
          mediaType: DOCKER_LIST,
          manifests: [entry(arm.manifest, { architecture: 'arm64', os: 'linux', variant: 'v8' }), entry(other.manifest, { architecture: 'amd64', os: 'windows' }), entry(amd.manifest, { architecture: 'amd64', os: 'linux' })],
        },
        DOCKER_LIST,
      );
      await pushManifest(reg.url, repo, 'multi', list);
      const ask = (reference: string, accept: string | undefined, method = 'GET') =>
        fetch(`${reg.url}/v2/${repo}/manifests/${reference}`, { method, headers: accept === undefined ? {} : { accept } });
      for (const method of ['GET', 'HEAD']) {
        // Twice: the second answer may come from the manifest cache, whose fast path must not answer it.
        for (let i = 0; i < 2; i++) {
          const res = await ask('multi', DOCKER_MANIFEST, method);
          expect([method, res.status, res.headers.get('content-type'), res.headers.get('docker-content-digest')]).toEqual([method, 200, DOCKER_MANIFEST, amd.manifest.digest]);
          expect(res.headers.get('content-length')).toBe(String(amd.manifest.size));
          if (method === 'GET') expect(Buffer.from(await res.arrayBuffer()).equals(amd.manifest.bytes)).toBe(true);
        }
      }
      // With the list's type, a wildcard or no Accept at all, by digest, or asking OCI types only: the list.
      for (const [reference, accept] of [
        ['multi', `${DOCKER_MANIFEST}, ${DOCKER_LIST}`],
        ['multi', `${DOCKER_MANIFEST}, */*`],
        ['multi', `${DOCKER_MANIFEST}, ${OCI_MANIFEST}, ${OCI_INDEX}`],
        ['multi', undefined],
        ['multi', OCI_MANIFEST],
        [list.digest, DOCKER_MANIFEST],
      ] as const) {
        const res = await ask(reference, accept);
        expect([reference, accept, res.headers.get('docker-content-digest')]).toEqual([reference, accept, list.digest]);
        expect(Buffer.from(await res.arrayBuffer()).equals(list.bytes)).toBe(true);
      }
      // A list with no linux/amd64 image: MANIFEST_UNKNOWN, saying why.
      const armOnly = manifestOf({ schemaVersion: 2, mediaType: DOCKER_LIST, manifests: [entry(arm.manifest, { architecture: 'arm64', os: 'linux' })] }, DOCKER_LIST);
      await pushManifest(reg.url, repo, 'arm-only', armOnly);
      const error = await expectOciError(await ask('arm-only', DOCKER_MANIFEST), 404, 'MANIFEST_UNKNOWN');
      expect(error.message).toBe("arm-only is a manifest list that lists no linux/amd64 image, and the request's Accept does not take a manifest list");
    });

    test('an OCI image manifest round-trips with its media type', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'oci');
      await pushManifest(reg.url, repo, 'oci', manifest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/oci`);
      expect(res.headers.get('content-type')).toBe(OCI_MANIFEST);
      expect(Buffer.from(await res.arrayBuffer()).equals(manifest.bytes)).toBe(true);
    });

    test('an OCI image manifest without a mediaType field is accepted on its Content-Type', async () => {
      const repo = uniqueRepo('m');
      const { config, layer } = await preparedImage(repo, 'no-media-type');
      const manifest = manifestOf(
        {
          schemaVersion: 2,
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config.digest, size: config.bytes.length },
          layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer.digest, size: layer.bytes.length }],
        },
        OCI_MANIFEST,
      );
      await pushManifest(reg.url, repo, 'bare', manifest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/bare`, { method: 'HEAD' });
      expect(res.headers.get('content-type')).toBe(OCI_MANIFEST);
    });

    test('an OCI index round-trips with its media type', async () => {
      const repo = uniqueRepo('m');
      const child = await preparedImage(repo, 'child');
      await pushManifest(reg.url, repo, child.manifest.digest, child.manifest);
      const index = manifestOf(
        {
          schemaVersion: 2,
          mediaType: OCI_INDEX,
          manifests: [{ mediaType: OCI_MANIFEST, digest: child.manifest.digest, size: child.manifest.size, platform: { architecture: 'amd64', os: 'linux' } }],
          annotations: { 'org.opencontainers.image.ref.name': 'idx' },
        },
        OCI_INDEX,
      );
      await pushManifest(reg.url, repo, 'index', index);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/index`);
      expect(res.headers.get('content-type')).toBe(OCI_INDEX);
      expect(res.headers.get('docker-content-digest')).toBe(index.digest);
      expect(Buffer.from(await res.arrayBuffer()).equals(index.bytes)).toBe(true);
    });

    test('an artifact manifest with artifactType and the empty config round-trips', async () => {
      const repo = uniqueRepo('m');
      const empty = blob('{}');
      const payload = blob('{"sbom":"yes"}');
      await pushBlobs(reg.url, repo, [empty, payload]);
      const artifact = manifestOf(
        {
          schemaVersion: 2,
          mediaType: OCI_MANIFEST,
          artifactType: 'application/vnd.example.sbom.v1+json',
          config: { mediaType: EMPTY_MEDIA_TYPE, digest: empty.digest, size: 2, data: 'e30=' },
          layers: [{ mediaType: 'application/vnd.example.sbom.v1+json', digest: payload.digest, size: payload.bytes.length }],
        },
        OCI_MANIFEST,
      );
      await pushManifest(reg.url, repo, 'sbom', artifact);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/sbom`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(OCI_MANIFEST);
      expect(Buffer.from(await res.arrayBuffer()).equals(artifact.bytes)).toBe(true);
    });
  });

  describe('refused pushes', () => {
    test('a manifest referencing a blob the repository lacks answers 400 MANIFEST_BLOB_UNKNOWN', async () => {
      const repo = uniqueRepo('m');
      const config = blob('{"present":true}');
      await pushBlobs(reg.url, repo, [config]);
      const manifest = imageManifest(config, [blob('never pushed layer')]);
      await expectOciError(await putManifest(reg.url, repo, 'v1', manifest.bytes, manifest.mediaType), 400, 'MANIFEST_BLOB_UNKNOWN');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/v1`), 404, 'MANIFEST_UNKNOWN');
    });

    test('a manifest referencing a blob linked only in another repository answers 400 MANIFEST_BLOB_UNKNOWN', async () => {
      const repo = uniqueRepo('m');
      const other = uniqueRepo('m');
      const config = blob('{"where":"here"}');
      const layer = blob('layer in the other repository');
      await pushBlobs(reg.url, repo, [config]);
      await pushBlobs(reg.url, other, [layer]);
      const manifest = imageManifest(config, [layer]);
      await expectOciError(await putManifest(reg.url, repo, 'v1', manifest.bytes, manifest.mediaType), 400, 'MANIFEST_BLOB_UNKNOWN');
    });

    test('an index with a child manifest the repository lacks answers 400 MANIFEST_BLOB_UNKNOWN', async () => {
      const repo = uniqueRepo('m');
      const child = await preparedImage(repo, 'missing-child');
      const index = manifestOf(
        { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_MANIFEST, digest: child.manifest.digest, size: child.manifest.size }] },
        OCI_INDEX,
      );
      await expectOciError(await putManifest(reg.url, repo, 'index', index.bytes, OCI_INDEX), 400, 'MANIFEST_BLOB_UNKNOWN');
    });

    test('a Content-Type that does not match the manifest mediaType answers 400 MANIFEST_INVALID', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'ct-mismatch');
      await expectOciError(await putManifest(reg.url, repo, 'v1', manifest.bytes, DOCKER_MANIFEST), 400, 'MANIFEST_INVALID');
    });

    test('a Content-Type that is no manifest media type answers 400 MANIFEST_INVALID', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'ct-unknown');
      await expectOciError(await putManifest(reg.url, repo, 'v1', manifest.bytes, 'text/plain'), 400, 'MANIFEST_INVALID');
    });

    test('a body that is not JSON answers 400 MANIFEST_INVALID', async () => {
      const repo = uniqueRepo('m');
      await expectOciError(await putManifest(reg.url, repo, 'v1', Buffer.from('{"schemaVersion":2,'), OCI_MANIFEST), 400, 'MANIFEST_INVALID');
    });

    test('an empty body answers 400 MANIFEST_INVALID', async () => {
      const repo = uniqueRepo('m');
      await expectOciError(await putManifest(reg.url, repo, 'v1', Buffer.alloc(0), OCI_MANIFEST), 400, 'MANIFEST_INVALID');
    });

    test('a schemaVersion other than 2 answers 400 MANIFEST_INVALID', async () => {
      const repo = uniqueRepo('m');
      const body = Buffer.from(JSON.stringify({ schemaVersion: 1, mediaType: OCI_MANIFEST, config: {}, layers: [] }));
      await expectOciError(await putManifest(reg.url, repo, 'v1', body, OCI_MANIFEST), 400, 'MANIFEST_INVALID');
    });

    test('a manifest over 4 MiB answers 413', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'big');
      const doc = JSON.parse(manifest.bytes.toString()) as Record<string, unknown>;
      doc.annotations = { padding: 'x'.repeat(4 * 1024 * 1024) };
      const body = Buffer.from(JSON.stringify(doc));
      expect(body.length).toBeGreaterThan(4 * 1024 * 1024);
      await expectOciError(await putManifest(reg.url, repo, 'big', body, OCI_MANIFEST), 413);
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/big`), 404, 'MANIFEST_UNKNOWN');
    });

    test('a manifest over 4 MiB sent chunked, with no Content-Length, answers 413', async () => {
      const repo = uniqueRepo('m');
      const head = Buffer.from(`{"schemaVersion":2,"mediaType":"${OCI_MANIFEST}","annotations":{"padding":"`);
      const chunk = Buffer.alloc(64 * 1024, 'x');
      const chunks = [head, ...Array.from({ length: 65 }, () => chunk), Buffer.from('"}}')];
      const res = await rawRequest(reg.url, 'PUT', `/v2/${repo}/manifests/big`, { headers: { 'Content-Type': OCI_MANIFEST }, body: chunks });
      expectRawOciError(res, 413);
      expect((await fetch(`${reg.url}/v2/`)).status).toBe(200);
    });

    test('a descriptor size that differs from the stored blob answers 400 MANIFEST_INVALID', async () => {
      const repo = uniqueRepo('m');
      const { config, layer } = await preparedImage(repo, 'wrong-size');
      const manifest = manifestOf(
        {
          schemaVersion: 2,
          mediaType: OCI_MANIFEST,
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config.digest, size: config.bytes.length },
          layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer.digest, size: layer.bytes.length + 1 }],
        },
        OCI_MANIFEST,
      );
      await expectOciError(await putManifest(reg.url, repo, 'v1', manifest.bytes, OCI_MANIFEST), 400, 'MANIFEST_INVALID');
    });

    test('a tag of 129 characters answers 404 TAG_INVALID', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'long-tag');
      await expectOciError(await putManifest(reg.url, repo, 'a'.repeat(129), manifest.bytes, manifest.mediaType), 404, 'TAG_INVALID');
    });

    test('a tag of 128 characters is accepted', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'max-tag');
      expect((await putManifest(reg.url, repo, 'a'.repeat(128), manifest.bytes, manifest.mediaType)).status).toBe(201);
    });

    test('a tag starting with "." answers 404 TAG_INVALID', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'dot-tag');
      await expectOciError(await putManifest(reg.url, repo, '.hidden', manifest.bytes, manifest.mediaType), 404, 'TAG_INVALID');
    });

    test('a tag starting with "-" answers 404 TAG_INVALID', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await preparedImage(repo, 'dash-tag');
      await expectOciError(await putManifest(reg.url, repo, '-x', manifest.bytes, manifest.mediaType), 404, 'TAG_INVALID');
    });

    test('an uppercase repository name answers 400 NAME_INVALID', async () => {
      const { manifest } = await preparedImage(uniqueRepo('m'), 'upper');
      await expectOciError(await putManifest(reg.url, 'Alice/App', 'v1', manifest.bytes, manifest.mediaType), 400, 'NAME_INVALID');
    });

    test('GET under an uppercase repository name answers 400 NAME_INVALID', async () => {
      await expectOciError(await fetch(`${reg.url}/v2/Alice/App/manifests/v1`), 400, 'NAME_INVALID');
    });

    test('a repository name of 256 characters answers 400 NAME_INVALID', async () => {
      await expectOciError(await fetch(`${reg.url}/v2/${'a'.repeat(256)}/manifests/v1`), 400, 'NAME_INVALID');
    });
  });

  describe('unknown references', () => {
    test('GET of an unknown tag answers 404 MANIFEST_UNKNOWN', async () => {
      const repo = uniqueRepo('m');
      await pushImage(reg.url, repo, 'v1');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/v2`), 404, 'MANIFEST_UNKNOWN');
    });

    test('GET of an unknown digest answers 404 MANIFEST_UNKNOWN', async () => {
      const repo = uniqueRepo('m');
      await pushImage(reg.url, repo, 'v1');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/${sha256('nothing')}`), 404, 'MANIFEST_UNKNOWN');
    });

    test('HEAD of an unknown tag answers 404 with no body', async () => {
      const repo = uniqueRepo('m');
      await expectHeadError(await fetch(`${reg.url}/v2/${repo}/manifests/nope`, { method: 'HEAD' }), 404);
    });

    test('GET of a malformed digest answers 400 DIGEST_INVALID', async () => {
      const repo = uniqueRepo('m');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/sha256:1234`), 400, 'DIGEST_INVALID');
    });

    test('GET, HEAD and DELETE of an invalid tag answer 404 (TAG_INVALID), as distribution does and the conformance suite expects', async () => {
      const repo = uniqueRepo('m');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/.hidden`), 404, 'TAG_INVALID');
      expect((await fetch(`${reg.url}/v2/${repo}/manifests/.INVALID_MANIFEST_NAME`, { method: 'HEAD' })).status).toBe(404);
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/.INVALID_MANIFEST_NAME`, { method: 'DELETE' }), 404, 'TAG_INVALID');
    });
  });

  describe('deletes', () => {
    test('DELETE by tag answers 202 and the manifest stays reachable by digest', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await pushImage(reg.url, repo, 'v1');
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/v1`, { method: 'DELETE' });
      expect(res.status).toBe(202);
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/v1`), 404, 'MANIFEST_UNKNOWN');
      const byDigest = await fetch(`${reg.url}/v2/${repo}/manifests/${manifest.digest}`);
      expect(byDigest.status).toBe(200);
      expect(Buffer.from(await byDigest.arrayBuffer()).equals(manifest.bytes)).toBe(true);
    });

    test('DELETE by tag leaves other tags of the same manifest', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await pushImage(reg.url, repo, 'v1');
      await pushManifest(reg.url, repo, 'stable', manifest);
      expect((await fetch(`${reg.url}/v2/${repo}/manifests/v1`, { method: 'DELETE' })).status).toBe(202);
      expect(await (await fetch(`${reg.url}/v2/${repo}/tags/list`)).json()).toEqual({ name: repo, tags: ['stable'] });
    });

    test('DELETE by digest answers 202 and the manifest and its tags are gone', async () => {
      const repo = uniqueRepo('m');
      const { manifest } = await pushImage(reg.url, repo, 'v1');
      await pushManifest(reg.url, repo, 'v1-alias', manifest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/${manifest.digest}`, { method: 'DELETE' });
      expect(res.status).toBe(202);
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/${manifest.digest}`), 404, 'MANIFEST_UNKNOWN');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/v1`), 404, 'MANIFEST_UNKNOWN');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/v1-alias`), 404, 'MANIFEST_UNKNOWN');
      expect(await (await fetch(`${reg.url}/v2/${repo}/tags/list`)).json()).toEqual({ name: repo, tags: [] });
    });

    test('DELETE of an unknown tag answers 404 MANIFEST_UNKNOWN', async () => {
      const repo = uniqueRepo('m');
      await pushImage(reg.url, repo, 'v1');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/v9`, { method: 'DELETE' }), 404, 'MANIFEST_UNKNOWN');
    });

    test('DELETE of an unknown digest answers 404 MANIFEST_UNKNOWN', async () => {
      const repo = uniqueRepo('m');
      await pushImage(reg.url, repo, 'v1');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/${sha256('none')}`, { method: 'DELETE' }), 404, 'MANIFEST_UNKNOWN');
    });

    test('DELETE of a malformed digest answers 400 DIGEST_INVALID', async () => {
      const repo = uniqueRepo('m');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/sha256:xyz`, { method: 'DELETE' }), 400, 'DIGEST_INVALID');
    });
  });
});

