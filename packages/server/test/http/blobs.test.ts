import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { expectHeadError, expectOciError, uniqueRepo } from '../helpers/http.js';
import { blob, pushBlob, type Blob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

describe('blobs: GET, HEAD, Range, DELETE', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => {
    await reg.close();
  });

  /** A fresh repository holding one ten-byte blob `0123456789`. */
  async function seeded(content = '0123456789'): Promise<{ repo: string; b: Blob }> {
    const repo = uniqueRepo('blobs');
    const b = blob(`${content}`);
    await pushBlob(reg.url, repo, b);
    return { repo, b };
  }

  test('GET answers 200 with Content-Length, Docker-Content-Digest and the exact bytes', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(b.bytes.length));
    expect(res.headers.get('docker-content-digest')).toBe(b.digest);
    expect(Buffer.from(await res.arrayBuffer())).toEqual(b.bytes);
  });

  test('GET of a larger binary blob returns it byte for byte', async () => {
    const repo = uniqueRepo('blobs');
    const bytes = Buffer.alloc(1024 * 1024 + 17);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + 7) & 0xff;
    const b = blob(bytes);
    await pushBlob(reg.url, repo, b);
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(bytes.length));
    expect(Buffer.from(await res.arrayBuffer()).equals(bytes)).toBe(true);
  });

  test('HEAD answers 200 with Content-Length and Docker-Content-Digest and no body', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { method: 'HEAD' });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe(String(b.bytes.length));
    expect(res.headers.get('docker-content-digest')).toBe(b.digest);
    expect((await res.arrayBuffer()).byteLength).toBe(0);
  });

  test('GET advertises byte ranges', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`);
    expect(res.headers.get('accept-ranges')).toBe('bytes');
    await res.arrayBuffer();
  });

  test('Range bytes=0-3 answers 206 with Content-Range and the first four bytes', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers: { Range: 'bytes=0-3' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe('bytes 0-3/10');
    expect(res.headers.get('content-length')).toBe('4');
    expect(res.headers.get('docker-content-digest')).toBe(b.digest);
    expect(Buffer.from(await res.arrayBuffer()).toString()).toBe('0123');
  });

  test('Range bytes=5- answers 206 with the rest of the blob', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers: { Range: 'bytes=5-' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe('bytes 5-9/10');
    expect(res.headers.get('content-length')).toBe('5');
    expect(Buffer.from(await res.arrayBuffer()).toString()).toBe('56789');
  });

  test('suffix Range bytes=-3 answers 206 with the last three bytes', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers: { Range: 'bytes=-3' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe('bytes 7-9/10');
    expect(res.headers.get('content-length')).toBe('3');
    expect(Buffer.from(await res.arrayBuffer()).toString()).toBe('789');
  });

  test('a Range end past the blob is clamped to the last byte', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers: { Range: 'bytes=8-100' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe('bytes 8-9/10');
    expect(Buffer.from(await res.arrayBuffer()).toString()).toBe('89');
  });

  test('HEAD with a Range answers 206 with the range length and no body', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { method: 'HEAD', headers: { Range: 'bytes=2-5' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe('bytes 2-5/10');
    expect(res.headers.get('content-length')).toBe('4');
    expect((await res.arrayBuffer()).byteLength).toBe(0);
  });

  test('an unsatisfiable Range answers 416 with Content-Range bytes */size', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers: { Range: 'bytes=10-' } });
    expect(res.headers.get('content-range')).toBe('bytes */10');
    await expectOciError(res, 416);
  });

  test('a Range whose end is before its start answers 416', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers: { Range: 'bytes=5-2' } });
    expect(res.headers.get('content-range')).toBe('bytes */10');
    await expectOciError(res, 416);
  });

  test('a Range in another unit is ignored and the whole blob is served', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers: { Range: 'items=0-1' } });
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer())).toEqual(b.bytes);
  });

  test('If-None-Match with the blob\'s ETag answers 304 with no body, GET and HEAD; another tag gets the blob', async () => {
    const { repo, b } = await seeded();
    const url = `${reg.url}/v2/${repo}/blobs/${b.digest}`;
    for (const method of ['GET', 'HEAD']) {
      const res = await fetch(url, { method, headers: { 'If-None-Match': `"${b.digest}"` } });
      expect([method, res.status]).toEqual([method, 304]);
      expect(res.headers.get('etag')).toBe(`"${b.digest}"`);
      expect((await res.arrayBuffer()).byteLength).toBe(0);
    }
    const other = await fetch(url, { headers: { 'If-None-Match': '"sha256:00"' } });
    expect(other.status).toBe(200);
    expect(Buffer.from(await other.arrayBuffer())).toEqual(b.bytes);
  });

  test('If-Range with the blob\'s ETag keeps the Range; any other validator gets the whole blob with 200', async () => {
    const { repo, b } = await seeded();
    const url = `${reg.url}/v2/${repo}/blobs/${b.digest}`;
    const same = await fetch(url, { headers: { Range: 'bytes=0-3', 'If-Range': `"${b.digest}"` } });
    expect(same.status).toBe(206);
    expect(Buffer.from(await same.arrayBuffer()).toString()).toBe('0123');
    for (const validator of ['"sha256:00"', `W/"${b.digest}"`, 'Wed, 21 Oct 2015 07:28:00 GMT']) {
      const res = await fetch(url, { headers: { Range: 'bytes=0-3', 'If-Range': validator } });
      expect([validator, res.status]).toEqual([validator, 200]);
      expect(res.headers.get('content-range')).toBeNull();
      expect(Buffer.from(await res.arrayBuffer())).toEqual(b.bytes);
    }
  });

  test('GET of an unknown blob answers 404 BLOB_UNKNOWN', async () => {
    const { repo } = await seeded();
    await expectOciError(await fetch(`${reg.url}/v2/${repo}/blobs/${blob('never pushed').digest}`), 404, 'BLOB_UNKNOWN');
  });

  test('HEAD of an unknown blob answers 404 with no body', async () => {
    const { repo } = await seeded();
    await expectHeadError(await fetch(`${reg.url}/v2/${repo}/blobs/${blob('never pushed').digest}`, { method: 'HEAD' }), 404);
  });

  test('GET of a blob in a repository that does not exist answers 404 BLOB_UNKNOWN', async () => {
    await expectOciError(await fetch(`${reg.url}/v2/${uniqueRepo('nobody')}/blobs/${blob('x').digest}`), 404, 'BLOB_UNKNOWN');
  });

  test('a malformed digest answers 400 DIGEST_INVALID', async () => {
    const { repo } = await seeded();
    await expectOciError(await fetch(`${reg.url}/v2/${repo}/blobs/sha256:not-hex`), 400, 'DIGEST_INVALID');
  });

  test('a sha256 digest of the wrong length answers 400 DIGEST_INVALID', async () => {
    const { repo } = await seeded();
    await expectOciError(await fetch(`${reg.url}/v2/${repo}/blobs/sha256:abcdef`), 400, 'DIGEST_INVALID');
  });

  test('a digest with an unsupported algorithm answers 400 DIGEST_INVALID', async () => {
    const { repo } = await seeded();
    await expectOciError(await fetch(`${reg.url}/v2/${repo}/blobs/md5:d41d8cd98f00b204e9800998ecf8427e`), 400, 'DIGEST_INVALID');
  });

  test('a blob pushed to alice/a is 404 through bob/b', async () => {
    const alice = uniqueRepo('alice');
    const bob = uniqueRepo('bob');
    const b = blob('alice only');
    await pushBlob(reg.url, alice, b);
    await pushBlob(reg.url, bob, blob('bob has something else'));
    expect((await fetch(`${reg.url}/v2/${alice}/blobs/${b.digest}`, { method: 'HEAD' })).status).toBe(200);
    await expectOciError(await fetch(`${reg.url}/v2/${bob}/blobs/${b.digest}`), 404, 'BLOB_UNKNOWN');
  });

  test('DELETE of a blob answers 202 and the blob is then 404', async () => {
    const { repo, b } = await seeded();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { method: 'DELETE' });
    expect(res.status).toBe(202);
    expect(await res.text()).toBe('');
    await expectOciError(await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`), 404, 'BLOB_UNKNOWN');
  });

  test('DELETE of a blob in one repository leaves it readable in another', async () => {
    const one = uniqueRepo('blobs');
    const two = uniqueRepo('blobs');
    const b = blob('shared content');
    await pushBlob(reg.url, one, b);
    await pushBlob(reg.url, two, b);
    expect((await fetch(`${reg.url}/v2/${one}/blobs/${b.digest}`, { method: 'DELETE' })).status).toBe(202);
    const res = await fetch(`${reg.url}/v2/${two}/blobs/${b.digest}`);
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer())).toEqual(b.bytes);
  });

  test('DELETE of an unknown blob answers 404 BLOB_UNKNOWN', async () => {
    const { repo } = await seeded();
    await expectOciError(await fetch(`${reg.url}/v2/${repo}/blobs/${blob('never').digest}`, { method: 'DELETE' }), 404, 'BLOB_UNKNOWN');
  });

  test('DELETE with a malformed digest answers 400 DIGEST_INVALID', async () => {
    const { repo } = await seeded();
    await expectOciError(await fetch(`${reg.url}/v2/${repo}/blobs/sha256:zz`, { method: 'DELETE' }), 400, 'DIGEST_INVALID');
  });

  test('GET of a blob under an invalid repository name answers 400 NAME_INVALID', async () => {
    await expectOciError(await fetch(`${reg.url}/v2/Alice/App/blobs/${blob('x').digest}`), 400, 'NAME_INVALID');
  });
});
