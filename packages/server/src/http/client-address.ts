import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';
import { isLoopback } from './loopback.js';

/**
 * Headers a proxy adds to what it forwards (RFC 7239's, RFC 9110's Via, and the de facto ones, those
 * of CDNs and tunnels among them: a Cloudflare Tunnel on this host sends only CF-Connecting-IP): any
 * of them says the request was forwarded for someone else.
 */
const FORWARDING_HEADERS = [
  'forwarded',
  'x-forwarded-for',
  'x-real-ip',
  'via',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-forwarded',
  'forwarded-for',
  'x-client-ip',
  'x-cluster-client-ip',
  'cf-connecting-ip',
  'true-client-ip',
  'fastly-client-ip',
] as const;

/**
 * Who sent a request: the peer, or, when the peer is one of `trusted_proxies`, the client that its
 * `X-Forwarded-For` names (the last address in it that is not a trusted proxy itself: the addresses
 * before it are the client's own word). Login limits, the known addresses and the request log go by it.
 *
 * "Local clients only" (/metrics without a token, `/admin` and the dependency proxy with auth off)
 * goes by the peer alone: a loopback peer that is no trusted proxy and names nobody else in a
 * forwarding header. A TLS proxy in front of Wharf on the same host must not make every client of the
 * internet a loopback client, and what a forwarding header says of a loopback client may have been
 * written by the client itself (a client inside a trusted range, a proxy that passes the header on).
 */
export class ClientAddresses {
  private readonly trusted = new BlockList();
  private readonly anyTrusted: boolean;

  /** `trustedProxies`: addresses and CIDR ranges (see invalidNetwork); throws on anything else. */
  constructor(trustedProxies: readonly string[] = []) {
    for (const net of trustedProxies) addNetwork(this.trusted, net);
    this.anyTrusted = trustedProxies.length > 0;
  }

  /** The client's address (undefined for a socket already gone). */
  of(req: IncomingMessage): string | undefined {
    const peer = req.socket.remoteAddress;
    if (!peer || !this.isTrusted(peer)) return peer;
    return this.forwardedClient(req) ?? peer;
  }

  /** Whether the request comes from this machine itself, not forwarded for someone else. */
  isLocal(req: IncomingMessage): boolean {
    const peer = req.socket.remoteAddress;
    if (!isLoopback(peer) || this.isTrusted(peer!)) return false;
    return !FORWARDING_HEADERS.some((h) => req.headers[h] !== undefined);
  }

  /**
   * The client X-Forwarded-For names: read right to left (each proxy appends its own peer), the first
   * address that is not a trusted proxy; when every one is, the last (what the nearest proxy saw: the
   * ones before it may be the client's own word). Undefined without the header, or with an entry
   * that is not an address where a proxy would have written one.
   */
  private forwardedClient(req: IncomingMessage): string | undefined {
    const header = req.headers['x-forwarded-for'];
    if (header === undefined) return undefined;
    const hops = (Array.isArray(header) ? header.join(',') : header)
      .split(',')
      .map((h) => h.trim())
      .filter((h) => h !== '');
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = bareAddress(hops[i]!);
      if (hop === undefined) return undefined;
      hops[i] = hop;
      if (!this.isTrusted(hop)) return hop;
    }
    return hops[hops.length - 1];
  }

  private isTrusted(address: string): boolean {
    if (!this.anyTrusted) return false;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped) return this.trusted.check(mapped[1]!, 'ipv4');
    const family = isIP(address);
    return family !== 0 && this.trusted.check(address, family === 4 ? 'ipv4' : 'ipv6');
  }
}

/** The address of an X-Forwarded-For entry: bare, or with a port ("1.2.3.4:5678", "[2001:db8::1]:443"); undefined for anything else. */
function bareAddress(entry: string): string | undefined {
  const m = /^\[([0-9a-fA-F:.]+)\](?::\d{1,5})?$/.exec(entry) ?? /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/.exec(entry);
  const address = m ? m[1]! : entry;
  return isIP(address) === 0 ? undefined : address;
}

