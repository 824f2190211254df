import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { rm } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { requireTool, shortTempDir, startContainerd, type Containerd } from '../helpers/clients.js';
import { crashScene, expectRestOnly, requestsOf, untilNoted } from '../helpers/crash-scene.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { startWharfProcess, type WharfProcess } from '../helpers/wharf-process.js';
import { CountingForwarder } from '../proxy/helpers/counting-forwarder.js';

const MiB = 1024 * 1024;
const SIZE = 48 * MiB;

/**
 * A TCP relay in front of Wharf's port that, as a load balancer retrying its backend does, holds a
 * connection until Wharf takes it (up to 20 s), and sends a request again on a new connection when
 * the one it went on closed before any answer (a dying server's port may still take a connection,
 * then reset it). Once Wharf has answered, its side going away cuts the client.
 */
async function startPatientRelay(port: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    sockets.add(client);
    const unanswered: Buffer[] = [];
    let answered = false;
    let backend: Socket | undefined;
    const deadline = Date.now() + 20_000;
    client.on('data', (data: Buffer) => {
      if (!answered) unanswered.push(data);
      backend?.write(data);
    });
    client.on('error', () => undefined);
    client.once('close', () => {
      sockets.delete(client);
      backend?.destroy();
    });
    const attempt = (): void => {
      const socket = connect(port, '127.0.0.1');
      sockets.add(socket);
      socket.once('connect', () => {
        backend = socket;
        for (const data of unanswered) socket.write(data);
      });
      socket.on('data', (data: Buffer) => {
        answered = true;
        unanswered.length = 0;
        client.write(data);
      });
      socket.on('error', () => undefined);
      socket.once('close', () => {
        sockets.delete(socket);
        if (backend === socket) backend = undefined;
        if (!answered && !client.destroyed && Date.now() < deadline) setTimeout(attempt, 50);
        else client.destroy();
      });
    };
    attempt();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * containerd as the client of a proxied download that a crash of Wharf cuts. On a cut body containerd
 * asks at once for the rest with a Range. With no server there, `ctr content fetch` fails, and ctr 1.6
 * mostly keeps nothing of it for the next command, which asks for the whole layer (1 run in 25 kept
 * its ingest and asked for the rest). Behind something that holds the connection until Wharf is
 * back, the same fetch goes on with its Range. Either way the restarted Wharf serves from the bytes
 * its note kept, and asks the upstream once more, for the rest.
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

  const scene = (repo: string) => crashScene(up.url, fwd.url, repo, SIZE);

  test('the next fetch gets the layer, and the upstream sends only what the note did not keep', async () => {
    const { layer, path, root, port, configFile, noted } = await scene('erin/big');
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
      await untilNoted(noted, server);
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
      expectRestOnly(fwd, path, SIZE, kept, before);
      // One more GET of the layer: for all of it, or (when containerd kept its ingest) for the rest.
      const layerGets = await requestsOf(server, `/v2/proxy/up/erin/big/blobs/${layer.digest}`);
      expect(layerGets).toHaveLength(1);
      if (layerGets[0]!.status === 200) expect(layerGets[0]!.bytesOut).toBeGreaterThan(SIZE);
      else expect(layerGets[0]!.status).toBe(206);
    } finally {
      fwd.throttle = undefined;
      await server?.kill('SIGKILL');
      await rm(root, { recursive: true, force: true });
    }
  }, 180_000);

  test('behind a relay that holds connections while Wharf restarts, one fetch resumes with a Range', async () => {
    const { layer, path, root, port, configFile, noted } = await scene('erin/relayed');
    fwd.throttle = { match: /\/blobs\/sha256:/, rate: 8 * MiB };
    const relay = await startPatientRelay(port);
    let server: WharfProcess | undefined;
    try {
      server = await startWharfProcess(configFile, port);
      const fetched = containerd!.ctr(['content', 'fetch', '--plain-http', `127.0.0.1:${relay.port}/proxy/up/erin/relayed:1`], 120_000);
      await untilNoted(noted, server);
      await server.kill('SIGKILL');
      const kept = await noted();
      expect(kept % MiB).toBe(0);
      const before = fwd.bytesOut.get(path) ?? 0;
      server = await startWharfProcess(configFile, port);
      await fetched;
      const { stdout } = await containerd!.ctr(['content', 'ls', '-q']);
      expect(stdout.split('\n').map((l) => l.trim())).toContain(layer.digest);
      expectRestOnly(fwd, path, SIZE, kept, before);
      // containerd asked the restarted Wharf for the rest of what it had, and got it as a 206.
      const layerGets = await requestsOf(server, `/v2/proxy/up/erin/relayed/blobs/${layer.digest}`);
      expect(layerGets.map((r) => r.status)).toEqual([206]);
      expect(layerGets[0]!.bytesOut).toBeLessThan(SIZE);
    } finally {
      fwd.throttle = undefined;
      await server?.kill('SIGKILL');
      await relay.close();
      await rm(root, { recursive: true, force: true });
    }
  }, 180_000);
});
