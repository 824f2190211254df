import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { FsBlobStore, openDatabase, type Digest, type SqliteDatabase } from '@wharf/registry-core';
import { BlobFills } from '../src/blob-fills.js';
import { CacheIndex } from '../src/cache-index.js';
import { HttpUpstream } from '../src/http-upstream.js';
import { MirroredUpstream, type MirrorOptions } from '../src/mirrors.js';
import { OfflineGuard } from '../src/offline-guard.js';
import { PullThroughRepository } from '../src/pull-through.js';
import { resumingBlob } from '../src/resuming-body.js';
import { UpstreamError, type Upstream, type UpstreamBlob } from '../src/upstream.js';
import { FakeUpstream } from './helpers/fake-upstream.js';

const DOC = (seed: string) => ({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: {}, layers: [], annotations: { seed } });

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Mirrors (real, misbehaving registries) behind one upstream, pulled through the cache as clients do. */
describe('mirrors pulled through the cache', () => {
  let mirrors: FakeUpstream[];
  let dir: string;
  let db: SqliteDatabase;
  let store: FsBlobStore;
  let fills: BlobFills;
  const quick = { connect: 300, firstByte: 300, idle: 300 };
  /** For tests in which no mirror should time out: a slow machine must not turn a delay into a failure. */
  const patient = { connect: 5_000, firstByte: 5_000, idle: 5_000 };

  beforeEach(async () => {
    mirrors = [await FakeUpstream.start(), await FakeUpstream.start(), await FakeUpstream.start()];
    dir = await mkdtemp(join(tmpdir(), 'wharf-mirrors-'));
    await mkdir(join(dir, 'tmp'));
    db = openDatabase(':memory:');
    store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    fills = new BlobFills({ store, tempRoot: join(dir, 'tmp') });
  });
  afterEach(async () => {
    await fills.settled();
    for (const m of mirrors) await m.close();
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** As the server builds a mirrored upstream: the mirrors' own clients do not retry, the mirrors do. */
  function upstream(options: MirrorOptions, timeouts = quick): MirroredUpstream {
    return new MirroredUpstream(
      mirrors.map((m) => new HttpUpstream({ name: 'up', url: m.url, retries: 0, timeouts })),
      { random: () => 0.99, ...options },
    );
  }
  function through(up: MirroredUpstream): PullThroughRepository {
    return new PullThroughRepository(up, new CacheIndex(db), store, fills, { manifestTtl: 0, absentTtl: 60_000, rateLimitFloor: 0 });
  }
  const gets = (m: FakeUpstream, path: string) => m.requests.filter((r) => r.method === 'GET' && r.path === path).length;

  test.each(['failover', 'hedged', 'adaptive'] as const)('%s: a mirror that sent a blob wrong is asked after the others, so the next pull gets the blob', async (strategy) => {
    const bytes = randomBytes(256 * 1024);
    const digest = mirrors.map((m) => m.addBlob(bytes))[0]!;
    const path = `/v2/alice/app/blobs/${digest}`;
    mirrors[0]!.fault = 'wrong-bytes';
    mirrors[0]!.faultOn = /\/blobs\//;
    // No hedge and no timeout while a mirror answers: each pull asks exactly one mirror (unless it fails).
    const repo = through(upstream({ strategy, hedgeDelay: 2_000 }, patient));
    // Every mirror measured, mirror 0 the fastest (adaptive's first choice too).
    for (const m of mirrors) m.addManifest('alice/app', '1', DOC('a'));
    mirrors[1]!.delayMs = 250;
    mirrors[2]!.delayMs = 250;
    for (let i = 0; i < 3; i++) await repo.manifest('alice/app', '1');
    const pull = async (): Promise<Buffer> => readAll((await repo.openBlob('alice/app', (await repo.blob('alice/app', digest))!))!);
    await expect(pull()).rejects.toThrow();
    expect(gets(mirrors[0]!, path)).toBe(1);
    expect((await pull()).equals(bytes)).toBe(true);
    expect(gets(mirrors[0]!, path)).toBe(1);
    // From one of the others (adaptive: whichever measured faster, they are alike).
    expect(gets(mirrors[1]!, path) + gets(mirrors[2]!, path)).toBe(1);
  });

  test('adaptive: a mirror that never answered ranks below those that do (not first for ever, as one not asked yet)', async () => {
    for (const m of mirrors) m.addManifest('alice/app', '1', DOC('a'));
    mirrors[0]!.fault = '500';
    // Without the 30 s memory of a failure: the ranking alone must put it last.
    const repo = through(upstream({ strategy: 'adaptive', failMemory: 0 }));
    for (let i = 0; i < 5; i++) expect(await repo.manifest('alice/app', '1')).toBeDefined();
    expect(mirrors[0]!.requests.length).toBe(1);
  });

  test('adaptive: a mirror whose request failed is asked after the others at once, not after enough failures to outweigh its speed', async () => {
    for (const m of mirrors) m.addManifest('alice/app', '1', DOC('a'));
    // Mirror 0 answers far faster than the others.
    mirrors[1]!.delayMs = 150;
    mirrors[2]!.delayMs = 150;
    // Mirrors 1 and 2 slow, not failing: no timeout however slow the machine.
    const repo = through(upstream({ strategy: 'adaptive' }, patient));
    // Every mirror measured (one pull each), then mirror 0 is the one asked, until it fails.
    for (let i = 0; i < 3; i++) await repo.manifest('alice/app', '1');
    for (let i = 0; i < 3; i++) await repo.manifest('alice/app', '1');
    expect(mirrors.map((m) => m.requests.length)).toEqual([4, 1, 1]);
    mirrors[0]!.fault = '500';
    const seen = mirrors[0]!.requests.length;
    for (let i = 0; i < 6; i++) expect(await repo.manifest('alice/app', '1')).toBeDefined();
    expect(mirrors[0]!.requests.length - seen).toBeLessThanOrEqual(1);
  });

  test('a stalled mirror hands over to the next at once, and with every mirror down the rounds end within the retry budget', async () => {
    for (const m of mirrors) m.addManifest('alice/app', '1', DOC('a'));
    mirrors[0]!.fault = 'stall';
    const repo = through(upstream({ strategy: 'failover', retries: 3 }));
    expect(await repo.manifest('alice/app', '1')).toBeDefined();
    expect(mirrors[0]!.requests.length).toBe(1); // one timeout, not one per retry
    expect(mirrors[1]!.requests.length).toBeGreaterThan(0);

    // Every mirror failing: another round after a backoff, as often as `retries` says, and the error
    // says how many mirrors failed.
    for (const m of mirrors) {
      m.fault = '500';
      m.requests.length = 0;
    }
    const all = through(upstream({ strategy: 'failover', retries: 2 }));
    await expect(all.manifest('alice/app', '2')).rejects.toMatchObject({ message: expect.stringMatching(/answered 500; 3 of its mirrors failed$/) });
    expect(mirrors.map((m) => m.requests.length)).toEqual([3, 3, 3]);

    // Every mirror stalled: no mirror, and no round, starts past the budget.
    for (const m of mirrors) {
      m.fault = 'stall';
      m.requests.length = 0;
    }
    const stalled = through(upstream({ strategy: 'failover', retries: 3, retryBudget: 500 }));
    await expect(stalled.manifest('alice/app', '3')).rejects.toMatchObject({ code: 'UPSTREAM_TIMEOUT' });
    expect(mirrors.map((m) => m.requests.length)).toEqual([1, 1, 0]);
  });

  test("failover: a mirror that did not answer within the caller's deadline (a cached tag's re-check) is asked after the others next time", async () => {
    for (const m of mirrors) m.addManifest('alice/app', '1', DOC('a'));
    mirrors[0]!.fault = 'stall';
    const up = upstream({ strategy: 'failover' });
    await expect(up.head('alice/app', '1', AbortSignal.timeout(100))).rejects.toThrow();
    expect(mirrors[0]!.requests.length).toBe(1);
    expect(await up.head('alice/app', '1')).toBeDefined();
    expect(mirrors[0]!.requests.length).toBe(1);
    expect(mirrors[1]!.requests.length).toBe(1);
  });

  test('hedged: a mirror that lost a race is asked after the winner for a while, so requests stop paying its delay', async () => {
    for (const m of mirrors) m.addManifest('alice/app', '1', DOC('a'));
    mirrors[0]!.fault = 'stall';
    // Mirror 0 loses the race (it is not timed out), and mirror 1, which answers at once, well within the hedge.
    const repo = through(upstream({ strategy: 'hedged', hedgeDelay: 1_000 }, patient));
    expect(await repo.manifest('alice/app', '1')).toBeDefined();
    expect(mirrors[0]!.requests.length).toBe(1);
    for (let i = 0; i < 3; i++) expect(await repo.manifest('alice/app', '1')).toBeDefined();
    expect(mirrors[0]!.requests.length).toBe(1);
  });

  test('rounds repeat outages only: a refusal (400) is asked of each mirror once, a 429 twice at most', async () => {
    for (const m of mirrors) {
      m.addManifest('alice/app', '1', DOC('a'));
      m.fault = '400';
    }
    await expect(upstream({ strategy: 'failover', retries: 3 }).manifest('alice/app', '1')).rejects.toBeInstanceOf(UpstreamError);
    expect(mirrors.map((m) => m.requests.length)).toEqual([1, 1, 1]);
    for (const m of mirrors) {
      m.requests.length = 0;
      m.fault = '429';
      m.retryAfter = '0';
    }
    await expect(upstream({ strategy: 'failover', retries: 3 }).manifest('alice/app', '1')).rejects.toMatchObject({ status: 429 });
    expect(mirrors.map((m) => m.requests.length)).toEqual([2, 2, 2]);
  });

  test("every mirror failing: a mirror down (503) is what is reported, not another's 500, so the cached tags' back-off starts", async () => {
    for (const [i, m] of mirrors.entries()) {
      m.addManifest('alice/app', '1', DOC('a'));
      m.fault = i === 0 ? '503' : '500';
      m.retryAfter = '0';
    }
    await expect(upstream({ strategy: 'failover' }).manifest('alice/app', '1')).rejects.toMatchObject({ status: 503 });
    expect(mirrors.map((m) => m.requests.length)).toEqual([1, 1, 1]);
  });

  test('an upstream found down: the quick deadline of its next requests marks the stalled mirror, so the mended one answers', async () => {
    for (const m of mirrors) m.addManifest('alice/app', '1', DOC('a'));
    mirrors[0]!.fault = 'stall';
    mirrors[1]!.fault = 'stall';
    mirrors[1]!.faultTimes = 1; // down for the first request only
    mirrors[2]!.fault = 'stall';
    mirrors[2]!.faultTimes = 1;
    const guard = new OfflineGuard(upstream({ strategy: 'failover' }), 5_000, 100);
    await expect(guard.manifest('alice/app', '1')).rejects.toMatchObject({ failure: 'timeout' });
    let answered = 0;
    for (let i = 0; i < 5; i++) await guard.manifest('alice/app', '1').then(() => answered++, () => undefined);
    expect(answered).toBeGreaterThanOrEqual(3);
  });

  test('striped: a stripe cut by the only mirror up goes on from that mirror (its own resume), not nowhere', async () => {
    const size = 4 * 1024;
    const blob = Buffer.alloc(size, 7);
    let resumed = 0;
    const good: Upstream = {
      name: 'up',
      head: async () => undefined,
      manifest: async () => undefined,
      statBlob: async () => ({ size }),
      tags: async () => undefined,
      referrers: async () => undefined,
      async blob(_repo, _digest, range) {
        const r = range ?? { start: 0, end: size - 1 };
        const bytes = blob.subarray(r.start, r.end + 1);
        if (r.start !== 0 || r.end === 0) return { size, range: r, body: Readable.from([bytes]) };
        // The first stripe is cut half-way; the mirror's own client resumes it, as HttpUpstream does.
        const first = new Readable({ read() {} });
        first.push(bytes.subarray(0, bytes.length / 2));
        setTimeout(() => first.destroy(new Error('ECONNRESET')), 10);
        return resumingBlob({ size, range: r, body: first }, r.start, r.end, async (from) => {
          resumed += 1;
          return { size, range: { start: from, end: r.end }, body: Readable.from([blob.subarray(from, r.end + 1)]) };
        });
      },
    };
    const down: Upstream = { ...good, blob: async () => Promise.reject(new UpstreamError('unreachable', 'this mirror is down')) };
    const up = new MirroredUpstream([good, down], { strategy: 'striped', stripeThreshold: 1024, stripeSize: 1024 });
    const got = (await up.blob('alice/app', `sha256:${'b'.repeat(64)}` as Digest)) as UpstreamBlob;
    expect((await readAll(got.body)).equals(blob)).toBe(true);
    expect(resumed).toBe(1);
  });
});
