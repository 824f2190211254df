import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseToml } from 'smol-toml';
import { parse as parseYaml } from 'yaml';
import { buildConfig, type WharfConfig } from '../../src/config.js';
import { run, runFails } from '../helpers/clients.js';
import { WHARF_CLI, freePort, startWharfProcess, type WharfProcess } from '../helpers/wharf-process.js';
import { eventually, request, writeOpsConfig } from './helpers.js';

/**
 * No Docker engine here: the Dockerfile and docker-compose.yml are parsed and checked against each
 * other and against the default configuration, and the HEALTHCHECK command is run for real against a
 * Wharf process.
 */

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');

interface Instruction {
  readonly op: string;
  readonly args: string;
  /** The stage (0-based FROM count) it belongs to. */
  readonly stage: number;
}

/** Dockerfile instructions, continuation lines joined, comments dropped. */
function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let stage = -1;
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (pending === '' && (line === '' || line.startsWith('#'))) continue;
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    const full = pending + line;
    pending = '';
    const m = /^(\w+)\s+(.*)$/.exec(full);
    if (!m) continue;
    const op = m[1]!.toUpperCase();
    if (op === 'FROM') stage += 1;
    out.push({ op, args: m[2]!, stage });
  }
  return out;
}

/** The exec form `["a", "b"]` of CMD, ENTRYPOINT, HEALTHCHECK CMD or VOLUME. */
function execForm(args: string): string[] {
  const parsed = JSON.parse(args) as unknown;
  if (!Array.isArray(parsed) || parsed.some((p) => typeof p !== 'string')) throw new Error(`not an exec-form array: ${args}`);
  return parsed as string[];
}

/** A duration of compose ("40s", "1m30s") in seconds. */
function composeSeconds(value: string): number {
  let total = 0;
  for (const m of value.matchAll(/(\d+)(h|m|s)/g)) total += Number(m[1]) * { h: 3600, m: 60, s: 1 }[m[2] as 'h' | 'm' | 's'];
  return total;
}

interface ComposeService {
  build?: string;
  image?: string;
  ports?: string[];
  volumes?: string[];
  environment?: Record<string, string>;
  stop_grace_period?: string;
  healthcheck?: { test: string[]; interval?: string; timeout?: string; retries?: number };
}

const dockerfileText = readFileSync(join(REPO, 'Dockerfile'), 'utf8');
const composeText = readFileSync(join(REPO, 'docker-compose.yml'), 'utf8');
const docker = parseDockerfile(dockerfileText);
const finalStage = Math.max(...docker.map((i) => i.stage));
const final = (op: string) => docker.filter((i) => i.stage === finalStage && i.op === op);
const compose = parseYaml(composeText) as { services: Record<string, ComposeService>; volumes?: Record<string, unknown> };

/** The default configuration as the container sees it: /app/configuration.toml, relative paths from /app. */
function containerConfig(env: NodeJS.ProcessEnv = {}): WharfConfig {
  const doc = parseToml(readFileSync(join(REPO, 'configuration.toml'), 'utf8')) as Record<string, unknown>;
  return buildConfig(doc, { env, fileDir: '/app', cwd: '/app' });
}

