import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import bcrypt from 'bcryptjs';
import { readFileSync } from 'node:fs';
import { BcryptThread } from '../../src/auth/bcrypt-thread.js';
import { passwordThread } from '../../src/auth/passwords.js';
import type { TestRegistry } from '../helpers/start-registry.js';
import { basic, startAuthRegistry } from './helpers.js';

/** CPU seconds the process's main thread (the event loop) has used: /proc's utime + stime, in ticks of 10 ms. */
function mainThreadCpu(): number {
  const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** CPU seconds the whole process has used, every thread. */
function processCpu(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

/** The CPU (whole process, and its main thread) that `work` took. */
async function cpuOf(work: () => Promise<unknown>): Promise<{ total: number; main: number }> {
  const [total0, main0] = [processCpu(), mainThreadCpu()];
  await work();
  return { total: processCpu() - total0, main: mainThreadCpu() - main0 };
}

/**
 * Password checks (bcrypt) run on a thread of their own: a burst of logins, right or wrong, used to
 * hold the event loop, and with it every other request, for seconds (bcryptjs's async API hashes on
 * the main thread in 100 ms slices). No timing here: /proc's per-thread CPU shows where the work ran.
 */
describe('password checks off the event loop', () => {
  const PASSWORD = 'the-right-password-1';
  let reg: TestRegistry;

  beforeAll(async () => {
    // Cost 12, as `wharf user add` makes them: a check costs a few hundred ms of CPU, far above the noise.
    const hash = bcrypt.hashSync(PASSWORD, 12);
    reg = await startAuthRegistry({ authSettings: { users: ['ann', 'ben'].map((name) => ({ name, password_hash: hash })) } });
  });
  afterAll(async () => reg?.close());

  const login = async (user: string, password: string): Promise<number> => (await fetch(`${reg.url}/v2/`, { headers: { Authorization: basic(user, password) } })).status;

  test('four wrong passwords at once: checked, refused, and the main thread does not do the hashing', async () => {
    let statuses: number[] = [];
    const cpu = await cpuOf(async () => {
      statuses = await Promise.all([1, 2, 3, 4].map((i) => login('ann', `wrong-password-${i}`)));
    });
    expect(statuses).toEqual([401, 401, 401, 401]);
    // Hashed on the event loop, the main thread took nearly all of it (0.95 and more of the total).
    expect(cpu.total).toBeGreaterThan(0.3);
    expect(cpu.main).toBeLessThan(cpu.total * 0.4);
  });

  test('a check the thread could not finish is a 503, not a wrong password: the right one is taken right after', async () => {
    const pending = fetch(`${reg.url}/v2/`, { headers: { Authorization: basic('ann', PASSWORD) } });
    await new Promise((r) => setTimeout(r, 50)); // the check is on the thread (cost 12: far longer than this)
    await passwordThread.close();
    const res = await pending;
    expect(res.status).toBe(503);
    expect(await res.text()).toContain('the password could not be checked now');
    // Not remembered as refused, not counted as a guess: the same password, checked again, signs in.
    expect(await login('ann', PASSWORD)).toBe(200);
  });

  test('a wrong and a right password at once each get their own answer', async () => {
    const [wrong, right] = await Promise.all([login('ben', 'not-the-password-9'), login('ben', PASSWORD)]);
    expect([wrong, right]).toEqual([401, 200]);
  });
});

describe('BcryptThread', () => {
  test('hashes as bcryptjs does, one after another, and starts again after its idle end and after close', async () => {
    const thread = new BcryptThread(50);
    const salt = bcrypt.genSaltSync(4);
    const hashes = await Promise.all(['a-password-1', 'a-password-2', 'a-password-3'].map((p) => thread.hash(p, salt)));
    expect(hashes).toEqual(['a-password-1', 'a-password-2', 'a-password-3'].map((p) => bcrypt.hashSync(p, salt)));
    // Past its idle time the thread has ended; the next hash starts a new one.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await thread.hash('a-password-1', salt)).toBe(hashes[0]);
    await thread.close();
    expect(await thread.hash('a-password-2', salt)).toBe(hashes[1]);
    await thread.close();
  });

  test('a salt bcryptjs refuses fails that hash alone; close fails what is pending', async () => {
    const thread = new BcryptThread();
    const salt = bcrypt.genSaltSync(4);
    await expect(thread.hash('a-password-1', '$2b$04$short')).rejects.toThrow();
    expect(await thread.hash('a-password-1', salt)).toBe(bcrypt.hashSync('a-password-1', salt));
    const pending = expect(thread.hash('a-password-2', bcrypt.genSaltSync(14))).rejects.toThrow('password hashing stopped');
    await thread.close();
    await pending;
  });
});
