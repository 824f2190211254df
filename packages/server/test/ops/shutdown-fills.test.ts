import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { get } from 'node:http';
import { join } from 'node:path';
import { blob, pushBlob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { CountingForwarder } from '../proxy/helpers/counting-forwarder.js';

/**
 * A proxy blob download (fill) in flight at shutdown is let finish within shutdown_timeout, so the
 * cache keeps it; one that outlasts the deadline is abandoned without harm.
 */

const SIZE = 1_500_000;

describe('blob fills at shutdown', () => {
  let up: TestRegistry;
  let fwd: CountingForwarder;
  const layer = blob(randomBytes(SIZE));

  beforeAll(async () => {
    up = await startRegistry();
    await pushBlob(up.url, 'lib/slow', layer);
    fwd = await CountingForwarder.start(up.url);
    // About 1.5 s for the blob.
    fwd.throttle = { match: /\/blobs\/sha256:/, rate: 1_000_000 };
  });

  afterAll(async () => {
    await fwd?.close();
    await up?.close();
  });

  /** Starts a pull through the proxy and lets the client go once the first bytes arrive: the fill runs on. */
  function startFill(reg: TestRegistry): Promise<void> {
    return new Promise((resolve, reject) => {
      const req = get(`${reg.url}/v2/proxy/slow/lib/slow/blobs/${layer.digest}`, { agent: false }, (res) => {
        if (res.statusCode !== 200) reject(new Error(`GET: ${res.statusCode}`));
        res.once('data', () => {
          res.destroy();
          resolve();
        });
      });
      req.on('error', () => undefined);
    });
  }

  const cached = (reg: TestRegistry) => join(reg.config.proxyStorage, 'blobs', 'sha256', layer.digest.slice(7, 9), layer.digest.slice(7));

  test('a fill in flight finishes before the database closes, and the blob is in the cache', async () => {
    const root = await mkdtemp(join(tmpdir(), 'wharf-fill-stop-'));
    const reg = await startRegistry({ root, settings: { proxy: { upstreams: { slow: { url: fwd.url } } } } });
    try {
      await startFill(reg);
      expect(reg.fills.running).toBe(1);
      const started = Date.now();
      await reg.close({ timeoutMs: 20_000 });
      expect(Date.now() - started).toBeGreaterThan(500);
      expect(reg.fills.running).toBe(0);
      expect((await stat(cached(reg))).size).toBe(SIZE);
    } finally {
      await reg.close();
      await rm(root, { recursive: true, force: true });
    }
  });

  test('a fill that outlasts shutdown_timeout is abandoned: close returns at the deadline', async () => {
    const reg = await startRegistry({ settings: { proxy: { upstreams: { slow: { url: fwd.url } } } } });
    try {
      await startFill(reg);
      const started = Date.now();
      await reg.close({ timeoutMs: 300 });
      const took = Date.now() - started;
      expect(took).toBeGreaterThanOrEqual(290);
      expect(took).toBeLessThan(5_000);
    } finally {
      await reg.close();
      // Let the abandoned download end before the upstream goes away.
      for (let i = 0; i < 100 && reg.fills.running > 0; i++) await new Promise((r) => setTimeout(r, 50));
    }
  });
});
