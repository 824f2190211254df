import { describe, expect, test } from '@jest/globals';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ConfigError, buildConfig, loadConfig } from '../../src/config.js';
import { basic, bcryptHash, captureLog, startAuthRegistry } from './helpers.js';

const REQUIRED = { registry_storage: 'r', temporary_registry_storage: 't', proxy_storage: 'p', listen: '127.0.0.1:5000' };
const HASH = bcryptHash('a-password-1');
const SHIPPED = resolve(import.meta.dirname, '../../../../configuration.toml');

function build(auth: unknown, extra: Record<string, unknown> = {}) {
  return buildConfig({ ...REQUIRED, ...extra, ...(auth === undefined ? {} : { auth }) });
}

describe('[auth] configuration', () => {
  test('defaults: enabled, service "wharf", 5 minute tokens, no anonymous push, realm from the request', () => {
    const { auth } = build(undefined);
    expect(auth).toEqual({ enabled: true, service: 'wharf', tokenTtl: 300_000, allowAnonymousPush: false, users: [], groups: [], public: [] });
  });

  test('users, groups, public patterns and the realm are read', () => {
    const { auth } = build({
      realm: 'https://wharf.example.com/auth/token',
      token_ttl: '15m',
      users: [{ name: 'alice', password_hash: HASH }, { name: 'root', password_hash: HASH, admin: true }],
      groups: [{ name: 'team', members: { alice: 'maintainer', bob: 'reader' } }],
      public: ['team/*', 'alice/site'],
    });
    expect(auth.realm).toBe('https://wharf.example.com/auth/token');
    expect(auth.tokenTtl).toBe(900_000);
    expect(auth.users).toEqual([{ name: 'alice', passwordHash: HASH, admin: false }, { name: 'root', passwordHash: HASH, admin: true }]);
    expect(auth.groups[0]!.members.get('bob')).toBe('reader');
    expect(auth.public).toEqual(['team/*', 'alice/site']);
  });

  test.each([
    [{ nope: 1 }, 'unknown key "auth.nope"'],
    [{ enabled: 'yes' }, '"auth.enabled" must be true or false'],
    [{ token_ttl: '10s' }, '"auth.token_ttl"'],
    [{ realm: '/auth/token' }, '"auth.realm"'],
    [{ service: 'has "quotes"' }, '"auth.service"'],
    [{ users: { name: 'x' } }, '"auth.users"'],
    [{ users: [{ name: 'Alice', password_hash: HASH }] }, '"auth.users[0].name"'],
    [{ users: [{ name: 'proxy', password_hash: HASH }] }, '"auth.users[0].name"'],
    [{ users: [{ name: 'alice', password_hash: 'plain' }] }, '"auth.users[0].password_hash"'],
    [{ users: [{ name: 'alice', password_hash: bcryptHash('x').replace('$10$', '$04$') }] }, 'bcrypt cost 4'],
    [{ users: [{ name: 'alice', password_hash: HASH, admin: 1 }] }, '"auth.users[0].admin"'],
    [{ users: [{ name: 'alice', password_hash: HASH }, { name: 'alice', password_hash: HASH }] }, 'defined twice'],
    [{ groups: [{ name: 'team', members: { alice: 'owner' } }] }, '"auth.groups[0].members.alice" must be one of reader, developer, maintainer'],
    [{ groups: [{ name: 'alice', members: {} }], users: [{ name: 'alice', password_hash: HASH }] }, 'is also a user'],
    [{ public: ['*'] }, '"auth.public"'],
    [{ public: ['proxy/*'] }, '"auth.public": the proxy\'s repositories are opened by their upstream\'s "access"'],
  ])('%j is refused naming the key', (auth, message) => {
    expect(() => build(auth)).toThrow(ConfigError);
    expect(() => build(auth)).toThrow(message);
  });

  test('an upstream access must be authenticated, anonymous, or configured groups', () => {
    const proxy = (access: unknown) => ({ proxy: { upstreams: { up: { url: 'http://up.local', access } } } });
    expect(() => build(undefined, proxy('everyone'))).toThrow('"proxy.upstreams.up.access"');
    expect(() => build(undefined, proxy(['ghosts']))).toThrow('"proxy.upstreams.up.access" names group "ghosts"');
    expect(build({ groups: [{ name: 'ops', members: {} }] }, proxy(['ops'])).proxy.upstreams.find((u) => u.key === 'up')!.access).toEqual(['ops']);
  });

  test('auth off is refused on a non-loopback listen address unless allow_anonymous_push = true', () => {
    expect(() => build({ enabled: false }, { listen: '0.0.0.0:5000' })).toThrow('"auth.enabled" = false is allowed only when "listen" is a loopback address');
    expect(() => buildConfig({ ...REQUIRED, listen: '0.0.0.0:5000', auth: { enabled: false } }, { env: { WHARF_LISTEN: '[::]:5000' } })).toThrow('"auth.enabled"');
    expect(build({ enabled: false }).auth.enabled).toBe(false);
    expect(build({ enabled: false }, { listen: '[::1]:5000' }).auth.enabled).toBe(false);
    expect(build({ enabled: false, allow_anonymous_push: true }, { listen: '0.0.0.0:5000' }).auth.allowAnonymousPush).toBe(true);
  });

  test('WHARF_ADMIN_PASSWORD is the first administrator password', () => {
    expect(buildConfig({ ...REQUIRED }, { env: { WHARF_ADMIN_PASSWORD: 'from-the-env-1' } }).auth.initialAdminPassword).toBe('from-the-env-1');
  });

  test('the shipped configuration.toml has auth enabled', () => {
    expect(loadConfig({ file: SHIPPED, env: {} }).auth.enabled).toBe(true);
  });
});

