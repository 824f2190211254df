import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { mkdtemp as mkdtempAsync, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';

/** Debian package of each client the proxy tests drive. */
const PACKAGES: Record<string, string> = {
  skopeo: 'skopeo',
  umoci: 'umoci',
  ctr: 'containerd',
  containerd: 'containerd',
  'docker-registry': 'docker-registry',
  htpasswd: 'apache2-utils',
};

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

const temps: string[] = [];
let authFile: string | undefined;

/** A private auth file, so that no test reads or writes the machine's registry logins. */
function privateAuthFile(): string {
  if (!authFile) {
    const dir = mkdtempSync(join(tmpdir(), 'wharf-auth-'));
    temps.push(dir);
    authFile = join(dir, 'auth.json');
    writeFileSync(authFile, '{"auths":{}}');
  }
  return authFile;
}

/** A temp folder that removeTemps() deletes. */
export async function mkdtemp(prefix: string): Promise<string> {
  const dir = await mkdtempAsync(prefix);
  temps.push(dir);
  return dir;
}

/** Deletes every temp folder this module made (call in afterAll). */
export async function removeTemps(): Promise<void> {
  authFile = undefined;
  for (const dir of temps.splice(0)) await rm(dir, { recursive: true, force: true });
}

/** Runs a client; a missing binary fails with the Debian package to install, a failure with its stderr. */
export function run(cmd: string, args: readonly string[], options: { timeout?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { timeout: options.timeout ?? 60_000, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, REGISTRY_AUTH_FILE: privateAuthFile(), ...options.env } },
      (err, stdout, stderr) => {
        if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') {
          reject(new Error(`"${cmd}" is not installed: apt-get install ${PACKAGES[cmd] ?? cmd}`));
        } else if (err) {
          reject(new Error(`${cmd} ${args.join(' ')} failed (${String((err as { code?: unknown }).code ?? err.message)}):\n${stderr}`));
        } else {
          resolve({ stdout, stderr });
        }
      },
    );
  });
}

export const sha256 = (b: Uint8Array | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** What a client got: the status, and the body's sha256 or 'cut' when the connection broke. */
export async function download(url: string): Promise<{ status: number; body: string }> {
  const res = await fetch(url).catch(() => undefined);
  if (!res) return { status: 0, body: 'cut' };
  const body = await res.arrayBuffer().then(
    (b) => sha256(new Uint8Array(b)),
    () => 'cut',
  );
  return { status: res.status, body };
}

export interface Layout {
  readonly dir: string;
  /** `single`: one linux/amd64 image; `multi`: an index of linux/amd64 and linux/arm64. */
  readonly single: string;
  readonly multi: string;
  /** Manifest digests of the two platform images. */
  readonly amd64: string;
  readonly arm64: string;
}

interface IndexJson {
  schemaVersion: number;
  manifests: { mediaType: string; digest: string; size: number; annotations?: Record<string, string> }[];
}

/** Builds an OCI layout offline with umoci: image `single` and two-platform index `multi`. */
export async function buildLayout(seed: string): Promise<Layout> {
  const root = await mkdtemp(join(tmpdir(), 'wharf-layout-'));
  const dir = join(root, 'img');
  const file = join(root, 'hello.txt');
  await writeFile(file, `hello from ${seed}\n`);
  await run('umoci', ['init', '--layout', dir]);
  await run('umoci', ['new', '--image', `${dir}:base`]);
  await run('umoci', ['insert', '--rootless', '--image', `${dir}:base`, file, '/hello.txt']);
  await run('umoci', ['config', '--image', `${dir}:base`, '--architecture', 'amd64', '--os', 'linux', '--config.label', `seed=${seed}`, '--tag', 'single']);
  await run('umoci', ['config', '--image', `${dir}:base`, '--architecture', 'arm64', '--os', 'linux', '--config.label', `seed=${seed}`, '--tag', 'arm64']);
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as IndexJson;
  const byName = (name: string) => index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === name)!;
  const amd64 = byName('single');
  const arm64 = byName('arm64');
  const multi = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        { mediaType: amd64.mediaType, digest: amd64.digest, size: amd64.size, platform: { architecture: 'amd64', os: 'linux' } },
        { mediaType: arm64.mediaType, digest: arm64.digest, size: arm64.size, platform: { architecture: 'arm64', os: 'linux' } },
      ],
    }),
  );
  const multiDigest = sha256(multi);
  await writeFile(join(dir, 'blobs', 'sha256', multiDigest.slice(7)), multi);
  index.manifests.push({ mediaType: 'application/vnd.oci.image.index.v1+json', digest: multiDigest, size: multi.length, annotations: { 'org.opencontainers.image.ref.name': 'multi' } });
  await writeFile(join(dir, 'index.json'), JSON.stringify(index));
  return { dir, single: amd64.digest, multi: multiDigest, amd64: amd64.digest, arm64: arm64.digest };
}

/** Pushes `single` as <repo>:1 and `multi` as <multiRepo>:1 with skopeo. */
export async function seed(layout: Layout, host: string, repo: string, multiRepo: string, creds?: string): Promise<void> {
  const auth = creds ? ['--dest-creds', creds] : [];
  await run('skopeo', ['copy', '--dest-tls-verify=false', ...auth, `oci:${layout.dir}:single`, `docker://${host}/${repo}:1`]);
  await run('skopeo', ['copy', '--all', '--dest-tls-verify=false', ...auth, `oci:${layout.dir}:multi`, `docker://${host}/${multiRepo}:1`]);
}

/** Pulls with skopeo into a fresh OCI layout; returns the digest of what it wrote (index or manifest). */
export async function pull(source: string, options: { all?: boolean; creds?: string } = {}): Promise<string> {
  const out = join(await mkdtemp(join(tmpdir(), 'wharf-pull-')), 'out');
  const args = ['copy', '--src-tls-verify=false', ...(options.all ? ['--all'] : []), ...(options.creds ? ['--src-creds', options.creds] : [])];
  await run('skopeo', [...args, `docker://${source}`, `oci:${out}:pulled`]);
  const index = JSON.parse(await readFile(join(out, 'index.json'), 'utf8')) as IndexJson;
  return index.manifests[0]!.digest;
}
