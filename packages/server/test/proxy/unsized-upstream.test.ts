import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

const sha256 = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/**
 * An upstream that sends its blobs without a Content-Length (chunked), as a registry behind some
 * reverse proxies does: Wharf cannot tell a client the size until the whole blob is in.
 */
describe('pull-through from an upstream that sends blobs without a size', () => {
  /** Its first MiB at once, the rest once the test lets it go (or after 5 s). */
  const streamed = randomBytes(3 * 1024 * 1024);
  let releaseStreamed!: () => void;
  const streamedReleased = new Promise<void>((resolve) => (releaseStreamed = resolve));
  /** Held blobs the test never let go: their 5 s passed first. */
  const timedOut = new Set<Buffer>();
  /** As `streamed`, but its HEAD says the size (a registry that sends only its GETs chunked). */
  const headSized = randomBytes(3 * 1024 * 1024);
  let releaseHeadSized!: () => void;
  const headSizedReleased = new Promise<void>((resolve) => (releaseHeadSized = resolve));
  /** Bytes that are not the blob its digest names. */
  const wrong = randomBytes(1024 * 1024);
  const wrongDigest = sha256(randomBytes(16));
  const ranged = randomBytes(2 * 1024 * 1024);
  const old = randomBytes(2 * 1024 * 1024);
  /** Its first answer cut after 1 MiB; a range from there is answered (206). */
  const cut = randomBytes(3 * 1024 * 1024);
  let cutOnce = true;
  const blobs = new Map([
    [sha256(headSized), headSized],
    [sha256(cut), cut],
    [sha256(streamed), streamed],
    [wrongDigest, wrong],
    [sha256(ranged), ranged],
    [sha256(old), old],
  ]);
  /** "<method> <digest>" of every blob request the upstream got. */
  const asked: string[] = [];
  let upstream: Server;
  let proxy: TestRegistry;
  const url = (digest: string) => `${proxy.url}/v2/proxy/plain/lib/app/blobs/${digest}`;

  beforeAll(async () => {
    upstream = createServer((req, res) => {
      const digest = /^\/v2\/lib\/app\/blobs\/(.+)$/.exec(req.url ?? '')?.[1];
      const bytes = digest && blobs.get(digest);
      if (!bytes) {
        res.writeHead(404).end();
        return;
      }
      asked.push(`${req.method} ${digest}${req.headers.range ? ` ${req.headers.range}` : ''}`);
      const from = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
      if (from && bytes === cut) {
        const start = Number(from[1]);
        res.writeHead(206, { 'content-type': 'application/octet-stream', 'content-range': `bytes ${start}-${cut.length - 1}/${cut.length}`, 'transfer-encoding': 'chunked' });
        res.end(cut.subarray(start));
        return;
      }
      if (req.method === 'HEAD' && bytes === headSized) {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': headSized.length }).end();
        return;
      }
      // Chunked: no Content-Length, to a HEAD as well.
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' });
      if (req.method === 'HEAD') {
        res.end();
        return;
      }
      if (bytes === cut && cutOnce) {
        cutOnce = false;
        res.write(cut.subarray(0, 1024 * 1024), () => setTimeout(() => res.socket?.destroy(), 20));
        return;
      }
      const half = bytes.length / 2;
      const held = bytes === streamed || bytes === headSized;
      res.write(bytes.subarray(0, held ? 1024 * 1024 : half));
      const rest = (): void => void res.end(bytes.subarray(held ? 1024 * 1024 : half));
      if (!held) return void setTimeout(rest, 50);
      const timeout = new Promise<void>((resolve) => setTimeout(() => resolve(void timedOut.add(bytes)), 5000).unref());
      void Promise.race([bytes === streamed ? streamedReleased : headSizedReleased, timeout]).then(rest);
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    proxy = await startRegistry({
      settings: { proxy: { retries: 0, upstreams: { plain: { url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` } } } },
    });
  });
  afterAll(async () => {
    await proxy?.close();
    upstream?.closeAllConnections();
    await new Promise((resolve) => upstream?.close(resolve));
  });

  test("a GET streams the blob as it comes, chunked, and a HEAD meanwhile, whose upstream HEAD has no size either, waits for the download's", async () => {
    const digest = sha256(streamed);
    const res = await fetch(url(digest));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBeNull();
    expect(res.headers.get('transfer-encoding')).toBe('chunked');
    expect(res.headers.get('docker-content-digest')).toBe(digest);
    const reader = res.body!.getReader();
    const chunks: Uint8Array[] = [(await reader.read()).value!];
    // The first bytes came while the upstream still held the rest back.
    expect(timedOut.has(streamed)).toBe(false);
    expect(chunks[0]!.length).toBeGreaterThan(0);
    const head = fetch(url(digest), { method: 'HEAD' });
    releaseStreamed();
    for (let r = await reader.read(); !r.done; r = await reader.read()) chunks.push(r.value);
    expect(sha256(Buffer.concat(chunks))).toBe(digest);
    const headRes = await head;
    expect(headRes.status).toBe(200);
    expect(headRes.headers.get('content-length')).toBe(String(streamed.length));
    // One download; the upstream's HEAD said no size.
    expect(asked.filter((a) => a.endsWith(digest))).toEqual([`GET ${digest}`, `HEAD ${digest}`]);
    // Cached: now with its length.
    const again = await fetch(url(digest));
    expect(again.headers.get('content-length')).toBe(String(streamed.length));
    expect(sha256(new Uint8Array(await again.arrayBuffer()))).toBe(digest);
  });

  test("a HEAD while such a download runs takes the size the upstream's HEAD says, without waiting for the download", async () => {
    const digest = sha256(headSized);
    const res = await fetch(url(digest));
    expect(res.headers.get('content-length')).toBeNull();
    const reader = res.body!.getReader();
    await reader.read();
    const head = await fetch(url(digest), { method: 'HEAD' });
    expect(head.headers.get('content-length')).toBe(String(headSized.length));
    // Answered while the upstream still held the download's rest back.
    expect(timedOut.has(headSized)).toBe(false);
    releaseHeadSized();
    await reader.cancel();
  });

  test('wrong bytes: the chunked body is cut, never ended, and nothing is cached', async () => {
    for (let i = 0; i < 2; i++) {
      const res = await fetch(url(wrongDigest));
      expect(res.status).toBe(200);
      await expect(res.arrayBuffer()).rejects.toThrow();
    }
    expect(asked.filter((a) => a.endsWith(wrongDigest))).toEqual([`GET ${wrongDigest}`, `GET ${wrongDigest}`]);
  });

  test('a download cut mid-way goes on with a range for the rest: its client gets the blob whole', async () => {
    const digest = sha256(cut);
    const res = await fetch(url(digest));
    expect(res.status).toBe(200);
    expect(sha256(new Uint8Array(await res.arrayBuffer()))).toBe(digest);
    // Asked again from where the first answer stopped: all of its first MiB, or what of it had come
    // when the upstream dropped the connection (a busy machine reads it later than the drop).
    const asks = asked.filter((a) => a.includes(digest));
    expect(asks).toHaveLength(2);
    expect(asks[0]).toBe(`GET ${digest}`);
    const from = Number(new RegExp(`^GET ${digest} bytes=(\\d+)-$`).exec(asks[1]!)?.[1]);
    expect(from).toBeGreaterThan(0);
    expect(from).toBeLessThanOrEqual(1024 * 1024);
  });

  test('a range waits for the size and is answered with it', async () => {
    const digest = sha256(ranged);
    const res = await fetch(url(digest), { headers: { range: 'bytes=10-19' } });
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe(`bytes 10-19/${ranged.length}`);
    expect(Buffer.from(await res.arrayBuffer()).equals(ranged.subarray(10, 20))).toBe(true);
  });

  test('an HTTP/1.0 client, which could not tell a cut body from a whole one without a length, waits for the size', async () => {
    const digest = sha256(old);
    const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1');
    socket.write(`GET /v2/proxy/plain/lib/app/blobs/${digest} HTTP/1.0\r\nHost: wharf\r\n\r\n`);
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    await new Promise((resolve) => socket.once('close', resolve));
    const answer = Buffer.concat(received);
    const split = answer.indexOf('\r\n\r\n');
    const head = answer.subarray(0, split).toString('latin1').toLowerCase();
    expect(head.startsWith('http/1.1 200')).toBe(true);
    expect(head).toContain(`content-length: ${old.length}`);
    expect(sha256(answer.subarray(split + 4))).toBe(digest);
  });
});
