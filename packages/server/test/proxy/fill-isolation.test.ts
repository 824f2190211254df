import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { within } from '../helpers/http.js';
import { blob, pushBlob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/**
 * Two upstreams holding the same layer, one of them stalling. The download through the stalling one
 * is in flight when a client asks the healthy one: it is not held by that download, nor failed by it.
 */
describe("a download through one upstream does not hold another upstream's clients", () => {
  const layer = blob(randomBytes(300 * 1024));
  let good: TestRegistry;
  let stalling: Server;
  /** The stalling upstream's GETs of the layer, answered when the test says. */
  const held: ServerResponse[] = [];
  let proxy: TestRegistry;

  beforeAll(async () => {
    good = await startRegistry();
    await pushBlob(good.url, 'lib/app', layer);
    stalling = createServer((req, res) => {
      if (req.method === 'GET' && req.url === `/v2/lib/app/blobs/${layer.digest}`) held.push(res);
      else res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => stalling.listen(0, '127.0.0.1', resolve));
    proxy = await startRegistry({
      settings: {
        proxy: {
          retries: 0,
          // Longer than the test waits below: the stalled download never fails to start on its own.
          first_byte_timeout: '2m',
          upstreams: {
            stalling: { url: `http://127.0.0.1:${(stalling.address() as AddressInfo).port}` },
            good: { url: good.url },
          },
        },
      },
    });
  });
  afterAll(async () => {
    await proxy?.close();
    stalling?.closeAllConnections();
    await new Promise((resolve) => stalling?.close(resolve));
    await good?.close();
  });

  test('the healthy upstream serves its client whole while the other stalls, and its failure then is its own client\'s alone', async () => {
    const throughStalling = fetch(`${proxy.url}/v2/proxy/stalling/lib/app/blobs/${layer.digest}`).then(
      async (res) => ({ status: res.status, body: await res.arrayBuffer().then(() => 'whole', (err: Error) => `cut: ${err.message}`) }),
      (err: Error) => ({ status: 0, body: err.message }),
    );
    while (held.length === 0) await sleep(10);

    // Its HEAD (what a client that has the layer asks) is answered too.
    const head = await within(fetch(`${proxy.url}/v2/proxy/good/lib/app/blobs/${layer.digest}`, { method: 'HEAD' }), 20_000, undefined);
    expect([head?.status, head?.headers.get('content-length')]).toEqual([200, String(layer.bytes.length)]);
    // Joined to the stalled download, it would wait as long as that stalls: here, until released below.
    const pull = fetch(`${proxy.url}/v2/proxy/good/lib/app/blobs/${layer.digest}`).then(async (res) => ({ status: res.status, bytes: Buffer.from(await res.arrayBuffer()) }));
    const answer = await within(pull, 20_000, 'still waiting on the other upstream' as const);
    expect(answer).not.toBe('still waiting on the other upstream');
    const { status, bytes } = answer as Awaited<typeof pull>;
    expect(status).toBe(200);
    expect(bytes.equals(layer.bytes)).toBe(true);

    // The stalled download then sends wrong bytes: its own client is cut, nobody else.
    const wrong = Buffer.from(layer.bytes);
    wrong[7] ^= 0xff;
    held[0]!.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': wrong.length }).end(wrong);
    const stalled = await throughStalling;
    expect(stalled.status === 200 && stalled.body === 'whole').toBe(false);

    // The healthy upstream's next client: the blob, verified, whoever caches it.
    const again = await fetch(`${proxy.url}/v2/proxy/good/lib/app/blobs/${layer.digest}`);
    expect(again.status).toBe(200);
    expect(Buffer.from(await again.arrayBuffer()).equals(layer.bytes)).toBe(true);
  });
});
