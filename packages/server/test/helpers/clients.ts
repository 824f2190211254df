import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants, openSync, closeSync } from 'node:fs';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

/**
 * Running real registry clients (skopeo, podman, containerd's ctr) from tests: each in private
 * state under a temp folder, never touching the machine's images, logins or daemons.
 */

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly exitCode: number | string | null,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(`${command} failed (${typeof exitCode === 'number' ? `exit code ${exitCode}` : String(exitCode)}):\n${stderr.trim() || stdout.trim()}`);
  }
}

export interface RunOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** Killed (SIGKILL) after this long; default 60 s. */
  readonly timeoutMs?: number;
}

export interface RunResult {
  /** stdout exactly as written (for manifest bytes). */
  readonly bytes: Buffer;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command; on a non-zero exit or a timeout, throws a CommandError carrying stderr. */
export function run(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const command = [cmd, ...args].join(' ');
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      {
        encoding: 'buffer',
        env: options.env ?? process.env,
        cwd: options.cwd,
        timeout: options.timeoutMs ?? 60_000,
        killSignal: 'SIGKILL',
        maxBuffer: 64 * 1024 * 1024,
      },
      (err, stdout, stderr) => {
        const out = stdout.toString('utf8');
        const errText = stderr.toString('utf8');
        if (err) {
          const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: string | null };
          const code = e.killed ? `killed after ${options.timeoutMs ?? 60_000} ms` : typeof e.code === 'number' ? e.code : (e.code ?? e.signal ?? null);
          reject(new CommandError(command, code, out, errText || e.message));
          return;
        }
        resolve({ bytes: stdout, stdout: out, stderr: errText });
      },
    );
  });
}

