import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { API_VERSION, expectHeadError, expectOciError, rawRequest, uniqueRepo, expectRawOciError } from '../helpers/http.js';
import { blob, pushBlob, pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

describe('GET /v2/ and unmatched paths', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => {
    await reg.close();
  });

  test('GET /v2/ answers 200 with an empty JSON object', async () => {
    const res = await fetch(`${reg.url}/v2/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json(;|$)/);
    expect(await res.json()).toEqual({});
  });

  test('GET /v2 without the trailing slash answers the same', async () => {
    const res = await fetch(`${reg.url}/v2`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({});
  });

  test('HEAD /v2/ answers 200 with no body', async () => {
    const res = await fetch(`${reg.url}/v2/`, { method: 'HEAD' });
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-distribution-api-version')).toBe(API_VERSION);
    expect((await res.arrayBuffer()).byteLength).toBe(0);
  });

  test('successful responses of every kind carry Docker-Distribution-API-Version', async () => {
    const repo = uniqueRepo();
    const { manifest, layer } = await pushImage(reg.url, repo, 'v1');
    const extra = blob('api version header');
    const session = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    const sessionUrl = new URL(session.headers.get('location')!, reg.url).toString();
    const responses: Response[] = [
      session,
      await fetch(sessionUrl, { method: 'PATCH', headers: { 'Content-Range': '0-2' }, body: 'abc' }),
      await fetch(sessionUrl),
      await fetch(sessionUrl, { method: 'DELETE' }),
      await fetch(`${reg.url}/v2/`),
      await fetch(`${reg.url}/v2/${repo}/manifests/v1`),
      await fetch(`${reg.url}/v2/${repo}/manifests/${manifest.digest}`, { method: 'HEAD' }),
      await fetch(`${reg.url}/v2/${repo}/blobs/${layer.digest}`),
      await fetch(`${reg.url}/v2/${repo}/blobs/${layer.digest}`, { method: 'HEAD' }),
      await fetch(`${reg.url}/v2/${repo}/blobs/${layer.digest}`, { headers: { Range: 'bytes=0-1' } }),
      await fetch(`${reg.url}/v2/${repo}/tags/list`),
      await fetch(`${reg.url}/v2/_catalog`),
      await fetch(`${reg.url}/v2/${repo}/referrers/${manifest.digest}`),
      await fetch(`${reg.url}/v2/${repo}/blobs/uploads/?digest=${extra.digest}`, { method: 'POST', body: extra.bytes }),
      await fetch(`${reg.url}/v2/${repo}/manifests/other`, { method: 'PUT', headers: { 'Content-Type': manifest.mediaType }, body: manifest.bytes }),
      await fetch(`${reg.url}/v2/${repo}/manifests/other`, { method: 'DELETE' }),
    ];
    for (const res of responses) {
      expect({ url: res.url, status: res.status, header: res.headers.get('docker-distribution-api-version') }).toEqual({
        url: res.url,
        status: expect.any(Number),
        header: API_VERSION,
      });
      expect(res.status).toBeLessThan(300);
      await res.arrayBuffer();
    }
  });

  test('error responses carry Docker-Distribution-API-Version', async () => {
    const repo = uniqueRepo();
    await pushBlob(reg.url, repo, blob('x'));
    const responses: Response[] = [
      await fetch(`${reg.url}/nope`),
      await fetch(`${reg.url}/v2/${repo}/manifests/missing`),
      await fetch(`${reg.url}/v2/${repo}/blobs/sha256:bad`),
      await fetch(`${reg.url}/v2/UPPER/tags/list`),
      await fetch(`${reg.url}/v2/${repo}/blobs/${blob('x').digest}`, { headers: { Range: 'bytes=9-' } }),
      await fetch(`${reg.url}/v2/`, { method: 'POST' }),
    ];
    for (const res of responses) {
      expect(res.status).toBeGreaterThanOrEqual(400);
      expect(res.headers.get('docker-distribution-api-version')).toBe(API_VERSION);
      await res.arrayBuffer();
    }
  });

  test('a path outside /v2 answers 404 with the OCI error body', async () => {
    const res = await fetch(`${reg.url}/nope`);
    const error = await expectOciError(res, 404);
    expect(error.code).toBe('NOT_FOUND');
  });

  test('the root path answers 404 with the OCI error body', async () => {
    await expectOciError(await fetch(`${reg.url}/`), 404);
  });

  test('a /v1/ path answers 404 with the OCI error body', async () => {
    await expectOciError(await fetch(`${reg.url}/v1/_ping`), 404);
  });

  test('a repository name with no endpoint after it answers 404 with the OCI error body', async () => {
    await expectOciError(await fetch(`${reg.url}/v2/alice/app`), 404);
  });

  test('an unknown endpoint under a repository answers 404 with the OCI error body', async () => {
    await expectOciError(await fetch(`${reg.url}/v2/alice/app/things/x`), 404);
  });

  test('an unknown path is JSON for HEAD too, never text/plain', async () => {
    await expectHeadError(await fetch(`${reg.url}/v2/alice/app/things/x`, { method: 'HEAD' }), 404);
  });

  test('an unknown path is JSON for DELETE and PUT too', async () => {
    await expectOciError(await fetch(`${reg.url}/v2/alice/app/things/x`, { method: 'DELETE' }), 404);
    await expectOciError(await fetch(`${reg.url}/v2/alice/app/things/x`, { method: 'PUT', body: 'x' }), 404);
  });

  test('a wrong method on a known path answers 405 UNSUPPORTED in the OCI error body', async () => {
    await expectOciError(await fetch(`${reg.url}/v2/`, { method: 'DELETE' }), 405, 'UNSUPPORTED');
  });

  test('a raw request to an unknown path gets the JSON envelope', async () => {
    expectRawOciError(await rawRequest(reg.url, 'GET', '/v2/_unknown/x/y'), 404);
  });
});
