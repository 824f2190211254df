// The outage back-off's window: which answers end it and which do not, with an upstream whose answers the test controls.
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { FsBlobStore, openDatabase, type Digest, type SqliteDatabase } from '@wharf/registry-core';
import { BlobFills } from '../src/blob-fills.js';
import { CacheIndex } from '../src/cache-index.js';
import { PullThroughRepository } from '../src/pull-through.js';
import { UpstreamError, type Upstream, type UpstreamHead, type UpstreamManifest } from '../src/upstream.js';

const TTL = 50;
const RECHECK = 500;
const DOC = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: {}, layers: [] }));
const DIGEST = `sha256:${createHash('sha256').update(DOC).digest('hex')}` as Digest;

/** An upstream whose every answer is a function the test sets, counting the calls. */
class Scripted implements Upstream {
  readonly name = 'up';
  calls: string[] = [];
  onHead: (repo: string, ref: string) => Promise<UpstreamHead | undefined> = async () => ({ digest: DIGEST, mediaType: 'application/vnd.oci.image.manifest.v1+json' });
  onStat: (repo: string) => Promise<{ size?: number } | undefined> = async () => ({ size: 1 });
  head(repo: string, ref: string) { this.calls.push(`HEAD ${repo}:${ref}`); return this.onHead(repo, ref); }
  async manifest(repo: string, ref: string): Promise<UpstreamManifest | undefined> { this.calls.push(`GET ${repo}:${ref}`); return { digest: DIGEST, mediaType: 'application/vnd.oci.image.manifest.v1+json', bytes: DOC }; }
  async blob() { return undefined; }
  statBlob(repo: string) { this.calls.push(`STAT ${repo}`); return this.onStat(repo); }
  async tags() { return undefined; }
  async referrers() { return undefined; }
}

