import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { copyFile, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ensureSelfSigned } from '../../src/tls/self-signed.js';
import {
  containersConfig,
  isolatedPodman,
  lowerCaseTempDir,
  removeTree,
  requireTool,
  runFails,
  shortTempDir,
  skopeo as runSkopeo,
  startContainerd,
  type Containerd,
  type ContainersConfig,
} from '../helpers/clients.js';
import { buildOciLayout, type OciLayout } from '../helpers/oci-layout.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/**
 * Real clients over HTTPS against a self-signed Wharf, with TLS verification on: trusting the
 * generated CA (skopeo and podman through --cert-dir, containerd through hosts.toml `ca`) they push
 * and pull; trusting another CA, they refuse.
 */
describe('self-signed TLS with real clients', () => {
  let dir: string;
  let reg: TestRegistry;
  let layout: OciLayout;
  let config: ContainersConfig;
  let host: string;
  /** Folders holding a ca.crt: Wharf's CA, and an unrelated one. */
  let trusted: string;
  let wrong: string;
  let containerd: Containerd | undefined;
  let containerdDir: string | undefined;
  const skopeo = (...args: string[]) => runSkopeo(config, args);

  beforeAll(async () => {
    await requireTool('skopeo', 'skopeo');
    await requireTool('podman', 'podman');
    await requireTool('ctr', 'containerd');
    dir = await lowerCaseTempDir('wharf-tlsc-');
    layout = await buildOciLayout(join(dir, 'layout'));
    config = await containersConfig(join(dir, 'containers'));
    reg = await startRegistry({ root: join(dir, 'wharf'), settings: { tls: { self_signed: true } } });
    host = new URL(reg.url).host;
    trusted = join(dir, 'trusted');
    wrong = join(dir, 'wrong');
    await mkdir(trusted);
    await copyFile(reg.caFile!, join(trusted, 'ca.crt'));
    const other = await ensureSelfSigned({ dir: join(dir, 'other-ca'), hosts: [] });
    await mkdir(wrong);
    await copyFile(other.caFile, join(wrong, 'ca.crt'));
    await skopeo('copy', '--dest-cert-dir', trusted, `oci:${layout.dir}:single`, `docker://${host}/alice/app:1`);
  }, 60_000);

  afterAll(async () => {
    await containerd?.close();
    if (containerdDir) await removeTree(containerdDir);
    await reg?.close();
    if (dir) await removeTree(dir);
  });

  test('skopeo pushes (beforeAll) and inspects with --cert-dir holding the CA; with another CA it refuses', async () => {
    const info = JSON.parse((await skopeo('inspect', '--cert-dir', trusted, `docker://${host}/alice/app:1`)).stdout) as { Digest: string };
    expect(info.Digest).toBe(layout.single.manifest.digest);
    const refused = await runFails('skopeo', ['--policy', config.policy, 'inspect', '--cert-dir', wrong, `docker://${host}/alice/app:1`], { env: config.env });
    expect(refused.stderr).toMatch(/x509|certificate/);
    // No CA at all: the system trust store does not know Wharf's CA either.
    const untrusted = await runFails('skopeo', ['--policy', config.policy, 'inspect', `docker://${host}/alice/app:1`], { env: config.env });
    expect(untrusted.stderr).toMatch(/x509|certificate/);
  });

  test('podman pulls with --cert-dir holding the CA; with another CA it refuses', async () => {
    const podman = await isolatedPodman(join(dir, 'podman'), config);
    await podman.run(['pull', ...podman.policyArgs, '--cert-dir', trusted, `${host}/alice/app:1`]);
    const id = (await podman.run(['images', '--no-trunc', '--format', '{{.ID}}', `${host}/alice/app:1`])).stdout.trim();
    expect(`sha256:${id.replace(/^sha256:/, '')}`).toBe(layout.single.config.digest);
    const other = await isolatedPodman(join(dir, 'podman-wrong'), config);
    const refused = await runFails('podman', [
      '--root', join(other.dir, 'root'), '--runroot', join(other.dir, 'run'), '--tmpdir', join(other.dir, 'tmp'),
      '--storage-driver', 'vfs', '--events-backend', 'none', '--cgroup-manager', 'cgroupfs',
      'pull', ...other.policyArgs, '--cert-dir', wrong, `${host}/alice/app:1`,
    ], { env: config.env, timeoutMs: 120_000 });
    expect(refused.stderr).toMatch(/x509|certificate/);
  }, 120_000);

  // ctr 1.6 speaks plain HTTP to a loopback registry unless hosts.toml says `server = "https://..."`, so
  // --tlscacert alone does not apply to 127.0.0.1; hosts.toml is also what the README documents.
  test('containerd (ctr) pulls with hosts.toml `server = "https://..."` and `ca`; with another CA it refuses', async () => {
    containerdDir = await shortTempDir();
    containerd = await startContainerd(containerdDir);
    const hostsDir = async (name: string, ca: string) => {
      const folder = join(dir, name);
      await mkdir(join(folder, host), { recursive: true });
      await writeFile(
        join(folder, host, 'hosts.toml'),
        [`server = "https://${host}"`, '', `[host."https://${host}"]`, '  capabilities = ["pull", "resolve", "push"]', `  ca = "${ca}"`, ''].join('\n'),
      );
      return folder;
    };
    const ref = `${host}/alice/app:1`;
    await containerd.ctr(['images', 'pull', '--snapshotter', 'native', '--hosts-dir', await hostsDir('hosts-ok', join(trusted, 'ca.crt')), ref]);
    const { stdout } = await containerd.ctr(['images', 'ls']);
    expect(stdout).toContain(layout.single.manifest.digest);
    await containerd.ctr(['images', 'rm', ref]);
    const refused = await runFails('ctr', ['-a', containerd.socket, '-n', 'wharf', 'images', 'pull', '--snapshotter', 'native', '--hosts-dir', await hostsDir('hosts-wrong', join(wrong, 'ca.crt')), ref]);
    expect(refused.stderr).toMatch(/x509|certificate/);
  }, 120_000);
});
