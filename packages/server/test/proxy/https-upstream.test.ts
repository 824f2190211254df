import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildConfig, loadConfig } from '../../src/config.js';
import { bcryptHash, startAuthRegistry } from '../auth/helpers.js';
import { expectOciError } from '../helpers/http.js';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { expectImageThrough, type PushedImage } from './helpers/image-through.js';

/** Every real upstream speaks HTTPS; a private one often has its own CA, given with `ca_file`. */
describe('an HTTPS upstream whose certificate comes from a private CA', () => {
  let dir: string;
  let up: TestRegistry;
  let trusting: TestRegistry;
  let plain: TestRegistry;
  let image: PushedImage;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-https-up-'));
    // Seeded over HTTP, then served from the same storage over HTTPS with a self-signed CA.
    const seeding = await startRegistry({ root: join(dir, 'up') });
    image = await pushImage(seeding.url, 'alice/app', '1');
    await seeding.close();
    up = await startRegistry({ root: join(dir, 'up'), settings: { tls: { self_signed: true } } });
    expect(up.url).toMatch(/^https:/);
    trusting = await startRegistry({ settings: { proxy: { retries: 0, upstreams: { up: { url: up.url, ca_file: up.caFile! } } } } });
    plain = await startRegistry({ settings: { proxy: { retries: 0, upstreams: { up: { url: up.url } } } } });
  });
  afterAll(async () => {
    await trusting?.close();
    await plain?.close();
    await up?.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('with ca_file, the manifest and the layer come through byte for byte', async () => {
    await expectImageThrough(trusting.url, image);
  });

  test('without it, the certificate is refused: a 502 OCI error that says so, for manifests and blobs alike', async () => {
    const res = await fetch(`${plain.url}/v2/proxy/up/alice/app/manifests/1`, { headers: { accept: image.manifest.mediaType } });
    const error = await expectOciError(res, 502);
    expect(error.message).toMatch(/certificate/i);
    const layer = await fetch(`${plain.url}/v2/proxy/up/alice/app/blobs/${image.layer.digest}`);
    expect(layer.status).toBe(502);
  });

  test('a ca_file that cannot be read, or holds no certificate, stops the configuration with the key named', async () => {
    const base = { listen: '127.0.0.1:0', registry_storage: join(dir, 'r'), temporary_registry_storage: join(dir, 't'), proxy_storage: join(dir, 'p') };
    const withCa = (ca_file: string) => () => buildConfig({ ...base, proxy: { upstreams: { up: { url: 'https://example.test', ca_file } } } }, { env: {} });
    expect(withCa(join(dir, 'missing.pem'))).toThrow(/proxy\.upstreams\.up\.ca_file.*ENOENT/);
    await writeFile(join(dir, 'not-a-cert.pem'), 'hello');
    expect(withCa(join(dir, 'not-a-cert.pem'))).toThrow(/proxy\.upstreams\.up\.ca_file.*no PEM certificate/);
    // Commands that never reach the upstream (user, gc, proxy purge) do not read it.
    const offline = buildConfig({ ...base, proxy: { upstreams: { up: { url: 'https://example.test', ca_file: join(dir, 'missing.pem') } } } }, { env: {}, secrets: false });
    expect(offline.proxy.upstreams.find((u) => u.key === 'up')?.url).toBe('https://example.test');
  });

  test("a relative ca_file is the configuration file's neighbour, from whatever folder Wharf starts in", async () => {
    // pnpm runs `wharf` in the clone's root: `--config /etc/wharf/configuration.toml` with
    // `ca_file = "corp-ca.pem"` was read as the root's corp-ca.pem, and the start stopped on ENOENT.
    const etc = join(dir, 'etc');
    await mkdir(etc, { recursive: true });
    const pem = await readFile(up.caFile!, 'utf8');
    await writeFile(join(etc, 'corp-ca.pem'), pem);
    await writeFile(join(etc, 'configuration.toml'), ['listen = "127.0.0.1:0"', 'registry_storage = "r"', 'temporary_registry_storage = "t"', 'proxy_storage = "p"', '[proxy.upstreams.up]', 'url = "https://example.test"', 'ca_file = "corp-ca.pem"', ''].join('\n'));
    const config = loadConfig({ file: join(etc, 'configuration.toml'), cwd: dir, env: {} });
    expect(config.proxy.upstreams.find((u) => u.key === 'up')?.ca).toBe(pem);
    // An absolute path is taken as it is.
    const absolute = buildConfig({ listen: '127.0.0.1:0', registry_storage: join(etc, 'r'), temporary_registry_storage: join(etc, 't'), proxy_storage: join(etc, 'p'), proxy: { upstreams: { up: { url: 'https://example.test', ca_file: join(etc, 'corp-ca.pem') } } } }, { env: {}, fileDir: tmpdir(), cwd: tmpdir() });
    expect(absolute.proxy.upstreams.find((u) => u.key === 'up')?.ca).toBe(pem);
  });
});

/** Docker Hub's realm is HTTPS; one over plain HTTP would carry the upstream credentials in clear. */
describe('an HTTPS upstream that names a plain-HTTP token realm', () => {
  let realm: Server;
  let asked = 0;
  let up: TestRegistry;
  let proxy: TestRegistry;

  beforeAll(async () => {
    realm = createServer((_req, res) => {
      asked += 1;
      res.writeHead(500).end();
    });
    await new Promise<void>((resolve) => realm.listen(0, '127.0.0.1', resolve));
    const realmUrl = `http://127.0.0.1:${(realm.address() as AddressInfo).port}/auth/token`;
    up = await startAuthRegistry({ settings: { tls: { self_signed: true } }, authSettings: { realm: realmUrl, users: [{ name: 'alice', password_hash: bcryptHash('alice-upstream-pw') }] } });
    proxy = await startRegistry({
      settings: { proxy: { retries: 0, upstreams: { up: { url: up.url, ca_file: up.caFile!, username: 'alice', password: 'alice-upstream-pw' } } } },
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await up?.close();
    await new Promise((resolve) => realm?.close(resolve));
  });

  test('our credentials are not sent there: a 502 that says why, and the realm is never asked', async () => {
    const error = await expectOciError(await fetch(`${proxy.url}/v2/proxy/up/alice/app/manifests/1`), 502, 'UPSTREAM_ERROR');
    expect(JSON.stringify(error)).toMatch(/plain-HTTP token realm/);
    expect(asked).toBe(0);
  });
});
