import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { globToRegExp, matchingRule, planRetention, type RetentionRule } from '../src/gc/retention.js';
import type { TagRecord } from '../src/sqlite/sqlite-lifecycle.js';
import { deferredWrites } from '../src/sqlite/deferred-writes.js';
import { gcFixture, pushImage, type GcFixture } from './gc-helpers.js';

const DAY = 86_400_000;

describe('retention rules', () => {
  test('repository globs: * stays within a component, ** crosses them, ? is one character', () => {
    expect(globToRegExp('team/*').test('team/app')).toBe(true);
    expect(globToRegExp('team/*').test('team/app/sub')).toBe(false);
    expect(globToRegExp('team/*').test('teams/app')).toBe(false);
    expect(globToRegExp('team/**').test('team/app/sub')).toBe(true);
    expect(globToRegExp('*').test('alpine')).toBe(true);
    expect(globToRegExp('*').test('alice/app')).toBe(false);
    expect(globToRegExp('alice/app-?').test('alice/app-1')).toBe(true);
    expect(globToRegExp('alice/app.x').test('alice/appax')).toBe(false);
  });

  test('the first matching rule applies', () => {
    const rules: RetentionRule[] = [{ repositories: 'team/special', keepLast: 50 }, { repositories: 'team/*', keepLast: 3 }];
    expect(matchingRule(rules, 'team/special')?.keepLast).toBe(50);
    expect(matchingRule(rules, 'team/other')?.keepLast).toBe(3);
    expect(matchingRule(rules, 'alice/app')).toBeUndefined();
  });

  const now = 1_000 * DAY;
  const tag = (name: string, ageDays: number, pulledDaysAgo?: number): TagRecord => ({
    name,
    digest: `sha256:${name.padEnd(64, '0').replace(/[^0-9a-f]/g, 'a').slice(0, 64)}`,
    updatedAt: now - ageDays * DAY,
    ...(pulledDaysAgo !== undefined ? { lastPulledAt: now - pulledDaysAgo * DAY } : {}),
  });
  const names = (list: { tag: string }[]) => list.map((t) => t.tag).sort();

  test('keep_last alone keeps the newest N (and keep_tags matches) and retires the rest', () => {
    const tags = [tag('a', 1), tag('b', 2), tag('c', 3), tag('v1', 400), tag('d', 5)];
    const out = planRetention('team/app', tags, { repositories: 'team/*', keepLast: 2, keepTags: /^v\d+/ }, now);
    expect(names(out)).toEqual(['c', 'd']);
    expect(out.every((t) => t.reason === 'keep_last')).toBe(true);
  });

  test('delete_older_than and delete_unpulled_for retire only what they match, outside the protected tags', () => {
    const tags = [tag('new', 1), tag('old-pulled', 100, 2), tag('old', 100), tag('mid-unpulled', 40), tag('mid-pulled', 40, 5), tag('v2', 500)];
    const older = planRetention('r', tags, { repositories: '*', deleteOlderThan: 90 * DAY, keepTags: /^v\d+/ }, now);
    expect(names(older)).toEqual(['old', 'old-pulled']);
    const unpulled = planRetention('r', tags, { repositories: '*', deleteUnpulledFor: 30 * DAY, keepTags: /^v\d+/ }, now);
    expect(names(unpulled)).toEqual(['mid-unpulled', 'old']);
    expect(unpulled.every((t) => t.reason === 'delete_unpulled_for')).toBe(true);
    const both = planRetention('r', tags, { repositories: '*', keepLast: 1, deleteOlderThan: 90 * DAY, deleteUnpulledFor: 30 * DAY }, now);
    expect(names(both)).toEqual(['mid-unpulled', 'old', 'old-pulled', 'v2']);
  });
});