/** Adds an address ("10.0.0.7", "::1") or a CIDR range ("10.0.0.0/8") to `list`; throws on anything else. */
function addNetwork(list: BlockList, text: string): void {
  const [address, bits, extra] = text.split('/');
  const family = isIP(address ?? '');
  // A zone (fe80::1%eth0) never matches a peer's address as node gives it.
  if (family === 0 || extra !== undefined || text.includes('%')) throw new Error(`not an IP address or CIDR range: ${JSON.stringify(text)}`);
  const type = family === 4 ? 'ipv4' : 'ipv6';
  if (bits === undefined) {
    list.addAddress(address!, type);
    return;
  }
  const prefix = /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
  if (!(prefix <= (family === 4 ? 32 : 128))) throw new Error(`not an IP address or CIDR range: ${JSON.stringify(text)}`);
  const range = new BlockList();
  range.addSubnet(address!, prefix, type);
  // A range of most of the internet makes every client a proxy, free to name itself anything.
  if (tooWide(range, family, address!, prefix)) throw new Error(`${JSON.stringify(text)} would trust addresses far beyond your proxies'; list your proxies' addresses, or a private range such as "10.0.0.0/8"`);
  list.addSubnet(address!, prefix, type);
}

/** The widest IPv6 range taken outside unique local addresses: a /32, a whole provider's. */
const WIDEST_IPV6_PREFIX = 32;
/** IPv6's ranges that never leave a site or a link, taken whole: fc00::/7 (unique local) and fe80::/10 (link-local). */
const PRIVATE_IPV6 = [
  { network: 'fc00::', prefix: 7 },
  { network: 'fe80::', prefix: 10 },
].map(({ network, prefix }) => {
  const list = new BlockList();
  list.addSubnet(network, prefix, 'ipv6');
  return { list, prefix };
});

/**
 * Whether `range` (one subnet of `address`) spans more than one /8 of IPv4 addresses, itself or as
 * IPv4-mapped IPv6 addresses ("::ffff:0:0/96" and "::/8" hold all of IPv4), or is an IPv6 range
 * wider than a /32 outside fc00::/7 and fe80::/10. 10.0.0.0/8, fc00::/7 and fe80::/10 pass.
 */
/** Whether the range address/prefix lies inside fc00::/7 or fe80::/10. */
function privateRange(address: string, prefix: number): boolean {
  return PRIVATE_IPV6.some((p) => prefix >= p.prefix && p.list.check(address, 'ipv6'));
}

function tooWide(range: BlockList, family: number, address: string, prefix: number): boolean {
  if (family === 6 && prefix < WIDEST_IPV6_PREFIX && !privateRange(address, prefix)) return true;
  let firstOctets = 0;
  for (let octet = 0; octet < 256 && firstOctets < 2; octet++) if (range.check(`${octet}.0.0.1`, 'ipv4')) firstOctets++;
  return firstOctets > 1;
}

/** Checks `values` are addresses or CIDR ranges; the message of the first that is not, else undefined. */
export function invalidNetwork(values: readonly string[]): string | undefined {
  const probe = new BlockList();
  for (const v of values) {
    try {
      addNetwork(probe, v);
    } catch (err) {
      return (err as Error).message;
    }
  }
  return undefined;
}

/** Who sent a request, as `ClientAddresses` tells it. */
export interface Client {
  readonly address: string | undefined;
  /** This machine itself, not forwarded for another (see ClientAddresses.isLocal). */
  readonly local: boolean;
}

const CLIENT = Symbol('wharf.client');
const UNTRUSTING = new ClientAddresses();

/** Records who sent `req` once, as it arrives (the listener does, before any route reads it). */
export function stampClient(req: IncomingMessage, addresses: ClientAddresses): Client {
  const client: Client = { address: addresses.of(req), local: addresses.isLocal(req) };
  (req as IncomingMessage & { [CLIENT]?: Client })[CLIENT] = client;
  return client;
}

/** Who sent `req`: as stamped, or with no proxy trusted (an app built without the listener, in tests). */
export function clientOf(req: IncomingMessage): Client {
  return (req as IncomingMessage & { [CLIENT]?: Client })[CLIENT] ?? stampClient(req, UNTRUSTING);
}
