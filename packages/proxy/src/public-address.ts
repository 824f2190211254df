import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';

/**
 * Addresses that are no place on the internet: this machine, its networks, link-local (a cloud's
 * metadata service at 169.254.169.254), and the reserved ranges. A public upstream's redirect may not
 * send Wharf to one: Wharf would fetch from inside the network on a third party's word and pass the
 * bytes (or the size, or a refusal naming the port) to whoever pulled.
 */
const INTERNAL = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 3],
] as const) {
  INTERNAL.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 128],
  ['::1', 128],
  ['fc00::', 7],
  ['fe80::', 10],
  ['ff00::', 8],
] as const) {
  INTERNAL.addSubnet(net, prefix, 'ipv6');
}

/** Whether `address` (an IPv4 or IPv6 address) is on the internet. An IPv4-mapped IPv6 address is its IPv4 one. */
export function isPublicAddress(address: string): boolean {
  const bare = address.replace(/^\[(.*)\]$/, '$1').replace(/%.*$/, '');
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(bare);
  const ip = mapped ? mapped[1]! : bare;
  const family = isIP(ip);
  if (family === 0) return false;
  return !INTERNAL.check(ip, family === 4 ? 'ipv4' : 'ipv6');
}

/**
 * Whether the host (a name or an address) is public: every address it resolves to is. A name that
 * does not resolve counts as public (it is reached by nothing either way).
 */
export async function isPublicHost(host: string): Promise<boolean> {
  const bare = host.replace(/^\[(.*)\]$/, '$1');
  if (isIP(bare)) return isPublicAddress(bare);
  try {
    const addresses = await lookup(bare, { all: true });
    return addresses.every((a) => isPublicAddress(a.address));
  } catch {
    return true;
  }
}

/** The error of a connection refused for its address (see PlainOptions.allowAddress). */
export class AddressRefused extends Error {
  override name = 'AddressRefused';
  readonly code = 'ERR_ADDRESS_REFUSED';
  constructor(
    readonly host: string,
    readonly address: string,
  ) {
    super(`${host} is at ${address}, an address inside the network`);
  }
}
