import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/**
 * `[proxy.upstreams.<key>]` sets `[proxy]`'s policies for its upstream alone (the issue: "with url,
 * optional aliases, username/password, and the policies below"): before, such a key stopped the
 * start as unknown.
 */
describe("an upstream's own policies", () => {
  let up: TestRegistry;
  let proxy: TestRegistry;

  beforeAll(async () => {
    up = await startRegistry();
    // Two upstreams of one registry: `fresh` re-checks every tag at every pull, `steady` takes
    // [proxy]'s hour.
    proxy = await startRegistry({
      settings: { proxy: { manifest_ttl: '1h', retries: 0, upstreams: { fresh: { url: up.url, manifest_ttl: '0s' }, steady: { url: up.url } } } },
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await up?.close();
  });

  test('manifest_ttl = "0s" on one upstream: its moved tag is fetched at once, while the other keeps [proxy]\'s hour', async () => {
    const digestVia = async (key: string) => {
      const res = await fetch(`${proxy.url}/v2/proxy/${key}/alice/app/manifests/latest`);
      expect(res.status).toBe(200);
      return res.headers.get('docker-content-digest');
    };
    const first = await pushImage(up.url, 'alice/app', 'latest', 'first');
    expect([await digestVia('fresh'), await digestVia('steady')]).toEqual([first.manifest.digest, first.manifest.digest]);
    const second = await pushImage(up.url, 'alice/app', 'latest', 'second');
    expect(await digestVia('fresh')).toBe(second.manifest.digest);
    expect(await digestVia('steady')).toBe(first.manifest.digest);
  });
});
