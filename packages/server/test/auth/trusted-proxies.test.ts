import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { Socket } from 'node:net';
import type { IncomingMessage } from 'node:http';
import { buildConfig } from '../../src/config.js';
import { ClientAddresses } from '../../src/http/client-address.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { basic, bcryptHash, captureLog, requestFrom, startAuthRegistry } from './helpers.js';

const get = (url: string, headers: Record<string, string> = {}, localAddress = '127.0.0.1', method = 'GET') => requestFrom(localAddress, url, headers, method);

/** A request as a listener gets it, from `peer`, with `headers`. */
function fakeRequest(peer: string, headers: Record<string, string | string[]> = {}): IncomingMessage {
  const socket = new Socket();
  Object.defineProperty(socket, 'remoteAddress', { value: peer });
  return { socket, headers } as unknown as IncomingMessage;
}

describe('who sent a request (ClientAddresses)', () => {
  test('with no proxy trusted, the peer; X-Forwarded-For is the client\'s own word and changes nothing', () => {
    const addresses = new ClientAddresses();
    expect(addresses.of(fakeRequest('10.0.0.7', { 'x-forwarded-for': '127.0.0.1' }))).toBe('10.0.0.7');
    expect(addresses.isLocal(fakeRequest('10.0.0.7', { 'x-forwarded-for': '127.0.0.1' }))).toBe(false);
    expect(addresses.isLocal(fakeRequest('127.0.0.1'))).toBe(true);
    expect(addresses.isLocal(fakeRequest('::ffff:127.0.0.1'))).toBe(true);
    expect(addresses.isLocal(fakeRequest('::1'))).toBe(true);
  });

  test('a request a proxy on this machine forwarded is never a local one, whatever it names; nor is any from a trusted proxy', () => {
    const untrusting = new ClientAddresses();
    // The CDNs' and tunnels' headers too: a Cloudflare Tunnel on this host sends only CF-Connecting-IP,
    // and its clients were local (the proxy with auth off, /admin, /metrics) before.
    const headers = ['x-forwarded-for', 'forwarded', 'x-real-ip', 'via', 'x-forwarded-proto', 'x-forwarded-host'];
    headers.push('x-forwarded', 'forwarded-for', 'x-client-ip', 'x-cluster-client-ip', 'cf-connecting-ip', 'true-client-ip', 'fastly-client-ip');
    for (const header of headers) {
      expect(untrusting.isLocal(fakeRequest('127.0.0.1', { [header]: header === 'forwarded' ? 'for=203.0.113.9' : '203.0.113.9' }))).toBe(false);
    }
    const trusting = new ClientAddresses(['127.0.0.1', '10.0.0.0/8']);
    expect(trusting.isLocal(fakeRequest('127.0.0.1', { 'x-forwarded-for': '203.0.113.9' }))).toBe(false);
    // What a forwarding header says of a loopback client may be the client's own word: a host inside
    // a trusted range sending "X-Forwarded-For: 127.0.0.1" (nginx appends its address after it), or
    // a trusted proxy that passes the client's header on.
    expect(trusting.isLocal(fakeRequest('127.0.0.1', { 'x-forwarded-for': '127.0.0.1, 10.1.2.3' }))).toBe(false);
    expect(trusting.isLocal(fakeRequest('127.0.0.1', { 'x-forwarded-for': '127.0.0.1' }))).toBe(false);
    expect(trusting.isLocal(fakeRequest('127.0.0.1', { 'x-real-ip': '203.0.113.9', 'x-forwarded-for': '::1' }))).toBe(false);
    // A trusted proxy that adds no header at all (stunnel, plain proxy_pass) still forwards for others.
    expect(trusting.isLocal(fakeRequest('127.0.0.1'))).toBe(false);
    expect(trusting.isLocal(fakeRequest('127.0.0.2'))).toBe(true);
    expect(trusting.isLocal(fakeRequest('127.0.0.1', { forwarded: 'for=127.0.0.1' }))).toBe(false);
    // A proxy elsewhere saying its client was "local" speaks of its own machine, not this one.
    expect(new ClientAddresses(['10.0.0.0/8']).isLocal(fakeRequest('10.1.2.3', { 'x-forwarded-for': '127.0.0.1' }))).toBe(false);
  });

  test('behind trusted proxies, the last address X-Forwarded-For names that is not one of them; what the client wrote before it is ignored', () => {
    const addresses = new ClientAddresses(['127.0.0.1', '10.0.0.0/8', 'fd00::/8']);
    expect(addresses.of(fakeRequest('127.0.0.1', { 'x-forwarded-for': '203.0.113.9' }))).toBe('203.0.113.9');
    // The client sent "X-Forwarded-For: 198.51.100.1"; the proxy appended the address it saw.
    expect(addresses.of(fakeRequest('127.0.0.1', { 'x-forwarded-for': '198.51.100.1, 203.0.113.9' }))).toBe('203.0.113.9');
    // Two proxies, both trusted: the first one's peer.
    expect(addresses.of(fakeRequest('::ffff:10.0.0.2', { 'x-forwarded-for': '203.0.113.9, 10.0.0.5' }))).toBe('203.0.113.9');
    expect(addresses.of(fakeRequest('fd00::1', { 'x-forwarded-for': ['2001:db8::7', '10.9.9.9'] }))).toBe('2001:db8::7');
    // Every hop trusted: the last, what the nearest proxy saw (the first may be the client's own word).
    expect(addresses.of(fakeRequest('127.0.0.1', { 'x-forwarded-for': '10.0.0.5, 10.0.0.6' }))).toBe('10.0.0.6');
    // With a port (some proxies write one), IPv6 in brackets.
    expect(addresses.of(fakeRequest('127.0.0.1', { 'x-forwarded-for': '203.0.113.9:51234' }))).toBe('203.0.113.9');
    expect(addresses.of(fakeRequest('127.0.0.1', { 'x-forwarded-for': '[2001:db8::7]:443, 10.0.0.5' }))).toBe('2001:db8::7');
    expect(addresses.of(fakeRequest('127.0.0.1', { 'x-forwarded-for': '[2001:db8::8]' }))).toBe('2001:db8::8');
    // Not an address where a proxy writes one, or no header: the peer.
    expect(addresses.of(fakeRequest('127.0.0.1', { 'x-forwarded-for': '203.0.113.9, garbage' }))).toBe('127.0.0.1');
    expect(addresses.of(fakeRequest('127.0.0.1'))).toBe('127.0.0.1');
    // An untrusted peer's header is not read.
    expect(addresses.of(fakeRequest('192.0.2.4', { 'x-forwarded-for': '203.0.113.9' }))).toBe('192.0.2.4');
  });

  test('trusted_proxies takes addresses and CIDR ranges, as an array or comma-separated from the environment, and refuses anything else', () => {
    const build = (value: unknown, env: NodeJS.ProcessEnv = {}) =>
      buildConfig({ registry_storage: '/tmp/r', temporary_registry_storage: '/tmp/t', proxy_storage: '/tmp/p', listen: '127.0.0.1:5000', auth: { enabled: false }, ...(value !== undefined ? { trusted_proxies: value } : {}) }, { env }).trustedProxies;
    expect(build(undefined)).toEqual([]);
    expect(build(['127.0.0.1', '10.0.0.0/8', '::1', 'fd00::/8'])).toEqual(['127.0.0.1', '10.0.0.0/8', '::1', 'fd00::/8']);
    expect(build(undefined, { WHARF_TRUSTED_PROXIES: '127.0.0.1, 10.0.0.0/8' })).toEqual(['127.0.0.1', '10.0.0.0/8']);
    expect(() => build(['10.0.0.0/33'])).toThrow('"trusted_proxies": not an IP address or CIDR range: "10.0.0.0/33"');
    expect(() => build(['proxy.local'])).toThrow('not an IP address or CIDR range: "proxy.local"');
    expect(() => build(['10.0.0.0/8/1'])).toThrow('not an IP address or CIDR range');
    expect(() => build(['fe80::1%eth0'])).toThrow('not an IP address or CIDR range');
    // Every address, or most of them in a few ranges (IPv4 as itself or as IPv4-mapped IPv6): refused.
    for (const wide of ['0.0.0.0/0', '::/0', '0.0.0.0/1', '128.0.0.0/1', '8.0.0.0/7', '::ffff:0:0/96', '::ffff:0:0/100', '::/8', '2000::/3', '2600::/7', '2001:db8::/16'])
      expect(() => build(['127.0.0.1', wide])).toThrow(`${JSON.stringify(wide)} would trust addresses far beyond your proxies'`);
    // The widest private ranges pass.
    expect(build(['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7', 'fd00::/8', '::ffff:10.0.0.0/104', '2001:db8::/32', 'fe80::/10'])).toHaveLength(8);
    expect(() => build(['fe80::/9'])).toThrow('would trust addresses far beyond');
    expect(() => build('127.0.0.1')).not.toThrow();
    expect(() => build(42)).toThrow('"trusted_proxies" must be an array of IP addresses or CIDR ranges');
  });
});

