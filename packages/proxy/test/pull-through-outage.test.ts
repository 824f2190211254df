import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { FsBlobStore, openDatabase, type SqliteDatabase } from '@wharf/registry-core';
import { BlobFills } from '../src/blob-fills.js';
import { CacheIndex } from '../src/cache-index.js';
import { HttpUpstream } from '../src/http-upstream.js';
import { PullThroughRepository } from '../src/pull-through.js';
import { FakeUpstream } from './helpers/fake-upstream.js';

const DOC = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: {}, layers: [] };
const TTL = 100;

/**
 * Fakes the wall clock only, which stands still until the test moves it: manifest_ttl and the back-off
 * windows are measured with Date.now(), so "within the window" holds however slow the machine is.
 * Timers, sockets and I/O stay real.
 */
function freezeClock(): void {
  jest.useFakeTimers({ doNotFake: ['hrtime', 'nextTick', 'performance', 'queueMicrotask', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
}

describe('PullThroughRepository during an upstream outage', () => {
  let fake: FakeUpstream;
  let dir: string;
  let db: SqliteDatabase;
  let repo: PullThroughRepository;
  let fills: BlobFills;

  beforeEach(async () => {
    fake = await FakeUpstream.start();
    dir = await mkdtemp(join(tmpdir(), 'wharf-outage-'));
    await mkdir(join(dir, 'tmp'));
    db = openDatabase(':memory:');
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    const upstream = new HttpUpstream({ name: 'up', url: fake.url, retries: 0, timeouts: { connect: 300, firstByte: 300, idle: 300 } });
    fills = new BlobFills({ store, tempRoot: join(dir, 'tmp') });
    repo = new PullThroughRepository(upstream, new CacheIndex(db), store, fills, {
      manifestTtl: TTL,
      absentTtl: 60_000,
      rateLimitFloor: 0,
      outageBackoff: 400,
    });
  });
  afterEach(async () => {
    jest.useRealTimers();
    await fake.close();
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('a layer cached for another repository is served, while the upstream is down, to a repository whose cached manifest lists it, and to no other', async () => {
    const layer = Buffer.from('a layer two images share');
    const digest = fake.addBlob(layer);
    const config = fake.addBlob(Buffer.from('{}'));
    const layerOf = (d: string, extra: Record<string, unknown> = {}) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: d, size: layer.length, ...extra });
    const image = (seed: string, layers: unknown[]) => ({
      ...DOC,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 2 },
      layers,
      annotations: { seed },
    });
    fake.addManifest('alice/app', '1', image('a', [layerOf(digest)]));
    fake.addManifest('bob/tool', '1', image('b', [layerOf(digest)]));
    // A digest in an annotation is no layer; nor is a layer kept elsewhere (`urls`, foreign), which a
    // registry takes in a manifest without holding it: anyone could list a private layer so.
    fake.addManifest('carol/other', '1', { ...image('c', []), annotations: { note: digest } });
    fake.addManifest('erin/foreign', '1', image('e', [layerOf(digest, { urls: ['https://example.com/layer'] })]));
    fake.addManifest('frank/foreign', '1', image('f', [layerOf(digest, { mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip' })]));
    // alice/app pulled whole; the others' manifests only (bob's client had the layer).
    await repo.manifest('alice/app', '1');
    const body = (await repo.openBlob('alice/app', (await repo.blob('alice/app', digest))!))!;
    const chunks: Buffer[] = [];
    for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
    expect(Buffer.concat(chunks).equals(layer)).toBe(true);
    await fills.settled();
    for (const name of ['bob/tool', 'carol/other', 'erin/foreign', 'frank/foreign']) await repo.manifest(name, '1');
    // A refusal is no outage: the repository may be gone, or private, upstream.
    fake.fault = 'deny';
    fake.faultTimes = Infinity;
    await expect(repo.blob('bob/tool', digest)).rejects.toBeDefined();
    fake.fault = '500';
    // Before: 502 for bob/tool, whose image then failed to pull although every byte of it was cached.
    expect(await repo.statBlob('bob/tool', digest)).toEqual({ digest, size: layer.length });
    expect(await repo.blob('bob/tool', digest)).toEqual({ digest, size: layer.length });
    const served = (await repo.openBlob('bob/tool', { digest, size: layer.length })) as Readable;
    const again: Buffer[] = [];
    for await (const chunk of served as AsyncIterable<Buffer>) again.push(chunk);
    expect(Buffer.concat(again).equals(layer)).toBe(true);
    for (const other of ['carol/other', 'erin/foreign', 'frank/foreign', 'dave/none']) {
      await expect(repo.blob(other, digest)).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
      await expect(repo.statBlob(other, digest)).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
    }
    // Served for the outage only, not linked: back up, an upstream that says bob/tool lacks it is believed.
    fake.fault = undefined;
    await sleep(450);
    fake.blobs.delete(digest);
    expect(await repo.blob('bob/tool', digest)).toBeUndefined();
  });

  test('during an outage a layer that came through another upstream is not served, whatever this one\'s manifests list', async () => {
    const other = await FakeUpstream.start();
    try {
      const layer = Buffer.from('a private layer of another upstream');
      const digest = other.addBlob(layer);
      fake.addBlob(layer);
      const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
      const otherRepo = new PullThroughRepository(new HttpUpstream({ name: 'corp', url: other.url, retries: 0 }), new CacheIndex(db), store, fills, { manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 0 });
      const body = (await otherRepo.openBlob('team/secret', (await otherRepo.blob('team/secret', digest))!))!;
      for await (const _ of body as AsyncIterable<Buffer>) void _;
      await fills.settled();
      fake.addManifest('mallory/x', '1', { ...DOC, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest, size: layer.length }] });
      await repo.manifest('mallory/x', '1');
      fake.fault = '500';
      fake.faultTimes = Infinity;
      await expect(repo.blob('mallory/x', digest)).rejects.toMatchObject({ code: 'UPSTREAM_ERROR' });
    } finally {
      await other.close();
    }
  });

  test('after one re-check failed with the upstream down (503), cached tags are served at once without asking it again', async () => {
    freezeClock();
    fake.addManifest('alice/app', '1', DOC);
    await repo.manifest('alice/app', '1');
    jest.setSystemTime(Date.now() + TTL + 20);
    fake.retryAfter = '';
    fake.fault = '503';
    expect((await repo.manifest('alice/app', '1'))?.warning).toBeDefined();
    const asked = fake.requests.length;
    // Inside the 400 ms back-off (the last read 399 ms after the failed re-check).
    for (let i = 0; i < 5; i++) {
      expect((await repo.manifest('alice/app', '1'))?.warning).toMatch(/unavailable/);
      jest.setSystemTime(Date.now() + (i < 3 ? 100 : 99));
    }
    expect(fake.requests.length).toBe(asked);
  });

  test('an answer that is no manifest (a captive portal) with the tag cached: the cached copy, with a warning, and the next request asks again', async () => {
    fake.addManifest('alice/app', '1', DOC);
    const first = await repo.manifest('alice/app', '1');
    await sleep(TTL + 20);
    fake.fault = 'portal';
    const stale = await repo.manifest('alice/app', '1');
    expect(stale?.digest).toBe(first?.digest);
    expect(stale?.warning).toMatch(/sent no valid manifest/);
    // Not an outage: no back-off, the upstream is asked again at once.
    const asked = fake.requests.length;
    fake.fault = undefined;
    expect((await repo.manifest('alice/app', '1'))?.warning).toBeUndefined();
    expect(fake.requests.length).toBeGreaterThan(asked);
  });

  test('once the back-off window has passed, the upstream is asked again and a recovery is seen', async () => {
    fake.addManifest('alice/app', '1', DOC);
    await repo.manifest('alice/app', '1');
    await sleep(TTL + 20);
    fake.fault = '500';
    await repo.manifest('alice/app', '1');
    fake.fault = undefined;
    await sleep(450);
    const fresh = await repo.manifest('alice/app', '1');
    expect(fresh?.warning).toBeUndefined();
  });

  test('an upstream that answers another request within the window is back: cached tags are checked again at once, and a moved tag is seen', async () => {
    fake.addManifest('alice/app', '1', DOC);
    await repo.manifest('alice/app', '1');
    await sleep(TTL + 20);
    fake.fault = '500';
    expect((await repo.manifest('alice/app', '1'))?.warning).toMatch(/unavailable/);
    fake.fault = undefined;
    // Within the 400 ms window: another repository's pull is answered, and the tag moved meanwhile.
    fake.addManifest('bob/other', '1', DOC);
    expect((await repo.manifest('bob/other', '1'))?.warning).toBeUndefined();
    const moved = fake.addManifest('alice/app', '1', { ...DOC, annotations: { moved: 'yes' } });
    const fresh = await repo.manifest('alice/app', '1');
    expect(fresh?.warning).toBeUndefined();
    expect(fresh?.digest).toBe(moved);
  });

  test("a 429's window is not ended by an answer to another request: the limit may still hold for manifests", async () => {
    freezeClock();
    fake.addManifest('alice/app', '1', DOC);
    await repo.manifest('alice/app', '1');
    jest.setSystemTime(Date.now() + TTL + 20);
    fake.fault = '429';
    fake.retryAfter = '1';
    expect((await repo.manifest('alice/app', '1'))?.warning).toBeDefined();
    fake.fault = undefined;
    jest.setSystemTime(Date.now() + 10);
    const layer = fake.addBlob(Buffer.from('a layer'));
    // An answer (the blob's size) from the upstream, for a request that does not count against the limit.
    expect((await repo.statBlob('alice/app', layer))?.digest).toBe(layer);
    const asked = fake.requests.length;
    expect((await repo.manifest('alice/app', '1'))?.warning).toMatch(/unavailable/);
    expect(fake.requests.length).toBe(asked);
  });
});
