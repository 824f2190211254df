import type { Logger } from 'pino';
import type { TlsConfig } from './tls-config.js';
import { daysLeft, loadTlsFiles, type TlsMaterial } from './tls-files.js';

/** Same as self-signed.ts's RENEW_DAYS, repeated so that this module does not load node-forge. */
const RENEW_BEFORE_DAYS = 30;

export interface TlsSetup {
  readonly material: TlsMaterial;
  /** The self-signed CA clients must trust (self_signed only). */
  readonly caFile?: string;
  /**
   * Checks the certificate again (run twice a day): a self-signed certificate close to its end is
   * renewed, and a given certificate file replaced on disk (certbot, cert-manager) is read again.
   * Resolves to the new material when it changed.
   */
  refresh(): Promise<TlsMaterial | undefined>;
}

function trustHints(caFile: string, hosts: readonly string[], port: number) {
  const host = `${hosts[0] ?? 'localhost'}:${port}`;
  return {
    docker: `/etc/docker/certs.d/${host}/ca.crt`,
    podman: `/etc/containers/certs.d/${host}/ca.crt, or --cert-dir <folder holding ca.crt>`,
    skopeo: '--cert-dir (--src-cert-dir, --dest-cert-dir) <folder holding ca.crt>',
    containerd: `hosts.toml: [host."https://${host}"] ca = "${caFile}"`,
  };
}

/** The certificate and key Wharf serves HTTPS with, or undefined when TLS is off. */
export async function prepareTls(tls: TlsConfig, port: number, logger: Logger): Promise<TlsSetup | undefined> {
  if (!tls.enabled) return undefined;
  if (tls.selfSigned) {
    // node-forge is large: loaded only by servers that make their own certificates.
    const { ensureSelfSigned } = await import('./self-signed.js');
    const first = await ensureSelfSigned({ dir: tls.dir, hosts: tls.hosts });
    const log = logger.child({ component: 'tls' });
    log.info(
      {
        ca: first.caFile,
        hosts: tls.hosts,
        ...(first.created.ca ? { created: 'ca' } : first.created.server ? { created: 'server certificate', reason: first.reason } : {}),
        expires: first.material.leaf.validTo,
        trust: trustHints(first.caFile, tls.hosts, port),
      },
      'self-signed TLS: clients must trust this CA',
    );
    return {
      material: first.material,
      caFile: first.caFile,
      async refresh() {
        const next = await ensureSelfSigned({ dir: tls.dir, hosts: tls.hosts });
        if (!next.created.server) return undefined;
        log.info({ ca: next.caFile, reason: next.reason, expires: next.material.leaf.validTo, newCa: next.created.ca }, 'self-signed server certificate renewed');
        return next.material;
      },
    };
  }
  const material = loadTlsFiles(tls.cert!, tls.key!);
  const warnExpiry = (m: TlsMaterial) => {
    const days = daysLeft(m.leaf);
    if (days <= 0) logger.error({ cert: tls.cert, expired: m.leaf.validTo }, 'TLS certificate has expired: clients will refuse it');
    else if (days <= RENEW_BEFORE_DAYS) logger.warn({ cert: tls.cert, expires: m.leaf.validTo }, 'TLS certificate expires soon');
  };
  warnExpiry(material);
  let current = material;
  return {
    material,
    async refresh() {
      let next: TlsMaterial;
      try {
        next = loadTlsFiles(tls.cert!, tls.key!);
      } catch (err) {
        logger.warn({ err: (err as Error).message }, 'TLS certificate files could not be read again; keeping the current ones');
        return undefined;
      }
      if (next.cert === current.cert && next.key === current.key) return undefined;
      current = next;
      warnExpiry(next);
      logger.info({ cert: tls.cert, expires: next.leaf.validTo }, 'TLS certificate reloaded');
      return next;
    },
  };
}
