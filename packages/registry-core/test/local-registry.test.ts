import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlobStore } from '../src/blob-store.js';
import { FsBlobStore } from '../src/fs/fs-blob-store.js';
import { FsUploadSessions } from '../src/fs/fs-uploads.js';
import { LocalRegistry } from '../src/local-registry.js';
import { openDatabase, type SqliteDatabase } from '../src/sqlite/database.js';
import { SqliteMetadataStore } from '../src/sqlite/sqlite-metadata-store.js';
import {
  EMPTY_JSON,
  OCI_CONFIG,
  OCI_EMPTY,
  OCI_INDEX,
  OCI_LAYER,
  OCI_MANIFEST,
  descriptorOf,
  failingStream,
  ociIndexBytes,
  ociManifestBytes,
  readAll,
  sha256,
  sha512,
  streamOf,
} from './helpers.js';

describe('LocalRegistry on files and SQLite', () => {
  let dir: string;
  let db: SqliteDatabase;
  let blobs: FsBlobStore;
  let registry: LocalRegistry;
  let metadata: SqliteMetadataStore;
  let uploads: FsUploadSessions;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-local-'));
    const tempRoot = join(dir, 'tmp');
    uploads = new FsUploadSessions(tempRoot);
    await uploads.init();
    db = openDatabase(join(dir, 'metadata.db'));
    blobs = new FsBlobStore(join(dir, 'registry'), tempRoot);
    metadata = new SqliteMetadataStore(db);
    registry = new LocalRegistry(blobs, metadata, uploads);
  });

  afterEach(async () => {
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
  const layer = Buffer.from('layer bytes');
  const manifestBytes = ociManifestBytes(descriptorOf(config, OCI_CONFIG), [descriptorOf(layer, OCI_LAYER)]);
  const manifestDigest = sha256(manifestBytes);

  async function pushBlobs(repo: string): Promise<void> {
    await registry.putBlob(repo, streamOf(config), { digest: sha256(config), size: config.length });
    await registry.putBlob(repo, streamOf(layer), { digest: sha256(layer), size: layer.length });
  }

  describe('blobs', () => {
    test('putBlob stores the blob and links it to the repository only', async () => {
      const info = await registry.putBlob('alice/a', streamOf(layer), { digest: sha256(layer), size: layer.length });
      expect(info).toEqual({ digest: sha256(layer), size: layer.length });
      expect(await registry.blob('alice/a', sha256(layer))).toEqual(info);
      expect((await readAll(await registry.openBlob('alice/a', info))).equals(layer)).toBe(true);
      expect(await registry.blob('bob/b', sha256(layer))).toBeUndefined();
    });

    test('putBlob with the wrong digest links nothing', async () => {
      await expect(registry.putBlob('alice/a', streamOf(layer), { digest: sha256(config) })).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
      expect(await registry.blob('alice/a', sha256(config))).toBeUndefined();
      expect(await registry.blob('alice/a', sha256(layer))).toBeUndefined();
      expect(await metadata.repositoryExists('alice/a')).toBe(false);
    });

    test('openBlob serves a range', async () => {
      const info = await registry.putBlob('alice/a', streamOf(layer), { digest: sha256(layer) });
      expect((await readAll(await registry.openBlob('alice/a', info, { start: 0, end: 4 }))).toString()).toBe('layer');
    });

    test('deleteBlob unlinks the blob from the repository', async () => {
      const info = await registry.putBlob('alice/a', streamOf(layer), { digest: sha256(layer) });
      await registry.putBlob('bob/b', streamOf(layer), { digest: sha256(layer) });
      expect(await registry.deleteBlob('alice/a', info.digest)).toBe(true);
      expect(await registry.blob('alice/a', info.digest)).toBeUndefined();
      expect(await registry.blob('bob/b', info.digest)).toEqual(info);
      expect(await registry.deleteBlob('alice/a', info.digest)).toBe(false);
    });

    test('mountBlob links a blob from a repository that has it', async () => {
      await registry.putBlob('alice/a', streamOf(layer), { digest: sha256(layer) });
      expect(await registry.mountBlob('bob/b', sha256(layer), 'alice/a')).toEqual({ digest: sha256(layer), size: layer.length });
      expect(await registry.blob('bob/b', sha256(layer))).toEqual({ digest: sha256(layer), size: layer.length });
    });

    test('mountBlob from a repository that does not have the blob is undefined and links nothing', async () => {
      await registry.putBlob('alice/a', streamOf(layer), { digest: sha256(layer) });
      await registry.putBlob('carol/c', streamOf(config), { digest: sha256(config) });
      // stored in the blob store (through alice/a), but not linked to carol/c
      expect(await registry.mountBlob('bob/b', sha256(layer), 'carol/c')).toBeUndefined();
      expect(await registry.mountBlob('bob/b', sha256(layer), 'nobody/here')).toBeUndefined();
      expect(await registry.blob('bob/b', sha256(layer))).toBeUndefined();
    });

    test('mountBlob from an invalid repository name is undefined', async () => {
      expect(await registry.mountBlob('bob/b', sha256(layer), '../alice/a')).toBeUndefined();
      expect(await registry.mountBlob('bob/b', sha256(layer), 'Alice/A')).toBeUndefined();
    });

    test('mountBlob ignores a source name that is not a valid repository name, even one the store knows', async () => {
      await registry.putBlob('alice/a', streamOf(layer), { digest: sha256(layer) });
      await new SqliteMetadataStore(db).linkBlob('Alice/A', { digest: sha256(layer), size: layer.length });
      expect(await registry.mountBlob('bob/b', sha256(layer), 'Alice/A')).toBeUndefined();
      expect(await registry.blob('bob/b', sha256(layer))).toBeUndefined();
    });

    test('mountSource is the first repository by name that holds the blob and that the caller may read', async () => {
      await registry.putBlob('carol/c', streamOf(layer), { digest: sha256(layer) });
      await registry.putBlob('alice/a', streamOf(layer), { digest: sha256(layer) });
      await registry.putBlob('bob/b', streamOf(config), { digest: sha256(config) });
      expect(await registry.mountSource(sha256(layer), () => true)).toBe('alice/a');
      expect(await registry.mountSource(sha256(layer), (repo) => repo !== 'alice/a')).toBe('carol/c');
      expect(await registry.mountSource(sha256(layer), (repo) => repo === 'bob/b')).toBeUndefined();
      expect(await registry.mountSource(sha256(Buffer.from('nowhere')), () => true)).toBeUndefined();
    });

    test('mountBlob of a linked blob whose file is gone is undefined', async () => {
      await registry.putBlob('alice/a', streamOf(layer), { digest: sha256(layer) });
      await blobs.remove(sha256(layer));
      expect(await registry.mountBlob('bob/b', sha256(layer), 'alice/a')).toBeUndefined();
      expect(await registry.blob('bob/b', sha256(layer))).toBeUndefined();
    });
  });

  describe('uploads', () => {
    const part1 = Buffer.from('chunked ');
    const part2 = Buffer.from('upload');
    const whole = Buffer.concat([part1, part2]);

    test('begin, append, complete with a final chunk: the blob is stored, linked, and the session gone', async () => {
      const s = await registry.beginUpload('alice/a');
      await registry.appendUpload('alice/a', s.id, streamOf(part1), { start: 0, end: part1.length - 1 });
      expect((await registry.uploadStatus('alice/a', s.id))?.size).toBe(part1.length);
      const info = await registry.completeUpload('alice/a', s.id, sha256(whole), {
        body: streamOf(part2),
        position: { start: part1.length, end: whole.length - 1 },
      });
      expect(info).toEqual({ digest: sha256(whole), size: whole.length });
      expect(await registry.blob('alice/a', sha256(whole))).toEqual(info);
      expect((await readAll(await registry.openBlob('alice/a', info))).equals(whole)).toBe(true);
      expect(await registry.uploadStatus('alice/a', s.id)).toBeUndefined();
      expect(await readdir(join(dir, 'tmp', 'uploads'))).toEqual([]);
    });

    test('a monolithic upload completed with a sha512 digest', async () => {
      const s = await registry.beginUpload('alice/a');
      const info = await registry.completeUpload('alice/a', s.id, sha512(whole), { body: streamOf(whole), position: {} });
      expect(info).toEqual({ digest: sha512(whole), size: whole.length });
      expect(await blobs.stat(sha512(whole))).toEqual(info);
    });

    test('a monolithic upload (the whole blob in the completing PUT) goes straight into the store, not through the session\'s file', async () => {
      const calls: string[] = [];
      const counting: BlobStore = {
        stat: (d) => blobs.stat(d),
        open: (d, r) => blobs.open(d, r),
        ingest: (src, e, sig) => (calls.push('ingest'), blobs.ingest(src, e, sig)),
        remove: (d) => blobs.remove(d),
        adopt: (file, blob) => (calls.push('adopt'), blobs.adopt(file, blob)),
      };
      const direct = new LocalRegistry(counting, metadata, uploads);
      const s = await direct.beginUpload('alice/a');
      const info = await direct.completeUpload('alice/a', s.id, sha256(whole), { body: streamOf(part1, part2), position: { start: 0, end: whole.length - 1 } });
      expect(info).toEqual({ digest: sha256(whole), size: whole.length });
      expect(calls).toEqual(['ingest']);
      expect(await direct.blob('alice/a', sha256(whole))).toEqual(info);
      expect((await readAll(await direct.openBlob('alice/a', info))).equals(whole)).toBe(true);
      expect(await direct.uploadStatus('alice/a', s.id)).toBeUndefined();
      expect(await readdir(join(dir, 'tmp', 'uploads'))).toEqual([]);
      // A session that has bytes already still appends its last chunk and seals.
      const t = await direct.beginUpload('alice/a');
      await direct.appendUpload('alice/a', t.id, streamOf(part1), {});
      await direct.completeUpload('alice/a', t.id, sha256(whole), { body: streamOf(part2), position: {} });
      expect(calls).toEqual(['ingest', 'adopt']);
    });

    test('a monolithic upload with the wrong digest is DIGEST_INVALID, ends the session and leaves no file', async () => {
      const s = await registry.beginUpload('alice/a');
      await expect(registry.completeUpload('alice/a', s.id, sha256(part1), { body: streamOf(whole), position: {} })).rejects.toMatchObject({
        code: 'DIGEST_INVALID',
      });
      expect(await registry.uploadStatus('alice/a', s.id)).toBeUndefined();
      expect(await blobs.stat(sha256(whole))).toBeUndefined();
      expect(await blobs.stat(sha256(part1))).toBeUndefined();
      expect(await readdir(join(dir, 'tmp', 'uploads'))).toEqual([]);
      expect((await readdir(join(dir, 'tmp'))).filter((f) => f !== 'uploads')).toEqual([]);
    });

    test('a monolithic upload cut short or longer than its Content-Range keeps the empty session for a retry', async () => {
      const s = await registry.beginUpload('alice/a');
      await expect(registry.completeUpload('alice/a', s.id, sha256(whole), { body: failingStream(part1), position: {} })).rejects.toThrow();
      expect((await registry.uploadStatus('alice/a', s.id))?.size).toBe(0);
      await expect(
        registry.completeUpload('alice/a', s.id, sha256(whole), { body: streamOf(whole), position: { start: 0, end: part1.length - 1 } }),
      ).rejects.toMatchObject({ code: 'SIZE_INVALID' });
      expect((await registry.uploadStatus('alice/a', s.id))?.size).toBe(0);
      expect(await blobs.stat(sha256(whole))).toBeUndefined();
      expect(await registry.completeUpload('alice/a', s.id, sha256(whole), { body: streamOf(whole), position: {} })).toEqual({ digest: sha256(whole), size: whole.length });
      expect((await readdir(join(dir, 'tmp'))).filter((f) => f !== 'uploads')).toEqual([]);
    });

    test('a PATCH racing the final PUT cannot change the verified blob', async () => {
      // A real store whose adopt() is slow (a busy disk): the window between verification and the move
      // into place is where a concurrent PATCH to the same session would land.
      let adopting!: () => void;
      const adoptStarted = new Promise<void>((resolve) => (adopting = resolve));
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      const slowStore: BlobStore = {
        stat: (d) => blobs.stat(d),
        open: (d, r) => blobs.open(d, r),
        ingest: (src, e, sig) => blobs.ingest(src, e, sig),
        remove: (d) => blobs.remove(d),
        adopt: async (file, blob) => {
          adopting();
          await released;
          return blobs.adopt(file, blob);
        },
      };
      const racy = new LocalRegistry(slowStore, new SqliteMetadataStore(db), uploads);
      const s = await racy.beginUpload('alice/a');
      await racy.appendUpload('alice/a', s.id, streamOf(whole), {});
      const completing = racy.completeUpload('alice/a', s.id, sha256(whole));
      await adoptStarted;
      const late = racy.appendUpload('alice/a', s.id, streamOf('junk appended after verification'), {}).then(
        () => 'accepted',
        (err: { code?: string }) => err.code,
      );
      // let the PATCH do all it can before the move goes ahead
      await new Promise((r) => setTimeout(r, 50));
      release();
      expect(await completing).toEqual({ digest: sha256(whole), size: whole.length });
      const stored = await readAll(await blobs.open(sha256(whole)));
      expect(stored.toString()).toBe(whole.toString());
      expect(await blobs.stat(sha256(whole))).toEqual({ digest: sha256(whole), size: whole.length });
      expect(await late).toBe('BLOB_UPLOAD_UNKNOWN');
    });

    test('completeUpload with the wrong digest is DIGEST_INVALID and cancels the session', async () => {
      const s = await registry.beginUpload('alice/a');
      await registry.appendUpload('alice/a', s.id, streamOf(whole), {});
      await expect(registry.completeUpload('alice/a', s.id, sha256(part1))).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
      expect(await registry.uploadStatus('alice/a', s.id)).toBeUndefined();
      expect(await registry.blob('alice/a', sha256(part1))).toBeUndefined();
      expect(await registry.blob('alice/a', sha256(whole))).toBeUndefined();
      expect(await blobs.stat(sha256(whole))).toBeUndefined();
      expect(await readdir(join(dir, 'tmp', 'uploads'))).toEqual([]);
    });

    test('completeUpload with a final chunk at the wrong offset keeps the session', async () => {
      const s = await registry.beginUpload('alice/a');
      await registry.appendUpload('alice/a', s.id, streamOf(part1), {});
      await expect(
        registry.completeUpload('alice/a', s.id, sha256(whole), { body: streamOf(part2), position: { start: 0, end: part2.length - 1 } }),
      ).rejects.toMatchObject({ code: 'RANGE_INVALID' });
      expect((await registry.uploadStatus('alice/a', s.id))?.size).toBe(part1.length);
    });

    test('completing an upload from another repository is BLOB_UPLOAD_UNKNOWN', async () => {
      const s = await registry.beginUpload('alice/a');
      await registry.appendUpload('alice/a', s.id, streamOf(whole), {});
      await expect(registry.completeUpload('bob/b', s.id, sha256(whole))).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
      expect(await registry.blob('bob/b', sha256(whole))).toBeUndefined();
      expect((await registry.uploadStatus('alice/a', s.id))?.size).toBe(whole.length);
    });

    test('cancelUpload ends the session', async () => {
      const s = await registry.beginUpload('alice/a');
      expect(await registry.cancelUpload('alice/a', s.id)).toBe(true);
      expect(await registry.uploadStatus('alice/a', s.id)).toBeUndefined();
      expect(await registry.cancelUpload('alice/a', s.id)).toBe(false);
    });
  });

  describe('manifests', () => {
    test('putManifest by tag: readable by tag and by digest', async () => {
      await pushBlobs('alice/a');
      expect(await registry.putManifest('alice/a', 'latest', manifestBytes, OCI_MANIFEST)).toEqual({ digest: manifestDigest });
      const byTag = await registry.manifest('alice/a', 'latest');
      const byDigest = await registry.manifest('alice/a', manifestDigest);
      expect(byTag).toEqual({ digest: manifestDigest, mediaType: OCI_MANIFEST, bytes: manifestBytes });
      expect(byDigest).toEqual(byTag);
      expect(await registry.tags('alice/a', {})).toEqual(['latest']);
      expect(await registry.repositories({})).toEqual(['alice/a']);
    });

    test('peekManifest: what manifest() finds; undefined where manifest() would refuse', async () => {
      await pushBlobs('alice/a');
      await registry.putManifest('alice/a', 'latest', manifestBytes, OCI_MANIFEST);
      expect(await registry.peekManifest('alice/a', 'latest')).toEqual(await registry.manifest('alice/a', 'latest'));
      expect((await registry.peekManifest('alice/a', manifestDigest))?.digest).toBe(manifestDigest);
      expect(await registry.peekManifest('alice/a', 'other')).toBeUndefined();
      expect(await registry.peekManifest('bob/b', 'latest')).toBeUndefined();
      await expect(registry.manifest('alice/a', '-bad')).rejects.toMatchObject({ code: 'TAG_INVALID' });
      expect(await registry.peekManifest('alice/a', '-bad')).toBeUndefined();
      await expect(registry.manifest('alice/a', 'sha256:abc')).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
      expect(await registry.peekManifest('alice/a', 'sha256:abc')).toBeUndefined();
    });

    test('putManifest by digest: stored without a tag', async () => {
      await pushBlobs('alice/a');
      expect(await registry.putManifest('alice/a', manifestDigest, manifestBytes, OCI_MANIFEST)).toEqual({ digest: manifestDigest });
      expect((await registry.manifest('alice/a', manifestDigest))?.bytes.equals(manifestBytes)).toBe(true);
      expect(await registry.tags('alice/a', {})).toEqual([]);
    });

    test('putManifest by a digest the content does not match is DIGEST_INVALID and stores nothing', async () => {
      await pushBlobs('alice/a');
      const wrong = sha256('another manifest');
      await expect(registry.putManifest('alice/a', wrong, manifestBytes, OCI_MANIFEST)).rejects.toMatchObject({
        code: 'DIGEST_INVALID',
        detail: { expected: wrong, actual: manifestDigest },
      });
      expect(await registry.manifest('alice/a', manifestDigest)).toBeUndefined();
      expect(await registry.manifest('alice/a', wrong)).toBeUndefined();
    });

    test('putManifest by a sha512 digest stores the manifest under it', async () => {
      await pushBlobs('alice/a');
      const d512 = sha512(manifestBytes);
      expect(await registry.putManifest('alice/a', d512, manifestBytes, OCI_MANIFEST)).toEqual({ digest: d512 });
      expect((await registry.manifest('alice/a', d512))?.bytes.equals(manifestBytes)).toBe(true);
    });

    test('putManifest by a malformed digest is DIGEST_INVALID', async () => {
      await pushBlobs('alice/a');
      await expect(registry.putManifest('alice/a', 'sha256:abc', manifestBytes, OCI_MANIFEST)).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
    });

    test('putManifest with extra tags applies them all', async () => {
      await pushBlobs('alice/a');
      await registry.putManifest('alice/a', 'latest', manifestBytes, OCI_MANIFEST, ['v1', 'v1.0']);
      expect(await registry.tags('alice/a', {})).toEqual(['latest', 'v1', 'v1.0']);
      for (const tag of ['latest', 'v1', 'v1.0']) expect((await registry.manifest('alice/a', tag))?.digest).toBe(manifestDigest);
    });

    test('putManifest by digest with extra tags tags it', async () => {
      await pushBlobs('alice/a');
      await registry.putManifest('alice/a', manifestDigest, manifestBytes, OCI_MANIFEST, ['v2']);
      expect(await registry.tags('alice/a', {})).toEqual(['v2']);
    });

    test('an invalid tag or extra tag is TAG_INVALID and stores nothing', async () => {
      await pushBlobs('alice/a');
      await expect(registry.putManifest('alice/a', '-bad', manifestBytes, OCI_MANIFEST)).rejects.toMatchObject({ code: 'TAG_INVALID' });
      await expect(registry.putManifest('alice/a', 'latest', manifestBytes, OCI_MANIFEST, ['ok', '.bad'])).rejects.toMatchObject({
        code: 'TAG_INVALID',
      });
      expect(await registry.manifest('alice/a', manifestDigest)).toBeUndefined();
      expect(await registry.tags('alice/a', {})).toEqual([]);
    });

    test('putManifest without the blobs is MANIFEST_BLOB_UNKNOWN', async () => {
      await registry.putBlob('alice/a', streamOf(config), { digest: sha256(config) });
      await expect(registry.putManifest('alice/a', 'latest', manifestBytes, OCI_MANIFEST)).rejects.toMatchObject({ code: 'MANIFEST_BLOB_UNKNOWN' });
    });

    test('putManifest with blobs pushed only to another repository is MANIFEST_BLOB_UNKNOWN until mounted', async () => {
      await pushBlobs('alice/a');
      await expect(registry.putManifest('bob/b', 'latest', manifestBytes, OCI_MANIFEST)).rejects.toMatchObject({ code: 'MANIFEST_BLOB_UNKNOWN' });
      await registry.mountBlob('bob/b', sha256(config), 'alice/a');
      await registry.mountBlob('bob/b', sha256(layer), 'alice/a');
      expect((await registry.putManifest('bob/b', 'latest', manifestBytes, OCI_MANIFEST)).digest).toBe(manifestDigest);
    });

    test('putManifest of a referrer returns its subject, and referrers lists it', async () => {
      await pushBlobs('alice/a');
      await registry.putManifest('alice/a', 'latest', manifestBytes, OCI_MANIFEST);
      await registry.putBlob('alice/a', streamOf(EMPTY_JSON), { digest: sha256(EMPTY_JSON) });
      const sig = ociManifestBytes(descriptorOf(EMPTY_JSON, OCI_EMPTY), [descriptorOf(EMPTY_JSON, OCI_EMPTY)], {
        artifactType: 'application/vnd.example.signature',
        subject: { mediaType: OCI_MANIFEST, digest: manifestDigest, size: manifestBytes.length },
      });
      expect(await registry.putManifest('alice/a', sha256(sig), sig, OCI_MANIFEST)).toEqual({ digest: sha256(sig), subject: manifestDigest });
      expect(await registry.referrers('alice/a', manifestDigest)).toEqual([
        { mediaType: OCI_MANIFEST, digest: sha256(sig), size: sig.length, artifactType: 'application/vnd.example.signature' },
      ]);
    });

    test('an index over pushed manifests', async () => {
      await pushBlobs('alice/a');
      await registry.putManifest('alice/a', manifestDigest, manifestBytes, OCI_MANIFEST);
      const index = ociIndexBytes([{ mediaType: OCI_MANIFEST, digest: manifestDigest, size: manifestBytes.length }]);
      expect((await registry.putManifest('alice/a', 'multi', index, OCI_INDEX)).digest).toBe(sha256(index));
      expect((await registry.manifest('alice/a', 'multi'))?.mediaType).toBe(OCI_INDEX);
    });

    test('manifest of an unknown tag or digest is undefined', async () => {
      expect(await registry.manifest('alice/a', 'latest')).toBeUndefined();
      expect(await registry.manifest('alice/a', manifestDigest)).toBeUndefined();
    });

    test('manifest with a malformed reference is DIGEST_INVALID or TAG_INVALID', async () => {
      await expect(registry.manifest('alice/a', 'sha256:abc')).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
      await expect(registry.manifest('alice/a', `sha256:${'A'.repeat(64)}`)).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
      await expect(registry.manifest('alice/a', '.hidden')).rejects.toMatchObject({ code: 'TAG_INVALID' });
    });

    test('deleteManifest by tag removes the tag only', async () => {
      await pushBlobs('alice/a');
      await registry.putManifest('alice/a', 'latest', manifestBytes, OCI_MANIFEST, ['v1']);
      expect(await registry.deleteManifest('alice/a', 'latest')).toBe(true);
      expect(await registry.manifest('alice/a', 'latest')).toBeUndefined();
      expect((await registry.manifest('alice/a', 'v1'))?.digest).toBe(manifestDigest);
      expect((await registry.manifest('alice/a', manifestDigest))?.digest).toBe(manifestDigest);
      expect(await registry.deleteManifest('alice/a', 'latest')).toBe(false);
    });

    test('deleteManifest by digest removes the manifest and all its tags', async () => {
      await pushBlobs('alice/a');
      await registry.putManifest('alice/a', 'latest', manifestBytes, OCI_MANIFEST, ['v1']);
      expect(await registry.deleteManifest('alice/a', manifestDigest)).toBe(true);
      expect(await registry.manifest('alice/a', manifestDigest)).toBeUndefined();
      expect(await registry.manifest('alice/a', 'latest')).toBeUndefined();
      expect(await registry.manifest('alice/a', 'v1')).toBeUndefined();
      expect(await registry.tags('alice/a', {})).toEqual([]);
      expect(await registry.deleteManifest('alice/a', manifestDigest)).toBe(false);
      // the blobs stay linked: deleting a manifest is not garbage collection
      expect(await registry.blob('alice/a', sha256(layer))).toEqual({ digest: sha256(layer), size: layer.length });
    });

    test('deleteManifest with a malformed reference is DIGEST_INVALID or TAG_INVALID', async () => {
      await expect(registry.deleteManifest('alice/a', 'sha256:abc')).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
      await expect(registry.deleteManifest('alice/a', '-x')).rejects.toMatchObject({ code: 'TAG_INVALID' });
    });
  });
});
