import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sqliteDriverPath } from '../src/sqlite/driver.js';
import { ProcessLock } from '../src/sqlite/process-lock.js';

/** A node process that takes the lock on `file` and holds it until killed; resolves once it holds it. */
async function holder(file: string) {
  const child = spawn(
    process.execPath,
    ['-e', `const D = require(${JSON.stringify(sqliteDriverPath())}); const db = new D(${JSON.stringify(file)}); db.exec('BEGIN EXCLUSIVE'); console.log('held'); setInterval(() => {}, 1000);`],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`the holder exited (${code})`)));
  });
  return child;
}

describe('ProcessLock', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-lock-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('held while its holder runs, in this process or another, and free once it releases or is killed with SIGKILL', async () => {
    const file = join(dir, 'owner.lock');
    expect(ProcessLock.held(file)).toBeUndefined();
    const lock = ProcessLock.create(file);
    // Created locked, under another name first: nothing else is left next to it (no journal file).
    expect(await readdir(dir)).toEqual(['owner.lock']);
    // Another connection of this process sees it held; it cannot be created twice.
    expect(ProcessLock.held(file)).toBe(true);
    expect(() => ProcessLock.create(file)).toThrow(/exists already/);
    lock.release();
    expect(ProcessLock.held(file)).toBe(false);

    const child = await holder(file);
    expect(ProcessLock.held(file)).toBe(true);
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
    expect(ProcessLock.held(file)).toBe(false);
    expect((await readdir(dir)).filter((f) => f !== 'owner.lock' && f !== 'owner.lock-journal')).toEqual([]);
  });

  test('a file that is not a database counts as held: whatever it is, nothing is taken from its owner', async () => {
    const file = join(dir, 'not-sqlite.lock');
    await writeFile(file, 'x'.repeat(4096));
    expect(ProcessLock.held(file)).toBe(true);
  });
});
