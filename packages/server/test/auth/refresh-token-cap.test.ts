import { describe, expect, test } from '@jest/globals';
import { openDatabase } from '@wharf/registry-core';
import { AuthStore, MAX_REFRESH_PER_USER } from '../../src/auth/auth-store.js';

/**
 * Refresh tokens (one per `docker login`) are rows that live 30 days: one account minting them in a
 * loop grew the table without bound, and each new one swept expired ones with a scan of the whole
 * table (20 ms a login at 76,000 rows, every request waiting behind it).
 */
describe('refresh tokens', () => {
  const refresh = (user: string) => ({ type: 'refresh' as const, user, scopes: [], expiresAt: Date.now() + 30 * 86_400_000 });

  test('a user keeps the MAX_REFRESH_PER_USER used last; those unused longest go, one in use stays, and nobody else loses any', () => {
    const db = openDatabase(':memory:');
    try {
      const store = new AuthStore(db);
      const other = store.createToken(refresh('bob'));
      const pat = store.createToken({ type: 'pat', user: 'mallory', scopes: ['pull'], expiresAt: Date.now() + 86_400_000 });
      // The laptop's login, made first and used since: it outlives the flood of newer ones.
      const laptop = store.createToken(refresh('mallory'));
      const minted = db.transaction(() =>
        Array.from({ length: MAX_REFRESH_PER_USER + 3 }, (_, i) => {
          if (i === 10) store.touch(laptop.id, Date.now() + 60_000);
          return store.createToken(refresh('mallory'));
        }),
      )();
      const count = (user: string) => (db.prepare("SELECT COUNT(*) AS n FROM auth_tokens WHERE user = ? AND type = 'refresh'").get(user) as { n: number }).n;
      expect(count('mallory')).toBe(MAX_REFRESH_PER_USER);
      expect(store.findToken(laptop.secret)?.id).toBe(laptop.id);
      expect(minted.slice(0, 4).map((t) => store.findToken(t.secret))).toEqual([undefined, undefined, undefined, undefined]);
      expect(store.findToken(minted[4]!.secret)?.id).toBe(minted[4]!.id);
      expect(store.findToken(minted.at(-1)!.secret)?.id).toBe(minted.at(-1)!.id);
      // Other users' refresh tokens, and the user's own access tokens, are not counted or dropped.
      expect(store.findToken(other.secret)?.id).toBe(other.id);
      expect(store.findToken(pat.secret)?.id).toBe(pat.id);
    } finally {
      db.close();
    }
  });

  test('the sweep of expired ones and the cap read an index, not the whole table', () => {
    const db = openDatabase(':memory:');
    try {
      new AuthStore(db);
      const plan = (sql: string, ...args: unknown[]) =>
        (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...args) as { detail: string }[]).map((r) => r.detail).join('; ');
      expect(plan("DELETE FROM auth_tokens WHERE type = 'refresh' AND expires_at < ?", 1)).toMatch(/USING (COVERING )?INDEX auth_tokens_expiry/);
      const cap = "SELECT id FROM auth_tokens WHERE user = ? AND type = 'refresh' ORDER BY COALESCE(last_used_at, created_at) DESC LIMIT -1 OFFSET 5";
      expect(plan(cap, 'u')).toMatch(/USING (COVERING )?INDEX auth_tokens_user_used/);
      expect(plan(cap, 'u')).not.toMatch(/TEMP B-TREE/);
    } finally {
      db.close();
    }
  });
});
