import { describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CONFIG_KEYS, ConfigError, buildConfig, envName, loadConfig } from '../../src/config.js';
import { TABLE_ENV_KEYS, tableEnvName } from '../../src/env-tables.js';

/** The operations keys: defaults, validation with the key named, and environment overrides. */

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
const BASE = {
  registry_storage: '/data/registry',
  temporary_registry_storage: '/data/_tmp',
  proxy_storage: '/data/proxy',
  database: '/data/wharf.db',
  listen: '127.0.0.1:5000',
};

function build(extra: Record<string, unknown> = {}, env: NodeJS.ProcessEnv = {}) {
  return buildConfig({ ...BASE, ...extra }, { env, cwd: '/work-dir', fileDir: '/etc/wharf' });
}

describe('operations configuration', () => {
  test('defaults: timeouts, TLS off, metrics on for loopback, log format auto', () => {
    const c = build();
    expect(c).toMatchObject({
      shutdownTimeout: 30_000,
      readHeaderTimeout: 20_000,
      idleTimeout: 120_000,
      requestTimeout: 120_000,
      logFormat: 'auto',
      metrics: { enabled: true },
      tls: { enabled: false, selfSigned: false, hosts: [], dir: '/data/tls' },
    });
    expect(c.metrics.token).toBeUndefined();
  });

  test('[tls] cert and key are resolved against the configuration file folder', () => {
    const c = build({ tls: { cert: 'certs/wharf.crt', key: '/keys/wharf.key' } });
    expect(c.tls).toMatchObject({ enabled: true, cert: '/etc/wharf/certs/wharf.crt', key: '/keys/wharf.key' });
  });

  test('[tls] mistakes are refused with the key named', () => {
    const refused = (tls: Record<string, unknown>) => () => build({ tls });
    expect(refused({ cert: 'a.crt' })).toThrow('"tls.cert" and "tls.key" go together');
    expect(refused({ self_signed: true, cert: 'a', key: 'b' })).toThrow('not both');
    expect(refused({ hosts: ['a.test'] })).toThrow('"tls.hosts"');
    expect(refused({ self_signed: true, hosts: ['bad host!'] })).toThrow('"tls.hosts" must be an array of host names and IP addresses');
    expect(refused({ redirect_http: ':80' })).toThrow('"tls.redirect_http" redirects to HTTPS');
    expect(refused({ self_signed: true, redirect_http: 'eighty' })).toThrow('"tls.redirect_http" must be host:port');
    expect(refused({ self_signed: 'yes' })).toThrow('"tls.self_signed" must be true or false');
    expect(refused({ certificate: 'x' })).toThrow('unknown key "tls.certificate"');
    expect(() => build({ read_header_timeout: '0s' })).toThrow('"read_header_timeout" must be more than 0');
    expect(() => build({ shutdown_timeout: 'soon' })).toThrow('"shutdown_timeout" must be a duration');
    expect(() => build({ log_format: 'xml' })).toThrow('"log_format" must be one of auto, json, pretty');
  });

  test('redirect_http ":80" listens on every interface', () => {
    expect(build({ tls: { self_signed: true, redirect_http: ':80' } }).tls.redirectHttp).toEqual({ host: '0.0.0.0', port: 80 });
  });

  test('[metrics] token and token_env, at least 16 characters', () => {
    expect(build({ metrics: { token: 'a'.repeat(16) } }).metrics.token).toBe('a'.repeat(16));
    expect(build({ metrics: { token_env: 'SCRAPE' } }, { SCRAPE: 'b'.repeat(20) }).metrics.token).toBe('b'.repeat(20));
    expect(() => build({ metrics: { token: 'short' } })).toThrow('"metrics.token" must be at least 16 characters');
    expect(() => build({ metrics: { token_env: 'MISSING' } })).toThrow('"metrics.token_env" names MISSING, which is not set');
    expect(() => build({ metrics: { enabled: 'no' } })).toThrow('"metrics.enabled" must be true or false');
  });

  test('commands that send no upstream request and serve no metrics (user, gc, fsck...) are not stopped by token_env or an egress proxy variable', () => {
    const base = { registry_storage: '/r', temporary_registry_storage: '/t', proxy_storage: '/p', database: '/d.db' };
    const env = { HTTPS_PROXY: 'socks5://127.0.0.1:1080' };
    const forCommands = buildConfig({ ...base, metrics: { token_env: 'MISSING' } }, { env, secrets: false });
    expect(forCommands.metrics.token).toBeUndefined();
    expect(forCommands.proxy.egress).toBeUndefined();
    // The server and `config check` still refuse both.
    expect(() => buildConfig({ ...base, metrics: { token_env: 'MISSING' } }, { env: {} })).toThrow('"metrics.token_env" names MISSING, which is not set');
    expect(() => buildConfig(base, { env })).toThrow('HTTPS_PROXY must be an http:// or https:// URL');
  });

  test('environment: WHARF_<KEY> for top-level keys, WHARF_<TABLE>_<KEY> for table keys', () => {
    const c = build(
      { tls: { cert: 'file.crt', key: 'file.key' }, proxy: { manifest_ttl: '5m' } },
      {
        WHARF_SHUTDOWN_TIMEOUT: '10s',
        WHARF_REQUEST_TIMEOUT: '0',
        WHARF_LOG_FORMAT: 'json',
        WHARF_TLS_CERT: 'env.crt',
        WHARF_TLS_KEY: '/abs/env.key',
        WHARF_METRICS_TOKEN: 'c'.repeat(32),
        WHARF_PROXY_MANIFEST_TTL: '1m',
        WHARF_PROXY_RETRIES: '1',
        WHARF_AUTH_TOKEN_TTL: '10m',
      },
    );
    expect(c.shutdownTimeout).toBe(10_000);
    expect(c.requestTimeout).toBe(0);
    expect(c.logFormat).toBe('json');
    // A relative path from the environment is relative to the working directory.
    expect(c.tls.cert).toBe('/work-dir/env.crt');
    expect(c.tls.key).toBe('/abs/env.key');
    expect(c.metrics.token).toBe('c'.repeat(32));
    expect(c.proxy.manifestTtl).toBe(60_000);
    expect(c.proxy.retries).toBe(1);
    expect(c.auth.tokenTtl).toBe(600_000);
  });

  test('environment: self-signed TLS with hosts as a comma-separated list, and booleans', () => {
    const c = build({}, { WHARF_TLS_SELF_SIGNED: 'true', WHARF_TLS_HOSTS: 'wharf.local, 10.0.0.5', WHARF_TLS_REDIRECT_HTTP: ':8080', WHARF_METRICS_ENABLED: 'false' });
    expect(c.tls).toMatchObject({ enabled: true, selfSigned: true, hosts: ['wharf.local', '10.0.0.5'], redirectHttp: { host: '0.0.0.0', port: 8080 } });
    expect(c.metrics.enabled).toBe(false);
    expect(() => build({}, { WHARF_TLS_SELF_SIGNED: 'maybe' })).toThrow(ConfigError);
    expect(() => build({}, { WHARF_TLS_SELF_SIGNED: 'maybe' })).toThrow('WHARF_TLS_SELF_SIGNED must be true or false');
    expect(() => build({}, { WHARF_PROXY_RETRIES: 'three' })).toThrow('WHARF_PROXY_RETRIES must be a non-negative integer');
  });

  test('max_connections: 4096 by default, a whole number of at least 1 from the file or WHARF_MAX_CONNECTIONS', () => {
    expect(build({}).maxConnections).toBe(4096);
    expect(build({ max_connections: 100 }).maxConnections).toBe(100);
    expect(build({}, { WHARF_MAX_CONNECTIONS: '250' }).maxConnections).toBe(250);
    for (const bad of [0, -1, 1.5, 'many', true]) expect(() => build({ max_connections: bad })).toThrow('"max_connections" must be a whole number of at least 1');
    expect(() => build({}, { WHARF_MAX_CONNECTIONS: '10k' })).toThrow('WHARF_MAX_CONNECTIONS (for "max_connections") must be a whole number of at least 1 (got string "10k")');
  });

  test('[proxy] cache_ttl: 90 days by default, at least 2 minutes (access times are written about once a minute)', () => {
    expect(build({}).proxy.cacheTtl).toBe(90 * 24 * 3600_000);
    expect(build({ proxy: { cache_ttl: '2m' } }).proxy.cacheTtl).toBe(120_000);
    expect(() => build({ proxy: { cache_ttl: '90s' } })).toThrow('"proxy.cache_ttl" must be at least 2m');
  });

  test('[proxy] direct_io: on by default, off from the file or WHARF_PROXY_DIRECT_IO', () => {
    expect(build({}).proxy.directIo).toBe(true);
    expect(build({ proxy: { direct_io: false } }).proxy.directIo).toBe(false);
    expect(build({}, { WHARF_PROXY_DIRECT_IO: 'false' }).proxy.directIo).toBe(false);
    expect(() => build({ proxy: { direct_io: 'no' } })).toThrow('"proxy.direct_io" must be true or false');
  });

  test('the shipped configuration.toml loads with the operations defaults', () => {
    const c = loadConfig({ file: join(REPO, 'configuration.toml'), env: {} });
    expect(c.listen.port).toBe(5000);
    expect(c.tls.enabled).toBe(false);
    expect(c.metrics.enabled).toBe(true);
  });

  test('the README configuration reference lists every key with its default and environment variable', () => {
    const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 5));
    const rows = section.split('\n').filter((l) => l.startsWith('| `'));
    const row = (key: string) => rows.find((r) => r.startsWith(`| \`${key}\``));
    for (const [key, spec] of Object.entries(CONFIG_KEYS)) {
      const r = row(key);
      expect({ key, row: r }).toEqual({ key, row: expect.stringContaining(`\`${envName(key)}\``) });
      if ('default' in spec) expect({ key, row: r }).toEqual({ key, row: expect.stringContaining(`\`${spec.default}\``) });
    }
    for (const [table, keys] of Object.entries(TABLE_ENV_KEYS)) {
      for (const key of Object.keys(keys)) {
        expect({ table, key, found: section.includes(`\`${tableEnvName(table, key)}\``) }).toEqual({ table, key, found: true });
      }
    }
  });
});
