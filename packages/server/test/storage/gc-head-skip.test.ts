import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { openDatabase } from '@wharf/registry-core';
import { basic, bcryptHash, fetchToken, pushWith, RegistryClient, startAuthRegistry, type TokenReply } from '../auth/helpers.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { exists, blobFile, pushBlob, pushLayers, sha256, storageConfig, wharf } from './helpers.js';

const GRACE_MS = 10 * 60_000;

/** Everything in the registry at `root` made, linked and renewed `ms` earlier, as far as gc can tell. */
function backdate(root: string, ms: number): void {
  const db = openDatabase(join(root, 'wharf.db'));
  try {
    for (const [table, column] of [['manifests', 'created_at'], ['manifest_grace', 'started_at'], ['repository_blobs', 'linked_at'], ['blobs', 'created_at']]) {
      db.prepare(`UPDATE ${table} SET ${column} = ${column} - ?`).run(ms);
    }
  } finally {
    db.close();
  }
}

/**
 * Every real client's push asks with a HEAD whether each layer is there and skips the ones that are.
 * A layer no image has referenced for longer than gc's grace (its image deleted) was collected between
 * that HEAD and the push's manifest, which was then refused MANIFEST_BLOB_UNKNOWN (the crash audit:
 * skopeo, 3 runs of 3). The HEAD now starts the link's grace over.
 */
