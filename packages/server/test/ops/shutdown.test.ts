import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { Agent, get, request } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { spawn } from 'node:child_process';
import { requireTool } from '../helpers/clients.js';
import { openDownload } from '../helpers/http.js';
import { WHARF_CLI, freePort, startWharfProcess, writeWharfConfig, type WharfProcess } from '../helpers/wharf-process.js';
import { sleep, writeOpsConfig } from './helpers.js';

/**
 * SIGTERM and SIGINT on a real `wharf serve` child process: requests in flight finish (a 256 MiB pull
 * keeps going and arrives whole), idle keep-alive connections do not hold the exit, a second signal
 * exits at once, and shutdown_timeout cuts what is left.
 */

const MIB = 1024 * 1024;
const SIZE_MIB = 256;

/** 256 chunks of 1 MiB: one random MiB, each copy stamped with its index (cheap to make, all different). */
function* bigBlobChunks(base: Buffer): Generator<Buffer> {
  for (let i = 0; i < SIZE_MIB; i++) {
    const chunk = Buffer.from(base);
    chunk.writeUInt32BE(i, 0);
    yield chunk;
  }
}

/** Streams the blob in one PATCH (no Content-Range, as Docker sends it), hashing as it goes, then PUT ?digest=. */
async function pushBigBlob(url: string, repo: string): Promise<string> {
  const start = await fetch(`${url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  expect(start.status).toBe(202);
  const location = new URL(start.headers.get('location')!, url);
  const hash = createHash('sha256');
  const base = randomBytes(MIB);
  await new Promise<void>((resolve, reject) => {
    const req = request(location, { method: 'PATCH', headers: { 'Content-Type': 'application/octet-stream', Connection: 'close' }, agent: false }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 202 ? resolve() : reject(new Error(`PATCH: ${res.statusCode}`))));
    });
    req.on('error', reject);
    void (async () => {
      for (const chunk of bigBlobChunks(base)) {
        hash.update(chunk);
        if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      }
      req.end();
    })();
  });
  const digest = `sha256:${hash.digest('hex')}`;
  location.searchParams.set('digest', digest);
  const done = await fetch(location, { method: 'PUT' });
  expect(done.status).toBe(201);
  return digest;
}

function exitOf(proc: WharfProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }> {
  const child = proc.child;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode, at: Date.now() });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, at: Date.now() })));
}

/** Resolves once `check` answers true (every 50 ms, for up to 30 s). */
async function until(check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await sleep(50);
  }
}

/** Whether a new TCP connection to the server is refused now. */
function refusesNewConnections(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = get(`${url}/health`, { agent: false, timeout: 2_000 }, (res) => {
      res.resume();
      resolve(false);
    });
    req.on('error', () => resolve(true));
    req.on('timeout', () => req.destroy());
  });
}

describe('graceful shutdown of wharf serve', () => {
  let root: string;
  let port: number;
  let digest: string;
  const repo = 'ops/big';
  let proc: WharfProcess | undefined;

  async function start(top: string[] = []): Promise<WharfProcess> {
    const file = await writeOpsConfig(root, port, { top });
    proc = await startWharfProcess(file, port);
    return proc;
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-shutdown-'));
    port = await freePort();
    const p = await start();
    digest = await pushBigBlob(p.url, repo);
    await p.kill('SIGKILL');
  }, 60_000);

  afterAll(async () => {
    await proc?.kill('SIGKILL');
    await rm(root, { recursive: true, force: true });
  });

  test('SIGTERM during a 256 MiB pull: the pull completes with the right digest, new connections are refused, exit code 0', async () => {
    const p = await start();
    const exited = exitOf(p);
    const res = await openDownload(`${p.url}/v2/${repo}/blobs/${digest}`);
    expect(Number(res.headers['content-length'])).toBe(SIZE_MIB * MIB);
    p.child.kill('SIGTERM');
    // Mid-transfer: the listener closes (however long the signal takes to be handled), the download
    // still open: the process has not exited, held by the download it still sends.
    await until(() => refusesNewConnections(p.url));
    expect(p.child.exitCode).toBeNull();
    const hash = createHash('sha256');
    let bytes = 0;
    await new Promise<void>((resolve, reject) => {
      res.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
      });
      res.on('end', resolve);
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('download cut')));
      res.resume();
    });
    expect(bytes).toBe(SIZE_MIB * MIB);
    expect(`sha256:${hash.digest('hex')}`).toBe(digest);
    const exit = await exited;
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(p.output()).toContain('"msg":"wharf stopped"');
  }, 60_000);

  test('SIGHUP (the terminal closed) stops as SIGTERM does, not at once: exit code 0 after "wharf stopped"', async () => {
    const p = await start();
    const exited = exitOf(p);
    p.child.kill('SIGHUP');
    expect(await exited).toMatchObject({ code: 0, signal: null });
    expect(p.output()).toContain('SIGHUP received');
    expect(p.output()).toContain('"msg":"wharf stopped"');
  });

  /** The server's exit code (as its shell saw it) after its terminal hung up and it got `signal`. */
  const exitAfterHangup = async (signal: 'SIGHUP' | 'SIGTERM'): Promise<string> => {
    // `script` gives the server a terminal; killing `script` hangs it up, as a closed ssh session
    // does. Bash in between ignores the hangup and writes the server's exit code. Then the stop:
    // SIGHUP, or SIGTERM (a server in the background of a shell gets no SIGHUP when it exits).
    const dir = await mkdtemp(join(tmpdir(), 'wharf-hangup-'));
    const hupPort = await freePort();
    const file = await writeWharfConfig(dir, hupPort, { logLevel: 'info' });
    const [pidFile, exitFile] = [join(dir, 'pid'), join(dir, 'exit')];
    // setsid: the server in a session of its own, so that only the test's signal reaches it (the
    // kernel's hangup goes to the terminal's session); its standard streams are the terminal still.
    const line = `trap "" HUP; setsid "${process.execPath}" "${WHARF_CLI}" serve --config "${file}" & echo $! > "${pidFile}"; wait $!; echo $? > "${exitFile}"`;
    const terminal = spawn('script', ['-qfc', `bash -c '${line}'`, '/dev/null'], { stdio: 'ignore', env: { PATH: process.env.PATH ?? '', HOME: dir } });
    let pid = 0;
    try {
      const url = `http://127.0.0.1:${hupPort}`;
      await until(async () => (await fetch(`${url}/v2/`).catch(() => undefined))?.status === 200);
      pid = Number((await readFile(pidFile, 'utf8')).trim());
      terminal.kill('SIGKILL');
      await new Promise((resolve) => terminal.once('exit', resolve));
      // A request after the hangup: its log line goes to the terminal that is gone.
      expect((await fetch(`${url}/v2/`)).status).toBe(200);
      process.kill(pid, signal);
      await until(async () => (await readFile(exitFile, 'utf8').catch(() => '')).trim() !== '');
      return (await readFile(exitFile, 'utf8')).trim();
    } finally {
      terminal.kill('SIGKILL');
      if (pid > 0) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // exited
        }
      }
      await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
    }
  };

  test.each(['SIGHUP', 'SIGTERM'] as const)('%s after its terminal really hung up (logs on it): exit code 0, not node aborting at exit', async (signal) => {
    // Before: 134 (an assertion restoring the terminal's settings at exit) or 139, every time.
    await requireTool('script', 'bsdutils');
    let code = await exitAfterHangup(signal);
    // One CI run of many saw 129 (the server dead of a SIGHUP) once, not seen again in runs under
    // load: unexplained, so the scenario is run once more then; the aborts above fail both times.
    if (code === '129') code = await exitAfterHangup(signal);
    expect(code).toBe('0');
  }, 90_000);

  test("README's start command (`npm start`): a SIGTERM to npm alone stops Wharf gracefully, and nothing is left running", async () => {
    // What a supervisor that signals only the process it started does. `npx pnpm wharf serve`, the
    // command before, left pnpm and Wharf running: npx's shell dies without passing the signal on.
    const dir = await mkdtemp(join(tmpdir(), 'wharf-npm-start-'));
    const npmPort = await freePort();
    const repoRoot = join(dirname(WHARF_CLI), '..', '..', '..');
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      NODE_OPTIONS: '',
      WHARF_LISTEN: `127.0.0.1:${npmPort}`,
      WHARF_REGISTRY_STORAGE: join(dir, 'registry'),
      WHARF_TEMPORARY_REGISTRY_STORAGE: join(dir, 'tmp'),
      WHARF_PROXY_STORAGE: join(dir, 'proxy'),
      WHARF_DATABASE: join(dir, 'wharf.db'),
      WHARF_ADMIN_PASSWORD: 'npm-start-test-password',
      WHARF_LOG_FORMAT: 'json',
    };
    const npm = spawn('npm', ['start'], { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    npm.stdout.on('data', (d: Buffer) => (output += d.toString()));
    npm.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const npmExit = new Promise<number | null>((resolve) => npm.once('exit', (code) => resolve(code)));
    let wharfPid = 0;
    try {
      await until(async () => (await fetch(`http://127.0.0.1:${npmPort}/v2/`).catch(() => undefined))?.status === 401);
      // The log line may come a moment after the port answers (lines are written off the event loop).
      await until(async () => /"msg":"wharf listening"/.test(output));
      wharfPid = Number(/"pid":(\d+)[^\n]*"msg":"wharf listening"/.exec(output)?.[1] ?? 0);
      expect(wharfPid).toBeGreaterThan(0);
      expect(wharfPid).not.toBe(npm.pid);
      npm.kill('SIGTERM');
      expect(await npmExit).toBe(0);
      expect(output).toContain('"msg":"wharf stopped"');
      expect(() => process.kill(wharfPid, 0)).toThrow();
    } finally {
      npm.kill('SIGKILL');
      // Found from its log line, or else from the port it listens on: never left running.
      wharfPid ||= Number(/"pid":(\d+)/.exec(output)?.[1] ?? 0);
      if (wharfPid > 0) {
        try {
          process.kill(wharfPid, 'SIGKILL');
        } catch {
          // exited
        }
      }
      await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
    }
  }, 60_000);

  test('SIGTERM with an idle keep-alive client exits within 2 s', async () => {
    const p = await start();
    const exited = exitOf(p);
    const agent = new Agent({ keepAlive: true, keepAliveMsecs: 60_000 });
    try {
      await new Promise<void>((resolve, reject) => {
        get(`${p.url}/v2/`, { agent }, (res) => {
          res.resume();
          res.on('end', resolve);
        }).on('error', reject);
      });
      await sleep(50);
      // The connection is open and idle in the client's pool.
      expect(Object.values(agent.freeSockets).flat()).toHaveLength(1);
      const sent = Date.now();
      p.child.kill('SIGTERM');
      const exit = await exited;
      expect(exit).toMatchObject({ code: 0, signal: null });
      expect(exit.at - sent).toBeLessThan(2_000);
    } finally {
      agent.destroy();
    }
  });

  test('a second signal exits at once, without waiting for requests in flight', async () => {
    const p = await start(['shutdown_timeout = "30s"']);
    const exited = exitOf(p);
    const res = await openDownload(`${p.url}/v2/${repo}/blobs/${digest}`); // never read: holds the shutdown
    try {
      p.child.kill('SIGTERM');
      await sleep(500);
      expect(p.child.exitCode).toBeNull(); // still waiting for the download
      const sent = Date.now();
      p.child.kill('SIGINT');
      const exit = await exited;
      expect(exit.at - sent).toBeLessThan(1_000);
      expect(exit.code).toBe(1);
      expect(p.output()).toContain('second SIGINT');
    } finally {
      res.destroy();
    }
  });

  test('requests still running at shutdown_timeout are cut, and the exit is still clean (code 0)', async () => {
    const p = await start(['shutdown_timeout = "1s"']);
    const exited = exitOf(p);
    const res = await openDownload(`${p.url}/v2/${repo}/blobs/${digest}`);
    const cut = new Promise<boolean>((resolve) => {
      res.on('close', () => resolve(!res.complete));
    });
    const sent = Date.now();
    p.child.kill('SIGTERM');
    const exit = await exited;
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(exit.at - sent).toBeGreaterThanOrEqual(900);
    expect(exit.at - sent).toBeLessThan(4_000);
    res.resume();
    expect(await cut).toBe(true);
    expect(p.output()).toContain('shutdown deadline reached');
  });
});
