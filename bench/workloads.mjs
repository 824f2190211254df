// The workloads, each run against one server at a time. Clients use node:http with keep-alive agents,
// except the manifest load (hammer), which uses undici's client: per request it costs the client about
// half what node:http's does, so the client takes as little of the 2 cores as possible.
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { Agent, request as httpRequest } from 'node:http';
import { once } from 'node:events';
import { Pool } from 'undici';
import { getBlob } from './pull-client.mjs';
import { cpuSeconds } from './servers.mjs';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar';
const ACCEPT = [OCI_MANIFEST, 'application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.v2+json'].join(', ');

export function newAgent() {
  return new Agent({ keepAlive: true, maxSockets: 64, maxFreeSockets: 64 });
}

/**
 * Sets of read buffers for request bodies taken from files, reused from one request to the next. Reading
 * into fresh buffers (what fs streams do) costs the client a page fault per 4 KiB on a virtual machine:
 * up to 3 s of CPU per GiB here, taken from the server under test on a 2-core machine, and varying from
 * run to run.
 */
const spareBodyBuffers = [];

/** Streams bytes [start, end] of `file` into `req` through 4 reused 1 MiB buffers, then ends it. */
async function sendFileRange(req, { file, start, end }) {
  const buffers = spareBodyBuffers.pop() ?? Array.from({ length: 4 }, () => Buffer.allocUnsafeSlow(MiB));
  const inFlight = [];
  const handle = await open(file, 'r');
  try {
    for (let position = start, i = 0; position <= end; i += 1) {
      const slot = i % buffers.length;
      await inFlight[slot];
      const { bytesRead } = await handle.read(buffers[slot], 0, Math.min(MiB, end - position + 1), position);
      if (bytesRead === 0) throw new Error(`${file} ends before byte ${end}`);
      inFlight[slot] = new Promise((resolve, reject) => req.write(buffers[slot].subarray(0, bytesRead), (err) => (err ? reject(err) : resolve())));
      position += bytesRead;
    }
    await Promise.all(inFlight);
    req.end();
    // Only after every write is done: a socket may still hold a buffer of a failed request.
    spareBodyBuffers.push(buffers);
  } finally {
    await handle.close();
  }
}

/**
 * One HTTP request. body: Buffer, string, { file, start, end } (bytes of a file, streamed), or undefined.
 */
export function request(agent, url, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const u = typeof url === 'string' ? new URL(url) : url;
    const req = httpRequest(
      { agent, method, hostname: u.hostname, port: u.port, path: u.pathname + u.search, headers },
      (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.once('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.once('error', reject);
      },
    );
    req.once('error', reject);
    if (body === undefined) req.end();
    else if (typeof body === 'object' && 'file' in body) sendFileRange(req, body).catch((err) => req.destroy(err));
    else req.end(body);
  });
}

class HttpError extends Error {}

function expectStatus(res, wanted, what) {
  const ok = Array.isArray(wanted) ? wanted.includes(res.status) : res.status === wanted;
  if (!ok) {
    const text = res.body ? res.body.toString('utf8').slice(0, 400) : '';
    throw new HttpError(`${what}: expected ${wanted}, got ${res.status} ${text}`);
  }
  return res;
}

/** The upload URL of a Location header, with ?digest= added (keeping distribution's _state). */
export function withDigest(base, location, digest) {
  const u = new URL(location, base);
  u.searchParams.set('digest', digest);
  return u;
}

export async function startUpload(server, agent, repo) {
  const res = expectStatus(await request(agent, `${server.base}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: { 'content-length': '0' } }), 202, `POST /v2/${repo}/blobs/uploads/`);
  if (!res.headers.location) throw new HttpError('POST upload: no Location');
  return res.headers.location;
}

// ---------------------------------------------------------------------------------------------
// Test data

/** Writes `size` random bytes to `path` and hashes them on the way. */
export async function makeRandomFile(path, size) {
  const hash = createHash('sha256');
  const out = createWriteStream(path, { highWaterMark: 4 * MiB });
  const chunk = 4 * MiB;
  for (let written = 0; written < size; ) {
    const n = Math.min(chunk, size - written);
    const buf = randomBytes(n);
    hash.update(buf);
    if (!out.write(buf)) await once(out, 'drain');
    written += n;
  }
  out.end();
  await once(out, 'finish');
  return `sha256:${hash.digest('hex')}`;
}

export function smallBlob(size = 4096) {
  const bytes = randomBytes(size);
  return { bytes, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` };
}

export function sha256(buf) {
  return `sha256:${createHash('sha256').update(buf).digest('hex')}`;
}

// ---------------------------------------------------------------------------------------------
// 1. monolithic push; 2. chunked push

/** POST, then PUT ?digest= with the whole file streamed as the body. */
export async function pushMonolithic(server, agent, repo, file, size, digest) {
  const cpu0 = cpuSeconds(server.pid);
  const t0 = performance.now();
  const location = await startUpload(server, agent, repo);
  const res = await request(agent, withDigest(server.base, location, digest), {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
    body: { file, start: 0, end: size - 1 },
  });
  expectStatus(res, 201, 'PUT ?digest= (monolithic)');
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, mibPerSec: size / MiB / seconds, serverCpuPerGiB: (cpuSeconds(server.pid) - cpu0) / (size / GiB) };
}

