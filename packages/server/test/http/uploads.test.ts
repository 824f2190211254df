import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { chunksOf, expectOciError, rawRequest, startUpload, uniqueRepo, withDigest } from '../helpers/http.js';
import { blob, pushBlob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { captureLog } from '../auth/helpers.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function sha512(bytes: Buffer): string {
  return `sha512:${createHash('sha512').update(bytes).digest('hex')}`;
}

/** Deterministic bytes that are not all the same (so an offset mistake changes the digest). */
function pattern(size: number, seed = 1): Buffer {
  const bytes = Buffer.alloc(size);
  let x = seed;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    bytes[i] = x >>> 16;
  }
  return bytes;
}

describe('blob uploads', () => {
  let reg: TestRegistry;
  const log = captureLog();
  beforeAll(async () => {
    reg = await startRegistry({ logger: log.logger });
  });
  afterAll(async () => {
    await reg.close();
  });

  const patch = (url: string, body: Buffer, contentRange?: string) =>
    fetch(url, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/octet-stream', ...(contentRange ? { 'Content-Range': contentRange } : {}) },
      body,
    });

  async function expectBlob(repo: string, digest: string, bytes: Buffer): Promise<void> {
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(digest);
    expect(Buffer.from(await res.arrayBuffer()).equals(bytes)).toBe(true);
  }

  async function expectNoBlob(repo: string, digest: string): Promise<void> {
    expect((await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status).toBe(404);
  }

  /** Sends `text` as it is on a connection of its own; what came back until the server closed it. */
  function exchange(port: number, text: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => socket.write(text));
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('error', reject);
      socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    });
  }

  describe('starting a session', () => {
    test('POST answers 202 with a Location holding the session id, Range 0-0 and Docker-Upload-UUID', async () => {
      const repo = uniqueRepo('up');
      const res = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: { 'Content-Length': '0' } });
      expect(res.status).toBe(202);
      const id = res.headers.get('docker-upload-uuid');
      expect(id).toMatch(UUID);
      const location = res.headers.get('location');
      expect(location).toContain(id);
      expect(new URL(location!, reg.url).pathname).toBe(`/v2/${repo}/blobs/uploads/${id}`);
      expect(res.headers.get('range')).toBe('0-0');
      expect(res.headers.get('content-length')).toBe('0');
    });

    test('POST without the trailing slash starts a session too', async () => {
      const repo = uniqueRepo('up');
      const res = await fetch(`${reg.url}/v2/${repo}/blobs/uploads`, { method: 'POST' });
      expect(res.status).toBe(202);
      expect(res.headers.get('docker-upload-uuid')).toMatch(UUID);
    });

    test('two POSTs get two different sessions', async () => {
      const repo = uniqueRepo('up');
      const a = await startUpload(reg.url, repo);
      const b = await startUpload(reg.url, repo);
      expect(a.id).not.toBe(b.id);
    });

    test('POST under an invalid repository name answers 400 NAME_INVALID', async () => {
      await expectOciError(await fetch(`${reg.url}/v2/Bad_Name/blobs/uploads/`, { method: 'POST' }), 400, 'NAME_INVALID');
    });
  });

  describe('monolithic uploads', () => {
    test('POST then PUT ?digest= with the body answers 201 with Location and Docker-Content-Digest', async () => {
      const repo = uniqueRepo('up');
      const b = blob('monolithic after post');
      const session = await startUpload(reg.url, repo);
      const res = await fetch(withDigest(session.url, b.digest), { method: 'PUT', headers: { 'Content-Type': 'application/octet-stream' }, body: b.bytes });
      expect(res.status).toBe(201);
      expect(res.headers.get('docker-content-digest')).toBe(b.digest);
      expect(new URL(res.headers.get('location')!, reg.url).pathname).toBe(`/v2/${repo}/blobs/${b.digest}`);
      await expectBlob(repo, b.digest, b.bytes);
    });

    test('a single POST ?digest= with the body answers 201 and the blob is readable', async () => {
      const repo = uniqueRepo('up');
      const b = blob('single post');
      const res = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/?digest=${b.digest}`, { method: 'POST', body: b.bytes });
      expect(res.status).toBe(201);
      expect(res.headers.get('docker-content-digest')).toBe(b.digest);
      expect(new URL(res.headers.get('location')!, reg.url).pathname).toBe(`/v2/${repo}/blobs/${b.digest}`);
      await expectBlob(repo, b.digest, b.bytes);
    });

    test('a single POST ?digest= whose body does not match answers 400 DIGEST_INVALID and stores nothing', async () => {
      const repo = uniqueRepo('up');
      const claimed = blob('what was promised');
      const res = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/?digest=${claimed.digest}`, { method: 'POST', body: 'something else' });
      await expectOciError(res, 400, 'DIGEST_INVALID');
      await expectNoBlob(repo, claimed.digest);
    });

    test('a POST ?digest= with no body opens a session (ollama announces its blob so), however the emptiness is framed, which then takes the blob', async () => {
      const b = blob('announced, sent later');
      const framings = [
        ['Content-Length: 0', `X-Content-Length: ${b.bytes.length}`],
        [], // no framing header at all: no body (RFC 9112 6.3)
        ['Transfer-Encoding: chunked'], // and its body the last chunk alone
      ];
      for (const lines of framings) {
        const repo = uniqueRepo('up');
        const chunked = lines.includes('Transfer-Encoding: chunked');
        const reply = await exchange(reg.port, `POST /v2/${repo}/blobs/uploads/?digest=${b.digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n${chunked ? '0\r\n\r\n' : ''}`);
        expect([lines, reply.split('\r\n')[0]]).toEqual([lines, 'HTTP/1.1 202 Accepted']);
        const location = /^location: (.*)$/im.exec(reply)![1]!.trim();
        expect(location).toMatch(new RegExp(`^/v2/${repo}/blobs/uploads/[^/?]+`));
        expect(reply).toMatch(/^docker-upload-uuid: /im);
        await expectNoBlob(repo, b.digest);
        const put = await fetch(withDigest(new URL(location, reg.url).href, b.digest), { method: 'PUT', body: b.bytes });
        expect(put.status).toBe(201);
        await expectBlob(repo, b.digest, b.bytes);
      }
    });

    test('a POST ?digest= of the empty blob with no body is that blob, pushed in one request', async () => {
      const repo = uniqueRepo('up');
      const empty = blob('');
      const res = await rawRequest(reg.url, 'POST', `/v2/${repo}/blobs/uploads/?digest=${empty.digest}`, { headers: { 'content-length': '0' } });
      expect(res.status).toBe(201);
      expect(res.headers['docker-content-digest']).toBe(empty.digest);
      await expectBlob(repo, empty.digest, Buffer.alloc(0));
    });

    test('a single POST with a malformed ?digest= answers 400 DIGEST_INVALID', async () => {
      const repo = uniqueRepo('up');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/blobs/uploads/?digest=sha256:nothex`, { method: 'POST', body: 'x' }), 400, 'DIGEST_INVALID');
    });

    test.each([
      ['digest', (d: string) => `?digest=${d}&digest=${d}`, 'DIGEST_INVALID'],
      ['mount', (d: string) => `?mount=${d}&mount=${d}`, 'DIGEST_INVALID'],
      ['from', (d: string) => `?mount=${d}&from=a/b&from=a/b`, 'NAME_INVALID'],
    ])('a POST with ?%s= given twice answers 400 and opens no session', async (_name, query, code) => {
      const repo = uniqueRepo('up');
      const b = blob(`repeated parameter ${query('x')}`);
      const before = await readdir(join(reg.root, '_tmp', 'uploads'));
      const res = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/${query(b.digest)}`, { method: 'POST', body: b.bytes });
      await expectOciError(res, 400, code);
      expect(await readdir(join(reg.root, '_tmp', 'uploads'))).toEqual(before);
      await expectNoBlob(repo, b.digest);
    });

    test('a completing PUT with ?digest= given twice answers 400 DIGEST_INVALID', async () => {
      const repo = uniqueRepo('up');
      const b = blob('repeated on put');
      const session = await startUpload(reg.url, repo);
      const res = await fetch(`${session.url}?digest=${b.digest}&digest=${b.digest}`, { method: 'PUT', body: b.bytes });
      const entry = await expectOciError(res, 400, 'DIGEST_INVALID');
      expect(entry.message).toContain('more than once');
    });

    test('pushing the same blob twice answers 201 both times', async () => {
      const repo = uniqueRepo('up');
      const b = blob('pushed twice');
      await pushBlob(reg.url, repo, b);
      await pushBlob(reg.url, repo, b);
      await expectBlob(repo, b.digest, b.bytes);
    });

    test('an empty blob can be pushed and pulled', async () => {
      const repo = uniqueRepo('up');
      const b = blob(Buffer.alloc(0));
      await pushBlob(reg.url, repo, b);
      const res = await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-length')).toBe('0');
      expect((await res.arrayBuffer()).byteLength).toBe(0);
    });
  });

  describe('chunked uploads', () => {
    test('PATCH with Content-Range 0-n answers 202 with Range 0-n and the session Location', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      const res = await patch(session.url, Buffer.from('0123456789'), '0-9');
      expect(res.status).toBe(202);
      expect(res.headers.get('range')).toBe('0-9');
      expect(res.headers.get('docker-upload-uuid')).toBe(session.id);
      expect(new URL(res.headers.get('location')!, reg.url).pathname).toBe(new URL(session.url).pathname);
    });

    test('chunks in order, then PUT ?digest= with no body, answer 201 and the blob is the concatenation', async () => {
      const repo = uniqueRepo('up');
      const bytes = pattern(3000);
      const session = await startUpload(reg.url, repo);
      const first = await patch(session.url, bytes.subarray(0, 1000), '0-999');
      expect(first.headers.get('range')).toBe('0-999');
      const second = await patch(new URL(first.headers.get('location')!, reg.url).toString(), bytes.subarray(1000, 2500), '1000-2499');
      expect(second.status).toBe(202);
      expect(second.headers.get('range')).toBe('0-2499');
      const third = await patch(session.url, bytes.subarray(2500), '2500-2999');
      expect(third.headers.get('range')).toBe('0-2999');
      const digest = blob(bytes).digest;
      const done = await fetch(withDigest(session.url, digest), { method: 'PUT' });
      expect(done.status).toBe(201);
      expect(done.headers.get('docker-content-digest')).toBe(digest);
      await expectBlob(repo, digest, bytes);
    });

    test('a chunk that does not start where the upload ends answers 416', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await patch(session.url, Buffer.from('0123456789'), '0-9');
      const res = await patch(session.url, Buffer.from('abcde'), '20-24');
      await expectOciError(res, 416, 'RANGE_INVALID');
      // Where to resume, as the Docker registry API has it: no GET needed first.
      expect(new URL(res.headers.get('location') ?? '', reg.url).href).toBe(new URL(session.url).href);
      expect(res.headers.get('range')).toBe('0-9');
      expect(res.headers.get('docker-upload-uuid')).toBe(session.id);
    });

    test('after an out-of-order chunk the session still reports what it had', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await patch(session.url, Buffer.from('0123456789'), '0-9');
      await (await patch(session.url, Buffer.from('abcde'), '5-9')).arrayBuffer();
      const res = await fetch(session.url);
      expect(res.status).toBe(204);
      expect(res.headers.get('range')).toBe('0-9');
    });

    test('a first chunk that does not start at 0 answers 416', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await expectOciError(await patch(session.url, Buffer.from('abc'), '1-3'), 416);
    });

    test('a chunk whose length differs from its Content-Range answers 400 SIZE_INVALID', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await expectOciError(await patch(session.url, Buffer.from('abc'), '0-9'), 400, 'SIZE_INVALID');
    });

    test('a malformed Content-Range answers 416 RANGE_INVALID, with where the upload stands', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await patch(session.url, Buffer.from('0123456789'), '0-9');
      for (const [method, range] of [['PATCH', 'zero-two'], ['PATCH', '10-'], ['PUT', '10-']] as const) {
        const url = method === 'PUT' ? withDigest(session.url, blob('0123456789abc').digest) : session.url;
        const res = await fetch(url, { method, headers: { 'content-range': range, 'content-type': 'application/octet-stream' }, body: Buffer.from('abc') });
        await expectOciError(res, 416, 'RANGE_INVALID');
        expect([method, range, new URL(res.headers.get('location') ?? '', reg.url).href]).toEqual([method, range, new URL(session.url).href]);
        expect([method, range, res.headers.get('range'), res.headers.get('docker-upload-uuid')]).toEqual([method, range, '0-9', session.id]);
      }
      // Past 2^53 the numbers were rounded: the body was read, then a 400 named a size never sent.
      const huge = await patch(session.url, Buffer.from('abc'), '0-18446744073709551616');
      const error = await expectOciError(huge, 416, 'RANGE_INVALID');
      expect(error.message).toBe('Content-Range is beyond any blob this server stores');
    });

    test('a malformed Content-Range on a session that does not exist is 404 BLOB_UPLOAD_UNKNOWN, as any chunk there is', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      const gone = session.url.replace(session.id, '0b8a2c54-3f3c-4f8e-9d55-0f2b1d3c4e5f');
      await expectOciError(await patch(gone, Buffer.from('abc'), 'zero-two'), 404, 'BLOB_UPLOAD_UNKNOWN');
    });

    test('GET on a session answers 204 with the Range received so far', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await patch(session.url, Buffer.from('hello'), '0-4');
      const res = await fetch(session.url);
      expect(res.status).toBe(204);
      expect(res.headers.get('range')).toBe('0-4');
      expect(res.headers.get('docker-upload-uuid')).toBe(session.id);
      expect(new URL(res.headers.get('location')!, reg.url).pathname).toBe(new URL(session.url).pathname);
    });

    test('GET on a fresh session answers 204 with Range 0-0', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      const res = await fetch(session.url);
      expect(res.status).toBe(204);
      expect(res.headers.get('range')).toBe('0-0');
    });

    test('a PATCH without Content-Range streaming a whole 5 MiB body, then PUT ?digest= with no body, answers 201', async () => {
      const repo = uniqueRepo('up');
      const bytes = pattern(5 * 1024 * 1024 + 123, 7);
      const digest = blob(bytes).digest;
      const session = await startUpload(reg.url, repo);
      // As distribution's client: one PATCH, no Content-Range and no Content-Length (chunked encoding).
      const res = await rawRequest(reg.url, 'PATCH', new URL(session.url).pathname, {
        headers: { 'Content-Type': 'application/octet-stream' },
        body: chunksOf(bytes, 64 * 1024),
      });
      expect(res.status).toBe(202);
      expect(res.header('content-length')).toBe('0');
      expect(res.header('range')).toBe(`0-${bytes.length - 1}`);
      expect(/^(\d+)-(\d+)$/.test(res.header('range') ?? '')).toBe(true);
      const done = await fetch(withDigest(session.url, digest), { method: 'PUT', headers: { 'Content-Length': '0' } });
      expect(done.status).toBe(201);
      expect(done.headers.get('docker-content-digest')).toBe(digest);
      await expectBlob(repo, digest, bytes);
    });

    test('the final PUT can carry the last chunk with its Content-Range', async () => {
      const repo = uniqueRepo('up');
      const bytes = pattern(100, 3);
      const digest = blob(bytes).digest;
      const session = await startUpload(reg.url, repo);
      await patch(session.url, bytes.subarray(0, 60), '0-59');
      const done = await fetch(withDigest(session.url, digest), {
        method: 'PUT',
        headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': '60-99' },
        body: bytes.subarray(60),
      });
      expect(done.status).toBe(201);
      expect(done.headers.get('docker-content-digest')).toBe(digest);
      await expectBlob(repo, digest, bytes);
    });

    test('the final PUT can carry the last chunk without a Content-Range', async () => {
      const repo = uniqueRepo('up');
      const bytes = pattern(100, 4);
      const digest = blob(bytes).digest;
      const session = await startUpload(reg.url, repo);
      await patch(session.url, bytes.subarray(0, 30), '0-29');
      const done = await fetch(withDigest(session.url, digest), { method: 'PUT', body: bytes.subarray(30) });
      expect(done.status).toBe(201);
      await expectBlob(repo, digest, bytes);
    });

    test('a final PUT whose chunk does not start where the upload ends answers 416', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await patch(session.url, Buffer.from('0123'), '0-3');
      const res = await fetch(withDigest(session.url, blob('01234567').digest), {
        method: 'PUT',
        headers: { 'Content-Range': '6-9' },
        body: '4567',
      });
      await expectOciError(res, 416);
      expect(res.headers.get('range')).toBe('0-3');
      expect(res.headers.get('location')).toBe(new URL(session.url).pathname);
    });
  });

  describe('closing a session', () => {
    test('PUT with a digest that does not match answers 400 DIGEST_INVALID and the blob is not visible', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await patch(session.url, Buffer.from('actual content'), '0-13');
      const wrong = blob('claimed content');
      await expectOciError(await fetch(withDigest(session.url, wrong.digest), { method: 'PUT' }), 400, 'DIGEST_INVALID');
      await expectNoBlob(repo, wrong.digest);
      await expectNoBlob(repo, blob('actual content').digest);
    });

    test('a session whose content failed verification is gone', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await patch(session.url, Buffer.from('abc'), '0-2');
      await (await fetch(withDigest(session.url, blob('xyz').digest), { method: 'PUT' })).arrayBuffer();
      await expectOciError(await fetch(session.url), 404, 'BLOB_UPLOAD_UNKNOWN');
    });

    test('PUT without a digest answers 400 DIGEST_INVALID and keeps the session', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await patch(session.url, Buffer.from('abc'), '0-2');
      await expectOciError(await fetch(session.url, { method: 'PUT' }), 400, 'DIGEST_INVALID');
      const status = await fetch(session.url);
      expect(status.status).toBe(204);
      expect(status.headers.get('range')).toBe('0-2');
    });

    test('PUT with a malformed digest answers 400 DIGEST_INVALID', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await expectOciError(await fetch(withDigest(session.url, 'sha256:123'), { method: 'PUT' }), 400, 'DIGEST_INVALID');
    });

    test('a completed session is gone', async () => {
      const repo = uniqueRepo('up');
      const b = blob('complete me');
      const session = await startUpload(reg.url, repo);
      expect((await fetch(withDigest(session.url, b.digest), { method: 'PUT', body: b.bytes })).status).toBe(201);
      await expectOciError(await fetch(session.url), 404, 'BLOB_UPLOAD_UNKNOWN');
    });

    test('DELETE of a session answers 204 and a GET then answers 404 BLOB_UPLOAD_UNKNOWN', async () => {
      const repo = uniqueRepo('up');
      const session = await startUpload(reg.url, repo);
      await patch(session.url, Buffer.from('abc'), '0-2');
      const res = await fetch(session.url, { method: 'DELETE' });
      expect(res.status).toBe(204);
      await expectOciError(await fetch(session.url), 404, 'BLOB_UPLOAD_UNKNOWN');
    });

    test('DELETE of an unknown session answers 404 BLOB_UPLOAD_UNKNOWN', async () => {
      const repo = uniqueRepo('up');
      await expectOciError(
        await fetch(`${reg.url}/v2/${repo}/blobs/uploads/3f2b1c9e-0000-4000-8000-000000000000`, { method: 'DELETE' }),
        404,
        'BLOB_UPLOAD_UNKNOWN',
      );
    });
  });

  describe('sessions are bound to their repository and id', () => {
    test('GET of repository a\'s session under repository b answers 404 BLOB_UPLOAD_UNKNOWN', async () => {
      const a = uniqueRepo('up');
      const b = uniqueRepo('up');
      const session = await startUpload(reg.url, a);
      await expectOciError(await fetch(`${reg.url}/v2/${b}/blobs/uploads/${session.id}`), 404, 'BLOB_UPLOAD_UNKNOWN');
    });

    test('PATCH of repository a\'s session under repository b answers 404 and appends nothing', async () => {
      const a = uniqueRepo('up');
      const b = uniqueRepo('up');
      const session = await startUpload(reg.url, a);
      await expectOciError(await patch(`${reg.url}/v2/${b}/blobs/uploads/${session.id}`, Buffer.from('abc'), '0-2'), 404, 'BLOB_UPLOAD_UNKNOWN');
      expect((await fetch(session.url)).headers.get('range')).toBe('0-0');
    });

    test('PUT of repository a\'s session under repository b answers 404 and links nothing', async () => {
      const a = uniqueRepo('up');
      const b = uniqueRepo('up');
      const content = blob('belongs to a');
      const session = await startUpload(reg.url, a);
      await patch(session.url, content.bytes, `0-${content.bytes.length - 1}`);
      const res = await fetch(withDigest(`${reg.url}/v2/${b}/blobs/uploads/${session.id}`, content.digest), { method: 'PUT' });
      await expectOciError(res, 404, 'BLOB_UPLOAD_UNKNOWN');
      await expectNoBlob(b, content.digest);
    });

    test('DELETE of repository a\'s session under repository b answers 404 and keeps it', async () => {
      const a = uniqueRepo('up');
      const b = uniqueRepo('up');
      const session = await startUpload(reg.url, a);
      await expectOciError(await fetch(`${reg.url}/v2/${b}/blobs/uploads/${session.id}`, { method: 'DELETE' }), 404, 'BLOB_UPLOAD_UNKNOWN');
      expect((await fetch(session.url)).status).toBe(204);
    });

    test('an unknown session id answers 404 BLOB_UPLOAD_UNKNOWN for GET, PATCH and PUT', async () => {
      const repo = uniqueRepo('up');
      const url = `${reg.url}/v2/${repo}/blobs/uploads/5b0f7e0a-1111-4222-8333-444455556666`;
      await expectOciError(await fetch(url), 404, 'BLOB_UPLOAD_UNKNOWN');
      await expectOciError(await patch(url, Buffer.from('abc'), '0-2'), 404, 'BLOB_UPLOAD_UNKNOWN');
      await expectOciError(await fetch(withDigest(url, blob('abc').digest), { method: 'PUT' }), 404, 'BLOB_UPLOAD_UNKNOWN');
    });

    test('a session id that is not a UUID answers 404 BLOB_UPLOAD_UNKNOWN', async () => {
      const repo = uniqueRepo('up');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/blobs/uploads/not-a-session`), 404, 'BLOB_UPLOAD_UNKNOWN');
    });
  });

  describe('cross-repository mount', () => {
    // `automatic_mount = true`: ?mount= without from looks for a source (off by default).
    let auto: TestRegistry;
    const autoLog = captureLog();
    beforeAll(async () => {
      auto = await startRegistry({ logger: autoLog.logger, settings: { automatic_mount: true } });
    });
    afterAll(async () => {
      await auto.close();
    });

    test.each([
      ['?mount=&from= answers 201 when the blob is linked in from', (from: string) => `&from=${from}`, false],
      ['with automatic_mount on, ?mount= without from answers 201 when some repository holds the blob (automatic content discovery)', () => '', true],
    ])('%s, and the blob is then readable in the target', async (_what, fromParam, automatic) => {
      const server = automatic ? auto : reg;
      const from = uniqueRepo('src');
      const target = uniqueRepo('dst');
      const b = blob(`mount me ${fromParam('x')}`);
      await pushBlob(server.url, from, b);
      const res = await fetch(`${server.url}/v2/${target}/blobs/uploads/?mount=${b.digest}${fromParam(from)}`, { method: 'POST' });
      expect(res.status).toBe(201);
      expect(res.headers.get('docker-content-digest')).toBe(b.digest);
      expect(new URL(res.headers.get('location')!, server.url).pathname).toBe(`/v2/${target}/blobs/${b.digest}`);
      const pulled = await fetch(`${server.url}/v2/${target}/blobs/${b.digest}`);
      expect(pulled.status).toBe(200);
      expect(Buffer.from(await pulled.arrayBuffer()).equals(b.bytes)).toBe(true);
      // Its log line says it was a mount, and from where.
      await new Promise((r) => setTimeout(r, 20));
      const line = (automatic ? autoLog : log)
        .text()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { msg: string; method?: string; path?: string; mountedFrom?: string })
        .find((l) => l.msg === 'request' && l.method === 'POST' && l.path === `/v2/${target}/blobs/uploads/`);
      expect(line?.mountedFrom).toBe(from);
    });

    test('?mount= of a blob not linked in from answers 202 with an upload session', async () => {
      const from = uniqueRepo('src');
      const target = uniqueRepo('dst');
      const b = blob('not in from');
      await pushBlob(reg.url, uniqueRepo('elsewhere'), b);
      await pushBlob(reg.url, from, blob('something else in from'));
      const res = await fetch(`${reg.url}/v2/${target}/blobs/uploads/?mount=${b.digest}&from=${from}`, { method: 'POST' });
      expect(res.status).toBe(202);
      expect(res.headers.get('docker-upload-uuid')).toMatch(UUID);
      expect(res.headers.get('location')).toContain(res.headers.get('docker-upload-uuid'));
      await expectNoBlob(target, b.digest);
    });

    test('the session a failed mount opens accepts the upload', async () => {
      const target = uniqueRepo('dst');
      const b = blob('upload after failed mount');
      const res = await fetch(`${reg.url}/v2/${target}/blobs/uploads/?mount=${b.digest}&from=${uniqueRepo('nobody')}`, { method: 'POST' });
      expect(res.status).toBe(202);
      const url = new URL(res.headers.get('location')!, reg.url).toString();
      expect((await fetch(withDigest(url, b.digest), { method: 'PUT', body: b.bytes })).status).toBe(201);
      await expectBlob(target, b.digest, b.bytes);
    });

    test('with automatic_mount on, ?mount= without from of a blob no repository holds answers 202 with an upload session', async () => {
      const target = uniqueRepo('dst');
      const b = blob('held nowhere');
      const res = await fetch(`${auto.url}/v2/${target}/blobs/uploads/?mount=${b.digest}`, { method: 'POST' });
      expect(res.status).toBe(202);
      expect(res.headers.get('docker-upload-uuid')).toMatch(UUID);
      expect((await fetch(`${auto.url}/v2/${target}/blobs/${b.digest}`, { method: 'HEAD' })).status).toBe(404);
    });

    test('by default, ?mount= without from answers 202 with an upload session even when a repository holds the blob (as the OCI conformance suite requires)', async () => {
      // The suite's "Cross-mounting of a blob without the from argument should yield session id"
      // mounts sha256("hello world"), which it takes to be nowhere: a registry holding it anyway
      // (a classic test blob) must still answer 202.
      const b = blob('hello world');
      await pushBlob(reg.url, uniqueRepo('elsewhere'), b);
      const target = uniqueRepo('dst');
      const res = await fetch(`${reg.url}/v2/${target}/blobs/uploads/?mount=${b.digest}`, { method: 'POST' });
      expect(res.status).toBe(202);
      expect(res.headers.get('docker-upload-uuid')).toMatch(UUID);
      expect(res.headers.get('location')).toContain(res.headers.get('docker-upload-uuid'));
      await expectNoBlob(target, b.digest);
    });

    test('?mount= with an invalid from answers 202 with an upload session', async () => {
      const target = uniqueRepo('dst');
      const b = blob('invalid from');
      await pushBlob(reg.url, uniqueRepo('src'), b);
      const res = await fetch(`${reg.url}/v2/${target}/blobs/uploads/?mount=${b.digest}&from=Not%20A%20Repo/..`, { method: 'POST' });
      expect(res.status).toBe(202);
      expect(res.headers.get('docker-upload-uuid')).toMatch(UUID);
    });

    test('?mount= with a malformed digest answers 202 with an upload session', async () => {
      const from = uniqueRepo('src');
      const target = uniqueRepo('dst');
      await pushBlob(reg.url, from, blob('x'));
      const res = await fetch(`${reg.url}/v2/${target}/blobs/uploads/?mount=sha256:zz&from=${from}`, { method: 'POST' });
      expect(res.status).toBe(202);
    });
  });

  describe('sha512', () => {
    test('a sha512 blob pushed with POST ?digest= pulls back under its sha512 digest', async () => {
      const repo = uniqueRepo('up');
      const bytes = pattern(4096, 11);
      const digest = sha512(bytes);
      const res = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/?digest=${digest}`, { method: 'POST', body: bytes });
      expect(res.status).toBe(201);
      expect(res.headers.get('docker-content-digest')).toBe(digest);
      await expectBlob(repo, digest, bytes);
    });

    test('a sha512 blob pushed with POST then PUT ?digest= pulls back', async () => {
      const repo = uniqueRepo('up');
      const bytes = pattern(999, 12);
      const digest = sha512(bytes);
      const session = await startUpload(reg.url, repo);
      expect((await fetch(withDigest(session.url, digest), { method: 'PUT', body: bytes })).status).toBe(201);
      await expectBlob(repo, digest, bytes);
    });

    test('?digest-algorithm=sha512 opens a session that a chunked sha512 upload completes', async () => {
      const repo = uniqueRepo('up');
      const bytes = pattern(2048, 13);
      const digest = sha512(bytes);
      const session = await startUpload(reg.url, repo, '?digest-algorithm=sha512');
      expect(session.res.headers.get('range')).toBe('0-0');
      expect((await patch(session.url, bytes.subarray(0, 1024), '0-1023')).status).toBe(202);
      expect((await patch(session.url, bytes.subarray(1024), '1024-2047')).headers.get('range')).toBe('0-2047');
      const done = await fetch(withDigest(session.url, digest), { method: 'PUT' });
      expect(done.status).toBe(201);
      expect(done.headers.get('docker-content-digest')).toBe(digest);
      await expectBlob(repo, digest, bytes);
    });

    test('?digest-algorithm= with an unsupported algorithm answers 400 DIGEST_INVALID', async () => {
      const repo = uniqueRepo('up');
      await expectOciError(await fetch(`${reg.url}/v2/${repo}/blobs/uploads/?digest-algorithm=md5`, { method: 'POST' }), 400, 'DIGEST_INVALID');
    });
  });
});
