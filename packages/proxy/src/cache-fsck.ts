import type { BlobCatalog, Digest, FsBlobStore, SqliteDatabase } from '@wharf/registry-core';
import { CacheIndex } from './cache-index.js';

/**
 * The proxy cache as fsck sees it: `proxy_blobs` rows and `proxy_repository_blobs` links against the
 * files of proxy_storage. A repaired blob is simply fetched from its upstream again on the next pull.
 */
export function proxyBlobCatalog(db: SqliteDatabase, blobs: FsBlobStore): BlobCatalog {
  new CacheIndex(db); // make sure the tables exist
  const row = db.prepare('SELECT size FROM proxy_blobs WHERE digest = ?');
  const rows = db.prepare(`SELECT b.digest, b.size, (SELECT COUNT(*) FROM proxy_repository_blobs l WHERE l.digest = b.digest) AS links
                           FROM proxy_blobs b ORDER BY b.digest`);
  const deleteLinks = db.prepare('DELETE FROM proxy_repository_blobs WHERE digest = ?');
  const deleteRow = db.prepare('DELETE FROM proxy_blobs WHERE digest = ?');
  return {
    name: 'proxy',
    blobs,
    row: (digest) => row.get(digest) as { size: number } | undefined,
    rows: () => rows.all() as { digest: Digest; size: number; links: number }[],
    drop: (digest, stillBad, removeFile) =>
      db
        .transaction(() => {
          if (!stillBad()) return false;
          deleteLinks.run(digest);
          deleteRow.run(digest);
          removeFile();
          return true;
        })
        .immediate(),
    removeOrphan: (digest, removeFile) => db.transaction(() => (row.get(digest) ? false : removeFile())).immediate(),
  };
}
