import { describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { parse as parseToml } from 'smol-toml';
import { buildConfig } from '../../src/config.js';
import { startRegistry } from '../helpers/start-registry.js';
import { blobFile, exists, pushLayers } from './helpers.js';

const REQUIRED = { registry_storage: '/tmp/r', temporary_registry_storage: '/tmp/t', proxy_storage: '/tmp/p' };

describe('[gc] and [[retention]] configuration', () => {
  test('defaults: every 24 h, 1 h grace, untagged manifests kept, no retention', () => {
    expect(buildConfig(REQUIRED).gc).toEqual({ interval: 86_400_000, grace: 3_600_000, deleteUntagged: false, retention: [] });
  });

  test('the TOML of the README parses into rules', () => {
    const doc = parseToml(`
      [gc]
      interval = "12h"
      grace = "30m"
      delete_untagged = true

      [[retention]]
      repositories = "team/*"
      keep_last = 10
      keep_tags = "^v\\\\d+"
      delete_older_than = "90d"
      delete_unpulled_for = "30d"

      [[retention]]
      repositories = "ci/**"
      keep_last = 3
    `) as Record<string, unknown>;
    const { gc } = buildConfig({ ...REQUIRED, ...doc });
    expect(gc.interval).toBe(12 * 3_600_000);
    expect(gc.grace).toBe(30 * 60_000);
    expect(gc.deleteUntagged).toBe(true);
    expect(gc.retention).toHaveLength(2);
    const [team, ci] = gc.retention;
    expect(team).toMatchObject({ repositories: 'team/*', keepLast: 10, deleteOlderThan: 90 * 86_400_000, deleteUnpulledFor: 30 * 86_400_000 });
    expect(team!.keepTags!.test('v12')).toBe(true);
    expect(team!.keepTags!.test('latest')).toBe(false);
    expect(ci).toEqual({ repositories: 'ci/**', keepLast: 3 });
  });

  test.each([
    [{ gc: { interval: 'often' } }, /"gc.interval" must be a duration/],
    [{ gc: { grace: -1 } }, /"gc.grace" must be a duration/],
    [{ gc: { delete_untagged: 'yes' } }, /"gc.delete_untagged" must be true or false/],
    [{ gc: { every: '1h' } }, /unknown key "gc.every"/],
    [{ retention: { repositories: 'a/*' } }, /"retention" must be an array of tables/],
    [{ retention: [{ keep_last: 3 }] }, /"retention\[0\].repositories"/],
    [{ retention: [{ repositories: 'a/*', keep_tags: '([' }] }, /"retention\[0\].keep_tags" is not a valid regular expression/],
    [{ retention: [{ repositories: 'a/*' }] }, /"retention\[0\]" needs keep_last/],
    [{ retention: [{ repositories: 'a/*', keep_last: 0 }] }, /"retention\[0\]" needs keep_last/],
    [{ retention: [{ repositories: 'a/*', keep_last: 1, delete_older_than: 'soon' }] }, /"retention\[0\].delete_older_than" must be a duration/],
    [{ retention: [{ repositories: 'a/*', keep_last: 1, keep: 2 }] }, /unknown key "retention\[0\].keep"/],
  ])('%j is refused with a message naming the key', (doc, message) => {
    expect(() => buildConfig({ ...REQUIRED, ...doc })).toThrow(message);
  });

  test('the server collects garbage by itself every [gc] interval', async () => {
    const reg = await startRegistry({ settings: { gc: { interval: '1s', grace: '0', delete_untagged: true } } });
    try {
      const image = await pushLayers(reg.url, 'alice/tmp', '1', [randomBytes(10_000)]);
      expect((await fetch(`${reg.url}/v2/alice/tmp/manifests/1`, { method: 'DELETE' })).status).toBe(202);
      const layer = blobFile(reg.root, image.blobs[1]!.digest);
      const deadline = Date.now() + 5_000;
      while ((await exists(layer)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(await exists(layer)).toBe(false);
      expect((await fetch(`${reg.url}/v2/alice/tmp/manifests/${image.digest}`)).status).toBe(404);
    } finally {
      await reg.close();
    }
  });
});

describe('[gc] from the environment', () => {
  test('WHARF_GC_INTERVAL, WHARF_GC_GRACE and WHARF_GC_DELETE_UNTAGGED override the file', () => {
    const config = buildConfig(
      { registry_storage: 'r', temporary_registry_storage: 't', proxy_storage: 'p', gc: { interval: '24h' } },
      { env: { WHARF_GC_INTERVAL: '6h', WHARF_GC_GRACE: '30m', WHARF_GC_DELETE_UNTAGGED: 'true' } },
    );
    expect(config.gc.interval).toBe(6 * 3_600_000);
    expect(config.gc.grace).toBe(30 * 60_000);
    expect(config.gc.deleteUntagged).toBe(true);
  });
});
