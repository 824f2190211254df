import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { request } from 'node:http';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { run } from '../helpers/clients.js';
import { startUpload, uniqueRepo, withDigest } from '../helpers/http.js';
import { blob, imageManifest, OCI_MANIFEST, pushBlob, sha256 } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

const DIST = resolve(import.meta.dirname, '../../dist');

/** A request whose body goes out with chunked encoding, `size` bytes per chunk. */
function sendChunked(url: string, method: string, headers: Record<string, string>, body: Buffer, size: number): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers: { ...headers, 'Transfer-Encoding': 'chunked' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    for (let at = 0; at < body.length; at += size) req.write(body.subarray(at, at + size));
    req.end();
  });
}

/**
 * Bodies sent in tiny chunks (chunked encoding), which anyone may send to the token endpoint: the
 * abuse audit saw 300 bytes of memory held per byte of body (a Buffer per chunk, each a slice of its
 * socket read) and a hash update and a file write per byte of a blob.
 */
describe('bodies in 1-byte chunks', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => reg?.close());

  test('readSmallBody holds none of the chunks it has read: each 64 KiB read a slice came from can go', async () => {
    // In a process of its own (jest's sandbox keeps what a WeakRef points at), with the built server:
    // every chunk a 1-byte slice of a 64 KiB read, as node's HTTP parser hands them; halfway through the
    // body, after two full collections, how many of the first 31 reads are still alive.
    const script = `
      import { readSmallBody } from ${JSON.stringify(pathToFileURL(join(DIST, 'http', 'body.js')).href)};
      const reads = [];
      let release, resume;
      const halfway = new Promise((r) => (release = r));
      const goOn = new Promise((r) => (resume = r));
      async function* chunks() {
        for (let i = 0; i < 64; i++) {
          const read = Buffer.alloc(64 * 1024, i);
          reads.push(new WeakRef(read.buffer));
          yield read.subarray(0, 1);
          if (i === 31) { release(); await goOn; }
        }
      }
      const reading = readSmallBody({ headers: {}, [Symbol.asyncIterator]: chunks }, 4 << 20);
      await halfway;
      for (let i = 0; i < 2; i++) { await new Promise((r) => setTimeout(r, 10)); globalThis.gc(); }
      const kept = reads.slice(0, 31).filter((r) => r.deref()).length;
      resume();
      const body = await reading;
      console.log(JSON.stringify({ kept, body: [...body] }));
    `;
    const out = await run(process.execPath, ['--expose-gc', '--input-type=module', '-e', script]);
    const { kept, body } = JSON.parse(out.stdout) as { kept: number; body: number[] };
    expect(kept).toBe(0); // kept as they came: all 31
    expect(body).toEqual(Array.from({ length: 64 }, (_, i) => i));
  });

  test('a manifest PUT in 1-byte chunks is stored byte for byte', async () => {
    const repo = uniqueRepo('tiny');
    const config = blob('{}');
    const layer = blob('a layer');
    await pushBlob(reg.url, repo, config);
    await pushBlob(reg.url, repo, layer);
    const manifest = imageManifest(config, [layer], { annotations: { pad: 'x'.repeat(20_000) } });
    const put = await sendChunked(`${reg.url}/v2/${repo}/manifests/1`, 'PUT', { 'Content-Type': OCI_MANIFEST }, manifest.bytes, 1);
    expect(put.status).toBe(201);
    const got = await fetch(`${reg.url}/v2/${repo}/manifests/1`, { headers: { Accept: OCI_MANIFEST } });
    expect(Buffer.from(await got.arrayBuffer()).equals(manifest.bytes)).toBe(true);
  });

  test('a blob PATCH in 1-byte chunks, then one of 3-byte chunks, completes to the right digest', async () => {
    const repo = uniqueRepo('tiny');
    const bytes = Buffer.from(Array.from({ length: 150_000 }, (_, i) => (i * 31) % 256));
    const session = await startUpload(reg.url, repo);
    const first = await sendChunked(session.url, 'PATCH', { 'Content-Type': 'application/octet-stream' }, bytes.subarray(0, 100_000), 1);
    expect(first.status).toBe(202);
    const next = await fetch(session.url);
    expect(next.headers.get('range')).toBe('0-99999');
    const second = await sendChunked(next.headers.get('location') ? new URL(next.headers.get('location')!, reg.url).toString() : session.url, 'PATCH', { 'Content-Type': 'application/octet-stream' }, bytes.subarray(100_000), 3);
    expect(second.status).toBe(202);
    const put = await fetch(withDigest(session.url, sha256(bytes)), { method: 'PUT' });
    expect(put.status).toBe(201);
    const pulled = await fetch(`${reg.url}/v2/${repo}/blobs/${sha256(bytes)}`);
    expect(sha256(Buffer.from(await pulled.arrayBuffer()))).toBe(sha256(bytes));
  });
});
