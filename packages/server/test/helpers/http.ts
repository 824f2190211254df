import { expect } from '@jest/globals';
import { get, request, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import { pushBlob, sha256, type Blob } from './oci.js';

/**
 * HTTP helpers for the black-box tests in test/http: the OCI error envelope check, raw node:http
 * requests (fetch normalises `..` segments and cannot cut a body half-way), and a few push steps that
 * the tests repeat.
 */

export const API_VERSION = 'registry/2.0';

let counter = 0;
/** A repository name no other test of this process uses. */
export function uniqueRepo(prefix = 'test'): string {
  counter += 1;
  return `${prefix}/r${counter}-${process.pid}`;
}

export interface OciErrorEntry {
  readonly code: string;
  readonly message: string;
  readonly detail: unknown;
}

/** Checks the whole error envelope (status, JSON content type, API version, `{errors:[{code,message,detail}]}`). */
export function checkErrorEnvelope(status: number, headers: (name: string) => string | undefined, body: string, wanted: { status: number; code?: string }): OciErrorEntry {
  // The status and body together, so a failure shows what the server said.
  expect(`${status} ${body}`).toMatch(new RegExp(`^${wanted.status} `));
  expect(headers('content-type')).toMatch(/^application\/json(;|$)/);
  expect(headers('docker-distribution-api-version')).toBe(API_VERSION);
  const parsed = JSON.parse(body) as { errors?: unknown };
  expect(Object.keys(parsed)).toEqual(['errors']);
  expect(Array.isArray(parsed.errors)).toBe(true);
  const errors = parsed.errors as Record<string, unknown>[];
  expect(errors).toHaveLength(1);
  const entry = errors[0]!;
  expect(Object.keys(entry).sort()).toEqual(['code', 'detail', 'message']);
  expect(typeof entry.code).toBe('string');
  expect(typeof entry.message).toBe('string');
  if (wanted.code !== undefined) expect(entry.code).toBe(wanted.code);
  return entry as unknown as OciErrorEntry;
}

/** Asserts `res` is an OCI error with this status and code; returns the error entry. */
export async function expectOciError(res: Response, status: number, code?: string): Promise<OciErrorEntry> {
  const body = await res.text();
  return checkErrorEnvelope(res.status, (n) => res.headers.get(n) ?? undefined, body, { status, ...(code !== undefined ? { code } : {}) });
}

/** As expectOciError, for a HEAD reply: no body, but the same status and JSON content type. */
export async function expectHeadError(res: Response, status: number): Promise<void> {
  expect(res.status).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/^application\/json(;|$)/);
  expect(res.headers.get('docker-distribution-api-version')).toBe(API_VERSION);
  expect((await res.arrayBuffer()).byteLength).toBe(0);
}

export interface RawResponse {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  header(name: string): string | undefined;
}

export interface RawOptions {
  readonly headers?: Record<string, string>;
  /** A Buffer is sent with Content-Length; chunks (sync or async) are sent chunked, with no length. */
  readonly body?: Buffer | Iterable<Buffer> | AsyncIterable<Buffer>;
}

/** One request with the path sent exactly as written. */
export function rawRequest(base: string, method: string, path: string, options: RawOptions = {}): Promise<RawResponse> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, method, path, headers: { Connection: 'close', ...options.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const headers = res.headers;
        resolve({
          status: res.statusCode ?? 0,
          headers,
          body: Buffer.concat(chunks),
          header: (name) => {
            const v = headers[name.toLowerCase()];
            return Array.isArray(v) ? v.join(', ') : v;
          },
        });
      });
    });
    req.on('error', reject);
    const body = options.body;
    if (body === undefined) {
      req.end();
    } else if (Buffer.isBuffer(body)) {
      req.setHeader('Content-Length', body.length);
      req.end(body);
    } else {
      void (async () => {
        try {
          for await (const chunk of body) {
            if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
          }
          req.end();
        } catch (err) {
          req.destroy(err as Error);
        }
      })();
    }
  });
}

/** Checks a raw reply is an OCI error envelope with this status (and code, if given). */
export function expectRawOciError(res: RawResponse, status: number, code?: string): OciErrorEntry {
  return checkErrorEnvelope(res.status, res.header, res.body.toString('utf8'), { status, ...(code !== undefined ? { code } : {}) });
}

/** Splits a buffer into chunks of `size` bytes (for chunked, length-less bodies). */
export function* chunksOf(bytes: Buffer, size: number): Generator<Buffer> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

export interface UploadSession {
  readonly res: Response;
  /** The Location as sent (may be relative). */
  readonly location: string;
  /** The Location resolved against the registry URL. */
  readonly url: string;
  readonly id: string;
}

