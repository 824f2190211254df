import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Digest } from '@wharf/registry-core';
import { HttpUpstream } from '../src/http-upstream.js';
import { MirroredUpstream, stripeSizeFor, type MirrorOptions } from '../src/mirrors.js';
import { UpstreamError } from '../src/upstream.js';

const BLOB = randomBytes(3 * 1024 * 1024 + 123);
const DIGEST = `sha256:${createHash('sha256').update(BLOB).digest('hex')}` as Digest;
const MANIFEST = Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}');
const MANIFEST_DIGEST = `sha256:${createHash('sha256').update(MANIFEST).digest('hex')}`;

interface Mirror {
  url: string;
  server: Server;
  /** Requests seen, as "METHOD path [range]". */
  log: string[];
  delayMs: number;
  /**
   * cut: a whole-blob body stops after 1 MiB, and ranges fail (500); ignore-range: a range request gets
   * the whole blob with 200, slowly; corrupt-range: ranges come with one byte flipped; cut-ranges: a
   * range's body stops half-way (each time: its client's resumes too); stall-body: a whole-blob body
   * stops after 1 MiB and the connection stays open, silent; trickle-body: a whole-blob body sends
   * 1 MiB, then 16 bytes every 20 ms (never silent for long), ranges too.
   */
  mode: 'ok' | 'fail' | 'missing' | 'cut' | 'cut-resumable' | 'ignore-range' | 'corrupt-range' | 'cut-ranges' | 'stall-body' | 'trickle-body' | 'cut-probe' | 'ignore-stripes' | 'wrong-total';
  /** Blob bytes written to sockets, ranges and whole bodies alike. */
  sent: number;
}