describe('retention with garbage collection', () => {
  let fx: GcFixture;

  beforeEach(async () => {
    fx = await gcFixture();
  });

  afterEach(async () => {
    await fx.close();
  });

  test('a pull by tag records last_pulled_at, at most once a minute per tag; a pull by digest does not', async () => {
    const image = await pushImage(fx.registry, 'alice/app', '1', ['layer']);
    const life = fx.metadata.lifecycle();
    expect(life.tags('alice/app')[0]!.lastPulledAt).toBeUndefined();
    await fx.registry.manifest('alice/app', image.digest);
    expect(life.tags('alice/app')[0]!.lastPulledAt).toBeUndefined();
    const before = Date.now();
    await fx.registry.manifest('alice/app', '1');
    // The pull itself writes nothing: the note waits to go with others in one transaction, and
    // tags() (what retention reads) writes what waits first.
    expect(deferredWrites(fx.db).size).toBe(1);
    const first = life.tags('alice/app')[0]!.lastPulledAt!;
    expect(deferredWrites(fx.db).size).toBe(0);
    expect(first).toBeGreaterThanOrEqual(before);
    life.notePull('alice/app', '1', first + 30_000);
    expect(life.tags('alice/app')[0]!.lastPulledAt).toBe(first);
    life.notePull('alice/app', '1', first + 61_000);
    expect(life.tags('alice/app')[0]!.lastPulledAt).toBe(first + 61_000);
  });

  test('retention runs before the mark: retired tags, their manifests and unique blobs go in one run; --dry-run only lists', async () => {
    const images = [];
    for (const t of ['build-1', 'build-2', 'build-3', 'v1.0', 'build-4']) {
      images.push(await pushImage(fx.registry, 'team/app', t, [`base`, `top of ${t}`]));
      await new Promise((r) => setTimeout(r, 5)); // distinct updated_at
    }
    const other = await pushImage(fx.registry, 'alice/app', 'build-1', ['untouched']);
    const retention: RetentionRule[] = [{ repositories: 'team/*', keepLast: 2, keepTags: /^v\d+/ }];

    // The newest two are build-4 and v1.0 (which keep_tags protects anyway).
    const dry = await fx.collect({ retention, dryRun: true });
    expect(dry.tags.map((t) => t.tag).sort()).toEqual(['build-1', 'build-2', 'build-3']);
    expect(dry.manifests.map((m) => m.digest).sort()).toEqual([images[0]!.digest, images[1]!.digest, images[2]!.digest].sort());
    expect((await fx.registry.tags('team/app', {}))!.sort()).toEqual(['build-1', 'build-2', 'build-3', 'build-4', 'v1.0']);

    // delete_untagged is off: the manifests retention left untagged still go, and their own top layers.
    const real = await fx.collect({ retention });
    expect(real.tags.map((t) => t.tag).sort()).toEqual(['build-1', 'build-2', 'build-3']);
    expect(real.manifests).toEqual(dry.manifests);
    expect(real.blobs.map((b) => b.digest).sort()).toEqual(dry.blobs.map((b) => b.digest).sort());
    expect((await fx.registry.tags('team/app', {}))!.sort()).toEqual(['build-4', 'v1.0']);
    expect(await fx.blobs.stat(images[0]!.layers[1]!.digest)).toBeUndefined();
    expect(await fx.blobs.stat(images[0]!.layers[0]!.digest)).toBeDefined(); // the base, shared
    expect(await fx.registry.manifest('alice/app', 'build-1')).toBeDefined();
    void other;
  });

  test('a tag retention planned to retire is kept if it was pushed again, to the same digest too, or pulled before the delete', async () => {
    const image = await pushImage(fx.registry, 'team/app', 'build-1', ['layer']);
    const life = fx.metadata.lifecycle();
    const [seen] = life.tags('team/app');
    await new Promise((r) => setTimeout(r, 5)); // a later updated_at
    await fx.registry.putManifest('team/app', 'build-1', image.bytes, 'application/vnd.oci.image.manifest.v1+json');
    expect(life.retireTag('team/app', seen!)).toBe(false);
    const [pushedAgain] = life.tags('team/app');
    expect(pushedAgain!.updatedAt).toBeGreaterThan(seen!.updatedAt);
    life.notePull('team/app', 'build-1', Date.now());
    life.tags('team/app'); // writes the note (another process's pull, written)
    expect(life.retireTag('team/app', pushedAgain!)).toBe(false);
    expect((await fx.registry.tags('team/app', {}))).toEqual(['build-1']);
    // As seen last, it goes.
    expect(life.retireTag('team/app', life.tags('team/app')[0]!)).toBe(true);
    expect((await fx.registry.tags('team/app', {}))).toEqual([]);
  });

  test('delete_unpulled_for keeps what was pulled recently', async () => {
    await pushImage(fx.registry, 'team/web', 'pulled', ['a']);
    await pushImage(fx.registry, 'team/web', 'idle', ['b']);
    fx.metadata.lifecycle().notePull('team/web', 'pulled', Date.now() + 40 * DAY);
    const report = await fx.gc.run({
      grace: 0,
      deleteUntagged: false,
      now: Date.now() + 45 * DAY,
      retention: [{ repositories: 'team/**', deleteUnpulledFor: 30 * DAY }],
    });
    expect(report.tags.map((t) => `${t.tag}:${t.reason}`)).toEqual(['idle:delete_unpulled_for']);
    expect(await fx.registry.tags('team/web', {})).toEqual(['pulled']);
  });
});
