import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import net, { connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildConfig } from '../../src/config.js';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { forgeCa, forgeServer, writePem } from '../ops/tls-certs.js';
import { freePort, startWharfProcess, writeWharfConfig } from '../helpers/wharf-process.js';
import { expectImageThrough, type PushedImage } from './helpers/image-through.js';

/** A forward proxy that only tunnels (CONNECT), as egress proxies do, and remembers where to. */
class TunnelProxy {
  readonly tunnels: string[] = [];
  /** The Proxy-Authorization of each tunnel asked for. */
  readonly credentials: (string | undefined)[] = [];
  url = '';
  private server!: Server;
  private readonly sockets = new Set<Socket>();

  /** With `tls`, an https:// proxy: the connection to the proxy itself is TLS. */
  static async start(tls?: { cert: string; key: string }): Promise<TunnelProxy> {
    const proxy = new TunnelProxy();
    const refuse = (_req: unknown, res: { statusCode: number; end(): void }): void => {
      res.statusCode = 405;
      res.end();
    };
    proxy.server = tls ? createTlsServer(tls, refuse) : createServer(refuse);
    proxy.server.on('connect', (req, client: Socket, head: Buffer) => {
      proxy.tunnels.push(req.url ?? '');
      proxy.credentials.push(req.headers['proxy-authorization']);
      const [host, port] = (req.url ?? '').split(':');
      const target = netConnect(Number(port), host!, () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        if (head.length > 0) target.write(head);
        target.pipe(client);
        client.pipe(target);
      });
      for (const s of [client, target]) {
        proxy.sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => proxy.sockets.delete(s));
      }
      target.on('close', () => client.destroy());
      client.on('close', () => target.destroy());
    });
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    proxy.url = `${tls ? 'https' : 'http'}://127.0.0.1:${(proxy.server.address() as AddressInfo).port}`;
    return proxy;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