/** A real registry-shaped HTTP server that serves one blob and one manifest, with a delay or a failure. */
async function startMirror(): Promise<Mirror> {
  const mirror = { log: [] as string[], delayMs: 0, mode: 'ok', sent: 0 } as Mirror;
  mirror.server = createServer((req, res) => {
    mirror.log.push(`${req.method} ${req.url}${req.headers.range ? ` ${req.headers.range}` : ''}`);
    setTimeout(() => {
      if (res.destroyed) return;
      if (mirror.mode === 'fail') {
        res.writeHead(500).end();
        return;
      }
      if (mirror.mode === 'missing') {
        res.writeHead(404).end();
        return;
      }
      if (req.url?.includes('/tags/list')) {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"name":"lib/app","tags":["1"]}');
        return;
      }
      if (req.url?.includes('/referrers/')) {
        const manifests = [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: MANIFEST_DIGEST, size: MANIFEST.length }];
        res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json' }).end(JSON.stringify({ schemaVersion: 2, manifests }));
        return;
      }
      if (req.url?.includes('/manifests/')) {
        res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'docker-content-digest': MANIFEST_DIGEST, 'content-length': MANIFEST.length });
        res.end(req.method === 'HEAD' ? undefined : MANIFEST);
        return;
      }
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (mirror.mode === 'trickle-body' && req.method === 'GET' && req.url?.includes('/blobs/')) {
        const start = m ? Number(m[1]) : 0;
        const end = m ? Math.min(Number(m[2]), BLOB.length - 1) : BLOB.length - 1;
        res.writeHead(m ? 206 : 200, { 'content-length': end - start + 1, ...(m ? { 'content-range': `bytes ${start}-${end}/${BLOB.length}` } : {}) });
        let at = Math.min(end + 1, start + (m ? 0 : 1024 * 1024));
        mirror.sent += at - start;
        res.write(BLOB.subarray(start, at));
        const timer = setInterval(() => {
          if (res.destroyed || at > end) return void clearInterval(timer);
          res.write(BLOB.subarray(at, Math.min(end + 1, at + 16)));
          mirror.sent += Math.min(end + 1, at + 16) - at;
          at += 16;
        }, 20);
        res.on('close', () => clearInterval(timer));
        return;
      }
      if (m && mirror.mode === 'cut') {
        res.writeHead(500).end();
        return;
      }
      const probe = req.headers.range === 'bytes=0-0';
      if (m && probe && mirror.mode === 'cut-probe') {
        // The size probe's head, then the connection closed before its byte (each resume too).
        res.writeHead(206, { 'content-length': 1, 'content-range': `bytes 0-0/${BLOB.length}` });
        res.flushHeaders();
        setTimeout(() => res.destroy(), 5);
        return;
      }
      if (m && (mirror.mode !== 'ignore-range' && (mirror.mode !== 'ignore-stripes' || probe))) {
        const start = Number(m[1]);
        const end = Math.min(Number(m[2]), BLOB.length - 1);
        const total = mirror.mode === 'wrong-total' && probe ? BLOB.length + 7 : BLOB.length;
        res.writeHead(206, { 'content-length': end - start + 1, 'content-range': `bytes ${start}-${end}/${total}` });
        const bytes = Buffer.from(BLOB.subarray(start, end + 1));
        if (mirror.mode === 'corrupt-range') bytes[0] = bytes[0]! ^ 0xff;
        if (mirror.mode === 'cut-ranges' && bytes.length > 1) {
          const half = Math.floor(bytes.length / 2);
          mirror.sent += half;
          res.write(bytes.subarray(0, half), () => res.destroy());
          return;
        }
        mirror.sent += bytes.length;
        res.end(bytes);
        return;
      }
      res.writeHead(200, { 'content-length': BLOB.length });
      if (req.method === 'HEAD') {
        res.end();
      } else if (mirror.mode === 'stall-body') {
        mirror.sent += 1024 * 1024;
        res.write(BLOB.subarray(0, 1024 * 1024));
      } else if (mirror.mode === 'cut' || mirror.mode === 'cut-resumable' || mirror.mode === 'ignore-range' || mirror.mode === 'ignore-stripes') {
        // 64 KiB at a time: what a reader takes before it cuts the connection is what was sent.
        const step = 64 * 1024;
        const limit = mirror.mode === 'ignore-range' || mirror.mode === 'ignore-stripes' ? BLOB.length : 1024 * 1024;
        let at = 0;
        const next = (): void => {
          if (res.destroyed) return;
          if (at >= limit) {
            if (mirror.mode !== 'ignore-range' && mirror.mode !== 'ignore-stripes') res.destroy();
            else res.end();
            return;
          }
          const piece = BLOB.subarray(at, Math.min(limit, at + step));
          at += piece.length;
          mirror.sent += piece.length;
          res.write(piece, () => setTimeout(next, 2));
        };
        next();
      } else {
        mirror.sent += BLOB.length;
        res.end(BLOB);
      }
    }, mirror.delayMs);
  });
  await new Promise<void>((r) => mirror.server.listen(0, '127.0.0.1', r));
  mirror.url = `http://127.0.0.1:${(mirror.server.address() as AddressInfo).port}`;
  return mirror;
}