describe('Dockerfile', () => {
  test('is multi-stage, on Node 24 LTS slim, and the final stage runs as a non-root user', () => {
    const froms = docker.filter((i) => i.op === 'FROM');
    expect(froms.length).toBeGreaterThanOrEqual(2);
    expect(froms[0]!.args).toMatch(/^node:24[\w.-]*-slim AS build$/i);
    expect(froms.at(-1)!.args).toMatch(/^node:24[\w.-]*-slim$/);
    expect(final('COPY').some((c) => c.args.startsWith('--from=build '))).toBe(true);
    const users = final('USER');
    expect(users).toHaveLength(1);
    expect(users[0]!.args).not.toMatch(/^(root|0)(:|$)/);
  });

  test('keeps storage in a volume, exposes the configured port, and runs serve with the mountable configuration', () => {
    const volumes = final('VOLUME').flatMap((v) => execForm(v.args));
    expect(volumes).toEqual(['/app/storage']);
    expect(final('EXPOSE').map((e) => e.args)).toEqual([String(containerConfig().listen.port)]);
    expect(final('WORKDIR').at(-1)!.args).toBe('/app');
    expect([...execForm(final('ENTRYPOINT')[0]!.args), ...execForm(final('CMD')[0]!.args)]).toEqual([
      'node', '--max-semi-space-size=4', '--heap-growing-percent=100', 'packages/server/dist/cli.js', 'serve', '--config', '/app/configuration.toml',
    ]);
  });

  test('the image starts node with the same flags and malloc setting as `pnpm wharf` and `pnpm start`', () => {
    const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    const script = pkg.scripts.wharf!.split(/\s+/);
    // `exec env`: the shell pnpm runs the script in becomes node (see the Ctrl-C test below).
    expect(script.slice(0, 2)).toEqual(['exec', 'env']);
    const assignments = script.filter((w) => /^[A-Z_][A-Z0-9_]*=/.test(w));
    expect(assignments).toEqual(['MALLOC_TOP_PAD_=2097152']);
    const entry = execForm(final('ENTRYPOINT')[0]!.args);
    expect(entry).toEqual(script.slice(2 + assignments.length));
    expect(script).toContain('--max-semi-space-size=4');
    expect(final('ENV').map((e) => e.args)).toContain('MALLOC_TOP_PAD_=2097152');
    expect(pkg.scripts.start).toBe(`${pkg.scripts.wharf} serve`);
  });

  test('this node accepts the flags `pnpm wharf` starts it with', async () => {
    const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    const flags = pkg.scripts.wharf!.split(/\s+/).filter((w) => w.startsWith('--'));
    expect(flags.length).toBeGreaterThan(0);
    const child = spawn(process.execPath, [...flags, '-e', 'process.exit(0)'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
  });

  test('HEALTHCHECK runs `wharf healthcheck` (GET /health) with the same configuration', () => {
    const health = final('HEALTHCHECK');
    expect(health).toHaveLength(1);
    const m = /^(.*?)\bCMD\s+(\[.*\])$/.exec(health[0]!.args);
    expect(m).not.toBeNull();
    expect(execForm(m![2]!)).toEqual(['node', 'packages/server/dist/cli.js', 'healthcheck', '--config', '/app/configuration.toml']);
  });
});

describe('pnpm wharf serve', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-pnpm-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  /** `pnpm wharf serve` in a process group of its own, as a terminal's foreground job is, once it listens. */
  async function pnpmServe(): Promise<{ child: ChildProcess; output: () => string; exited: Promise<number | null> }> {
    const port = await freePort();
    const file = await writeOpsConfig(root, port);
    const child = spawn('pnpm', ['wharf', 'serve', '--config', file], {
      cwd: REPO,
      detached: true,
      env: { ...process.env, NODE_OPTIONS: '', npm_config_update_notifier: 'false' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      await eventually(() => output.includes('wharf listening'), `wharf listening in:\n${output}`, 30_000);
    } catch (err) {
      process.kill(-child.pid!, 'SIGKILL');
      throw err;
    }
    return { child, output: () => output, exited };
  }

  // Ctrl-C reaches the terminal's whole process group: pnpm, the shell it runs the script in, and
  // node. A shell waiting for node died of the SIGINT itself (exit 130) even though Wharf shut down
  // cleanly and exited 0, and pnpm then printed "ELIFECYCLE Command failed".
  test('Ctrl-C stops Wharf cleanly and pnpm exits 0, without ELIFECYCLE', async () => {
    const { child, output, exited } = await pnpmServe();
    try {
      process.kill(-child.pid!, 'SIGINT');
      const code = await exited;
      expect(output()).toContain('wharf stopped');
      expect(output()).not.toContain('ELIFECYCLE');
      expect(code).toBe(0);
    } finally {
      if (child.exitCode === null) process.kill(-child.pid!, 'SIGKILL');
    }
  }, 60_000);

  // systemd's `stop` (KillMode=control-group) and `kill -- -PGID` signal the whole group too: node
  // gets the SIGTERM from the kernel and again from pnpm, which forwards it.
  test('a SIGTERM to the process group is one signal: Wharf stops cleanly, not at once', async () => {
    const { child, output, exited } = await pnpmServe();
    try {
      process.kill(-child.pid!, 'SIGTERM');
      await exited;
      expect(output()).toContain('wharf stopped');
      expect(output()).not.toContain('second SIGTERM');
    } finally {
      if (child.exitCode === null) process.kill(-child.pid!, 'SIGKILL');
    }
  }, 60_000);
});

describe('docker-compose.yml', () => {
  const wharf = compose.services.wharf!;

  test('builds this Dockerfile and publishes the port the configuration listens on', () => {
    expect(wharf.build).toBe('.');
    const port = containerConfig().listen.port;
    expect(port).toBe(5000);
    expect(wharf.ports).toContain(`${port}:${final('EXPOSE')[0]!.args}`);
  });

  test('mounts a named volume on the image volume, and the configuration where the image reads it', () => {
    const [volume, configMount] = [wharf.volumes!.find((v) => !v.startsWith('.')), wharf.volumes!.find((v) => v.startsWith('./'))];
    const [name, target] = volume!.split(':');
    expect(Object.keys(compose.volumes ?? {})).toContain(name);
    expect([target]).toEqual(final('VOLUME').flatMap((v) => execForm(v.args)));
    expect(configMount).toBe('./configuration.toml:/app/configuration.toml:ro');
  });

  test('every path the default configuration writes lies inside that volume', () => {
    const target = wharf.volumes!.find((v) => !v.startsWith('.'))!.split(':')[1]!;
    const c = containerConfig();
    for (const path of [c.registryStorage, c.temporaryRegistryStorage, c.proxyStorage, c.database, c.tls.dir]) {
      expect(path.startsWith(`${target}/`)).toBe(true);
    }
  });

  test('its healthcheck is the Dockerfile HEALTHCHECK, and the stop grace period outlasts shutdown_timeout', () => {
    const m = /\bCMD\s+(\[.*\])$/.exec(final('HEALTHCHECK')[0]!.args)!;
    expect(wharf.healthcheck!.test).toEqual(['CMD', ...execForm(m[1]!)]);
    expect(composeSeconds(wharf.stop_grace_period!) * 1000).toBeGreaterThan(containerConfig().shutdownTimeout);
  });

  test('the commented TLS variant is a valid service with the same volume and healthcheck, and its settings load', () => {
    const lines = composeText.split('\n');
    const from = lines.findIndex((l) => l.includes('# wharf-tls:'));
    const to = lines.findIndex((l) => l.includes('# --- end of the TLS variant'));
    expect(from).toBeGreaterThan(0);
    const uncommented = lines.slice(from, to).map((l) => l.replace(/^(\s*)# ?/, '$1')).join('\n');
    const variant = (parseYaml(`services:\n${uncommented}\n`) as { services: Record<string, ComposeService> }).services['wharf-tls']!;
    expect(variant.volumes).toEqual(wharf.volumes);
    expect(variant.healthcheck).toEqual(wharf.healthcheck);
    expect(variant.ports).toContain('5000:5000');
    const c = containerConfig(variant.environment);
    expect(c.tls).toMatchObject({ enabled: true, selfSigned: true, hosts: ['wharf.example.com', '192.168.1.10'], redirectHttp: { port: 8080 } });
    expect(variant.ports).toContain(`80:${c.tls.redirectHttp!.port}`);
  });
});

describe('wharf healthcheck', () => {
  let root: string;
  let proc: WharfProcess | undefined;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-health-'));
  });

  afterAll(async () => {
    await proc?.kill('SIGKILL');
    await rm(root, { recursive: true, force: true });
  });

  test('exits 0 with the URL of /health while Wharf answers, over HTTP and HTTPS, and 1 once it is gone', async () => {
    const port = await freePort();
    const plain = await writeOpsConfig(root, port);
    proc = await startWharfProcess(plain, port);
    const ok = await run(process.execPath, [WHARF_CLI, 'healthcheck', '--config', plain]);
    expect(ok.stdout.trim()).toBe(`ok http://127.0.0.1:${port}/health`);
    // --url takes a base URL, or the URL of /health itself.
    for (const url of [`http://127.0.0.1:${port}`, `http://127.0.0.1:${port}/health`]) {
      expect((await run(process.execPath, [WHARF_CLI, 'healthcheck', '--url', url])).stdout.trim()).toBe(`ok http://127.0.0.1:${port}/health`);
    }
    // A second server on the taken port says which setting moves it, in one line.
    const taken = await runFails(process.execPath, [WHARF_CLI, 'serve', '--config', plain]);
    expect(taken.exitCode).toBe(2);
    expect(taken.stderr.trim()).toBe(`wharf: configuration error: cannot listen on 127.0.0.1:${port} (EADDRINUSE): set "listen" in the configuration, or WHARF_LISTEN=127.0.0.1:5001`);
    await proc.kill('SIGTERM');

    const tls = await writeOpsConfig(root, port, { tables: ['[tls]', 'self_signed = true'] });
    const p = spawn(process.execPath, [WHARF_CLI, 'serve', '--config', tls], { cwd: root, stdio: 'ignore' });
    try {
      const up = async () => (await request(`https://127.0.0.1:${port}/health`, { ca: readFileSync(join(root, 'storage', 'tls', 'ca.crt')) })).status === 200;
      await eventually(() => up().catch(() => false), 'wharf over HTTPS', 20_000);
      const answered = await run(process.execPath, [WHARF_CLI, 'healthcheck', '--config', tls]);
      expect(answered.stdout.trim()).toBe(`ok https://127.0.0.1:${port}/health`);
    } finally {
      p.kill('SIGTERM');
      await new Promise((r) => p.once('exit', r));
    }
    const gone = await runFails(process.execPath, [WHARF_CLI, 'healthcheck', '--config', tls, '--timeout', '1']);
    expect(gone.exitCode).toBe(1);
    expect(gone.stderr).toContain(`unhealthy: https://127.0.0.1:${port}/health`);
  });
});
