import { afterAll, beforeAll, beforeEach, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { captureLog } from '../auth/helpers.js';
import { expectOciError, startUpload, uniqueRepo, withDigest } from '../helpers/http.js';
import { blob, imageManifest, OCI_MANIFEST, pushBlob, sha256 } from '../helpers/oci.js';
import { tar } from '../helpers/oci-layout.js';
import { SmallDisk } from '../helpers/small-disk.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

const MiB = 1024 * 1024;

/**
 * Pushes onto a disk that is full: blobs and uploads on a real 16 MiB tmpfs, the database on a
 * 4 MiB one of its own, each filled up with a filler file and freed again by removing it.
 */
describe('pushing onto a full disk', () => {
  let disk: SmallDisk;
  let dbDisk: SmallDisk;
  let reg: TestRegistry;
  const log = captureLog();

  beforeAll(async () => {
    disk = await SmallDisk.mount(16);
    dbDisk = await SmallDisk.mount(4);
    reg = await startRegistry({ root: disk.dir, settings: { database: join(dbDisk.dir, 'wharf.db') }, logger: log.logger });
  });
  afterAll(async () => {
    await reg?.close();
    await disk?.unmount();
    await dbDisk?.unmount();
  });
  beforeEach(async () => {
    await disk.release();
    await dbDisk.release();
  });

  async function expectStorageFull(res: Response): Promise<void> {
    const error = await expectOciError(res, 507, 'INSUFFICIENT_STORAGE');
    expect(error.message).toMatch(/^no space left on storage/);
    // What Docker shows of a 5xx: its status line.
    expect(res.statusText).toMatch(/^Insufficient Storage: no space left on storage/);
  }

  async function expectServed(repo: string, digest: string, bytes: Buffer): Promise<void> {
    const res = await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`);
    expect(res.status).toBe(200);
    expect(sha256(new Uint8Array(await res.arrayBuffer()))).toBe(digest);
    expect(bytes.length).toBe(Number(res.headers.get('content-length')));
  }

  /** Files in the temporary storage other than upload sessions and the fill owner's lock: none should stay. */
  async function strayTempFiles(): Promise<string[]> {
    return (await readdir(join(disk.dir, '_tmp'))).filter((name) => name !== 'uploads' && !name.startsWith('owner-'));
  }

  test('a monolithic push larger than the free space is a 507 that stores nothing, and goes through once space is freed', async () => {
    const repo = uniqueRepo('full');
    const bytes = randomBytes(6 * MiB);
    const digest = sha256(bytes);
    await disk.leave(2 * MiB);
    const post = (): Promise<Response> => fetch(`${reg.url}/v2/${repo}/blobs/uploads/?digest=${digest}`, { method: 'POST', headers: { 'Content-Type': 'application/octet-stream' }, body: bytes });
    await expectStorageFull(await post());
    // The same through a session closed by a PUT that carries the whole blob.
    const session = await startUpload(reg.url, repo);
    await expectStorageFull(await fetch(withDigest(session.url, digest), { method: 'PUT', headers: { 'Content-Type': 'application/octet-stream' }, body: bytes }));
    expect((await fetch(`${reg.url}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status).toBe(404);
    expect(await strayTempFiles()).toEqual([]);

    await disk.release();
    expect((await post()).status).toBe(201);
    await expectServed(repo, digest, bytes);
    expect(log.text()).toContain('"msg":"no space left on storage"');
  });

  test('a chunked upload that runs out of space mid-way keeps the chunks stored before, and resumes once space is freed', async () => {
    const repo = uniqueRepo('full');
    const bytes = randomBytes(7 * MiB);
    const digest = sha256(bytes);
    const first = bytes.subarray(0, 2 * MiB);
    const rest = bytes.subarray(2 * MiB);
    await disk.leave(4 * MiB);
    const session = await startUpload(reg.url, repo);
    const patch = (chunk: Buffer, start: number) =>
      fetch(session.url, { method: 'PATCH', headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${start}-${start + chunk.length - 1}` }, body: chunk });
    expect((await patch(first, 0)).status).toBe(202);
    await expectStorageFull(await patch(rest, first.length));
    // The session is where the last stored chunk left it: a client may ask, and go on from there.
    const status = await fetch(session.url);
    expect(status.status).toBe(204);
    expect(status.headers.get('range')).toBe(`0-${first.length - 1}`);

    await disk.release();
    expect((await patch(rest, first.length)).status).toBe(202);
    const put = await fetch(withDigest(session.url, digest), { method: 'PUT' });
    expect(put.status).toBe(201);
    await expectServed(repo, digest, bytes);
    expect(await strayTempFiles()).toEqual([]);
  });

  test('a session that cannot be started on a full disk is a 507 and leaves no folder behind', async () => {
    const repo = uniqueRepo('full');
    const uploads = join(disk.dir, '_tmp', 'uploads');
    const before = await readdir(uploads);
    await disk.leave(0);
    await expectStorageFull(await fetch(`${reg.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' }));
    expect(await readdir(uploads)).toEqual(before);
    await disk.release();
    expect((await startUpload(reg.url, repo)).res.status).toBe(202);
  });

  test('a manifest PUT the database has no room for is a 507, and is stored once space is freed', async () => {
    const repo = uniqueRepo('full');
    const config = blob('{}');
    const layer = blob(randomBytes(1024));
    await pushBlob(reg.url, repo, config);
    await pushBlob(reg.url, repo, layer);
    // Larger than any room the database's files have kept from earlier writes.
    const manifest = imageManifest(config, [layer], { annotations: { padding: 'x'.repeat(1536 * 1024) } });
    const put = (): Promise<Response> => fetch(`${reg.url}/v2/${repo}/manifests/1`, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body: manifest.bytes });
    await dbDisk.leave(0);
    await expectStorageFull(await put());
    expect((await fetch(`${reg.url}/v2/${repo}/manifests/1`)).status).toBe(404);
    expect(log.text()).toContain('"code":"SQLITE_FULL"');

    await dbDisk.release();
    expect((await put()).status).toBe(201);
    const got = await fetch(`${reg.url}/v2/${repo}/manifests/1`);
    expect(got.status).toBe(200);
    expect(Buffer.from(await got.arrayBuffer()).equals(manifest.bytes)).toBe(true);
  });

  test('/ready is 503 while the database\'s file system is full, and 200 again once it has room', async () => {
    await dbDisk.leave(0);
    const full = await fetch(`${reg.url}/ready`);
    expect(full.status).toBe(503);
    expect(await full.json()).toEqual({ status: 'unavailable', checks: { database: 'failed', storage: 'ok' } });
    await dbDisk.release();
    const again = await fetch(`${reg.url}/ready`);
    expect(again.status).toBe(200);
    expect(await again.json()).toEqual({ status: 'ready', checks: { database: 'ok', storage: 'ok' } });
  });

  test('an archive import that fills the disk with its small entries is a 507 that leaves no temp file', async () => {
    // Entries of 64 KiB: each is written behind the reading (a few at once), so the full disk is met
    // by a write under way, not by the entry being read. 20 MiB of them against 1 MiB free.
    const entries = Array.from({ length: 320 }, (_, i) => ({ path: `junk/${i}`, content: randomBytes(64 * 1024) }));
    await disk.leave(1 * MiB);
    const res = await fetch(`${reg.url}/admin/import?repository=ops/junk`, { method: 'POST', headers: { 'Content-Type': 'application/x-tar' }, body: tar(entries) });
    await expectStorageFull(res);
    expect(await strayTempFiles()).toEqual([]);
    await disk.release();
    // The server goes on: the same junk is now refused for what it is.
    const again = await fetch(`${reg.url}/admin/import?repository=ops/junk`, { method: 'POST', headers: { 'Content-Type': 'application/x-tar' }, body: tar(entries.slice(0, 8)) });
    expect((await expectOciError(again, 400, 'MANIFEST_INVALID')).message).toMatch(/^not an image archive/);
    expect(await strayTempFiles()).toEqual([]);
  });

  test('the log says what happened, without a stack trace, and the server goes on serving', async () => {
    const lines = log.text().split('\n').filter((line) => line.includes('no space left on storage'));
    expect(lines.length).toBeGreaterThan(0);
    for (const line of lines) expect(line).not.toContain('"stack"');
    expect(log.text()).not.toContain('unexpected error');
    expect((await fetch(`${reg.url}/ready`)).status).toBe(200);
  });
});
