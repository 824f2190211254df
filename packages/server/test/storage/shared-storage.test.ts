/**
 * Two Wharf processes on one storage and database (a rolling restart starts the new one before the
 * old one stops): a starting server must not take the temp file of a push another one is streaming,
 * and still removes what a crash left.
 */
import { afterEach, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { openStorage } from '../../src/storage-maintenance.js';

const started: TestRegistry[] = [];
let root: string | undefined;

afterEach(async () => {
  for (const server of started.splice(0)) await server.close();
  if (root) await rm(root, { recursive: true, force: true });
  root = undefined;
});

async function start(folder: string): Promise<TestRegistry> {
  const server = await startRegistry({ root: folder });
  started.push(server);
  return server;
}

const ingests = async (folder: string) => (await readdir(join(folder, '_tmp'))).filter((f) => f.startsWith('ingest-'));

describe('a server starting on the storage of a running one', () => {
  test('leaves the temp file of a monolithic upload the other is receiving: the upload completes (201)', async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-shared-'));
    const a = await start(root);
    const blob = randomBytes(4 * 1024 * 1024);
    const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
    const session = await fetch(`${a.url}/v2/alice/app/blobs/uploads/`, { method: 'POST' });
    expect(session.status).toBe(202);
    const location = new URL(session.headers.get('location')!, a.url);
    location.searchParams.set('digest', digest);

    // POST, then PUT with the whole body: containerd's way. Half the body goes before B starts.
    const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
      const put = request(location, { method: 'PUT', headers: { 'content-length': String(blob.length), 'content-type': 'application/octet-stream' } }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      });
      put.on('error', reject);
      put.write(blob.subarray(0, blob.length / 2));
      void (async () => {
        for (let i = 0; i < 200 && (await ingests(root!)).length === 0; i++) await new Promise((r) => setTimeout(r, 10));
        // Beside the upload's fresh temp file: a crash's leftover older than upload_max_age (24 h), which
        // goes, and an import's entry read 20 minutes ago and waiting for the rest of its archive, which stays.
        const leftover = join(root!, '_tmp', 'ingest-left-by-a-crash');
        await writeFile(leftover, 'partial');
        const dayAgo = new Date(Date.now() - 25 * 3_600_000);
        await utimes(leftover, dayAgo, dayAgo);
        const spooled = join(root!, '_tmp', 'ingest-import-0f1e2d3c-0');
        await writeFile(spooled, 'a layer read early');
        const minutesAgo = new Date(Date.now() - 20 * 60_000);
        await utimes(spooled, minutesAgo, minutesAgo);
        expect(await ingests(root!)).toHaveLength(3);
        await start(root!);
        expect((await ingests(root!)).sort()).toEqual([expect.stringMatching(/^ingest-[0-9a-f-]{36}$/), 'ingest-import-0f1e2d3c-0']);
        await rm(spooled);
        put.end(blob.subarray(blob.length / 2));
      })().catch((err: unknown) => {
        put.destroy();
        reject(err as Error);
      });
    });

    const { status, body } = await answer;
    expect({ status, body }).toEqual({ status: 201, body: '' });
    const pulled = await fetch(`${a.url}/v2/alice/app/blobs/${digest}`);
    expect(pulled.status).toBe(200);
    expect(Buffer.from(await pulled.arrayBuffer()).equals(blob)).toBe(true);
    expect(await ingests(root)).toEqual([]);
  });
});

describe('a server starting alone on its storage', () => {
  test('removes every push temp file a crash left, however fresh, before it opens the database', async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-shared-'));
    const first = await start(root);
    await first.close();
    started.splice(0);
    // What a crash leaves: a push's temp file (written a moment ago), and an older one.
    await writeFile(join(root, '_tmp', 'ingest-fresh-from-a-crash'), randomBytes(1024));
    await writeFile(join(root, '_tmp', 'ingest-import-old-1-x'), 'partial');
    expect(await ingests(root)).toHaveLength(2);
    const again = await start(root);
    expect(await ingests(root)).toEqual([]);
    expect((await fetch(`${again.url}/v2/`)).status).toBe(200);
  });
});

describe('a server starting while a command-line storage command runs', () => {
  test('leaves the young temp files of that command (an import spooling its archive), and takes them once it ended', async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-shared-'));
    const first = await start(root);
    const config = first.config;
    await first.close();
    started.splice(0);
    // As `wharf import` opens the storage (the server is down), and spools an entry.
    const command = await openStorage(config);
    const spooled = join(root, '_tmp', 'ingest-import-0a1b2c3d-0');
    await writeFile(spooled, 'an entry read early');
    try {
      const server = await start(root);
      expect(await ingests(root)).toEqual(['ingest-import-0a1b2c3d-0']);
      await server.close();
      started.splice(0);
    } finally {
      await command.close();
    }
    expect((await readdir(join(root, '_tmp'))).filter((f) => f.startsWith('owner-'))).toHaveLength(0);
    await start(root);
    expect(await ingests(root)).toEqual([]);
  });
});
