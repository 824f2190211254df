import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pino } from 'pino';
import { FsBlobStore, digestOf, openDatabase, type SqliteDatabase } from '@wharf/registry-core';
import { CacheEviction, CacheIndex } from '@wharf/proxy';
import { CacheSweeper } from '../../src/cache-sweeper.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** When the sweeper runs its sweeps: the clock is jest's, the database and files are real. */
describe('proxy cache sweeper', () => {
  let dir: string;
  let db: SqliteDatabase;
  let store: FsBlobStore;
  let index: CacheIndex;
  let eviction: CacheEviction;
  let sweeper: CacheSweeper | undefined;
  let seq = 0;

  beforeEach(async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
    dir = await mkdtemp(join(tmpdir(), 'wharf-sweeper-'));
    await mkdir(join(dir, 'tmp'));
    db = openDatabase(join(dir, 'db'));
    store = new FsBlobStore(join(dir, 'proxy'), join(dir, 'tmp'));
    index = new CacheIndex(db);
    eviction = new CacheEviction(db, store);
  });
  afterEach(async () => {
    await sweeper?.stop();
    sweeper = undefined;
    jest.useRealTimers();
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** A cached blob of `size` bytes, as a fill leaves it. */
  async function cached(size: number): Promise<void> {
    const bytes = Buffer.alloc(size, `blob ${++seq} `);
    const blob = await store.ingest(Readable.from([bytes]), { digest: digestOf(bytes) });
    index.putBlob(blob.digest, blob.size, Date.now());
    index.link('up', 'r/a', blob.digest);
  }
  const total = () => (db.prepare('SELECT COALESCE(SUM(size), 0) AS total FROM proxy_blobs').get() as { total: number }).total;
  const policy = { cacheTtl: 90 * DAY, maxSize: 1000 };
  const start = () => new CacheSweeper(eviction, policy, HOUR, pino({ level: 'silent' }));
  /** Lets the sweep the timers started finish its file removals (real I/O). */
  const settle = async () => {
    for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
    await eviction.idle();
  };

  test('a cache already past max_size at the start is swept a second later, not at the first interval', async () => {
    for (let i = 0; i < 4; i++) await cached(400);
    sweeper = start();
    await jest.advanceTimersByTimeAsync(999);
    expect(total()).toBe(1600);
    await jest.advanceTimersByTimeAsync(1);
    await settle();
    expect(total()).toBe(800);
  });

  test('sweeps that stored blobs start are 10 s apart, also when a blob is stored during one', async () => {
    const sweeps = jest.spyOn(eviction, 'sweep');
    await cached(400);
    sweeper = start();
    await jest.advanceTimersByTimeAsync(30_000);
    await settle();
    expect(sweeps).toHaveBeenCalledTimes(0); // within max_size at the start: no sweep

    // Downloads take the cache past max_size: a sweep a second later.
    for (let i = 0; i < 3; i++) {
      await cached(400);
      sweeper.stored(400);
    }
    await jest.advanceTimersByTimeAsync(1_000);
    expect(sweeps).toHaveBeenCalledTimes(1);
    expect(eviction.sweeping).toBe(true);
    // One more is stored while it removes files (its row lands after): past max_size again once it is done.
    sweeper.stored(400);
    await cached(400);
    await settle();
    expect(eviction.overSize(policy.maxSize)).toBe(true);

    // Not a second sweep right after the first: 10 s after the first began.
    await jest.advanceTimersByTimeAsync(8_000);
    await settle();
    expect(sweeps).toHaveBeenCalledTimes(1);
    await jest.advanceTimersByTimeAsync(2_000);
    await settle();
    expect(sweeps).toHaveBeenCalledTimes(2);
    expect(total()).toBeLessThanOrEqual(policy.maxSize);
  });
  test('eviction_interval 0: no sweep on a timer, only those downloads past max_size start', async () => {
    const sweeps = jest.spyOn(eviction, 'sweep');
    sweeper = new CacheSweeper(eviction, policy, 0, pino({ level: 'silent' }));
    await jest.advanceTimersByTimeAsync(60_000);
    await settle();
    expect(sweeps).toHaveBeenCalledTimes(0);
    for (let i = 0; i < 3; i++) {
      await cached(400);
      sweeper.stored(400);
    }
    await jest.advanceTimersByTimeAsync(1_000);
    await settle();
    expect(sweeps).toHaveBeenCalledTimes(1);
    expect(total()).toBeLessThanOrEqual(policy.maxSize);
  });
});
