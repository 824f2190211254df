import { expect } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { blob, imageManifest, pushBlob, type Blob } from './oci.js';
import type { CountingForwarder } from '../proxy/helpers/counting-forwarder.js';
import { freePort, writeWharfConfig, type WharfProcess } from './wharf-process.js';

const MiB = 1024 * 1024;

/** A proxied image whose one big layer a test cuts by killing Wharf mid-download. */
export interface CrashScene {
  readonly layer: Blob;
  /** The layer's blob path on the upstream (what the forwarder counts). */
  readonly path: string;
  /** A temp root holding the Wharf configuration and storage; the test removes it. */
  readonly root: string;
  readonly port: number;
  readonly configFile: string;
  /** The length the running fill's `.kept` note gives, 0 while there is none. */
  noted(): Promise<number>;
}

/**
 * An image of one random `size`-byte layer pushed as `repo:1` to the upstream at `upstreamUrl`, and a
 * Wharf configuration in a temp root that proxies `upstream` (the forwarder in front of it) as `up`,
 * with no retries, so a cut is the client's to retry.
 */
export async function crashScene(upstreamUrl: string, upstream: string, repo: string, size: number): Promise<CrashScene> {
  const layer = blob(randomBytes(size));
  const config = blob(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"repo":"${repo}"}`);
  await pushBlob(upstreamUrl, repo, layer);
  await pushBlob(upstreamUrl, repo, config);
  const manifest = imageManifest(config, [layer]);
  const put = await fetch(`${upstreamUrl}/v2/${repo}/manifests/1`, { method: 'PUT', headers: { 'Content-Type': manifest.mediaType }, body: manifest.bytes });
  expect(put.status).toBe(201);
  const root = await mkdtemp(join(tmpdir(), 'wharf-crash-'));
  const temp = join(root, 'storage', '_tmp');
  const port = await freePort();
  const configFile = await writeWharfConfig(root, port, { logLevel: 'info', proxy: ['retries = 0', '[proxy.upstreams.up]', `url = "${upstream}"`] });
  return { layer, path: `/v2/${repo}/blobs/${layer.digest}`, root, port, configFile, noted: () => notedLength(temp) };
}

/** The length the note of the fill running in the temp folder `temp` gives, 0 while there is none. */
export async function notedLength(temp: string): Promise<number> {
  const note = (await readdir(temp).catch(() => [] as string[])).find((f) => f.startsWith('fill-') && f.endsWith('.kept'));
  try {
    return note ? (JSON.parse(await readFile(join(temp, note), 'utf8')) as { length: number }).length : 0;
  } catch {
    return 0; // gone between the listing and the read (the fill ended)
  }
}

/**
 * The upstream (counted by `fwd`) was asked for the layer at `path` twice: the first GET, cut by the
 * crash, then the rest after the `kept` bytes; and since `before` (its bytes sent then) it sent exactly
 * that rest.
 */
export function expectRestOnly(fwd: CountingForwarder, path: string, size: number, kept: number, before: number): void {
  const gets = fwd.seen.filter((r) => r.method === 'GET' && r.path === path);
  expect(gets.map((r) => r.range)).toEqual([undefined, `bytes=${kept}-${size - 1}`]);
  expect((fwd.bytesOut.get(path) ?? 0) - before).toBe(size - kept);
}

/** Waits until the running fill's note keeps at least `bytes`, or fails with the server's output. */
export async function untilNoted(noted: CrashScene['noted'], server: WharfProcess, bytes = 4 * MiB): Promise<void> {
  for (const deadline = Date.now() + 30_000; (await noted()) < bytes; await sleep(10)) {
    if (Date.now() > deadline) throw new Error(`no note of ${bytes} bytes came:\n${server.output()}`);
  }
}

export interface RequestLine {
  readonly msg?: string;
  readonly method?: string;
  readonly path?: string;
  readonly status?: number;
  readonly bytesOut?: number;
}

/** The request log lines of GETs of `path`, once there is one (Wharf writes its log in batches). */
export async function requestsOf(server: WharfProcess, path: string): Promise<RequestLine[]> {
  for (const deadline = Date.now() + 10_000; ; await sleep(50)) {
    const lines = server
      .output()
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as RequestLine)
      .filter((r) => r.msg === 'request' && r.method === 'GET' && r.path === path);
    if (lines.length > 0 || Date.now() > deadline) return lines;
  }
}
