import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, startWharfProcess, writeWharfConfig, type WharfProcess } from '../helpers/wharf-process.js';

/** How many times a thread went to sleep and was woken (Linux: /proc/<pid>/task/<tid>/status). */
async function wakeups(pid: number, tid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/task/${tid}/status`, 'utf8');
  return Number(/^voluntary_ctxt_switches:\s+(\d+)$/m.exec(status)![1]);
}

/** Wake-ups of the main thread, and of all the others together (libuv's pool, V8's helpers). */
async function threadWakeups(pid: number): Promise<{ main: number; others: number }> {
  let others = 0;
  for (const tid of (await readdir(`/proc/${pid}/task`)).map(Number)) if (tid !== pid) others += await wakeups(pid, tid);
  return { main: await wakeups(pid, pid), others };
}

/**
 * A server nobody asks anything sleeps. It used to wake about 105 times a second: prom-client's
 * event-loop delay sampled every 10 ms, and the log's periodic flush writing nothing five times a
 * second, through libuv's pool. That cost an idle Wharf 0.85% of a core here.
 */
describe('an idle server', () => {
  let dir: string;
  let wharf: WharfProcess;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-idle-'));
    const port = await freePort();
    // At `info` every request is logged: the log's flush timer has run once before the quiet starts.
    wharf = await startWharfProcess(await writeWharfConfig(dir, port, { logLevel: 'info' }), port);
  });

  afterAll(async () => {
    await wharf?.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
  });

  test('wakes a few dozen times in 2 s (it was about 210), its other threads hardly ever, and still writes a lone log line', async () => {
    expect((await fetch(`${wharf.url}/v2/idle/app/manifests/one`, { method: 'HEAD' })).status).toBe(404);
    // The lone request's line comes out without more lines to fill a batch.
    while (!wharf.output().includes('/v2/idle/app/manifests/one')) await sleep(20);
    await sleep(1_000);
    const pid = wharf.child.pid!;
    // Two windows of 2 s, the quieter counted: V8 may collect once in a while (its memory reducer,
    // some seconds after start), and wakes its helper threads for it.
    const windows: { main: number; others: number }[] = [];
    for (let i = 0; i < 2; i++) {
      const before = await threadWakeups(pid);
      await sleep(2_000);
      const after = await threadWakeups(pid);
      windows.push({ main: after.main - before.main, others: after.others - before.others });
    }
    // Ten event-loop samples a second (metrics.ts) and the storage timers now and then: 20 here,
    // about 210 with prom-client's 10 ms.
    expect(Math.min(...windows.map((w) => w.main))).toBeLessThan(60);
    // No file system call, so libuv's pool sleeps: 0 here, 16-20 with the log's periodic flush.
    expect(Math.min(...windows.map((w) => w.others))).toBeLessThan(8);
  }, 60_000);
});
