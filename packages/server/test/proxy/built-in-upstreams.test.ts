import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { buildConfig } from '../../src/config.js';
import { findUpstream, nsTargets } from '../../src/proxy-config.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/**
 * The upstreams every Wharf knows without configuration, written out here rather than read from the
 * source: a URL or an alias changed there (a typo, one dropped in a refactor) breaks pulls such as
 * `proxy/docker/alpine` on every installation, and every other test overrides `url`.
 */
const BUILT_INS: readonly { key: string; url: string; aliases: string[]; officialPrefix?: string }[] = [
  { key: 'docker.io', url: 'https://registry-1.docker.io', aliases: ['docker', 'index.docker.io', 'registry-1.docker.io'], officialPrefix: 'library/' },
  { key: 'ghcr.io', url: 'https://ghcr.io', aliases: ['ghcr'] },
  { key: 'quay.io', url: 'https://quay.io', aliases: ['quay'] },
  { key: 'registry.k8s.io', url: 'https://registry.k8s.io', aliases: ['k8s'] },
  { key: 'gcr.io', url: 'https://gcr.io', aliases: ['gcr'] },
  { key: 'k8s.gcr.io', url: 'https://k8s.gcr.io', aliases: [] },
  { key: 'nvcr.io', url: 'https://nvcr.io', aliases: ['nvcr'] },
  { key: 'registry.gitlab.com', url: 'https://registry.gitlab.com', aliases: ['gitlab'] },
  { key: 'docker.cloudsmith.io', url: 'https://docker.cloudsmith.io', aliases: ['cloudsmith'] },
  { key: 'mcr.microsoft.com', url: 'https://mcr.microsoft.com', aliases: ['mcr'] },
  { key: 'public.ecr.aws', url: 'https://public.ecr.aws', aliases: ['ecr'] },
];

const REQUIRED = { registry_storage: 'storage/registry', temporary_registry_storage: 'storage/_tmp', proxy_storage: 'storage/proxy' };

/** Every name (key or alias) /v2/proxy/<name>/ takes, with the key of the upstream it names. */
const NAMES = BUILT_INS.flatMap((u) => [u.key, ...u.aliases].map((name) => ({ name, key: u.key })));

describe('the built-in upstreams', () => {
  test('the configuration with no [proxy.upstreams] holds exactly the built-in table: keys, URLs, aliases, the library/ prefix', () => {
    const { proxy } = buildConfig(REQUIRED, { env: {} });
    expect(proxy.upstreams.map((u) => ({ key: u.key, url: u.url, aliases: u.aliases, officialPrefix: u.officialPrefix }))).toEqual(BUILT_INS);
    for (const u of proxy.upstreams) {
      // Anonymous, one URL, no credentials of ours.
      expect([u.key, u.mirrors, u.strategy, u.username, u.password, u.ca]).toEqual([u.key, [], 'failover', undefined, undefined, undefined]);
    }
  });

  test('each key and each alias names its upstream (findUpstream, used by purge and access rules); nothing else does', () => {
    const { proxy } = buildConfig(REQUIRED, { env: {} });
    expect(NAMES).toHaveLength(BUILT_INS.length + 12);
    for (const { name, key } of NAMES) expect([name, findUpstream(proxy, name)?.key]).toEqual([name, key]);
    for (const name of ['hub', 'dockerhub', 'library', 'Docker', 'docker.io/library', 'github', 'ecr.aws', 'k8s.io']) {
      expect([name, findUpstream(proxy, name)]).toEqual([name, undefined]);
    }
  });

  test("?ns=<registry> (containerd) takes each built-in's host, and its key and aliases", () => {
    const { proxy } = buildConfig(REQUIRED, { env: {} });
    const targets = nsTargets(proxy.upstreams);
    for (const u of BUILT_INS) expect([new URL(u.url).host, targets.get(new URL(u.url).host)?.key]).toEqual([new URL(u.url).host, u.key]);
    for (const { name, key } of NAMES) expect([name, targets.get(name)?.key]).toEqual([name, key]);
  });

  test("a configured built-in key overrides the url and keeps the built-in's aliases, library/ prefix and place; its own aliases replace the built-in's", () => {
    const { proxy } = buildConfig(
      {
        ...REQUIRED,
        proxy: {
          upstreams: {
            'docker.io': { url: 'http://hub-cache.local:5000', username: 'ci-bot', password: 'pw' },
            'ghcr.io': { url: 'http://ghcr-cache.local:5000', aliases: ['github'] },
          },
        },
      },
      { env: {} },
    );
    // Still eleven upstreams, in the same order: the override takes the built-in's place.
    expect(proxy.upstreams.map((u) => u.key)).toEqual(BUILT_INS.map((u) => u.key));
    const hub = findUpstream(proxy, 'docker')!;
    expect(hub).toMatchObject({ key: 'docker.io', url: 'http://hub-cache.local:5000', aliases: ['docker', 'index.docker.io', 'registry-1.docker.io'], officialPrefix: 'library/', username: 'ci-bot', password: 'pw' });
    expect(findUpstream(proxy, 'index.docker.io')).toBe(hub);
    const ghcr = findUpstream(proxy, 'github')!;
    expect(ghcr).toMatchObject({ key: 'ghcr.io', url: 'http://ghcr-cache.local:5000', aliases: ['github'] });
    expect(ghcr.officialPrefix).toBeUndefined();
    expect(findUpstream(proxy, 'ghcr')).toBeUndefined();
    // The other built-ins are untouched.
    expect(findUpstream(proxy, 'quay')).toMatchObject({ key: 'quay.io', url: 'https://quay.io' });
  });
});

