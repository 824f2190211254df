import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { blob, pushBlob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { CountingForwarder } from './helpers/counting-forwarder.js';

const SIZE = 64 * 1024 * 1024;
const CLIENTS = 16;
/** The forwarder lets the upstream body through at this rate, so the fill takes about 2 s. */
const RATE = 32 * 1024 * 1024;

interface ClientResult {
  status: number;
  digest: string;
  bytes: number;
  firstChunkAt: number;
  endAt: number;
}

async function client(url: string): Promise<ClientResult> {
  const res = await fetch(url);
  const hash = createHash('sha256');
  let firstChunkAt = 0;
  let bytes = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    if (!firstChunkAt) firstChunkAt = Date.now();
    bytes += chunk.length;
    hash.update(chunk);
  }
  return { status: res.status, digest: `sha256:${hash.digest('hex')}`, bytes, firstChunkAt, endAt: Date.now() };
}

/** Resolves with the time the fill of `digest` has verified every byte (the fill polled for every 2 ms). */
async function verification(fills: TestRegistry['fills'], digest: string, deadline: number): Promise<number> {
  while (Date.now() < deadline) {
    const fill = await fills.current(digest as `sha256:${string}`);
    if (fill) {
      if (fill.verified) return Date.now();
      await new Promise<void>((resolve) => {
        const check = () => {
          if (fill.verified || fill.state !== 'running') {
            fill.events.off('progress', check);
            resolve();
          }
        };
        fill.events.on('progress', check);
      });
      if (!fill.verified) throw new Error('the fill failed');
      return Date.now();
    }
    await sleep(2);
  }
  throw new Error(`no fill of ${digest} was verified`);
}

/** Resolves with the time a file appears (polled every 5 ms). */
async function appearance(path: string, deadline: number): Promise<number> {
  while (Date.now() < deadline) {
    if (await stat(path).then(() => true, () => false)) return Date.now();
    await sleep(5);
  }
  throw new Error(`${path} did not appear`);
}

