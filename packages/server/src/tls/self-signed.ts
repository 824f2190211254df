import { X509Certificate, createPrivateKey, randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import forge from 'node-forge';
import type { TlsMaterial } from './tls-files.js';
import { daysLeft } from './tls-files.js';

/** The server certificate is renewed when it has fewer days left than this (and so is the CA). */
/** Renew the server certificate this many days before it expires (tls-setup.ts warns at the same mark). */
export const RENEW_DAYS = 30;
const CA_DAYS = 3650;
const SERVER_DAYS = 365;
/** Always in the certificate, so that local clients and the container HEALTHCHECK can connect. */
const ALWAYS = ['localhost', '127.0.0.1', '::1'];

export interface SelfSignedOptions {
  /** `<folder of the database>/tls`. */
  readonly dir: string;
  /** Configured DNS names and IP addresses. */
  readonly hosts: readonly string[];
  /** For tests: the clock, and the server certificate's lifetime. */
  readonly now?: number;
  readonly serverDays?: number;
}

export interface SelfSigned {
  readonly material: TlsMaterial;
  readonly caFile: string;
  /** What this call had to create. */
  readonly created: { readonly ca: boolean; readonly server: boolean };
  /** Why the server certificate was (re)made, when it was. */
  readonly reason?: string;
}

/** The file names under `dir`. Keys are written 0600. */
export function selfSignedFiles(dir: string) {
  return { caCert: join(dir, 'ca.crt'), caKey: join(dir, 'ca.key'), cert: join(dir, 'server.crt'), key: join(dir, 'server.key') };
}

/** A SAN entry as `dns:name` or `ip:<canonical address>`, comparable whatever wrote it. */
function sanEntry(host: string): string {
  if (isIP(host) === 6) return `ip:${new URL(`http://[${host}]`).hostname.slice(1, -1)}`;
  if (isIP(host) === 4) return `ip:${host}`;
  return `dns:${host.toLowerCase()}`;
}

function wantedSans(hosts: readonly string[]): Set<string> {
  return new Set([...hosts, ...ALWAYS].map(sanEntry));
}

/** The SAN entries of a certificate ("DNS:a, IP Address:127.0.0.1" as node:crypto prints them). */
function certSans(cert: X509Certificate): Set<string> {
  const out = new Set<string>();
  for (const part of (cert.subjectAltName ?? '').split(/,\s*/)) {
    const m = /^(DNS|IP Address):(.+)$/.exec(part.trim());
    if (m) out.add(sanEntry(m[2]!));
  }
  return out;
}

function sameSet(a: Set<string>, b: Set<string>): boolean {
  return a.size === b.size && [...a].every((x) => b.has(x));
}

/** A positive 128-bit serial number, as hex (the first byte below 0x80: DER integers are signed). */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes.toString('hex');
}

function generateKeys(): Promise<forge.pki.rsa.KeyPair> {
  // node-forge hands this to node:crypto's generateKeyPair when it is there (it is, on Node 20).
  return new Promise((resolve, reject) => {
    forge.pki.rsa.generateKeyPair({ bits: 2048, workers: -1 }, (err, keys) => (err ? reject(err) : resolve(keys)));
  });
}

function validity(cert: forge.pki.Certificate, now: number, days: number): void {
  cert.validity.notBefore = new Date(now - 5 * 60_000); // some clock skew between hosts
  cert.validity.notAfter = new Date(now + days * 86_400_000);
}

async function writeSecret(file: string, text: string, mode: number): Promise<void> {
  const temp = `${file}.tmp-${process.pid}`;
  await writeFile(temp, text, { mode });
  await chmod(temp, mode);
  await rename(temp, file);
}

async function readIfThere(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

async function makeCa(now: number): Promise<{ cert: string; key: string }> {
  const keys = await generateKeys();
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = serialNumber();
  validity(cert, now, CA_DAYS);
  const subject = [
    { name: 'commonName', value: `Wharf local CA (${hostname()} ${new Date(now).toISOString().slice(0, 10)})` },
    { name: 'organizationName', value: 'Wharf' },
  ];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key: forge.pki.privateKeyToPem(keys.privateKey) };
}

