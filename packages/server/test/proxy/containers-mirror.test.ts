import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { bcryptHash, captureLog, startAuthRegistry } from '../auth/helpers.js';
import { containersConfig, isolatedPodman, lowerCaseTempDir, removeTree, requireTool, runFails, skopeo, type ContainersConfig } from '../helpers/clients.js';
import { startDistribution, type Distribution } from '../helpers/distribution.js';
import { buildOciLayout, type OciLayout } from '../helpers/oci-layout.js';
import type { TestRegistry } from '../helpers/start-registry.js';

const PW = 'alice-mirror-pw1';

/** The digest `index.json` of an OCI layout names first (what skopeo wrote). */
async function layoutDigest(dir: string): Promise<string> {
  return (JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: { digest: string }[] }).manifests[0]!.digest;
}

/**
 * containers/image (skopeo, podman, buildah, CRI-O) mirrors Docker Hub through a registries.conf
 * `[[registry.mirror]]` whose location is a path of Wharf's: `<wharf>/proxy/<upstream>`. Unlike Docker's
 * daemon, it signs in to the mirror with the mirror's own login.
 */
describe('registries.conf mirror of docker.io at <wharf>/proxy/<upstream> (skopeo, podman)', () => {
  let dir: string;
  let layout: OciLayout;
  let up: Distribution;
  let reg: TestRegistry;
  let config: ContainersConfig;
  let registriesConf: string;
  const log = captureLog();

  beforeAll(async () => {
    for (const [tool, pkg] of [['skopeo', 'skopeo'], ['podman', 'podman']] as const) await requireTool(tool, pkg);
    dir = await lowerCaseTempDir('wm-');
    layout = await buildOciLayout(join(dir, 'layout'));
    up = await startDistribution();
    const seed = await containersConfig(join(dir, 'seed'));
    await skopeo(seed, ['copy', `oci:${layout.dir}:single`, `docker://${up.host}/library/app:1`, '--dest-tls-verify=false']);
    await skopeo(seed, ['copy', '--all', `oci:${layout.dir}:multi`, `docker://${up.host}/library/multi:1`, '--dest-tls-verify=false']);
    reg = await startAuthRegistry({
      logger: log.logger,
      settings: { proxy: { retries: 0, upstreams: { up: { url: up.url } } } },
      authSettings: { users: [{ name: 'alice', password_hash: bcryptHash(PW) }] },
    });
    const host = new URL(reg.url).host;
    config = await containersConfig(join(dir, 'client'));
    registriesConf = config.env.CONTAINERS_REGISTRIES_CONF!;
    // As the README gives it, with the host of this test.
    await writeFile(
      registriesConf,
      ['unqualified-search-registries = ["docker.io"]', '', '[[registry]]', 'prefix = "docker.io"', 'location = "docker.io"', '', '[[registry.mirror]]', `location = "${host}/proxy/up"`, 'insecure = true', ''].join('\n'),
    );
  }, 120_000);

  afterAll(async () => {
    await reg?.close();
    await up?.close();
    if (dir) await removeTree(dir);
  }, 60_000);

  // skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF (it reads /etc/containers/registries.conf): it takes --registries-conf.
  const mirrored = (args: readonly string[]) => skopeo(config, ['--registries-conf', registriesConf, ...args]);

  test('without a login to the mirror, Wharf refuses it and the pull falls through to docker.io itself (unreachable here, or without these images)', async () => {
    const before = log.text().length;
    const failed = await runFails('skopeo', ['--registries-conf', registriesConf, '--policy', config.policy, 'copy', 'docker://docker.io/library/app:1', `oci:${join(dir, 'refused')}:x`], {
      env: config.env,
    });
    expect(failed.stderr).toMatch(/docker\.io/);
    // The mirror was asked first, and refused the anonymous caller.
    const asked = log
      .text()
      .slice(before)
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as { path?: string; status?: number })
      .filter((line) => line.path === '/v2/proxy/up/library/app/manifests/1');
    expect(asked.length).toBeGreaterThan(0);
    expect(asked.every((line) => line.status === 401)).toBe(true);
  });

  test('skopeo copies docker.io names from the mirror, one image and a whole index, with the login for the mirror host', async () => {
    await skopeo(config, ['login', '--tls-verify=false', '-u', 'alice', '-p', PW, new URL(reg.url).host]);
    const single = join(dir, 'single');
    await mirrored(['copy', 'docker://docker.io/library/app:1', `oci:${single}:x`]);
    expect(await layoutDigest(single)).toBe(layout.single.manifest.digest);
    const multi = join(dir, 'multi');
    await mirrored(['copy', '--all', 'docker://docker.io/library/multi:1', `oci:${multi}:x`]);
    expect(await layoutDigest(multi)).toBe(layout.multi.index.digest);
  }, 120_000);

  test('podman pulls a short name and a digest from the mirror', async () => {
    const podman = await isolatedPodman(join(dir, 'podman'), config);
    await podman.run(['pull', ...podman.policyArgs, 'app:1']);
    const digest = (await podman.run(['image', 'inspect', '--format', '{{.Digest}}', 'docker.io/library/app:1'])).stdout.trim();
    expect(digest).toBe(layout.single.manifest.digest);
    await podman.run(['pull', ...podman.policyArgs, `docker.io/library/multi@${layout.multi.index.digest}`]);
    const images = (await podman.run(['images', '--digests', '--format', '{{.Repository}}@{{.Digest}}'])).stdout;
    expect(images).toContain(`docker.io/library/multi@${layout.multi.index.digest}`);
  }, 180_000);
});
