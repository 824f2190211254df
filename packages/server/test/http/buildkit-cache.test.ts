import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { expectOciError, manifestOf, pushBlobs, pushManifest, putManifest, uniqueRepo } from '../helpers/http.js';
import { DOCKER_LIST, OCI_INDEX, OCI_MANIFEST, blob, type Blob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

const CACHE_CONFIG = 'application/vnd.buildkit.cacheconfig.v0';
const OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
const DOCKER_LAYER_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip';

/**
 * The registry cache of BuildKit (`docker buildx build --cache-to type=registry,ref=…`, the default
 * `image-manifest=false`): an index whose entries are the cached layers and a cache config, all blobs
 * of the repository, not manifests. `oci-mediatypes=false` writes it as a Docker manifest list.
 */
function cacheIndex(layers: readonly Blob[], config: Blob, mediaType: string) {
  const layerType = mediaType === OCI_INDEX ? OCI_LAYER_GZIP : DOCKER_LAYER_GZIP;
  return manifestOf(
    {
      schemaVersion: 2,
      mediaType,
      manifests: [
        ...layers.map((l) => ({ mediaType: layerType, digest: l.digest, size: l.bytes.length, annotations: { 'buildkit/createdat': '2026-12-07T09:00:00Z' } })),
        { mediaType: CACHE_CONFIG, digest: config.digest, size: config.bytes.length },
      ],
    },
    mediaType,
  );
}

describe("BuildKit's registry cache (an index of blobs)", () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => {
    await reg.close();
  });

  async function pushedCache(repo: string, seed: string, mediaType = OCI_INDEX) {
    const layers = [blob(`cached layer one ${seed}`), blob(`cached layer two ${seed}`)];
    const config = blob(`{"layers":[{"blob":"${layers[0]!.digest}"}],"records":[{"digest":"sha256:${seed}"}]}`);
    await pushBlobs(reg.url, repo, [...layers, config]);
    return { layers, config, index: cacheIndex(layers, config, mediaType) };
  }

  for (const mediaType of [OCI_INDEX, DOCKER_LIST]) {
    test(`is stored as ${mediaType === OCI_INDEX ? "an OCI index" : "a Docker manifest list"} and read back byte for byte, its blobs with it`, async () => {
      const repo = uniqueRepo('cache');
      const { layers, config, index } = await pushedCache(repo, 'round-trip', mediaType);
      const put = await putManifest(reg.url, repo, 'buildcache', index.bytes, mediaType);
      expect(put.status).toBe(201);
      expect(put.headers.get('docker-content-digest')).toBe(index.digest);
      const res = await fetch(`${reg.url}/v2/${repo}/manifests/buildcache`, { headers: { accept: `${OCI_INDEX}, ${DOCKER_LIST}, ${OCI_MANIFEST}` } });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(mediaType);
      expect(Buffer.from(await res.arrayBuffer()).equals(index.bytes)).toBe(true);
      for (const b of [...layers, config]) {
        const got = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`);
        expect(got.status).toBe(200);
        expect(Buffer.from(await got.arrayBuffer()).equals(b.bytes)).toBe(true);
      }
    });
  }

  test('an entry whose blob the repository lacks answers 400 MANIFEST_BLOB_UNKNOWN, naming it', async () => {
    const repo = uniqueRepo('cache');
    const layer = blob('a layer that is pushed');
    const config = blob('{"records":[]}');
    await pushBlobs(reg.url, repo, [layer]);
    const index = cacheIndex([layer], config, OCI_INDEX);
    const error = await expectOciError(await putManifest(reg.url, repo, 'buildcache', index.bytes, OCI_INDEX), 400, 'MANIFEST_BLOB_UNKNOWN');
    expect(error.detail).toEqual({ digest: config.digest });
    await expectOciError(await fetch(`${reg.url}/v2/${repo}/manifests/buildcache`), 404, 'MANIFEST_UNKNOWN');
  });

  test('an entry whose size is not its blob\'s answers 400 MANIFEST_INVALID', async () => {
    const repo = uniqueRepo('cache');
    const { layers, config } = await pushedCache(repo, 'size');
    const index = manifestOf(
      { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_LAYER_GZIP, digest: layers[0]!.digest, size: layers[0]!.bytes.length + 1 }, { mediaType: CACHE_CONFIG, digest: config.digest, size: config.bytes.length }] },
      OCI_INDEX,
    );
    await expectOciError(await putManifest(reg.url, repo, 'buildcache', index.bytes, OCI_INDEX), 400, 'MANIFEST_INVALID');
  });

  test('an entry of a manifest media type must still be a manifest: a blob of that digest is not enough', async () => {
    const repo = uniqueRepo('cache');
    const notAManifest = blob('{"schemaVersion":2,"pushed":"as a blob"}');
    await pushBlobs(reg.url, repo, [notAManifest]);
    const index = manifestOf({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: OCI_MANIFEST, digest: notAManifest.digest, size: notAManifest.bytes.length }] }, OCI_INDEX);
    await expectOciError(await putManifest(reg.url, repo, 'idx', index.bytes, OCI_INDEX), 400, 'MANIFEST_BLOB_UNKNOWN');
  });

  test('garbage collection keeps the blobs of a tagged cache, and frees them once the cache is deleted', async () => {
    const repo = uniqueRepo('cache');
    const { layers, config, index } = await pushedCache(repo, 'gc');
    await pushManifest(reg.url, repo, 'buildcache', index);
    await reg.storage.gc({ grace: 0, deleteUntagged: true });
    for (const b of [...layers, config]) expect((await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { method: 'HEAD' })).status).toBe(200);

    expect((await fetch(`${reg.url}/v2/${repo}/manifests/${index.digest}`, { method: 'DELETE' })).status).toBe(202);
    await reg.storage.gc({ grace: 0, deleteUntagged: true });
    for (const b of [...layers, config]) expect((await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { method: 'HEAD' })).status).toBe(404);
  });
});