describe('blob fills through the server: one upstream GET per blob, clients stream as it fills', () => {
  let up: TestRegistry;
  let fwd: CountingForwarder;
  let proxy: TestRegistry;
  let digest: string;
  let small: ReturnType<typeof blob>;
  let other: ReturnType<typeof blob>;

  beforeAll(async () => {
    up = await startRegistry();
    const big = blob(randomBytes(SIZE));
    digest = big.digest;
    await pushBlob(up.url, 'alice/big', big);
    small = blob(randomBytes(16 * 1024 * 1024));
    await pushBlob(up.url, 'alice/big', small);
    other = blob(randomBytes(16 * 1024 * 1024));
    await pushBlob(up.url, 'alice/big', other);
    fwd = await CountingForwarder.start(up.url);
    fwd.throttle = { match: /\/blobs\/sha256:/, rate: RATE };
    proxy = await startRegistry({ settings: { proxy: { retries: 0, upstreams: { up: { url: fwd.url } } } } });
  });
  afterAll(async () => {
    await proxy?.close();
    await fwd?.close();
    await up?.close();
  });

  test('16 concurrent cold pulls of one 64 MiB blob: one upstream GET; every client gets the right sha256 and its first bytes before the fill ends', async () => {
    const url = `${proxy.url}/v2/proxy/up/alice/big/blobs/${digest}`;
    const stored = join(proxy.root, 'proxy', 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));
    const started = Date.now();
    const landed = appearance(stored, started + 30_000);
    const verified = verification(proxy.fills, digest, started + 30_000);
    const results = await Promise.all(Array.from({ length: CLIENTS }, () => client(url)));
    const fileAt = await landed;
    const verifiedAt = await verified;

    expect(fwd.count('GET', `/v2/alice/big/blobs/${digest}`)).toBe(1);
    for (const r of results) {
      expect(r.status).toBe(200);
      expect(r.bytes).toBe(SIZE);
      expect(r.digest).toBe(digest);
    }
    // The throttle made the fill slow...
    expect(fileAt - started).toBeGreaterThan(1_200);
    // ...and every client was streaming long before it ended: nobody waited for the whole blob.
    const lastFirstChunk = Math.max(...results.map((r) => r.firstChunkAt));
    expect(lastFirstChunk).toBeLessThan(fileAt - 1_000);
    // No client finished with bytes the proxy had not verified (clients need not wait for the fsync).
    expect(Math.min(...results.map((r) => r.endAt))).toBeGreaterThanOrEqual(verifiedAt);
    expect(proxy.fills.running).toBe(0);
  });

  test('a later client is served from the proxy storage with no upstream request', async () => {
    const before = fwd.seen.length;
    const r = await client(`${proxy.url}/v2/proxy/up/alice/big/blobs/${digest}`);
    expect(r.digest).toBe(digest);
    expect(fwd.seen.length).toBe(before);
  });

  test('a client that disconnects midway does not stop the fill: the blob lands, and the next client needs no upstream request', async () => {
    const url = `${proxy.url}/v2/proxy/up/alice/big/blobs/${small.digest}`;
    const stored = join(proxy.root, 'proxy', 'blobs', 'sha256', small.digest.slice(7, 9), small.digest.slice(7));
    const abort = new AbortController();
    const res = await fetch(url, { signal: abort.signal });
    const reader = res.body!.getReader();
    await reader.read();
    abort.abort();
    await reader.read().catch(() => undefined);
    await appearance(stored, Date.now() + 10_000);
    const r = await client(url);
    expect(r.digest).toBe(small.digest);
    expect(fwd.count('GET', `/v2/alice/big/blobs/${small.digest}`)).toBe(1);
  });

  test('a range request on a cold blob gets exactly its bytes (206), from the single fill', async () => {
    const url = `${proxy.url}/v2/proxy/up/alice/big/blobs/${other.digest}`;
    const [whole, part] = await Promise.all([client(url), fetch(url, { headers: { range: 'bytes=1000-1999' } })]);
    expect(whole.digest).toBe(other.digest);
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 1000-1999/${other.bytes.length}`);
    expect(Buffer.from(await part.arrayBuffer()).equals(other.bytes.subarray(1000, 2000))).toBe(true);
    expect(fwd.count('GET', `/v2/alice/big/blobs/${other.digest}`)).toBe(1);
  });

  test('a HEAD of a cold blob asks the upstream with a HEAD and downloads nothing; a missing one is 404', async () => {
    // The tests before end with their clients' last byte; their fills may still be storing the copy.
    await proxy.fills.settled();
    const cold = blob(randomBytes(4 * 1024 * 1024));
    await pushBlob(up.url, 'alice/big', cold);
    const url = `${proxy.url}/v2/proxy/up/alice/big/blobs/${cold.digest}`;
    const head = await fetch(url, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(cold.bytes.length));
    expect(head.headers.get('docker-content-digest')).toBe(cold.digest);
    expect(fwd.count('HEAD', `/v2/alice/big/blobs/${cold.digest}`)).toBe(1);
    expect(fwd.count('GET', `/v2/alice/big/blobs/${cold.digest}`)).toBe(0);
    expect(proxy.fills.running).toBe(0);
    const stored = join(proxy.root, 'proxy', 'blobs', 'sha256', cold.digest.slice(7, 9), cold.digest.slice(7));
    await expect(stat(stored)).rejects.toMatchObject({ code: 'ENOENT' });

    const missing = `sha256:${'1'.repeat(64)}`;
    const absent = await fetch(`${proxy.url}/v2/proxy/up/alice/big/blobs/${missing}`, { method: 'HEAD' });
    expect(absent.status).toBe(404);

    // The GET that follows is the one that fills, once.
    expect((await client(url)).digest).toBe(cold.digest);
    expect(fwd.count('GET', `/v2/alice/big/blobs/${cold.digest}`)).toBe(1);
  });

  test('a range far beyond a running fill is asked of the upstream: its head at once, its last byte once the fill verified the blob', async () => {
    const late = blob(randomBytes(48 * 1024 * 1024));
    await pushBlob(up.url, 'alice/big', late);
    const url = `${proxy.url}/v2/proxy/up/alice/big/blobs/${late.digest}`;
    const path = `/v2/alice/big/blobs/${late.digest}`;
    const whole = client(url);
    while (fwd.count('GET', path) === 0) await sleep(5);
    const size = late.bytes.length;
    const part = await fetch(url, { headers: { range: `bytes=${size - 1000}-${size - 1}` } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes ${size - 1000}-${size - 1}/${size}`);
    // A second upstream GET (the range), answered while the throttled fill had not got there yet...
    expect(fwd.count('GET', path)).toBe(2);
    expect((await proxy.fills.current(late.digest as `sha256:${string}`))?.verified).toBe(false);
    // ...and whole only once the fill verified the blob its bytes were checked against.
    expect(Buffer.from(await part.arrayBuffer()).equals(late.bytes.subarray(size - 1000))).toBe(true);
    expect((await proxy.fills.current(late.digest as `sha256:${string}`))?.verified ?? true).toBe(true);
    expect((await whole).digest).toBe(late.digest);
  });
});