describe('behind a reverse proxy on this machine, with auth off', () => {
  let reg: TestRegistry;

  beforeAll(async () => {
    reg = await startRegistry({ settings: { metrics: { enabled: true }, proxy: { enabled: true } } });
  });
  afterAll(async () => {
    await reg?.close();
  });

  test('a forwarded request is not a local client of /metrics, of /admin, or of the dependency proxy', async () => {
    const forwarded = { 'X-Forwarded-For': '203.0.113.9' };
    expect((await get(`${reg.url}/metrics`)).status).toBe(200);
    const metrics = await get(`${reg.url}/metrics`, forwarded);
    expect(metrics.status).toBe(403);
    expect(JSON.parse(metrics.body).errors[0].code).toBe('DENIED');
    // The purge endpoint: a local client gets past the check (404 for an unknown upstream), a forwarded one does not.
    expect((await get(`${reg.url}/admin/proxy/cache/nowhere`, {}, '127.0.0.1', 'DELETE')).status).not.toBe(403);
    expect((await get(`${reg.url}/admin/proxy/cache/nowhere`, forwarded, '127.0.0.1', 'DELETE')).status).toBe(403);
    const pulled = await get(`${reg.url}/v2/proxy/docker.io/library/alpine/manifests/3.20`, { 'X-Real-IP': '203.0.113.9' });
    expect(pulled.status).toBe(403);
    expect(JSON.parse(pulled.body).errors[0].message).toContain('serves only local clients');
  });
});

