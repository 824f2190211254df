import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { FsBlobStore, removeIngestLeftovers } from '../src/fs/fs-blob-store.js';
import { describeBlobStore } from './blob-store.contract.js';
import { sha256, sha512, streamOf } from './helpers.js';

async function makeFsStore() {
  const dir = await mkdtemp(join(tmpdir(), 'wharf-fs-blobs-'));
  const root = join(dir, 'root');
  const tempRoot = join(dir, 'tmp');
  await mkdir(root);
  await mkdir(tempRoot);
  return { dir, root, tempRoot, store: new FsBlobStore(root, tempRoot) };
}

describeBlobStore('FsBlobStore', async () => {
  const { dir, tempRoot, store } = await makeFsStore();
  let n = 0;
  return {
    store,
    cleanup: () => rm(dir, { recursive: true, force: true }),
    leftovers: () => readdir(tempRoot),
    tempFile: async (bytes: Buffer) => {
      const file = join(tempRoot, `upload-${n++}`);
      await writeFile(file, bytes);
      return file;
    },
  };
});

describe('FsBlobStore layout', () => {
  let fx: Awaited<ReturnType<typeof makeFsStore>>;

  beforeEach(async () => {
    fx = await makeFsStore();
  });

  afterEach(async () => {
    await rm(fx.dir, { recursive: true, force: true });
  });

  test('a blob is a file at blobs/<algorithm>/<hex[0:2]>/<hex> under the root', async () => {
    const content = Buffer.from('layout');
    const digest = sha256(content);
    const hex = digest.slice('sha256:'.length);
    await fx.store.ingest(streamOf(content), { digest });
    const path = join(fx.root, 'blobs', 'sha256', hex.slice(0, 2), hex);
    expect(fx.store.pathOf(digest)).toBe(path);
    expect((await readFile(path)).equals(content)).toBe(true);
    expect(await readdir(fx.tempRoot)).toEqual([]);
  });

  test('sha512 blobs live in their own folder', async () => {
    const content = Buffer.from('layout');
    const digest = sha512(content);
    const hex = digest.slice('sha512:'.length);
    await fx.store.ingest(streamOf(content), { digest });
    expect((await readFile(join(fx.root, 'blobs', 'sha512', hex.slice(0, 2), hex))).equals(content)).toBe(true);
  });

  test('a malformed digest never becomes a path', async () => {
    expect(() => fx.store.pathOf('sha256:../../etc/passwd' as never)).toThrow(expect.objectContaining({ code: 'DIGEST_INVALID' }));
    await expect(fx.store.stat('sha256:../../../x' as never)).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
    await expect(fx.store.remove('sha256:../../../x' as never)).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
  });

  test('removeIngestLeftovers takes the ingest files not written to since the cutoff, and nothing else', async () => {
    const old = new Date(Date.now() - 3_600_000);
    for (const name of ['ingest-old', 'ingest-import-old-1', 'ingest-fresh', 'fill-old', 'uploads']) {
      await writeFile(join(fx.tempRoot, name), 'x');
      if (name.endsWith('old') || name.endsWith('old-1') || name === 'uploads') await utimes(join(fx.tempRoot, name), old, old);
    }
    await mkdir(join(fx.tempRoot, 'ingest-folder'));
    await utimes(join(fx.tempRoot, 'ingest-folder'), old, old);
    expect(await removeIngestLeftovers(fx.tempRoot, new Date(Date.now() - 600_000))).toBe(2);
    expect((await readdir(fx.tempRoot)).sort()).toEqual(['fill-old', 'ingest-folder', 'ingest-fresh', 'uploads']);
  });

  test('an ingest streaming slowly is no leftover: removeIngestLeftovers leaves it, and it completes', async () => {
    const body = new PassThrough();
    const ingesting = fx.store.ingest(body, { digest: sha256('slow body') });
    body.write('slow ');
    for (let i = 0; i < 50 && (await readdir(fx.tempRoot)).length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(await removeIngestLeftovers(fx.tempRoot, new Date(Date.now() - 600_000))).toBe(0);
    body.end('body');
    expect(await ingesting).toEqual({ digest: sha256('slow body'), size: 9 });
    expect(await readdir(fx.tempRoot)).toEqual([]);
  });
});
