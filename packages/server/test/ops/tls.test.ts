import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, X509Certificate } from 'node:crypto';
import { connect } from 'node:net';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../../src/config.js';
import { ensureSelfSigned, selfSignedFiles } from '../../src/tls/self-signed.js';
import { captureLog, startAuthRegistry } from '../auth/helpers.js';
import { run, runFails } from '../helpers/clients.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { WHARF_CLI } from '../helpers/wharf-process.js';
import { request } from './helpers.js';
import { forgeCa, forgeServer, opensslEcdsa, writePem } from './tls-certs.js';

async function mode(file: string): Promise<number> {
  return (await stat(file)).mode & 0o777;
}

/** Whether an HTTPS request that trusts exactly `ca` gets an answer (true) or a certificate error (its code). */
async function tlsOutcome(url: string, ca: string): Promise<number | string> {
  try {
    return (await request(`${url}/v2/`, { ca })).status;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  }
}

describe('[tls] self_signed = true', () => {
  let root: string;
  let reg: TestRegistry | undefined;
  const settings = { tls: { self_signed: true, hosts: ['wharf.test', '10.0.0.5'] } };

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-tls-'));
  });

  afterAll(async () => {
    await reg?.close();
    await rm(root, { recursive: true, force: true });
  });

  test('makes a CA and a server certificate for the hosts under <database folder>/tls, keys 0600, and logs the CA path', async () => {
    const log = captureLog();
    reg = await startRegistry({ root, settings, logger: log.logger });
    const files = selfSignedFiles(join(root, 'tls'));
    expect(reg.caFile).toBe(files.caCert);
    expect(reg.protocol).toBe('https');
    expect(reg.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(await mode(files.caKey)).toBe(0o600);
    expect(await mode(files.key)).toBe(0o600);
    const ca = new X509Certificate(await readFile(files.caCert));
    const server = new X509Certificate(await readFile(files.cert));
    expect(ca.ca).toBe(true);
    expect(server.ca).toBe(false);
    expect(server.checkIssued(ca) && server.verify(ca.publicKey)).toBe(true);
    for (const name of ['DNS:wharf.test', 'IP Address:10.0.0.5', 'DNS:localhost', 'IP Address:127.0.0.1']) expect(server.subjectAltName).toContain(name);
    expect(server.checkHost('wharf.test')).toBe('wharf.test');
    expect(server.checkIP('10.0.0.5')).toBe('10.0.0.5');
    const line = log.text().split('\n').find((l) => l.includes('self-signed TLS'));
    expect(line).toBeDefined();
    expect(JSON.parse(line!)).toMatchObject({ ca: files.caCert, created: 'ca', trust: { docker: expect.stringContaining('/etc/docker/certs.d/wharf.test:') } });
  });

  test('HTTPS answers a client that trusts the CA, and a client trusting another CA is refused', async () => {
    expect(await tlsOutcome(reg!.url, await readFile(reg!.caFile!, 'utf8'))).toBe(200);
    const other = await ensureSelfSigned({ dir: join(root, 'other-ca'), hosts: [] });
    expect(await tlsOutcome(reg!.url, await readFile(other.caFile, 'utf8'))).toMatch(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT/);
    expect(await tlsOutcome(reg!.url.replace('https:', 'http:'), '')).not.toBe(200);
  });

  test('a restart reuses the CA and the server certificate', async () => {
    const files = selfSignedFiles(join(root, 'tls'));
    const before = await Promise.all(Object.values(files).map((f) => readFile(f, 'utf8')));
    await reg!.close();
    reg = await startRegistry({ root, settings });
    const after = await Promise.all(Object.values(files).map((f) => readFile(f, 'utf8')));
    expect(after).toEqual(before);
    expect(await tlsOutcome(reg.url, before[0]!)).toBe(200);
  });

  test('changed hosts: a new server certificate from the same CA (clients keep trusting it)', async () => {
    const files = selfSignedFiles(join(root, 'tls'));
    const ca = await readFile(files.caCert, 'utf8');
    const cert = await readFile(files.cert, 'utf8');
    await reg!.close();
    const log = captureLog();
    reg = await startRegistry({ root, settings: { tls: { self_signed: true, hosts: ['registry.test'] } }, logger: log.logger });
    expect(await readFile(files.caCert, 'utf8')).toBe(ca);
    expect(await readFile(files.cert, 'utf8')).not.toBe(cert);
    const server = new X509Certificate(await readFile(files.cert));
    expect(server.checkHost('registry.test')).toBe('registry.test');
    expect(server.checkHost('wharf.test')).toBeUndefined();
    expect(log.text()).toContain('"reason":"hosts changed"');
    expect(await tlsOutcome(reg.url, ca)).toBe(200);
  });

  test('a server certificate with 30 days or less left is made again (at start and on the twice-daily check); the CA stays', async () => {
    const dir = join(root, 'renew');
    const first = await ensureSelfSigned({ dir, hosts: [], serverDays: 20 });
    expect(first.created).toEqual({ ca: true, server: true });
    const again = await ensureSelfSigned({ dir, hosts: [] });
    expect(again.created).toEqual({ ca: false, server: true });
    expect(again.reason).toBe('expires within 30 days');
    expect(new Date(again.material.leaf.validTo).getTime()).toBeGreaterThan(Date.now() + 300 * 86_400_000);
    expect(await readFile(again.caFile, 'utf8')).toBe(await readFile(first.caFile, 'utf8'));
    const third = await ensureSelfSigned({ dir, hosts: [] });
    expect(third.created).toEqual({ ca: false, server: false });
  });

  test('key files found readable by others are set back to 0600', async () => {
    const dir = join(root, 'modes');
    const files = selfSignedFiles(dir);
    await ensureSelfSigned({ dir, hosts: [] });
    await chmod(files.key, 0o644);
    await chmod(files.caKey, 0o640);
    await ensureSelfSigned({ dir, hosts: [] });
    expect(await mode(files.key)).toBe(0o600);
    expect(await mode(files.caKey)).toBe(0o600);
  });

  test('redirect_http answers 308 to the HTTPS URL, keeping path and query, except /health', async () => {
    const r = await startRegistry({ settings: { tls: { self_signed: true, redirect_http: '127.0.0.1:0' } } });
    try {
      expect(r.redirectUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const redirected = await request(`${r.redirectUrl}/v2/alice/app/tags/list?n=5`);
      expect(redirected.status).toBe(308);
      expect(redirected.headers.location).toBe(`${r.url}/v2/alice/app/tags/list?n=5`);
      const named = await request(`${r.redirectUrl}/v2/`, { headers: { Host: `wharf.test:${new URL(r.redirectUrl!).port}` } });
      expect(named.headers.location).toBe(`https://wharf.test:${new URL(r.url).port}/v2/`);
      const health = await request(`${r.redirectUrl}/health`);
      expect(health.status).toBe(200);
      expect(JSON.parse(health.body.toString())).toEqual({ status: 'ok' });
    } finally {
      await r.close();
    }
  });

  test('plain HTTP sent to the HTTPS port gets a 400 saying to use https; HTTPS on the same port goes on working', async () => {
    const r = await startRegistry({ settings: { tls: { self_signed: true } } });
    try {
      const port = new URL(r.url).port;
      const plain = await request(`http://127.0.0.1:${port}/v2/`, { headers: { Host: `wharf.test:${port}` } });
      expect(plain.status).toBe(400);
      expect(plain.headers['content-type']).toMatch(/^application\/json/);
      const error = JSON.parse(plain.body.toString()) as { errors: Array<{ code: string; message: string }> };
      expect(error.errors[0]!.code).toBe('UNSUPPORTED');
      expect(error.errors[0]!.message).toContain(`https://wharf.test:${port}/`);
      // Behind a port mapping, the port the client reached is the one to name.
      const mapped = await request(`http://127.0.0.1:${port}/v2/`, { headers: { Host: 'wharf.test:8443' } });
      expect(JSON.parse(mapped.body.toString()).errors[0].message).toContain('https://wharf.test:8443/');
      // A body that follows the plain request is dropped, not a hang.
      const upload = await request(`http://127.0.0.1:${port}/v2/alice/app/blobs/uploads/`, { method: 'POST', body: Buffer.alloc(4 << 20, 1) });
      expect(upload.status).toBe(400);
      const ca = await readFile(r.caFile!, 'utf8');
      const big = Buffer.alloc(3 << 20, 7);
      const pushed = await request(`${r.url}/v2/alice/app/blobs/uploads/?digest=sha256:${createHash('sha256').update(big).digest('hex')}`, { method: 'POST', body: big, ca });
      expect(pushed.status).toBe(201);
      expect(await tlsOutcome(r.url, ca)).toBe(200);
    } finally {
      await r.close();
    }
  });

  test('a connection to the HTTPS port that never says a word does not hold up a shutdown', async () => {
    // Both deadlines far beyond the test's own timeout: only the drain can end this connection in time.
    const r = await startRegistry({ settings: { tls: { self_signed: true }, shutdown_timeout: '10m', read_header_timeout: '10m' } });
    const port = Number(new URL(r.url).port);
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise((resolve) => socket.once('connect', resolve));
    const closed = new Promise((resolve) => socket.once('close', resolve));
    // Nor does one answered in plain HTTP that keeps sending a byte now and then.
    // allowHalfOpen: it does not close when Wharf has closed its side.
    const trickler = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    trickler.on('error', () => undefined);
    await new Promise((resolve) => trickler.once('connect', resolve));
    const answered = new Promise((resolve) => trickler.once('data', resolve));
    trickler.write('POST /v2/a/b/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n');
    await answered;
    const drip = setInterval(() => trickler.writable && trickler.write('x'), 100);
    const trickled = new Promise((resolve) => trickler.once('close', resolve));
    try {
      await r.close();
      await Promise.all([closed, trickled]);
    } finally {
      clearInterval(drip);
    }
    expect(socket.destroyed && trickler.destroyed).toBe(true);
  });

  test('with auth on, challenges over TLS name an https realm', async () => {
    const r = await startAuthRegistry({ settings: { tls: { self_signed: true } } });
    try {
      const res = await request(`${r.url}/v2/`, { ca: await readFile(r.caFile!, 'utf8') });
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toBe(`Bearer realm="${r.url}/auth/token",service="wharf"`);
    } finally {
      await r.close();
    }
  });
});

