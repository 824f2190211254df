import { isIP } from 'node:net';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { ConfigError } from '../config-error.js';

export interface TlsConfig {
  /** HTTPS on `listen`: a certificate and key were given, or self_signed is on. */
  readonly enabled: boolean;
  /** PEM certificate chain (leaf first), absolute path. */
  readonly cert?: string;
  /** PEM private key (RSA or ECDSA, PKCS#8 or traditional), absolute path. */
  readonly key?: string;
  /** Wharf makes its own CA and server certificate (node-forge) under `dir`. */
  readonly selfSigned: boolean;
  /** DNS names and IP addresses of the self-signed certificate (localhost and 127.0.0.1 are always in). */
  readonly hosts: readonly string[];
  /** A plain HTTP listener that answers 308 to the HTTPS URL (except /health). */
  readonly redirectHttp?: { readonly host: string; readonly port: number };
  /** Where the self-signed CA and certificate live: `<folder of the database>/tls`. */
  readonly dir: string;
}

const TLS_KEYS = new Set(['cert', 'key', 'self_signed', 'hosts', 'redirect_http']);
const DNS_NAME = /^(?:\*\.)?(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/** A host name (a wildcard first label allowed) or an IPv4/IPv6 address. */
export function isValidTlsHost(host: string): boolean {
  return host.length <= 253 && (isIP(host) !== 0 || DNS_NAME.test(host));
}

export interface TlsPaths {
  /** Folder of the configuration file: relative `cert`/`key` in the file are relative to it. */
  readonly fileDir: string;
  /** The resolved database path, or ':memory:'. */
  readonly database: string;
  /** Fallback folder when the database is in memory. */
  readonly registryStorage: string;
  readonly parseListen: (value: string, key: string) => { host: string; port: number };
}

export function buildTlsConfig(raw: unknown, paths: TlsPaths): TlsConfig {
  const table = raw === undefined ? {} : raw;
  if (!isTable(table)) throw new ConfigError('"tls" must be a table');
  for (const k of Object.keys(table)) if (!TLS_KEYS.has(k)) throw new ConfigError(`unknown key "tls.${k}"`);
  for (const k of ['cert', 'key', 'redirect_http']) {
    if (table[k] !== undefined && (typeof table[k] !== 'string' || table[k] === '')) throw new ConfigError(`"tls.${k}" must be a non-empty string`);
  }
  const selfSigned = table.self_signed ?? false;
  if (typeof selfSigned !== 'boolean') throw new ConfigError('"tls.self_signed" must be true or false');
  const given = { cert: table.cert as string | undefined, key: table.key as string | undefined };
  if ((given.cert === undefined) !== (given.key === undefined)) {
    throw new ConfigError(`"tls.cert" and "tls.key" go together: set both (got only "tls.${given.cert === undefined ? 'key' : 'cert'}")`);
  }
  if (selfSigned && given.cert !== undefined) {
    throw new ConfigError('set either "tls.cert" and "tls.key", or "tls.self_signed" = true, not both');
  }
  const hosts = table.hosts ?? [];
  if (!Array.isArray(hosts) || hosts.some((h) => typeof h !== 'string' || !isValidTlsHost(h))) {
    throw new ConfigError(`"tls.hosts" must be an array of host names and IP addresses, such as ["wharf.local", "10.0.0.5"] (got ${JSON.stringify(hosts)})`);
  }
  if (hosts.length > 0 && !selfSigned) throw new ConfigError('"tls.hosts" names the hosts of the self-signed certificate: set "tls.self_signed" = true, or remove it');
  const enabled = selfSigned || given.cert !== undefined;
  let redirectHttp: TlsConfig['redirectHttp'];
  if (table.redirect_http !== undefined) {
    if (!enabled) throw new ConfigError('"tls.redirect_http" redirects to HTTPS: it needs "tls.cert"/"tls.key" or "tls.self_signed" = true');
    redirectHttp = paths.parseListen(table.redirect_http as string, 'tls.redirect_http');
  }
  const place = (file: string) => (isAbsolute(file) ? file : resolve(paths.fileDir, file));
  const dataDir = paths.database === ':memory:' ? dirname(paths.registryStorage) : dirname(paths.database);
  return {
    enabled,
    ...(given.cert !== undefined ? { cert: place(given.cert), key: place(given.key!) } : {}),
    selfSigned,
    hosts: [...new Set(hosts as string[])],
    ...(redirectHttp ? { redirectHttp } : {}),
    dir: join(dataDir, 'tls'),
  };
}