/** POST /v2/<repo>/blobs/uploads/ and expect a 202 session. */
export async function startUpload(base: string, repo: string, query = ''): Promise<UploadSession> {
  const res = await fetch(`${base}/v2/${repo}/blobs/uploads/${query}`, { method: 'POST' });
  if (res.status !== 202) throw new Error(`start upload in ${repo}: ${res.status} ${await res.text()}`);
  const location = res.headers.get('location') ?? '';
  const id = res.headers.get('docker-upload-uuid') ?? '';
  return { res, location, url: new URL(location, base).toString(), id };
}

/** `url` with `digest=` added to its query. */
export function withDigest(url: string, digest: string): string {
  const u = new URL(url);
  u.searchParams.set('digest', digest);
  return u.toString();
}

/** PUT a manifest under `reference` (tag or digest). */
export function putManifest(base: string, repo: string, reference: string, bytes: Buffer, contentType: string, query = ''): Promise<Response> {
  return fetch(`${base}/v2/${repo}/manifests/${reference}${query}`, { method: 'PUT', headers: { 'Content-Type': contentType }, body: bytes });
}

/** PUT a manifest and fail loudly unless it is created. */
export async function pushManifest(base: string, repo: string, reference: string, manifest: { bytes: Buffer; mediaType: string }): Promise<Response> {
  const res = await putManifest(base, repo, reference, manifest.bytes, manifest.mediaType);
  if (res.status !== 201) throw new Error(`push manifest ${repo}:${reference}: ${res.status} ${await res.text()}`);
  return res;
}

/** Pushes several blobs (monolithic POST ?digest=). */
export async function pushBlobs(base: string, repo: string, blobs: readonly Blob[]): Promise<void> {
  for (const b of blobs) await pushBlob(base, repo, b);
}

/** A manifest document serialised compactly, with its digest. */
export function manifestOf(doc: Record<string, unknown>, mediaType: string) {
  const bytes = Buffer.from(JSON.stringify(doc));
  return { bytes, mediaType, size: bytes.length, digest: sha256(bytes) };
}

/** Parses `Link: <url>; rel="next"`; undefined when absent. */
export function nextLink(res: Response): string | undefined {
  const link = res.headers.get('link');
  if (!link) return undefined;
  const m = /^<([^>]+)>;\s*rel="next"$/.exec(link);
  if (!m) throw new Error(`malformed Link header: ${link}`);
  return m[1];
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `promise`'s value, or `late` if it has not settled within `ms`; the timer does not outlive the race (a test file's worker exits at once). */
export async function within<T, L>(promise: Promise<T>, ms: number, late: L): Promise<T | L> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<L>((resolve) => (timer = setTimeout(() => resolve(late), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Opens a download (its own connection) and resolves once its first bytes are in, paused: the client
 * reads no further, so the server's send waits on it. A later cut of the response is no error here.
 */
export function openDownload(url: string): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent: false }, (res) => {
      if (res.statusCode !== 200) {
        reject(new Error(`GET ${url}: ${res.statusCode}`));
        return;
      }
      res.once('readable', () => {
        res.pause();
        resolve(res);
      });
      res.on('error', () => undefined);
    });
    req.on('error', reject);
  });
}

/** The parts of a `multipart/byteranges` body: each part's Content-Range and bytes, in order. */
export function byteranges(contentType: string | null, body: Buffer): { contentRange: string; bytes: Buffer }[] {
  const m = /^multipart\/byteranges;\s*boundary=(\S+)$/.exec(contentType ?? '');
  if (!m) throw new Error(`not multipart/byteranges: ${contentType}`);
  const delimiter = Buffer.from(`--${m[1]}`);
  const parts: { contentRange: string; bytes: Buffer }[] = [];
  let at = body.indexOf(delimiter);
  if (at !== 0) throw new Error('the body does not begin with the boundary');
  for (;;) {
    at += delimiter.length;
    if (body.subarray(at, at + 4).toString('latin1') === '--\r\n') {
      if (at + 4 !== body.length) throw new Error('bytes after the closing boundary');
      return parts;
    }
    const headEnd = body.indexOf('\r\n\r\n', at);
    const head = body.subarray(at + 2, headEnd).toString('latin1');
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), delimiter]), headEnd + 4);
    if (headEnd < 0 || next < 0) throw new Error('a part is cut');
    parts.push({ contentRange: /^content-range:\s*(.*)$/im.exec(head)![1]!, bytes: body.subarray(headEnd + 4, next) });
    at = next + 2;
  }
}
