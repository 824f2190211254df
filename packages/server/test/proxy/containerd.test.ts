import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startContainerd, type Containerd } from '../helpers/clients.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { buildLayout, mkdtemp, removeTemps, seed, type Layout } from './helpers/tools.js';

async function hostsDir(registry: string, toml: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'wharf-hosts-'));
  await mkdir(join(dir, registry));
  await writeFile(join(dir, registry, 'hosts.toml'), toml);
  return dir;
}

describe('containerd (ctr images pull --hosts-dir) through the proxy', () => {
  let layout: Layout;
  let up: TestRegistry;
  let proxy: TestRegistry;
  let containerd: Containerd;
  let ctr: (...args: string[]) => Promise<string>;

  beforeAll(async () => {
    layout = await buildLayout('containerd');
    up = await startRegistry();
    await seed(layout, new URL(up.url).host, 'alice/app', 'alice/multi');
    // "upstream" is what image references call the registry; it resolves nowhere, so a pull that
    // succeeds came through the proxy.
    proxy = await startRegistry({ settings: { proxy: { retries: 0, upstreams: { up: { url: up.url, aliases: ['upstream'] } } } } });
    containerd = await startContainerd(await mkdtemp('/tmp/wc-'), 'wharf-test');
    ctr = async (...args) => (await containerd.ctr(args, 60_000)).stdout;
  });
  afterAll(async () => {
    await containerd?.close();
    await proxy?.close();
    await up?.close();
    await removeTemps();
  });

  test('a mirror host at the proxy root: containerd appends ?ns=<registry>, the proxy routes it to that upstream', async () => {
    const dir = await hostsDir(
      'upstream',
      `server = "http://upstream"\n\n[host."${proxy.url}"]\n  capabilities = ["pull", "resolve"]\n`,
    );
    await ctr('images', 'pull', '--plain-http', '--hosts-dir', dir, '--snapshotter', 'native', 'upstream/alice/app:1');
    const listed = await ctr('images', 'ls', '-q');
    expect(listed.split('\n')).toContain('upstream/alice/app:1');
    const info = await ctr('images', 'ls', 'name==upstream/alice/app:1');
    expect(info).toContain(layout.single);
    // The proxy's cache now knows the tag: it was served as a pull-through of "up".
    const tags = proxy.db.prepare('SELECT repository, tag, digest FROM proxy_tags WHERE upstream = ?').all('up');
    expect(tags).toContainEqual({ repository: 'alice/app', tag: '1', digest: layout.single });
  });

  test('a mirror host at /v2/proxy/<upstream> with override_path = true', async () => {
    const dir = await hostsDir(
      'upstream',
      `server = "http://upstream"\n\n[host."${proxy.url}/v2/proxy/up"]\n  capabilities = ["pull", "resolve"]\n  override_path = true\n`,
    );
    await ctr('images', 'pull', '--plain-http', '--hosts-dir', dir, '--snapshotter', 'native', '--all-platforms', 'upstream/alice/multi:1');
    const info = await ctr('images', 'ls', 'name==upstream/alice/multi:1');
    expect(info).toContain(layout.multi);
    const tags = proxy.db.prepare('SELECT repository, tag, digest FROM proxy_tags WHERE upstream = ?').all('up');
    expect(tags).toContainEqual({ repository: 'alice/multi', tag: '1', digest: layout.multi });
  });
  test('a catch-all _default mirror: a registry with no upstream is pulled from itself, never from the proxy\'s own repository of that name; the proxy\'s images under another of its names come from it', async () => {
    // Another registry, with no upstream configured for it, holds alice/app:1 (the two-platform
    // index); the proxy's own alice/app:1 is the single-platform image.
    const other = await startRegistry();
    try {
      await seed(layout, new URL(other.url).host, 'x/unused', 'alice/app');
      await seed(layout, new URL(proxy.url).host, 'alice/app', 'y/unused');
      const dir = await mkdtemp(join(tmpdir(), 'wharf-hosts-'));
      await mkdir(join(dir, '_default'));
      await writeFile(join(dir, '_default', 'hosts.toml'), `[host."${proxy.url}"]\n  capabilities = ["pull", "resolve"]\n`);
      const otherRef = `${new URL(other.url).host}/alice/app:1`;
      await ctr('images', 'pull', '--plain-http', '--hosts-dir', dir, '--snapshotter', 'native', otherRef);
      expect(await ctr('images', 'ls', `name==${otherRef}`)).toContain(layout.multi);
      // The proxy as "localhost" in the image, as 127.0.0.1 in hosts.toml: containerd sends ?ns=localhost:<port>.
      const ownRef = `localhost:${new URL(proxy.url).port}/alice/app:1`;
      await ctr('images', 'pull', '--plain-http', '--hosts-dir', dir, '--snapshotter', 'native', ownRef);
      expect(await ctr('images', 'ls', `name==${ownRef}`)).toContain(layout.single);
    } finally {
      await other.close();
    }
  });
});
