import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';
import { isLoopback } from './loopback.js';

/** Headers a reverse proxy adds to name the client it forwards for (RFC 7239, and the de facto two). */
const FORWARDING_HEADERS = ['forwarded', 'x-forwarded-for', 'x-real-ip'] as const;

/**
 * Who sent a request: the peer, or, when the peer is one of `trusted_proxies`, the client that its
 * `X-Forwarded-For` names (the last address in it that is not a trusted proxy itself: the addresses
 * before it are the client's own word). Login limits, the request log and every "local clients only"
 * rule go by it.
 *
 * A request forwarded by a proxy that is not trusted is not a local one even when that proxy runs on
 * this machine: a TLS proxy in front of Wharf on the same host must not make every client of the
 * internet a loopback client (of /metrics, of the proxy with auth off, of `/admin` with auth off).
 */
export class ClientAddresses {
  private readonly trusted = new BlockList();
  private readonly anyTrusted: boolean;

  /** `trustedProxies`: addresses and CIDR ranges, validated by `parseNetworks`. */
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
    if (!isLoopback(peer)) return false;
    if (!FORWARDING_HEADERS.some((h) => req.headers[h] !== undefined)) return true;
    // Forwarded: local only when a trusted proxy here says its own client was on this machine too.
    if (!this.isTrusted(peer!)) return false;
    const client = this.forwardedClient(req);
    return client !== undefined && isLoopback(client);
  }

  /**
   * The client X-Forwarded-For names: read right to left (each proxy appends its own peer), the first
   * address that is not a trusted proxy. Undefined without the header, or with an entry that is not
   * an address where a proxy would have written one.
   */
  private forwardedClient(req: IncomingMessage): string | undefined {
    const header = req.headers['x-forwarded-for'];
    if (header === undefined) return undefined;
    const hops = (Array.isArray(header) ? header.join(',') : header)
      .split(',')
      .map((h) => h.trim())
      .filter((h) => h !== '');
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i]!;
      if (isIP(hop) === 0) return undefined;
      if (!this.isTrusted(hop)) return hop;
    }
    return hops[0];
  }

  private isTrusted(address: string): boolean {
    if (!this.anyTrusted) return false;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped) return this.trusted.check(mapped[1]!, 'ipv4');
    const family = isIP(address);
    return family !== 0 && this.trusted.check(address, family === 4 ? 'ipv4' : 'ipv6');
  }
}

/** Adds an address ("10.0.0.7", "::1") or a CIDR range ("10.0.0.0/8") to `list`; throws on anything else. */
function addNetwork(list: BlockList, text: string): void {
  const [address, bits, extra] = text.split('/');
  const family = isIP(address ?? '');
  if (family === 0 || extra !== undefined) throw new Error(`not an IP address or CIDR range: ${JSON.stringify(text)}`);
  const type = family === 4 ? 'ipv4' : 'ipv6';
  if (bits === undefined) {
    list.addAddress(address!, type);
    return;
  }
  const prefix = /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
  if (!(prefix <= (family === 4 ? 32 : 128))) throw new Error(`not an IP address or CIDR range: ${JSON.stringify(text)}`);
  list.addSubnet(address!, prefix, type);
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