/** Runs a command that must fail, and returns its error (a success is a test failure). */
export async function runFails(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<CommandError> {
  try {
    const result = await run(cmd, args, options);
    throw new Error(`${[cmd, ...args].join(' ')} succeeded but should have failed; stdout:\n${result.stdout}`);
  } catch (err) {
    if (err instanceof CommandError) return err;
    throw err;
  }
}

/**
 * The full path of a client on PATH. A missing client FAILS the test with the Debian package to
 * install: these tests are never skipped.
 */
export async function requireTool(name: string, debianPackage: string): Promise<string> {
  for (const folder of (process.env.PATH ?? '').split(delimiter)) {
    if (!folder) continue;
    const candidate = join(folder, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this folder
    }
  }
  throw new Error(
    `"${name}" is not installed (not found on PATH). Install the Debian package "${debianPackage}": apt-get install -y --no-install-recommends ${debianPackage}`,
  );
}

/** A fresh temp folder whose whole path is lower case (podman names `oci:` images after the path). */
export async function lowerCaseTempDir(prefix: string): Promise<string> {
  const dir = join(tmpdir(), `${prefix}${randomBytes(6).toString('hex')}`);
  if (dir !== dir.toLowerCase()) throw new Error(`temp folder ${dir} is not lower case; set TMPDIR to a lower-case folder`);
  await mkdir(dir, { recursive: false });
  return dir;
}

/** A short temp folder for unix sockets (their paths are limited to about 107 bytes). */
export async function shortTempDir(): Promise<string> {
  const dir = join('/tmp', `wc-${randomBytes(4).toString('hex')}`);
  await mkdir(dir);
  return dir;
}

export interface ContainersConfig {
  /** Environment for skopeo/podman: a private auth file and registries.conf. */
  readonly env: NodeJS.ProcessEnv;
  /** A private trust policy accepting anything (the machine's may be missing or stricter). */
  readonly policy: string;
}

/**
 * Private containers/image configuration in `dir`: an empty auth file (REGISTRY_AUTH_FILE; podman
 * wants it to exist), an empty registries.conf, and an insecureAcceptAnything policy.
 */
export async function containersConfig(dir: string): Promise<ContainersConfig> {
  await mkdir(dir, { recursive: true });
  const auth = join(dir, 'auth.json');
  const registries = join(dir, 'registries.conf');
  const policy = join(dir, 'policy.json');
  await writeFile(auth, JSON.stringify({ auths: {} }));
  await writeFile(registries, 'unqualified-search-registries = []\n');
  await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  return {
    env: { ...process.env, REGISTRY_AUTH_FILE: auth, CONTAINERS_REGISTRIES_CONF: registries, TMPDIR: dir },
    policy,
  };
}

/** `skopeo --policy <private> ...args` with the private configuration. */
export function skopeo(config: ContainersConfig, args: readonly string[], timeoutMs = 60_000): Promise<RunResult> {
  return run('skopeo', ['--policy', config.policy, ...args], { env: config.env, timeoutMs });
}

export interface Podman {
  /** Runs podman with the private storage flags in front of `args`. */
  run(args: readonly string[], timeoutMs?: number): Promise<RunResult>;
  /** The flags that make pull/push use the private trust policy. */
  readonly policyArgs: readonly string[];
  readonly dir: string;
}

/**
 * A podman with its own storage (vfs) under `dir`, isolated from the machine's images: as root,
 * `--root/--runroot/--tmpdir`, no events, cgroupfs.
 */
export async function isolatedPodman(dir: string, config: ContainersConfig): Promise<Podman> {
  for (const sub of ['root', 'run', 'tmp']) await mkdir(join(dir, sub), { recursive: true });
  const global = [
    '--root', join(dir, 'root'),
    '--runroot', join(dir, 'run'),
    '--tmpdir', join(dir, 'tmp'),
    '--storage-driver', 'vfs',
    '--events-backend', 'none',
    '--cgroup-manager', 'cgroupfs',
  ];
  return {
    dir,
    policyArgs: ['--signature-policy', config.policy],
    run: (args, timeoutMs = 120_000) => run('podman', [...global, ...args], { env: config.env, timeoutMs }),
  };
}

/** Removes a podman storage folder; vfs layers may hold read-only folders, so fall back to `rm -rf`. */
export async function removeTree(dir: string): Promise<void> {
  try {
    await rm(dir, { recursive: true, force: true, maxRetries: 2 });
  } catch {
    await run('rm', ['-rf', dir]).catch(() => undefined);
  }
}

export interface Containerd {
  readonly socket: string;
  /** `ctr -a <socket> -n <namespace> ...args`. */
  ctr(args: readonly string[], timeoutMs?: number): Promise<RunResult>;
  /** Stops the daemon (SIGTERM, then SIGKILL); safe to call twice. */
  close(): Promise<void>;
}

function waitForExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * Starts `cmd args` as a daemon logging to `logFile`, and resolves once `probe` succeeds (tried every
 * 100 ms for 20 s). The answer stops it (SIGTERM, then SIGKILL; safe to call twice); the exit of this
 * process kills it at the latest.
 */
async function startDaemon(cmd: string, args: readonly string[], logFile: string, probe: () => Promise<unknown>): Promise<() => Promise<void>> {
  const log = openSync(logFile, 'w');
  const child = spawn(cmd, args, { stdio: ['ignore', log, log] });
  closeSync(log);
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const logTail = async () => (await readFile(logFile, 'utf8').catch(() => '')).split('\n').slice(-30).join('\n');

  let closed: Promise<void> | undefined;
  const close = () =>
    (closed ??= (async () => {
      process.off('exit', killOnExit);
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      if (!(await waitForExit(child, 10_000))) {
        child.kill('SIGKILL');
        await waitForExit(child, 5_000);
      }
    })());

  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${cmd} exited at start (${child.exitCode ?? child.signalCode}):\n${await logTail()}`);
    }
    try {
      await probe();
      return close;
    } catch (err) {
      if (Date.now() > deadline) {
        await close();
        throw new Error(`${cmd} did not answer within 20 s: ${(err as Error).message}\n${await logTail()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * A private containerd (no CRI, no TCP) with root, state and socket in `dir` (keep it short: unix
 * socket paths are limited). It is killed by close(), and by the exit of this process at the latest.
 */
export async function startContainerd(dir: string, namespace = 'wharf'): Promise<Containerd> {
  const socket = join(dir, 'c.sock');
  if (Buffer.byteLength(socket) + '.ttrpc'.length > 100) throw new Error(`containerd socket path too long: ${socket}`);
  await mkdir(dir, { recursive: true });
  const configFile = join(dir, 'config.toml');
  await writeFile(
    configFile,
    [
      'version = 2',
      `root = "${join(dir, 'root')}"`,
      `state = "${join(dir, 'state')}"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = "${socket}"`,
      '[ttrpc]',
      `  address = "${socket}.ttrpc"`,
      '[debug]',
      '  address = ""',
      '[metrics]',
      '  address = ""',
      '',
    ].join('\n'),
  );
  const ctr = (args: readonly string[], timeoutMs = 120_000) => run('ctr', ['-a', socket, '-n', namespace, ...args], { timeoutMs });
  const close = await startDaemon('containerd', ['--config', configFile], join(dir, 'containerd.log'), () =>
    run('ctr', ['-a', socket, 'version'], { timeoutMs: 5_000 }),
  );
  return { socket, ctr, close };
}

export interface Dockerd {
  /** The client's DOCKER_CONFIG folder (config.json holds the logins). */
  readonly configDir: string;
  /** The client's environment (DOCKER_CONFIG, the classic builder) and its `-H` argument. */
  readonly env: NodeJS.ProcessEnv;
  readonly host: string;
  /** `docker -H unix://<socket> ...args`, with logins in a private DOCKER_CONFIG and the classic builder. */
  docker(args: readonly string[], timeoutMs?: number): Promise<RunResult>;
  /** The same, for a command that must fail: its error. */
  dockerFails(args: readonly string[], timeoutMs?: number): Promise<CommandError>;
  /** Stops the daemon (SIGTERM, then SIGKILL); safe to call twice. */
  close(): Promise<void>;
}

/** Where Debian's docker.io puts the daemon: /usr/sbin, which a non-root PATH may lack. */
async function dockerdBinary(): Promise<string> {
  try {
    return await requireTool('dockerd', 'docker.io');
  } catch (err) {
    for (const candidate of ['/usr/sbin/dockerd', '/usr/bin/dockerd']) {
      if (await access(candidate, constants.X_OK).then(() => true, () => false)) return candidate;
    }
    throw err;
  }
}

/**
 * A private Docker daemon (Debian's docker.io) with data, state and socket in `dir` (keep it short:
 * unix socket paths are limited): vfs storage, no bridge, no iptables rules, no IP forwarding, so that
 * it leaves nothing on the machine but its key (/etc/docker/key.json) and an empty /run/docker/plugins;
 * `mirrors` become its `registry-mirrors`. Registries on 127.0.0.0/8 are plain HTTP
 * to Docker without configuration. It is killed by close(), and by the exit of this process at the latest.
 */
export async function startDockerd(dir: string, options: { readonly mirrors?: readonly string[] } = {}): Promise<Dockerd> {
  await requireTool('docker', 'docker.io');
  const dockerd = await dockerdBinary();
  const socket = join(dir, 'd.sock');
  if (Buffer.byteLength(socket) > 100) throw new Error(`dockerd socket path too long: ${socket}`);
  const configDir = join(dir, 'config');
  await mkdir(configDir, { recursive: true });
  const configFile = join(dir, 'daemon.json');
  await writeFile(
    configFile,
    JSON.stringify({ 'storage-driver': 'vfs', iptables: false, ip6tables: false, 'ip-forward': false, bridge: 'none', 'registry-mirrors': options.mirrors ?? [] }),
  );
  const env = { ...process.env, DOCKER_CONFIG: configDir, DOCKER_BUILDKIT: '0', DOCKER_CLI_HINTS: 'false' };
  const host = `unix://${socket}`;
  const docker = (args: readonly string[], timeoutMs = 120_000) => run('docker', ['-H', host, ...args], { env, timeoutMs });
  const dockerFails = (args: readonly string[], timeoutMs = 120_000) => runFails('docker', ['-H', host, ...args], { env, timeoutMs });
  const close = await startDaemon(
    dockerd,
    ['--config-file', configFile, '--data-root', join(dir, 'data'), '--exec-root', join(dir, 'x'), '--pidfile', join(dir, 'd.pid'), '-H', host],
    join(dir, 'dockerd.log'),
    () => docker(['version'], 5_000),
  );
  return { configDir, env, host, docker, dockerFails, close };
}