describe('the first administrator', () => {
  test('first start without any admin: "admin" with a generated password shown once, never logged; not again on restart', async () => {
    const root = await mkdtemp(join(tmpdir(), 'wharf-bootstrap-'));
    const log = captureLog();
    const shown: string[] = [];
    try {
      const first = await startAuthRegistry({ root, logger: log.logger, announce: (t) => shown.push(t) });
      await first.close();
      expect(shown).toHaveLength(1);
      const password = /\n {4}(\S+)\n/.exec(shown[0]!)?.[1];
      expect(password).toMatch(/^[A-Za-z0-9_-]{24}$/);
      expect(log.text()).toContain('administrator created');
      expect(log.text()).not.toContain(password!);

      const again = await startAuthRegistry({ root, logger: log.logger, announce: (t) => shown.push(t) });
      try {
        expect(shown).toHaveLength(1);
        expect((await fetch(`${again.url}/v2/`, { headers: { Authorization: basic('admin', password!) } })).status).toBe(200);
        expect((await fetch(`${again.url}/v2/`, { headers: { Authorization: basic('admin', 'wrong-password') } })).status).toBe(401);
      } finally {
        await again.close();
      }
      expect(log.text()).not.toContain(password!);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  test('WHARF_ADMIN_PASSWORD sets it, and nothing is shown', async () => {
    const shown: string[] = [];
    const reg = await startAuthRegistry({ env: { WHARF_ADMIN_PASSWORD: 'given-admin-pw1' }, announce: (t) => shown.push(t) });
    try {
      expect(shown).toEqual([]);
      expect((await fetch(`${reg.url}/v2/`, { headers: { Authorization: basic('admin', 'given-admin-pw1') } })).status).toBe(200);
    } finally {
      await reg.close();
    }
  });

  test('a WHARF_ADMIN_PASSWORD below the password rules stops the first start, saying why', async () => {
    await expect(startAuthRegistry({ env: { WHARF_ADMIN_PASSWORD: 'short' } })).rejects.toThrow('WHARF_ADMIN_PASSWORD: a password needs 8 characters or more');
  });

  test('with no administrator and the name "admin" taken by a user, the start says so where the password would have been', async () => {
    const shown: string[] = [];
    const reg = await startAuthRegistry({ authSettings: { users: [{ name: 'admin', password_hash: HASH, admin: false }] }, announce: (t) => shown.push(t) });
    try {
      expect(shown).toEqual(['\nwharf: no administrator is configured and the name "admin" is taken; create one with "wharf user add <name> --admin"\n\n']);
    } finally {
      await reg.close();
    }
  });

  test('an administrator in the configuration means no generated one', async () => {
    const shown: string[] = [];
    const reg = await startAuthRegistry({ authSettings: { users: [{ name: 'root', password_hash: HASH, admin: true }] }, announce: (t) => shown.push(t) });
    try {
      expect(shown).toEqual([]);
      expect(reg.auth!.accounts.find('admin')).toBeUndefined();
    } finally {
      await reg.close();
    }
  });
});
