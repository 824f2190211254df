import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ConfigError } from '../config-error.js';

/** What an HTTPS server needs: the PEM chain as given and the key. */
export interface TlsMaterial {
  readonly cert: string;
  readonly key: string;
  /** The leaf certificate, for its dates and names. */
  readonly leaf: X509Certificate;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function readText(file: string, key: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const reason = e.code === 'ENOENT' ? 'the file does not exist' : e.code === 'EACCES' ? 'permission denied' : e.message;
    throw new ConfigError(`"${key}": cannot read the ${what} file ${file}: ${reason}`);
  }
}

/** Every certificate of a PEM chain, leaf first. */
export function parseChain(pem: string, file: string, key = 'tls.cert'): X509Certificate[] {
  const blocks = pem.match(PEM_CERT) ?? [];
  if (blocks.length === 0) throw new ConfigError(`"${key}": ${file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  return blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new ConfigError(`"${key}": certificate ${i + 1} in ${file} cannot be parsed: ${(err as Error).message}`);
    }
  });
}

/** A PEM private key: PKCS#8 (BEGIN PRIVATE KEY), or traditional RSA (BEGIN RSA PRIVATE KEY) or EC (BEGIN EC PRIVATE KEY). */
export function parsePrivateKey(pem: string, file: string, key = 'tls.key'): KeyObject {
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(pem)) {
    throw new ConfigError(`"${key}": the private key in ${file} is encrypted; give Wharf an unencrypted key (openssl pkey -in ${file} -out plain.key) readable only by its user`);
  }
  try {
    return createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new ConfigError(`"${key}": ${file} holds no usable PEM private key (RSA or ECDSA, PKCS#8 or traditional): ${(err as Error).message}`);
  }
}

/**
 * Reads and checks `[tls] cert` and `key`: both readable, a certificate chain and a private key, and
 * the key is the one of the leaf certificate (compared through node:crypto, so the server never starts
 * with a pair that every client would refuse).
 */
export function loadTlsFiles(certFile: string, keyFile: string): TlsMaterial {
  const cert = readText(certFile, 'tls.cert', 'certificate');
  const key = readText(keyFile, 'tls.key', 'private key');
  const chain = parseChain(cert, certFile);
  const privateKey = parsePrivateKey(key, keyFile);
  const leaf = chain[0]!;
  if (!leaf.checkPrivateKey(privateKey)) {
    throw new ConfigError(`"tls.key": the private key in ${keyFile} does not match the certificate in ${certFile} (the first certificate of the file must be the server's)`);
  }
  return { cert, key, leaf };
}

/** Days until a certificate expires (negative once expired). */
export function daysLeft(cert: X509Certificate, now = Date.now()): number {
  return (Date.parse(cert.validTo) - now) / 86_400_000;
}
