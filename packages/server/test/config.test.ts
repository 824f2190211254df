import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { ConfigError, buildConfig, loadConfig } from '../src/config.js';
import { startServer } from '../src/server.js';
import { nsTargets } from '../src/proxy-config.js';

const exec = promisify(execFile);
const CLI = resolve(import.meta.dirname, '../dist/cli.js');
const SHIPPED = resolve(import.meta.dirname, '../../../configuration.toml');

const REQUIRED = {
  registry_storage: 'storage/registry',
  temporary_registry_storage: 'storage/_tmp',
  proxy_storage: 'storage/proxy',
};

describe('configuration', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-config-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('the shipped configuration.toml is valid and listens on 0.0.0.0:5000', () => {
    const config = loadConfig({ file: SHIPPED, env: {} });
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 5000 });
    expect(config.database).toBe(resolve(SHIPPED, '../storage/wharf.db'));
    expect(config.uploadMaxAge).toBe(24 * 3600 * 1000);
  });

  test('a value the environment set that is refused is named by its variable; one from the file by its key', () => {
    const messageOf = (doc: Record<string, unknown>, env: NodeJS.ProcessEnv): string => {
      try {
        buildConfig({ ...REQUIRED, ...doc }, { cwd: dir, env });
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as Error).message;
      }
      throw new Error('accepted');
    };
    expect(messageOf({}, { WHARF_PROXY_MAX_SIZE: 'bogus' })).toMatch(/^WHARF_PROXY_MAX_SIZE \(for "proxy\.max_size"\) must be a size/);
    expect(messageOf({}, { WHARF_UPLOAD_MAX_AGE: 'zz' })).toMatch(/^WHARF_UPLOAD_MAX_AGE \(for "upload_max_age"\) must be a duration/);
    expect(messageOf({}, { WHARF_AUTH_TOKEN_TTL: '1s' })).toMatch(/^WHARF_AUTH_TOKEN_TTL \(for "auth\.token_ttl"\)/);
    expect(messageOf({ proxy: { max_size: 'bogus' } }, {})).toMatch(/^"proxy\.max_size" must be a size/);
    // The file's bad value, while the variable of another key is set: the key, as before.
    expect(messageOf({ proxy: { max_size: 'bogus' } }, { WHARF_UPLOAD_MAX_AGE: '1h' })).toMatch(/^"proxy\.max_size"/);
    // A value that came from elsewhere: the metrics token from the variable token_env names, not WHARF_METRICS_TOKEN.
    const token = messageOf({ metrics: { token_env: 'MY_SCRAPE_TOKEN' } }, { MY_SCRAPE_TOKEN: 'short', WHARF_METRICS_TOKEN: 'a-long-enough-scrape-token-0123456789' });
    expect(token).toMatch(/^"metrics\.token" must be at least 16 characters/);
    // Not only the first key the message quotes: the one whose value it quotes.
    expect(messageOf({}, { WHARF_AUTH_ENABLED: 'false', WHARF_LISTEN: '0.0.0.0:5000' })).toMatch(/^WHARF_AUTH_ENABLED \(for "auth\.enabled"\) = false is allowed only when "listen"/);
  });

  test("a bad upstream URL's error message hides the credentials and tokens it holds (stderr, a service's log)", () => {
    const messageOf = (url: string): string => {
      try {
        buildConfig({ ...REQUIRED, proxy: { upstreams: { mine: { url } } } }, { cwd: dir });
      } catch (err) {
        return (err as Error).message;
      }
      throw new Error('accepted');
    };
    for (const url of [
      'https://bot:S3cretHubTok@myreg.example:99999',
      'htps://bot:S3cretHubTok@myreg.example',
      'https://myreg.example/?access_token=S3cretHubTok',
      'https://myreg.example/#S3cretHubTok',
      // A password may hold '/', '#' or '?' (a base64 token does).
      'https://bot:S3cret/HubTok@myreg.example',
      'https://bot:S3cret#HubTok@myreg.example',
      'https://bot:S3cret?HubTok@myreg.example:99999',
    ]) {
      const message = messageOf(url);
      expect(message).toMatch(/^"proxy\.upstreams\.mine\.url" /);
      expect(message).not.toMatch(/S3cret|HubTok/);
    }
    expect(messageOf('https://bot:S3cretHubTok@myreg.example:99999')).toContain('https://***@myreg.example:99999');
  });

  test("an upstream's url and mirrors are checked as URLs (a start would otherwise fail on them with no key named); a server listed twice is asked once", () => {
    const up = (fields: Record<string, unknown>) => () => buildConfig({ ...REQUIRED, proxy: { upstreams: { mine: { url: 'http://a.example:5000', ...fields } } } }, { cwd: dir });
    expect(up({ mirrors: ['http://exa mple.com'] })).toThrow('"proxy.upstreams.mine.mirrors[0]" is not a valid URL: http://exa mple.com');
    expect(up({ mirrors: ['http://b.example', 'http://127.0.0.1:99999'] })).toThrow('"proxy.upstreams.mine.mirrors[1]" is not a valid URL');
    expect(up({ mirrors: ['http://127.0.0.1:abc'] })).toThrow('is not a valid URL');
    expect(up({ mirrors: ['http://[::1'] })).toThrow('is not a valid URL');
    expect(up({ url: 'http://a.example:70000' })).toThrow('"proxy.upstreams.mine.url" is not a valid URL');
    expect(up({ mirrors: ['http://b.example/v2?x=1'] })).toThrow('without a query or fragment');
    expect(up({ mirrors: ['https://bot:secret@b.example'] })).toThrow('must not hold credentials');
    expect(up({ mirrors: ['ftp://b.example'] })).toThrow('"proxy.upstreams.mine.mirrors[0]" must be an http(s) URL');
    expect(up({ mirrors: ['http://b.example'], strategy: 'hedged', hedge_delay: '30d' })).toThrow('"proxy.upstreams.mine.hedge_delay" must be at most 10m');
    // A strategy with nothing to choose from, or a delay the strategy does not use, is a slip.
    expect(up({ strategy: 'hedged' })).toThrow('"proxy.upstreams.mine.strategy" is "hedged", but the upstream has no mirrors besides its url');
    expect(up({ mirrors: ['http://A.example:5000'], strategy: 'striped' })).toThrow('has no mirrors besides its url');
    expect(up({ mirrors: ['http://b.example'], strategy: 'adaptive', hedge_delay: '1s' })).toThrow('"proxy.upstreams.mine.hedge_delay" applies to strategy = "hedged" only (the strategy is "adaptive")');
    expect(up({ mirrors: ['http://b.example'], hedge_delay: '1s' })).toThrow('applies to strategy = "hedged" only');
    expect(up({ strategy: 'failover' })).not.toThrow();
    expect(up({ mirrors: ['http://b.example'], strategy: 'hedged', hedge_delay: '1s' })).not.toThrow();
    // A registry served under a path keeps it.
    const config = buildConfig({ ...REQUIRED, proxy: { upstreams: { mine: { url: 'https://a.example/artifactory/api/docker/hub/', mirrors: ['http://[::1]:5000'] } } } }, { cwd: dir });
    const mine = config.proxy.upstreams.find((u) => u.key === 'mine')!;
    expect([mine.url, mine.mirrors]).toEqual(['https://a.example/artifactory/api/docker/hub', ['http://[::1]:5000']]);
    // A server listed twice (as url, or as an earlier mirror) is asked once: the repeat is dropped.
    const twice = buildConfig({ ...REQUIRED, proxy: { upstreams: { mine: { url: 'http://a.example:5000', mirrors: ['http://A.example:5000/', 'https://b.example:443', 'https://b.example/', 'http://c.example'] } } } }, { cwd: dir });
    expect(twice.proxy.upstreams.find((u) => u.key === 'mine')!.mirrors).toEqual(['https://b.example:443', 'http://c.example']);
  });

  test('defaults apply to optional keys', () => {
    const config = buildConfig(REQUIRED, { cwd: dir });
    expect(config.listen).toEqual({ host: '0.0.0.0', port: 5000 });
    expect(config.database).toBe(join(dir, 'storage/wharf.db'));
    expect(config.logLevel).toBe('info');
    expect(config.automaticMount).toBe(false);
  });

  test('automatic_mount is true or false, in the file or as WHARF_AUTOMATIC_MOUNT', () => {
    expect(buildConfig({ ...REQUIRED, automatic_mount: true }, { cwd: dir }).automaticMount).toBe(true);
    expect(buildConfig({ ...REQUIRED, automatic_mount: true }, { cwd: dir, env: { WHARF_AUTOMATIC_MOUNT: 'off' } }).automaticMount).toBe(false);
    expect(buildConfig(REQUIRED, { cwd: dir, env: { WHARF_AUTOMATIC_MOUNT: 'yes' } }).automaticMount).toBe(true);
    expect(() => buildConfig({ ...REQUIRED, automatic_mount: 'sometimes' }, { cwd: dir })).toThrow('"automatic_mount" must be true or false (got string "sometimes")');
    // In the file a TOML boolean, as every table's: words are the environment's.
    expect(() => buildConfig({ ...REQUIRED, automatic_mount: 'yes' }, { cwd: dir })).toThrow('"automatic_mount" must be true or false (got string "yes")');
    expect(() => buildConfig(REQUIRED, { cwd: dir, env: { WHARF_AUTOMATIC_MOUNT: '2' } })).toThrow('WHARF_AUTOMATIC_MOUNT (for "automatic_mount") must be true or false');
  });

  test.each(Object.keys(REQUIRED))('a file without %s is refused with a message naming it', (key) => {
    const doc: Record<string, string> = { ...REQUIRED };
    delete doc[key];
    expect(() => buildConfig(doc)).toThrow(ConfigError);
    expect(() => buildConfig(doc)).toThrow(`missing required key "${key}"`);
  });

  test('an unknown key is an error naming it', () => {
    expect(() => buildConfig({ ...REQUIRED, registry_storag: 'x' })).toThrow('unknown key "registry_storag"');
  });

  test('a wrong type is an error naming the key', () => {
    expect(() => buildConfig({ ...REQUIRED, listen: 5000 })).toThrow('"listen" must be a string');
    expect(() => buildConfig({ ...REQUIRED, listen: 'nonsense' })).toThrow('"listen" must be host:port');
    expect(() => buildConfig({ ...REQUIRED, upload_max_age: 'soon' })).toThrow('"upload_max_age" must be a duration');
    expect(() => buildConfig({ ...REQUIRED, log_level: 'loud' })).toThrow('"log_level" must be one of');
  });

  test('a duration that sets a timer is refused past 24.8 days, which Node.js would run as 1 ms', () => {
    for (const key of ['shutdown_timeout', 'read_header_timeout', 'idle_timeout', 'request_timeout']) {
      expect(() => buildConfig({ ...REQUIRED, [key]: '30d' })).toThrow(`"${key}" must be at most "24d" (the longest timer Node.js keeps) (got "30d")`);
      expect(() => buildConfig(REQUIRED, { env: { [`WHARF_${key.toUpperCase()}`]: '25d' } })).toThrow(`WHARF_${key.toUpperCase()} (for "${key}") must be at most "24d"`);
      expect(buildConfig({ ...REQUIRED, [key]: '24d' })).toBeDefined();
    }
    for (const key of ['outage_backoff', 'connect_timeout', 'first_byte_timeout', 'idle_timeout', 'eviction_interval']) {
      expect(() => buildConfig({ ...REQUIRED, proxy: { [key]: '30d' } })).toThrow(`"proxy.${key}" must be at most "24d"`);
      expect(buildConfig({ ...REQUIRED, proxy: { [key]: '24d' } })).toBeDefined();
    }
    expect(() => buildConfig({ ...REQUIRED, gc: { interval: '30d' } })).toThrow('"gc.interval" must be at most "24d"');
    // Ages compared with a clock, not waited for, may be as long as one likes.
    expect(buildConfig({ ...REQUIRED, upload_max_age: '90d', proxy: { cache_ttl: '365d', manifest_ttl: '30d' }, gc: { grace: '30d' } }).proxy.cacheTtl).toBe(365 * 86_400_000);
  });

  test('upload_max_age of less than a minute is refused: every idle session would end at the next sweep', () => {
    expect(() => buildConfig({ ...REQUIRED, upload_max_age: '0' })).toThrow('"upload_max_age" must be at least "1m"');
    expect(() => buildConfig({ ...REQUIRED, upload_max_age: '30s' })).toThrow('"upload_max_age" must be at least "1m"');
    expect(buildConfig({ ...REQUIRED, upload_max_age: '1m' }).uploadMaxAge).toBe(60_000);
  });

  test('every key can be overridden from the environment as WHARF_<KEY>', () => {
    const config = buildConfig(REQUIRED, {
      cwd: dir,
      env: { WHARF_LISTEN: '127.0.0.1:5001', WHARF_DATABASE: '/var/lib/wharf.db', WHARF_UPLOAD_MAX_AGE: '2h', WHARF_REGISTRY_STORAGE: 'elsewhere' },
    });
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 5001 });
    expect(config.database).toBe('/var/lib/wharf.db');
    expect(config.uploadMaxAge).toBe(2 * 3600 * 1000);
    expect(config.registryStorage).toBe(join(dir, 'elsewhere'));
  });

  test('a WHARF_ variable that configures nothing (misspelled) is a warning naming it; those the configuration names are not', () => {
    const config = buildConfig(
      { ...REQUIRED, proxy: { upstreams: { hub: { url: 'https://registry.example.com', username: 'u', password_env: 'WHARF_HUB_TOKEN' } } } },
      {
        cwd: dir,
        env: { WHARF_LISTEN: '127.0.0.1:5001', WHARF_PROXY_MANIFESTTTL: '1h', WHARF_LISTEN_ADDR: 'x', WHARF_HUB_TOKEN: 's', WHARF_ADMIN_PASSWORD: 'p', WHARF_PROXY_MANIFEST_TTL: '1m', HOME: '/root' },
      },
    );
    expect(config.warnings).toEqual([
      expect.stringMatching(/^the environment variable WHARF_LISTEN_ADDR configures nothing \(misspelled\?\)/),
      expect.stringMatching(/^the environment variable WHARF_PROXY_MANIFESTTTL configures nothing/),
    ]);
    expect(buildConfig(REQUIRED, { cwd: dir, env: { WHARF_LISTEN: '127.0.0.1:5001' } }).warnings).toBeUndefined();
    // A variable an environment override names (README: the metrics token's variable) is read too.
    const named = buildConfig({ ...REQUIRED, metrics: { enabled: true } }, { cwd: dir, env: { WHARF_METRICS_TOKEN_ENV: 'WHARF_METRICS_SCRAPE_TOKEN', WHARF_METRICS_SCRAPE_TOKEN: 'a-long-enough-scrape-token-0123456789' } });
    expect(named.warnings).toBeUndefined();
  });

  test("an upstream's table sets [proxy]'s policies for it alone; what it does not set, and the built-ins, take [proxy]'s", () => {
    const config = buildConfig({
      ...REQUIRED,
      proxy: { manifest_ttl: '2m', retries: 1, upstreams: { slow: { url: 'https://slow.example', manifest_ttl: '10s', first_byte_timeout: '2m', rate_limit_floor: 0 }, plain: { url: 'https://plain.example' } } },
    }).proxy;
    const policy = (key: string) => config.upstreams.find((u) => u.key === key)!.policy;
    const shared = { manifestTtl: 120_000, absentTtl: 60_000, rateLimitFloor: 10, outageBackoff: 30_000, connectTimeout: 10_000, firstByteTimeout: 30_000, idleTimeout: 60_000, minSpeed: 1024, retries: 1 };
    expect(policy('slow')).toEqual({ ...shared, manifestTtl: 10_000, firstByteTimeout: 120_000, rateLimitFloor: 0 });
    expect(policy('plain')).toEqual(shared);
    expect(policy('docker.io')).toEqual(shared);
    expect(config).toMatchObject(shared);
    // Checked as [proxy]'s are, the upstream's table named.
    expect(() => buildConfig({ ...REQUIRED, proxy: { upstreams: { slow: { url: 'https://slow.example', retries: -1 } } } })).toThrow('"proxy.upstreams.slow.retries" must be a non-negative integer');
    expect(() => buildConfig({ ...REQUIRED, proxy: { upstreams: { slow: { url: 'https://slow.example', idle_timeout: '30d' } } } })).toThrow('"proxy.upstreams.slow.idle_timeout" must be at most "24d"');
    // The cache's settings are for all upstreams.
    expect(() => buildConfig({ ...REQUIRED, proxy: { upstreams: { slow: { url: 'https://slow.example', max_size: '1GB' } } } })).toThrow('unknown key "proxy.upstreams.slow.max_size"');
  });

  test('min_speed is bytes per second ("1KiB/s" by default, "0" for none), for [proxy] and each upstream, from the environment too', () => {
    const of = (proxy: Record<string, unknown>, env: NodeJS.ProcessEnv = {}) => buildConfig({ ...REQUIRED, proxy }, { cwd: dir, env }).proxy;
    expect(of({}).minSpeed).toBe(1024);
    expect(of({ min_speed: '100KB/s' }).minSpeed).toBe(100_000);
    expect(of({ min_speed: '2 MiB / s' }).minSpeed).toBe(2 * 1024 * 1024);
    expect(of({ min_speed: '0' }).minSpeed).toBe(0);
    expect(of({ min_speed: 0 }).minSpeed).toBe(0);
    expect(of({}, { WHARF_PROXY_MIN_SPEED: '16KiB/s' }).minSpeed).toBe(16 * 1024);
    const far = of({ min_speed: '10KiB/s', upstreams: { far: { url: 'https://far.example', min_speed: '0' } } });
    expect(far.upstreams.find((u) => u.key === 'far')!.policy!.minSpeed).toBe(0);
    expect(far.upstreams.find((u) => u.key === 'docker.io')!.policy!.minSpeed).toBe(10 * 1024);
    expect(() => of({ min_speed: 'fast' })).toThrow('"proxy.min_speed" must be a speed such as "1KiB/s" or "0" (got "fast")');
    expect(() => of({ upstreams: { far: { url: 'https://far.example', min_speed: -1 } } })).toThrow('"proxy.upstreams.far.min_speed" must be a speed');
  });

  test('mirror_credentials (send the upstream\'s credentials to its mirrors too) is a boolean, for an upstream with mirrors only', () => {
    const find = (upstream: Record<string, unknown>) => buildConfig({ ...REQUIRED, proxy: { upstreams: { far: upstream } } }).proxy.upstreams.find((u) => u.key === 'far')!;
    const mirrored = { url: 'https://a.example', mirrors: ['https://b.example'], username: 'u', password: 'p' };
    expect(find(mirrored).mirrorCredentials).toBeUndefined();
    expect(find({ ...mirrored, mirror_credentials: true }).mirrorCredentials).toBe(true);
    expect(find({ ...mirrored, mirror_credentials: false }).mirrorCredentials).toBeUndefined();
    expect(() => find({ ...mirrored, mirror_credentials: 'yes' })).toThrow('"proxy.upstreams.far.mirror_credentials" must be true or false');
    expect(() => find({ url: 'https://a.example', mirror_credentials: true })).toThrow('"proxy.upstreams.far.mirror_credentials" applies to an upstream with mirrors only');
  });

  test('stripe_size sets a striped upstream\'s ranges (far mirrors want larger ones); refused with another strategy or out of bounds', () => {
    const striped = { url: 'https://a.example', mirrors: ['https://b.example'], strategy: 'striped' };
    const find = (upstream: Record<string, unknown>) => buildConfig({ ...REQUIRED, proxy: { upstreams: { far: upstream } } }).proxy.upstreams.find((u) => u.key === 'far')!;
    expect(find({ ...striped, stripe_size: '16MiB' }).stripeSize).toBe(16 * 1024 * 1024);
    expect(find(striped).stripeSize).toBeUndefined();
    expect(() => find({ ...striped, strategy: 'hedged', stripe_size: '8MiB' })).toThrow('"proxy.upstreams.far.stripe_size" applies to strategy = "striped" only');
    expect(() => find({ ...striped, stripe_size: '100MiB' })).toThrow('"proxy.upstreams.far.stripe_size" must be a size from "256KiB" to "64MiB"');
    expect(() => find({ ...striped, stripe_size: 'big' })).toThrow('"proxy.upstreams.far.stripe_size" must be a size');
  });

  test('two upstreams reaching one host: a warning says which one ?ns=<host> goes to, and none once an alias says it', () => {
    const mirror = { url: 'https://registry.example.com', username: 'u', password: 'p' };
    const config = buildConfig({ ...REQUIRED, proxy: { upstreams: { anon: { url: 'https://registry.example.com' }, mine: mirror } } }, { cwd: dir });
    expect(config.warnings).toEqual([
      'proxy upstreams "anon" and "mine" all reach registry.example.com: a containerd pull with ?ns=registry.example.com goes to "anon", the first configured; to send it to "mine", add "registry.example.com" to its aliases',
    ]);
    const aliased = { anon: { url: 'https://registry.example.com' }, mine: { ...mirror, aliases: ['registry.example.com'] } };
    expect(buildConfig({ ...REQUIRED, proxy: { upstreams: aliased } }, { cwd: dir }).warnings).toBeUndefined();
    // A host with a port cannot be an alias: the order of the tables decides.
    const ported = { a: { url: 'http://registry.local:5000' }, b: { url: 'http://registry.local:5000/' } };
    expect(buildConfig({ ...REQUIRED, proxy: { upstreams: ported } }, { cwd: dir }).warnings).toEqual([expect.stringMatching(/goes to "a", the first configured; to send it to "b", configure it before "a"$/)]);
    // The built-in upstreams (whose keys are their hosts), and one added with a built-in's host.
    expect(buildConfig({ ...REQUIRED, proxy: { upstreams: { hub: { url: 'https://registry-1.docker.io' } } } }, { cwd: dir }).warnings).toBeUndefined();
  });

  test('?ns=<host:port> of an added upstream and an overridden built-in goes to the one whose table comes first, as the warning says', () => {
    for (const [upstreams, first, other] of [
      [{ internal: { url: 'http://registry.local:5000' }, 'docker.io': { url: 'http://registry.local:5000' } }, 'internal', 'docker.io'],
      [{ 'docker.io': { url: 'http://registry.local:5000' }, internal: { url: 'http://registry.local:5000' } }, 'docker.io', 'internal'],
    ] as const) {
      const config = buildConfig({ ...REQUIRED, proxy: { upstreams } }, { cwd: dir });
      expect(nsTargets(config.proxy.upstreams).get('registry.local:5000')?.key).toBe(first);
      expect(config.warnings).toEqual([expect.stringContaining(`goes to "${first}", the first configured; to send it to "${other}", configure it before "${first}"`)]);
    }
  });

  test('the environment can supply a required key the file lacks', () => {
    const doc: Record<string, string> = { ...REQUIRED };
    delete doc.proxy_storage;
    expect(buildConfig(doc, { env: { WHARF_PROXY_STORAGE: '/srv/proxy' } }).proxyStorage).toBe('/srv/proxy');
  });

  test('listen accepts IPv6 and a bare port', () => {
    expect(buildConfig({ ...REQUIRED, listen: '[::1]:5000' }).listen).toEqual({ host: '::1', port: 5000 });
    expect(buildConfig({ ...REQUIRED, listen: ':5000' }).listen).toEqual({ host: '0.0.0.0', port: 5000 });
  });

  test('relative paths in a file are relative to that file', async () => {
    const file = join(dir, 'wharf.toml');
    await writeFile(file, Object.entries(REQUIRED).map(([k, v]) => `${k} = "${v}"`).join('\n'));
    expect(loadConfig({ file, env: {}, cwd: '/' }).registryStorage).toBe(join(dir, 'storage/registry'));
  });

  test("a default path is relative to the file too: the same file names the same database from any folder", async () => {
    const file = join(dir, 'wharf.toml');
    await writeFile(file, Object.entries(REQUIRED).map(([k, v]) => `${k} = "${v}"`).join('\n'));
    expect(loadConfig({ file, env: {}, cwd: '/' }).database).toBe(join(dir, 'storage/wharf.db'));
    expect(loadConfig({ file, env: {}, cwd: tmpdir() }).database).toBe(join(dir, 'storage/wharf.db'));
  });

  test('a database where the default used to be (the working folder) and none next to the file: refused, naming the line to add', async () => {
    const file = join(dir, 'wharf.toml');
    await writeFile(file, Object.entries(REQUIRED).map(([k, v]) => `${k} = "${v}"`).join('\n'));
    const runFrom = await mkdtemp(join(tmpdir(), 'wharf-cwd-'));
    try {
      await mkdir(join(runFrom, 'storage'));
      await writeFile(join(runFrom, 'storage/wharf.db'), '');
      expect(() => loadConfig({ file, env: {}, cwd: runFrom })).toThrow(`set database = "${join(runFrom, 'storage/wharf.db')}" to keep using it`);
      // Once the key is set, it starts.
      expect(loadConfig({ file, env: { WHARF_DATABASE: 'storage/wharf.db' }, cwd: runFrom }).database).toBe(join(runFrom, 'storage/wharf.db'));
      // One next to the file too (a command run from elsewhere made an empty one there): which one is
      // meant is not guessed; it used to start on the one next to the file, the registry's images gone.
      await mkdir(join(dir, 'storage'), { recursive: true });
      await writeFile(join(dir, 'storage/wharf.db'), '');
      expect(() => loadConfig({ file, env: {}, cwd: runFrom })).toThrow(
        `"database" is not set, and its default, storage/wharf.db, names two files: ${join(dir, 'storage/wharf.db')} (relative to the configuration file, as the default now is) and ${join(runFrom, 'storage/wharf.db')}`,
      );
      expect(loadConfig({ file, env: { WHARF_DATABASE: join(dir, 'storage/wharf.db') }, cwd: runFrom }).database).toBe(join(dir, 'storage/wharf.db'));
      // Run from the file's own folder, the default names one file: no question.
      expect(loadConfig({ file, env: {}, cwd: dir }).database).toBe(join(dir, 'storage/wharf.db'));
      // Nor from a link to it (systemd's WorkingDirectory through a linked /srv): the same file.
      const link = join(runFrom, 'linked');
      await symlink(dir, link);
      expect(loadConfig({ file, env: {}, cwd: link }).database).toBe(join(dir, 'storage/wharf.db'));
    } finally {
      await rm(runFrom, { recursive: true, force: true });
    }
  });

  test('invalid TOML is reported with the file name', async () => {
    const file = join(dir, 'broken.toml');
    await writeFile(file, 'listen = ');
    expect(() => loadConfig({ file, env: {} })).toThrow(`${file} is not valid TOML`);
  });

  test('the server refuses a temporary folder on another filesystem', async () => {
    if (!existsSync('/dev/shm')) throw new Error('this test needs /dev/shm (a tmpfs) to put the temp folder on another filesystem');
    const shm = await mkdtemp('/dev/shm/wharf-');
    try {
      const config = buildConfig({
        listen: '127.0.0.1:0',
        registry_storage: join(dir, 'registry'),
        temporary_registry_storage: shm,
        proxy_storage: join(dir, 'proxy'),
        database: join(dir, 'wharf.db'),
      });
      await expect(startServer(config)).rejects.toThrow('must be on the same filesystem');
    } finally {
      await rm(shm, { recursive: true, force: true });
    }
  });
});