describe('the outage back-off window', () => {
  let dir: string;
  let db: SqliteDatabase;
  let up: Scripted;
  let repo: PullThroughRepository;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-backoff-'));
    await mkdir(join(dir, 'tmp'));
    db = openDatabase(':memory:');
    up = new Scripted();
    repo = newRepository();
  });
  /** A proxy of `up` on the test's database: a second one sees what the first cached, with windows of its own. */
  function newRepository(): PullThroughRepository {
    const store = new FsBlobStore(join(dir, 'blobs'), join(dir, 'tmp'));
    return new PullThroughRepository(up, new CacheIndex(db), store, new BlobFills({ store, tempRoot: join(dir, 'tmp') }), {
      manifestTtl: TTL, absentTtl: 60_000, rateLimitFloor: 0, outageBackoff: 30_000, revalidateTimeout: 2_000, outageRecheckInterval: RECHECK,
    });
  }
  afterEach(async () => {
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  test("one repository's 500 is served stale but holds back no other repository's check; a 503 holds back all", async () => {
    await repo.manifest('a/app', '1');
    await repo.manifest('b/app', '1');
    /** Past the tags' TTL, a/app's re-check fails with `status`; b/app's is answered. */
    const failing = async (status: number): Promise<void> => {
      await sleep(TTL + 10);
      up.onHead = async (r) => {
        if (r === 'a/app') throw new UpstreamError('server-error', `upstream up answered ${status}`, status);
        return { digest: DIGEST, mediaType: 'application/vnd.oci.image.manifest.v1+json' };
      };
      expect((await repo.manifest('a/app', '1'))?.warning).toMatch(new RegExp(`answered ${status}`));
    };
    await failing(500);
    const before = up.calls.length;
    // b/app's tag is checked, and served as the upstream has it: no warning.
    expect((await repo.manifest('b/app', '1'))?.warning).toBeUndefined();
    expect(up.calls.slice(before)).toEqual(['HEAD b/app:1']);
    // A 503 is the upstream down: every other cached tag is then served stale without asking.
    await failing(503);
    const after = up.calls.length;
    expect((await repo.manifest('b/app', '1'))?.warning).toMatch(/unavailable/);
    expect(up.calls.slice(after)).toEqual([]);
  });

  test('an answer to a request sent before the outage began does not end the back-off', async () => {
    await repo.manifest('a/app', '1');
    await sleep(TTL + 10);
    // R1: a blob HEAD sent while the upstream was fine; its answer comes late.
    let answerR1!: (v: { size: number }) => void;
    up.onStat = () => new Promise((r) => (answerR1 = r));
    const r1 = repo.statBlob('b/other', `sha256:${'1'.repeat(64)}` as Digest);
    await sleep(5);
    // R2: the tag's re-check fails: a 503 (outage) -> back-off of 30 s.
    up.onHead = async () => { throw new UpstreamError('server-error', 'upstream up answered 503', 503); };
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    const before = up.calls.length;
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    expect(up.calls.length).toBe(before); // held back: served stale without asking
    // R1's answer (sent before the outage) arrives now.
    answerR1({ size: 1 });
    await r1;
    // It says nothing of the upstream since: the cached tag is still served without asking.
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    expect(up.calls.slice(before)).toEqual([]);
  });

  test("a 429's window holds when a concurrent re-check then fails otherwise (a 503): neither shortened nor ended by the next answer", async () => {
    await repo.manifest('a/app', '1');
    await repo.manifest('c/app', '1');
    await sleep(TTL + 10);
    // c/app's re-check is in flight and will fail with a 503 (no Retry-After) after a's 429.
    let failC!: () => void;
    up.onHead = (r) =>
      r === 'a/app'
        ? Promise.reject(new UpstreamError('rate-limited', 'upstream up answered 429', 429, 3600))
        : new Promise((_, reject) => (failC = () => reject(new UpstreamError('server-error', 'upstream up answered 503', 503))));
    const c = repo.manifest('c/app', '1');
    await sleep(5);
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/); // 429, Retry-After 3600 s
    failC();
    expect((await c)?.warning).toMatch(/unavailable/);
    // Any answer now (a blob HEAD, which does not count against the limit)...
    up.onStat = async () => ({ size: 1 });
    await repo.statBlob('b/other', `sha256:${'2'.repeat(64)}` as Digest);
    const before = up.calls.length;
    // ...and a's tag is still not asked for: the Retry-After's 3600 s hold.
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    expect(up.calls.slice(before)).toEqual([]);
  });
  test('an upstream back within the window is found by a re-check in the background, not when the 30 s end', async () => {
    await repo.manifest('a/app', '1');
    await repo.manifest('b/app', '1');
    await sleep(TTL + 10);
    up.onHead = async () => { throw new UpstreamError('server-error', 'upstream up answered 503', 503); };
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    // The upstream is back at once; within the re-check interval nobody asks it.
    up.onHead = async () => ({ digest: DIGEST, mediaType: 'application/vnd.oci.image.manifest.v1+json' });
    const before = up.calls.length;
    expect((await repo.manifest('b/app', '1'))?.warning).toMatch(/unavailable/);
    expect(up.calls.slice(before)).toEqual([]);
    await sleep(RECHECK + 20);
    // This client is served stale at once; its tag's HEAD goes in the background, and its answer ends the window.
    expect((await repo.manifest('b/app', '1'))?.warning).toMatch(/unavailable/);
    expect(up.calls.slice(before)).toEqual(['HEAD b/app:1']);
    await sleep(10);
    expect((await repo.manifest('a/app', '1'))?.warning).toBeUndefined();
    expect(up.calls.slice(before)).toEqual(['HEAD b/app:1', 'HEAD a/app:1']);
  });

  test('a re-check that fails in the background keeps the window, and the next goes an interval later; none within a 429\'s', async () => {
    await repo.manifest('a/app', '1');
    await sleep(TTL + 10);
    up.onHead = async () => { throw new UpstreamError('server-error', 'upstream up answered 503', 503); };
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    await sleep(RECHECK + 20);
    const before = up.calls.length;
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    await sleep(10);
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    expect(up.calls.slice(before)).toEqual(['HEAD a/app:1']);
    await sleep(RECHECK + 20);
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    expect(up.calls.slice(before)).toEqual(['HEAD a/app:1', 'HEAD a/app:1']);

    // A rate limit's window is the upstream's to end: no re-check within it.
    const limited = newRepository();
    await sleep(TTL + 10);
    up.onHead = async () => { throw new UpstreamError('rate-limited', 'upstream up answered 429', 429, 3600); };
    expect((await limited.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    await sleep(RECHECK + 20);
    const after = up.calls.length;
    expect((await limited.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    await sleep(10);
    expect(up.calls.slice(after)).toEqual([]);
  });
  test("a 503's Retry-After holds the re-checks until it passes; then the first answer ends the window", async () => {
    await repo.manifest('a/app', '1');
    await sleep(TTL + 10);
    up.onHead = async () => { throw new UpstreamError('server-error', 'upstream up answered 503', 503, 2); };
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    up.onHead = async () => ({ digest: DIGEST, mediaType: 'application/vnd.oci.image.manifest.v1+json' });
    const before = up.calls.length;
    // Past the re-check interval, within the Retry-After's 2 s: nobody asks.
    await sleep(RECHECK + 20);
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    await sleep(10);
    expect(up.calls.slice(before)).toEqual([]);
    // Past it: a re-check goes, and its answer ends the window (30 s).
    await sleep(2000 - RECHECK);
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    await sleep(10);
    expect(up.calls.slice(before)).toEqual(['HEAD a/app:1']);
    expect((await repo.manifest('a/app', '1'))?.warning).toBeUndefined();
  });
  test("a background re-check answered 429 with a Retry-After holds the next ones for as long", async () => {
    await repo.manifest('a/app', '1');
    await sleep(TTL + 10);
    up.onHead = async () => { throw new UpstreamError('server-error', 'upstream up answered 503', 503); };
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    up.onHead = async () => { throw new UpstreamError('rate-limited', 'upstream up answered 429', 429, 3600); };
    await sleep(RECHECK + 20);
    const before = up.calls.length;
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    await sleep(10);
    expect(up.calls.slice(before)).toEqual(['HEAD a/app:1']);
    await sleep(RECHECK + 20);
    expect((await repo.manifest('a/app', '1'))?.warning).toMatch(/unavailable/);
    await sleep(10);
    expect(up.calls.slice(before)).toEqual(['HEAD a/app:1']);
  });
});
