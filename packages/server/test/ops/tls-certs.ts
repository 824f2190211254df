import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import forge from 'node-forge';
import { requireTool, run } from '../helpers/clients.js';

/** Certificates for the TLS tests, made the way an operator's CA would make them (node-forge, openssl). */

export interface Pem {
  readonly cert: string;
  readonly key: string;
}

function serial(): string {
  const bytes = randomBytes(12);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes.toString('hex');
}

/** A new RSA key pair and an unsigned certificate for it, valid from a minute ago for 30 days. */
function freshRsaCertificate(): { keys: forge.pki.rsa.KeyPair; cert: forge.pki.Certificate } {
  const keys = forge.pki.rsa.generateKeyPair({ bits: 2048 });
  const cert = forge.pki.createCertificate();
  cert.publicKey = keys.publicKey;
  cert.serialNumber = serial();
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 30 * 86_400_000);
  return { keys, cert };
}

/** An RSA CA made with node-forge. */
export function forgeCa(name = 'Test CA'): Pem & { forgeCert: forge.pki.Certificate; forgeKey: forge.pki.rsa.PrivateKey } {
  const { keys, cert } = freshRsaCertificate();
  const subject = [{ name: 'commonName', value: name }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key: forge.pki.privateKeyToPem(keys.privateKey), forgeCert: cert, forgeKey: keys.privateKey };
}

/**
 * An RSA server certificate for localhost/127.0.0.1 (`ipOnly`: for 127.0.0.1 alone, its common name
 * too) signed by `ca`, with its key in the traditional PKCS#1 form (BEGIN RSA PRIVATE KEY) or PKCS#8
 * (BEGIN PRIVATE KEY).
 */
export function forgeServer(ca: ReturnType<typeof forgeCa>, format: 'pkcs1' | 'pkcs8', ipOnly = false): Pem {
  const { keys, cert } = freshRsaCertificate();
  cert.setSubject([{ name: 'commonName', value: ipOnly ? '127.0.0.1' : 'localhost' }]);
  cert.setIssuer(ca.forgeCert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: [...(ipOnly ? [] : [{ type: 2, value: 'localhost' }]), { type: 7, ip: '127.0.0.1' }] },
  ]);
  cert.sign(ca.forgeKey, forge.md.sha256.create());
  const key =
    format === 'pkcs1'
      ? forge.pki.privateKeyToPem(keys.privateKey)
      : forge.pki.privateKeyInfoToPem(forge.pki.wrapRsaPrivateKey(forge.pki.privateKeyToAsn1(keys.privateKey)));
  return { cert: forge.pki.certificateToPem(cert), key };
}

/**
 * An ECDSA P-256 certificate (self-signed, so it is its own trust anchor) made with openssl, with the
 * key as PKCS#8 (BEGIN PRIVATE KEY) or the traditional SEC1 form (BEGIN EC PRIVATE KEY).
 * node-forge makes RSA certificates only.
 */
export async function opensslEcdsa(dir: string, format: 'pkcs8' | 'sec1'): Promise<Pem> {
  await requireTool('openssl', 'openssl');
  const keyFile = join(dir, `ec-${format}.key`);
  const certFile = join(dir, `ec-${format}.crt`);
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-keyout', keyFile, '-out', certFile, '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ]);
  if (format === 'sec1') await run('openssl', ['ec', '-in', keyFile, '-out', keyFile]);
  return { cert: await readFile(certFile, 'utf8'), key: await readFile(keyFile, 'utf8') };
}

export async function writePem(dir: string, name: string, pem: Pem, chain = ''): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  await writeFile(cert, pem.cert + chain);
  await writeFile(key, pem.key, { mode: 0o600 });
  return { cert, key };
}
