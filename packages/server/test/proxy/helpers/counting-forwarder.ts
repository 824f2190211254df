import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';

interface Throttle {
  readonly match: RegExp;
  /** Bytes per second of the response body. */
  readonly rate: number;
}

/** Delays a body so it flows at about `rate` bytes per second, in 64 KiB steps. */
class Throttled extends Transform {
  private readonly started = Date.now();
  private sent = 0;

  constructor(private readonly rate: number) {
    super({ highWaterMark: 64 * 1024 });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    const step = 64 * 1024;
    const pushSlices = (at: number): void => {
      if (at >= chunk.length) return done();
      const slice = chunk.subarray(at, at + step);
      this.sent += slice.length;
      this.push(slice);
      const due = this.started + (this.sent / this.rate) * 1000 - Date.now();
      setTimeout(() => pushSlices(at + step), Math.max(0, due));
    };
    pushSlices(0);
  }
}

/**
 * A tiny HTTP forwarder between the proxy and its real upstream: counts requests by "METHOD path",
 * can throttle chosen response bodies, and can play dead (every connection reset at once).
 */
export class CountingForwarder {
  url = '';
  host = '';
  readonly seen: { method: string; path: string; at: number; range?: string }[] = [];
  /** Response body bytes sent, by path. */
  readonly bytesOut = new Map<string, number>();
  throttle: Throttle | undefined;
  /** When set, every connection is destroyed on arrival (the upstream is down). */
  down = false;
  private server!: Server;
  private readonly sockets = new Set<Socket>();

  private constructor(private readonly target: string) {}

  static async start(target: string): Promise<CountingForwarder> {
    const fwd = new CountingForwarder(target);
    fwd.server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0]!;
      fwd.seen.push({ method: req.method!, path, at: Date.now(), ...(req.headers.range ? { range: req.headers.range } : {}) });
      const target = new URL(req.url ?? '/', fwd.target);
      const out = request(target, { method: req.method, headers: { ...req.headers, host: target.host } }, (up: IncomingMessage) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.on('data', (chunk: Buffer) => fwd.bytesOut.set(path, (fwd.bytesOut.get(path) ?? 0) + chunk.length));
        const throttle = fwd.throttle && fwd.throttle.match.test(path) ? new Throttled(fwd.throttle.rate) : undefined;
        (throttle ? pipeline(up, throttle, res) : pipeline(up, res)).catch(() => res.destroy());
      });
      out.on('error', () => res.socket?.destroy());
      pipeline(req, out).catch(() => res.socket?.destroy());
    });
    fwd.server.on('connection', (socket: Socket) => {
      if (fwd.down) return void socket.destroy();
      fwd.sockets.add(socket);
      socket.once('close', () => fwd.sockets.delete(socket));
    });
    await new Promise<void>((resolve) => fwd.server.listen(0, '127.0.0.1', resolve));
    fwd.host = `127.0.0.1:${(fwd.server.address() as AddressInfo).port}`;
    fwd.url = `http://${fwd.host}`;
    return fwd;
  }

  /** Requests seen for `METHOD path`. */
  count(method: string, path: string): number {
    return this.seen.filter((r) => r.method === method && r.path === path).length;
  }

  /** Plays dead: open connections are cut and new ones reset. */
  setDown(down: boolean): void {
    this.down = down;
    if (down) for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
