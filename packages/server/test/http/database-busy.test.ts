// Another process holding the metadata database's write lock past the busy timeout (a `wharf`
// command's long transaction, a backup through the sqlite3 shell) is a moment's unavailability: the
// write that waited is answered 503 with Retry-After, which clients retry, and nothing is half written.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { openDatabase, type SqliteDatabase } from '@wharf/registry-core';
import { join } from 'node:path';
import { expectOciError, uniqueRepo } from '../helpers/http.js';
import { blob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

describe('the database busy in another connection', () => {
  let reg: TestRegistry;
  let other: SqliteDatabase;
  beforeAll(async () => {
    reg = await startRegistry();
    other = openDatabase(join(reg.root, 'wharf.db'));
  });
  afterAll(async () => {
    if (other.inTransaction) other.exec('ROLLBACK');
    other.close();
    await reg.close();
  });

  test('a push waiting past the busy timeout gets 503 UNAVAILABLE with Retry-After; once the lock is free, the same push succeeds', async () => {
    const repo = uniqueRepo('busy');
    const b = blob('pushed while another process writes');
    const push = () => fetch(`${reg.url}/v2/${repo}/blobs/uploads/?digest=${b.digest}`, { method: 'POST', body: b.bytes, headers: { 'content-type': 'application/octet-stream' } });
    other.exec('BEGIN IMMEDIATE');
    const refused = await push();
    other.exec('COMMIT');
    expect(refused.headers.get('retry-after')).toBe('1');
    await expectOciError(refused, 503, 'UNAVAILABLE');
    expect((await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`, { method: 'HEAD' })).status).toBe(404);
    expect((await push()).status).toBe(201);
    expect(Buffer.from(await (await fetch(`${reg.url}/v2/${repo}/blobs/${b.digest}`)).arrayBuffer()).equals(b.bytes)).toBe(true);
  }, 30_000);
});
