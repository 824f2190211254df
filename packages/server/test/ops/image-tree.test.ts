import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFile, spawn } from 'node:child_process';
import { access, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { pushImage } from '../helpers/oci.js';
import { freePort, startWharfProcess, type WharfProcess } from '../helpers/wharf-process.js';
import { eventually, listeningLine, writeOpsConfig } from './helpers.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
/** Node 24, the image's runtime (scripts/install-deps.sh installs it from npm). */
const NODE24 = join(REPO, '.cache/node24/node_modules/.bin/node');

/**
 * What the image's build stage makes (Dockerfile: scripts/image-tree.sh), made here from a copy of
 * this working tree on Node 24, and Wharf run from it. There is no Docker engine here to build the
 * image itself; the base image adds only Node and pnpm.
 */
describe('the image tree (scripts/image-tree.sh)', () => {
  let tree: string;
  let output = '';

  beforeAll(async () => {
    await access(NODE24).catch(() => {
      throw new Error(`${NODE24} is missing: run scripts/install-deps.sh (it installs Node 24 from npm)`);
    });
    tree = await mkdtemp(join(tmpdir(), 'wharf-image-tree-'));
    // The files the image's `COPY . .` takes: tracked and new ones, not what .gitignore (and
    // .dockerignore alike) leaves out, such as node_modules, dist and .cache.
    await sh(`git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C '${tree}'`, REPO);
    // Nothing of this test's own pnpm, turbo or jest run leaks into the install.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(npm_|PNPM_|TURBO_|NODE_OPTIONS$|INIT_CWD$)/i.test(k)));
    env.PATH = `${dirname(NODE24)}:${process.env.PATH ?? ''}`;
    output = await sh('bash scripts/image-tree.sh 2>&1', tree, env);
  }, 300_000);

  afterAll(async () => {
    if (tree) await rm(tree, { recursive: true, force: true });
  });

  test('holds production dependencies only, and one SQLite binding: the one Node 24 loads', async () => {
    const store = await readdir(join(tree, 'node_modules/.pnpm'));
    // The build's tools, left in node_modules/.pnpm by a plain `pnpm install --prod` (134 MB).
    for (const tool of ['typescript@', 'turbo@', '@turbo+', 'jest@', '@swc+core@', '@types+node@']) {
      expect(store.filter((entry) => entry.startsWith(tool))).toEqual([]);
    }
    const natives = (await filesUnder(join(tree, 'node_modules'))).filter((file) => file.endsWith('.node'));
    expect(natives.map((file) => relative(tree, file))).toEqual([
      expect.stringMatching(/^node_modules\/\.pnpm\/better-sqlite3@13\.[^/]+\/node_modules\/better-sqlite3\/prebuilds\/linux-x64\.node$/),
    ]);
    expect(output).toMatch(/prune-sqlite-bindings: kept .*linux-x64\.node \(better-sqlite3-napi\), for Node v24\./);
    // 207 MB before; about 30 now.
    expect(await bytesUnder(join(tree, 'node_modules'))).toBeLessThan(40 * 1024 * 1024);
    for (const name of ['registry-core', 'proxy', 'server']) {
      const entries = await readdir(join(tree, 'packages', name));
      expect(entries).toContain('dist');
      expect(entries).not.toContain('src');
      expect(entries).not.toContain('test');
    }
  });

  test('Wharf runs from it on Node 24: a push served back, a pull through its proxy, and its healthcheck', async () => {
    const root = await mkdtemp(join(tmpdir(), 'wharf-image-run-'));
    let server: WharfProcess | undefined;
    try {
      const port = await freePort();
      // Its own proxy's upstream: the proxy's HTTP client and cache run from the tree too.
      const configFile = await writeOpsConfig(root, port, { proxy: ['enabled = true', '[proxy.upstreams.self]', `url = "http://127.0.0.1:${port}"`] });
      const cli = join(tree, 'packages/server/dist/cli.js');
      server = await startWharfProcess(configFile, port, NODE24, cli);
      const { manifest, layer } = await pushImage(server.url, 'alice/app', '1');
      for (const prefix of ['', 'proxy/self/']) {
        const got = await fetch(`${server.url}/v2/${prefix}alice/app/manifests/1`, { headers: { Accept: manifest.mediaType } });
        expect([got.status, Buffer.from(await got.arrayBuffer()).equals(manifest.bytes)]).toEqual([200, true]);
        const pulled = await fetch(`${server.url}/v2/${prefix}alice/app/blobs/${layer.digest}`);
        expect([pulled.status, Buffer.from(await pulled.arrayBuffer()).equals(layer.bytes)]).toEqual([200, true]);
      }
      // It runs on the binding that was kept (its log lines go out within 200 ms).
      await eventually(() => listeningLine(server!.output()) !== undefined, 'the listening line');
      const listening = listeningLine(server.output());
      expect(listening?.sqlite).toMatch(/^better-sqlite3 13\./);
      // The Dockerfile's HEALTHCHECK command.
      const { stdout } = await promisify(execFile)(NODE24, [cli, 'healthcheck', '--config', configFile], { timeout: 30_000 });
      expect(stdout).toContain('/health');
    } finally {
      await server?.kill('SIGKILL');
      await rm(root, { recursive: true, force: true });
    }
  }, 60_000);
});

/** Runs `command` with bash in `cwd`; resolves with its standard output, rejects with it on failure. */
function sh(command: string, cwd: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn('bash', ['-o', 'pipefail', '-c', command], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString('utf8')));
    child.stderr.on('data', (chunk: Buffer) => (out += chunk.toString('utf8')));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolvePromise(out) : reject(new Error(`${command} exited ${code}:\n${out.slice(-4000)}`))));
  });
}

/** Every file under `dir`, symbolic links not followed. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((entry) => entry.isFile()).map((entry) => join(entry.parentPath, entry.name));
}

/** Bytes of the files under `dir`. */
async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  for (const file of await filesUnder(dir)) total += (await stat(file)).size;
  return total;
}
