import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startUpload, uniqueRepo, withDigest } from '../helpers/http.js';
import { sha256 } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/**
 * A chunked upload whose completing PUT verified the bytes but could not move them into the store (on
 * a full disk, the database refused the blob's rows; here, a file stands where the store's folder for
 * the digest goes). Before, the session had ended with the seal: the client got an error, its session
 * was gone (404), and the bytes lay in the uploads folder for upload_max_age. Now the session comes
 * back as it was, and the same PUT completes it once the store can take the blob.
 */
describe('a completing PUT that cannot store its blob leaves the session to complete again', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => reg?.close());

  test('the PUT fails, the session still reports every byte, and the same PUT succeeds once the store is fixed', async () => {
    const blobs = join(reg.root, 'registry', 'blobs', 'sha256');
    await mkdir(blobs, { recursive: true });
    // A blob whose store folder does not exist yet (two hex digits: one of 256).
    const taken = new Set(await readdir(blobs));
    let bytes: Buffer;
    do bytes = randomBytes(3 * 1024 * 1024);
    while (taken.has(sha256(bytes).slice(7, 9)));
    const digest = sha256(bytes);
    const blocker = join(blobs, digest.slice(7, 9));
    await writeFile(blocker, 'not a folder');

    const repo = uniqueRepo('seal');
    const session = await startUpload(reg.url, repo);
    const half = 1536 * 1024;
    for (const [start, chunk] of [[0, bytes.subarray(0, half)], [half, bytes.subarray(half)]] as const) {
      const res = await fetch(session.url, { method: 'PATCH', headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${start}-${start + chunk.length - 1}` }, body: chunk });
      expect(res.status).toBe(202);
    }
    const failed = await fetch(withDigest(session.url, digest), { method: 'PUT' });
    expect(failed.status).toBeGreaterThanOrEqual(500);
    // The session is there, with every byte: no upload again.
    const status = await fetch(session.url);
    expect(status.status).toBe(204);
    expect(status.headers.get('range')).toBe(`0-${bytes.length - 1}`);
    expect((await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status).toBe(404);

    await rm(blocker);
    const done = await fetch(withDigest(session.url, digest), { method: 'PUT' });
    expect(done.status).toBe(201);
    const pulled = await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`);
    expect(sha256(Buffer.from(await pulled.arrayBuffer()))).toBe(digest);
    // Nothing of the session is left in the uploads folder, sealed or not.
    const uploads = join(reg.root, '_tmp', 'uploads');
    expect((await readdir(uploads).catch(() => [])).filter((n) => n.startsWith(session.url.split('/').pop()!.split('?')[0]!))).toEqual([]);
    expect(await stat(join(blobs, digest.slice(7, 9), digest.slice(7))).then((s) => s.size)).toBe(bytes.length);
  });
});