async function makeServer(ca: { cert: string; key: string }, hosts: readonly string[], now: number, days: number): Promise<{ cert: string; key: string }> {
  const caCert = forge.pki.certificateFromPem(ca.cert);
  const caKey = forge.pki.privateKeyFromPem(ca.key);
  const keys = await generateKeys();
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = serialNumber();
  validity(cert, now, days);
  const names = [...new Set([...hosts, ...ALWAYS])];
  const firstDns = names.find((h) => isIP(h) === 0) ?? 'localhost';
  cert.setSubject([{ name: 'commonName', value: firstDns }, { name: 'organizationName', value: 'Wharf' }]);
  cert.setIssuer(caCert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: names.map((h) => (isIP(h) ? { type: 7, ip: h } : { type: 2, value: h })) },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(caKey, forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key: forge.pki.privateKeyToPem(keys.privateKey) };
}

/** The CA in `dir` if it is whole, its own, and not about to expire. */
function usableCa(cert: string | undefined, key: string | undefined, now: number): boolean {
  if (!cert || !key) return false;
  try {
    const x509 = new X509Certificate(cert);
    return x509.ca && x509.checkPrivateKey(createPrivateKey(key)) && daysLeft(x509, now) > RENEW_DAYS;
  } catch {
    return false;
  }
}

/** Why the server certificate must be made again, or undefined when it can be kept. */
function serverProblem(cert: string | undefined, key: string | undefined, caPem: string, hosts: readonly string[], now: number): string | undefined {
  if (!cert || !key) return 'none yet';
  try {
    const x509 = new X509Certificate(cert);
    const ca = new X509Certificate(caPem);
    if (!x509.checkPrivateKey(createPrivateKey(key))) return 'key does not match';
    if (!x509.checkIssued(ca) || !x509.verify(ca.publicKey)) return 'not signed by the current CA';
    if (daysLeft(x509, now) <= RENEW_DAYS) return `expires within ${RENEW_DAYS} days`;
    if (!sameSet(certSans(x509), wantedSans(hosts))) return 'hosts changed';
    return undefined;
  } catch (err) {
    return `unreadable (${(err as Error).message})`;
  }
}

/**
 * The self-signed CA and server certificate under `dir`, made with node-forge the first time and
 * reused after: the CA lives ten years (clients trust it once); the server certificate one year, and is
 * made again when it has 30 days or less left, when the configured hosts changed, or when the CA was
 * replaced. Keys are written 0600 (and set back to 0600 if found more open).
 */
export async function ensureSelfSigned(options: SelfSignedOptions): Promise<SelfSigned> {
  const now = options.now ?? Date.now();
  const files = selfSignedFiles(options.dir);
  await mkdir(options.dir, { recursive: true, mode: 0o700 });
  let caCert = await readIfThere(files.caCert);
  let caKey = await readIfThere(files.caKey);
  const created = { ca: false, server: false };
  if (!usableCa(caCert, caKey, now)) {
    const ca = await makeCa(now);
    await writeSecret(files.caKey, ca.key, 0o600);
    await writeSecret(files.caCert, ca.cert, 0o644);
    caCert = ca.cert;
    caKey = ca.key;
    created.ca = true;
  }
  let cert = await readIfThere(files.cert);
  let key = await readIfThere(files.key);
  const reason = created.ca ? 'new CA' : serverProblem(cert, key, caCert!, options.hosts, now);
  if (reason !== undefined) {
    const server = await makeServer({ cert: caCert!, key: caKey! }, options.hosts, now, options.serverDays ?? SERVER_DAYS);
    await writeSecret(files.key, server.key, 0o600);
    await writeSecret(files.cert, server.cert, 0o644);
    cert = server.cert;
    key = server.key;
    created.server = true;
  }
  for (const file of [files.caKey, files.key]) {
    if (((await stat(file)).mode & 0o077) !== 0) await chmod(file, 0o600);
  }
  return {
    material: { cert: cert!, key: key!, leaf: new X509Certificate(cert!) },
    caFile: files.caCert,
    created,
    ...(reason !== undefined ? { reason } : {}),
  };
}
