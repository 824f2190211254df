import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { byteranges, expectHeadError, expectOciError, uniqueRepo } from '../helpers/http.js';
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
  async function seeded(content: string | Buffer = '0123456789'): Promise<{ repo: string; b: Blob }> {
    const repo = uniqueRepo('blobs');
    const b = blob(content);
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

  /** A fresh repository holding one 64 KiB blob of varied bytes. */
  async function seededLarge(): Promise<{ repo: string; b: Blob }> {
    const bytes = Buffer.alloc(64 * 1024);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 131 + (i >> 8)) & 0xff;
    return seeded(bytes);
  }

  test('several ranges in order answer 206 multipart/byteranges, a part for each with its Content-Range', async () => {
    const { repo, b } = await seededLarge();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers: { Range: 'bytes=0-9, 100-199,65530-' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBeNull();
    const body = Buffer.from(await res.arrayBuffer());
    expect(res.headers.get('content-length')).toBe(String(body.length));
    const parts = byteranges(res.headers.get('content-type'), body);
    expect(parts.map((p) => p.contentRange)).toEqual(['bytes 0-9/65536', 'bytes 100-199/65536', 'bytes 65530-65535/65536']);
    expect(parts.map((p) => p.bytes)).toEqual([b.bytes.subarray(0, 10), b.bytes.subarray(100, 200), b.bytes.subarray(65530)]);
  });

  test('a GET of 1024 ranges (a 20 KB Range header, as podman asks a zstd:chunked layer\'s chunks, with a token) gets its 1024 parts', async () => {
    const { repo, b } = await seededLarge();
    // containers/image sends up to 1024 ranges in one GET, and retries with fewer only after a 400:
    // a 431 for the head's size failed the pull.
    const ranges = Array.from({ length: 1024 }, (_, i) => ({ start: i * 60, end: i * 60 + 9 }));
    // Padded with the whitespace a list may hold, to the size a multi-GB layer's offsets make.
    const header = `bytes=${ranges.map((r) => `${r.start}-${r.end}`).join(',          ')}`;
    expect(header.length).toBeGreaterThan(20_000);
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers: { Range: header, Authorization: `Bearer ${'t'.repeat(2_000)}` } });
    expect(res.status).toBe(206);
    const parts = byteranges(res.headers.get('content-type'), Buffer.from(await res.arrayBuffer()));
    expect(parts).toHaveLength(1024);
    parts.forEach((p, i) => {
      expect(p.contentRange).toBe(`bytes ${ranges[i]!.start}-${ranges[i]!.end}/65536`);
      expect(p.bytes.equals(b.bytes.subarray(ranges[i]!.start, ranges[i]!.end + 1))).toBe(true);
    });
  });

  test('HEAD with several ranges answers the GET\'s status, type and length, and no body', async () => {
    const { repo, b } = await seededLarge();
    const url = `${reg.url}/v2/${repo}/blobs/${b.digest}`;
    const head = await fetch(url, { method: 'HEAD', headers: { Range: 'bytes=0-9,20-29' } });
    const get = await fetch(url, { headers: { Range: 'bytes=0-9,20-29' } });
    expect(head.status).toBe(206);
    expect(head.headers.get('content-type')).toMatch(/^multipart\/byteranges; boundary=/);
    expect(head.headers.get('content-length')).toBe(String((await get.arrayBuffer()).byteLength));
    expect((await head.arrayBuffer()).byteLength).toBe(0);
  });

  test.each([
    ['out of order', 'bytes=100-199,0-9'],
    ['overlapping', 'bytes=0-99,50-149'],
    ['asking for every byte', 'bytes=0-40000,40001-'],
    ['more than 1024 of them (each part costs a head and a read)', `bytes=${Array.from({ length: 1025 }, (_, i) => `${i * 60}-${i * 60 + 9}`).join(',')}`],
  ])('several ranges %s get the whole blob with 200', async (_what, range) => {
    const { repo, b } = await seededLarge();
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { headers: { Range: range } });
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).equals(b.bytes)).toBe(true);
  });

  test('of several ranges only the satisfiable are served: one left is a plain 206, none a 416', async () => {
    const { repo, b } = await seeded();
    const url = `${reg.url}/v2/${repo}/blobs/${b.digest}`;
    const one = await fetch(url, { headers: { Range: 'bytes=2-3,100-200' } });
    expect(one.status).toBe(206);
    expect(one.headers.get('content-range')).toBe('bytes 2-3/10');
    expect(Buffer.from(await one.arrayBuffer()).toString()).toBe('23');
    const none = await fetch(url, { headers: { Range: 'bytes=50-60,100-200' } });
    expect(none.status).toBe(416);
    expect(none.headers.get('content-range')).toBe('bytes */10');
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
