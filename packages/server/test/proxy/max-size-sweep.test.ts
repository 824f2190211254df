import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

const MiB = 1024 * 1024;
const sha256 = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/**
 * `max_size` is held soon after pulls take the cache past it, not at the next `eviction_interval`
 * (an hour here, as by default): a busy CI cache would otherwise outgrow it by an hour of downloads.
 */
describe('proxy cache past max_size between eviction intervals', () => {
  const blobs = Array.from({ length: 4 }, () => randomBytes(MiB));
  const digests = blobs.map(sha256);
  let upstream: Server;
  let proxy: TestRegistry;

  beforeAll(async () => {
    upstream = createServer((req, res) => {
      const i = digests.findIndex((d) => req.url === `/v2/lib/app/blobs/${d}`);
      if (i < 0) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': MiB });
      res.end(req.method === 'HEAD' ? undefined : blobs[i]);
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    proxy = await startRegistry({
      settings: {
        proxy: {
          max_size: '2560KiB',
          eviction_interval: '1h',
          upstreams: { up: { url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` } },
        },
      },
    });
  });
  afterAll(async () => {
    await proxy?.close();
    upstream?.closeAllConnections();
    await new Promise((resolve) => upstream?.close(resolve));
  });

  const cachedBytes = () => (proxy.db.prepare('SELECT COALESCE(SUM(size), 0) AS total FROM proxy_blobs').get() as { total: number }).total;
  const cachedFile = (digest: string) => join(proxy.root, 'proxy', 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

  test('pulls past max_size are evicted down to it within seconds, least recently used first', async () => {
    for (const [i, digest] of digests.entries()) {
      const res = await fetch(`${proxy.url}/v2/proxy/up/lib/app/blobs/${digest}`);
      expect(res.status).toBe(200);
      expect(Buffer.from(await res.arrayBuffer()).equals(blobs[i]!)).toBe(true);
    }
    // Stored: 4 MiB against 2.5.
    const stored = Date.now();
    const evicted = () => !existsSync(cachedFile(digests[0]!)) && !existsSync(cachedFile(digests[1]!));
    while (!evicted() && Date.now() - stored < 20_000) await new Promise((resolve) => setTimeout(resolve, 100));

    expect(existsSync(cachedFile(digests[0]!))).toBe(false);
    expect(existsSync(cachedFile(digests[1]!))).toBe(false);
    expect(existsSync(cachedFile(digests[2]!))).toBe(true);
    expect(existsSync(cachedFile(digests[3]!))).toBe(true);
    expect(cachedBytes()).toBe(2 * MiB);
    // What was evicted is pulled again, and counts again.
    const again = await fetch(`${proxy.url}/v2/proxy/up/lib/app/blobs/${digests[0]}`);
    expect(Buffer.from(await again.arrayBuffer()).equals(blobs[0]!)).toBe(true);
  });
});