describe('trusted_proxies', () => {
  let reg: TestRegistry;
  const log = captureLog();

  beforeAll(async () => {
    reg = await startAuthRegistry({
      logger: log.logger,
      settings: { trusted_proxies: ['127.0.0.1'], metrics: { enabled: true } },
      loginLimits: { maxFailures: 10, windowMs: 5 * 60_000 },
      authSettings: { users: [{ name: 'alice', password_hash: bcryptHash('alice-password-1') }] },
    });
  });
  afterAll(async () => {
    await reg?.close();
  });

  test('failed logins count against the client X-Forwarded-For names, not against the proxy every client comes through', async () => {
    const from = (client: string) => ({ 'X-Forwarded-For': `198.51.100.77, ${client}` });
    for (let i = 0; i < 10; i++) expect((await get(`${reg.url}/v2/`, { ...from('203.0.113.9'), Authorization: basic(`guess${i}`, 'nope') })).status).toBe(401);
    expect((await get(`${reg.url}/v2/`, { ...from('203.0.113.9'), Authorization: basic('alice', 'alice-password-1') })).status).toBe(429);
    // Another client behind the same proxy signs in.
    expect((await get(`${reg.url}/v2/`, { ...from('203.0.113.10'), Authorization: basic('alice', 'alice-password-1') })).status).toBe(200);
    // The limited client cannot get out of it by writing another address before its own.
    expect((await get(`${reg.url}/v2/`, { 'X-Forwarded-For': '203.0.113.10, 203.0.113.9', Authorization: basic('alice', 'alice-password-1') })).status).toBe(429);
    // A client that reaches Wharf itself from another address is not the proxy's clients.
    expect((await get(`${reg.url}/v2/`, { 'X-Forwarded-For': '203.0.113.9', Authorization: basic('alice', 'alice-password-1') }, '127.0.0.2')).status).toBe(200);
    const lines = log
      .text()
      .split('\n')
      .filter((l) => l.includes('"msg":"request"'))
      .map((l) => JSON.parse(l) as { client?: string; status: number });
    expect(lines.filter((l) => l.status === 429).map((l) => l.client)).toEqual(['203.0.113.9', '203.0.113.9']);
    expect(lines.filter((l) => l.status === 200).map((l) => l.client)).toEqual(['203.0.113.10', '127.0.0.2']);
  });

  test('/metrics: nothing a trusted proxy forwards is local, whatever its header names; the host\'s other loopback clients are', async () => {
    expect((await get(`${reg.url}/metrics`, { 'X-Forwarded-For': '127.0.0.1' })).status).toBe(403);
    expect((await get(`${reg.url}/metrics`, { 'X-Forwarded-For': '203.0.113.9' })).status).toBe(403);
    expect((await get(`${reg.url}/metrics`)).status).toBe(403);
    expect((await get(`${reg.url}/metrics`, {}, '127.0.0.2')).status).toBe(200);
  });
});
