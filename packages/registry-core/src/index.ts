export * from './errors.js';
export * from './digest.js';
export * from './reference.js';
export * from './media-types.js';
export * from './manifest.js';
export { referrersPage, referrersPageOf, type ReferrersQuery, type ReferrersSlice } from './referrers-page.js';
export { JSON_SHAPE_LIMITS, JsonShapeError, jsonShapeProblem, parseBoundedJson, type JsonShapeLimits } from './json-shape.js';
export * from './blob-store.js';
export * from './metadata-store.js';
export * from './uploads.js';
export { noteReceived } from './young-garbage.js';
export { exposedGc, fullGcSoon, type Gc } from './exposed-gc.js';
export { pageAligned, pageAlignedLive } from './page-aligned.js';
export { processLimit } from './process-limits.js';
export * from './registry.js';
export * from './local-registry.js';
export { FsBlobStore, removeIngestLeftovers } from './fs/fs-blob-store.js';
export { FileBlobStream, closeFile, takeFile, type FileRange, type HeldBytes, type TakesFile } from './fs/file-blob-stream.js';
export { SERVER_WAIT } from './server-wait.js';
export { FsUploadSessions } from './fs/fs-uploads.js';
export { openDatabase, openDatabaseReadOnly, type SqliteDatabase, type SqliteStatement } from './sqlite/database.js';
export { createRowidTable, ensureRowidTable, type RowidTable } from './sqlite/rowid-tables.js';
export { ProcessLock } from './sqlite/process-lock.js';
export { isBusy } from './sqlite/busy.js';
export { SQLITE_DRIVER, sqliteDriverVersion } from './sqlite/driver.js';
export { DeferredWrites, deferredWrites, flushDeferredWrites, NOTE_INTERVAL_MS } from './sqlite/deferred-writes.js';
export { SqliteMetadataStore, MAX_PAGE } from './sqlite/sqlite-metadata-store.js';
export * from './blob-leases.js';
export {
  SqliteLifecycle,
  LEASE_TTL_MS,
  type RepositoryGraph,
  type RepositoryGarbage,
  type TagRecord,
  type LinkRecord,
  type GraphManifest,
  type GraphReference,
  type DanglingReference,
} from './sqlite/sqlite-lifecycle.js';
export { BROKEN_MANIFEST_WARNING } from './sqlite/sqlite-metadata-store.js';
export { blobFiles, type BlobFile } from './gc/blob-files.js';
export { markRepository, type MarkOptions } from './gc/mark.js';
export * from './gc/retention.js';
export * from './gc/garbage-collector.js';
export * from './gc/fsck.js';
export * from './archive/image-name.js';
export * from './archive/import.js';
export * from './archive/export.js';
