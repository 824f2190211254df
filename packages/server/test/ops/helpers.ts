import { createHash } from 'node:crypto';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { writeWharfConfig, type WharfConfigOptions } from '../helpers/wharf-process.js';

/**
 * Helpers of the operations suites: a configuration file with extra keys for a child-process Wharf, a
 * Prometheus text parser, and HTTPS requests that trust a given CA (fetch cannot be told one).
 */

export type OpsConfigOptions = Omit<WharfConfigOptions, 'logLevel'>;

/** A configuration.toml for a local-only Wharf (auth and proxy off) logging JSON at info, storage under `root`. */
export function writeOpsConfig(root: string, port: number, options: OpsConfigOptions = {}): Promise<string> {
  return writeWharfConfig(root, port, { ...options, logLevel: 'info', top: ['log_format = "json"', ...(options.top ?? [])] });
}

/** The JSON log line a Wharf process writes once it listens (what it runs on: `node`, `sqlite`), if written yet. */
export function listeningLine(output: string): { msg: string; node?: string; sqlite?: string } | undefined {
  return output
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as { msg: string; node?: string; sqlite?: string })
    .find((line) => line.msg === 'wharf listening');
}

/** One sample of a metric: its name and labels as written, e.g. `wharf_http_requests_total{route="blob",...}`. */
export type Samples = ReadonlyMap<string, number>;

function sampleKey(name: string, labels: Record<string, string>): string {
  const parts = Object.keys(labels)
    .sort()
    .map((k) => `${k}=${JSON.stringify(labels[k])}`);
  return parts.length ? `${name}{${parts.join(',')}}` : name;
}

/** Parses the Prometheus text format into samples keyed by name and sorted labels. */
export function parseMetrics(text: string): Samples {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.set(sampleKey(m[1]!, labels), Number(m[3]));
  }
  return out;
}

/** A sample's value, 0 when absent (a counter not yet incremented has no line). */
export function sample(samples: Samples, name: string, labels: Record<string, string> = {}): number {
  return samples.get(sampleKey(name, labels)) ?? 0;
}

/** Every value a label takes in the samples of `name`. */
export function labelValues(samples: Samples, name: string, label: string): Set<string> {
  const out = new Set<string>();
  for (const key of samples.keys()) {
    if (!key.startsWith(`${name}{`)) continue;
    const m = new RegExp(`${label}="([^"]*)"`).exec(key);
    if (m) out.add(m[1]!);
  }
  return out;
}

export async function scrape(base: string): Promise<Samples> {
  const res = await fetch(`${base}/metrics`);
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status} ${await res.text()}`);
  return parseMetrics(await res.text());
}

export interface SimpleResponse {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** A request over HTTP or HTTPS; with `ca`, HTTPS trusts exactly that CA (PEM). */
export function request(url: string, options: { method?: string; headers?: Record<string, string>; body?: Buffer; ca?: string | Buffer } = {}): Promise<SimpleResponse> {
  const u = new URL(url);
  const send = u.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = send(
      u,
      {
        method: options.method ?? 'GET',
        headers: { Connection: 'close', ...options.headers, ...(options.body ? { 'Content-Length': String(options.body.length) } : {}) },
        ...(options.ca !== undefined ? { ca: options.ca } : {}),
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Waits for `check` to be true, polling; fails with `what` after `ms`. */
export async function eventually(check: () => boolean | Promise<boolean>, what: string, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}
