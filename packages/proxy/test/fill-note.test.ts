import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockDigests, KEPT_SUFFIX, ProgressNote, parseKeptNote } from '../src/fill-note.js';

const MiB = 1024 * 1024;
const DIGEST = `sha256:${'0'.repeat(64)}` as const;
/** The built module, for a process of its own (turbo builds a package before its tests). */
const DIST_FILL_NOTE = join(dirname(fileURLToPath(import.meta.url)), '../dist/fill-note.js');

describe('ProgressNote: the note a running fill keeps of the bytes it has on disk', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-note-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Tells a note of a 1000 MiB fill that `n` more MiB are on disk, one at a time, 5 ms apart. */
  async function feed(note: ProgressNote, blocks: BlockDigests, from: number, n: number): Promise<void> {
    for (let i = from + 1; i <= from + n; i++) {
      blocks.update(Buffer.alloc(MiB));
      note.update(i * MiB);
      await sleep(5);
    }
  }

  test('notes the bytes written, with the digest of what they hold', async () => {
    const path = join(dir, 'fill-a');
    const blocks = new BlockDigests(createHash('sha256'), 'sha256', 0);
    const note = new ProgressNote(path, { digest: DIGEST, size: 1000 * MiB, origin: undefined }, 60_000, blocks, 0);
    await feed(note, blocks, 0, 20);
    await note.stop();
    const kept = parseKeptNote(await readFile(`${path}${KEPT_SUFFIX}`, 'utf8'));
    expect(kept).toMatchObject({ digest: DIGEST, size: 1000 * MiB });
    expect(kept!.length % MiB).toBe(0);
    expect(kept!.length).toBeGreaterThanOrEqual(8 * MiB);
    const zeros = createHash('sha256');
    for (let i = 0; i < kept!.length / MiB; i++) zeros.update(Buffer.alloc(MiB));
    expect(kept!.prefix).toBe(`sha256:${zeros.digest('hex')}`);
  });

  test('a note whose file cannot be opened after it was written (removed meanwhile, no descriptor left) does not stop the process', () => {
    // A process of its own, as the server is: an unhandled rejection stops it (node's default). Another
    // thread removes the note as soon as it is there, so the open that follows its first write fails.
    const path = join(dir, 'fill-b');
    const script = `
      import { Worker } from 'node:worker_threads';
      import { once } from 'node:events';
      import { createHash } from 'node:crypto';
      import { setTimeout as sleep } from 'node:timers/promises';
      import { BlockDigests, ProgressNote } from ${JSON.stringify(DIST_FILL_NOTE)};
      const kept = ${JSON.stringify(`${path}${KEPT_SUFFIX}`)};
      const remover = new Worker(\`const { unlinkSync } = require('node:fs'); for (;;) { try { unlinkSync(\${JSON.stringify(kept)}); } catch {} }\`, { eval: true, execArgv: [] });
      await once(remover, 'online');
      const MiB = 1024 * 1024;
      const blocks = new BlockDigests(createHash('sha256'), 'sha256', 0);
      const note = new ProgressNote(${JSON.stringify(path)}, { digest: ${JSON.stringify(DIGEST)}, size: 1000 * MiB, origin: undefined }, 60000, blocks, 0);
      for (let i = 1; i <= 40; i++) {
        blocks.update(Buffer.alloc(MiB));
        note.update(i * MiB);
        await sleep(20);
      }
      await note.stop();
      await sleep(50);
      await remover.terminate();
      console.log('still running');
    `;
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    expect(run.stderr).toBe('');
    expect(run.stdout.trim()).toBe('still running');
    expect(run.status).toBe(0);
  });
});
