import { afterAll, describe, expect, test } from '@jest/globals';
import bcrypt from 'bcryptjs';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { basic, bcryptHash } from './helpers.js';

/**
 * A wrong password for a user that does not exist takes as long to refuse as one for a user that
 * does (no timing here: the check's bcrypt cost is what sets its time), so answers do not tell names.
 */
describe("a missing user's password is checked at the cost of the users' own hashes", () => {
  let reg: TestRegistry | undefined;
  afterAll(async () => reg?.close());

  test('configuration hashes made at cost 10 while Wharf makes its own at 11: a missing user costs 10, until most users cost 11', async () => {
    reg = await startRegistry({
      settings: {
        auth: {
          enabled: true,
          users: [
            { name: 'root', password_hash: bcryptHash('root-password-1'), admin: true },
            { name: 'carl', password_hash: bcryptHash('carl-password-1') },
          ],
        },
      },
      auth: { bcryptCost: 11, loginLimits: { maxFailures: 1_000_000, windowMs: 1000 }, announce: () => undefined },
    });
    const costOf = (hash: string): number => Number(/^\$2[abxy]?\$(\d{2})\$/.exec(hash)![1]);
    expect(costOf(await reg.auth!.accounts.dummyHash())).toBe(10);
    // Database users made later at cost 11 outnumber them: the check follows.
    const hash11 = bcrypt.hashSync('some-password-1', 11);
    for (const name of ['dan', 'eve', 'fay']) reg.auth!.store.addUser(name, hash11, false);
    expect(costOf(await reg.auth!.accounts.dummyHash())).toBe(11);
    // And a missing user is refused as any wrong password is.
    expect((await fetch(`${reg.url}/v2/`, { headers: { Authorization: basic('nobody', 'some-password-1') } })).status).toBe(401);
  });
});
