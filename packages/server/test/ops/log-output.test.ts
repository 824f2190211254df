import { afterEach, describe, expect, test } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { run } from '../helpers/clients.js';
import { WHARF_CLI, freePort, startWharfProcess, writeWharfConfig } from '../helpers/wharf-process.js';

/** The built log output module, loaded by a child process whose standard output the test holds. */
const LOG_OUTPUT_JS = join(dirname(WHARF_CLI), 'log-output.js');

/**
 * Where the request log goes: standard output, written asynchronously. A reader that stops reading
 * (a stuck log shipper, a paused `docker logs`) must not stop the server, and no line is lost when it
 * reads again or when the server exits.
 */

function head(port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'HEAD', agent: false, timeout: 10_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer to HEAD ${path} within 10 s`)));
    req.on('error', reject);
    req.end();
  });
}

async function waitUntilUp(port: number, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`wharf exited at start (${child.exitCode})`);
    try {
      if ((await head(port, '/v2/')) === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error('wharf did not start within 20 s');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('log output', () => {
  let root: string | undefined;
  let child: ChildProcess | undefined;

  afterEach(async () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    child = undefined;
    if (root) await rm(root, { recursive: true, force: true });
  });

  /**
   * Starts the CLI at log level info with its standard output a pipe (64 KiB) whose reader does not
   * read until `release()`; from then on, what it reads comes out of the child's stdout. Then sends
   * `requests` HEADs. The shell execs the server: the child is the server process.
   */
  async function serveUnread(requests: number): Promise<{ child: ChildProcess; statuses: number[]; release: () => Promise<void> }> {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-log-'));
    root = dir;
    const port = await freePort();
    await writeWharfConfig(dir, port, { logLevel: 'info' });
    await run('mkfifo', [join(dir, 'log.fifo')]);
    const script = [
      // The reader waits for "go" (or for the test's folder to go away), then reads everything.
      '{ while [ ! -e "$1/go" ] && [ -d "$1" ]; do sleep 0.05; done; exec cat; } < "$1/log.fifo" &',
      'exec "$2" "$3" serve --config "$1/configuration.toml" > "$1/log.fifo"',
    ].join('\n');
    const started = spawn('sh', ['-c', script, 'sh', dir, process.execPath, WHARF_CLI], {
      cwd: dir,
      env: { ...process.env, NODE_OPTIONS: '' },
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    child = started;
    await waitUntilUp(port, started);
    let sent = 0;
    const statuses: number[] = [];
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (sent < requests) {
          sent += 1;
          statuses.push(await head(port, `/v2/stuck/log/manifests/t${sent}`));
        }
      }),
    );
    return { child: started, statuses, release: () => writeFile(join(dir, 'go'), '') };
  }

  test('a stdout nobody reads does not stop the server; every line arrives once read, the last ones at exit', async () => {
    // About 250 bytes a line: 3,000 lines are ten times what the pipe holds. Written synchronously,
    // the server would hang in the write of the first line that does not fit, and every later
    // request would time out.
    const requests = 3_000;
    const { child, statuses, release } = await serveUnread(requests);
    const stdout = child.stdout!;
    expect(statuses).toHaveLength(requests);
    expect(statuses.every((s) => s === 404)).toBe(true);

    // Reading again: the buffered lines come out, then the server exits and flushes the rest.
    const chunks: Buffer[] = [];
    stdout.on('data', (chunk: Buffer) => chunks.push(chunk));
    await release();
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const closed = new Promise<void>((r) => stdout.once('close', () => r()));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    await closed;
    const lines = Buffer.concat(chunks)
      .toString('utf8')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; path?: string });
    const logged = new Set(lines.filter((l) => l.msg === 'request' && l.path?.startsWith('/v2/stuck/')).map((l) => l.path));
    expect(logged.size).toBe(requests);
    expect(lines.some((l) => l.msg.includes('dropped'))).toBe(false);
  }, 120_000);

  test('a stdout that never takes the buffered lines does not keep a stopping server alive', async () => {
    const { child } = await serveUnread(3_000);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    // Nothing in flight: the server stops at once, gives its log 5 s, then drops what is left (the
    // exit hook's synchronous flush would retry for ever: this test would time out).
    expect(await exited).toBe(0);
  }, 60_000);

  test('a second signal exits at once though the log is stuck: the flush at exit gives up', async () => {
    const { child } = await serveUnread(3_000);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    // Past the 250 ms in which the same signal again is the first one delivered twice (pnpm forwarding it).
    await new Promise((r) => setTimeout(r, 400));
    child.kill('SIGTERM');
    // process.exit(1): pino's exit hook alone would retry the blocked write for ever.
    expect(await exited).toBe(1);
  }, 60_000);

  test('a line logged while a write waits on a full pipe goes out once the reader reads, with no line after it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-log-'));
    root = dir;
    // A burst of about 64 KB fills the pipe and leaves a write waiting on it; 100 ms later one more
    // line; at 200 ms the flush finds the write still waiting; at 300 ms the child lets the reader
    // read (file `go-<lines>`); then nothing, until standard input closes. Which bursts leave that
    // line behind the waiting write depends on how sonic-boom cut them into writes: nine sizes.
    await writeFile(
      join(dir, 'burst.mjs'),
      [
        `import { writeFileSync } from 'node:fs';`,
        `const { StdoutLog } = await import(${JSON.stringify(LOG_OUTPUT_JS)});`,
        'const log = new StdoutLog();',
        'const lines = Number(process.argv[2]);',
        'for (let i = 0; i < lines; i++) {',
        '  const head = `{"i":${i},"pad":"`;',
        String.raw`  log.write(head + 'x'.repeat(1092 - head.length - 3) + '"}\n');`,
        '}',
        String.raw`setTimeout(() => log.write('{"last":true}\n'), 100);`,
        "setTimeout(() => writeFileSync(`go-${lines}`, ''), 300);",
        'process.stdin.resume();',
        '',
      ].join('\n'),
    );
    const runs = Array.from({ length: 9 }, async (_, k) => {
      const lines = 56 + k;
      // A real pipe (not the socket node gives a child), whose reader waits for the child's word.
      const script = 'exec "$1" burst.mjs "$2" | { while [ ! -e "go-$2" ]; do sleep 0.02; done; exec cat; }';
      const burst = spawn('sh', ['-c', script, 'sh', process.execPath, String(lines)], {
        cwd: dir,
        env: { ...process.env, NODE_OPTIONS: '' },
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      let out = '';
      burst.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString('utf8')));
      const deadline = Date.now() + 10_000;
      while (!out.includes('{"last":true}') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      // Taken before standard input closes: at exit, the flush would write what was left anyway.
      const seen = { lines, alive: burst.exitCode === null, last: out.includes('{"last":true}'), burst: out.split('\n').filter((line) => line.startsWith('{"i":')).length };
      burst.stdin!.end();
      await new Promise((r) => burst.once('close', r));
      return seen;
    });
    // Every line arrives while the process is still up (not by its flush at exit).
    expect(await Promise.all(runs)).toEqual(Array.from({ length: 9 }, (_, k) => ({ lines: 56 + k, alive: true, last: true, burst: 56 + k })));
  }, 60_000);

  test('at low traffic a line is written without waiting for more lines to fill a batch', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-log-'));
    root = dir;
    const port = await freePort();
    const wharf = await startWharfProcess(await writeWharfConfig(dir, port, { logLevel: 'info' }), port);
    child = wharf.child;
    expect(await head(port, '/v2/quiet/one/manifests/only')).toBe(404);
    // No other request follows: the line must come out on its own (lines are written in batches).
    const deadline = Date.now() + 20_000;
    while (!wharf.output().includes('/v2/quiet/one/manifests/only') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(wharf.output()).toContain('"path":"/v2/quiet/one/manifests/only"');
    await wharf.kill('SIGTERM');
  }, 60_000);
});
