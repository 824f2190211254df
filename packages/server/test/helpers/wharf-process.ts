import { spawn, type ChildProcess } from 'node:child_process';
import { access, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The built CLI (`pnpm build` makes it; the test run happens after `turbo build`). */
export const WHARF_CLI = resolve(dirname(fileURLToPath(import.meta.url)), '../../dist/cli.js');

/** A port that was free a moment ago: listen on port 0, read it, close. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

export interface WharfConfigOptions {
  /** Extra top-level lines, e.g. ['shutdown_timeout = "2s"']. */
  readonly top?: readonly string[];
  /** Extra tables, written after the others, e.g. ['[tls]', 'self_signed = true']. */
  readonly tables?: readonly string[];
  readonly logLevel?: string;
  /** The lines of the [proxy] table (its subtables after them); default: the proxy off. */
  readonly proxy?: readonly string[];
}

/** Writes a configuration.toml for a local-only Wharf (auth off, and the proxy unless `proxy` says) with all storage under `root`. */
export async function writeWharfConfig(root: string, port: number, options: WharfConfigOptions = {}): Promise<string> {
  const file = join(root, 'configuration.toml');
  await writeFile(
    file,
    [
      `listen = "127.0.0.1:${port}"`,
      'registry_storage = "storage/registry"',
      'temporary_registry_storage = "storage/_tmp"',
      'proxy_storage = "storage/proxy"',
      'database = "storage/wharf.db"',
      `log_level = "${options.logLevel ?? 'warn'}"`,
      ...(options.top ?? []),
      '[proxy]',
      ...(options.proxy ?? ['enabled = false']),
      '[auth]',
      'enabled = false   # loopback only; the auth suites turn it on',
      ...(options.tables ?? []),
      '',
    ].join('\n'),
  );
  return file;
}

export interface WharfProcess {
  readonly url: string;
  readonly child: ChildProcess;
  /** What the process wrote so far (stdout and stderr). */
  output(): string;
  /** Sends a signal and waits for the exit. */
  kill(signal: NodeJS.Signals): Promise<void>;
}

/**
 * Starts `node dist/cli.js serve --config <file>` and waits until GET /v2/ answers 200; `node` is the
 * Node.js binary to run it with (default: the one running the tests), `cli` the entry point (default: this
 * package's build), `env` variables set for it on top of the tests' own.
 */
export async function startWharfProcess(configFile: string, port: number, node = process.execPath, cli = WHARF_CLI, env: NodeJS.ProcessEnv = {}): Promise<WharfProcess> {
  try {
    await access(cli);
  } catch {
    throw new Error(`${cli} is missing: run "pnpm build" in /work/main first`);
  }
  const child = spawn(node, [cli, 'serve', '--config', configFile], {
    cwd: dirname(configFile),
    env: { ...process.env, NODE_OPTIONS: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-20_000);
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const proc: WharfProcess = {
    url: `http://127.0.0.1:${port}`,
    child,
    output: () => output,
    async kill(signal) {
      process.off('exit', killOnExit);
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      process.off('exit', killOnExit);
      throw new Error(`wharf exited at start (${child.exitCode ?? child.signalCode}):\n${output}`);
    }
    try {
      const res = await fetch(`${proc.url}/v2/`, { signal: AbortSignal.timeout(2_000) });
      if (res.status === 200) return proc;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await proc.kill('SIGKILL');
      throw new Error(`wharf did not answer on ${proc.url} within 20 s:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
