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
  ['fec0::', 10],
  ['ff00::', 8],
] as const) {
  INTERNAL.addSubnet(net, prefix, 'ipv6');
}

/**
 * Whether `address` (an IPv4 or IPv6 address) is on the internet. An IPv6 address that carries an
 * IPv4 one (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96` and the local-use `64:ff9b:1::/48`,
 * 6to4 `2002::/16`) is that IPv4 one.
 */
export function isPublicAddress(address: string): boolean {
  const ip = address.replace(/^\[(.*)\]$/, '$1').replace(/%.*$/, '');
  const family = isIP(ip);
  if (family === 0) return false;
  if (family === 4) return !INTERNAL.check(ip, 'ipv4');
  const carried = carriedIPv4(ip);
  if (carried) return !INTERNAL.check(carried, 'ipv4');
  return !INTERNAL.check(ip, 'ipv6');
}

/**
 * The IPv4 address an IPv6 one carries (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96` and the
 * local-use `64:ff9b:1::/48`, 6to4 `2002::/16`), or undefined. `ip`: an IPv6 address without a zone.
 */
export function carriedIPv4(ip: string): string | undefined {
  const groups = ipv6Groups(ip);
  const prefix = groups.slice(0, 6).map((g) => g.toString(16)).join(':');
  const pair =
    prefix === '0:0:0:0:0:ffff' || prefix === '64:ff9b:0:0:0:0' || prefix.startsWith('64:ff9b:1:')
      ? [groups[6]!, groups[7]!]
      : groups[0] === 0x2002
        ? [groups[1]!, groups[2]!]
        : undefined;
  return pair && `${pair[0]! >> 8}.${pair[0]! & 255}.${pair[1]! >> 8}.${pair[1]! & 255}`;
}

/** The eight 16-bit groups of an IPv6 address (one isIP takes), an embedded IPv4 tail included. */
export function ipv6Groups(ip: string): number[] {
  const parse = (text: string): number[] =>
    text === ''
      ? []
      : text.split(':').flatMap((g) => {
          if (!g.includes('.')) return [Number.parseInt(g, 16)];
          const [a, b, c, d] = g.split('.').map(Number) as [number, number, number, number];
          return [(a << 8) | b, (c << 8) | d];
        });
  const [head = '', tail] = ip.split('::');
  const front = parse(head);
  if (tail === undefined) return front;
  const back = parse(tail);
  return [...front, ...Array<number>(8 - front.length - back.length).fill(0), ...back];
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
