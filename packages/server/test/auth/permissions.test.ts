import { describe, expect, test } from '@jest/globals';
import type { Role } from '../../src/auth-config.js';
import { LoginLimiter } from '../../src/auth/login-limiter.js';
import {
  ANONYMOUS,
  allowedActions,
  isPublic,
  mayCreateCiToken,
  mayListCatalog,
  mayUseUpstream,
  parseActions,
  type Policy,
  type Principal,
} from '../../src/auth/permissions.js';
import { routeAccess } from '../../src/auth/route-access.js';
import { formatScope, grantedActions, parseScope, parseScopes } from '../../src/auth/scope.js';
import type { UpstreamAccess } from '../../src/proxy-config.js';

const members = (m: Record<string, Role>) => new Map(Object.entries(m));

const policy: Policy = {
  groups: new Map([
    ['team', members({ dev: 'developer', rita: 'reader', max: 'maintainer' })],
    ['ops', members({ olga: 'reader' })],
  ]),
  publicPatterns: ['pub/*', 'alice/site'],
  upstreamAccess(upstream: string): UpstreamAccess | undefined {
    return ({ hub: 'authenticated', open: 'anonymous', internal: ['ops'] } as Record<string, UpstreamAccess>)[upstream];
  },
};

const user = (name: string, admin = false): Principal => ({ kind: 'user', name, admin });
const pat = (name: string, scopes: ('pull' | 'push' | 'delete')[], admin = false): Principal => ({ kind: 'token', name, admin, tokenId: 1, tokenType: 'pat', scopes });
const ci = (name: string, namespace: string): Principal => ({ kind: 'token', name, admin: false, tokenId: 2, tokenType: 'ci', scopes: ['pull', 'push'], namespace });
const repo = (name: string) => ({ kind: 'repository' as const, name });
const proxy = (upstream: string) => ({ kind: 'proxy' as const, upstream });
const actions = (p: Principal, t: ReturnType<typeof repo> | ReturnType<typeof proxy>) => [...allowedActions(p, t, policy)].sort();

describe('permissions', () => {
  test('an admin may do everything on every local repository', () => {
    expect(actions(user('root', true), repo('bob/secret'))).toEqual(['delete', 'pull', 'push']);
  });

  test('a user owns <user>/* and nothing else', () => {
    expect(actions(user('alice'), repo('alice/app'))).toEqual(['delete', 'pull', 'push']);
    expect(actions(user('alice'), repo('alice/deep/app'))).toEqual(['delete', 'pull', 'push']);
    expect(actions(user('alice'), repo('bob/app'))).toEqual([]);
    expect(actions(user('alice'), repo('alicex/app'))).toEqual([]);
    expect(actions(user('alice'), repo('alice'))).toEqual([]);
  });

  test('group roles: reader pulls, developer pushes, maintainer deletes, in <group>/* only', () => {
    expect(actions(user('rita'), repo('team/app'))).toEqual(['pull']);
    expect(actions(user('dev'), repo('team/app'))).toEqual(['pull', 'push']);
    expect(actions(user('max'), repo('team/app'))).toEqual(['delete', 'pull', 'push']);
    expect(actions(user('dev'), repo('ops/app'))).toEqual([]);
    expect(actions(user('dev'), repo('teamx/app'))).toEqual([]);
  });

  test('public repositories and namespaces: pull for everyone, anonymous included', () => {
    expect(isPublic('pub/app', policy.publicPatterns)).toBe(true);
    expect(isPublic('alice/site', policy.publicPatterns)).toBe(true);
    expect(isPublic('alice/site2', policy.publicPatterns)).toBe(false);
    expect(actions(ANONYMOUS, repo('pub/x'))).toEqual(['pull']);
    expect(actions(ANONYMOUS, repo('alice/site'))).toEqual(['pull']);
    expect(actions(ANONYMOUS, repo('alice/app'))).toEqual([]);
    expect(actions(user('eve'), repo('pub/x'))).toEqual(['pull']);
    expect(actions(user('alice'), repo('alice/site'))).toEqual(['delete', 'pull', 'push']);
  });

  test('a personal access token carries a subset of its user actions', () => {
    expect(actions(pat('alice', ['pull']), repo('alice/app'))).toEqual(['pull']);
    expect(actions(pat('alice', ['pull', 'push', 'delete']), repo('bob/app'))).toEqual([]);
    expect(actions(pat('rita', ['pull', 'push']), repo('team/app'))).toEqual(['pull']);
    expect(actions(pat('root', ['push'], true), repo('bob/app'))).toEqual(['push']);
  });

  test('a CI token pushes and pulls only its namespace, never deletes', () => {
    expect(actions(ci('max', 'team'), repo('team/app'))).toEqual(['pull', 'push']);
    expect(actions(ci('max', 'team'), repo('max/app'))).toEqual([]);
    expect(actions(ci('rita', 'team'), repo('team/app'))).toEqual(['pull']);
    expect(actions(ci('max', 'team'), repo('pub/app'))).toEqual(['pull']);
  });

  test('proxy repositories: pull only, per the upstream access', () => {
    expect(actions(ANONYMOUS, proxy('hub'))).toEqual([]);
    expect(actions(user('eve'), proxy('hub'))).toEqual(['pull']);
    expect(actions(user('root', true), proxy('hub'))).toEqual(['pull']);
    expect(actions(ANONYMOUS, proxy('open'))).toEqual(['pull']);
    expect(actions(user('eve'), proxy('internal'))).toEqual([]);
    expect(actions(user('olga'), proxy('internal'))).toEqual(['pull']);
    expect(actions(user('root', true), proxy('internal'))).toEqual(['pull']);
    expect(actions(ci('max', 'team'), proxy('hub'))).toEqual(['pull']);
    expect(actions(pat('alice', ['push']), proxy('hub'))).toEqual([]);
    expect(actions(user('eve'), proxy('unknown'))).toEqual([]);
    expect(mayUseUpstream(user('eve'), 'hub', policy)).toBe(true);
  });

  test('the catalog is for users and pull tokens, not for anonymous or CI tokens', () => {
    expect(mayListCatalog(ANONYMOUS)).toBe(false);
    expect(mayListCatalog(user('eve'))).toBe(true);
    expect(mayListCatalog(pat('alice', ['pull']))).toBe(true);
    expect(mayListCatalog(pat('alice', ['push']))).toBe(false);
    expect(mayListCatalog(ci('max', 'team'))).toBe(false);
  });

  test('a CI token for a namespace needs developer there (or ownership, or admin)', () => {
    expect(mayCreateCiToken({ name: 'dev', admin: false }, 'team', policy)).toBe(true);
    expect(mayCreateCiToken({ name: 'rita', admin: false }, 'team', policy)).toBe(false);
    expect(mayCreateCiToken({ name: 'alice', admin: false }, 'alice', policy)).toBe(true);
    expect(mayCreateCiToken({ name: 'alice', admin: false }, 'team', policy)).toBe(false);
    expect(mayCreateCiToken({ name: 'root', admin: true }, 'team', policy)).toBe(true);
  });

  test('token scopes parse from pull,push,delete only', () => {
    expect(parseActions('push,pull')).toEqual(['pull', 'push']);
    expect(parseActions('pull,*')).toBeUndefined();
    expect(parseActions('')).toBeUndefined();
  });
});

