import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlobStore } from '../src/blob-store.js';
import type { Digest } from '../src/digest.js';
import { FsBlobStore } from '../src/fs/fs-blob-store.js';
import { FsUploadSessions } from '../src/fs/fs-uploads.js';
import { GarbageCollector, type GcOptions } from '../src/gc/garbage-collector.js';
import { LocalRegistry } from '../src/local-registry.js';
import { openDatabase, type SqliteDatabase } from '../src/sqlite/database.js';
import { SqliteMetadataStore } from '../src/sqlite/sqlite-metadata-store.js';
import { OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptorOf, ociManifestBytes, sha256, streamOf, type TestDescriptor } from './helpers.js';

/** A registry on a fresh temp folder: files, SQLite, uploads, leases, and a garbage collector over them. */
export interface GcFixture {
  readonly dir: string;
  readonly tempRoot: string;
  readonly db: SqliteDatabase;
  readonly metadata: SqliteMetadataStore;
  readonly blobs: FsBlobStore;
  readonly uploads: FsUploadSessions;
  readonly registry: LocalRegistry;
  readonly gc: GarbageCollector;
  /** GC as if `ageMs` had passed since everything now present was written (grace 0 unless given). */
  collect(options?: Partial<GcOptions> & { ageMs?: number }): ReturnType<GarbageCollector['run']>;
  /** A LocalRegistry over another blob store (a wrapper), with or without leases. */
  registryWith(blobs: BlobStore, leases?: boolean): LocalRegistry;
  close(): Promise<void>;
}

export async function gcFixture(): Promise<GcFixture> {
  const dir = await mkdtemp(join(tmpdir(), 'wharf-gc-'));
  const tempRoot = join(dir, 'tmp');
  const uploads = new FsUploadSessions(tempRoot);
  await uploads.init();
  const db = openDatabase(join(dir, 'metadata.db'));
  const metadata = new SqliteMetadataStore(db);
  const blobs = new FsBlobStore(join(dir, 'registry'), tempRoot);
  const registry = new LocalRegistry(blobs, metadata, uploads, metadata.lifecycle());
  const gc = new GarbageCollector({ metadata, blobs });
  return {
    dir,
    tempRoot,
    db,
    metadata,
    blobs,
    uploads,
    registry,
    gc,
    collect: ({ ageMs = 1000, ...options } = {}) => gc.run({ grace: 0, deleteUntagged: false, now: Date.now() + ageMs, ...options }),
    registryWith: (other, leases = true) => new LocalRegistry(other, metadata, uploads, leases ? metadata.lifecycle() : undefined),
    async close() {
      db.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface PushedImage {
  readonly digest: Digest;
  readonly bytes: Buffer;
  readonly config: TestDescriptor;
  readonly layers: TestDescriptor[];
}

/** Pushes blobs and an OCI image manifest (tagged unless `tag` is undefined). */
export async function pushImage(
  registry: LocalRegistry,
  repo: string,
  tag: string | undefined,
  layerContents: readonly (string | Buffer)[],
  extra: Record<string, unknown> = {},
): Promise<PushedImage> {
  const configBytes = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', layers: layerContents.map(String) }));
  const config = descriptorOf(configBytes, OCI_CONFIG);
  await registry.putBlob(repo, streamOf(configBytes), { digest: config.digest, size: config.size });
  const layers: TestDescriptor[] = [];
  for (const content of layerContents) {
    const bytes = Buffer.isBuffer(content) ? content : Buffer.from(content);
    const d = descriptorOf(bytes, OCI_LAYER);
    await registry.putBlob(repo, streamOf(bytes), { digest: d.digest, size: d.size });
    layers.push(d);
  }
  const bytes = ociManifestBytes(config, layers, extra);
  await registry.putManifest(repo, tag ?? sha256(bytes), bytes, OCI_MANIFEST);
  return { digest: sha256(bytes), bytes, config, layers };
}