/** POST, PATCH chunks of `chunkSize` with Content-Range, then PUT ?digest= without a body. */
export async function pushChunked(server, agent, repo, file, size, digest, chunkSize) {
  const cpu0 = cpuSeconds(server.pid);
  const t0 = performance.now();
  let location = await startUpload(server, agent, repo);
  let chunks = 0;
  for (let start = 0; start < size; start += chunkSize) {
    const end = Math.min(size, start + chunkSize) - 1;
    const res = await request(agent, new URL(location, server.base), {
      method: 'PATCH',
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(end - start + 1), 'content-range': `${start}-${end}` },
      body: { file, start, end },
    });
    expectStatus(res, 202, `PATCH ${start}-${end}`);
    location = res.headers.location ?? location;
    chunks += 1;
  }
  const res = await request(agent, withDigest(server.base, location, digest), { method: 'PUT', headers: { 'content-length': '0' } });
  expectStatus(res, 201, 'PUT ?digest= (closing a chunked upload)');
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, chunks, mibPerSec: size / MiB / seconds, serverCpuPerGiB: (cpuSeconds(server.pid) - cpu0) / (size / GiB) };
}

// ---------------------------------------------------------------------------------------------
// 3. pull

/**
 * `streams` concurrent GETs of the whole blob (bench/pull-client.mjs: a reused read buffer per stream,
 * bodies counted); aggregate MiB/s and the server's CPU seconds per GiB sent.
 */
export async function pull(server, repo, digest, size, streams) {
  const u = new URL(server.base);
  const cpu0 = cpuSeconds(server.pid);
  const client0 = process.cpuUsage();
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: streams }, () => getBlob({ host: u.hostname, port: Number(u.port), path: `/v2/${repo}/blobs/${digest}` })),
  );
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(server.pid) - cpu0;
  const client = process.cpuUsage(client0);
  let bytes = 0;
  for (const r of results) {
    if (r.status !== 200) throw new HttpError(`GET blob: ${r.status}`);
    if (r.bytes !== size) throw new HttpError(`GET blob: ${r.bytes} bytes instead of ${size}`);
    if (r.headers['docker-content-digest'] && r.headers['docker-content-digest'] !== digest) throw new HttpError('GET blob: wrong Docker-Content-Digest');
    bytes += r.bytes;
  }
  return {
    seconds,
    streams,
    mibPerSec: bytes / MiB / seconds,
    serverCpuSeconds: cpu,
    serverCpuPerGiB: cpu / (bytes / GiB),
    clientCpuPerGiB: (client.user + client.system) / 1e6 / (bytes / GiB),
  };
}

// ---------------------------------------------------------------------------------------------
// Small image: one config, one layer, one OCI manifest

export async function pushSmallImage(server, agent, repo, tag) {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: {} }));
  const layer = randomBytes(1024);
  for (const bytes of [config, layer]) {
    const location = await startUpload(server, agent, repo);
    const res = await request(agent, withDigest(server.base, location, sha256(bytes)), {
      method: 'PUT',
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length) },
      body: bytes,
    });
    expectStatus(res, 201, 'PUT small blob');
  }
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length },
      layers: [{ mediaType: OCI_LAYER, digest: sha256(layer), size: layer.length }],
      annotations: { 'org.example.bench': 'wharf' },
    }),
  );
  await putManifest(server, agent, repo, tag, manifest);
  return { manifest, digest: sha256(manifest) };
}

export async function putManifest(server, agent, repo, reference, manifest) {
  const res = await request(agent, `${server.base}/v2/${repo}/manifests/${reference}`, {
    method: 'PUT',
    headers: { 'content-type': OCI_MANIFEST, 'content-length': String(manifest.length) },
    body: manifest,
  });
  expectStatus(res, 201, `PUT manifest ${reference}`);
}

// ---------------------------------------------------------------------------------------------
// 4. manifest GET / HEAD under load

/**
 * `connections` loops, each sending one request after another on its own keep-alive connection, for
 * `durationMs` (after `warmupMs` not counted). Requests/s of 200 answers, latency percentiles, and the
 * CPU used by the server and by this client during the measured window.
 *
 * The client is undici, not node:http: against a bare node:http server node:http's client tops out near
 * 10,000 req/s on these machines, so it measured itself rather than the server; undici's gets about
 * twice as far with the same connections (the bench still reports that ceiling, "client ceiling").
 */