describe('wharf CLI', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-cli-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('config check accepts the shipped configuration', async () => {
    const { stdout } = await exec(process.execPath, [CLI, 'config', 'check', '--config', SHIPPED]);
    expect(stdout).toContain('configuration OK');
  });

  test('config check prints a warning for a WHARF_ variable that configures nothing', async () => {
    const { stdout, stderr } = await exec(process.execPath, [CLI, 'config', 'check', '--config', SHIPPED], { env: { PATH: process.env.PATH, WHARF_PROXY_MANIFESTTTL: '1h' } });
    expect(stdout).toContain('configuration OK');
    expect(stderr).toContain('warning: the environment variable WHARF_PROXY_MANIFESTTTL configures nothing');
  });

  test('config check and serve refuse a file without a storage key, naming it', async () => {
    const file = join(dir, 'bad.toml');
    await writeFile(file, 'registry_storage = "r"\nproxy_storage = "p"\n');
    for (const command of [['config', 'check'], ['serve']]) {
      const run = exec(process.execPath, [CLI, ...command, '--config', file], { env: { PATH: process.env.PATH } });
      await expect(run).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('"temporary_registry_storage"') });
    }
  });

  test('config check refuses what a start refuses besides the file: a temp folder on another filesystem, a group named like a user; and makes no folder', async () => {
    if (!existsSync('/dev/shm')) throw new Error('this test needs /dev/shm (a tmpfs) to put the temp folder on another filesystem');
    const file = join(dir, 'c.toml');
    const lines = ['registry_storage = "store/r"', 'temporary_registry_storage = "store/t"', 'proxy_storage = "store/p"', 'database = "store/w.db"'];
    await writeFile(file, lines.join('\n') + '\n');
    const env = { PATH: process.env.PATH };
    expect((await exec(process.execPath, [CLI, 'config', 'check', '--config', file], { env })).stdout).toContain('configuration OK');
    // A check only: the folders a start would make are not made.
    expect(existsSync(join(dir, 'store'))).toBe(false);
    const shm = await mkdtemp('/dev/shm/wharf-');
    try {
      const elsewhere = exec(process.execPath, [CLI, 'config', 'check', '--config', file], { env: { ...env, WHARF_TEMPORARY_REGISTRY_STORAGE: join(shm, 't') } });
      await expect(elsewhere).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('must be on the same filesystem') });
    } finally {
      await rm(shm, { recursive: true, force: true });
    }
    // A storage folder that is a link to nothing: the start cannot make it, and the check says so.
    await symlink(join(dir, 'nowhere'), join(dir, 'dangling'));
    const dangling = exec(process.execPath, [CLI, 'config', 'check', '--config', file], { env: { ...env, WHARF_REGISTRY_STORAGE: join(dir, 'dangling') } });
    await expect(dangling).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('"registry_storage"') });
    await exec(process.execPath, [CLI, 'user', 'add', 'bob', '--config', file], { env });
    await writeFile(file, lines.join('\n') + '\n[[auth.groups]]\nname = "bob"\nmembers = { }\n');
    const clash = exec(process.execPath, [CLI, 'config', 'check', '--config', file], { env });
    await expect(clash).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('[[auth.groups]] "bob" has the name of a user in the database') });
  });

  test('import --tag without --repository is a usage error (exit 2), told before the archive is read', async () => {
    const file = join(dir, 'ok.toml');
    await writeFile(file, Object.entries(REQUIRED).map(([k, v]) => `${k} = "${v}"`).join('\n') + '\ndatabase = "storage/w.db"\n');
    const run = exec(process.execPath, [CLI, 'import', join(dir, 'nowhere.tar'), '--tag', '5', '--config', file], { env: { PATH: process.env.PATH } });
    await expect(run).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('--tag needs --repository') });
    expect(existsSync(join(dir, 'storage'))).toBe(false);
  });

  test('serve starts with a configuration file and the environment override of listen', async () => {
    const file = join(dir, 'ok.toml');
    await writeFile(file, Object.entries(REQUIRED).map(([k, v]) => `${k} = "${v}"`).join('\n') + '\ndatabase = "storage/w.db"\n');
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, [CLI, 'serve', '--config', file], {
      env: { PATH: process.env.PATH, WHARF_LISTEN: '127.0.0.1:0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const line = await new Promise<string>((resolveLine, reject) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /"listen":"127\.0\.0\.1:(\d+)"/.exec(out);
          if (m) resolveLine(m[1]!);
        });
        child.once('exit', (code) => reject(new Error(`wharf exited with ${code}: ${out}`)));
      });
      const res = await fetch(`http://127.0.0.1:${line}/v2/`);
      // Auth is on by default: the server answers, and asks for credentials.
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toMatch(/^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/auth\/token",service="wharf"$/);
      expect(existsSync(join(dir, 'storage/w.db'))).toBe(true);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    expect(child.exitCode).toBe(0);
  });
});