describe('a layer a push skipped after its HEAD outlives a collection until the manifest comes', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => reg?.close());

  /** An image in `repo` whose manifest is deleted: its layers stay linked, referenced by nothing. */
  async function orphanedLayer(repo: string): Promise<{ layer: Buffer; digest: string; gone: string }> {
    const [layer, other] = [randomBytes(30_000), randomBytes(20_000)];
    const image = await pushLayers(reg.url, repo, '1', [layer, other]);
    expect((await fetch(`${reg.url}/v2/${repo}/manifests/${image.digest}`, { method: 'DELETE' })).status).toBe(202);
    // An hour ago, as far as gc can tell: older than the grace period, garbage (no clock waited for).
    const db = openDatabase(join(reg.root, 'wharf.db'));
    try {
      const ofRepo = 'SELECT digest FROM repository_blobs WHERE repository_id = (SELECT id FROM repositories WHERE name = ?)';
      db.prepare(`UPDATE blobs SET created_at = created_at - 3600000 WHERE digest IN (${ofRepo})`).run(repo);
      db.prepare('UPDATE repository_blobs SET linked_at = linked_at - 3600000 WHERE repository_id = (SELECT id FROM repositories WHERE name = ?)').run(repo);
    } finally {
      db.close();
    }
    return { layer, digest: sha256(layer), gone: sha256(other) };
  }

  /** The rest of the push: a new layer uploaded, and a manifest that references the skipped one too. */
  async function finishPush(repo: string, skipped: { layer: Buffer; digest: string }): Promise<Response> {
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', n: randomBytes(4).toString('hex') }));
    const fresh = randomBytes(10_000);
    await pushBlob(reg.url, repo, config);
    await pushBlob(reg.url, repo, fresh);
    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
      layers: [skipped, { layer: fresh, digest: sha256(fresh) }].map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: l.layer.length })),
    });
    return fetch(`${reg.url}/v2/${repo}/manifests/2`, { method: 'PUT', headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' }, body: manifest });
  }

  test('a collection in the server between the HEAD and the manifest', async () => {
    const old = await orphanedLayer('skip/app');
    expect((await fetch(`${reg.url}/v2/skip/app/blobs/${old.digest}`, { method: 'HEAD' })).status).toBe(200);
    const { gc } = await reg.storage.gc({ grace: GRACE_MS, deleteUntagged: false });
    // The collection ran and took what was garbage; not the layer just asked about.
    expect(gc.blobs.map((b) => b.digest)).toContain(old.gone);
    expect(gc.blobs.map((b) => b.digest)).not.toContain(old.digest);
    const put = await finishPush('skip/app', old);
    expect([put.status, put.status === 201 ? '' : await put.text()]).toEqual([201, '']);
    const pulled = await fetch(`${reg.url}/v2/skip/app/blobs/${old.digest}`);
    expect(sha256(Buffer.from(await pulled.arrayBuffer()))).toBe(old.digest);
  });

  test('a HEAD while another process holds the write lock renews the link once the lock is let go, never holding the event loop meanwhile', async () => {
    const old = await orphanedLayer('skip/locked');
    const other = openDatabase(join(reg.root, 'wharf.db'));
    try {
      other.exec('BEGIN IMMEDIATE'); // another process's write transaction (a `wharf` command)
      const head = fetch(`${reg.url}/v2/skip/locked/blobs/${old.digest}`, { method: 'HEAD' });
      // Served while the lock is held: the renewal waits off the event loop (SQLite's own wait held
      // it, and this test's own COMMIT below with it, until the busy timeout gave up unrenewed).
      await new Promise((r) => setTimeout(r, 200));
      expect((await fetch(`${reg.url}/v2/`)).status).toBe(200);
      other.exec('COMMIT');
      expect((await head).status).toBe(200);
      const { linked_at } = other
        .prepare('SELECT rb.linked_at FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id WHERE r.name = ? AND rb.digest = ?')
        .get('skip/locked', old.digest) as { linked_at: number };
      expect(Date.now() - linked_at).toBeLessThan(60_000);
    } finally {
      if (other.inTransaction) other.exec('ROLLBACK');
      other.close();
    }
  });

  test("with delete_untagged, a child manifest an index push's HEAD skipped outlives a collection until the index comes", async () => {
    // Two platform images, untagged (their tags deleted) two hours ago as far as gc can tell.
    const [skipped, other] = [await pushLayers(reg.url, 'skip/multi', 'amd64', [randomBytes(9_000)]), await pushLayers(reg.url, 'skip/multi', 'arm64', [randomBytes(9_000)])];
    for (const tag of ['amd64', 'arm64']) expect((await fetch(`${reg.url}/v2/skip/multi/manifests/${tag}`, { method: 'DELETE' })).status).toBe(202);
    backdate(reg.root, 7_200_000);
    // The push of a new index asks for one child by digest and skips it; nobody asks for the other.
    expect((await fetch(`${reg.url}/v2/skip/multi/manifests/${skipped.digest}`, { method: 'HEAD' })).status).toBe(200);
    const { gc } = await reg.storage.gc({ grace: GRACE_MS, deleteUntagged: true });
    expect(gc.manifests.filter((m) => m.repo === 'skip/multi').map((m) => m.digest)).toEqual([other.digest]);
    const index = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: skipped.digest, size: skipped.manifest.length, platform: { os: 'linux', architecture: 'amd64' } }],
    });
    const put = await fetch(`${reg.url}/v2/skip/multi/manifests/latest`, { method: 'PUT', headers: { 'Content-Type': 'application/vnd.oci.image.index.v1+json' }, body: index });
    expect([put.status, put.status === 201 ? '' : await put.text()]).toEqual([201, '']);
  });

  test('auth off: a HEAD a proxy or tunnel forwarded is a pull\'s, and keeps neither a manifest nor a layer', async () => {
    const forwarded = { 'X-Forwarded-For': '203.0.113.9' };
    const image = await pushLayers(reg.url, 'skip/forwarded', 'x', [randomBytes(9_000)]);
    const loose = randomBytes(7_000);
    await pushBlob(reg.url, 'skip/forwarded', loose);
    expect((await fetch(`${reg.url}/v2/skip/forwarded/manifests/x`, { method: 'DELETE' })).status).toBe(202);
    backdate(reg.root, 7_200_000);
    // Forwarded for someone else (who may not push here): through the fast path, and through Koa.
    expect((await fetch(`${reg.url}/v2/skip/forwarded/manifests/${image.digest}`, { method: 'HEAD', headers: forwarded })).status).toBe(200);
    expect((await fetch(`${reg.url}/v2/skip/forwarded/blobs/${sha256(loose)}`, { method: 'HEAD', headers: forwarded })).status).toBe(200);
    const { gc } = await reg.storage.gc({ grace: GRACE_MS, deleteUntagged: true });
    expect(gc.manifests.filter((m) => m.repo === 'skip/forwarded').map((m) => m.digest)).toEqual([image.digest]);
    expect(gc.blobs.map((b) => b.digest)).toContain(sha256(loose));
  });

  test('`wharf gc` from the command line between the HEAD and the manifest', async () => {
    const old = await orphanedLayer('skip/cli');
    expect((await fetch(`${reg.url}/v2/skip/cli/blobs/${old.digest}`, { method: 'HEAD' })).status).toBe(200);
    const run = await wharf(['gc', '--grace', '10m', '--config', await storageConfig(reg.root)]);
    expect(run.code).toBe(0);
    expect(await exists(blobFile(reg.root, old.gone))).toBe(false);
    expect(await exists(blobFile(reg.root, old.digest))).toBe(true);
    expect((await finishPush('skip/cli', old)).status).toBe(201);
  });
});

