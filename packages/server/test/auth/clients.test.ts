import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import {
  containersConfig,
  isolatedPodman,
  lowerCaseTempDir,
  removeTree,
  requireTool,
  runFails,
  skopeo,
  startContainerd,
  type Containerd,
  type ContainersConfig,
} from '../helpers/clients.js';
import { buildOciLayout, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { Secrets, bcryptHash, captureLog, startAuthRegistry } from './helpers.js';

const PW = { alice: 'alice-client-pw1', bob: 'bob-client-pw12' } as const;
const hex = (digest: string) => digest.slice('sha256:'.length);

/**
 * skopeo, podman and containerd's ctr against Wharf with auth on: logins, pushes into one's own
 * namespace (and not into another's), the proxy with a CI token, and containerd's OAuth2 POST flow.
 */
describe('real clients with accounts and tokens', () => {
  let up: TestRegistry;
  let reg: TestRegistry;
  let dir: string;
  let layout: OciLayout;
  let host: string;
  let ciToken: string;
  let containerd: Containerd | undefined;
  let containerdDir: string | undefined;
  const log = captureLog();
  const secrets = new Secrets();

  beforeAll(async () => {
    for (const [tool, pkg] of [['skopeo', 'skopeo'], ['podman', 'podman'], ['ctr', 'containerd'], ['containerd', 'containerd']]) await requireTool(tool!, pkg!);
    dir = await lowerCaseTempDir('wharf-auth-clients-');
    layout = await buildOciLayout(join(dir, 'layout'));
    up = await startRegistry();
    const seed = await containersConfig(join(dir, 'seed'));
    await skopeo(seed, ['copy', `oci:${layout.dir}:single`, `docker://${new URL(up.url).host}/lib/app:1`, '--dest-tls-verify=false']);
    reg = await startAuthRegistry({
      logger: log.logger,
      settings: { proxy: { retries: 0, upstreams: { up: { url: up.url } } } },
      authSettings: { users: Object.entries(PW).map(([name, pw]) => ({ name, password_hash: bcryptHash(pw) })) },
    });
    host = new URL(reg.url).host;
    ciToken = reg.auth!.store.createToken({ type: 'ci', user: 'alice', scopes: ['pull', 'push'], namespace: 'alice', expiresAt: Date.now() + 3_600_000 }).secret;
    for (const [u, p] of Object.entries(PW)) secrets.addBasic(u, p);
    secrets.addBasic('anything', ciToken);
  }, 120_000);

  afterAll(async () => {
    await containerd?.close();
    if (containerdDir) await removeTree(containerdDir);
    await reg?.close();
    await up?.close();
    if (dir) await removeTree(dir);
  }, 60_000);

  describe('skopeo', () => {
    let config: ContainersConfig;
    beforeAll(async () => {
      config = await containersConfig(join(dir, 'skopeo'));
    });

    test('login with a wrong password fails; with the right one it succeeds', async () => {
      const wrong = await runFails('skopeo', ['login', '--tls-verify=false', '-u', 'alice', '-p', 'not-the-password', host], { env: config.env });
      expect(wrong.stderr).toMatch(/unauthorized|invalid/i);
      await skopeo(config, ['login', '--tls-verify=false', '-u', 'alice', '-p', PW.alice, host]);
    });

    test('after login, a push into the own namespace succeeds and one into another user namespace is denied', async () => {
      await skopeo(config, ['copy', `oci:${layout.dir}:single`, `docker://${host}/alice/app:1`, '--dest-tls-verify=false']);
      const inspected = JSON.parse((await skopeo(config, ['inspect', '--tls-verify=false', `docker://${host}/alice/app:1`])).stdout) as { Digest: string };
      expect(inspected.Digest).toBe(layout.single.manifest.digest);
      const denied = await runFails('skopeo', ['--policy', config.policy, 'copy', `oci:${layout.dir}:single`, `docker://${host}/bob/app:1`, '--dest-tls-verify=false'], {
        env: config.env,
      });
      // Told why (the challenge's error_description), not only "403 (Forbidden)" or "authentication required".
      expect(denied.stderr).toMatch(/alice may not (pull from or )?push to bob\/app/);
    });

    test('pull through the proxy with a CI token as the password (any user name); without credentials it is refused', async () => {
      const fresh = await containersConfig(join(dir, 'skopeo-ci'));
      const out = join(dir, 'pulled');
      await skopeo(fresh, ['copy', '--src-creds', `anything:${ciToken}`, '--src-tls-verify=false', `docker://${host}/proxy/up/lib/app:1`, `oci:${out}:x`]);
      const inspected = JSON.parse((await skopeo(fresh, ['inspect', `oci:${out}:x`])).stdout) as { Digest: string };
      expect(inspected.Digest).toBe(layout.single.manifest.digest);
      const anonymous = await runFails('skopeo', ['--policy', fresh.policy, 'inspect', '--tls-verify=false', `docker://${host}/proxy/up/lib/app:1`], { env: fresh.env });
      expect(anonymous.stderr).toMatch(/unauthorized|authentication required/i);
      // The CI token pushes into its namespace only.
      const other = await runFails('skopeo', ['--policy', fresh.policy, 'copy', '--dest-creds', `anything:${ciToken}`, `oci:${layout.dir}:single`, `docker://${host}/bob/ci:1`, '--dest-tls-verify=false'], {
        env: fresh.env,
      });
      expect(other.stderr).toMatch(/alice's CI token may not (pull from or )?push to bob\/ci/);
      await skopeo(fresh, ['copy', '--dest-creds', `anything:${ciToken}`, `oci:${layout.dir}:single`, `docker://${host}/alice/from-ci:1`, '--dest-tls-verify=false']);
    });
  });

  test('podman login, push into the own namespace, and a push into another namespace denied', async () => {
    const config = await containersConfig(join(dir, 'podman-config'));
    const podman = await isolatedPodman(join(dir, 'podman'), config);
    await podman.run(['login', '--tls-verify=false', '-u', 'bob', '-p', PW.bob, host]);
    await podman.run(['pull', ...podman.policyArgs, `oci:${layout.dir}:single`]);
    await podman.run(['tag', hex(layout.single.config.digest), `${host}/bob/pm:1`, `${host}/alice/pm:1`]);
    await podman.run(['push', ...podman.policyArgs, '--tls-verify=false', `${host}/bob/pm:1`]);
    const denied = await runFails(
      'podman',
      ['--root', join(dir, 'podman', 'root'), '--runroot', join(dir, 'podman', 'run'), '--tmpdir', join(dir, 'podman', 'tmp'), '--storage-driver', 'vfs', '--events-backend', 'none', '--cgroup-manager', 'cgroupfs',
        'push', ...podman.policyArgs, '--tls-verify=false', `${host}/alice/pm:1`],
      { env: config.env, timeoutMs: 120_000 },
    );
    expect(denied.stderr).toMatch(/bob may not (pull from or )?push to alice\/pm/);
    const check = await containersConfig(join(dir, 'podman-check'));
    const tags = JSON.parse((await skopeo(check, ['list-tags', '--tls-verify=false', '--creds', `bob:${PW.bob}`, `docker://${host}/bob/pm`])).stdout) as { Tags: string[] };
    expect(tags.Tags).toEqual(['1']);
  }, 180_000);

  test('containerd: ctr --user pulls with the OAuth2 POST token flow; a wrong password fails', async () => {
    containerdDir = await mkdtemp('/tmp/wa-');
    containerd = await startContainerd(containerdDir, 'auth');
    const before = log.text().length;
    await containerd.ctr(['images', 'pull', '--plain-http', '--snapshotter', 'native', '--user', `alice:${PW.alice}`, `${host}/alice/app:1`]);
    const { stdout } = await containerd.ctr(['images', 'ls']);
    expect(stdout).toContain(layout.single.manifest.digest);
    const lines = log.text().slice(before).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { method?: string; path?: string; status?: number });
    expect(lines.some((l) => l.method === 'POST' && l.path === '/auth/token' && l.status === 200)).toBe(true);

    secrets.addBasic('alice', 'wrong-password-1');
    await expect(
      containerd.ctr(['images', 'pull', '--plain-http', '--snapshotter', 'native', '--user', 'alice:wrong-password-1', `${host}/alice/app:1`]),
    ).rejects.toThrow(/401|unauthorized/i);
  }, 120_000);

  test('after the suite, no password or token is in the log', () => {
    expect(log.text()).toContain('"path":"/auth/token"');
    secrets.assertNotIn(log.text());
  });
});
