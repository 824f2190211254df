import { describe, expect, test } from '@jest/globals';
import { parseRetryAfter } from '../src/http-upstream.js';
import { TokenCache, parseChallenge, tokenOf } from '../src/token-auth.js';

describe('parseChallenge', () => {
  test('Bearer with quoted realm, service and a scope containing commas and a host:port', () => {
    expect(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:reg.example:5000/ns/app:pull,push"')).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:reg.example:5000/ns/app:pull,push' },
    });
  });

  test('scheme and parameter names are case-insensitive, bare values and spaces allowed', () => {
    expect(parseChallenge('BEARER Realm = https://a.example/token , Service=svc')).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://a.example/token', service: 'svc' },
    });
  });

  test('escaped quotes inside a quoted value are unescaped', () => {
    expect(parseChallenge('Basic realm="say \\"hi\\""')).toEqual({ scheme: 'basic', params: { realm: 'say "hi"' } });
  });

  test('Basic without parameters', () => {
    expect(parseChallenge('Basic')).toEqual({ scheme: 'basic', params: {} });
  });

  test('absent, empty, or another scheme is undefined', () => {
    // Two challenges, in one value or in two header lines joined by a comma: Bearer is the one answered, with its own realm.
    expect(parseChallenge('Basic realm="basic-realm", Bearer realm="https://a.example/token",service="svc"')).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://a.example/token', service: 'svc' },
    });
    expect(parseChallenge('Bearer realm="https://a.example/token",service="svc",scope="repository:a:pull", Basic realm="x"')?.params).toEqual({
      realm: 'https://a.example/token',
      service: 'svc',
      scope: 'repository:a:pull',
    });
    expect(parseChallenge('Negotiate, Basic realm="only"')).toEqual({ scheme: 'basic', params: { realm: 'only' } });
    expect(parseChallenge(undefined)).toBeUndefined();
    expect(parseChallenge('')).toBeUndefined();
    expect(parseChallenge('Digest realm="x", nonce="y"')).toBeUndefined();
    expect(parseChallenge('Negotiate')).toBeUndefined();
  });
});

describe('parseRetryAfter', () => {
  const now = Date.parse('2026-01-01T00:00:00Z');

  test('delta-seconds', () => {
    expect(parseRetryAfter('1', now)).toBe(1);
    expect(parseRetryAfter(' 120 ', now)).toBe(120);
    expect(parseRetryAfter('0', now)).toBe(0);
  });

  test('an HTTP date is seconds from now, rounded up, never negative', () => {
    expect(parseRetryAfter('Thu, 01 Jan 2026 00:00:30 GMT', now)).toBe(30);
    expect(parseRetryAfter('Wed, 31 Dec 2025 23:59:00 GMT', now)).toBe(0);
  });

  test('an hour at most, however far the upstream says', () => {
    expect(parseRetryAfter('3600', now)).toBe(3600);
    expect(parseRetryAfter('99999999999', now)).toBe(3600);
    expect(parseRetryAfter('9'.repeat(400), now)).toBe(3600);
    expect(parseRetryAfter('Fri, 01 Jan 2100 00:00:00 GMT', now)).toBe(3600);
  });

  test('the first of repeated headers counts', () => {
    expect(parseRetryAfter(['5', '7'], now)).toBe(5);
  });

  test('absent or garbage is undefined', () => {
    expect(parseRetryAfter(undefined, now)).toBeUndefined();
    expect(parseRetryAfter('', now)).toBeUndefined();
    expect(parseRetryAfter('soon', now)).toBeUndefined();
  });

  test('a negative value never means waiting (Date.parse reads "-5" as a date long past)', () => {
    expect(parseRetryAfter('-5', now) ?? 0).toBe(0);
  });
});

describe('tokenOf', () => {
  test('token, else access_token; expires_in when a number, else 60', () => {
    expect(tokenOf({ token: 'a', access_token: 'b', expires_in: 300 })).toEqual({ token: 'a', expiresIn: 300 });
    expect(tokenOf({ token: '', access_token: 'b' })).toEqual({ token: 'b', expiresIn: 60 });
    expect(tokenOf({ access_token: 'b', expires_in: '300' })).toEqual({ token: 'b', expiresIn: 60 });
  });

  test('no token in any JSON that is no object, or holds none: undefined, never a throw', () => {
    for (const doc of [null, 5, 'token', true, [], ['t'], {}, { token: 123 }, { token: '' }, { access_token: '' }]) expect(tokenOf(doc)).toBeUndefined();
  });
});

describe('TokenCache', () => {
  test('a token is served until shortly before it expires, never less than the 60 s floor', () => {
    const cache = new TokenCache();
    const t0 = 1_000_000;
    cache.set('repository:a:pull', 'tok', 10, t0); // below the floor: treated as 60 s, minus a 15 s margin
    expect(cache.get('repository:a:pull', t0 + 44_000)).toBe('tok');
    expect(cache.get('repository:a:pull', t0 + 45_000)).toBeUndefined();
    expect(cache.get('repository:a:pull', t0)).toBeUndefined();
  });

  test('long-lived tokens expire 30 s early', () => {
    const cache = new TokenCache();
    cache.set('k', 'tok', 300, 0);
    expect(cache.get('k', 269_999)).toBe('tok');
    expect(cache.get('k', 270_000)).toBeUndefined();
  });

  test('tokens of many repositories do not pile up: expired ones go first, then the oldest fetched', () => {
    const cache = new TokenCache();
    for (let i = 0; i < 30_000; i++) cache.set(`repository:lib/r${i}:pull`, `tok${i}`, 300, 0);
    expect(cache.size).toBeLessThanOrEqual(1024);
    expect(cache.get('repository:lib/r29999:pull', 0)).toBe('tok29999');
    expect(cache.get('repository:lib/r0:pull', 0)).toBeUndefined();
    // Later, with every one of those expired, new ones take their place.
    for (let i = 0; i < 10; i++) cache.set(`repository:lib/late${i}:pull`, `late${i}`, 300, 1_000_000);
    expect(cache.size).toBeLessThanOrEqual(1024);
    expect(cache.get('repository:lib/late0:pull', 1_000_000)).toBe('late0');
  });

  test('keys are independent', () => {
    const cache = new TokenCache();
    cache.set('repository:a:pull', 'A', 300, 0);
    expect(cache.get('repository:b:pull', 0)).toBeUndefined();
  });
});
