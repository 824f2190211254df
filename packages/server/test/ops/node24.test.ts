import { beforeAll, describe, expect, test } from '@jest/globals';
import { execFile } from 'node:child_process';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { blob, imageManifest, pushBlob } from '../helpers/oci.js';
import { freePort, startWharfProcess, type WharfProcess } from '../helpers/wharf-process.js';
import { listeningLine, writeOpsConfig } from './helpers.js';

const SERVER_PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** Where scripts/install-deps.sh installs Node 24 from npm (the machine's Node is older). */
const NODE24 = join(SERVER_PACKAGE, '../../.cache/node24/node_modules/.bin/node');

/**
 * Wharf on Node 24, the newest Node it supports and the one its image runs. Node 24.19 changed the
 * `node::ObjectWrap` that better-sqlite3 12 compiles in: a statement or database that the garbage
 * collector finalizes outside JavaScript aborts the process. On Node-API 10 (Node 22.14 and later)
 * Wharf loads better-sqlite3 13 (Node-API) instead (registry-core `sqlite/driver.ts`). This suite
 * runs under the machine's Node; these tests start Node 24 for the code under test. (scripts/test.sh
 * also runs the registry-core and proxy suites whole under Node 24.)
 */
describe('on Node 24', () => {
  let node24: string;

  beforeAll(async () => {
    try {
      await access(NODE24);
    } catch {
      throw new Error(`${NODE24} is missing: run scripts/install-deps.sh (it installs Node 24 from npm)`);
    }
    node24 = NODE24;
    const { stdout } = await promisify(execFile)(node24, ['--version']);
    expect(stdout).toMatch(/^v24\./);
  });

  test('the metadata database is better-sqlite3 13, and outlives statements the garbage collector finalizes', async () => {
    // 12 compiled for Node 24.21 aborted here (SIGABRT) in 3 runs of 3; 12 compiled for the machine's
    // older Node does not load at all.
    const script = [
      "import { openDatabase, SQLITE_DRIVER } from '@wharf/registry-core';",
      "import { createRequire } from 'node:module';",
      "const driver = createRequire(import.meta.resolve('@wharf/registry-core'))(`${SQLITE_DRIVER}/package.json`);",
      "const db = openDatabase(':memory:');",
      'let garbage;',
      'for (let i = 0; i < 100000; i++) {',
      "  db.prepare('SELECT ? AS n').get(i);",
      '  if (i % 1000 === 0) garbage = new Array(10000).fill(i);',
      '}',
      "db.pragma('user_version', { simple: true });",
      'db.close();',
      "process.stdout.write(`ok ${process.version} ${garbage.length} ${SQLITE_DRIVER} ${driver.name}@${driver.version}\\n`);",
    ].join('\n');
    const { stdout } = await promisify(execFile)(node24, ['--input-type=module', '-e', script], { cwd: SERVER_PACKAGE, timeout: 60_000 });
    expect(stdout).toMatch(/^ok v24\.\d+\.\d+ 10000 better-sqlite3-napi better-sqlite3@13\.\d+\.\d+$/m);
  }, 90_000);

  test('the server takes a push, serves it back, answers its probes, and exits 0 on SIGTERM', async () => {
    const root = await mkdtemp(join(tmpdir(), 'wharf-node24-'));
    let server: WharfProcess | undefined;
    try {
      const port = await freePort();
      server = await startWharfProcess(await writeOpsConfig(root, port), port, node24);
      const layer = blob(Buffer.alloc(256 * 1024, 7));
      const config = blob('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
      await pushBlob(server.url, 'alice/app', layer);
      await pushBlob(server.url, 'alice/app', config);
      const manifest = imageManifest(config, [layer]);
      const put = await fetch(`${server.url}/v2/alice/app/manifests/1`, { method: 'PUT', headers: { 'Content-Type': manifest.mediaType }, body: manifest.bytes });
      expect(put.status).toBe(201);
      const got = await fetch(`${server.url}/v2/alice/app/manifests/1`, { headers: { Accept: manifest.mediaType } });
      expect(Buffer.from(await got.arrayBuffer()).equals(manifest.bytes)).toBe(true);
      const pulled = await fetch(`${server.url}/v2/alice/app/blobs/${layer.digest}`);
      expect(Buffer.from(await pulled.arrayBuffer()).equals(layer.bytes)).toBe(true);
      // Each probe and scrape prepares statements that become garbage at once. (With 12 compiled for
      // Node 24.21 this part did not abort in the runs tried: the test above is the one that does.)
      for (let i = 0; i < 300; i++) {
        const [ready, metrics] = await Promise.all([fetch(`${server.url}/ready`), fetch(`${server.url}/metrics`)]);
        expect([ready.status, metrics.status]).toEqual([200, 200]);
        await Promise.all([ready.arrayBuffer(), metrics.arrayBuffer()]);
      }
      // It says what it runs on: Node 24 and better-sqlite3 13.
      const listening = listeningLine(server.output());
      expect(listening?.node).toMatch(/^v24\./);
      expect(listening?.sqlite).toMatch(/^better-sqlite3 13\.\d+\.\d+, SQLite 3\.\d+\.\d+$/);
      const child = server.child;
      const exited = new Promise<[number | null, NodeJS.Signals | null]>((r) => child.once('exit', (code, signal) => r([code, signal])));
      child.kill('SIGTERM');
      expect(await exited).toEqual([0, null]);
      expect(server.output()).not.toMatch(/Assertion failed|Native stack trace/);
      server = undefined;
    } finally {
      await server?.kill('SIGKILL');
      await rm(root, { recursive: true, force: true });
    }
  }, 120_000);
});
