/** Default ports by scheme, for entries of NO_PROXY that name one. */
const DEFAULT_PORTS: Readonly<Record<string, number>> = { 'http:': 80, 'https:': 443 };

/**
 * Whether NO_PROXY sends a request to `url` straight rather than through the egress proxy, as undici's
 * EnvHttpProxyAgent decides it (so a host is proxied exactly when undici would proxy it): `*` for
 * every host; else entries separated by commas or spaces, each a host (a leading `.` or `*.` is
 * dropped) that matches itself and its subdomains, with an optional `:port` that must match too.
 */
export function bypassesProxy(noProxy: string | undefined, url: URL): boolean {
  if (!noProxy) return false;
  if (noProxy === '*') return true;
  // The host without its port; an IPv6 address keeps its brackets, as in the entries.
  const host = url.host.replace(/:\d*$/, '').toLowerCase();
  const port = Number.parseInt(url.port, 10) || DEFAULT_PORTS[url.protocol] || 0;
  for (const entry of noProxy.split(/[,\s]/)) {
    if (!entry) continue;
    const parsed = /^(.+):(\d+)$/.exec(entry);
    const name = (parsed ? parsed[1]! : entry).replace(/^\*?\./, '').toLowerCase();
    if (parsed && Number.parseInt(parsed[2]!, 10) !== port) continue;
    if (host === name || host.endsWith(`.${name}`)) return true;
  }
  return false;
}
