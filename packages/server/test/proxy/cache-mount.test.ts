import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { access, readdir, readFile, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { blob, pushBlob, type Blob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/**
 * Mounts from a proxied repository (`from=proxy/...`) into local ones: the push of an image built on a
 * proxied base, as Docker and BuildKit send it, many pipelines at once.
 */
describe('mounts from the proxy cache', () => {
  let up: TestRegistry;
  let proxy: TestRegistry;

  beforeAll(async () => {
    up = await startRegistry();
    // A short idle timeout: copying a layer is the server's work, and must not cost the client its answer.
    proxy = await startRegistry({ settings: { idle_timeout: '1s', proxy: { retries: 0, upstreams: { up: { url: up.url } } } } });
  });
  afterAll(async () => {
    await proxy?.close();
    await up?.close();
  });

  async function cached(repo: string, bytes: Buffer): Promise<Blob> {
    const b = blob(bytes);
    await pushBlob(up.url, repo, b);
    const res = await fetch(`${proxy.url}/v2/proxy/up/${repo}/blobs/${b.digest}`);
    expect(res.status).toBe(200);
    await res.arrayBuffer();
    return b;
  }

  const mount = (to: string, b: Blob, from: string) => fetch(`${proxy.url}/v2/${to}/blobs/uploads/?mount=${b.digest}&from=${from}`, { method: 'POST' });
  const ingestLeftovers = async () => (await readdir(join(proxy.root, '_tmp'))).filter((f) => f.startsWith('ingest-'));

  test('24 pipelines pushing onto the same base at once: every mount gets its 201, and each repository the blob', async () => {
    const b = await cached('lib/base', randomBytes(32 * 1024 * 1024));
    const statuses = await Promise.all(Array.from({ length: 24 }, async (_, i) => (await mount(`team/app${i}`, b, 'proxy/up/lib/base')).status));
    expect(statuses).toEqual(Array(24).fill(201));
    for (let i = 0; i < 24; i++) {
      const head = await fetch(`${proxy.url}/v2/team/app${i}/blobs/${b.digest}`, { method: 'HEAD' });
      expect([i, head.status, head.headers.get('content-length')]).toEqual([i, 200, String(b.bytes.length)]);
    }
    const copy = await fetch(`${proxy.url}/v2/team/app23/blobs/${b.digest}`);
    expect(Buffer.from(await copy.arrayBuffer()).equals(b.bytes)).toBe(true);
    // Mounted again where it already is: 201 at once.
    expect((await mount('team/app0', b, 'proxy/up/lib/base')).status).toBe(201);
    expect(await ingestLeftovers()).toEqual([]);
  });

  test('a cached copy that no longer matches its digest is not copied: the mount is an upload, and nothing is linked', async () => {
    const b = await cached('lib/rotten', randomBytes(256 * 1024));
    const hex = b.digest.slice('sha256:'.length);
    const file = join(proxy.root, 'proxy', 'blobs', 'sha256', hex.slice(0, 2), hex);
    // Its clients have the last byte once it is verified; the file is moved into the cache just after.
    for (let i = 0; i < 500 && !(await access(file).then(() => true, () => false)); i++) await sleep(10);
    const bytes = await readFile(file);
    bytes[1000] ^= 0xff;
    await writeFile(file, bytes);
    const res = await mount('team/rotten', b, 'proxy/up/lib/rotten');
    expect(res.status).toBe(202);
    expect((await fetch(`${proxy.url}/v2/team/rotten/blobs/${b.digest}`, { method: 'HEAD' })).status).toBe(404);
    expect(await ingestLeftovers()).toEqual([]);
  });
});
