import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { requireTool, shortTempDir, startContainerd, type Containerd } from '../helpers/clients.js';
import { blob, imageManifest, pushBlob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { freePort, startWharfProcess, writeWharfConfig, type WharfProcess } from '../helpers/wharf-process.js';
import { CountingForwarder } from '../proxy/helpers/counting-forwarder.js';

const MiB = 1024 * 1024;
const SIZE = 48 * MiB;

/**
 * containerd as the client of a proxied download that a crash of Wharf cuts. `ctr content fetch`
 * fails (its own resume finds no server), and ctr 1.6 keeps nothing of it for the next command: the
 * next fetch asks for the whole layer. The restarted Wharf serves it from the bytes its note kept and
 * the rest, which it asks the upstream for once.
 */
describe('containerd (ctr) resuming a layer through a Wharf proxy killed mid-download', () => {
  let up: TestRegistry;
  let fwd: CountingForwarder;
  let dir: string;
  let containerd: Containerd | undefined;

  beforeAll(async () => {
    await requireTool('containerd', 'containerd');
    await requireTool('ctr', 'containerd');
    up = await startRegistry();
    fwd = await CountingForwarder.start(up.url);
    dir = await shortTempDir();
    containerd = await startContainerd(join(dir, 'ctrd'));
  }, 120_000);

  afterAll(async () => {
    await containerd?.close();
    await fwd?.close();
    await up?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  test('the next fetch gets the layer, and the upstream sends only what the note did not keep', async () => {
    const layer = blob(randomBytes(SIZE));
    const config = blob('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    await pushBlob(up.url, 'erin/big', layer);
    await pushBlob(up.url, 'erin/big', config);
    const manifest = imageManifest(config, [layer]);
    const put = await fetch(`${up.url}/v2/erin/big/manifests/1`, { method: 'PUT', headers: { 'Content-Type': manifest.mediaType }, body: manifest.bytes });
    expect(put.status).toBe(201);
    const path = `/v2/erin/big/blobs/${layer.digest}`;

    const root = await mkdtemp(join(tmpdir(), 'wharf-ctr-crash-'));
    const temp = join(root, 'storage', '_tmp');
    const port = await freePort();
    const configFile = await writeWharfConfig(root, port, { logLevel: 'info', proxy: ['retries = 0', '[proxy.upstreams.up]', `url = "${fwd.url}"`] });
    const noted = async (): Promise<number> => {
      const note = (await readdir(temp).catch(() => [] as string[])).find((f) => f.startsWith('fill-') && f.endsWith('.kept'));
      try {
        return note ? (JSON.parse(await readFile(join(temp, note), 'utf8')) as { length: number }).length : 0;
      } catch {
        return 0; // caught between its creation and its first write
      }
    };
    // Slow enough that containerd is never far ahead of the note when Wharf dies.
    fwd.throttle = { match: /\/blobs\/sha256:/, rate: 8 * MiB };
    const ref = `127.0.0.1:${port}/proxy/up/erin/big:1`;
    const fetchContent = () => containerd!.ctr(['content', 'fetch', '--plain-http', ref], 120_000);
    let server: WharfProcess | undefined;
    try {
      server = await startWharfProcess(configFile, port);
      const first = fetchContent().then(
        () => 'fetched',
        (err: Error) => err.message,
      );
      for (const deadline = Date.now() + 30_000; (await noted()) < 4 * MiB; await sleep(10)) {
        if (Date.now() > deadline) throw new Error(`no note of 4 MiB came:\n${server.output()}`);
      }
      await server.kill('SIGKILL');
      // Its own retry finds no server: the fetch fails, and containerd keeps the bytes it had.
      expect(await first).not.toBe('fetched');
      const kept = await noted();
      expect(kept % MiB).toBe(0);
      expect(kept).toBeLessThan(SIZE);
      const before = fwd.bytesOut.get(path) ?? 0;

      server = await startWharfProcess(configFile, port);
      await fetchContent();
      const { stdout } = await containerd!.ctr(['content', 'ls', '-q']);
      expect(stdout.split('\n').map((l) => l.trim())).toContain(layer.digest);
      // The upstream: the first GET (cut by the crash), then the rest from the kept bytes, once.
      const gets = fwd.seen.filter((r) => r.method === 'GET' && r.path === path);
      expect(gets.map((r) => r.range)).toEqual([undefined, `bytes=${kept}-${SIZE - 1}`]);
      expect((fwd.bytesOut.get(path) ?? 0) - before).toBe(SIZE - kept);
      // containerd's second GET was for the whole layer, and had all of it (Wharf logs in batches).
      let layerGets: { method?: string; path?: string; status?: number; bytesOut?: number; msg?: string }[] = [];
      for (const deadline = Date.now() + 10_000; layerGets.length === 0 && Date.now() < deadline; await sleep(50)) {
        layerGets = server
          .output()
          .split('\n')
          .filter((line) => line.startsWith('{'))
          .map((line) => JSON.parse(line) as { msg?: string; method?: string; path?: string; status?: number; bytesOut?: number })
          .filter((r) => r.msg === 'request' && r.method === 'GET' && r.path === `/v2/proxy/up/erin/big/blobs/${layer.digest}`);
      }
      expect(layerGets.map((r) => r.status)).toEqual([200]);
      expect(layerGets[0]!.bytesOut).toBeGreaterThan(SIZE);
    } finally {
      fwd.throttle = undefined;
      await server?.kill('SIGKILL');
      await rm(root, { recursive: true, force: true });
    }
  }, 180_000);
});