describe('[tls] cert and key', () => {
  let dir: string;
  let ca: ReturnType<typeof forgeCa>;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-tls-given-'));
    ca = forgeCa();
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  let roots = 0;
  /** A storage root inside `dir`, so that a start that fails leaves nothing behind. */
  const root = () => join(dir, `root-${++roots}`);

  async function serves(cert: string, key: string, trust: string): Promise<void> {
    const r = await startRegistry({ root: root(), settings: { tls: { cert, key } } });
    try {
      expect(r.url).toMatch(/^https:/);
      expect(await tlsOutcome(r.url, trust)).toBe(200);
    } finally {
      await r.close();
    }
  }

  test('an RSA chain (server certificate, then the CA) with a traditional PKCS#1 key is served', async () => {
    const files = await writePem(dir, 'rsa1', forgeServer(ca, 'pkcs1'), ca.cert);
    expect(await readFile(files.key, 'utf8')).toContain('BEGIN RSA PRIVATE KEY');
    await serves(files.cert, files.key, ca.cert);
  });

  test('an RSA certificate with a PKCS#8 key is served', async () => {
    const files = await writePem(dir, 'rsa8', forgeServer(ca, 'pkcs8'));
    expect(await readFile(files.key, 'utf8')).toContain('BEGIN PRIVATE KEY');
    await serves(files.cert, files.key, ca.cert);
  });

  test('ECDSA certificates with PKCS#8 and traditional SEC1 keys are served', async () => {
    for (const format of ['pkcs8', 'sec1'] as const) {
      const pem = await opensslEcdsa(dir, format);
      expect(pem.key).toContain(format === 'sec1' ? 'BEGIN EC PRIVATE KEY' : 'BEGIN PRIVATE KEY');
      const files = await writePem(dir, `ec-given-${format}`, pem);
      await serves(files.cert, files.key, pem.cert);
    }
  });

  test('a key that does not match the certificate: ConfigError naming the key file', async () => {
    const a = await writePem(dir, 'pair-a', forgeServer(ca, 'pkcs1'));
    const b = await writePem(dir, 'pair-b', forgeServer(ca, 'pkcs1'));
    const started = startRegistry({ root: root(), settings: { tls: { cert: a.cert, key: b.key } } });
    await expect(started).rejects.toThrow(ConfigError);
    await expect(started).rejects.toThrow(`"tls.key": the private key in ${b.key} does not match the certificate in ${a.cert}`);
  });

  test('a missing or unusable file: ConfigError naming it', async () => {
    const good = await writePem(dir, 'good', forgeServer(ca, 'pkcs8'));
    const missing = join(dir, 'nope.crt');
    await expect(startRegistry({ root: root(), settings: { tls: { cert: missing, key: good.key } } })).rejects.toThrow(
      `"tls.cert": cannot read the certificate file ${missing}: the file does not exist`,
    );
    await expect(startRegistry({ root: root(), settings: { tls: { cert: good.key, key: good.key } } })).rejects.toThrow(`"tls.cert": ${good.key} holds no PEM certificate`);
    await expect(startRegistry({ root: root(), settings: { tls: { cert: good.cert, key: good.cert } } })).rejects.toThrow(`"tls.key": ${good.cert} holds no usable PEM private key`);
    await expect(startRegistry({ root: root(), settings: { tls: { cert: good.cert } } })).rejects.toThrow('"tls.cert" and "tls.key" go together');
  });

  test('wharf config check finds a mismatched pair before any start (exit code 2)', async () => {
    const a = await writePem(dir, 'check-a', forgeServer(ca, 'pkcs1'));
    const b = await writePem(dir, 'check-b', forgeServer(ca, 'pkcs1'));
    const file = join(dir, 'check.toml');
    const base = ['registry_storage = "s/r"', 'temporary_registry_storage = "s/t"', 'proxy_storage = "s/p"', '[tls]'];
    await writeFile(file, [...base, `cert = "${a.cert}"`, `key = "${b.key}"`, ''].join('\n'));
    const failed = await runFails(process.execPath, [WHARF_CLI, 'config', 'check', '--config', file]);
    expect(failed.exitCode).toBe(2);
    expect(failed.stderr).toContain(`does not match the certificate in ${a.cert}`);
    await writeFile(file, [...base, `cert = "${a.cert}"`, `key = "${a.key}"`, ''].join('\n'));
    const ok = await run(process.execPath, [WHARF_CLI, 'config', 'check', '--config', file]);
    expect(ok.stdout).toContain(`tls ${a.cert} (valid until`);
  });
});