describe("a HEAD by one who may only pull does not keep an unreferenced layer from gc", () => {
  let reg: TestRegistry;
  const ROOT = 'root-password-1';
  const ALICE = 'alice-password-1';
  beforeAll(async () => {
    reg = await startAuthRegistry({
      authSettings: {
        users: [
          { name: 'root', password_hash: bcryptHash(ROOT), admin: true },
          { name: 'alice', password_hash: bcryptHash(ALICE) },
        ],
        public: ['pub/*'],
      },
    });
  });
  afterAll(async () => reg?.close());

  test("with delete_untagged, a HEAD by digest of an untagged manifest keeps it only when it is a pusher's", async () => {
    const asRoot = { Authorization: basic('root', ROOT) };
    const client = new RegistryClient(reg.url, 'basic', { user: 'root', password: ROOT });
    const digests: string[] = [];
    for (const tag of ['pulled', 'pushed', 'token']) {
      expect((await pushWith(client, 'pub/multi', tag, tag)).status).toBe(201);
      const head = await fetch(`${reg.url}/v2/pub/multi/manifests/${tag}`, { method: 'HEAD', headers: asRoot });
      digests.push(head.headers.get('docker-content-digest')!);
      expect((await fetch(`${reg.url}/v2/pub/multi/manifests/${tag}`, { method: 'DELETE', headers: asRoot })).status).toBe(202);
    }
    const [pulled, pushed, byToken] = digests as [string, string, string];
    backdate(reg.root, 7_200_000);
    const head = (digest: string, headers: Record<string, string> = {}) => fetch(`${reg.url}/v2/pub/multi/manifests/${digest}`, { method: 'HEAD', headers }).then((r) => r.status);
    // Anonymous on a public repository, and a token that grants pull only: nothing renewed.
    expect(await head(pulled)).toBe(200);
    const reply = await fetchToken(`${reg.url}/auth/token`, 'wharf', ['repository:pub/multi:pull'], { user: 'root', password: ROOT });
    expect(await head(pulled, { Authorization: `Bearer ${((await reply.json()) as TokenReply).token}` })).toBe(200);
    // A pusher's: with Basic credentials (the auth middleware's path), and with a token that grants
    // push (the manifest fast path's).
    expect(await head(pushed, asRoot)).toBe(200);
    const pusher = await fetchToken(`${reg.url}/auth/token`, 'wharf', ['repository:pub/multi:pull,push'], { user: 'root', password: ROOT });
    expect(await head(byToken, { Authorization: `Bearer ${((await pusher.json()) as TokenReply).token}` })).toBe(200);
    const { gc } = await reg.storage.gc({ grace: GRACE_MS, deleteUntagged: true });
    expect(gc.manifests.filter((m) => m.repo === 'pub/multi').map((m) => m.digest)).toEqual([pulled]);
  });

  test('anonymous on a public repository, and a user whose token grants pull: the layer goes; the pusher\'s HEAD keeps it', async () => {
    const asRoot = { Authorization: basic('root', ROOT) };
    const [layer, kept, config] = [randomBytes(30_000), randomBytes(20_000), Buffer.from('{"architecture":"amd64","os":"linux"}')];
    for (const bytes of [layer, kept, config]) {
      const res = await fetch(`${reg.url}/v2/pub/app/blobs/uploads/?digest=${sha256(bytes)}`, { method: 'POST', headers: { ...asRoot, 'Content-Type': 'application/octet-stream' }, body: bytes });
      expect(res.status).toBe(201);
    }
    // Linked, referenced by nothing, an hour old as far as gc can tell.
    const db = openDatabase(join(reg.root, 'wharf.db'));
    try {
      db.prepare('UPDATE blobs SET created_at = created_at - 3600000').run();
      db.prepare('UPDATE repository_blobs SET linked_at = linked_at - 3600000').run();
    } finally {
      db.close();
    }
    const head = (digest: string, headers: Record<string, string> = {}) => fetch(`${reg.url}/v2/pub/app/blobs/${digest}`, { method: 'HEAD', headers }).then((r) => r.status);
    expect(await head(sha256(layer))).toBe(200);
    const reply = await fetchToken(`${reg.url}/auth/token`, 'wharf', ['repository:pub/app:pull'], { user: 'alice', password: ALICE });
    const pullToken = ((await reply.json()) as TokenReply).token;
    expect(await head(sha256(layer), { Authorization: `Bearer ${pullToken}` })).toBe(200);
    // A push's HEAD, with push granted.
    expect(await head(sha256(kept), asRoot)).toBe(200);
    const { gc } = await reg.storage.gc({ grace: GRACE_MS, deleteUntagged: false });
    const collected = gc.blobs.map((b) => b.digest);
    expect(collected).toContain(sha256(layer));
    expect(collected).toContain(sha256(config));
    expect(collected).not.toContain(sha256(kept));
  });
});
