// Starting, watching and stopping the two registries under test: Wharf (this repository's build) and
// CNCF distribution (Debian's docker-registry). Node built-ins only.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

// ---------------------------------------------------------------------------------------------
// Cleanup: every child and temp dir is registered here, and removed on normal exit, on error and on
// SIGINT/SIGTERM.

const children = new Set(); // Running instances
const tempDirs = new Set();
let cleaning;

export function registerTempDir(dir) {
  tempDirs.add(dir);
}

/** Stops every child (SIGTERM, then SIGKILL after 5 s) and removes every temp dir. Idempotent. */
export function cleanup() {
  cleaning ??= (async () => {
    await Promise.all([...children].map((c) => stopServer(c)));
    children.clear();
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
    tempDirs.clear();
  })();
  return cleaning;
}

/** Last resort when the process exits without having awaited cleanup(): synchronous. */
function cleanupSync() {
  for (const c of children) {
    if (c.child.exitCode === null && c.child.signalCode === null) {
      try {
        process.kill(c.child.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
}

let handlersInstalled = false;
export function installExitHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', cleanupSync);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(signal, () => {
      process.stderr.write(`\nbench: ${signal} received, stopping the servers and removing temp files\n`);
      cleanup().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
    });
  }
}

// ---------------------------------------------------------------------------------------------

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Builds Wharf when the CLI is not built yet. */
export function ensureWharfBuilt(root) {
  const cli = join(root, 'packages/server/dist/cli.js');
  if (existsSync(cli)) return cli;
  process.stderr.write('bench: packages/server/dist/cli.js is missing, running pnpm build\n');
  const r = spawnSync('pnpm', ['build'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0 || !existsSync(cli)) throw new Error(`pnpm build failed (status ${r.status ?? r.signal}); cannot benchmark Wharf`);
  return cli;
}

function which(cmd) {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    if (dir && existsSync(join(dir, cmd))) return join(dir, cmd);
  }
  return existsSync(`/usr/bin/${cmd}`) ? `/usr/bin/${cmd}` : undefined;
}

/** Finds docker-registry, installing Debian's package when we are root. */
export function ensureDistribution() {
  let bin = which('docker-registry');
  if (bin) return bin;
  if (typeof process.getuid === 'function' && process.getuid() === 0) {
    process.stderr.write('bench: docker-registry is missing, running apt-get install -y docker-registry\n');
    let r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'docker-registry'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    if (r.status !== 0) {
      spawnSync('apt-get', ['update'], { stdio: 'inherit' });
      r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'docker-registry'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    }
    bin = which('docker-registry');
    if (r.status === 0 && bin) return bin;
    throw new Error('apt-get install -y docker-registry failed; install CNCF distribution (Debian package docker-registry) and retry');
  }
  throw new Error('docker-registry (CNCF distribution) is not installed and we are not root: run `apt-get install -y docker-registry` as root, then retry');
}

export function distributionVersion(bin) {
  try {
    return execFileSync(bin, ['--version'], { encoding: 'utf8', timeout: 5_000 }).trim();
  } catch {
    return 'unknown';
  }
}

// ---------------------------------------------------------------------------------------------

/** A running server: name, base URL, pid, captured log lines and counts of warnings/errors. */
class Running {
  constructor(name, child, base) {
    this.name = name;
    this.child = child;
    this.pid = child.pid;
    this.base = base;
    this.logLines = [];
    /** Called with every log line (the upstream's access log is counted this way). */
    this.lineListeners = [];
    this.logCount = 0;
    this.warnCount = 0;
    this.errorCount = 0;
    this.stopping = false;
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    this.exited.then(({ code, signal }) => {
      if (!this.stopping) process.stderr.write(`bench: ${name} exited unexpectedly (code ${code}, signal ${signal})\n`);
    });
    for (const stream of [child.stdout, child.stderr]) {
      let partial = '';
      stream.setEncoding('utf8');
      stream.on('data', (text) => {
        const lines = (partial + text).split('\n');
        partial = lines.pop();
        for (const line of lines) if (line.trim()) this.onLog(line);
      });
    }
  }

  onLog(line) {
    for (const listener of this.lineListeners) listener(line);
    this.logCount += 1;
    const level = classify(line);
    if (level === 'error') this.errorCount += 1;
    else if (level === 'warn') this.warnCount += 1;
    if (this.logLines.length < 200) this.logLines.push(line.length > 600 ? `${line.slice(0, 600)}…` : line);
  }

