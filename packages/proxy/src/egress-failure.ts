import { isCertificateFailure } from './tls-failure.js';
import { UpstreamError } from './upstream.js';

/** The code of a failed TLS connection to an https:// egress proxy itself (its own code in `tlsCode`). */
export const EGRESS_PROXY_TLS = 'WHARF_EGRESS_PROXY_TLS';

/** Errors of the one connection Wharf opens itself on a request through the egress proxy: the proxy's. */
const PROXY_CONNECT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);
/**
 * Connections cut before an answer: through the proxy, the proxy's doing or the upstream's behind it
 * (the proxy closes the tunnel then), which Wharf cannot tell apart; said as the path's.
 */
const CUT_CODES = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);
/** undici's words for a tunnel the egress proxy did not open (CONNECT answered with another status). */
const TUNNEL_REFUSED = /^Proxy response \((\d{3})\) !== 200 when HTTP Tunneling/;

/** The egress proxy an upstream's requests go through, as failures name it. */
export interface EgressProxy {
  /** Its URL, credentials and all (never shown). */
  readonly url: string;
  /** The variable it came from: HTTPS_PROXY or HTTP_PROXY (or the lower-case one, when that was read). */
  readonly variable: string;
}

/**
 * A request through the egress proxy that failed at the proxy, not at the upstream: the proxy could
 * not be reached, its TLS failed (an https:// proxy), or it did not open the tunnel (407: it wants
 * credentials; 403: its allow-list). Said as the proxy's failure, naming its host and variable (never
 * its credentials), so that an operator does not go looking for an upstream outage. Undefined for
 * any other failure.
 */
export function egressFailure(err: unknown, proxy: EgressProxy, target: URL, upstream: string): UpstreamError | undefined {
  const e = err as { code?: unknown; message?: unknown; cause?: { code?: unknown } } | null | undefined;
  const code = [e?.code, e?.cause?.code].find((c): c is string => typeof c === 'string');
  const where = `the egress proxy ${new URL(proxy.url).host} (${proxy.variable})`;
  const forWhom = `for upstream ${upstream}`;
  if (code !== undefined && PROXY_CONNECT_CODES.has(code)) return new UpstreamError('unreachable', `${where} is unreachable (${code}) ${forWhom}`);
  if (code === EGRESS_PROXY_TLS) {
    const tls = String((e as { tlsCode?: unknown }).tlsCode);
    return new UpstreamError('unreachable', `${proxyTlsFailure(tls, where)} ${forWhom}${proxyTlsAdvice(tls)}`);
  }
  if (code !== undefined && CUT_CODES.has(code)) return new UpstreamError('unreachable', `upstream ${upstream} is unreachable through ${where}: the connection was cut (${code}), by the proxy or by the upstream behind it`);
  const refused = typeof e?.message === 'string' ? TUNNEL_REFUSED.exec(e.message) : null;
  if (!refused) return undefined;
  const status = Number(refused[1]);
  const hasCredentials = new URL(proxy.url).username !== '';
  const why =
    status === 407
      ? hasCredentials
        ? `refused the credentials in ${proxy.variable}'s URL (407)`
        : `wants credentials (407): put them in ${proxy.variable}'s URL, http://user:password@host:port`
      : status === 403
        ? 'refused it (403): its allow-list may lack that host'
        : `answered ${status}`;
  return new UpstreamError('unreachable', `${where} did not open a tunnel to ${target.host} ${forWhom}: it ${why}`);
}

/** What failed in the TLS with an https:// egress proxy. */
function proxyTlsFailure(tls: string, where: string): string {
  if (tls === 'ERR_TLS_CERT_ALTNAME_INVALID') return `${where} has a TLS certificate for another name (${tls})`;
  if (tls === 'CERT_HAS_EXPIRED' || tls === 'CERT_NOT_YET_VALID') return `${where} has a TLS certificate out of its dates (${tls})`;
  if (isCertificateFailure(tls)) return `${where} has a TLS certificate Wharf does not trust (${tls})`;
  return `the TLS handshake with ${where} failed (${tls})`;
}

/** What to do about it, where one thing is the likely fix. */
function proxyTlsAdvice(tls: string): string {
  if (tls === 'ERR_TLS_CERT_ALTNAME_INVALID' || tls === 'CERT_HAS_EXPIRED' || tls === 'CERT_NOT_YET_VALID') return '';
  if (isCertificateFailure(tls)) return ': give Wharf its CA in NODE_EXTRA_CA_CERTS (a PEM file, read at start)';
  // OpenSSL's "wrong version number": TLS spoken to a server that answered in plain HTTP.
  if (tls === 'EPROTO' || tls === 'ERR_SSL_WRONG_VERSION_NUMBER') return ': a proxy that speaks plain HTTP is written http://';
  return '';
}
