import { describe, expect, test } from '@jest/globals';
import { bypassesProxy } from '../src/no-proxy.js';

describe('bypassesProxy (NO_PROXY, as undici reads it)', () => {
  const url = (u: string) => new URL(u);

  test('nothing set: every host goes through the proxy; `*`: none does', () => {
    expect(bypassesProxy(undefined, url('https://registry-1.docker.io/v2/'))).toBe(false);
    expect(bypassesProxy('', url('https://registry-1.docker.io/v2/'))).toBe(false);
    expect(bypassesProxy('*', url('https://registry-1.docker.io/v2/'))).toBe(true);
  });

  test('a host matches itself and its subdomains, with or without a leading dot or `*.`, in any case', () => {
    for (const entry of ['docker.io', '.docker.io', '*.docker.io', 'DOCKER.IO']) {
      expect(bypassesProxy(entry, url('https://registry-1.docker.io/v2/'))).toBe(true);
      expect(bypassesProxy(entry, url('https://docker.io/v2/'))).toBe(true);
    }
    // Not a suffix of a label, not another host.
    expect(bypassesProxy('docker.io', url('https://notdocker.io/v2/'))).toBe(false);
    expect(bypassesProxy('registry-1.docker.io', url('https://docker.io/v2/'))).toBe(false);
  });

  test('a list, split at commas and spaces; a port must match, the scheme\'s default counting', () => {
    const list = 'localhost, harbor.corp:8443 10.0.0.5,,[::1]';
    expect(bypassesProxy(list, url('http://localhost:5000/v2/'))).toBe(true);
    expect(bypassesProxy(list, url('https://harbor.corp:8443/v2/'))).toBe(true);
    expect(bypassesProxy(list, url('https://harbor.corp/v2/'))).toBe(false);
    expect(bypassesProxy('harbor.corp:443', url('https://harbor.corp/v2/'))).toBe(true);
    expect(bypassesProxy(list, url('http://10.0.0.5/v2/'))).toBe(true);
    expect(bypassesProxy(list, url('http://10.0.0.50/v2/'))).toBe(false);
    expect(bypassesProxy(list, url('http://[::1]:5000/v2/'))).toBe(true);
    expect(bypassesProxy(list, url('https://ghcr.io/v2/'))).toBe(false);
  });
});
