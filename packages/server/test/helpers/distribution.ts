import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Distribution {
  /** http://127.0.0.1:<port> */
  readonly url: string;
  /** 127.0.0.1:<port>, as image references spell it. */
  readonly host: string;
  readonly port: number;
  /** Stops the process (the folder stays until close). */
  kill(): Promise<void>;
  /** Stops the process and removes its folder. */
  close(): Promise<void>;
}

export interface DistributionOptions {
  /** Turns on htpasswd (bcrypt) basic auth with this one user. */
  readonly htpasswd?: { readonly username: string; readonly password: string };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

function requireBinary(cmd: string, pkg: string): void {
  const found = spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
  if (!found) throw new Error(`"${cmd}" is not installed: the proxy tests need the Debian package ${pkg} (apt-get install ${pkg})`);
}

/**
 * CNCF distribution (Debian's docker-registry) on 127.0.0.1 and a free port, with filesystem storage in a
 * temp folder and, optionally, htpasswd basic auth. Resolves once /v2/ answers.
 */
export async function startDistribution(options: DistributionOptions = {}): Promise<Distribution> {
  requireBinary('docker-registry', 'docker-registry');
  const dir = await mkdtemp(join(tmpdir(), 'wharf-distribution-'));
  const port = await freePort();
  let auth = '';
  if (options.htpasswd) {
    requireBinary('htpasswd', 'apache2-utils');
    const { username, password } = options.htpasswd;
    const made = spawnSync('htpasswd', ['-Bbn', username, password], { encoding: 'utf8' });
    if (made.status !== 0) throw new Error(`htpasswd failed: ${made.stderr}`);
    await writeFile(join(dir, 'htpasswd'), made.stdout);
    auth = `auth:\n  htpasswd:\n    realm: basic-realm\n    path: ${join(dir, 'htpasswd')}\n`;
  }
  const yml = join(dir, 'config.yml');
  await writeFile(
    yml,
    `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:${port}\n${auth}`,
  );
  const child: ChildProcess = spawn('docker-registry', ['serve', yml], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('exit', () => ((exited = true), resolve())));
  const url = `http://127.0.0.1:${port}`;
  const kill = async () => {
    if (!exited) child.kill('SIGTERM');
    await exit;
  };
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (exited) throw new Error(`docker-registry exited at start:\n${stderr}`);
    const status = await fetch(`${url}/v2/`).then(
      (r) => r.status,
      () => 0,
    );
    if (status === 200 || status === 401) break;
    if (Date.now() > deadline) {
      await kill();
      throw new Error(`docker-registry did not answer on ${url} within 15 s:\n${stderr}`);
    }
    await sleep(50);
  }
  return {
    url,
    host: `127.0.0.1:${port}`,
    port,
    kill,
    async close() {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
