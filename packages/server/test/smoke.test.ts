import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { pushImage } from './helpers/oci.js';
import { startRegistry, type TestRegistry } from './helpers/start-registry.js';

describe('smoke', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => {
    await reg.close();
  });

  test('GET /v2/ answers 200 with the API version header', async () => {
    const res = await fetch(`${reg.url}/v2/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
  });

  test('a pushed image pulls back byte for byte', async () => {
    const { manifest } = await pushImage(reg.url, 'alice/app', '1');
    const res = await fetch(`${reg.url}/v2/alice/app/manifests/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
    expect(Buffer.from(await res.arrayBuffer())).toEqual(manifest.bytes);
  });
});
