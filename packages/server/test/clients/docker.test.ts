import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { basic, bcryptHash, startAuthRegistry } from '../auth/helpers.js';
import { containersConfig, lowerCaseTempDir, removeTree, requireTool, run, shortTempDir, skopeo, startDockerd, type Dockerd } from '../helpers/clients.js';
import { startDistribution, type Distribution } from '../helpers/distribution.js';
import { buildOciLayout, type OciLayout } from '../helpers/oci-layout.js';
import type { TestRegistry } from '../helpers/start-registry.js';

const PW = { alice: 'alice-docker-pw1', bob: 'bob-docker-pw12' } as const;

/** The manifest digest `docker push` or `docker pull` printed ("digest: sha256:..." or "Digest: sha256:..."). */
function printedDigest(output: string): string | undefined {
  return /digest: (sha256:[0-9a-f]{64})/i.exec(output)?.[1];
}

/**
 * The Docker daemon (moby, Debian's docker.io) against Wharf with auth on: login, build and push into
 * one's own namespace, cross-repository mounts, pulls by tag and digest, a push into another
 * namespace refused, pulls through /proxy/<upstream>/ from CNCF distribution (also with it stopped),
 * and Wharf as the daemon's `registry-mirrors` for Docker Hub names.
 */
describe('docker (dockerd) against Wharf', () => {
  let dir: string;
  let layout: OciLayout;
  let up: Distribution;
  let reg: TestRegistry;
  let host: string;
  let daemon: Dockerd;
  let daemonDir: string;

  /** The manifest digest Wharf answers for `repo:tag`, read as `user`. */
  async function servedDigest(repo: string, tag: string, user: keyof typeof PW): Promise<string | null> {
    const res = await fetch(`${reg.url}/v2/${repo}/manifests/${tag}`, {
      method: 'HEAD',
      headers: {
        authorization: basic(user, PW[user]),
        accept: 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json',
      },
    });
    return res.status === 200 ? res.headers.get('docker-content-digest') : null;
  }

  beforeAll(async () => {
    await requireTool('skopeo', 'skopeo');
    dir = await lowerCaseTempDir('wharf-docker-');
    layout = await buildOciLayout(join(dir, 'layout'));
    up = await startDistribution();
    const seed = await containersConfig(join(dir, 'seed'));
    for (const [ref, repo] of [['single', 'library/app:1'], ['multi', 'library/multi:1'], ['single', 'library/wharf-mirrored:1']] as const) {
      await skopeo(seed, ['copy', '--all', `oci:${layout.dir}:${ref}`, `docker://${up.host}/${repo}`, '--dest-tls-verify=false']);
    }
    reg = await startAuthRegistry({
      // As the README sets a mirror of Docker Hub up: the docker.io upstream overridden (here to reach
      // distribution), open to anonymous callers, since Docker asks a mirror without credentials.
      settings: {
        proxy: { retries: 0, default_upstream: 'docker.io', upstreams: { 'docker.io': { url: up.url, access: 'anonymous' }, up: { url: up.url } } },
      },
      authSettings: { users: Object.entries(PW).map(([name, pw]) => ({ name, password_hash: bcryptHash(pw) })) },
    });
    host = new URL(reg.url).host;
    daemonDir = await shortTempDir();
    daemon = await startDockerd(daemonDir, { mirrors: [reg.url] });
  }, 120_000);

  afterAll(async () => {
    await daemon?.close();
    if (daemonDir) await removeTree(daemonDir);
    await reg?.close();
    await up?.close();
    if (dir) await removeTree(dir);
  }, 60_000);

  test('login, build and push into the own namespace; a second repository mounts the layer; pull back by tag and digest', async () => {
    const wrong = await daemon.dockerFails(['login', '-u', 'alice', '-p', 'not-the-password', host]);
    expect(wrong.stderr).toMatch(/unauthorized|denied|incorrect/i);
    await daemon.docker(['login', '-u', 'alice', '-p', PW.alice, host]);

    const context = join(dir, 'context');
    await mkdir(context);
    await writeFile(join(context, 'hello.txt'), 'hello from docker\n');
    await writeFile(join(context, 'Dockerfile'), 'FROM scratch\nCOPY hello.txt /\nLABEL org.example.test=docker\n');
    await daemon.docker(['build', '-q', '-t', `${host}/alice/built:1`, context]);
    const pushed = await daemon.docker(['push', `${host}/alice/built:1`]);
    const digest = printedDigest(pushed.stdout);
    expect(digest).toMatch(/^sha256:/);
    expect(await servedDigest('alice/built', '1', 'alice')).toBe(digest);

    // The layer is in alice/built already: Docker mounts it rather than uploading it again.
    await daemon.docker(['tag', `${host}/alice/built:1`, `${host}/alice/copy:1`]);
    const copied = await daemon.docker(['push', `${host}/alice/copy:1`]);
    expect(copied.stdout).toMatch(/Mounted from alice\/built/);
    expect(printedDigest(copied.stdout)).toBe(digest);

    await daemon.docker(['rmi', `${host}/alice/built:1`, `${host}/alice/copy:1`]);
    const pulled = await daemon.docker(['pull', `${host}/alice/built:1`]);
    expect(printedDigest(pulled.stdout)).toBe(digest);
    await daemon.docker(['pull', `${host}/alice/copy@${digest!}`]);
    const inspected = JSON.parse((await daemon.docker(['image', 'inspect', `${host}/alice/built:1`])).stdout) as { RepoDigests: string[] }[];
    expect(inspected[0]!.RepoDigests).toEqual(expect.arrayContaining([`${host}/alice/built@${digest!}`, `${host}/alice/copy@${digest!}`]));
  }, 180_000);

  test('docker manifest (the CLI\'s own registry client) pushes a list of pushed images, and reads a proxied manifest', async () => {
    const created = await daemon.docker(['manifest', 'create', '--insecure', `${host}/alice/list:1`, `${host}/alice/built:1`]);
    expect(created.stdout).toContain('Created manifest list');
    const pushed = await daemon.docker(['manifest', 'push', '--insecure', `${host}/alice/list:1`]);
    const listDigest = /(sha256:[0-9a-f]{64})\s*$/.exec(pushed.stdout.trim())?.[1];
    expect(listDigest).toMatch(/^sha256:/);
    expect(await servedDigest('alice/list', '1', 'alice')).toBe(listDigest);
    // A Docker (schema 2) image through the proxy: the Docker 20.10 CLI reads no OCI manifest.
    await daemon.docker(['tag', `${host}/alice/built:1`, `${up.host}/library/built:1`]);
    await daemon.docker(['push', `${up.host}/library/built:1`]);
    const image = JSON.parse((await daemon.docker(['image', 'inspect', `${host}/alice/built:1`])).stdout) as { Id: string }[];
    const inspected = JSON.parse((await daemon.docker(['manifest', 'inspect', '--insecure', `${host}/proxy/up/library/built:1`])).stdout) as { config: { digest: string } };
    expect(inspected.config.digest).toBe(image[0]!.Id);
  }, 120_000);

  test("a push into another user's namespace is denied and nothing of it lands", async () => {
    await daemon.docker(['tag', `${host}/alice/built:1`, `${host}/bob/built:1`]);
    const denied = await daemon.dockerFails(['push', `${host}/bob/built:1`]);
    expect(denied.stderr).toMatch(/denied/i);
    expect(await servedDigest('bob/built', '1', 'bob')).toBeNull();
  }, 120_000);

  test('pulls through /proxy/<upstream>/ from distribution, by tag, by digest and a multi-platform index', async () => {
    const single = await daemon.docker(['pull', `${host}/proxy/up/library/app:1`]);
    expect(printedDigest(single.stdout)).toBe(layout.single.manifest.digest);
    await daemon.docker(['pull', `${host}/proxy/up/library/app@${layout.single.manifest.digest}`]);
    const multi = await daemon.docker(['pull', `${host}/proxy/up/library/multi:1`]);
    expect(printedDigest(multi.stdout)).toBe(layout.multi.index.digest);
    const inspected = JSON.parse((await daemon.docker(['image', 'inspect', `${host}/proxy/up/library/multi:1`])).stdout) as { Architecture: string; Id: string }[];
    expect(inspected[0]!.Architecture).toBe('amd64');
    expect(inspected[0]!.Id).toBe(layout.multi.images[0]!.config.digest);
  }, 180_000);

  test('as registry-mirrors: a pull of a Docker Hub name is served by Wharf from its default upstream', async () => {
    // docker.io/library/wharf-mirrored is not on Docker Hub (and this machine may not reach it): only
    // the mirror can answer, with the digest seeded into distribution. Docker asks a mirror anonymously,
    // whoever is logged in to it, hence `access = "anonymous"` on this upstream.
    const pulled = await daemon.docker(['pull', 'wharf-mirrored:1']);
    expect(printedDigest(pulled.stdout)).toBe(layout.single.manifest.digest);
    await daemon.docker(['rmi', 'wharf-mirrored:1']);
    await daemon.docker(['pull', `wharf-mirrored@${layout.single.manifest.digest}`]);
  }, 120_000);

  test('logged in to Docker Hub, the daemon still pulls through its mirror (it sends the mirror that login)', async () => {
    const file = join(daemon.configDir, 'config.json');
    const before = await readFile(file, 'utf8');
    const config = JSON.parse(before) as { auths: Record<string, { auth: string }> };
    config.auths['https://index.docker.io/v1/'] = { auth: Buffer.from('hub-user:dckr_pat_not-for-wharf').toString('base64') };
    await writeFile(file, JSON.stringify(config));
    try {
      await daemon.docker(['rmi', '-f', layout.single.config.digest]);
      const pulled = await daemon.docker(['pull', 'wharf-mirrored:1']);
      expect(printedDigest(pulled.stdout)).toBe(layout.single.manifest.digest);
    } finally {
      await writeFile(file, before);
    }
  }, 120_000);

  test('BuildKit (docker build) resolves FROM through the mirror (with ?ns=docker.io) and through /proxy/ with the login', async () => {
    // Debian's 20.10 CLI drives the daemon's BuildKit itself; newer CLIs (the machine may have one
    // first on PATH) want the buildx plugin.
    const docker = '/usr/bin/docker';
    await access(docker).catch(() => {
      throw new Error(`${docker} is missing: install the Debian package docker.io (apt-get install -y --no-install-recommends docker.io)`);
    });
    const context = join(dir, 'buildkit');
    await mkdir(context);
    await writeFile(join(context, 'hello.txt'), 'hello from BuildKit\n');
    for (const [from, digest] of [
      ['wharf-mirrored:1', layout.single.manifest.digest],
      [`${host}/proxy/up/library/multi:1`, layout.multi.index.digest],
    ] as const) {
      await writeFile(join(context, 'Dockerfile'), `FROM ${from}\nCOPY hello.txt /\n`);
      const built = await run(docker, ['-H', daemon.host, 'build', '--progress=plain', '--pull', '--no-cache', '-t', 'buildkit-test:1', context], {
        env: { ...daemon.env, DOCKER_BUILDKIT: '1' },
        timeoutMs: 120_000,
      });
      // BuildKit names the digest it resolved the FROM tag to.
      expect(built.stderr + built.stdout).toContain(`@${digest}`);
    }
  }, 180_000);

  test('with the upstream stopped, what was pulled through the proxy still pulls', async () => {
    // The image and every name of it go, so that the pull needs its blobs too.
    await daemon.docker(['rmi', '-f', layout.single.config.digest]);
    await up.kill();
    const again = await daemon.docker(['pull', `${host}/proxy/up/library/app:1`]);
    expect(printedDigest(again.stdout)).toBe(layout.single.manifest.digest);
    // Never pulled: Docker shows the 502's status line, which names the cause.
    const failed = await daemon.dockerFails(['pull', `${host}/proxy/up/library/never:1`]);
    expect(failed.stderr).toMatch(/502 Bad Gateway: upstream up .*unreachable/);
  }, 120_000);

  test('after logout, a private repository is not pulled', async () => {
    await daemon.docker(['logout', host]);
    await daemon.docker(['rmi', `${host}/alice/built:1`]);
    const refused = await daemon.dockerFails(['pull', `${host}/alice/built:1`]);
    expect(refused.stderr).toMatch(/denied|unauthorized|authentication required/i);
  }, 120_000);
});
