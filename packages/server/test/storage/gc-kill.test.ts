import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { openDatabase } from '@wharf/registry-core';
import { startRegistry } from '../helpers/start-registry.js';
import { WHARF_CLI, freePort, startWharfProcess, type WharfProcess } from '../helpers/wharf-process.js';
import { blobFile, pullAndCheck, pushLayers, sha256, storageConfig, wharf, type PushedImage } from './helpers.js';

/**
 * `wharf gc` killed with SIGKILL in the middle of its sweep of thousands of blobs: the store stays
 * consistent (fsck finds no error), every tagged image still pulls from a restarted server, and the
 * next gc finishes the job.
 */
const GARBAGE = 6000;

describe('kill -9 in the middle of gc', () => {
  let root: string;
  let configFile: string;
  let port: number;
  let server: WharfProcess | undefined;
  const images: PushedImage[] = [];
  let before = 0;
  let atKill = 0;

  const unlinkedRows = () => {
    const db = openDatabase(join(root, 'wharf.db'));
    try {
      return (db.prepare('SELECT COUNT(*) AS n FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM repository_blobs l WHERE l.digest = b.digest)').get() as { n: number }).n;
    } finally {
      db.close();
    }
  };

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-gc-kill-'));
    port = await freePort();
    configFile = await storageConfig(root, [], port);
    // Tagged images, pushed through a real server.
    const reg = await startRegistry({ root });
    for (let i = 0; i < 4; i++) images.push(await pushLayers(reg.url, `keep/app${i % 2}`, `v${i}`, [randomBytes(30_000), randomBytes(5_000)]));
    await reg.close();
    // Thousands of blobs nothing links any more, two hours old: what a sweep deletes.
    const db = openDatabase(join(root, 'wharf.db'));
    const old = Date.now() - 2 * 3_600_000;
    const insert = db.prepare('INSERT INTO blobs (digest, size, created_at) VALUES (?, ?, ?)');
    const rows: [string, number][] = [];
    for (let i = 0; i < GARBAGE; i++) {
      const bytes = randomBytes(256 + (i % 512));
      const digest = sha256(bytes);
      const file = blobFile(root, digest);
      await mkdir(dirname(file), { recursive: true });
      await writeFile(file, bytes);
      await utimes(file, new Date(old), new Date(old));
      rows.push([digest, bytes.length]);
    }
    db.transaction(() => {
      for (const [digest, size] of rows) insert.run(digest, size, old);
    })();
    db.close();
    before = unlinkedRows();

    // gc in a child process; SIGKILL once it has swept a part of the garbage.
    const child = spawn(process.execPath, [WHARF_CLI, 'gc', '--config', configFile], { env: { ...process.env, NODE_OPTIONS: '' }, stdio: 'ignore' });
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    const deadline = Date.now() + 30_000;
    for (;;) {
      const left = unlinkedRows();
      if (left < before - 300) {
        child.kill('SIGKILL');
        atKill = left;
        break;
      }
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`gc ended (${child.exitCode}) before it could be killed mid-sweep`);
      await sleep(2);
    }
    await exited;
    expect(child.signalCode).toBe('SIGKILL');
  }, 90_000);

  afterAll(async () => {
    await server?.kill('SIGKILL');
    if (root) await rm(root, { recursive: true, force: true });
  });

  test('the kill landed in the middle of the sweep', () => {
    expect(before).toBe(GARBAGE);
    expect(atKill).toBeGreaterThan(0);
    expect(atKill).toBeLessThan(GARBAGE);
  });

  test('after the restart fsck reports no errors', async () => {
    server = await startWharfProcess(configFile, port);
    const fsck = await wharf(['fsck', '--config', configFile]);
    expect(fsck.text()).not.toMatch(/^error:/m);
    expect(fsck.stdout.toString()).toMatch(/fsck: \d+ files \(.*\) checked: 0 problems/);
    expect(fsck.code).toBe(0);
  }, 60_000);

  test('every tagged image pulls, sha256 checked', async () => {
    for (const image of images) await pullAndCheck(server!.url, image);
  });

  test('the next gc finishes the job', async () => {
    const gc = await wharf(['gc', '--config', configFile]);
    expect(gc.code).toBe(0);
    expect(unlinkedRows()).toBe(0);
    let files = 0;
    for (const prefix of await readdir(join(root, 'registry', 'blobs', 'sha256'))) files += (await readdir(join(root, 'registry', 'blobs', 'sha256', prefix))).length;
    expect(files).toBe(new Set(images.flatMap((i) => i.blobs.map((b) => b.digest))).size);
    for (const image of images) await pullAndCheck(server!.url, image);
  }, 60_000);
});
