import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { noise, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, sha256 } from '../helpers/oci-layout.js';
import { freePort, startWharfProcess, writeWharfConfig, type WharfProcess } from '../helpers/wharf-process.js';

/**
 * Wharf as a real child process (`node dist/cli.js serve`), killed with SIGKILL in the middle of a
 * chunked upload and started again on the same storage: the session must resume where it stopped.
 */
describe('an upload session across kill -9 of the server process', () => {
  let root: string;
  let configFile: string;
  let port: number;
  let wharf: WharfProcess | undefined;

  const repo = 'dave/resume';
  const blob = noise('resumable blob', 3 * 1024 * 1024 + 123);
  const blobDigest = sha256(blob);
  const firstChunk = blob.subarray(0, 1024 * 1024);
  /** The session URL from POST, and what the server said after the restart. */
  let session: URL;
  let afterRestart: { status: number; range: string | null; uuid: string | null; location: string | null };

  async function start(): Promise<void> {
    wharf = await startWharfProcess(configFile, port);
  }

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-restart-'));
    port = await freePort();
    configFile = await writeWharfConfig(root, port);
    await start();

    const post = await fetch(`${wharf!.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    expect(post.status).toBe(202);
    session = new URL(post.headers.get('location')!, wharf!.url);
    const patch = await fetch(session, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `0-${firstChunk.length - 1}` },
      body: firstChunk,
    });
    expect(patch.status).toBe(202);
    expect(patch.headers.get('range')).toBe(`0-${firstChunk.length - 1}`);

    await wharf!.kill('SIGKILL');
    expect(wharf!.child.signalCode).toBe('SIGKILL');
    await start();
    const res = await fetch(session);
    afterRestart = {
      status: res.status,
      range: res.headers.get('range'),
      uuid: res.headers.get('docker-upload-uuid'),
      location: res.headers.get('location'),
    };
  }, 60_000);

  afterAll(async () => {
    await wharf?.kill('SIGKILL');
    if (root) await rm(root, { recursive: true, force: true });
  });

  test('after the restart, GET on the session answers 204 with the Range of the first chunk', () => {
    expect(afterRestart.status).toBe(204);
    expect(afterRestart.range).toBe(`0-${firstChunk.length - 1}`);
    expect(afterRestart.uuid).toBe(session.pathname.split('/').at(-1));
    expect(new URL(afterRestart.location!, wharf!.url).pathname).toBe(session.pathname);
  });

  test('the session takes the rest, completes with PUT ?digest=, and blob and manifest pull back byte-identical', async () => {
    const patch = await fetch(session, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${firstChunk.length}-${blob.length - 1}` },
      body: blob.subarray(firstChunk.length),
    });
    expect(patch.status).toBe(202);
    expect(patch.headers.get('range')).toBe(`0-${blob.length - 1}`);

    const done = new URL(patch.headers.get('location')!, wharf!.url);
    done.searchParams.set('digest', blobDigest);
    const put = await fetch(done, { method: 'PUT' });
    expect(put.status).toBe(201);
    expect(put.headers.get('docker-content-digest')).toBe(blobDigest);

    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [blobDigest] } }));
    const configPost = await fetch(`${wharf!.url}/v2/${repo}/blobs/uploads/?digest=${sha256(config)}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/octet-stream' },
      body: config,
    });
    expect(configPost.status).toBe(201);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length },
        layers: [{ mediaType: OCI_LAYER_GZIP, digest: blobDigest, size: blob.length }],
      }),
    );
    const manifestPut = await fetch(`${wharf!.url}/v2/${repo}/manifests/1`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body: manifest });
    expect(manifestPut.status).toBe(201);
    expect(manifestPut.headers.get('docker-content-digest')).toBe(sha256(manifest));

    const gotBlob = await fetch(`${wharf!.url}/v2/${repo}/blobs/${blobDigest}`);
    expect(gotBlob.status).toBe(200);
    expect(Buffer.from(await gotBlob.arrayBuffer()).equals(blob)).toBe(true);
    const gotManifest = await fetch(`${wharf!.url}/v2/${repo}/manifests/1`, { headers: { Accept: OCI_MANIFEST } });
    expect(gotManifest.status).toBe(200);
    expect(gotManifest.headers.get('docker-content-digest')).toBe(sha256(manifest));
    expect(Buffer.from(await gotManifest.arrayBuffer()).equals(manifest)).toBe(true);
  });

  test('the finished session is gone, and the pushed image survives another kill -9', async () => {
    expect((await fetch(session)).status).toBe(404);
    await wharf!.kill('SIGKILL');
    await start();
    const gotBlob = await fetch(`${wharf!.url}/v2/${repo}/blobs/${blobDigest}`);
    expect(gotBlob.status).toBe(200);
    expect(sha256(Buffer.from(await gotBlob.arrayBuffer()))).toBe(blobDigest);
    const tags = (await (await fetch(`${wharf!.url}/v2/${repo}/tags/list`)).json()) as { tags: string[] };
    expect(tags.tags).toEqual(['1']);
  });

  test('a PATCH cut off by kill -9 mid-body leaves a session that resumes at its Range', async () => {
    const data = noise('interrupted blob', 2 * 1024 * 1024);
    const sent = 768 * 1024;
    const post = await fetch(`${wharf!.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    expect(post.status).toBe(202);
    const url = new URL(post.headers.get('location')!, wharf!.url);

    // Declare the whole blob, send part of it, and keep the request open.
    const req = request(url, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `0-${data.length - 1}`, 'Content-Length': String(data.length) },
    });
    const cut = new Promise<void>((resolve) => {
      req.on('error', () => resolve());
      req.once('response', (res) => {
        res.resume();
        resolve();
      });
    });
    req.write(data.subarray(0, sent));
    // While the chunk is still arriving the server reports only committed bytes (it may yet be cut), so
    // watch the session's file on disk to know when the sent part has landed.
    const id = url.pathname.split('/').at(-1)!;
    const onDisk = join(root, 'storage/_tmp/uploads', id, 'data');
    let received = 0;
    for (const deadline = Date.now() + 10_000; received < sent && Date.now() < deadline; ) {
      await new Promise((r) => setTimeout(r, 50));
      received = (await stat(onDisk).catch(() => undefined))?.size ?? 0;
    }
    expect(received).toBe(sent);
    const during = (await fetch(url)).headers.get('range');
    expect(during).toBe('0-0'); // nothing committed yet: the in-flight chunk is not offered for resuming

    await wharf!.kill('SIGKILL');
    await cut;
    await start();
    const res = await fetch(url);
    expect(res.status).toBe(204);
    const range = res.headers.get('range')!;
    const offset = Number(range.split('-')[1]) + 1;
    expect(offset).toBe(sent);

    const patch = await fetch(url, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${offset}-${data.length - 1}` },
      body: data.subarray(offset),
    });
    expect(patch.status).toBe(202);
    const done = new URL(patch.headers.get('location')!, wharf!.url);
    done.searchParams.set('digest', sha256(data));
    const put = await fetch(done, { method: 'PUT' });
    expect(put.status).toBe(201);
    const got = await fetch(`${wharf!.url}/v2/${repo}/blobs/${sha256(data)}`);
    expect(Buffer.from(await got.arrayBuffer()).equals(data)).toBe(true);
  });
});
