import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { FsBlobStore, openDatabase, type SqliteDatabase } from '@wharf/registry-core';
import { BlobFills } from '../src/blob-fills.js';
import { CacheIndex } from '../src/cache-index.js';
import { HttpUpstream } from '../src/http-upstream.js';
import { MirroredUpstream, type MirrorOptions } from '../src/mirrors.js';
import { PullThroughRepository } from '../src/pull-through.js';
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
  function upstream(options: MirrorOptions): MirroredUpstream {
    return new MirroredUpstream(
      mirrors.map((m) => new HttpUpstream({ name: 'up', url: m.url, retries: 0, timeouts: quick })),
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
    const repo = through(upstream({ strategy, hedgeDelay: 200 }));
    // Every mirror measured, mirror 0 the fastest (adaptive's first choice too).
    for (const m of mirrors) m.addManifest('alice/app', '1', DOC('a'));
    mirrors[1]!.delayMs = 150;
    mirrors[2]!.delayMs = 150;
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
    const repo = through(upstream({ strategy: 'adaptive' }));
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
    const repo = through(upstream({ strategy: 'hedged', hedgeDelay: 100 }));
    expect(await repo.manifest('alice/app', '1')).toBeDefined();
    expect(mirrors[0]!.requests.length).toBe(1);
    for (let i = 0; i < 3; i++) expect(await repo.manifest('alice/app', '1')).toBeDefined();
    expect(mirrors[0]!.requests.length).toBe(1);
  });
});
