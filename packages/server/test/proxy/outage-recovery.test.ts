// An upstream back within its outage window: found by a re-check in the background, not at the window's end.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { setTimeout as sleep } from 'node:timers/promises';
import { FakeUpstream } from '../../../proxy/test/helpers/fake-upstream.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

const TTL_MS = 200;
/** The proxy's interval between background re-checks within an outage's window (its default). */
const RECHECK_MS = 5_000;

describe('an upstream that comes back within its outage window', () => {
  let fake: FakeUpstream;
  let proxy: TestRegistry;

  beforeAll(async () => {
    fake = await FakeUpstream.start();
    proxy = await startRegistry({
      settings: { proxy: { manifest_ttl: `${TTL_MS}ms`, retries: 0, outage_backoff: '60s', upstreams: { fake: { url: fake.url } } } },
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await fake?.close();
  });

  const manifestOf = (label: string) => ({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'c'.repeat(64)}`, size: 2 },
    layers: [],
    annotations: { label },
  });
  const get = async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/fake/alice/app/manifests/1`);
    await res.arrayBuffer();
    return { status: res.status, digest: res.headers.get('docker-content-digest'), warning: res.headers.get('warning') };
  };

  test('a tag pushed upstream during the outage is served within seconds of its return, without a Warning', async () => {
    const first = fake.addManifest('alice/app', '1', manifestOf('first'));
    expect(await get()).toMatchObject({ status: 200, digest: first, warning: null });

    // Down (503) past the tag's TTL: served stale, and the 60 s window begins.
    fake.fault = '503';
    fake.faultOn = /\/manifests\//;
    await sleep(TTL_MS + 50);
    expect(await get()).toMatchObject({ status: 200, digest: first, warning: expect.stringMatching(/unavailable/) });

    // Back, with the tag moved. Within the window, clients are served at once from the cache...
    fake.fault = undefined;
    const second = fake.addManifest('alice/app', '1', manifestOf('second'));
    const heads = () => fake.requests.filter((r) => r.method === 'HEAD' && r.path === '/v2/alice/app/manifests/1').length;
    const before = heads();
    expect(await get()).toMatchObject({ digest: first, warning: expect.stringMatching(/unavailable/) });
    expect(heads()).toBe(before);
    // ...and one request in RECHECK_MS asks in the background: its answer ends the window.
    await sleep(RECHECK_MS + 200);
    expect(await get()).toMatchObject({ digest: first });
    for (let i = 0; i < 50 && heads() === before; i++) await sleep(20);
    expect(heads()).toBe(before + 1);
    await sleep(50);
    expect(await get()).toMatchObject({ status: 200, digest: second, warning: null });
  });
});