  get alive() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }
}

function classify(line) {
  // pino: {"level":50,...}; distribution (logrus): level=error ...
  const m = /"level":(\d+)/.exec(line);
  if (m) return Number(m[1]) >= 50 ? 'error' : Number(m[1]) >= 40 ? 'warn' : 'info';
  if (/level=(error|fatal|panic)/.test(line) || /^panic:/.test(line)) return 'error';
  if (/level=warn/.test(line)) return 'warn';
  return 'other';
}

export function launch(name, command, args, base, options) {
  const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  const running = new Running(name, child, base);
  children.add(running);
  return running;
}

export async function waitReady(running, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  while (Date.now() < deadline) {
    if (!running.alive) {
      throw new Error(`${running.name} exited during start-up:\n${running.logLines.slice(-20).join('\n')}`);
    }
    try {
      const res = await fetch(`${running.base}/v2/`, { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
      lastError = new Error(`GET /v2/ answered ${res.status}`);
    } catch (err) {
      lastError = err;
    }
    await sleep(50);
  }
  throw new Error(`${running.name} did not answer GET /v2/ within ${timeoutMs} ms: ${lastError?.message ?? ''}`);
}

/** The node flags of the root package.json's `wharf` script, so Wharf runs here as `pnpm wharf` runs it. */
/** The environment assignments and node flags of `pnpm wharf`, so the bench starts Wharf as users do. */
function wharfStart(root) {
  const script = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).scripts?.wharf ?? '';
  const words = script.trim().split(/\s+/);
  // `exec env NAME=value node --flag ... cli.js`: the shell's exec and env(1) come before the assignments.
  if (words[0] === 'exec') words.shift();
  if (words[0] === 'env') words.shift();
  const env = {};
  while (words.length > 0 && /^[A-Z_][A-Z0-9_]*=/.test(words[0])) {
    const [name, ...value] = words.shift().split('=');
    env[name] = value.join('=');
  }
  // Loud rather than a Wharf started without the flags users get (as happened from 4a4a43b on).
  if (words[0] !== 'node') throw new Error(`bench: cannot tell how \`pnpm wharf\` starts node: ${script}`);
  return { env, flags: words.slice(1).filter((w) => w.startsWith('--')) };
}

export async function startWharf({ root, cli, dir, name = 'wharf', extraToml = [] }) {
  const port = await freePort();
  mkdirSync(dir, { recursive: true });
  const toml = join(dir, 'wharf.toml');
  const q = (s) => JSON.stringify(s); // TOML basic strings accept JSON string escapes
  writeFileSync(
    toml,
    [
      `listen = ${q(`127.0.0.1:${port}`)}`,
      `registry_storage = ${q(join(dir, 'registry'))}`,
      `temporary_registry_storage = ${q(join(dir, 'tmp'))}`,
      `proxy_storage = ${q(join(dir, 'proxy'))}`,
      `database = ${q(join(dir, 'wharf.db'))}`,
      `log_level = "warn"`,
      // Loopback only, compared with an auth-less distribution: measure the storage path, not bcrypt.
      '[auth]',
      'enabled = false',
      ...extraToml,
      '',
    ].join('\n'),
  );
  // The server's own environment must not override the file (WHARF_* variables), nor send the
  // upstream requests of the proxy workloads (all on loopback) through an egress proxy.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WHARF_') && !/^(https?|no)_proxy$/i.test(k)));
  const start = wharfStart(root);
  const running = launch(name, process.execPath, [...start.flags, cli, 'serve', '--config', toml], `http://127.0.0.1:${port}`, { cwd: root, env: { ...env, ...start.env } });
  await waitReady(running);
  return running;
}

/** `link` (bench/link.mjs): run it at the far end of that link instead of on 127.0.0.1. */
export async function startDistribution({ bin, dir, name = 'distribution', proxyUrl, accessLog = false, link }) {
  const port = await freePort();
  const host = link ? link.address : '127.0.0.1';
  mkdirSync(join(dir, 'data'), { recursive: true });
  const yml = join(dir, 'registry.yml');
  writeFileSync(
    yml,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog:',
      // Wharf at log_level=warn writes no per-request line either; the proxy bench's upstream counts GETs with it
      `    disabled: ${!accessLog}`,
      'storage:',
      '  cache:',
      '    blobdescriptor: inmemory',
      '  filesystem:',
      `    rootdirectory: ${JSON.stringify(join(dir, 'data'))}`,
      '  delete:',
      '    enabled: true',
      '  maintenance:',
      '    uploadpurging:',
      '      enabled: false',
      'http:',
      `  addr: ${host}:${port}`,
      `  secret: ${randomBytes(16).toString('hex')}`, // else distribution warns that it made one up
      ...(proxyUrl ? ['proxy:', `  remoteurl: ${proxyUrl}`] : []),
      '',
    ].join('\n'),
  );
  // Keep REGISTRY_* variables of the caller from changing the configuration.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('REGISTRY_')));
  const [command, args] = link ? link.command(bin, ['serve', yml]) : [bin, ['serve', yml]];
  const running = launch(name, command, args, `http://${host}:${port}`, { cwd: dir, env });
  await waitReady(running);
  return running;
}

