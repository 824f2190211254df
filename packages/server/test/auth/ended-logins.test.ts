import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import type { TestRegistry } from '../helpers/start-registry.js';
import { basic, bcryptHash, fetchToken, startAuthRegistry, type TokenReply } from './helpers.js';

/**
 * A docker daemon keeps its identity token (the login) and presents it at every pull until the next
 * `docker login`: a login that ended is presented again and again, by a client that is no guesser.
 */
describe('a login that ended, presented again', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startAuthRegistry({
      authSettings: { users: [{ name: 'alice', password_hash: bcryptHash('alice-password-1') }, { name: 'bob', password_hash: bcryptHash('bob-password-1') }] },
      // Three failed logins lock an address out (ten in production).
      loginLimits: { maxFailures: 3, windowMs: 5 * 60_000 },
    });
  });
  afterAll(async () => reg?.close());

  const refresh = async (login: string): Promise<Response> =>
    fetch(`${reg.url}/auth/token`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: login, client_id: 'docker', service: 'wharf', scope: 'repository:alice/app:pull' }).toString(),
    });

  test("is refused, says so, and does not lock its address out of every login (an office's NAT, a CI runner); a made-up one still counts", async () => {
    const signIn = await fetchToken(`${reg.url}/auth/token`, 'wharf', [], { user: 'alice', password: 'alice-password-1' }, '&offline_token=true');
    const login = ((await signIn.json()) as TokenReply).refresh_token!;
    expect((await refresh(login)).status).toBe(200);
    reg.auth!.store.revoke(reg.auth!.store.findToken(login)!.id);

    // Before: 401, 401, 401, then 429 for everyone at this address, bob's password included.
    for (let i = 0; i < 6; i++) {
      const res = await refresh(login);
      expect([i, res.status]).toEqual([i, 401]);
      expect(((await res.json()) as { errors: { message: string }[] }).errors[0]!.message).toContain('this login has ended');
    }
    expect((await fetch(`${reg.url}/v2/`, { headers: { Authorization: basic('bob', 'bob-password-1') } })).status).toBe(200);

    // A refresh token nobody issued is a guess, counted as one.
    const made = [];
    for (let i = 0; i < 4; i++) made.push((await refresh(`wharf_rt_${'A'.repeat(40)}${i}`)).status);
    expect(made).toEqual([401, 401, 401, 429]);
  });
});