async function readAll(body: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

describe('mirror strategies', () => {
  const mirrors: Mirror[] = [];
  beforeAll(async () => {
    for (let i = 0; i < 3; i++) mirrors.push(await startMirror());
  });
  afterAll(async () => {
    for (const m of mirrors) {
      m.server.closeAllConnections();
      await new Promise((r) => m.server.close(r));
    }
  });
  function reset(): void {
    for (const m of mirrors) {
      m.log.length = 0;
      m.delayMs = 0;
      m.mode = 'ok';
      m.sent = 0;
    }
  }
  function upstream(options: MirrorOptions): MirroredUpstream {
    return new MirroredUpstream(
      mirrors.map((m) => new HttpUpstream({ name: 'up', url: m.url, retries: 0 })),
      options,
    );
  }

  test('failover tries mirrors in order and moves past a failing one', async () => {
    reset();
    mirrors[0]!.mode = 'fail';
    const blob = await upstream({ strategy: 'failover' }).blob('lib/app', DIGEST);
    expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
    expect(mirrors[0]!.log).toHaveLength(1);
    expect(mirrors[1]!.log).toHaveLength(1);
    expect(mirrors[2]!.log).toHaveLength(0);
  });

  test('failover asks a mirror that failed after the others for a while, then first again', async () => {
    reset();
    mirrors[0]!.mode = 'fail';
    const up = upstream({ strategy: 'failover', failMemory: 1000 });
    for (let pull = 0; pull < 3; pull++) expect((await up.manifest('lib/app', '1'))?.bytes.equals(MANIFEST)).toBe(true);
    // Asked once: the next requests went straight to mirror 1, without paying for mirror 0's failure.
    expect(mirrors[0]!.log).toHaveLength(1);
    expect(mirrors[1]!.log).toHaveLength(3);
    mirrors[0]!.mode = 'ok';
    await new Promise((r) => setTimeout(r, 1100));
    expect((await up.manifest('lib/app', '1'))?.bytes.equals(MANIFEST)).toBe(true);
    expect(mirrors[0]!.log).toHaveLength(2);
    expect(up.order()).toEqual([0, 1, 2]);
  });

  test('a blob body read a while after the mirror answered still holds every byte', async () => {
    reset();
    for (const strategy of ['failover', 'hedged', 'adaptive'] as const) {
      const blob = await upstream({ strategy, hedgeDelay: 1000 }).blob('lib/app', DIGEST);
      // The fill reads only once its temp file is open: nothing may flow away meanwhile.
      await new Promise((r) => setTimeout(r, 100));
      expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
    }
  });

  test('failover passes a 404 on to the next mirror and answers absent only when all lack it', async () => {
    reset();
    mirrors[0]!.mode = 'missing';
    expect(await upstream({ strategy: 'failover' }).manifest('lib/app', '1')).toBeDefined();
    for (const m of mirrors) m.mode = 'missing';
    expect(await upstream({ strategy: 'failover' }).manifest('lib/app', '1')).toBeUndefined();
  });

  test('tag lists and referrers fail over like manifests', async () => {
    reset();
    mirrors[0]!.mode = 'fail';
    mirrors[1]!.mode = 'missing';
    const up = upstream({ strategy: 'failover' });
    expect((await up.tags('lib/app', {}))?.tags).toEqual(['1']);
    expect(await up.referrers('lib/app', MANIFEST_DIGEST as Digest)).toEqual([{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: MANIFEST_DIGEST, size: MANIFEST.length }]);
    expect(mirrors[2]!.log).toEqual(['GET /v2/lib/app/tags/list', `GET /v2/lib/app/referrers/${MANIFEST_DIGEST}`]);
  });

  test("a mirror's 404 does not make absent what the others failed to answer: their error is thrown", async () => {
    for (const strategy of ['failover', 'hedged', 'adaptive'] as const) {
      reset();
      mirrors[0]!.mode = 'fail';
      mirrors[1]!.mode = 'missing';
      mirrors[2]!.mode = 'missing';
      // The pull-through side serves a cached copy with a Warning on an error; undefined would be a 404.
      await expect(upstream({ strategy, hedgeDelay: 50 }).manifest('lib/app', '1')).rejects.toMatchObject({ failure: 'server-error' });
      await expect(upstream({ strategy, hedgeDelay: 50 }).blob('lib/app', DIGEST)).rejects.toMatchObject({ failure: 'server-error' });
    }
  });

  test('a blob body that stalls mid-way goes on from the next mirror, not from the stalled one (an idle timeout per resume)', async () => {
    reset();
    mirrors[0]!.mode = 'stall-body';
    const quick = { connect: 1_000, firstByte: 1_000, idle: 300 };
    const up = new MirroredUpstream(
      mirrors.map((m) => new HttpUpstream({ name: 'up', url: m.url, retries: 0, timeouts: quick })),
      { strategy: 'failover' },
    );
    const blob = await up.blob('lib/app', DIGEST);
    expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
    const rest = `GET /v2/lib/app/blobs/${DIGEST} bytes=${1024 * 1024}-${BLOB.length - 1}`;
    expect(mirrors[0]!.log).toEqual([`GET /v2/lib/app/blobs/${DIGEST}`]);
    expect(mirrors[1]!.log).toEqual([rest]);
  });

  test('a blob body that trickles mid-way (slower than min_speed, never silent) goes on from the next mirror', async () => {
    reset();
    mirrors[0]!.mode = 'trickle-body';
    const quick = { connect: 1_000, firstByte: 1_000, idle: 300, minSpeed: 64 * 1024 };
    const up = new MirroredUpstream(
      mirrors.map((m) => new HttpUpstream({ name: 'up', url: m.url, retries: 0, timeouts: quick })),
      { strategy: 'failover' },
    );
    const blob = await up.blob('lib/app', DIGEST);
    expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
    expect(mirrors[0]!.log).toEqual([`GET /v2/lib/app/blobs/${DIGEST}`]);
    expect(mirrors[1]!.log).toEqual([expect.stringMatching(new RegExp(`^GET /v2/lib/app/blobs/${DIGEST} bytes=10\\d{5}-${BLOB.length - 1}$`))]);
  });

  test('a blob body cut mid-way goes on from the next mirror with a range for the rest', async () => {
    for (const strategy of ['failover', 'hedged', 'adaptive'] as const) {
      reset();
      mirrors[0]!.mode = 'cut';
      // adaptive: mirror 0 answers first (the others are slower), so it is the one that cuts.
      mirrors[1]!.delayMs = 20;
      mirrors[2]!.delayMs = 20;
      const blob = await upstream({ strategy, hedgeDelay: 1000, probeRate: 0 }).blob('lib/app', DIGEST);
      expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
      // The mirror's own client asks it for the rest first (a reset is mostly the connection's fault).
      const rest = `GET /v2/lib/app/blobs/${DIGEST} bytes=${1024 * 1024}-${BLOB.length - 1}`;
      expect(mirrors[0]!.log).toEqual([`GET /v2/lib/app/blobs/${DIGEST}`, rest]);
      expect(mirrors[1]!.log).toEqual([rest]);
    }
  });

  test('adaptive puts a mirror that cut a body after the others, though it answers fastest', async () => {
    reset();
    mirrors[1]!.delayMs = 150;
    mirrors[2]!.delayMs = 300;
    const up = upstream({ strategy: 'adaptive', probeRate: 0 });
    // Every mirror measured first (each answers 404 in turn), then a whole blob from mirror 0, the
    // fastest: by latency and throughput it is the best, and stays so whatever it does next.
    for (const m of mirrors) m.mode = 'missing';
    expect(await up.manifest('lib/app', '1')).toBeUndefined();
    for (const m of mirrors) m.mode = 'ok';
    expect((await readAll((await up.blob('lib/app', DIGEST))!.body)).equals(BLOB)).toBe(true);
    mirrors[0]!.mode = 'cut';
    for (let pull = 0; pull < 3; pull++) {
      const blob = await up.blob('lib/app', DIGEST);
      expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
      // Quick answers from the cutting mirror in between (manifests) do not bring it back first.
      await up.manifest('lib/app', '1');
    }
    const whole = (m: Mirror) => m.log.filter((l) => l === `GET /v2/lib/app/blobs/${DIGEST}`).length;
    // Mirror 0's whole blob and its one cut, then every blob from the other mirrors.
    expect(whole(mirrors[0]!)).toBe(2);
    expect(whole(mirrors[1]!) + whole(mirrors[2]!)).toBe(2);
  });

  test('adaptive puts a mirror that cuts bodies after the others also when it serves the rest as a range itself', async () => {
    reset();
    // Whole-blob bodies cut at 1 MiB, ranges served: the mirror's own client resumes, the blob is whole.
    mirrors[0]!.mode = 'cut-resumable';
    // Far apart, as in the test above: at 20 and 40 ms a busy machine once measured mirror 1 faster
    // than mirror 0 (a first connection, a collection), and the first pull went there.
    mirrors[1]!.delayMs = 150;
    mirrors[2]!.delayMs = 300;
    const up = new MirroredUpstream(
      mirrors.map((m) => new HttpUpstream({ name: 'up', url: m.url, retries: 0 })),
      { strategy: 'adaptive', probeRate: 0 },
    );
    // Every mirror measured first (each answers 404 in turn): mirror 0 is the fastest.
    for (const m of mirrors) m.mode = 'missing';
    expect(await up.manifest('lib/app', '1')).toBeUndefined();
    mirrors[0]!.mode = 'cut-resumable';
    mirrors[1]!.mode = 'ok';
    mirrors[2]!.mode = 'ok';
    for (let pull = 0; pull < 3; pull++) {
      const blob = await up.blob('lib/app', DIGEST);
      expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
    }
    const whole = (m: Mirror) => m.log.filter((l) => l === `GET /v2/lib/app/blobs/${DIGEST}`).length;
    // The first pull cut and resumed on mirror 0; the next ones went to mirror 1.
    expect(whole(mirrors[0]!)).toBe(1);
    expect(whole(mirrors[1]!)).toBe(2);
    expect(up.order().at(-1)).toBe(0);
  });

  test('adaptive: a mirror that cut a body ranks first again once the cut is old enough', async () => {
    reset();
    mirrors[0]!.mode = 'cut';
    // Far apart, so that a busy machine's own delays do not reorder them.
    mirrors[1]!.delayMs = 100;
    mirrors[2]!.delayMs = 200;
    const up = upstream({ strategy: 'adaptive', probeRate: 0, cutMemory: 600 });
    // Every mirror measured first (each answers 404 in turn): mirror 0 is the fastest.
    for (const m of mirrors) m.mode = 'missing';
    expect(await up.manifest('lib/app', '1')).toBeUndefined();
    mirrors[0]!.mode = 'cut';
    mirrors[1]!.mode = 'ok';
    mirrors[2]!.mode = 'ok';
    expect((await readAll((await up.blob('lib/app', DIGEST))!.body)).equals(BLOB)).toBe(true);
    expect(up.order()[0]).toBe(1);
    mirrors[0]!.mode = 'ok';
    await new Promise((r) => setTimeout(r, 650));
    expect(up.order()[0]).toBe(0);
  });

  test('a cut body fails when no other mirror serves the rest as a range', async () => {
    reset();
    mirrors[0]!.mode = 'cut';
    mirrors[1]!.mode = 'ignore-range';
    mirrors[2]!.mode = 'missing';
    const blob = await upstream({ strategy: 'failover' }).blob('lib/app', DIGEST);
    await expect(readAll(blob!.body)).rejects.toThrow();
    // The mirror that answered the range with the whole blob was cut at once, not read.
    expect(mirrors[1]!.sent).toBeLessThan(BLOB.length / 2);
  });

  test('failover throws the last error when every mirror fails', async () => {
    reset();
    for (const m of mirrors) m.mode = 'fail';
    await expect(upstream({ strategy: 'failover' }).manifest('lib/app', '1')).rejects.toMatchObject({ failure: 'server-error' });
  });

  test('hedged starts the next mirror after the delay and takes the first answer', async () => {
    reset();
    mirrors[0]!.delayMs = 4000;
    const manifest = await upstream({ strategy: 'hedged', hedgeDelay: 100 }).manifest('lib/app', '1');
    expect(manifest?.bytes.equals(MANIFEST)).toBe(true);
    expect(mirrors[0]!.log).toHaveLength(1);
    expect(mirrors[1]!.log).toHaveLength(1);
    expect(mirrors[2]!.log).toHaveLength(0); // the second answered before a third was needed
  });

  test('hedged does not start a second request when the first answers in time', async () => {
    reset();
    await upstream({ strategy: 'hedged', hedgeDelay: 1000 }).manifest('lib/app', '1');
    expect(mirrors[0]!.log).toHaveLength(1);
    expect(mirrors[1]!.log).toHaveLength(0);
  });

  test('striped fetches ranges from every mirror and reassembles them in order', async () => {
    reset();
    const blob = await upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024 }).blob('lib/app', DIGEST);
    expect(blob?.size).toBe(BLOB.length);
    const bytes = await readAll(blob!.body);
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(DIGEST.slice(7));
    for (const m of mirrors) expect(m.log.filter((l) => l.includes('bytes=') && !l.endsWith('bytes=0-0')).length).toBeGreaterThan(2);
  });

  test('striped, by default, sizes its ranges so that those in flight (two per mirror) and the one handed on hold about 32 MiB', async () => {
    const MiB = 1024 * 1024;
    // Two mirrors (window 4): 6 MiB; three (6): 4 MiB; four (8): 3 MiB; eight: 2 MiB at least; never above 8 MiB.
    expect([2, 4, 6, 8, 16].map((window) => stripeSizeFor(window) / MiB)).toEqual([8, 6, 4, 3, 2]);
    // Before: 8 MiB whatever the number of mirrors, 56 MiB held with three.
    reset();
    const blob = await upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024 }).blob('lib/app', DIGEST);
    expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
    const ranges = mirrors
      .flatMap((m) => m.log)
      .map((l) => /bytes=(\d+)-(\d+)$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null && m[2] !== '0') // not the size probe (bytes=0-0)
      .map((m) => [Number(m[1]), Number(m[2])]);
    // Three mirrors here: 4 MiB ranges, the 3 MiB blob in one.
    expect(ranges).toEqual([[0, BLOB.length - 1]]);
  });

  test('striped hands the ranges of a failing mirror to the others', async () => {
    reset();
    const up = upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024 });
    mirrors[1]!.mode = 'fail';
    const blob = await up.blob('lib/app', DIGEST);
    expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
    // 13 ranges, 4 of them mirror 1's turn: once one failed, the later ones go to the others first
    // (those already in flight when it failed are asked of it still).
    expect(mirrors[1]!.log.filter((l) => l.includes('bytes=')).length).toBeLessThan(4);
  });

  test('striped: a range cut mid-way goes whole to the next mirror, not on from the same one (whose client would resume it, one idle timeout each if it stalls)', async () => {
    reset();
    const up = upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024 });
    mirrors[1]!.mode = 'cut-ranges';
    const blob = await up.blob('lib/app', DIGEST);
    expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
    const ranges = mirrors[1]!.log.filter((l) => l.includes('bytes=') && !l.endsWith('bytes=0-0'));
    // Only ranges on a stripe's boundary: no resume from the middle of one.
    for (const line of ranges) expect(Number(/bytes=(\d+)-/.exec(line)![1]) % (256 * 1024)).toBe(0);
    expect(ranges.length).toBeLessThan(4);
  });

  test('striped: a mirror that failed a stripe is asked after the others for the next blob too, not once per blob', async () => {
    reset();
    const up = upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024 });
    mirrors[1]!.mode = 'fail';
    expect((await readAll((await up.blob('lib/app', DIGEST))!.body)).equals(BLOB)).toBe(true);
    mirrors[1]!.log.length = 0;
    // Another blob (the mirrors serve the same bytes under any digest; the fill would judge them).
    const other = `sha256:${'1'.repeat(64)}` as Digest;
    expect((await readAll((await up.blob('lib/app', other))!.body)).equals(BLOB)).toBe(true);
    expect(mirrors[1]!.log.filter((l) => l.includes('bytes=') && !l.endsWith('bytes=0-0'))).toEqual([]);
  });

  test('failover: a range a mirror answers with the whole blob (200) comes whole, read to its end, for the caller to judge', async () => {
    reset();
    for (const m of mirrors) m.mode = 'ignore-range';
    const blob = await upstream({ strategy: 'failover' }).blob('lib/app', DIGEST, { start: 1000, end: BLOB.length - 1 });
    expect(blob?.range).toBeUndefined();
    expect(blob?.size).toBe(BLOB.length);
    expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
  });

  test('striped passes over a mirror that ignores Range: its whole-blob answers are cut, not read', async () => {
    reset();
    mirrors[1]!.mode = 'ignore-range';
    const blob = await upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024, stripeWindow: 2 }).blob('lib/app', DIGEST);
    expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
    // Read to the end, each of its answers would have been the whole blob.
    expect(mirrors[1]!.sent).toBeLessThan(BLOB.length);
    // Once found out, it gets no more ranges of the blob.
    expect(mirrors[1]!.log.length).toBeLessThanOrEqual(2);

    // The size probe goes to the first mirror: one that ignores Range sends the whole blob, which is
    // then the download (one request, nothing thrown away); the next blob's probe goes to another
    // mirror, and is striped over the others.
    reset();
    mirrors[0]!.mode = 'ignore-range';
    const up = upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024, stripeWindow: 2 });
    const probed = await up.blob('lib/app', DIGEST);
    expect((await readAll(probed!.body)).equals(BLOB)).toBe(true);
    expect(mirrors[0]!.log).toHaveLength(1);
    expect(mirrors[1]!.log.length + mirrors[2]!.log.length).toBe(0);
    for (const m of mirrors) m.log.length = 0;
    const other = `sha256:${'2'.repeat(64)}` as Digest;
    expect((await readAll((await up.blob('lib/app', other))!.body)).equals(BLOB)).toBe(true);
    expect(mirrors[0]!.log).toEqual([]);
    const stripes = (m: Mirror) => m.log.filter((l) => l.includes('bytes=') && !l.endsWith('bytes=0-0')).length;
    expect(stripes(mirrors[1]!) + stripes(mirrors[2]!)).toBeGreaterThanOrEqual(12);
    // It still comes before a mirror that is down: it serves all but ranges.
    mirrors[1]!.mode = 'fail';
    expect((await up.manifest('lib/app', '1'))?.bytes.equals(MANIFEST)).toBe(true);
    expect(up.order()).toEqual([2, 0, 1]);
  });

  test('striped over mirrors that all ignore Range: each blob comes whole from one of them (it used to fail)', async () => {
    reset();
    for (const m of mirrors) m.mode = 'ignore-range';
    const up = upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024 });
    for (const digest of [DIGEST, `sha256:${'3'.repeat(64)}` as Digest, `sha256:${'4'.repeat(64)}` as Digest]) {
      expect((await readAll((await up.blob('lib/app', digest))!.body)).equals(BLOB)).toBe(true);
    }
    // One request per blob: the probe's answer was the download.
    expect(mirrors.flatMap((m) => m.log)).toHaveLength(3);
  });

  test('striped: a blob asked for again (its striped fill failed its digest) comes from one mirror', async () => {
    reset();
    mirrors[1]!.mode = 'corrupt-range';
    const up = upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024 });
    const first = await readAll((await up.blob('lib/app', DIGEST))!.body);
    expect(createHash('sha256').update(first).digest('hex')).not.toBe(DIGEST.slice(7));
    for (const m of mirrors) m.log.length = 0;
    const second = await readAll((await up.blob('lib/app', DIGEST))!.body);
    expect(second.equals(BLOB)).toBe(true);
    expect(mirrors.flatMap((m) => m.log)).toEqual([`GET /v2/lib/app/blobs/${DIGEST}`]);
  });

  test('striped: a size probe whose body is cut (its head came) is no unhandled error: the blob is striped all the same', async () => {
    reset();
    mirrors[0]!.mode = 'cut-probe';
    const errors: unknown[] = [];
    const onUncaught = (err: unknown): void => void errors.push(err);
    process.on('uncaughtException', onUncaught);
    try {
      const up = upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024 });
      expect((await readAll((await up.blob('lib/app', DIGEST))!.body)).equals(BLOB)).toBe(true);
      // The probe body's resumes fail after the download's start: give them the time to.
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      process.off('uncaughtException', onUncaught);
    }
    // Before: "Unhandled 'error' event" from the probe's body, and the server's process exited.
    expect(errors).toEqual([]);
  });

  test('striped over mirrors that answer the probe but no stripe: once all are found out, each blob comes whole from one', async () => {
    reset();
    for (const m of mirrors) m.mode = 'ignore-stripes';
    const up = upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024 });
    // The first blob is how they are found out: its stripes fail.
    await readAll((await up.blob('lib/app', DIGEST))!.body).catch(() => undefined);
    // Before: every blob failed ("no mirror has this blob range") until the marks wore off (5 minutes).
    for (const digest of [`sha256:${'5'.repeat(64)}` as Digest, `sha256:${'6'.repeat(64)}` as Digest]) {
      expect((await readAll((await up.blob('lib/app', digest))!.body)).equals(BLOB)).toBe(true);
    }
  });

  test('striped: a probe answer with a wrong total fails that blob, and the honest mirrors that answered the ranges past its end short still serve ranges', async () => {
    reset();
    mirrors[0]!.mode = 'wrong-total';
    const up = upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024 });
    await readAll((await up.blob('lib/app', DIGEST))!.body).catch(() => undefined);
    reset();
    // The next blob, with the mirror that lied down: the honest two serve its stripes. Before, they had
    // been taken for mirrors that ignore Range, and the blob failed ("no mirror has this blob range").
    mirrors[0]!.mode = 'fail';
    const other = `sha256:${'7'.repeat(64)}` as Digest;
    expect((await readAll((await up.blob('lib/app', other))!.body)).equals(BLOB)).toBe(true);
    const stripes = (m: Mirror) => m.log.filter((l) => l.includes('bytes=') && !l.endsWith('bytes=0-0')).length;
    expect(stripes(mirrors[1]!) + stripes(mirrors[2]!)).toBeGreaterThanOrEqual(12);
  });

  test('striped with every mirror down asks each once, not once for the size probe and again for the whole blob', async () => {
    reset();
    for (const m of mirrors) m.mode = 'fail';
    const up = upstream({ strategy: 'striped', stripeThreshold: 1024 * 1024, stripeSize: 256 * 1024 });
    await expect(up.blob('lib/app', DIGEST)).rejects.toBeInstanceOf(UpstreamError);
    // Before: two rounds (the probe's, then the whole blob's), twice the time to the client's 504.
    for (const m of mirrors) expect(m.log).toHaveLength(1);
  });

  test('striped leaves small blobs to a single mirror', async () => {
    reset();
    const blob = await upstream({ strategy: 'striped', stripeThreshold: 64 * 1024 * 1024 }).blob('lib/app', DIGEST);
    expect((await readAll(blob!.body)).equals(BLOB)).toBe(true);
    const full = mirrors.flatMap((m) => m.log).filter((l) => l.startsWith('GET') && !l.includes('bytes='));
    expect(full).toHaveLength(1);
  });

  test('adaptive prefers the mirror that answers fastest, and still probes the others', async () => {
    reset();
    mirrors[0]!.delayMs = 150;
    mirrors[1]!.delayMs = 5;
    mirrors[2]!.delayMs = 80;
    let tick = 0;
    const up = upstream({ strategy: 'adaptive', probeRate: 0.2, random: () => ((tick++ * 0.37) % 1) });
    for (let i = 0; i < 20; i++) await up.manifest('lib/app', '1');
    const counts = mirrors.map((m) => m.log.length);
    expect(counts[1]).toBeGreaterThan(counts[0]!);
    expect(counts[1]).toBeGreaterThan(counts[2]!);
    expect(counts[0]! + counts[2]!).toBeGreaterThan(2); // probes keep measuring the slower ones
  });
});