export async function hammer(server, { path, method = 'GET', headers = {}, connections = 64, durationMs = 5_000, warmupMs = 1_000, expectBytes }) {
  const pool = new Pool(server.base, { connections, pipelining: 1 });
  let measuring = false;
  let stop = false;
  let ok = 0;
  let bad = 0;
  let wrong = 0;
  let firstError;
  const latencies = [];

  const one = async () => {
    const t = performance.now();
    try {
      // reset: false keeps HEAD on its keep-alive connection (undici closes after a HEAD by default).
      const res = await pool.request({ path, method, headers, reset: false });
      const bytes = (await res.body.arrayBuffer()).byteLength;
      if (!measuring) return;
      if (res.statusCode === 200 && (expectBytes === undefined || method === 'HEAD' || bytes === expectBytes)) {
        ok += 1;
        latencies.push(performance.now() - t);
      } else if (res.statusCode === 200) wrong += 1;
      else {
        bad += 1;
        firstError ??= `status ${res.statusCode}`;
      }
    } catch (err) {
      if (measuring) {
        bad += 1;
        firstError ??= err.message;
      }
    }
  };

  const loops = Array.from({ length: connections }, async () => {
    while (!stop) await one();
  });
  await new Promise((r) => setTimeout(r, warmupMs));
  const cpu0 = cpuSeconds(server.pid);
  const client0 = process.cpuUsage();
  measuring = true;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, durationMs));
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  const serverCpu = cpuSeconds(server.pid) - cpu0;
  const client = process.cpuUsage(client0);
  stop = true;
  await Promise.all(loops);
  await pool.close();
  latencies.sort((a, b) => a - b);
  const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))] : NaN);
  return {
    seconds,
    requests: ok,
    errors: bad,
    wrongBodies: wrong,
    ...(firstError ? { firstError } : {}),
    rps: ok / seconds,
    p50ms: pct(50),
    p99ms: pct(99),
    serverCpuPercent: (serverCpu / seconds) * 100,
    clientCpuPercent: ((client.user + client.system) / 1e6 / seconds) * 100,
  };
}

// ---------------------------------------------------------------------------------------------
// 5. tag list

/** Tags one manifest `count` times (PUT by tag, `parallel` at once). */
export async function pushTags(server, agent, repo, manifest, count, parallel = 16) {
  const t0 = performance.now();
  let next = 0;
  const tagName = (i) => `t${String(i).padStart(5, '0')}`;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < count) {
        const i = next++;
        await putManifest(server, agent, repo, tagName(i), manifest);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, tagsPerSec: count / seconds };
}

/** GET /v2/<repo>/tags/list?n=<count>, `repeat` times one after another. */
export async function listTags(server, agent, repo, count, repeat) {
  const url = `${server.base}/v2/${repo}/tags/list?n=${count}`;
  // one warm-up request, checked
  const first = expectStatus(await request(agent, url), 200, 'GET tags/list');
  const got = JSON.parse(first.body.toString('utf8')).tags ?? [];
  if (got.length !== count) throw new HttpError(`tags/list returned ${got.length} tags instead of ${count}`);
  const cpu0 = cpuSeconds(server.pid);
  const t0 = performance.now();
  for (let i = 0; i < repeat; i++) expectStatus(await request(agent, url), 200, 'GET tags/list');
  const seconds = (performance.now() - t0) / 1000;
  return { seconds, repeat, rps: repeat / seconds, meanMs: (seconds * 1000) / repeat, serverCpuMsPerRequest: ((cpuSeconds(server.pid) - cpu0) * 1000) / repeat };
}

// ---------------------------------------------------------------------------------------------
// 6. small blob pushes

/** POST then PUT ?digest= with a 4 KiB body, for each blob, `parallel` at once. */
export async function pushSmallBlobs(server, agent, repo, blobs, parallel = 16) {
  let next = 0;
  let errors = 0;
  let firstError;
  const cpu0 = cpuSeconds(server.pid);
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < blobs.length) {
        const blob = blobs[next++];
        try {
          const location = await startUpload(server, agent, repo);
          const res = await request(agent, withDigest(server.base, location, blob.digest), {
            method: 'PUT',
            headers: { 'content-type': 'application/octet-stream', 'content-length': String(blob.bytes.length) },
            body: blob.bytes,
          });
          expectStatus(res, 201, 'PUT small blob');
        } catch (err) {
          errors += 1;
          firstError ??= err.message;
        }
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const done = blobs.length - errors;
  return {
    seconds,
    blobs: done,
    errors,
    ...(firstError ? { firstError } : {}),
    blobsPerSec: done / seconds,
    serverCpuMsPerBlob: ((cpuSeconds(server.pid) - cpu0) * 1000) / blobs.length,
  };
}

export { ACCEPT };
