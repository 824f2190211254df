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

  test('wakes a few dozen times in 3 s (it was about 315), its other threads hardly ever, and still writes a lone log line', async () => {
    expect((await fetch(`${wharf.url}/v2/idle/app/manifests/one`, { method: 'HEAD' })).status).toBe(404);
    // The lone request's line comes out without more lines to fill a batch.
    while (!wharf.output().includes('/v2/idle/app/manifests/one')) await sleep(20);
    await sleep(1_000);
    const pid = wharf.child.pid!;
    const before = await threadWakeups(pid);
    await sleep(3_000);
    const after = await threadWakeups(pid);
    // Ten event-loop samples a second (metrics.ts) and the storage timers now and then: 30 here.
    expect(after.main - before.main).toBeLessThan(90);
    // No file system call, so libuv's pool sleeps: 0 here, 24-29 with the log's periodic flush.
    expect(after.others - before.others).toBeLessThan(10);
  }, 60_000);
});