/**
 * A bare node:http server (no framework, no storage) answering every request with `length` bytes, the
 * way a manifest GET is answered: the ceiling of what the load client can measure on this machine.
 */
export async function startBareHttp(length) {
  const port = await freePort();
  const code = `
    const http = require('node:http');
    const body = Buffer.alloc(${Number(length)}, 120);
    http.createServer((req, res) => {
      res.setHeader('Content-Type', 'application/vnd.oci.image.manifest.v1+json');
      res.setHeader('Docker-Content-Digest', 'sha256:${'0'.repeat(64)}');
      res.setHeader('Content-Length', body.length);
      res.end(req.method === 'HEAD' ? undefined : body);
    }).listen(${port}, '127.0.0.1');
    process.on('SIGTERM', () => process.exit(0));`;
  const running = launch('bare-node-http', process.execPath, ['-e', code], `http://127.0.0.1:${port}`, {});
  await waitReady(running);
  return running;
}

/** Stops one server started here (SIGTERM, SIGKILL after 5 s). */
export async function stopServer(running) {
  if (running.alive) {
    running.stopping = true;
    running.child.kill('SIGTERM');
    const done = await Promise.race([running.exited.then(() => true), sleep(5_000).then(() => false)]);
    if (!done) {
      running.child.kill('SIGKILL');
      await running.exited;
    }
  }
  children.delete(running);
}

// ---------------------------------------------------------------------------------------------
// /proc sampling

let clkTck;
function clockTicks() {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** utime + stime of a process, in seconds. */
export function cpuSeconds(pid) {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime is field 14, stime field 15.
  return (Number(fields[11]) + Number(fields[12])) / clockTicks();
}

/**
 * CPU seconds spent by user processes on the whole machine: user + nice + system from the first line of
 * /proc/stat, minus what kernel threads (kworker writeback, jbd2, ksoftirqd…) used. irq and softirq time
 * (loopback networking) is left out: it is caused by the benchmark itself.
 */
export function machineBusySeconds() {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
  const [user, nice, system] = line.trim().split(/\s+/).slice(1).map(Number);
  return (user + nice + system) / clockTicks() - kernelThreadSeconds();
}

const PF_KTHREAD = 0x00200000;
function kernelThreadSeconds() {
  let ticks = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let text;
    try {
      text = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue;
    }
    const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
    if ((Number(f[6]) & PF_KTHREAD) !== 0) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / clockTicks();
}

/** VmRSS in bytes (undefined when the process is gone). */
export function rssBytes(pid) {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Samples VmRSS of each server every `intervalMs`; keeps the peak (overall and per phase). */
export class RssSampler {
  constructor(servers, intervalMs = 100) {
    this.servers = servers;
    this.peak = Object.fromEntries(servers.map((s) => [s.name, 0]));
    this.phasePeak = {};
    this.phase = 'start';
    this.samples = 0;
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  setPhase(phase) {
    this.sample();
    this.phase = phase;
  }

  sample() {
    this.samples += 1;
    for (const s of this.servers) {
      const rss = rssBytes(s.pid);
      if (rss === undefined) continue;
      if (rss > this.peak[s.name]) this.peak[s.name] = rss;
      const p = (this.phasePeak[this.phase] ??= {});
      if (rss > (p[s.name] ?? 0)) p[s.name] = rss;
    }
  }

  stop() {
    this.sample();
    clearInterval(this.timer);
  }
}
