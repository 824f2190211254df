import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { containersConfig, requireTool, skopeo, type ContainersConfig } from '../helpers/clients.js';
import { crashScene, expectRestOnly, requestsOf, untilNoted } from '../helpers/crash-scene.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { startWharfProcess, type WharfProcess } from '../helpers/wharf-process.js';
import { CountingForwarder } from '../proxy/helpers/counting-forwarder.js';

const MiB = 1024 * 1024;
const SIZE = 48 * MiB;

async function fileDigest(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

/**
 * skopeo as the client of a proxied download that a crash of Wharf cuts. skopeo 1.9 neither resumes a
 * blob with a Range nor counts a cut body ("unexpected EOF") among what `--retry-times` retries: the
 * copy fails, and the next one asks for the whole layer (a later skopeo may resume with a Range). The restarted Wharf serves that GET from the
 * bytes its note kept, and asks the upstream once more, for the rest only.
 */
describe('skopeo copying through a Wharf proxy killed mid-layer', () => {
  let up: TestRegistry;
  let fwd: CountingForwarder;
  let dir: string;
  let config: ContainersConfig;

  beforeAll(async () => {
    await requireTool('skopeo', 'skopeo');
    up = await startRegistry();
    fwd = await CountingForwarder.start(up.url);
    dir = await mkdtemp(join(tmpdir(), 'wharf-skopeo-crash-'));
    config = await containersConfig(join(dir, 'containers'));
  }, 60_000);

  afterAll(async () => {
    await fwd?.close();
    await up?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  test('the next copy gets the right layer, and the upstream sends each byte once', async () => {
    const scene = await crashScene(up.url, fwd.url, 'erin/skopeo', SIZE);
    // Slow enough that skopeo is never far ahead of the note when Wharf dies.
    fwd.throttle = { match: /\/blobs\/sha256:/, rate: 8 * MiB };
    const out = join(dir, 'out');
    let server: WharfProcess | undefined;
    try {
      server = await startWharfProcess(scene.configFile, scene.port);
      const copy = () =>
        skopeo(config, ['copy', '--retry-times', '2', '--src-tls-verify=false', `docker://127.0.0.1:${scene.port}/proxy/up/erin/skopeo:1`, `dir:${out}`], 60_000);
      const first = copy().then(
        () => 'copied',
        (err: Error) => err.message,
      );
      await untilNoted(scene.noted, server);
      await server.kill('SIGKILL');
      const kept = await scene.noted();
      expect(kept % MiB).toBe(0);
      expect(kept).toBeLessThan(SIZE);
      const before = fwd.bytesOut.get(scene.path) ?? 0;
      server = await startWharfProcess(scene.configFile, scene.port);
      // skopeo 1.9 (Debian 12's) has failed by now. A later one (containers/image 5.25 and up) may
      // resume the layer with a Range instead, and then the first copy is the one that finishes.
      const resumed = (await first) === 'copied';
      if (!resumed) {
        expect(await first).toMatch(/unexpected EOF/);
        await copy();
      }

      const layerFile = join(out, scene.layer.digest.slice('sha256:'.length));
      expect(await fileDigest(layerFile)).toBe(scene.layer.digest);
      expectRestOnly(fwd, scene.path, SIZE, kept, before);
      // The restarted Wharf was asked once: by the second copy for the whole layer, which it got,
      // or by a resuming skopeo for the rest.
      const layerGets = await requestsOf(server, `/v2/proxy/up/erin/skopeo/blobs/${scene.layer.digest}`);
      expect(layerGets.map((r) => r.status)).toEqual([resumed ? 206 : 200]);
      if (!resumed) expect(layerGets[0]!.bytesOut).toBeGreaterThan(SIZE); // the body and the headers
    } finally {
      fwd.throttle = undefined;
      await server?.kill('SIGKILL');
      await rm(scene.root, { recursive: true, force: true });
    }
  }, 180_000);
});