describe('scope grammar', () => {
  test('repository:<name>:<actions>', () => {
    expect(parseScope('repository:team/app:pull,push')).toEqual({ type: 'repository', name: 'team/app', actions: ['pull', 'push'] });
  });

  test('a name with host:port splits on the first colon for the type and the last for the actions', () => {
    expect(parseScope('repository:localhost:5000/alice/app:pull')).toEqual({ type: 'repository', name: 'localhost:5000/alice/app', actions: ['pull'] });
  });

  test('registry:catalog:*, a deprecated resource class, duplicate and empty actions', () => {
    expect(parseScope('registry:catalog:*')).toEqual({ type: 'registry', name: 'catalog', actions: ['*'] });
    expect(parseScope('repository(plugin):alice/app:pull')).toEqual({ type: 'repository', name: 'alice/app', actions: ['pull'] });
    expect(parseScope('repository:alice/app:pull,,pull')).toEqual({ type: 'repository', name: 'alice/app', actions: ['pull'] });
    expect(parseScope('repository:alice/app:')).toEqual({ type: 'repository', name: 'alice/app', actions: [] });
  });

  test('malformed scopes are ignored', () => {
    for (const bad of ['', 'repository', 'repository:alice', ':alice/app:pull', 'repository::pull', 'Repo!:a:pull']) expect(parseScope(bad)).toBeUndefined();
  });

  test('several scopes in one space-separated parameter (the OAuth2 form) and repeated parameters (GET)', () => {
    expect(parseScopes(['repository:a/b:pull repository:c/d:push', 'registry:catalog:*', '  '])).toEqual([
      { type: 'repository', name: 'a/b', actions: ['pull'] },
      { type: 'repository', name: 'c/d', actions: ['push'] },
      { type: 'registry', name: 'catalog', actions: ['*'] },
    ]);
  });

  test('format is the inverse of parse, and grants for one resource add up', () => {
    expect(formatScope(parseScope('repository:a/b:pull,push')!)).toBe('repository:a/b:pull,push');
    const access = [
      { type: 'repository', name: 'a/b', actions: ['pull'] },
      { type: 'repository', name: 'a/b', actions: ['push'] },
      { type: 'repository', name: 'c/d', actions: ['delete'] },
    ];
    expect([...grantedActions(access, 'repository', 'a/b')].sort()).toEqual(['pull', 'push']);
  });
});

