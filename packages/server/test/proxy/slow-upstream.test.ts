import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { byteranges } from '../helpers/http.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

const sha256 = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
/** Longer than Wharf's idle_timeout below: the wait is the upstream's, not the client's. */
const SLOW_MS = 1500;

/**
 * An upstream that takes its time: the manifest comes after SLOW_MS, and the blob is sent without a
 * Content-Length (chunked), its second half SLOW_MS after its first.
 */
describe('pull-through from an upstream slower than idle_timeout', () => {
  const blob = randomBytes(64 * 1024);
  const blobDigest = sha256(blob);
  /** Sent with its Content-Length, in pieces spread over SLOW_MS as well. */
  const sized = randomBytes(512 * 1024);
  const sizedDigest = sha256(sized);
  /** The same, for several ranges in one request (a zstd:chunked layer's chunks). */
  const chunked = randomBytes(512 * 1024);
  const chunkedDigest = sha256(chunked);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: blobDigest, size: blob.length },
      layers: [],
    }),
  );
  /** 20 MiB at once, the rest after SLOW_MS; its ranges answered at once. */
  const far = randomBytes(40 * 1024 * 1024);
  const farDigest = sha256(far);
  /** 1 MiB at once, the rest after SLOW_MS; its ranges answered at once. */
  const wide = randomBytes(48 * 1024 * 1024);
  const wideDigest = sha256(wide);
  let upstream: Server;
  let proxy: TestRegistry;

  beforeAll(async () => {
    upstream = createServer((req, res) => {
      if (req.url === '/v2/lib/app/manifests/1') {
        setTimeout(() => {
          res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'docker-content-digest': sha256(manifest), 'content-length': manifest.length });
          res.end(req.method === 'HEAD' ? undefined : manifest);
        }, SLOW_MS);
      } else if ((req.url === `/v2/lib/app/blobs/${farDigest}` || req.url === `/v2/lib/app/blobs/${wideDigest}`) && req.method === 'GET') {
        const bytes = req.url.endsWith(farDigest) ? far : wide;
        const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
        if (range) {
          const part = bytes.subarray(Number(range[1]), Number(range[2]) + 1);
          res.writeHead(206, { 'content-length': part.length, 'content-range': `bytes ${range[1]}-${range[2]}/${bytes.length}` }).end(part);
          return;
        }
        const atOnce = (bytes === far ? 20 : 1) * 1024 * 1024;
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes.length });
        res.write(bytes.subarray(0, atOnce), () => setTimeout(() => res.end(bytes.subarray(atOnce)), SLOW_MS));
      } else if ([blobDigest, sizedDigest, chunkedDigest].some((d) => req.url === `/v2/lib/app/blobs/${d}`) && req.method === 'GET') {
        const bytes = req.url!.endsWith(blobDigest) ? blob : req.url!.endsWith(sizedDigest) ? sized : chunked;
        const spread = bytes !== blob;
        res.writeHead(200, { 'content-type': 'application/octet-stream', ...(spread ? { 'content-length': bytes.length } : {}) });
        // The sized one in five pieces; the other in two, SLOW_MS apart: its GET is streamed, and the
        // wait between them is the upstream's.
        const pieces = spread ? 5 : 2;
        let sent = 0;
        const next = (): void => {
          const size = Math.ceil(bytes.length / pieces);
          res.write(bytes.subarray(sent * size, (sent + 1) * size));
          sent += 1;
          if (sent < pieces) setTimeout(next, spread ? SLOW_MS / pieces : SLOW_MS);
          else res.end();
        };
        next();
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    proxy = await startRegistry({
      settings: {
        idle_timeout: '1s',
        proxy: { retries: 0, first_byte_timeout: '5s', idle_timeout: '5s', upstreams: { slow: { url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` } } },
      },
    });
  });
  afterAll(async () => {
    await proxy?.close();
    upstream?.closeAllConnections();
    await new Promise((resolve) => upstream?.close(resolve));
  });

  test('a manifest the upstream takes longer than idle_timeout to send reaches the client', async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/slow/lib/app/manifests/1`);
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).equals(manifest)).toBe(true);
  });

  test("a range the fill has at once, whose last byte waits for the whole blob's digest longer than idle_timeout, reaches the client whole", async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/slow/lib/app/blobs/${sizedDigest}`, { headers: { range: 'bytes=0-99' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes 0-99/${sized.length}`);
    // Its 99 bytes at once, and its last once the blob is verified, SLOW_MS later: not a connection cut at 1 s.
    expect(Buffer.from(await res.arrayBuffer()).equals(sized.subarray(0, 100))).toBe(true);
  });

  test("several ranges of a download, whose last part waits for the whole blob's digest longer than idle_timeout, reach the client whole", async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/slow/lib/app/blobs/${chunkedDigest}`, { headers: { range: 'bytes=0-9,50-99' } });
    expect(res.status).toBe(206);
    // The span's reader waits for the download: that wait holds the idle timeout off, as for one range.
    const parts = byteranges(res.headers.get('content-type'), Buffer.from(await res.arrayBuffer()));
    expect(parts.map((p) => p.bytes)).toEqual([chunked.subarray(0, 10), chunked.subarray(50, 100)]);
  });

  test('a range far ahead of its fill, asked of the upstream, whose last byte waits for the whole blob longer than idle_timeout, reaches the client whole', async () => {
    const url = `${proxy.url}/v2/proxy/slow/lib/app/blobs/${farDigest}`;
    // A first client starts the fill and reads the 20 MiB that come at once.
    const first = await fetch(url);
    const reader = first.body!.getReader();
    for (let got = 0; got < 20 * 1024 * 1024; ) got += (await reader.read()).value!.length;
    const range = await fetch(url, { headers: { range: `bytes=${38 * 1024 * 1024}-${38 * 1024 * 1024 + 4095}` } });
    expect(range.status).toBe(206);
    expect(Buffer.from(await range.arrayBuffer()).equals(far.subarray(38 * 1024 * 1024, 38 * 1024 * 1024 + 4096))).toBe(true);
    await reader.cancel();
  });

  test('a client that stops reading a range far ahead of its fill is cut at idle_timeout: the wait for the fill holds the timeout off, not the whole send', async () => {
    const path = `/v2/proxy/slow/lib/app/blobs/${wideDigest}`;
    // A first client starts the fill (1 MiB at once, the rest after SLOW_MS).
    const first = await fetch(`${proxy.url}${path}`);
    const reader = first.body!.getReader();
    await reader.read();
    // 24 MiB from 20 MiB on: asked of the upstream, and more than the sockets' buffers hold.
    const start = 20 * 1024 * 1024;
    const length = 24 * 1024 * 1024;
    const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1');
    socket.write(`GET ${path} HTTP/1.1\r\nHost: wharf\r\nRange: bytes=${start}-${start + length - 1}\r\n\r\n`);
    const head = await new Promise<string>((resolve) => socket.once('data', (chunk: Buffer) => resolve(chunk.toString('latin1'))));
    expect(head.startsWith('HTTP/1.1 206')).toBe(true);
    // The client stops reading for three times idle_timeout (and past the fill's end), then reads on.
    socket.pause();
    await new Promise((resolve) => setTimeout(resolve, 3000));
    let received = head.length;
    socket.on('data', (chunk: Buffer) => (received += chunk.length));
    socket.resume();
    await new Promise((resolve) => socket.once('close', resolve));
    // Cut while it did not read: what the buffers held, never the whole range (a held timeout sent it all).
    expect(received).toBeLessThan(length);
    await reader.cancel();
  });

  test('a blob without Content-Length that takes longer than idle_timeout to come reaches the client whole', async () => {
    const res = await fetch(`${proxy.url}/v2/proxy/slow/lib/app/blobs/${blobDigest}`);
    expect(res.status).toBe(200);
    expect(sha256(new Uint8Array(await res.arrayBuffer()))).toBe(blobDigest);
  });
});
