import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { FsBlobStore, compareTags, flushDeferredWrites, openDatabase, type Digest, type SqliteDatabase } from '@wharf/registry-core';
import { BlobFills } from '../src/blob-fills.js';
import { CacheEviction } from '../src/cache-eviction.js';
import { CacheIndex } from '../src/cache-index.js';
import { HttpUpstream } from '../src/http-upstream.js';
import { MirroredUpstream } from '../src/mirrors.js';
import { PullThroughRepository, referrersTag } from '../src/pull-through.js';
import type { Upstream } from '../src/upstream.js';
import { FakeUpstream } from './helpers/fake-upstream.js';

const DOC = (seed: string) => ({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: {}, layers: [], annotations: { seed } });
const TTL = 300;

/**
 * Fakes the wall clock only, which stands still until the test moves it: manifest_ttl is measured with
 * Date.now(), so "within manifest_ttl" holds however slow the machine is. Timers, sockets and I/O stay real.
 */
function freezeClock(): void {
  jest.useFakeTimers({ doNotFake: ['hrtime', 'nextTick', 'performance', 'queueMicrotask', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
}

/** Moves the frozen clock past manifest_ttl. */
function pastTtl(): void {
  jest.setSystemTime(Date.now() + TTL + 50);
}

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

describe('PullThroughRepository over a real misbehaving upstream', () => {
  let fake: FakeUpstream;
  let dir: string;
  let db: SqliteDatabase;
  let repo: PullThroughRepository;
  let fills: BlobFills;
  const tagPath = '/v2/alice/app/manifests/1';

  beforeEach(async () => {
    fake = await FakeUpstream.start();
    dir = await mkdtemp(join(tmpdir(), 'wharf-pt-'));
    await mkdir(join(dir, 'tmp'));
    db = openDatabase(':memory:');
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    fills = new BlobFills({ store, tempRoot: join(dir, 'tmp') });
    const upstream = new HttpUpstream({ name: 'up', url: fake.url, retries: 0, timeouts: { connect: 300, firstByte: 300, idle: 300 } });
    repo = new PullThroughRepository(upstream, new CacheIndex(db), store, fills, { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 0 });
  });
  afterEach(async () => {
    jest.useRealTimers();
    // A fill still syncing, reading back or storing its file must end before its folder goes.
    await fills.settled();
    await fake.close();
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('by tag within manifest_ttl: served from the cache with no upstream request', async () => {
    freezeClock();
    const digest = fake.addManifest('alice/app', '1', DOC('a'));
    expect((await repo.manifest('alice/app', '1'))?.digest).toBe(digest);
    const seen = fake.requests.length;
    expect((await repo.manifest('alice/app', '1'))?.digest).toBe(digest);
    expect(fake.requests.length).toBe(seen);
  });

  test('by tag after manifest_ttl, same digest: one HEAD, no GET', async () => {
    const digest = fake.addManifest('alice/app', '1', DOC('a'));
    await repo.manifest('alice/app', '1');
    await sleep(TTL + 50);
    expect((await repo.manifest('alice/app', '1'))?.digest).toBe(digest);
    expect(fake.count('HEAD', tagPath)).toBe(1);
    expect(fake.count('GET', tagPath)).toBe(1);
  });

  test('by tag after manifest_ttl, moved tag: HEAD then GET of the new manifest', async () => {
    fake.addManifest('alice/app', '1', DOC('a'));
    await repo.manifest('alice/app', '1');
    const moved = fake.addManifest('alice/app', '1', DOC('b'));
    await sleep(TTL + 50);
    expect((await repo.manifest('alice/app', '1'))?.digest).toBe(moved);
    expect(fake.count('HEAD', tagPath)).toBe(1);
    expect(fake.count('GET', tagPath)).toBe(2);
  });

  test('below rate_limit_floor a moved tag is served from the cache, not fetched; the HEAD still goes, so the reading recovers', async () => {
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const upstream = new HttpUpstream({ name: 'up', url: fake.url, retries: 0, onRateLimit: (remaining) => limited.noteRateLimit(remaining) });
    const limited: PullThroughRepository = new PullThroughRepository(upstream, new CacheIndex(db), store, fills, { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 10 });
    const first = fake.addManifest('alice/app', '1', DOC('a'));
    expect((await limited.manifest('alice/app', '1'))?.digest).toBe(first);

    fake.rateLimitRemaining = 5;
    const moved = fake.addManifest('alice/app', '1', DOC('b'));
    await sleep(TTL + 50);
    const stale = await limited.manifest('alice/app', '1');
    expect(stale?.digest).toBe(first);
    expect(stale?.warning).toMatch(/rate limit/);
    expect(fake.count('HEAD', tagPath)).toBe(1);
    expect(fake.count('GET', tagPath)).toBe(1);

    // Checked, the tag is not asked about again within manifest_ttl (before: a HEAD at every pull).
    expect((await limited.manifest('alice/app', '1'))?.digest).toBe(first);
    expect(fake.count('HEAD', tagPath)).toBe(1);

    // The window reset upstream: the next check's HEAD says so, and the moved tag is fetched.
    fake.rateLimitRemaining = 100;
    await sleep(TTL + 50);
    expect((await limited.manifest('alice/app', '1'))?.digest).toBe(moved);
    expect(limited.rateLimitRemaining).toBe(100);
  });

  test('below rate_limit_floor, a HEAD that brings no reading (a mirror answered, the header stopped) does not freeze the tag: the GET goes', async () => {
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const upstream = new HttpUpstream({ name: 'up', url: fake.url, retries: 0, onRateLimit: (remaining) => limited.noteRateLimit(remaining) });
    const limited: PullThroughRepository = new PullThroughRepository(upstream, new CacheIndex(db), store, fills, { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 10 });
    fake.rateLimitRemaining = 5;
    const first = fake.addManifest('alice/app', '1', DOC('a'));
    expect((await limited.manifest('alice/app', '1'))?.digest).toBe(first);
    expect(limited.rateLimitRemaining).toBe(5);

    // The answers carry the header no more. Before: the last reading (5) held every later check to
    // the cached copy, for as long as no answer carried the header again.
    fake.rateLimitRemaining = undefined;
    const moved = fake.addManifest('alice/app', '1', DOC('b'));
    await sleep(TTL + 50);
    const checked = await limited.manifest('alice/app', '1');
    expect(checked?.digest).toBe(moved);
    expect(checked?.warning).toBeUndefined();
    expect(fake.count('GET', tagPath)).toBe(2);
  });

  test("below rate_limit_floor, another request's low reading arriving during a tag's HEAD does not hold that tag's GET back", async () => {
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const http = new HttpUpstream({ name: 'up', url: fake.url, retries: 0, onRateLimit: (remaining) => limited.noteRateLimit(remaining) });
    // Another tag's answer (or a hedged request's loser) brings "3 left" while this tag's HEAD, which
    // a mirror answered, carries none.
    const racing: Upstream = {
      name: 'up',
      head: async (r, t, sig) => {
        limited.noteRateLimit(3);
        return http.head(r, t, sig);
      },
      manifest: (r, t, sig) => http.manifest(r, t, sig),
      blob: (r, d, range, sig) => http.blob(r, d, range, sig),
      statBlob: (r, d, sig) => http.statBlob(r, d, sig),
      tags: (r, page, sig) => http.tags(r, page, sig),
      referrers: (r, d, sig) => http.referrers(r, d, sig),
    };
    const limited: PullThroughRepository = new PullThroughRepository(racing, new CacheIndex(db), store, fills, { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 10 });
    const first = fake.addManifest('alice/app', '1', DOC('a'));
    expect((await limited.manifest('alice/app', '1'))?.digest).toBe(first);
    const moved = fake.addManifest('alice/app', '1', DOC('b'));
    await sleep(TTL + 50);
    const checked = await limited.manifest('alice/app', '1');
    expect(checked?.digest).toBe(moved);
    expect(checked?.warning).toBeUndefined();
    expect(limited.rateLimitRemaining).toBe(3);
  });

  test('a cached tag the upstream deleted: absent for absent_ttl, and not served stale in a later outage', async () => {
    const digest = fake.addManifest('alice/app', '1', DOC('a'));
    await repo.manifest('alice/app', '1');
    fake.manifests.delete('alice/app:1');
    await sleep(TTL + 50);
    expect(await repo.manifest('alice/app', '1')).toBeUndefined();
    expect(await repo.manifest('alice/app', '1')).toBeUndefined();
    expect(fake.count('HEAD', tagPath)).toBe(1);
    fake.fault = '500';
    expect(await repo.manifest('alice/app', '1')).toBeUndefined();
    expect((await repo.listTags('alice/app', 100))?.tags ?? []).not.toContain('1');
    // Its manifest stays, by digest.
    expect((await repo.manifest('alice/app', digest))?.digest).toBe(digest);
  });

  test('a blob the upstream answered 404 for is absent for absent_ttl, GET and HEAD alike, and apart from the same digest as a manifest', async () => {
    const bytes = Buffer.from('a blob pushed upstream later');
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
    const blobPath = `/v2/alice/app/blobs/${digest}`;
    expect(await repo.blob('alice/app', digest)).toBeUndefined();
    expect(await repo.blob('alice/app', digest)).toBeUndefined();
    expect(await repo.statBlob('alice/app', digest)).toBeUndefined();
    // Asked once, not once per request.
    expect(fake.count('GET', blobPath) + fake.count('HEAD', blobPath)).toBe(1);
    // A HEAD's 404 counts too, for another repository.
    expect(await repo.statBlob('alice/other', digest)).toBeUndefined();
    expect(await repo.blob('alice/other', digest)).toBeUndefined();
    expect(fake.count('HEAD', `/v2/alice/other/blobs/${digest}`) + fake.count('GET', `/v2/alice/other/blobs/${digest}`)).toBe(1);
    // The same digest asked as a manifest, 404 there, says nothing of the blob.
    fake.addBlob(bytes);
    expect(await repo.manifest('alice/third', digest)).toBeUndefined();
    expect((await repo.blob('alice/third', digest))?.digest).toBe(digest);
  });

  test('a cache index that cannot be written (a full disk) costs the cache, not the client', async () => {
    const digest = fake.addManifest('alice/app', '1', DOC('a'));
    for (const table of ['proxy_manifests', 'proxy_tags']) {
      db.exec(`CREATE TRIGGER full_${table} BEFORE INSERT ON ${table} BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END`);
    }
    expect((await repo.manifest('alice/app', '1'))?.digest).toBe(digest);
    expect((await repo.manifest('alice/app', digest))?.digest).toBe(digest);
    // Nothing was kept: the next request asks again.
    expect((await repo.manifest('alice/app', '1'))?.digest).toBe(digest);
    expect(fake.count('GET', tagPath)).toBe(2);
  });

  test('by digest: once cached, never asked upstream again', async () => {
    const digest = fake.addManifest('alice/app', '1', DOC('a'));
    await repo.manifest('alice/app', digest);
    await sleep(TTL + 50);
    fake.fault = '500';
    expect((await repo.manifest('alice/app', digest))?.digest).toBe(digest);
    expect(fake.requests).toHaveLength(1);
  });

  test('peekManifest answers only what the cache holds fresh, and never asks the upstream', async () => {
    freezeClock();
    const digest = fake.addManifest('alice/app', '1', DOC('a'));
    expect(await repo.peekManifest('alice/app', '1')).toBeUndefined();
    expect(await repo.peekManifest('alice/app', digest)).toBeUndefined();
    expect(fake.requests).toHaveLength(0);
    await repo.manifest('alice/app', '1');
    const seen = fake.requests.length;
    expect((await repo.peekManifest('alice/app', '1'))?.digest).toBe(digest);
    expect((await repo.peekManifest('alice/app', digest))?.digest).toBe(digest);
    expect(await repo.peekManifest('alice/app', 'bad tag!')).toBeUndefined();
    pastTtl();
    // A tag due for its check is not answered; a digest stays answered (immutable).
    expect(await repo.peekManifest('alice/app', '1')).toBeUndefined();
    expect((await repo.peekManifest('alice/app', digest))?.digest).toBe(digest);
    expect(fake.requests.length).toBe(seen);
  });

  for (const fault of ['500', '429', 'stall'] as const) {
    test(`upstream ${fault} after the TTL with a cached copy: the copy, marked stale`, async () => {
      const digest = fake.addManifest('alice/app', '1', DOC('a'));
      await repo.manifest('alice/app', '1');
      await sleep(TTL + 50);
      fake.fault = fault;
      const manifest = await repo.manifest('alice/app', '1');
      expect(manifest?.digest).toBe(digest);
      expect(manifest?.warning).toMatch(/upstream up unavailable/);
      expect(repo.staleServed).toBe(1);
    });
  }

  test('with a cached copy, a stalled upstream gets a short deadline (retries included) before the copy is served', async () => {
    const patient = new HttpUpstream({ name: 'up', url: fake.url, retries: 3, timeouts: { connect: 2_000, firstByte: 2_000, idle: 2_000 } });
    const index = new CacheIndex(db);
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const slow = new PullThroughRepository(patient, index, store, fills, { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 0, revalidateTimeout: 400 });
    const digest = fake.addManifest('alice/app', '1', DOC('a'));
    await slow.manifest('alice/app', '1');
    await sleep(TTL + 50);
    fake.fault = 'stall';
    const started = Date.now();
    const manifest = await slow.manifest('alice/app', '1');
    expect(manifest?.digest).toBe(digest);
    // The warning names the 400 ms deadline: waited out, the stall would have ended in the upstream's
    // own timeouts and retries (8 s), with another message.
    expect(manifest?.warning).toMatch(/did not answer within 400 ms/);
    expect(fake.requests.filter((r) => r.at >= started).length).toBe(1);
  });

  test('with a cached copy, a 429 with Retry-After is not waited out', async () => {
    const patient = new HttpUpstream({ name: 'up', url: fake.url, retries: 3 });
    const slow = new PullThroughRepository(patient, new CacheIndex(db), new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp')), fills, {
      manifestTtl: TTL,
      absentTtl: 60_000,
      rateLimitFloor: 0,
      revalidateTimeout: 400,
    });
    fake.addManifest('alice/app', '1', DOC('a'));
    await slow.manifest('alice/app', '1');
    await sleep(TTL + 50);
    fake.fault = '429';
    const started = Date.now();
    // The Warning names the upstream's answer, not the wait for its Retry-After.
    expect((await slow.manifest('alice/app', '1'))?.warning).toBe('upstream up unavailable (upstream up answered 429, asking to retry after 1 s); serving the cached manifest');
    // Not waited out: asked once (waiting for the Retry-After, the retries would have asked again).
    expect(fake.requests.filter((r) => r.at >= started).length).toBe(1);
  });

  test('upstream closed after the TTL with a cached copy: the copy, marked stale', async () => {
    const digest = fake.addManifest('alice/app', '1', DOC('a'));
    await repo.manifest('alice/app', '1');
    await fake.close();
    await sleep(TTL + 50);
    expect((await repo.manifest('alice/app', '1'))?.warning).toBeDefined();
    expect((await repo.manifest('alice/app', digest))?.warning).toBeUndefined();
    fake = await FakeUpstream.start(); // for afterEach
  });

  test('nothing cached: 500 → UPSTREAM_ERROR, 429 → TOOMANYREQUESTS with retryAfter, stall → UPSTREAM_TIMEOUT', async () => {
    fake.addManifest('alice/app', '1', DOC('a'));
    fake.fault = '500';
    await expect(repo.manifest('alice/app', '1')).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
    fake.fault = 'stall';
    await expect(repo.manifest('alice/app', '1')).rejects.toMatchObject({ code: 'UPSTREAM_TIMEOUT' });
    fake.fault = '429';
    await expect(repo.manifest('alice/app', '1')).rejects.toMatchObject({ code: 'TOOMANYREQUESTS', detail: { retryAfter: 1 } });
  });

  test('after a 429 with Retry-After, manifests not cached are not asked for until it has passed; the cached are served stale', async () => {
    const lines: string[] = [];
    const logger = { warn: (_f: Record<string, unknown>, m: string) => void lines.push(m) };
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const upstream = new HttpUpstream({ name: 'up', url: fake.url, retries: 0, timeouts: { connect: 300, firstByte: 300, idle: 300 }, logger });
    const limited = new PullThroughRepository(upstream, new CacheIndex(db), store, fills, { manifestTtl: 0, absentTtl: 60_000, rateLimitFloor: 0 });
    fake.addManifest('alice/app', 'cached', DOC('c'));
    expect(await limited.manifest('alice/app', 'cached')).toBeDefined();
    fake.addManifest('alice/app', '1', DOC('a'));
    const other = fake.addManifest('alice/other', '2', DOC('b'));
    fake.fault = '429';
    fake.retryAfter = '30';
    await expect(limited.manifest('alice/app', '1')).rejects.toMatchObject({ code: 'TOOMANYREQUESTS', detail: { retryAfter: 30 } });
    expect(lines).toEqual(['upstream rate limit: no manifest GET goes to it until its Retry-After has passed']);
    // The limit is lifted upstream, but Wharf was asked to wait: nothing is asked for 30 s, by tag
    // or by digest, in any repository of that upstream.
    fake.fault = undefined;
    const seen = fake.requests.length;
    const again = (await limited.manifest('alice/app', '1').catch((e: unknown) => e)) as { code: string; message: string; detail: { retryAfter: number } };
    expect(again.code).toBe('TOOMANYREQUESTS');
    expect(again.message).toMatch(/^upstream up answered 429, asking to retry after 30 s; not asked again for (29|30) s$/);
    expect(again.detail.retryAfter).toBeLessThanOrEqual(30);
    await expect(limited.manifest('alice/other', other)).rejects.toMatchObject({ code: 'TOOMANYREQUESTS' });
    expect(fake.requests.length).toBe(seen);
    // A cached tag due for its check is still checked with a HEAD (which Docker Hub does not count);
    // moved upstream, it is served from the cache, marked stale, rather than fetched.
    expect((await limited.manifest('alice/app', 'cached'))?.warning).toBeUndefined();
    fake.addManifest('alice/app', 'cached', DOC('moved'));
    expect((await limited.manifest('alice/app', 'cached'))?.warning).toMatch(/not asked again for/);
    expect(fake.requests.slice(seen).map((r) => r.method)).toEqual(['HEAD', 'HEAD']);
    expect(lines.filter((l) => l.startsWith('upstream rate limit'))).toHaveLength(1);
  });

  test('one mirror\'s 429 holds back its own manifest GETs only: the other mirrors go on serving', async () => {
    const quick = { connect: 300, firstByte: 300, idle: 300 };
    const mirror = await FakeUpstream.start();
    try {
      const upstream = new MirroredUpstream(
        [new HttpUpstream({ name: 'docker.io', url: fake.url, retries: 0, timeouts: quick }), new HttpUpstream({ name: 'docker.io', url: mirror.url, retries: 0, timeouts: quick })],
        { strategy: 'failover' },
      );
      const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
      const mirrored = new PullThroughRepository(upstream, new CacheIndex(db), store, fills, { manifestTtl: 300, absentTtl: 60_000, rateLimitFloor: 0 });
      // Docker Hub limits; the mirror has the popular images only.
      fake.fault = '429';
      fake.retryAfter = '600';
      fake.addManifest('team/rare', '1', DOC('rare'));
      await expect(mirrored.manifest('team/rare', '1')).rejects.toMatchObject({ code: 'TOOMANYREQUESTS' });
      const busybox = mirror.addManifest('library/busybox', '1', DOC('busybox'));
      const hubSeen = fake.requests.length;
      expect((await mirrored.manifest('library/busybox', '1'))?.digest).toBe(busybox);
      // Docker Hub was not asked: its wait holds.
      expect(fake.requests.length).toBe(hubSeen);
    } finally {
      await mirror.close();
    }
  });

  /**
   * A repository over the fake with `timeoutMs` for each of the upstream's timeouts, checking its tags
   * at every pull, and 60 s of outage_backoff; `policy` adds to that.
   */
  function downGuarded(timeoutMs: number, policy: Partial<ConstructorParameters<typeof PullThroughRepository>[4]>, logger?: ConstructorParameters<typeof PullThroughRepository>[5]): PullThroughRepository {
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const upstream = new HttpUpstream({ name: 'up', url: fake.url, retries: 0, timeouts: { connect: timeoutMs, firstByte: timeoutMs, idle: timeoutMs } });
    return new PullThroughRepository(upstream, new CacheIndex(db), store, fills, { manifestTtl: 0, absentTtl: 60_000, rateLimitFloor: 0, outageBackoff: 60_000, ...policy }, logger);
  }

  test("a cached tag's re-check that got no answer within its deadline counts as the upstream not answering: the next uncached request gets the short deadline", async () => {
    const guarded = downGuarded(2_000, { revalidateTimeout: 100, outageProbeTimeout: 150 });
    const cached = fake.addManifest('alice/app', '1', DOC('a'));
    fake.addManifest('alice/app', '2', DOC('b'));
    expect((await guarded.manifest('alice/app', '1'))?.digest).toBe(cached);
    fake.fault = 'stall';
    expect((await guarded.manifest('alice/app', '1'))?.warning).toMatch(/within/);
    expect(guarded.upstream.isOffline).toBe(true);
    await expect(guarded.manifest('alice/app', '2')).rejects.toMatchObject({ code: 'UPSTREAM_TIMEOUT', message: expect.stringContaining('within 0.15 s') });
  });

  test('an upstream that stopped answering gets a short deadline for outage_backoff: what is not cached fails sooner, the cached is served stale, and it is served again as soon as it answers', async () => {
    const logger = { lines: [] as string[], warn: (_f: Record<string, unknown>, m: string) => void logger.lines.push(m), info: (_f: Record<string, unknown>, m: string) => void logger.lines.push(m) };
    const guarded = downGuarded(300, { outageProbeTimeout: 100 }, logger);
    const cached = fake.addManifest('alice/app', '1', DOC('a'));
    fake.addManifest('alice/app', '2', DOC('b'));
    const layer = fake.addBlob(Buffer.from('a layer'));
    expect((await guarded.manifest('alice/app', '1'))?.digest).toBe(cached);
    // One 429 and one 500 are answers: no short deadline after them.
    fake.fault = '429';
    await expect(guarded.manifest('alice/app', '2')).rejects.toMatchObject({ code: 'TOOMANYREQUESTS' });
    await sleep(1000); // its Retry-After
    fake.fault = '500';
    await expect(guarded.manifest('alice/app', '2')).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
    expect(guarded.upstream.isOffline).toBe(false);
    // A stall: this request waits out the first-byte timeout (300 ms)...
    fake.fault = 'stall';
    await expect(guarded.manifest('alice/app', '2')).rejects.toThrow('upstream up timed out');
    expect(logger.lines).toContain('upstream not answering; requests to it get a short deadline for a while');
    expect(guarded.upstream.isOffline).toBe(true);
    // ...and the next ones get 100 ms, whatever they ask.
    await expect(guarded.manifest('alice/app', '2')).rejects.toThrow(/upstream up timed out \(no answer within 0.1 s; not answering for \d+ s\)/);
    await expect(guarded.blob('alice/app', layer)).rejects.toMatchObject({ code: 'UPSTREAM_TIMEOUT', message: expect.stringContaining('within 0.1 s') });
    await expect(guarded.statBlob('alice/app', layer)).rejects.toMatchObject({ code: 'UPSTREAM_TIMEOUT', message: expect.stringContaining('within 0.1 s') });
    // The cached tag (due for its check: manifest_ttl 0) is served, marked stale.
    expect((await guarded.manifest('alice/app', '1'))?.warning).toMatch(/unavailable/);
    // Each still asks: the first request once the upstream is back is served, and ends the short deadlines.
    fake.fault = undefined;
    expect((await guarded.manifest('alice/app', '2'))?.digest).toBeDefined();
    expect(guarded.upstream.isOffline).toBe(false);
    expect(logger.lines).toContain('upstream answers again');
    expect((await guarded.blob('alice/app', layer))?.size).toBe(7);
  });

  test.each([
    ['the upstream\'s bytes go whole once they matched the verified blob', false],
    ['wrong bytes are cut before their last byte', true],
  ])('a range far ahead of its fill is asked of the upstream: %s', async (_case, corrupt) => {
    const MiB = 1024 * 1024;
    const bytes = randomBytes(40 * MiB);
    const digest = fake.addBlob(bytes);
    // The fill gets 20 MiB at once, the rest once the range was asked (within its idle timeout: no
    // resume); the range starts 18 MiB past it.
    const rest = fake.holdUntilOpened();
    fake.fault = 'hold';
    fake.faultTimes = 1;
    fake.corruptRanges = corrupt;
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const upstream = new HttpUpstream({ name: 'up', url: fake.url, retries: 0, timeouts: { connect: 1000, firstByte: 1000, idle: 2000 } });
    const repo = new PullThroughRepository(upstream, new CacheIndex(db), store, fills, { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 0 });
    const info = await repo.blob('alice/app', digest);
    const fill = (await fills.current(digest))!;
    while (fill.received < 20 * MiB) await sleep(5);
    const range = { start: 38 * MiB, end: 38 * MiB + 4095 };
    const body = await repo.openBlob('alice/app', info!, range);
    // It came from the upstream: the fill is not there yet.
    expect(fake.requests.filter((r) => r.method === 'GET' && r.path.includes('/blobs/'))).toHaveLength(2);
    // Its last byte waits for the whole blob's digest: the fill goes on.
    rest();
    const read = await readAll(body!).then(
      (got) => got,
      (err: Error) => err,
    );
    if (corrupt) expect(read).toBeInstanceOf(Error);
    else expect(read).toEqual(bytes.subarray(range.start, range.end + 1));
    await fill.done;
  });

  test('upstream 404: absent, and remembered for absent_ttl', async () => {
    expect(await repo.manifest('alice/app', 'missing')).toBeUndefined();
    expect(await repo.manifest('alice/app', 'missing')).toBeUndefined();
    expect(fake.count('GET', '/v2/alice/app/manifests/missing')).toBe(1);
  });

  test('a blob is fetched once, then served from the store with the upstream gone', async () => {
    const bytes = randomBytes(300_000);
    const digest = fake.addBlob(bytes) as Digest;
    const infos = await Promise.all(Array.from({ length: 8 }, () => repo.blob('alice/app', digest)));
    const bodies = await Promise.all(infos.map(async (info) => readAll((await repo.openBlob('alice/app', info!))!)));
    for (const b of bodies) expect(b.equals(bytes)).toBe(true);
    expect(fake.count('GET', `/v2/alice/app/blobs/${digest}`)).toBe(1);
    // Clients are done once the blob is verified; the fill stores it right after.
    await fills.settled();
    await fake.close();
    const again = await repo.blob('alice/app', digest);
    expect((await readAll((await repo.openBlob('alice/app', again!))!)).equals(bytes)).toBe(true);
    fake = await FakeUpstream.start();
  });

  test('a download in flight is read through another upstream only if that upstream has the blob', async () => {
    const other = await FakeUpstream.start();
    let rest: (() => void) | undefined;
    try {
      const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
      const viaOther = new PullThroughRepository(new HttpUpstream({ name: 'other', url: other.url, retries: 0 }), new CacheIndex(db), store, fills, { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 0 });
      const bytes = randomBytes(1024 * 1024);
      const digest = fake.addBlob(bytes);
      // The download runs until the end of the test.
      rest = fake.holdUntilOpened();
      fake.fault = 'hold';
      expect((await repo.blob('alice/app', digest))?.size).toBe(bytes.length);
      expect(fills.running).toBe(1);
      // The other upstream does not have it: its clients get nothing of this download.
      expect(await viaOther.blob('bob/app', digest)).toBeUndefined();
      expect(await viaOther.statBlob('bob/app', digest)).toBeUndefined();
      // Asked once: its 404 is remembered for absent_ttl.
      expect(other.count('HEAD', `/v2/bob/app/blobs/${digest}`)).toBe(1);
      // The same upstream has it for another repository: that one joins the download.
      expect((await repo.blob('carol/app', digest))?.size).toBe(bytes.length);
      expect(fills.started).toBe(1);
    } finally {
      rest?.();
      await other.close();
    }
  });

  test('a blob evicted between its lookup and its opening is fetched again, not a 404', async () => {
    const bytes = randomBytes(256 * 1024);
    const digest = fake.addBlob(bytes);
    const first = await repo.blob('alice/app', digest);
    expect((await readAll((await repo.openBlob('alice/app', first!))!)).equals(bytes)).toBe(true);
    await fills.settled();
    const found = await repo.blob('alice/app', digest);
    // Eviction (or a purge) removes the file now, after the lookup and before the open.
    await rm(new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp')).pathOf(digest));
    expect((await readAll((await repo.openBlob('alice/app', found!))!)).equals(bytes)).toBe(true);
    expect(fake.count('GET', `/v2/alice/app/blobs/${digest}`)).toBe(2);
  });

  test("another upstream's 404 for a blob, in flight, is not this upstream's answer", async () => {
    const slow404 = createServer((_req, res) => setTimeout(() => res.writeHead(404).end(), 300));
    await new Promise<void>((resolve) => slow404.listen(0, '127.0.0.1', resolve));
    try {
      const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
      const url = `http://127.0.0.1:${(slow404.address() as AddressInfo).port}`;
      const lacking = new PullThroughRepository(new HttpUpstream({ name: 'lacking', url, retries: 0 }), new CacheIndex(db), store, fills, { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 0 });
      const bytes = randomBytes(64 * 1024);
      const digest = fake.addBlob(bytes);
      const there = lacking.blob('bob/app', digest);
      await sleep(50);
      expect((await repo.blob('alice/app', digest))?.size).toBe(bytes.length);
      expect(await there).toBeUndefined();
    } finally {
      slow404.closeAllConnections();
      await new Promise((resolve) => slow404.close(resolve));
    }
  });

  test('a blob cached for one repository is served under another only if the upstream has it there', async () => {
    const bytes = randomBytes(1000);
    const digest = fake.addBlob(bytes) as Digest;
    const first = await repo.blob('alice/app', digest);
    await readAll((await repo.openBlob('alice/app', first!))!);
    await fills.settled();
    fake.blobs.delete(digest);
    expect(await repo.blob('bob/other', digest)).toBeUndefined();
    expect(fake.count('HEAD', `/v2/bob/other/blobs/${digest}`)).toBe(1);
  });

  test('a HEAD waiting for a download of unknown size that stalls for good gets the timeout (504), not a "bad blob"', async () => {
    const blob = randomBytes(256 * 1024);
    const digest = fake.addBlob(blob);
    // Chunked, and every answer (the resumes' too) stalls after half its bytes, past the 300 ms idle timeout.
    fake.chunked = true;
    fake.fault = 'hold';
    const got = await repo.blob('alice/app', digest);
    expect(got).toEqual({ digest, size: undefined });
    await expect(repo.statBlob('alice/app', digest)).rejects.toMatchObject({ code: 'UPSTREAM_TIMEOUT', message: expect.stringContaining('timed out sending the blob') });
  });

  test('referrers are the upstream ones, kept for when it fails; an upstream without the API is undefined', async () => {
    const subject = fake.addManifest('alice/app', '1', DOC('a'));
    const referrer = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: fake.addManifest('alice/app', 'sig', DOC('s')), size: 10, artifactType: 'application/x-sig' };
    fake.referrers.set(`alice/app@${subject}`, [referrer]);
    expect(await repo.referrers('alice/app', subject)).toEqual([referrer]);
    await sleep(TTL + 50);
    fake.faultOn = /\/referrers\//;
    fake.fault = '500';
    expect(await repo.listReferrers('alice/app', subject)).toEqual({
      descriptors: [referrer],
      more: false,
      warning: 'upstream up unavailable (upstream up answered 500); serving the referrers of its last answer',
    });
    // Never listed before: the upstream's failure.
    const other = fake.addManifest('alice/app', '2', DOC('b'));
    await expect(repo.referrers('alice/app', other)).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
    fake.fault = undefined;
    // No referrers API there (a 404) and no tag-schema index: none, an empty list.
    expect(await repo.referrers('alice/app', other)).toEqual([]);
  });

  test('referrers listed within manifest_ttl are served with no upstream request; past it, asked again', async () => {
    freezeClock();
    const subject = fake.addManifest('alice/ref', '1', DOC('a'));
    const sig = (n: string) => ({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: fake.addManifest('alice/ref', n, DOC(n)), size: 10, artifactType: 'application/x-sig' });
    const first = sig('s1');
    fake.referrers.set(`alice/ref@${subject}`, [first]);
    const path = `/v2/alice/ref/referrers/${subject}`;
    expect(await repo.referrers('alice/ref', subject)).toEqual([first]);
    expect(await repo.referrers('alice/ref', subject)).toEqual([first]);
    expect(fake.count('GET', path)).toBe(1);

    const second = sig('s2');
    fake.referrers.set(`alice/ref@${subject}`, [first, second]);
    pastTtl();
    expect(await repo.referrers('alice/ref', subject)).toEqual([first, second]);
    expect(fake.count('GET', path)).toBe(2);
  });

  test('an upstream without the referrers API: the index its tag schema tags sha256-<hex> lists them', async () => {
    const subject = fake.addManifest('alice/app', '1', DOC('a'));
    const sig = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: fake.addManifest('alice/app', 'sig', DOC('s')), size: 10, artifactType: 'application/x-sig', annotations: { a: 'b' } };
    const index = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [sig, { mediaType: 'broken' }] };
    fake.addManifest('alice/app', `sha256-${subject.slice('sha256:'.length)}`, index, 'application/vnd.oci.image.index.v1+json');
    expect(await repo.referrers('alice/app', subject)).toEqual([sig]);
    expect(fake.count('GET', `/v2/alice/app/referrers/${subject}`)).toBe(1);
    // Kept, as an answer of the API is, for when the upstream is down.
    fake.fault = '500';
    fake.faultOn = /\/(referrers|manifests)\//;
    expect(await repo.referrers('alice/app', subject)).toEqual([sig]);
  });

  test('referrersTag cuts the algorithm to 32 characters and the hex to 64', () => {
    expect(referrersTag(`sha256:${'a'.repeat(64)}` as Digest)).toBe(`sha256-${'a'.repeat(64)}`);
    expect(referrersTag(`sha512:${'b'.repeat(128)}` as Digest)).toBe(`sha512-${'b'.repeat(64)}`);
  });

  /** Every tag of `repo` as a client gets it following `Link` with pages of `n`: duplicates stay visible. */
  async function walk(name: string, n: number): Promise<string[]> {
    const seen: string[] = [];
    for (let last: string | undefined; ; ) {
      const page = await repo.listTags(name, n, last);
      seen.push(...page!.tags);
      if (!page!.more) return seen;
      last = page!.tags.at(-1);
    }
  }

  test('tags are the upstream ones, pulled or not; with the upstream failing and no list kept, those pulled so far', async () => {
    fake.addManifest('alice/app', '1', DOC('a'));
    fake.addManifest('alice/app', '2', DOC('b'));
    expect(await repo.listTags('alice/app', 1, '1')).toEqual({ tags: ['2'], more: false });
    expect(await repo.listTags('alice/none', 100)).toBeUndefined();
    await sleep(TTL + 50);
    fake.faultOn = /\/tags\/list$/;
    fake.fault = '500';
    // Nothing kept any more nor pulled yet: the upstream's failure.
    db.prepare('DELETE FROM proxy_tag_lists').run();
    await expect(repo.listTags('alice/app', 100)).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
    fake.fault = undefined;
    await repo.manifest('alice/app', '2');
    fake.fault = '500';
    expect(await repo.listTags('alice/app', 100)).toEqual({
      tags: ['2'],
      more: false,
      // Marked, for a Warning header: this is not the upstream's list.
      warning: 'upstream up unavailable (upstream up answered 500); serving only the tags pulled through this cache',
    });
    // A later page of the pulled tags, after one of them; after a tag it never pulled the list is not
    // known: the failure, not an empty page that would end a client's walk.
    expect(await repo.listTags('alice/app', 100, '2')).toMatchObject({ tags: [], more: false });
    await expect(repo.listTags('alice/app', 100, '1')).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
  });

  test('a tag list too long to read whole: pages in the upstream\'s order, a Link past what was read, every tag once', async () => {
    freezeClock();
    // Upper and lower case: the upstream's byte order is not the registry's, and it applies `last` in its own.
    const all = Array.from({ length: 70 }, (_, i) => `${i % 2 ? 'T' : 't'}${String(i).padStart(2, '0')}`);
    for (const tag of all) fake.addManifest('alice/long', tag, DOC(tag));
    fake.tagPageSize = 3;
    const first = await repo.listTags('alice/long', 9999);
    // 20 upstream pages followed: 60 tags, and more after them rather than a list that looks whole.
    expect(first).toEqual({ tags: [...all].sort().slice(0, 60), more: true });
    expect(await walk('alice/long', 9999)).toEqual([...all].sort());
    expect(await walk('alice/long', 7)).toEqual([...all].sort());
    // The kept first 60 serve the pages that start inside them with no upstream request, also a
    // client's that asks for more than they hold (no n: 9999).
    const asked = fake.count('GET', '/v2/alice/long/tags/list');
    expect(await repo.listTags('alice/long', 5, [...all].sort()[9])).toEqual({ tags: [...all].sort().slice(10, 15), more: true });
    expect(await repo.listTags('alice/long', 9999)).toEqual(first);
    expect(await repo.listTags('alice/long', 9999, [...all].sort()[49])).toEqual({ tags: [...all].sort().slice(50, 60), more: true });
    expect(fake.count('GET', '/v2/alice/long/tags/list')).toBe(asked);

    // Upstream down: the kept 60, marked. Past them, not the tags pulled through the cache, which
    // are in the registry's order and would repeat or skip tags of this walk: the upstream's error.
    for (const tag of all.slice(0, 4)) await repo.manifest('alice/long', tag);
    pastTtl();
    fake.faultOn = /\/tags\/list$/;
    fake.fault = '500';
    expect(await repo.listTags('alice/long', 9999)).toMatchObject({ ...first, warning: expect.stringContaining('serving the tags of its last answer') });
    await expect(repo.listTags('alice/long', 9999, first!.tags.at(-1))).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
  });

  test("a tag list too long to read whole from an upstream in the spec's case-insensitive order (a Wharf): every tag once", async () => {
    // In its order B1 and B2 come after a20, where in bytes they come before: none may be lost.
    const all = [...Array.from({ length: 68 }, (_, i) => `a${String(i).padStart(2, '0')}`), 'B1', 'B2'];
    for (const tag of all) fake.addManifest('alice/folded', tag, DOC(tag));
    fake.tagOrder = compareTags;
    fake.tagPageSize = 3;
    expect(await walk('alice/folded', 5)).toEqual(all);
    expect(await walk('alice/folded', 9999)).toEqual(all);
  });

  test('an upstream that ignores last: a later page is an error, never an empty page that ends the walk', async () => {
    for (let i = 0; i < 70; i++) fake.addManifest('alice/deaf', `t${String(i).padStart(2, '0')}`, DOC(String(i)));
    fake.tagPageSize = 3;
    fake.ignoreLast = true;
    const first = await repo.listTags('alice/deaf', 9999);
    expect(first).toEqual({ tags: ['t00', 't01', 't02'], more: true });
    // Its Link leads back to the page just read: followed once, not MAX_TAG_PAGES times.
    expect(fake.count('GET', '/v2/alice/deaf/tags/list')).toBe(2);
    await expect(repo.listTags('alice/deaf', 9999, 't02')).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
  });

  test('a whole tag list is kept: within manifest_ttl no upstream request, every page from it, and served while the upstream fails', async () => {
    freezeClock();
    for (const tag of ['a', 'b', 'c', 'd', 'e']) fake.addManifest('alice/kept', tag, DOC(tag));
    const listPath = '/v2/alice/kept/tags/list';
    expect(await repo.listTags('alice/kept', 100)).toEqual({ tags: ['a', 'b', 'c', 'd', 'e'], more: false });
    const asked = fake.count('GET', listPath);
    expect(await repo.listTags('alice/kept', 2)).toEqual({ tags: ['a', 'b'], more: true });
    expect(await repo.listTags('alice/kept', 2, 'b')).toEqual({ tags: ['c', 'd'], more: true });
    expect(await repo.listTags('alice/kept', 2, 'd')).toEqual({ tags: ['e'], more: false });
    expect(fake.count('GET', listPath)).toBe(asked);

    // Past manifest_ttl: asked again, and a new tag shows.
    pastTtl();
    fake.addManifest('alice/kept', 'f', DOC('f'));
    expect((await repo.listTags('alice/kept', 100))?.tags).toEqual(['a', 'b', 'c', 'd', 'e', 'f']);
    expect(fake.count('GET', listPath)).toBe(asked + 1);

    // Past it again, the upstream failing: the kept list (none of these tags was ever pulled).
    pastTtl();
    fake.faultOn = /\/tags\/list$/;
    fake.fault = '500';
    expect(await repo.listTags('alice/kept', 3, 'c')).toEqual({
      tags: ['d', 'e', 'f'],
      more: false,
      warning: 'upstream up unavailable (upstream up answered 500); serving the tags of its last answer',
    });
    expect((await repo.listTags('alice/kept', 100))?.tags).toEqual(['a', 'b', 'c', 'd', 'e', 'f']);
  });

  test('tags come in the registry\'s order (case-insensitive), and paging them loses or repeats none, fresh or stale', async () => {
    const order = ['aa', 'Ab', 'B', 'b1', 'C', 'c2', 'V1', 'v1', 'Z', 'z0'];
    for (const tag of [...order].reverse()) fake.addManifest('alice/mixed', tag, DOC(tag));
    // The upstream pages in byte order (Z before aa), 3 tags a page, as distribution and Docker Hub do.
    fake.tagPageSize = 3;
    expect(await walk('alice/mixed', 3)).toEqual(order);
    expect((await repo.listTags('alice/mixed', 100))?.tags).toEqual(order);
    await sleep(TTL + 50);
    expect(await walk('alice/mixed', 3)).toEqual(order);
    await sleep(TTL + 50);
    expect(await walk('alice/mixed', 4)).toEqual(order);
    for (const tag of order) await repo.manifest('alice/mixed', tag);
    await sleep(TTL + 50);
    fake.faultOn = /\/tags\/list$/;
    fake.fault = '500';
    expect((await repo.listTags('alice/mixed', 100))?.tags).toEqual(order);
    expect(await repo.listTags('alice/mixed', 2, 'b1')).toMatchObject({ tags: ['C', 'c2'], more: true });
    db.prepare('DELETE FROM proxy_tag_lists').run();
    // From the pulled tags alone, in the same order.
    expect(await walk('alice/mixed', 3)).toEqual(order);
  });

  test('an upstream refusing the repository (401 with a fresh token): kept tag list and referrers still served', async () => {
    const denied = new PullThroughRepository(
      new HttpUpstream({ name: 'up', url: fake.url, retries: 0, username: 'alice', password: 's3cret', timeouts: { connect: 300, firstByte: 300, idle: 300 } }),
      new CacheIndex(db),
      new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp')),
      fills,
      { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 0 },
    );
    fake.auth = 'bearer';
    const subject = fake.addManifest('alice/app', '1', DOC('a'));
    const referrer = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: fake.addManifest('alice/app', 'sig', DOC('s')), size: 10 };
    fake.referrers.set(`alice/app@${subject}`, [referrer]);
    expect((await denied.listTags('alice/app', 100))?.tags).toEqual(['1', 'sig']);
    expect(await denied.referrers('alice/app', subject)).toEqual([referrer]);
    await sleep(TTL + 50);
    fake.faultOn = /\/v2\/alice\//;
    fake.fault = 'deny';
    expect((await denied.listTags('alice/app', 100))?.tags).toEqual(['1', 'sig']);
    expect(await denied.referrers('alice/app', subject)).toEqual([referrer]);
    expect(fake.requests.some((r) => r.path === '/v2/alice/app/tags/list' && r.authorization?.startsWith('Bearer '))).toBe(true);
    // Nothing kept: the refusal, as an unknown name.
    await expect(denied.listTags('alice/other', 100)).rejects.toMatchObject({ code: 'NAME_UNKNOWN' });
  });

  test('clients asking for one tag list or referrers at once share one upstream request', async () => {
    const subject = fake.addManifest('alice/app', '1', DOC('a'));
    fake.referrers.set(`alice/app@${subject}`, []);
    await repo.listTags('alice/app', 100);
    await repo.referrers('alice/app', subject);
    await sleep(TTL + 50);
    const before = { tags: fake.count('GET', '/v2/alice/app/tags/list'), referrers: fake.count('GET', `/v2/alice/app/referrers/${subject}`) };
    const answers = await Promise.all([
      ...Array.from({ length: 10 }, () => repo.listTags('alice/app', 100)),
      ...Array.from({ length: 10 }, () => repo.referrers('alice/app', subject)),
    ]);
    expect(answers.slice(0, 10)).toEqual(Array(10).fill({ tags: ['1'], more: false }));
    expect(answers.slice(10)).toEqual(Array(10).fill([]));
    expect(fake.count('GET', '/v2/alice/app/tags/list')).toBe(before.tags + 1);
    expect(fake.count('GET', `/v2/alice/app/referrers/${subject}`)).toBe(before.referrers + 1);
  });
  /**
   * A repository over the fake on `own`, a connection to a database file that `other` (another
   * process's, as `wharf gc` from the command line) shares; both closed after `body`.
   */
  async function withSharedDatabase(
    name: string,
    body: (c: { own: SqliteDatabase; other: SqliteDatabase; store: FsBlobStore; locked: PullThroughRepository }) => Promise<void>,
  ): Promise<void> {
    const file = join(dir, name);
    const own = openDatabase(file);
    const other = openDatabase(file);
    try {
      const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
      const upstream = new HttpUpstream({ name: 'up', url: fake.url, retries: 0 });
      const locked = new PullThroughRepository(upstream, new CacheIndex(own), store, fills, { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 0 });
      await body({ own, other, store, locked });
    } finally {
      own.close();
      other.close();
    }
  }

  test('a cache write waits for no lock another process holds: it lands with the deferred writes once the lock is gone', async () => {
    await withSharedDatabase('locked.db', async ({ own, other, locked }) => {
      const digest = fake.addManifest('alice/app', '1', DOC('a'));
      // Another writer holds the lock (a `wharf gc` from the command line): SQLite's busy handler
      // would sleep on this thread, so the holder could never let go, and the write would be lost.
      other.exec('BEGIN IMMEDIATE');
      expect((await locked.manifest('alice/app', '1'))?.digest).toBe(digest);
      other.exec('COMMIT');
      expect(flushDeferredWrites(own)).toBe(true);
      const index = new CacheIndex(other);
      expect(index.tag('up', 'alice/app', '1')?.digest).toBe(digest);
      expect(index.manifest('up', 'alice/app', digest)?.digest).toBe(digest);

      // A write queued while the lock was held does not undo a later one of the same row made at once.
      const ownIndex = new CacheIndex(own);
      other.exec('BEGIN IMMEDIATE');
      ownIndex.putTag('up', 'alice/app', 'gone', digest);
      other.exec('COMMIT');
      ownIndex.dropTag('up', 'alice/app', 'gone');
      expect(flushDeferredWrites(own)).toBe(true);
      expect(index.tag('up', 'alice/app', 'gone')).toBeUndefined();
    });
  });

  test('a blob filled while another process holds the lock is served from the cache meanwhile: one upstream GET, for this repository and for another', async () => {
    await withSharedDatabase('locked-blobs.db', async ({ own, other, store, locked }) => {
      const bytes = randomBytes(256 * 1024);
      const digest = fake.addBlob(bytes);
      other.exec('BEGIN IMMEDIATE');
      const first = await locked.blob('alice/app', digest);
      expect((await readAll((await locked.openBlob('alice/app', first!))!)).equals(bytes)).toBe(true);
      await fills.settled();
      // Still locked: the rows wait to be written, and the cache knows the blob all the same.
      expect(new CacheIndex(other).anyBlob(digest)).toBeUndefined();
      const again = await locked.blob('alice/app', digest);
      expect((await readAll((await locked.openBlob('alice/app', again!))!)).equals(bytes)).toBe(true);
      expect(fake.count('GET', `/v2/alice/app/blobs/${digest}`)).toBe(1);
      // Another repository holding it upstream: the cached copy too (the upstream is asked whether it has it, not for it).
      const elsewhere = await locked.blob('bob/other', digest);
      expect((await readAll((await locked.openBlob('bob/other', elsewhere!))!)).equals(bytes)).toBe(true);
      expect(fake.count('GET', `/v2/bob/other/blobs/${digest}`)).toBe(0);
      other.exec('COMMIT');
      expect(flushDeferredWrites(own)).toBe(true);
      expect(new CacheIndex(other).blob('up', 'alice/app', digest)).toBe(bytes.length);
      expect((await readAll((await locked.openBlob('alice/app', (await locked.blob('alice/app', digest))!))!)).equals(bytes)).toBe(true);
      expect(fake.count('GET', `/v2/alice/app/blobs/${digest}`)).toBe(1);
      // Written, the rows are the truth again: a purge by another process ends them here too.
      await new CacheEviction(other, store).purge('up', 'alice/app');
      await new CacheEviction(other, store).purge('up', 'bob/other');
      expect(new CacheIndex(own).blob('up', 'alice/app', digest)).toBeUndefined();
      expect(new CacheIndex(own).anyBlob(digest)).toBeUndefined();
    });
  });
});