/**
 * An egress proxy that opens no tunnel (403), remembering which host:port each CONNECT asked for:
 * where a request routed by /v2/proxy/<name>/ would have gone, with no request leaving the machine.
 */
class TunnelRecorder {
  readonly tunnels: string[] = [];
  url = '';
  private server!: Server;

  static async start(): Promise<TunnelRecorder> {
    const recorder = new TunnelRecorder();
    recorder.server = createServer((_req, res) => void res.writeHead(405).end());
    recorder.server.on('connect', (req, socket: Socket) => {
      recorder.tunnels.push(req.url ?? '');
      socket.on('error', () => undefined);
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
    });
    await new Promise<void>((resolve) => recorder.server.listen(0, '127.0.0.1', resolve));
    recorder.url = `http://127.0.0.1:${(recorder.server.address() as AddressInfo).port}`;
    return recorder;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

describe('/v2/proxy/<key or alias>/ goes to the built-in URL (seen through an egress proxy that opens no tunnel)', () => {
  let recorder: TunnelRecorder;
  let reg: TestRegistry;

  beforeAll(async () => {
    recorder = await TunnelRecorder.start();
    // Every https:// upstream goes through HTTPS_PROXY: the CONNECT names the host and port it was for.
    // outage_backoff 0: each request asks its upstream, the failure of the one before notwithstanding.
    reg = await startRegistry({ env: { HTTPS_PROXY: recorder.url }, settings: { proxy: { retries: 0, outage_backoff: '0s' } } });
  });
  afterAll(async () => {
    await reg?.close();
    await recorder?.close();
  });

  test.each(NAMES)('proxy/$name/ → upstream $key', async ({ name, key }) => {
    const host = new URL(BUILT_INS.find((u) => u.key === key)!.url).host;
    const before = recorder.tunnels.length;
    const res = await fetch(`${reg.url}/v2/proxy/${name}/someone/app/manifests/latest`);
    const body = (await res.json()) as { errors: { code: string; message: string }[] };
    expect(res.status).toBe(502);
    expect(body.errors[0]!.message).toContain(`did not open a tunnel to ${host} for upstream ${key}:`);
    // One tunnel (retries 0), to the built-in's host on 443: https.
    expect(recorder.tunnels.slice(before)).toEqual([`${host}:443`]);
  });
});
