import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { request } from 'node:http';
import { expectOciError, expectRawOciError, rawRequest, sleep, startUpload, uniqueRepo, withDigest } from '../helpers/http.js';
import { OCI_MANIFEST, blob, pushBlob, pushImage, sha256 } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

describe('errors', () => {
  let reg: TestRegistry;
  let repo: string;
  let layer: ReturnType<typeof blob>;
  beforeAll(async () => {
    reg = await startRegistry();
    repo = uniqueRepo('err');
    ({ layer } = await pushImage(reg.url, repo, 'v1'));
  });
  afterAll(async () => {
    await reg.close();
  });

  async function expectAlive(): Promise<void> {
    const res = await fetch(`${reg.url}/v2/`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({});
  }

  describe('every error answers the OCI envelope with application/json', () => {
    // [name, request, status, code]
    const cases: [string, () => Promise<Response>, number, string][] = [
      ['BLOB_UNKNOWN', () => fetch(`${reg.url}/v2/${repo}/blobs/${sha256('absent')}`), 404, 'BLOB_UNKNOWN'],
      ['BLOB_UPLOAD_UNKNOWN', () => fetch(`${reg.url}/v2/${repo}/blobs/uploads/00000000-0000-4000-8000-000000000000`), 404, 'BLOB_UPLOAD_UNKNOWN'],
      ['DIGEST_INVALID', () => fetch(`${reg.url}/v2/${repo}/blobs/sha256:zz`), 400, 'DIGEST_INVALID'],
      [
        'MANIFEST_BLOB_UNKNOWN',
        () =>
          fetch(`${reg.url}/v2/${repo}/manifests/broken`, {
            method: 'PUT',
            headers: { 'Content-Type': OCI_MANIFEST },
            body: JSON.stringify({
              schemaVersion: 2,
              mediaType: OCI_MANIFEST,
              config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256('no config'), size: 9 },
              layers: [],
            }),
          }),
        400,
        'MANIFEST_BLOB_UNKNOWN',
      ],
      ['MANIFEST_INVALID', () => fetch(`${reg.url}/v2/${repo}/manifests/bad`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body: 'not json' }), 400, 'MANIFEST_INVALID'],
      ['MANIFEST_UNKNOWN', () => fetch(`${reg.url}/v2/${repo}/manifests/absent`), 404, 'MANIFEST_UNKNOWN'],
      ['NAME_INVALID', () => fetch(`${reg.url}/v2/UPPER/manifests/v1`), 400, 'NAME_INVALID'],
      ['NAME_UNKNOWN', () => fetch(`${reg.url}/v2/${uniqueRepo('none')}/tags/list`), 404, 'NAME_UNKNOWN'],
      ['SIZE_INVALID', async () => {
        const session = await startUpload(reg.url, uniqueRepo('err'));
        return fetch(session.url, { method: 'PATCH', headers: { 'Content-Range': '0-99' }, body: 'short' });
      }, 400, 'SIZE_INVALID'],
      ['TAG_INVALID', () => fetch(`${reg.url}/v2/${repo}/manifests/-bad`), 404, 'TAG_INVALID'],
      ['RANGE_INVALID (416)', () => fetch(`${reg.url}/v2/${repo}/blobs/${layer.digest}`, { headers: { Range: 'bytes=99999-' } }), 416, 'RANGE_INVALID'],
      ['PAGINATION_NUMBER_INVALID', () => fetch(`${reg.url}/v2/${repo}/tags/list?n=x`), 400, 'PAGINATION_NUMBER_INVALID'],
      ['UNSUPPORTED (405)', () => fetch(`${reg.url}/v2/${repo}/tags/list`, { method: 'DELETE' }), 405, 'UNSUPPORTED'],
      ['TOO_LARGE (413)', () => fetch(`${reg.url}/v2/${repo}/manifests/huge`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body: Buffer.alloc(4 * 1024 * 1024 + 1, 0x20) }), 413, 'TOO_LARGE'],
      ['NOT_FOUND', () => fetch(`${reg.url}/v2/${repo}/nothing-here`), 404, 'NOT_FOUND'],
    ];
    test.each(cases)('%s', async (_name, send, status, code) => {
      await expectOciError(await send(), status, code);
    });
  });

  test('an error reply drops the headers of the success it did not reach', async () => {
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${layer.digest}`, { headers: { Range: 'bytes=99999-' } });
    expect(res.headers.get('docker-content-digest')).toBeNull();
    expect(res.headers.get('etag')).toBeNull();
    await expectOciError(res, 416);
  });

  describe('path traversal never succeeds and never answers 500', () => {
    const target = () => `${sha256('x')}`;
    const attempts: [string, string, () => string][] = [
      ['GET', 'dot segments in the name', () => '/v2/../../etc/passwd/manifests/x'],
      ['GET', 'dot segments under a valid prefix', () => `/v2/${repo}/../../../etc/passwd/manifests/x`],
      ['GET', 'percent-encoded dot segments', () => '/v2/%2e%2e/%2e%2e/etc/passwd/manifests/x'],
      ['GET', 'upper-case percent-encoded dots', () => '/v2/%2E%2E/%2E%2E/etc/passwd/manifests/x'],
      ['GET', 'encoded slashes', () => '/v2/..%2f..%2fetc%2fpasswd/manifests/x'],
      ['GET', 'encoded slashes in upper case', () => '/v2/..%2F..%2F..%2Fetc/manifests/latest'],
      ['GET', 'encoded backslashes', () => '/v2/..%5c..%5cetc/manifests/x'],
      ['GET', 'double-encoded dots', () => '/v2/%252e%252e/%252e%252e/etc/manifests/x'],
      ['GET', 'an encoded NUL', () => `/v2/${repo}%00/manifests/v1`],
      ['GET', 'malformed percent-encoding in the name', () => '/v2/a%zz/manifests/x'],
      ['GET', 'a lone percent sign in the name', () => '/v2/a%/tags/list'],
      ['GET', 'malformed percent-encoding in a tag', () => `/v2/${repo}/manifests/%zz`],
      ['GET', 'malformed percent-encoding in a digest', () => `/v2/${repo}/blobs/sha256:%E0%A4%A`],
      ['GET', 'dot segments in a tag', () => `/v2/${repo}/manifests/..%2f..%2fwharf.db`],
      ['GET', 'dot segments in a digest', () => `/v2/${repo}/blobs/sha256:..%2f..%2f..%2fwharf.db`],
      ['GET', 'dot segments in an upload session id', () => `/v2/${repo}/blobs/uploads/..%2f..%2fwharf.db`],
      ['PATCH', 'dot segments in an upload session id', () => `/v2/${repo}/blobs/uploads/..%2F..%2Fregistry`],
      ['PUT', 'dot segments in an upload session id', () => `/v2/${repo}/blobs/uploads/..%2F..%2Fregistry?digest=${target()}`],
      ['DELETE', 'dot segments in an upload session id', () => `/v2/${repo}/blobs/uploads/..%2F..%2F_tmp`],
      ['PUT', 'dot segments in a manifest name', () => '/v2/..%2f..%2fetc/manifests/x'],
      ['DELETE', 'dot segments in a blob path', () => `/v2/${repo}/blobs/..%2F..%2Fwharf.db`],
      ['POST', 'dot segments in an upload name', () => '/v2/%2e%2e/blobs/uploads/'],
      ['GET', 'dot segments in the referrers name', () => `/v2/%2e%2e/referrers/${target()}`],
      ['GET', 'an absolute-looking name', () => '/v2//etc/passwd/manifests/x'],
      ['GET', 'a Windows-style drive path', () => '/v2/C:%5cwindows/manifests/x'],
    ];
    test.each(attempts)('%s with %s', async (method, _what, path) => {
      const res = await rawRequest(reg.url, method, path(), method === 'PUT' || method === 'PATCH' ? { body: Buffer.from('{}') } : {});
      expect(res.status).toBeGreaterThanOrEqual(400);
      expect(res.status).toBeLessThan(500);
      expectRawOciError(res, res.status);
      await expectAlive();
    });

    test('a traversal mount source links nothing and falls back to an upload session', async () => {
      const res = await rawRequest(reg.url, 'POST', `/v2/${uniqueRepo('err')}/blobs/uploads/?mount=${layer.digest}&from=..%2F..%2F${encodeURIComponent(repo)}`);
      expect(res.status).toBe(202);
      expect(res.header('docker-upload-uuid')).toBeDefined();
      const dotted = await rawRequest(reg.url, 'POST', `/v2/${uniqueRepo('err')}/blobs/uploads/?mount=${layer.digest}&from=${repo}/../${repo}`);
      expect(dotted.status).toBe(202);
    });

    test('an admin path with malformed percent-encoding answers a 4xx OCI error, not 500', async () => {
      const res = await rawRequest(reg.url, 'DELETE', '/admin/proxy/cache/%zz');
      expect(res.status).toBeGreaterThanOrEqual(400);
      expect(res.status).toBeLessThan(500);
      expectRawOciError(res, res.status);
    });

    test('an encoded slash between valid components reaches the same repository, not a file', async () => {
      const encoded = repo.replace('/', '%2F');
      const res = await rawRequest(reg.url, 'GET', `/v2/${encoded}/tags/list`);
      expect(res.status).toBe(200);
      expect(JSON.parse(res.body.toString())).toEqual({ name: repo, tags: ['v1'] });
    });
  });

  test('an HTTP method the router does not implement answers 405 UNSUPPORTED, not 500', async () => {
    const res = await rawRequest(reg.url, 'PROPFIND', '/v2/');
    expectRawOciError(res, 405, 'UNSUPPORTED');
    expect(res.headers.allow).toBe('GET, HEAD');
    await expectAlive();
  });

  test('a method a known path does not take answers 405 with Allow naming the ones it does (RFC 9110 15.5.6)', async () => {
    const manifest = await rawRequest(reg.url, 'PATCH', `/v2/${repo}/manifests/v1`);
    expectRawOciError(manifest, 405, 'UNSUPPORTED');
    expect(manifest.headers.allow?.split(', ').sort()).toEqual(['DELETE', 'GET', 'HEAD', 'PUT']);
    const catalog = await rawRequest(reg.url, 'POST', '/v2/_catalog');
    expectRawOciError(catalog, 405, 'UNSUPPORTED');
    expect(catalog.headers.allow).toBe('GET, HEAD');
  });

  test('an unimplemented method on an unknown path answers a 4xx OCI error, not 500', async () => {
    const res = await rawRequest(reg.url, 'MKCOL', '/v2/a/b/c');
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).toBeLessThan(500);
    expectRawOciError(res, res.status);
  });

  test('the server keeps answering after a burst of bad requests', async () => {
    const bad = await Promise.all([
      fetch(`${reg.url}/v2/UPPER/manifests/x`),
      fetch(`${reg.url}/v2/${repo}/blobs/sha256:zz`),
      fetch(`${reg.url}/v2/${repo}/manifests/x`, { method: 'PUT', body: '{' }),
      fetch(`${reg.url}/v2/${repo}/blobs/uploads/nope`, { method: 'PATCH', body: 'x' }),
      rawRequest(reg.url, 'GET', '/v2/%/manifests/%'),
    ]);
    for (const res of bad) expect(res.status).toBeLessThan(500);
    await expectAlive();
  });

  describe('clients that go away', () => {
    /** Starts a PATCH, sends `sent`, waits until the server has seen bytes, then destroys the request. */
    async function abortedPatch(url: string, start: number, total: number, sent: Buffer): Promise<void> {
      const u = new URL(url);
      const req = request({
        host: u.hostname,
        port: u.port,
        method: 'PATCH',
        path: u.pathname,
        headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(total), 'Content-Range': `${start}-${start + total - 1}` },
      });
      const failed = new Promise<void>((resolve) => {
        req.on('error', () => resolve());
        req.on('close', () => resolve());
      });
      req.on('response', (res) => res.resume());
      req.write(sent);
      // Wait until the server has written part of this chunk, so the abort really is mid-body.
      for (let i = 0; i < 200; i++) {
        const status = await fetch(url);
        const end = Number((status.headers.get('range') ?? '0-0').split('-')[1]);
        if (end > start) break;
        await sleep(5);
      }
      req.destroy();
      await failed;
    }

    /** GET the session until its Range stops moving; returns the next offset. */
    async function settledOffset(url: string): Promise<number> {
      let previous = '';
      let stable = 0;
      for (let i = 0; i < 200 && stable < 4; i++) {
        const res = await fetch(url);
        expect(res.status).toBe(204);
        const range = res.headers.get('range') ?? '';
        stable = range === previous ? stable + 1 : 0;
        previous = range;
        await sleep(10);
      }
      const m = /^0-(\d+)$/.exec(previous);
      expect(m).not.toBeNull();
      return Number(m![1]) + 1;
    }

    test('a client that aborts mid-PATCH does not crash the server', async () => {
      const name = uniqueRepo('abort');
      const session = await startUpload(reg.url, name);
      await abortedPatch(session.url, 0, 1024 * 1024, Buffer.alloc(64 * 1024, 1));
      await expectAlive();
    });

    test('after an aborted PATCH the upload resumes from the Range GET reports', async () => {
      const name = uniqueRepo('abort');
      const bytes = Buffer.alloc(512 * 1024);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + 3) & 0xff;
      const digest = blob(bytes).digest;
      const session = await startUpload(reg.url, name);
      const first = await fetch(session.url, { method: 'PATCH', headers: { 'Content-Range': '0-99999' }, body: bytes.subarray(0, 100000) });
      expect(first.headers.get('range')).toBe('0-99999');
      await abortedPatch(session.url, 100000, bytes.length - 100000, bytes.subarray(100000, 200000));
      await expectAlive();
      const offset = await settledOffset(session.url);
      expect(offset).toBeGreaterThanOrEqual(100000);
      expect(offset).toBeLessThanOrEqual(200000);
      const rest = await fetch(session.url, {
        method: 'PATCH',
        headers: { 'Content-Range': `${offset}-${bytes.length - 1}` },
        body: bytes.subarray(offset),
      });
      expect(rest.status).toBe(202);
      expect(rest.headers.get('range')).toBe(`0-${bytes.length - 1}`);
      const done = await fetch(withDigest(session.url, digest), { method: 'PUT' });
      expect(done.status).toBe(201);
      const got = await fetch(`${reg.url}/v2/${name}/blobs/${digest}`);
      expect(Buffer.from(await got.arrayBuffer()).equals(bytes)).toBe(true);
    });

    test('a client that aborts a monolithic POST ?digest= leaves no blob behind', async () => {
      const name = uniqueRepo('abort');
      const bytes = Buffer.alloc(1024 * 1024, 9);
      const digest = blob(bytes).digest;
      const u = new URL(reg.url);
      const req = request({
        host: u.hostname,
        port: u.port,
        method: 'POST',
        path: `/v2/${name}/blobs/uploads/?digest=${digest}`,
        headers: { 'Content-Length': String(bytes.length) },
      });
      const closed = new Promise<void>((resolve) => req.on('close', () => resolve()));
      req.on('error', () => undefined);
      req.write(bytes.subarray(0, 128 * 1024));
      await sleep(50);
      req.destroy();
      await closed;
      await expectAlive();
      expect((await fetch(`${reg.url}/v2/${name}/blobs/${digest}`, { method: 'HEAD' })).status).toBe(404);
    });

    test('a client that goes away mid-download does not crash the server, and the blob still reads whole', async () => {
      const name = uniqueRepo('abort');
      const bytes = Buffer.alloc(4 * 1024 * 1024);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 13) & 0xff;
      const b = blob(bytes);
      await pushBlob(reg.url, name, b);
      const u = new URL(reg.url);
      await new Promise<void>((resolve, reject) => {
        const req = request({ host: u.hostname, port: u.port, method: 'GET', path: `/v2/${name}/blobs/${b.digest}` }, (res) => {
          expect(res.statusCode).toBe(200);
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.on('error', (err) => (req.destroyed ? undefined : reject(err)));
        req.end();
      });
      await expectAlive();
      const again = await fetch(`${reg.url}/v2/${name}/blobs/${b.digest}`);
      expect(Buffer.from(await again.arrayBuffer()).equals(bytes)).toBe(true);
    });

    test('a client that aborts a manifest PUT leaves no manifest behind', async () => {
      const name = uniqueRepo('abort');
      await pushBlob(reg.url, name, blob('x'));
      const u = new URL(reg.url);
      const req = request({
        host: u.hostname,
        port: u.port,
        method: 'PUT',
        path: `/v2/${name}/manifests/half`,
        headers: { 'Content-Type': OCI_MANIFEST, 'Content-Length': '1000' },
      });
      const closed = new Promise<void>((resolve) => req.on('close', () => resolve()));
      req.on('error', () => undefined);
      req.write('{"schemaVersion":2,');
      await sleep(30);
      req.destroy();
      await closed;
      await expectAlive();
      await expectOciError(await fetch(`${reg.url}/v2/${name}/manifests/half`), 404, 'MANIFEST_UNKNOWN');
    });
  });
});
