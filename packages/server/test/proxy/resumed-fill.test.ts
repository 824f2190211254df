import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { notedLength } from '../helpers/crash-scene.js';
import { blob, pushBlob } from '../helpers/oci.js';
import { captureLog, type LogCapture } from '../auth/helpers.js';
import { sample, scrape } from '../ops/helpers.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { freePort, startWharfProcess, writeWharfConfig, type WharfProcess } from '../helpers/wharf-process.js';
import { CountingForwarder } from './helpers/counting-forwarder.js';

const MiB = 1024 * 1024;
const SIZE = 48 * MiB;
/** The upstream is cut once this much of the blob went out: past the 16 MiB a range may lead a fill by. */
const CUT_AT = 20 * MiB;

interface Pulled {
  readonly hash: Hash;
  bytes: number;
  status: number;
  contentRange: string | null;
  /** The body ended cleanly (else its connection was cut). */
  whole: boolean;
}

/** Reads `url` (from `pulled.bytes` on, as a client resuming a download does), hashing what comes. */
async function pull(url: string, pulled: Pulled): Promise<Pulled> {
  const res = await fetch(url, pulled.bytes > 0 ? { headers: { range: `bytes=${pulled.bytes}-` } } : {});
  pulled.status = res.status;
  pulled.contentRange = res.headers.get('content-range');
  pulled.whole = false;
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      pulled.hash.update(chunk);
      pulled.bytes += chunk.length;
    }
    pulled.whole = true;
  } catch {
    // cut: the client resumes from pulled.bytes
  }
  return pulled;
}

