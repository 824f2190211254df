import { afterAll, beforeAll, expect, jest, test } from '@jest/globals';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { UpstreamError } from '@wharf/proxy';
import { buildConfig } from '../../src/config.js';
import { findUpstream } from '../../src/proxy-config.js';
import { buildUpstream } from '../../src/upstreams.js';

/**
 * `[proxy] connect_timeout` reaches the client of each upstream, and bounds the TLS handshake too: an
 * https:// upstream whose TCP server accepts connections and never answers the handshake (a dead TLS
 * terminator, a firewall that holds connections) fails at connect_timeout, long before
 * first_byte_timeout. A TCP connect that never completes (a SYN nobody answers) needs a firewall rule
 * to stage, so the handshake stands in for it. Timers are fake; the sockets are real.
 */
let server: Server;
const sockets = new Set<Socket>();
/** Resolved by the next ClientHello the server gets. */
let hello: () => void = () => undefined;

beforeAll(async () => {
  server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.once('data', () => hello());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});
afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise((resolve) => server.close(resolve));
});

test('an https upstream that never answers the TLS handshake fails as "timeout" at connect_timeout, not first_byte_timeout', async () => {
  const port = (server.address() as AddressInfo).port;
  const { proxy } = buildConfig(
    {
      registry_storage: 'storage/registry',
      temporary_registry_storage: 'storage/_tmp',
      proxy_storage: 'storage/proxy',
      proxy: { connect_timeout: '7s', first_byte_timeout: '10m', idle_timeout: '10m', retries: 0, upstreams: { silent: { url: `https://127.0.0.1:${port}` } } },
    },
    { env: {} },
  );
  const upstream = buildUpstream(findUpstream(proxy, 'silent')!, proxy, () => undefined);
  const helloSent = new Promise<void>((resolve) => (hello = resolve));
  jest.useFakeTimers({ doNotFake: ['Date', 'hrtime', 'nextTick', 'performance', 'queueMicrotask', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval'] });
  try {
    let outcome: unknown;
    void upstream.manifest('team/app', '1').then(
      () => (outcome = 'answered'),
      (err: unknown) => (outcome = err),
    );
    // Connected, the handshake begun: its answer is all that is awaited.
    await helloSent;
    const settle = () => new Promise((resolve) => setImmediate(resolve));
    jest.advanceTimersByTime(7_000 - 1);
    await settle();
    expect(outcome).toBeUndefined();
    jest.advanceTimersByTime(1);
    await settle();
    expect(outcome).toBeInstanceOf(UpstreamError);
    expect(outcome).toMatchObject({ failure: 'timeout', message: 'upstream silent timed out' });
  } finally {
    jest.useRealTimers();
  }
});