describe('upstream requests through an egress proxy (HTTP_PROXY, HTTPS_PROXY, NO_PROXY)', () => {
  let dir: string;
  let httpUp: TestRegistry;
  let httpsUp: TestRegistry;
  let tunnel: TunnelProxy;
  const started: TestRegistry[] = [];
  let image: PushedImage;

  const proxyWith = async (env: NodeJS.ProcessEnv, upstream: Record<string, unknown>): Promise<TestRegistry> => {
    const reg = await startRegistry({ env, settings: { proxy: { retries: 0, upstreams: { up: upstream } } } });
    started.push(reg);
    return reg;
  };
  const pullThrough = (reg: TestRegistry): Promise<void> => expectImageThrough(reg.url, image);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-egress-'));
    httpUp = await startRegistry({ root: join(dir, 'plain') });
    image = await pushImage(httpUp.url, 'alice/app', '1');
    // The same image over HTTPS with a self-signed CA: seeded over HTTP, then served from that storage.
    const seeding = await startRegistry({ root: join(dir, 'tls') });
    await pushImage(seeding.url, 'alice/app', '1');
    await seeding.close();
    httpsUp = await startRegistry({ root: join(dir, 'tls'), settings: { tls: { self_signed: true } } });
    tunnel = await TunnelProxy.start();
  });
  afterAll(async () => {
    for (const r of started) await r.close();
    await httpUp?.close();
    await httpsUp?.close();
    await tunnel?.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('HTTP_PROXY: an http:// upstream is reached through a tunnel of the proxy', async () => {
    const reg = await proxyWith({ HTTP_PROXY: tunnel.url }, { url: httpUp.url });
    const before = tunnel.tunnels.length;
    await pullThrough(reg);
    expect(tunnel.tunnels.slice(before)).toContain(new URL(httpUp.url).host);
  });

  test('HTTPS_PROXY with ca_file: an https:// upstream behind a private CA, through the tunnel', async () => {
    const reg = await proxyWith({ https_proxy: tunnel.url }, { url: httpsUp.url, ca_file: httpsUp.caFile! });
    const before = tunnel.tunnels.length;
    await pullThrough(reg);
    expect(tunnel.tunnels.slice(before)).toContain(new URL(httpsUp.url).host);
  });

  test('credentials in the proxy URL go to the proxy as Basic, decoded', async () => {
    const withUser = new URL(tunnel.url);
    withUser.username = 'bob';
    withUser.password = encodeURIComponent('s3@cret');
    const reg = await proxyWith({ HTTP_PROXY: withUser.href }, { url: httpUp.url });
    const before = tunnel.credentials.length;
    await pullThrough(reg);
    const sent = tunnel.credentials.slice(before);
    expect(sent.length).toBeGreaterThan(0);
    for (const auth of sent) expect(auth).toBe(`Basic ${Buffer.from('bob:s3@cret').toString('base64')}`);
  });

  test('NO_PROXY, and a proxy for the other scheme only: the upstream is reached directly', async () => {
    const before = tunnel.tunnels.length;
    await pullThrough(await proxyWith({ HTTP_PROXY: tunnel.url, NO_PROXY: 'localhost,127.0.0.1' }, { url: httpUp.url }));
    await pullThrough(await proxyWith({ HTTPS_PROXY: tunnel.url }, { url: httpUp.url }));
    expect(tunnel.tunnels.slice(before)).toEqual([]);
  });

  test("the egress proxy's own failures are named as its, never with its credentials: unreachable, 407, 403", async () => {
    const answer = async (reg: TestRegistry): Promise<{ status: number; message: string }> => {
      const res = await fetch(`${reg.url}/v2/proxy/up/alice/app/manifests/1`);
      return { status: res.status, message: ((await res.json()) as { errors: { message: string }[] }).errors[0]!.message };
    };
    // Nothing listens where HTTP_PROXY points. Before: "upstream up is unreachable (ECONNREFUSED)",
    // sending the operator after an upstream that was never asked.
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const closedPort = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const down = await answer(await proxyWith({ HTTP_PROXY: `http://bob:pr0xy-secret@127.0.0.1:${closedPort}` }, { url: httpUp.url }));
    expect(down.status).toBe(502);
    expect(down.message).toContain(`the egress proxy 127.0.0.1:${closedPort} (HTTP_PROXY) is unreachable (ECONNREFUSED) for upstream up`);
    expect(down.message).not.toContain('pr0xy-secret');

    // A proxy that opens no tunnel: without credentials (407), or not to this host (403).
    for (const [status, words] of [
      [407, "wants credentials (407): put them in HTTP_PROXY's URL"],
      [403, 'refused it (403): its allow-list may lack that host'],
    ] as const) {
      const refusing = createServer((_req, res) => res.writeHead(405).end());
      refusing.on('connect', (_req, socket: Socket) => socket.end(`HTTP/1.1 ${status} No\r\nProxy-Authenticate: Basic realm="corp"\r\nContent-Length: 0\r\n\r\n`));
      await new Promise<void>((resolve) => refusing.listen(0, '127.0.0.1', resolve));
      const at = `127.0.0.1:${(refusing.address() as AddressInfo).port}`;
      try {
        const refused = await answer(await proxyWith({ HTTP_PROXY: `http://${at}` }, { url: httpUp.url }));
        expect(refused.status).toBe(502);
        expect(refused.message).toContain(`the egress proxy ${at} (HTTP_PROXY) did not open a tunnel to ${new URL(httpUp.url).host} for upstream up: it ${words}`);
        if (status === 407) {
          // With credentials in the URL already: they were refused (never shown).
          const wrong = await answer(await proxyWith({ HTTP_PROXY: `http://bob:pr0xy-secret@${at}` }, { url: httpUp.url }));
          expect(wrong.message).toContain(`the egress proxy ${at} (HTTP_PROXY) did not open a tunnel to ${new URL(httpUp.url).host} for upstream up: it refused the credentials in HTTP_PROXY's URL (407)`);
          expect(wrong.message).not.toContain('pr0xy-secret');
        }
      } finally {
        refusing.closeAllConnections();
        await new Promise<void>((resolve) => refusing.close(() => resolve()));
      }
    }
  });

  test('an egress proxy that takes the connection and closes it: one CONNECT, and a 502 naming the path through the proxy', async () => {
    const closing = createServer();
    let connects = 0;
    closing.on('connect', (_req, socket: Socket) => {
      connects += 1;
      socket.destroy();
    });
    await new Promise<void>((resolve) => closing.listen(0, '127.0.0.1', resolve));
    const at = `127.0.0.1:${(closing.address() as AddressInfo).port}`;
    try {
      const reg = await proxyWith({ HTTP_PROXY: `http://${at}` }, { url: httpUp.url });
      const res = await fetch(`${reg.url}/v2/proxy/up/alice/app/manifests/1`);
      expect(res.status).toBe(502);
      // Before: no answer at all, while the tunnel was asked for again thousands of times a second
      // (undici takes a CONNECT cut short for a socket error to recover from).
      expect(((await res.json()) as { errors: { message: string }[] }).errors[0]!.message).toMatch(
        new RegExp(`^upstream up is unreachable through the egress proxy ${at.replace(/\./g, '\\.')} \\(HTTP_PROXY\\): the connection was cut \\((ECONNRESET|EPIPE|UND_ERR_SOCKET|UND_ERR_CLOSED)\\), by the proxy or by the upstream behind it$`),
      );
      expect(connects).toBe(1); // retries = 0
    } finally {
      closing.closeAllConnections();
      await new Promise<void>((resolve) => closing.close(() => resolve()));
    }
  });

  test('an egress proxy that takes the connection and never answers its CONNECT: a 504 within the timeouts, not a client held for minutes', async () => {
    // Before: the CONNECT waited undici's default of 300 s, whatever the timeouts (a blob GET 100 s and more in the fuzzing).
    const silent = createServer();
    const held: Socket[] = [];
    silent.on('connect', (_req, socket: Socket) => void held.push(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      const reg = await startRegistry({
        env: { HTTP_PROXY: `http://127.0.0.1:${(silent.address() as AddressInfo).port}` },
        settings: { proxy: { retries: 0, connect_timeout: '300ms', first_byte_timeout: '300ms', upstreams: { up: { url: httpUp.url } } } },
      });
      started.push(reg);
      for (const path of ['manifests/1', `blobs/${image.layer.digest}`]) {
        const res = await fetch(`${reg.url}/v2/proxy/up/alice/app/${path}`);
        expect([path, res.status]).toEqual([path, 504]);
        expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('UPSTREAM_TIMEOUT');
      }
    } finally {
      for (const s of held) s.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  test("an https:// egress proxy whose certificate is not trusted: named as the proxy's, with the variable read (lower-case too), and no ca_file advice", async () => {
    // Before: "upstream up's TLS certificate is not trusted (...); a private CA goes in the upstream's
    // ca_file", which sent the operator to the upstream's settings, which the proxy's TLS never reads.
    const ca = forgeCa('Corp proxy CA');
    const tlsProxy = createTlsServer(forgeServer(ca, 'pkcs8'), (_req, res) => res.writeHead(405).end());
    let connects = 0;
    tlsProxy.on('connect', (_req, socket: Socket) => {
      connects += 1;
      socket.destroy();
    });
    tlsProxy.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve) => tlsProxy.listen(0, '127.0.0.1', resolve));
    const at = `127.0.0.1:${(tlsProxy.address() as AddressInfo).port}`;
    try {
      for (const variable of ['HTTP_PROXY', 'http_proxy']) {
        const reg = await proxyWith({ [variable]: `https://bob:pr0xy-secret@${at}` }, { url: httpUp.url });
        const res = await fetch(`${reg.url}/v2/proxy/up/alice/app/manifests/1`);
        expect(res.status).toBe(502);
        const message = ((await res.json()) as { errors: { message: string }[] }).errors[0]!.message;
        expect(message).toMatch(new RegExp(`^the egress proxy ${at.replace(/\./g, '\\.')} \\(${variable}\\) has a TLS certificate Wharf does not trust \\([A-Z_]+\\) for upstream up: `));
        expect(message).toContain('NODE_EXTRA_CA_CERTS');
        expect(message).not.toContain('ca_file');
        expect(message).not.toContain('pr0xy-secret');
      }
      expect(connects).toBe(0); // no tunnel through a proxy that was not trusted

      // https:// written for a proxy that speaks plain HTTP: the handshake fails, and the message says why.
      const plain = await proxyWith({ HTTP_PROXY: tunnel.url.replace('http://', 'https://') }, { url: httpUp.url });
      const res = await fetch(`${plain.url}/v2/proxy/up/alice/app/manifests/1`);
      expect(res.status).toBe(502);
      expect(((await res.json()) as { errors: { message: string }[] }).errors[0]!.message).toMatch(
        new RegExp(`^the TLS handshake with the egress proxy ${new URL(tunnel.url).host.replace(/\./g, '\\.')} \\(HTTP_PROXY\\) failed \\([A-Z_]+\\) for upstream up: a proxy that speaks plain HTTP is written http://$`),
      );
    } finally {
      tlsProxy.closeAllConnections();
      await new Promise<void>((resolve) => tlsProxy.close(() => resolve()));
    }
  });

  test("an https:// egress proxy whose CA is in NODE_EXTRA_CA_CERTS, as the failure's message advises: the tunnel goes through it, with no server name for a proxy written as an address", async () => {
    const ca = forgeCa('Corp proxy CA');
    // The proxy's certificate names its address alone; the upstream is reached by a host name, which
    // the proxy's TLS must not be checked against.
    const tlsTunnel = await TunnelProxy.start(forgeServer(ca, 'pkcs8', true));
    const named = new URL(httpUp.url);
    named.hostname = 'localhost';
    const root = await mkdtemp(join(dir, 'tls-proxy-'));
    const { cert } = await writePem(root, 'proxy-ca', ca);
    const port = await freePort();
    const config = await writeWharfConfig(root, port, { proxy: ['retries = 0', '[proxy.upstreams.up]', `url = "${named.origin}"`] });
    const wharf = await startWharfProcess(config, port, process.execPath, undefined, { HTTP_PROXY: tlsTunnel.url, NODE_EXTRA_CA_CERTS: cert, NO_PROXY: '', no_proxy: '' });
    try {
      await expectImageThrough(wharf.url, image);
      expect(tlsTunnel.tunnels).toContain(named.host);
      // The proxy is written as an IP address (127.0.0.1), which TLS may not name as its server name.
      expect(wharf.output()).not.toContain('DEP0123');
    } finally {
      await wharf.kill('SIGTERM');
      await tlsTunnel.close();
    }
  });

  test('a proxy variable that is not an http(s) URL stops the configuration, naming the variable; a bare host:port is http', () => {
    const base = { listen: '127.0.0.1:0', registry_storage: join(dir, 'r'), temporary_registry_storage: join(dir, 't'), proxy_storage: join(dir, 'p') };
    expect(() => buildConfig(base, { env: { HTTPS_PROXY: 'http://[proxy' } })).toThrow(/HTTPS_PROXY must be a URL/);
    // As curl has it, a proxy without a scheme is an http:// one.
    expect(buildConfig(base, { env: { HTTPS_PROXY: 'proxy.corp:3128' } }).proxy.egress).toEqual({ https: 'http://proxy.corp:3128', variables: { https: 'HTTPS_PROXY' } });
    expect(() => buildConfig(base, { env: { HTTP_PROXY: 'socks5://proxy.corp:1080' } })).toThrow(/HTTP_PROXY must be an http/);
    // The lower-case form wins, as curl has it, and is the one named. Before: "HTTP_PROXY must be ..."
    // for a value only http_proxy held.
    expect(() => buildConfig(base, { env: { HTTP_PROXY: 'http://good:3128', http_proxy: 'socks5://proxy.corp:1080' } })).toThrow(/^http_proxy must be an http/);
    expect(buildConfig(base, { env: { HTTP_PROXY: 'http://upper:3128', http_proxy: 'http://lower:3128' } }).proxy.egress).toEqual({ http: 'http://lower:3128', variables: { http: 'http_proxy' } });
  });
});