describe('route access', () => {
  test('reads need pull, writes push, deletes delete; every upload step needs push', () => {
    expect(routeAccess('GET', '/v2/a/b/manifests/1')).toEqual({ kind: 'repository', name: 'a/b', resource: 'manifest', actions: ['pull'], uploadStart: false });
    expect(routeAccess('HEAD', '/v2/a/b/blobs/sha256:00')).toMatchObject({ name: 'a/b', resource: 'blob', actions: ['pull'] });
    expect(routeAccess('PUT', '/v2/a/b/manifests/1')).toMatchObject({ name: 'a/b', actions: ['push'] });
    expect(routeAccess('DELETE', '/v2/a/b/manifests/1')).toMatchObject({ name: 'a/b', actions: ['delete'] });
    expect(routeAccess('DELETE', '/v2/a/b/blobs/sha256:00')).toMatchObject({ name: 'a/b', actions: ['delete'] });
    expect(routeAccess('POST', '/v2/a/b/blobs/uploads/')).toMatchObject({ name: 'a/b', actions: ['push'], uploadStart: true });
    expect(routeAccess('GET', '/v2/a/b/blobs/uploads/u1')).toMatchObject({ name: 'a/b', resource: 'upload', actions: ['push'] });
    expect(routeAccess('DELETE', '/v2/a/b/blobs/uploads/u1')).toMatchObject({ name: 'a/b', actions: ['push'] });
    expect(routeAccess('GET', '/v2/a/b/tags/list')).toMatchObject({ name: 'a/b', actions: ['pull'] });
    expect(routeAccess('GET', '/v2/a/b/referrers/sha256:00')).toMatchObject({ name: 'a/b', actions: ['pull'] });
  });

  test('the name is the one the route serves (greedy, percent-decoded)', () => {
    expect(routeAccess('GET', '/v2/a/manifests/b/manifests/1')).toMatchObject({ name: 'a/manifests/b' });
    expect(routeAccess('GET', '/v2/team%2Fapp/manifests/1')).toMatchObject({ name: 'team/app' });
    // GET of "uploads" without a session is the blob route, as the router matches it.
    expect(routeAccess('GET', '/v2/a/blobs/uploads')).toMatchObject({ name: 'a', actions: ['pull'] });
  });

  test('base, catalog, and anything unknown', () => {
    expect(routeAccess('GET', '/v2/')).toEqual({ kind: 'base' });
    expect(routeAccess('GET', '/v2')).toEqual({ kind: 'base' });
    expect(routeAccess('GET', '/v2/_catalog')).toEqual({ kind: 'catalog' });
    expect(routeAccess('GET', '/v2/a/b/whatever')).toEqual({ kind: 'unknown' });
  });

  test("a method the path does not take needs what seeing the path's repository needs (the router answers 405)", () => {
    expect(routeAccess('POST', '/v2/a/b/manifests/1')).toEqual({ kind: 'repository', name: 'a/b', resource: 'manifest', actions: ['pull'], uploadStart: false });
    expect(routeAccess('POST', '/v2/a/blobs/uploads/s1')).toMatchObject({ name: 'a', resource: 'upload', actions: ['pull'] });
    expect(routeAccess('DELETE', '/v2/_catalog')).toEqual({ kind: 'base' });
    expect(routeAccess('PUT', '/v2/')).toEqual({ kind: 'base' });
  });
});

describe('failed-login limiter', () => {
  test('the 11th attempt within the window is refused with the seconds to wait, and the window slides', () => {
    let now = 1_000_000;
    const limiter = new LoginLimiter({ maxFailures: 10, windowMs: 300_000 }, () => now);
    for (let i = 0; i < 10; i++) {
      expect(limiter.retryAfter(['user:alice'])).toBeUndefined();
      limiter.fail(['user:alice']);
      now += 1000;
    }
    expect(limiter.retryAfter(['user:alice'])).toBe(290);
    expect(limiter.retryAfter(['user:bob'])).toBeUndefined();
    now += 290_000;
    expect(limiter.retryAfter(['user:alice'])).toBeUndefined();
    limiter.clear('user:alice');
    expect(limiter.retryAfter(['user:alice'])).toBeUndefined();
  });

  test('a failure taken back (a check refused at once, busy) leaves no key behind', () => {
    const limiter = new LoginLimiter({ maxFailures: 10, windowMs: 300_000 });
    const keys = ['ip:203.0.113.9', `user:u${'x'.repeat(60)}`];
    const at = limiter.fail(keys);
    expect(limiter.tracked).toBe(2);
    limiter.forgive(keys, at);
    // Before: both kept with an empty list, a key per name tried until 100,000 of them.
    expect(limiter.tracked).toBe(0);
    limiter.fail(keys);
    limiter.forgive(keys, limiter.fail(keys));
    expect(limiter.tracked).toBe(2);
    expect(limiter.retryAfter(keys)).toBeUndefined();
  });

  test("a flood of addresses does not crowd out the count of guesses at a user's password", () => {
    const limiter = new LoginLimiter({ maxFailures: 10, windowMs: 300_000 });
    for (let i = 0; i < 10; i++) limiter.fail([`ip:203.0.113.${i}`, 'user:admin']);
    expect(limiter.retryAfter(['user:admin'])).toBeDefined();
    // Cheap failures (a made-up token counts against addresses alone) from 100,001 addresses.
    for (let i = 0; i <= 100_000; i++) limiter.fail([`ip:2001:db8:${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}::1`]);
    // Before: one map of 100,000 keys at most, the oldest dropped first: admin's count went with them.
    expect(limiter.retryAfter(['user:admin'])).toBeDefined();
  });
});
