import { afterAll, beforeAll, beforeEach, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { get } from 'node:http';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FakeUpstream } from '../../../proxy/test/helpers/fake-upstream.js';
import { captureLog } from '../auth/helpers.js';
import { SmallDisk } from '../helpers/small-disk.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { download, sha256 } from './helpers/tools.js';

const MiB = 1024 * 1024;

/** Waits until `done()` holds, 5 s at most. */
async function until(done: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`waited 5 s for ${what}`);
    await sleep(5);
  }
}

/**
 * Cold pulls through the proxy when its storage has no room for the blob: proxy_storage (with the
 * registry's storage and the temp folder) on a real 24 MiB tmpfs, the database elsewhere.
 */
describe('pull-through onto a full disk', () => {
  let disk: SmallDisk;
  let fake: FakeUpstream;
  let proxy: TestRegistry;
  const log = captureLog();
  let n = 0;
  let repo: string;

  beforeAll(async () => {
    disk = await SmallDisk.mount(24);
    fake = await FakeUpstream.start();
    proxy = await startRegistry({
      settings: {
        registry_storage: join(disk.dir, 'registry'),
        temporary_registry_storage: join(disk.dir, '_tmp'),
        proxy_storage: join(disk.dir, 'proxy'),
        proxy: { retries: 0, upstreams: { fake: { url: fake.url } } },
      },
      logger: log.logger,
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await fake?.close();
    await disk?.unmount();
  });
  beforeEach(async () => {
    await disk.release();
    fake.fault = undefined;
    fake.faultTimes = Infinity;
    fake.openHold();
    repo = `lib/app${++n}`;
  });

  const blobUrl = (digest: string) => `${proxy.url}/v2/proxy/fake/${repo}/blobs/${digest}`;
  const cachedPath = (digest: string) => join(disk.dir, 'proxy', 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));
  const isCached = (digest: string) => stat(cachedPath(digest)).then(() => true, () => false);
  const upstreamGets = (digest: string) => fake.count('GET', `/v2/${repo}/blobs/${digest}`);
  /** Downloads in progress or left in the temp folder: none once the fills are over. */
  const fillFiles = async () => (await readdir(join(disk.dir, '_tmp'))).filter((name) => name.startsWith('fill-'));

  test('a blob larger than the free space reaches every client whole, from one upstream download, and is not cached', async () => {
    const bytes = randomBytes(12 * MiB);
    const digest = fake.addBlob(bytes);
    await disk.leave(6 * MiB);
    const got = await Promise.all(Array.from({ length: 4 }, () => download(blobUrl(digest))));
    expect(got).toEqual(Array.from({ length: 4 }, () => ({ status: 200, body: digest })));
    expect(upstreamGets(digest)).toBe(1);
    // The download ends once its last client has its last byte.
    await proxy.fills.settled();
    expect(await isCached(digest)).toBe(false);
    expect(await fillFiles()).toEqual([]);
    expect(log.text()).toContain('"msg":"blob served without caching it: no space left on storage"');
    expect(log.text()).toContain('bytes to write');

    // Space freed: the next pull is cached, and the one after it served from the cache.
    await disk.release();
    expect(await download(blobUrl(digest))).toEqual({ status: 200, body: digest });
    // Moved into the store once the clients have their last byte.
    await proxy.fills.settled();
    expect(await isCached(digest)).toBe(true);
    expect(await download(blobUrl(digest))).toEqual({ status: 200, body: digest });
    expect(upstreamGets(digest)).toBe(2);
  });

  test('a download whose disk fills up mid-way goes on from memory: its clients get the whole blob, nothing is cached', async () => {
    const bytes = randomBytes(8 * MiB);
    const digest = fake.addBlob(bytes);
    // Half the blob, then the rest once the disk is full.
    const rest = fake.holdUntilOpened();
    fake.fault = 'hold';
    fake.faultTimes = 1;
    const pulls = Promise.all(Array.from({ length: 3 }, () => download(blobUrl(digest))));
    await until(async () => (await fillFiles()).length === 1, 'the download to start');
    const [file] = await fillFiles();
    await until(async () => (await stat(join(disk.dir, '_tmp', file!)).then((s) => s.size, () => 0)) >= 2 * MiB, 'the first half on disk');
    await disk.leave(0);
    rest();
    expect(await pulls).toEqual(Array.from({ length: 3 }, () => ({ status: 200, body: digest })));
    expect(upstreamGets(digest)).toBe(1);
    // The download ends once its last client has its last byte.
    await proxy.fills.settled();
    expect(await isCached(digest)).toBe(false);
    expect(await fillFiles()).toEqual([]);
    expect(log.text()).toContain('"reason":"ENOSPC: no space left on device, write"');
  });

  test('a range ending before the blob\'s end does not hold a download kept in memory: every client gets its bytes', async () => {
    const bytes = randomBytes(12 * MiB);
    const digest = fake.addBlob(bytes);
    await disk.leave(2 * MiB);
    // A whole pull, and ranges whose last byte waits for the whole blob's digest; the download holds
    // 7 MiB at most for its slowest reader, so one waiting at such a last byte would hold it for ever.
    const ranged = async (range: string): Promise<{ status: number; body: string }> => {
      const res = await fetch(blobUrl(digest), { headers: { range } });
      return { status: res.status, body: Buffer.from(await res.arrayBuffer()).toString('hex') };
    };
    const [whole, first, middle] = await Promise.all([download(blobUrl(digest)), ranged('bytes=0-0'), ranged(`bytes=${5 * MiB}-${5 * MiB + 9}`)]);
    expect(whole).toEqual({ status: 200, body: digest });
    expect(first).toEqual({ status: 206, body: bytes.subarray(0, 1).toString('hex') });
    expect(middle).toEqual({ status: 206, body: bytes.subarray(5 * MiB, 5 * MiB + 10).toString('hex') });
    await proxy.fills.settled();
    expect(await isCached(digest)).toBe(false);
  });

  test('a client that comes after the download let go of the bytes it needs gets the blob from the upstream itself', async () => {
    const bytes = randomBytes(12 * MiB);
    const digest = fake.addBlob(bytes);
    await disk.leave(4 * MiB);
    const rest = fake.holdUntilOpened();
    fake.fault = 'hold';
    fake.faultTimes = 1;
    // The first client reads half the blob, and the download, held by the upstream, lets its first blocks go.
    let first = 0;
    const firstDone = new Promise<string>((resolve, reject) => {
      get(blobUrl(digest), (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => {
          chunks.push(chunk);
          first += chunk.length;
        });
        res.on('end', () => resolve(sha256(Buffer.concat(chunks))));
        res.on('error', reject);
      }).on('error', reject);
    });
    await until(() => first >= 6 * MiB - 256 * 1024, 'the first client to have the first half');
    // Still held: the second client comes while the download runs.
    expect(await download(blobUrl(digest))).toEqual({ status: 200, body: digest });
    rest();
    expect(await firstDone).toBe(digest);
    expect(upstreamGets(digest)).toBe(2);
    await proxy.fills.settled();
    expect(await isCached(digest)).toBe(false);
    expect(await fillFiles()).toEqual([]);
  });

  test('the server goes on: no error logged, and it serves and caches once space is freed', async () => {
    expect(log.text()).not.toContain('"level":50');
    expect(log.text()).not.toContain('upstream blob fill failed');
    const bytes = randomBytes(MiB);
    const digest = fake.addBlob(bytes);
    expect(await download(blobUrl(digest))).toEqual({ status: 200, body: digest });
    await proxy.fills.settled();
    expect(await isCached(digest)).toBe(true);
    expect((await fetch(`${proxy.url}/ready`)).status).toBe(200);
  });
});
