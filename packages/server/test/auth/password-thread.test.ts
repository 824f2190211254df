import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import bcrypt from 'bcryptjs';
import { readFileSync } from 'node:fs';
import { BcryptBusy, BcryptThread } from '../../src/auth/bcrypt-thread.js';
import { addressGroup, clientAddress } from '../../src/auth/auth-service.js';
import { passwordThread } from '../../src/auth/passwords.js';
import type { TestRegistry } from '../helpers/start-registry.js';
import { basic, requestFrom, startAuthRegistry } from './helpers.js';

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
    // Closed while the check is on the thread: nothing else runs one now, and close() fails it at once
    // (an answer the thread may post meanwhile finds no check to settle).
    for (const deadline = Date.now() + 30_000; passwordThread.running === 0; ) {
      if (Date.now() > deadline) throw new Error('the password check never reached the thread');
      await new Promise((r) => setTimeout(r, 1));
    }
    await passwordThread.close();
    const res = await pending;
    expect(res.status).toBe(503);
    expect(await res.text()).toContain('the password could not be checked now');
    // Not remembered as refused, not counted as a guess: the same password, checked again, signs in.
    expect(await login('ann', PASSWORD)).toBe(200);
  });

  test("one address's burst of checks waits its own turns: past 16 waiting it is refused at once (429), and another address signs in meanwhile", async () => {
    // 40 wrong passwords at once from one address (this registry's failed-login limit is out of the way): 17 waiting at once is all it takes.
    const burst = Promise.all(Array.from({ length: 40 }, (_, i) => requestFrom('127.0.7.1', `${reg.url}/v2/`, { Authorization: basic('ann', `burst-guess-${i}`) })));
    const other = await requestFrom('127.0.7.2', `${reg.url}/v2/`, { Authorization: basic('ben', PASSWORD) });
    expect(other.status).toBe(200);
    const answers = await burst;
    const refused = answers.filter((a) => a.status === 429);
    // Before: all 40 queued in one line (401 each, the last after 40 checks), ahead of ben's.
    expect(refused.length).toBeGreaterThanOrEqual(1);
    expect(answers.filter((a) => a.status === 401).length + refused.length).toBe(40);
    for (const r of refused) {
      expect(r.body).toContain('too many password checks from this address at once');
      expect(Number(r.retryAfter)).toBeGreaterThanOrEqual(1);
    }
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

  test("owners take turns: one sending many holds up another's check by one of its own, not all of them", async () => {
    const thread = new BcryptThread(30_000, { perOwner: 8, total: 64 });
    const salt = bcrypt.genSaltSync(4);
    const done: string[] = [];
    const check = (owner: string, n: number) => thread.hash(`${owner}-${n}`, salt, { owner }).then(() => done.push(`${owner}${n}`));
    // Before: one line, first come first served: a1 a2 a3 a4 a5 b1.
    await Promise.all([...[1, 2, 3, 4, 5].map((n) => check('a', n)), check('b', 1)]);
    expect(done).toEqual(['a1', 'a2', 'b1', 'a3', 'a4', 'a5']);
    await thread.close();
  });

  test("past its owner's limit a check is refused at once (BcryptBusy, with a wait); one whose client went away is dropped unchecked", async () => {
    const thread = new BcryptThread(30_000, { perOwner: 2, total: 8 });
    const salt = bcrypt.genSaltSync(4);
    const running = thread.hash('first', salt, { owner: 'a' }); // on the thread: not waiting
    const waiting = [thread.hash('a-1', salt, { owner: 'a' }), thread.hash('a-2', salt, { owner: 'a' })];
    const own = thread.hash('a-3', salt, { owner: 'a' });
    await expect(own).rejects.toBeInstanceOf(BcryptBusy);
    await expect(own).rejects.toMatchObject({ ownerLimit: true, message: 'too many password checks from this address at once' });
    const gone = new AbortController();
    const abandoned = thread.hash('b-1', salt, { owner: 'b', signal: gone.signal });
    expect(thread.queued).toBe(3);
    gone.abort();
    await expect(abandoned).rejects.toMatchObject({ name: 'AbortError' });
    expect(thread.queued).toBe(2);
    await Promise.all([running, ...waiting]);
    await thread.close();
  });

  test('a full line makes room: the owner with the most waiting gives up its newest, until none has more than a newcomer would', async () => {
    const thread = new BcryptThread(30_000, { perOwner: 8, total: 3 });
    const salt = bcrypt.genSaltSync(4);
    const settled = (p: Promise<string>) => p.then(() => 'hashed', (err: unknown) => (err instanceof BcryptBusy ? `busy${err.ownerLimit ? ' (own)' : ''}` : 'failed'));
    const running = settled(thread.hash('first', salt, { owner: 'a' }));
    const a = [1, 2, 3].map((n) => settled(thread.hash(`a-${n}`, salt, { owner: 'a' })));
    // Full with a's three: b and c each take one of a's places (its newest first); d finds none with more than one.
    const b = settled(thread.hash('b-1', salt, { owner: 'b' }));
    const c = settled(thread.hash('c-1', salt, { owner: 'c' }));
    const d = settled(thread.hash('d-1', salt, { owner: 'd' }));
    expect(await Promise.all([running, ...a, b, c, d])).toEqual(['hashed', 'hashed', 'busy (own)', 'busy (own)', 'hashed', 'hashed', 'busy']);
    await thread.close();
  });

  test('a full line of one check per owner still takes a login from a known address, in the place of another owner\'s newest', async () => {
    const thread = new BcryptThread(30_000, { perOwner: 8, total: 3 });
    const salt = bcrypt.genSaltSync(4);
    const settled = (p: Promise<string>) => p.then(() => 'hashed', (err: unknown) => (err instanceof BcryptBusy ? 'busy' : 'failed'));
    const running = settled(thread.hash('first', salt, { owner: 'a' }));
    // Three owners, one waiting each (an attacker's three addresses): a stranger finds no room.
    const fillers = ['b', 'c', 'd'].map((owner) => settled(thread.hash(`${owner}-1`, salt, { owner })));
    const stranger = settled(thread.hash('e-1', salt, { owner: 'e' }));
    const known = settled(thread.hash('f-1', salt, { owner: 'f', known: true }));
    // d, last in the turns, gives up its place.
    expect(await Promise.all([running, ...fillers, stranger, known])).toEqual(['hashed', 'hashed', 'hashed', 'busy', 'busy', 'hashed']);
    await thread.close();
  });

  test('IPv6 clients count by their /64, IPv4 (and IPv4-mapped) by their address', () => {
    expect(addressGroup('2001:db8:1:2:3:4:5:6')).toBe('2001:db8:1:2::/64');
    expect(addressGroup('2001:db8:1:2::9')).toBe('2001:db8:1:2::/64');
    expect(addressGroup('2001:DB8:0001:0002:ffff::1%eth0')).toBe('2001:db8:1:2::/64');
    expect(addressGroup('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressGroup('::1')).toBe('0:0:0:0::/64');
    expect(addressGroup('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(addressGroup('192.0.2.7')).toBe('192.0.2.7');
    expect(addressGroup(undefined)).toBe('unknown');
    // NAT64 puts every IPv4 client under one prefix: each is its IPv4 address, not one /64 for all.
    expect(addressGroup('64:ff9b::c000:207')).toBe('192.0.2.7');
    expect(clientAddress('64:ff9b::192.0.2.8')).toBe('192.0.2.8');
    expect(clientAddress('2001:DB8::1')).toBe('2001:db8::1');
  });
});
