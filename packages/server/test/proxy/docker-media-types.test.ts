import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import { manifestOf, pushBlobs, pushManifest } from '../helpers/http.js';
import { DOCKER_LIST, DOCKER_MANIFEST, blob, imageManifest, sha256, type Blob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** What `docker pull` sends as Accept for a manifest. */
const DOCKER_ACCEPT = [DOCKER_MANIFEST, DOCKER_LIST, 'application/vnd.oci.image.index.v1+json', 'application/vnd.oci.image.manifest.v1+json'].join(', ');

interface Seen {
  readonly method: string;
  readonly path: string;
  readonly accept: string | undefined;
  /** What the front answered. */
  status?: number;
}

/**
 * Between the proxy and a Wharf upstream, which serves a manifest whatever the request accepts: a
 * front that answers 404 MANIFEST_UNKNOWN to a manifest request whose Accept does not list the
 * manifest's media type, as a CNCF distribution does for a manifest list (and Docker Hub for the
 * types a client does not name). Everything else is forwarded as it is.
 */
class AcceptingFront {
  readonly seen: Seen[] = [];
  url = '';
  private server!: Server;

  static async start(target: string): Promise<AcceptingFront> {
    const front = new AcceptingFront();
    front.server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0]!;
      const seen: Seen = { method: req.method!, path, accept: req.headers.accept };
      front.seen.push(seen);
      const to = new URL(req.url ?? '/', target);
      const out = request(to, { method: req.method, headers: { ...req.headers, host: to.host } }, (up) => {
        const type = String(up.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
        const accepted = String(req.headers.accept ?? '')
          .split(',')
          .map((t) => t.split(';')[0]!.trim().toLowerCase());
        if (/\/manifests\/[^/]+$/.test(path) && up.statusCode === 200 && !accepted.includes(type)) {
          up.resume();
          seen.status = 404;
          const body = JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: `manifest unknown: ${type} is not in Accept`, detail: {} }] });
          res.writeHead(404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(req.method === 'HEAD' ? undefined : body);
          return;
        }
        seen.status = up.statusCode;
        res.writeHead(up.statusCode ?? 502, up.headers);
        pipeline(up, res).catch(() => res.destroy());
      });
      out.on('error', () => res.socket?.destroy());
      pipeline(req, out).catch(() => res.socket?.destroy());
    });
    await new Promise<void>((resolve) => front.server.listen(0, '127.0.0.1', resolve));
    front.url = `http://127.0.0.1:${(front.server.address() as AddressInfo).port}`;
    return front;
  }

  /** The manifest requests seen, as "METHOD path status". */
  manifests(): string[] {
    return this.seen.filter((s) => s.path.includes('/manifests/')).map((s) => `${s.method} ${s.path} ${s.status}`);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

describe('Docker schema 2 manifests and manifest lists through the proxy', () => {
  let up: TestRegistry;
  let front: AcceptingFront;
  let proxy: TestRegistry;
  let config: Blob;
  let layer: Blob;
  let image: { bytes: Buffer; digest: string; mediaType: string; size: number };
  let list: { bytes: Buffer; digest: string; mediaType: string; size: number };

  beforeAll(async () => {
    up = await startRegistry();
    front = await AcceptingFront.start(up.url);
    proxy = await startRegistry({ settings: { proxy: { retries: 0, upstreams: { up: { url: front.url } } } } });

    config = blob(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, config: {} }));
    layer = blob(gzipSync(Buffer.from('a Docker layer, gzipped tar in spirit')));
    // application/vnd.docker.container.image.v1+json and application/vnd.docker.image.rootfs.diff.tar.gzip.
    image = imageManifest(config, [layer], {}, DOCKER_MANIFEST);
    // As Docker writes it: three-space indents. The bytes must come through as they are.
    const listDoc = {
      schemaVersion: 2,
      mediaType: DOCKER_LIST,
      manifests: [{ mediaType: DOCKER_MANIFEST, digest: image.digest, size: image.size, platform: { architecture: 'amd64', os: 'linux' } }],
    };
    const listBytes = Buffer.from(JSON.stringify(listDoc, null, 3));
    list = { bytes: listBytes, digest: sha256(listBytes), mediaType: DOCKER_LIST, size: listBytes.length };
    expect(manifestOf(listDoc, DOCKER_LIST).digest).not.toBe(list.digest); // not the compact form

    for (const repo of ['docker/app', 'docker/pinned', 'docker/legacy']) {
      await pushBlobs(up.url, repo, [config, layer]);
      await pushManifest(up.url, repo, image.digest, image);
      await pushManifest(up.url, repo, 'single', image);
      await pushManifest(up.url, repo, 'multi', list);
    }
    // The front refuses what a client without the Docker types in Accept would get.
    const refused = await fetch(`${front.url}/v2/docker/app/manifests/multi`, { headers: { accept: 'application/vnd.oci.image.index.v1+json' } });
    expect(refused.status).toBe(404);
    expect((await fetch(`${front.url}/v2/docker/app/manifests/multi`, { headers: { accept: DOCKER_ACCEPT } })).status).toBe(200);
    front.seen.length = 0;
  });
  afterAll(async () => {
    await proxy?.close();
    await front?.close();
    await up?.close();
  });

  /** GET (or HEAD) of a manifest through the proxy with Docker's Accept: the exact bytes, type and digest. */
  async function expectManifest(repo: string, reference: string, expected: { bytes: Buffer; digest: string; mediaType: string }, method: 'GET' | 'HEAD' = 'GET'): Promise<void> {
    const res = await fetch(`${proxy.url}/v2/proxy/up/${repo}/manifests/${reference}`, { method, headers: { accept: DOCKER_ACCEPT } });
    const bytes = Buffer.from(await res.arrayBuffer());
    expect([method, repo, reference, res.status]).toEqual([method, repo, reference, 200]);
    expect(res.headers.get('content-type')).toBe(expected.mediaType);
    expect(res.headers.get('docker-content-digest')).toBe(expected.digest);
    expect(res.headers.get('content-length')).toBe(String(expected.bytes.length));
    if (method === 'GET') expect(bytes.equals(expected.bytes)).toBe(true);
  }

  /** Every manifest request the upstream saw for `repo` named both Docker manifest types in its Accept. */
  function expectDockerAccept(repo: string): void {
    const accepts = front.seen.filter((s) => s.path.startsWith(`/v2/${repo}/manifests/`)).map((s) => s.accept ?? '');
    expect(accepts.length).toBeGreaterThan(0);
    for (const accept of accepts) expect(accept.split(',').map((t) => t.trim())).toEqual(expect.arrayContaining([DOCKER_MANIFEST, DOCKER_LIST]));
  }

  async function expectBlob(repo: string, b: Blob): Promise<void> {
    const res = await fetch(`${proxy.url}/v2/proxy/up/${repo}/blobs/${b.digest}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(b.digest);
    const bytes = Buffer.from(await res.arrayBuffer());
    expect(sha256(bytes)).toBe(b.digest);
    expect(bytes.equals(b.bytes)).toBe(true);
  }

  test('a pull by tag: the manifest list, then its image by digest, then the blobs; each manifest fetched once upstream', async () => {
    await expectManifest('docker/app', 'multi', list);
    await expectManifest('docker/app', image.digest, image);
    await expectBlob('docker/app', config);
    await expectBlob('docker/app', layer);
    // The image by its own tag, and both again by digest and by HEAD, from the cache.
    await expectManifest('docker/app', 'single', image);
    await expectManifest('docker/app', list.digest, list);
    await expectManifest('docker/app', 'multi', list, 'HEAD');
    await expectManifest('docker/app', image.digest, image, 'HEAD');
    expect(front.manifests().filter((m) => m.includes('/docker/app/'))).toEqual([
      'GET /v2/docker/app/manifests/multi 200',
      `GET /v2/docker/app/manifests/${image.digest} 200`,
      'GET /v2/docker/app/manifests/single 200',
    ]);
    expectDockerAccept('docker/app');
  });

  test("a script asking Docker Hub's way (schema 2 only, by tag) gets the list's linux/amd64 image, fetched upstream with the full Accept", async () => {
    for (const method of ['GET', 'HEAD'] as const) {
      const res = await fetch(`${proxy.url}/v2/proxy/up/docker/legacy/manifests/multi`, { method, headers: { accept: DOCKER_MANIFEST } });
      expect([method, res.status, res.headers.get('content-type'), res.headers.get('docker-content-digest')]).toEqual([method, 200, DOCKER_MANIFEST, image.digest]);
      if (method === 'GET') expect(Buffer.from(await res.arrayBuffer()).equals(image.bytes)).toBe(true);
    }
    // The cache holds the list as the upstream has it: a client that takes lists gets the list.
    await expectManifest('docker/legacy', 'multi', list);
    expect(front.manifests().filter((m) => m.includes('/docker/legacy/'))).toEqual([
      'GET /v2/docker/legacy/manifests/multi 200',
      `GET /v2/docker/legacy/manifests/${image.digest} 200`,
    ]);
    expectDockerAccept('docker/legacy');
  });

  test('a pull by digest (a pinned image): the manifest list and its image fetched by digest', async () => {
    await expectManifest('docker/pinned', list.digest, list);
    await expectManifest('docker/pinned', image.digest, image);
    await expectBlob('docker/pinned', layer);
    expect(front.manifests().filter((m) => m.includes('/docker/pinned/'))).toEqual([`GET /v2/docker/pinned/manifests/${list.digest} 200`, `GET /v2/docker/pinned/manifests/${image.digest} 200`]);
    expectDockerAccept('docker/pinned');
  });
});