async function until(check: () => boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/**
 * The audit's case: two clients share a cold fill, the upstream dies mid-blob (for longer than the
 * upstream client's own resumes), comes back, and both clients resume with a range. The new fill goes
 * on from the bytes the cut one left, so the blob crosses the upstream link once.
 */
describe('a fill its upstream cut goes on from the bytes it had', () => {
  let up: TestRegistry;
  let fwd: CountingForwarder;
  let proxy: TestRegistry;
  let digest: string;
  let second: string;
  let log: LogCapture;

  beforeAll(async () => {
    up = await startRegistry();
    const big = blob(randomBytes(SIZE));
    digest = big.digest;
    await pushBlob(up.url, 'alice/big', big);
    const other = blob(randomBytes(SIZE));
    second = other.digest;
    await pushBlob(up.url, 'alice/big', other);
    fwd = await CountingForwarder.start(up.url);
    fwd.throttle = { match: /\/blobs\/sha256:/, rate: 32 * MiB };
    log = captureLog();
    proxy = await startRegistry({ logger: log.logger, settings: { proxy: { retries: 0, upstreams: { up: { url: fwd.url } } } } });
  });
  afterAll(async () => {
    await proxy?.close();
    await fwd?.close();
    await up?.close();
  });

  test('two clients cut mid-blob resume with ranges: one more upstream GET, for the rest only, and both get the right digest', async () => {
    const path = `/v2/alice/big/blobs/${digest}`;
    const url = `${proxy.url}/v2/proxy/up${path.slice(3)}`;
    const clients: Pulled[] = [0, 1].map(() => ({ hash: createHash('sha256'), bytes: 0, status: 0, contentRange: null, whole: false }));
    const first = Promise.all(clients.map((c) => pull(url, c)));
    await until(() => (fwd.bytesOut.get(path) ?? 0) >= CUT_AT, 'the first 20 MiB upstream');
    fwd.setDown(true);
    await first;
    for (const c of clients) {
      expect(c.status).toBe(200);
      expect(c.whole).toBe(false);
      expect(c.bytes).toBeGreaterThan(16 * MiB);
    }
    // The fill failed (its resumes were refused too) and left its bytes behind.
    expect(proxy.fills.running).toBe(0);
    const kept = proxy.fills.remnantOf(digest as `sha256:${string}`);
    expect(kept).toBeGreaterThanOrEqual(Math.min(...clients.map((c) => c.bytes)) - 4 * MiB);
    expect(kept % MiB).toBe(0);
    expect(sample(await scrape(proxy.url), 'wharf_proxy_fill_remnant_bytes')).toBe(kept);
    fwd.setDown(false);

    await Promise.all(clients.map((c) => pull(url, c)));
    for (const c of clients) {
      expect(c.status).toBe(206);
      expect(c.whole).toBe(true);
      expect(c.bytes).toBe(SIZE);
      expect(`sha256:${c.hash.digest('hex')}`).toBe(digest);
    }
    const gets = fwd.seen.filter((r) => r.method === 'GET' && r.path === path);
    expect(gets.map((r) => r.range)).toEqual([undefined, `bytes=${kept}-${SIZE - 1}`]);
    // Once over the upstream link, with what the cut left in flight: not 2.5 times, as before.
    expect(fwd.bytesOut.get(path)).toBeLessThan(SIZE + 4 * MiB);
    expect(proxy.fills.resumed).toBe(1);
    const metrics = await scrape(proxy.url);
    expect(sample(metrics, 'wharf_proxy_fills_resumed_total')).toBe(1);
    expect(sample(metrics, 'wharf_proxy_fill_remnant_bytes')).toBe(0);
    // The log says what was kept, and where the next download went on from.
    const lines = log.text().split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines.find((l) => l.msg === 'upstream blob fill failed')).toMatchObject({ digest, kept });
    expect(lines.find((l) => l.msg === 'blob fill goes on from the bytes of a download cut short')).toMatchObject({ digest, from: kept });

    // Cached whole, and the temp folder holds nothing of it.
    const cached = await fetch(url);
    expect(`sha256:${createHash('sha256').update(new Uint8Array(await cached.arrayBuffer())).digest('hex')}`).toBe(digest);
    expect(gets.length).toBe(fwd.seen.filter((r) => r.method === 'GET' && r.path === path).length);
    // The fill may still be reading its file back into the page cache, and then moves it in.
    await until(() => proxy.fills.running === 0, 'the fill to end');
    expect((await readdir(join(proxy.root, '_tmp'))).filter((f) => f.startsWith('fill-'))).toEqual([]);
  });

  test('a start that fails (its port taken) after taking back kept bytes notes them again for the next start', async () => {
    const root = await mkdtemp(join(tmpdir(), 'wharf-resume-failed-start-'));
    const temp = join(root, '_tmp');
    await mkdir(temp, { recursive: true });
    await writeFile(join(temp, 'fill-kept'), Buffer.alloc(2 * MiB));
    await writeFile(join(temp, 'fill-kept.kept'), JSON.stringify({ digest: second, size: SIZE, length: 2 * MiB, expiresAt: Date.now() + 60_000, prefix: blob(Buffer.alloc(2 * MiB)).digest }));
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as { port: number }).port;
    let started: TestRegistry | undefined;
    try {
      await expect(startRegistry({ root, settings: { listen: `127.0.0.1:${port}` } })).rejects.toThrow(/EADDRINUSE/);
      // Taken back (renamed as that start's), and noted again when it failed.
      const [file, note] = (await readdir(temp)).filter((f) => f.startsWith('fill-')).sort();
      expect(file).not.toBe('fill-kept');
      expect(note).toBe(`${file}.kept`);
      started = await startRegistry({ root });
      expect(started.fills.remnantOf(second as `sha256:${string}`)).toBe(2 * MiB);
    } finally {
      await started?.close();
      await new Promise((resolve) => taken.close(resolve));
      await rm(root, { recursive: true, force: true });
    }
  });

  test('a fill abandoned at the shutdown deadline goes on after the restart from the bytes it had', async () => {
    const path = `/v2/alice/big/blobs/${second}`;
    const root = await mkdtemp(join(tmpdir(), 'wharf-resume-restart-'));
    const settings = { proxy: { retries: 0, upstreams: { up: { url: fwd.url } } } };
    const client: Pulled = { hash: createHash('sha256'), bytes: 0, status: 0, contentRange: null, whole: false };
    let before: TestRegistry | undefined;
    let after: TestRegistry | undefined;
    try {
      before = await startRegistry({ root, settings });
      const first = pull(`${before.url}/v2/proxy/up${path.slice(3)}`, client);
      await until(() => (fwd.bytesOut.get(path) ?? 0) >= CUT_AT, 'the first 20 MiB upstream');
      await before.close({ timeoutMs: 200 });
      await first;
      expect(client.whole).toBe(false);
      const temp = (await readdir(join(root, '_tmp'))).filter((f) => f.startsWith('fill-')).sort();
      expect(temp).toEqual([temp[0], `${temp[0]}.kept`]);

      after = await startRegistry({ root, settings });
      const kept = after.fills.remnantOf(second as `sha256:${string}`);
      expect(kept).toBeGreaterThanOrEqual(16 * MiB);
      await pull(`${after.url}/v2/proxy/up${path.slice(3)}`, client);
      expect(client.status).toBe(206);
      expect(client.whole).toBe(true);
      expect(client.bytes).toBe(SIZE);
      expect(`sha256:${client.hash.digest('hex')}`).toBe(second);
      const gets = fwd.seen.filter((r) => r.method === 'GET' && r.path === path);
      expect(gets.map((r) => r.range)).toEqual([undefined, `bytes=${kept}-${SIZE - 1}`]);
      expect(fwd.bytesOut.get(path)).toBeLessThan(SIZE + 4 * MiB);
      expect(after.fills.resumed).toBe(1);
    } finally {
      await before?.close();
      await after?.close();
      await rm(root, { recursive: true, force: true });
    }
  });
  // As /v2/proxy/up/..., and as Docker's registry-mirrors pull it (a name not in the registry, served
  // from default_upstream).
  test.each([
    ['under /v2/proxy/up', false],
    ['through default_upstream (registry-mirrors)', true],
  ])('a download cut by a crash of the server (kill -9) goes on after the restart from the bytes its note had, %s', async (_name, mirror) => {
    const third = blob(randomBytes(SIZE));
    await pushBlob(up.url, 'alice/big', third);
    const path = `/v2/alice/big/blobs/${third.digest}`;
    const asked = mirror ? path : `/v2/proxy/up${path.slice(3)}`;
    const root = await mkdtemp(join(tmpdir(), 'wharf-resume-crash-'));
    const temp = join(root, 'storage', '_tmp');
    const port = await freePort();
    const proxy = ['retries = 0', ...(mirror ? ['default_upstream = "up"'] : []), '[proxy.upstreams.up]', `url = "${fwd.url}"`];
    const config = await writeWharfConfig(root, port, { logLevel: 'info', proxy });
    const gets0 = fwd.seen.filter((r) => r.method === 'GET' && r.path === path).length;
    const client: Pulled = { hash: createHash('sha256'), bytes: 0, status: 0, contentRange: null, whole: false };
    const noted = () => notedLength(temp);
    const throttle = fwd.throttle;
    // Slow enough that the client is never 16 MiB ahead of the note (a range that far ahead goes upstream).
    fwd.throttle = { match: /\/blobs\/sha256:/, rate: 8 * MiB };
    let server: WharfProcess | undefined;
    try {
      server = await startWharfProcess(config, port);
      const first = pull(`${server.url}${asked}`, client);
      // The first note comes a second into the download: then the server dies.
      for (const deadline = Date.now() + 20_000; (await noted()) < 4 * MiB; await sleep(10)) {
        if (Date.now() > deadline) throw new Error(`no note of 4 MiB came:\n${server.output()}`);
      }
      await server.kill('SIGKILL');
      await first;
      expect(client.whole).toBe(false);
      // The rest at the suite's pace: only the first half had to stay behind the notes.
      fwd.throttle = throttle;
      await sleep(200);
      const kept = await noted();
      expect(kept % MiB).toBe(0);
      expect(kept).toBeLessThan(SIZE);
      const before = fwd.bytesOut.get(path) ?? 0;

      server = await startWharfProcess(config, port);
      await pull(`${server.url}${asked}`, client);
      expect(client.status).toBe(206);
      expect(client.whole).toBe(true);
      expect(client.bytes).toBe(SIZE);
      expect(`sha256:${client.hash.digest('hex')}`).toBe(third.digest);
      // The upstream was asked for the rest only, and sent just that.
      const gets = fwd.seen.filter((r) => r.method === 'GET' && r.path === path).slice(gets0);
      expect(gets.map((r) => r.range)).toEqual([undefined, `bytes=${kept}-${SIZE - 1}`]);
      expect((fwd.bytesOut.get(path) ?? 0) - before).toBe(SIZE - kept);
      expect(server.output()).toMatch(/blob downloads cut short before the restart go on from their bytes/);
      // Once the blob is in place (the client had its last byte as soon as it was verified).
      let left: string[] = [];
      for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(20)) {
        left = (await readdir(temp)).filter((f) => f.startsWith('fill-'));
        if (left.length === 0) break;
      }
      expect(left).toEqual([]);
    } finally {
      fwd.throttle = throttle;
      await server?.kill('SIGKILL');
      await rm(root, { recursive: true, force: true });
    }
  });
});
