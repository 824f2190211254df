import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { FsUploadSessions } from '../src/fs/fs-uploads.js';
import { describeUploadSessions } from './uploads.contract.js';
import { sha256, sha512, streamOf, streamOfSlowly } from './helpers.js';

describeUploadSessions('FsUploadSessions', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'wharf-uploads-'));
  const sessions = new FsUploadSessions(dir);
  await sessions.init();
  return { sessions, cleanup: () => rm(dir, { recursive: true, force: true }) };
});

describe('FsUploadSessions on disk', () => {
  let dir: string;
  let sessions: FsUploadSessions;
  const part1 = Buffer.from('first part|');
  const part2 = Buffer.from('second part|');
  const whole = Buffer.concat([part1, part2]);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-uploads-'));
    sessions = new FsUploadSessions(dir);
    await sessions.init();
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a session is a folder under <tempRoot>/uploads with its data', async () => {
    const s = await sessions.begin('alice/a');
    await sessions.append('alice/a', s.id, streamOf(part1), {});
    expect(await readdir(join(dir, 'uploads'))).toEqual([s.id]);
    expect((await readFile(join(dir, 'uploads', s.id, 'data'))).equals(part1)).toBe(true);
    expect(JSON.parse(await readFile(join(dir, 'uploads', s.id, 'info.json'), 'utf8'))).toMatchObject({ repo: 'alice/a', algorithm: 'sha256' });
    await sessions.cancel('alice/a', s.id);
    expect(await readdir(join(dir, 'uploads'))).toEqual([]);
  });

  test('a seal not stored comes back as the session it was: resumable, and sealed again; a stored one leaves nothing', async () => {
    const s = await sessions.begin('alice/a');
    await sessions.append('alice/a', s.id, streamOf(part1), { start: 0, end: part1.length - 1 });
    const sealed = await sessions.seal('alice/a', s.id, sha256(part1));
    expect(await sessions.status('alice/a', s.id)).toBeUndefined();
    // The caller could not store the file (a full disk): the session is back, with its bytes.
    await sessions.settle('alice/a', s.id, false);
    expect(await sessions.status('alice/a', s.id)).toEqual({ id: s.id, repo: 'alice/a', size: part1.length, startedAt: s.startedAt });
    await sessions.append('alice/a', s.id, streamOf(part2), { start: part1.length, end: whole.length - 1 });
    const again = await sessions.seal('alice/a', s.id, sha256(whole));
    expect(again.file).toBe(sealed.file);
    expect((await readFile(again.file)).equals(whole)).toBe(true);
    // Stored this time (the caller moved the file away): nothing of the session is left.
    await rm(again.file);
    await sessions.settle('alice/a', s.id, true);
    expect(await readdir(join(dir, 'uploads'))).toEqual([]);
    expect(await sessions.status('alice/a', s.id)).toBeUndefined();
  });

  test('a sealed session no adoption settled (a killed process) comes back at expiry once older than an adoption takes', async () => {
    const s = await sessions.begin('alice/a');
    await sessions.append('alice/a', s.id, streamOf(whole), { start: 0, end: whole.length - 1 });
    const sealed = await sessions.seal('alice/a', s.id, sha256(whole));
    const restarted = new FsUploadSessions(dir);
    await restarted.init();
    // Young: maybe being adopted by another process on the storage; left alone.
    expect(await restarted.expire(new Date(Date.now() - 86_400_000))).toBe(0);
    expect(await restarted.status('alice/a', s.id)).toBeUndefined();
    const old = new Date(Date.now() - 11 * 60_000);
    await utimes(sealed.file, old, old);
    expect(await restarted.expire(new Date(Date.now() - 86_400_000))).toBe(0);
    expect(await restarted.status('alice/a', s.id)).toMatchObject({ id: s.id, size: whole.length });
    expect((await restarted.seal('alice/a', s.id, sha256(whole))).blob.size).toBe(whole.length);
  });

  test('cancel, append and seal racing on many sessions: only spec outcomes, and no session files left', async () => {
    const more = Buffer.from('more');
    const sealedFiles: string[] = [];
    await Promise.all(
      Array.from({ length: 40 }, async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(whole), {});
        const results = await Promise.allSettled([
          sessions.append('alice/a', s.id, streamOfSlowly(more, more), {}),
          sessions.seal('alice/a', s.id, sha256(whole)),
          sessions.cancel('alice/a', s.id),
          sessions.cancel('alice/a', s.id),
        ]);
        for (const r of results) {
          // A chunk that came first makes the seal's digest wrong; anything else lost finds no session.
          if (r.status === 'rejected') expect(['BLOB_UPLOAD_UNKNOWN', 'DIGEST_INVALID']).toContain((r.reason as { code?: string }).code);
        }
        const seal = results[1];
        if (seal.status === 'fulfilled') sealedFiles.push(seal.value.file);
        expect(await sessions.status('alice/a', s.id)).toBeUndefined();
      }),
    );
    // Every session is gone as a whole: what is left are the sealed sessions whose files were handed to their callers.
    expect((await readdir(join(dir, 'uploads'))).sort()).toEqual(sealedFiles.map((f) => f.split('/').slice(-2)[0]).sort());
  });

  describe('restart survival', () => {
    test('a new instance continues the upload and seals with the right digest', async () => {
      const s = await sessions.begin('alice/a');
      await sessions.append('alice/a', s.id, streamOf(part1), { start: 0, end: part1.length - 1 });

      const restarted = new FsUploadSessions(dir); // the running hash is gone
      await restarted.init();
      expect(await restarted.status('alice/a', s.id)).toEqual({ id: s.id, repo: 'alice/a', size: part1.length, startedAt: s.startedAt });
      await restarted.append('alice/a', s.id, streamOf(part2), { start: part1.length, end: whole.length - 1 });
      const sealed = await restarted.seal('alice/a', s.id, sha256(whole));
      expect(sealed.blob).toEqual({ digest: sha256(whole), size: whole.length });
      expect((await readFile(sealed.file)).equals(whole)).toBe(true);
    });

    test('a new instance refuses a chunk at the wrong offset', async () => {
      const s = await sessions.begin('alice/a');
      await sessions.append('alice/a', s.id, streamOf(part1), {});
      const restarted = new FsUploadSessions(dir);
      await expect(restarted.append('alice/a', s.id, streamOf(part2), { start: 0, end: part2.length - 1 })).rejects.toMatchObject({
        code: 'RANGE_INVALID',
      });
    });

    test('a new instance seals an upload it never appended to', async () => {
      const s = await sessions.begin('alice/a');
      await sessions.append('alice/a', s.id, streamOf(part1, part2), {});
      const restarted = new FsUploadSessions(dir);
      await expect(restarted.seal('alice/a', s.id, sha256(part1))).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
      expect((await restarted.seal('alice/a', s.id, sha256(whole))).blob).toEqual({ digest: sha256(whole), size: whole.length });
    });

    test('a sha512 session keeps its algorithm across a restart', async () => {
      const s = await sessions.begin('alice/a', 'sha512');
      await sessions.append('alice/a', s.id, streamOf(part1), {});
      const restarted = new FsUploadSessions(dir);
      await restarted.append('alice/a', s.id, streamOf(part2), {});
      expect((await restarted.seal('alice/a', s.id, sha512(whole))).blob.digest).toBe(sha512(whole));
    });

    test('an instance whose in-memory hash went stale re-hashes from disk', async () => {
      const s = await sessions.begin('alice/a');
      await sessions.append('alice/a', s.id, streamOf(part1), {});
      // another process (or the instance after a restart) appends: the first one's hash no longer covers the file
      await new FsUploadSessions(dir).append('alice/a', s.id, streamOf(part2), {});
      expect((await sessions.seal('alice/a', s.id, sha256(whole))).blob).toEqual({ digest: sha256(whole), size: whole.length });
    });

    test('an instance whose in-memory hash went stale appends correctly', async () => {
      const s = await sessions.begin('alice/a');
      await sessions.append('alice/a', s.id, streamOf(part1), {});
      await new FsUploadSessions(dir).append('alice/a', s.id, streamOf(part2), {});
      const part3 = Buffer.from('third');
      await sessions.append('alice/a', s.id, streamOf(part3), { start: whole.length, end: whole.length + part3.length - 1 });
      const all = Buffer.concat([whole, part3]);
      expect((await sessions.seal('alice/a', s.id, sha256(all))).blob).toEqual({ digest: sha256(all), size: all.length });
    });

    test('sessions started and left hold no running hash; many active ones keep a bounded few, and every one still seals right', async () => {
      const held = () => (sessions as unknown as { running: Map<string, unknown> }).running.size;
      const before = held();
      const idle = await Promise.all(Array.from({ length: 1100 }, () => sessions.begin('alice/a')));
      expect(held()).toBe(before);
      for (const s of idle) await sessions.append('alice/a', s.id, streamOf(part1), {});
      expect(held()).toBeLessThanOrEqual(1024);
      // The first sessions' hashes were let go: their next chunk re-hashes the file.
      for (const s of [idle[0]!, idle[1099]!]) {
        await sessions.append('alice/a', s.id, streamOf(part2), { start: part1.length, end: whole.length - 1 });
        expect((await sessions.seal('alice/a', s.id, sha256(whole))).blob).toEqual({ digest: sha256(whole), size: whole.length });
      }
    });

    test('a session whose chunk is arriving keeps its hash however many others come and go meanwhile', async () => {
      const held = () => (sessions as unknown as { running: Map<string, unknown> }).running;
      const slow = await sessions.begin('alice/a');
      const body = new PassThrough();
      const appended = sessions.append('alice/a', slow.id, body, {});
      body.write(part1);
      const others = await Promise.all(Array.from({ length: 1100 }, () => sessions.begin('alice/a')));
      for (const s of others) await sessions.append('alice/a', s.id, streamOf(part1), {});
      body.end(part2);
      await appended;
      expect(held().has(slow.id)).toBe(true);
      expect((await sessions.seal('alice/a', slow.id, sha256(whole))).blob.size).toBe(whole.length);
    });

    test('a session another instance ended (sealed, cancelled, taken whole) is gone for this one too, though it knew it', async () => {
      const other = new FsUploadSessions(dir); // another process sharing the storage
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        const s = await sessions.begin('alice/a');
        // Known here: begun here, and asked about.
        expect((await sessions.status('alice/a', s.id))?.size).toBe(0);
        ids.push(s.id);
      }
      await other.append('alice/a', ids[0]!, streamOf(whole), {});
      await other.seal('alice/a', ids[0]!, sha256(whole));
      expect(await other.cancel('alice/a', ids[1]!)).toBe(true);
      expect(await other.takeWhole('alice/a', ids[2]!, async () => 'placed')).toBe('placed');
      for (const id of ids) {
        expect(await sessions.status('alice/a', id)).toBeUndefined();
        expect(await sessions.cancel('alice/a', id)).toBe(false);
        await expect(sessions.append('alice/a', id, streamOf(part1), {})).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
      }
      expect(await readdir(join(dir, 'uploads'))).toEqual([`${ids[0]}.sealed`]);
    });

    test('a known session is still refused to another repository', async () => {
      const s = await sessions.begin('alice/a');
      expect(await sessions.status('alice/b', s.id)).toBeUndefined();
      const restarted = new FsUploadSessions(dir);
      expect(await restarted.status('alice/b', s.id)).toBeUndefined(); // read from disk, then known
      expect(await restarted.status('alice/b', s.id)).toBeUndefined();
      expect((await restarted.status('alice/a', s.id))?.size).toBe(0);
    });

    test('a session works without init() having been called', async () => {
      const fresh = new FsUploadSessions(join(dir, 'elsewhere'));
      const s = await fresh.begin('alice/a');
      await fresh.append('alice/a', s.id, streamOf(whole), {});
      expect((await fresh.seal('alice/a', s.id, sha256(whole))).blob.size).toBe(whole.length);
    });
  });

  describe('session ids never become paths', () => {
    let victim: string;

    beforeEach(async () => {
      // A folder shaped like a session, outside uploads/: what '../victim' would reach.
      victim = join(dir, 'victim');
      await mkdir(victim);
      await writeFile(join(victim, 'info.json'), JSON.stringify({ repo: 'alice/a', algorithm: 'sha256', startedAt: new Date().toISOString() }));
      await writeFile(join(victim, 'data'), 'precious');
    });

    for (const id of ['../victim', '../../' + 'victim', 'x/../../victim']) {
      test(`id ${JSON.stringify(id)} is unknown and the folder it names is untouched`, async () => {
        expect(await sessions.status('alice/a', id)).toBeUndefined();
        await expect(sessions.append('alice/a', id, streamOf('overwrite'), {})).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
        await expect(sessions.seal('alice/a', id, sha256('precious'))).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
        expect(await sessions.cancel('alice/a', id)).toBe(false);
        expect(await readFile(join(victim, 'data'), 'utf8')).toBe('precious');
        expect((await readdir(victim)).sort()).toEqual(['data', 'info.json']);
      });
    }

    test('the same folder is a valid session when it is where sessions live (control)', async () => {
      // Shows the fixture would be accepted if an id could reach it, so the tests above are meaningful.
      const id = '6f1c1d3e-0f4b-4f7e-9a55-2a1f7c3b9d10';
      await mkdir(join(dir, 'uploads', id));
      await writeFile(join(dir, 'uploads', id, 'info.json'), await readFile(join(victim, 'info.json')));
      await writeFile(join(dir, 'uploads', id, 'data'), 'precious');
      expect((await sessions.status('alice/a', id))?.size).toBe('precious'.length);
    });
  });

  describe('expire', () => {
    async function age(id: string, minutes: number): Promise<void> {
      const then = new Date(Date.now() - minutes * 60_000);
      await utimes(join(dir, 'uploads', id, 'data'), then, then);
      await utimes(join(dir, 'uploads', id), then, then);
    }

    test('removes sessions not written to since the cutoff and keeps fresh ones', async () => {
      const old = await sessions.begin('alice/a');
      await sessions.append('alice/a', old.id, streamOf(part1), {});
      const fresh = await sessions.begin('alice/a');
      await sessions.append('alice/a', fresh.id, streamOf(part2), {});
      await age(old.id, 120);

      expect(await sessions.expire(new Date(Date.now() - 60 * 60_000))).toBe(1);
      expect(await sessions.status('alice/a', old.id)).toBeUndefined();
      expect(await readdir(join(dir, 'uploads'))).toEqual([fresh.id]);
      expect((await sessions.status('alice/a', fresh.id))?.size).toBe(part2.length);
    });

    test('an old session that is written to again is fresh', async () => {
      const s = await sessions.begin('alice/a');
      await sessions.append('alice/a', s.id, streamOf(part1), {});
      await age(s.id, 120);
      await sessions.append('alice/a', s.id, streamOf(part2), {});
      expect(await sessions.expire(new Date(Date.now() - 60 * 60_000))).toBe(0);
      expect((await sessions.status('alice/a', s.id))?.size).toBe(whole.length);
    });

    test('an expired session cannot be continued', async () => {
      const s = await sessions.begin('alice/a');
      await sessions.append('alice/a', s.id, streamOf(part1), {});
      await age(s.id, 120);
      await sessions.expire(new Date(Date.now() - 60 * 60_000));
      await expect(sessions.append('alice/a', s.id, streamOf(part2), {})).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
    });

    test('a chunk acknowledged while the sessions expire is never lost with its session', async () => {
      // Every session is past the cutoff; each gets a chunk while one expiry walks them, the chunks
      // started at several paces. A chunk is either refused (its session was gone) or kept: never
      // acknowledged into a session removed next.
      const paces: (() => Promise<unknown>)[] = [
        () => new Promise((r) => setImmediate(r)),
        () => new Promise((r) => setTimeout(r, 0)),
        () => new Promise((r) => setTimeout(r, 1)),
        () => stat(dir),
      ];
      for (const pace of paces) {
        const ids: string[] = [];
        for (let i = 0; i < 30; i += 1) {
          const s = await sessions.begin('alice/a');
          await sessions.append('alice/a', s.id, streamOf(part1), {});
          await age(s.id, 120);
          ids.push(s.id);
        }
        const expiry = sessions.expire(new Date(Date.now() - 60 * 60_000));
        const appends: Promise<'kept' | 'refused'>[] = [];
        for (const id of ids) {
          appends.push(
            sessions.append('alice/a', id, streamOf(part2), { start: part1.length }).then(
              () => 'kept' as const,
              (err: { code?: string }) => {
                if (err.code !== 'BLOB_UPLOAD_UNKNOWN') throw err;
                return 'refused' as const;
              },
            ),
          );
          await pace();
        }
        const outcomes = await Promise.all(appends);
        await expiry;
        for (const [i, id] of ids.entries()) {
          const status = await sessions.status('alice/a', id);
          expect({ outcome: outcomes[i], size: status?.size }).toEqual(outcomes[i] === 'kept' ? { outcome: 'kept', size: whole.length } : { outcome: 'refused', size: undefined });
          if (status) await sessions.cancel('alice/a', id);
        }
      }
    });

    test('a half-created session folder (no data file) is expired by the folder age', async () => {
      const id = '6f1c1d3e-0f4b-4f7e-9a55-2a1f7c3b9d10';
      await mkdir(join(dir, 'uploads', id));
      const then = new Date(Date.now() - 120 * 60_000);
      await utimes(join(dir, 'uploads', id), then, then);
      expect(await sessions.expire(new Date(Date.now() - 60 * 60_000))).toBe(1);
      await expect(stat(join(dir, 'uploads', id))).rejects.toMatchObject({ code: 'ENOENT' });
    });

    test('a session folder a crash left without its info.json goes after ten minutes, not upload_max_age', async () => {
      const orphan = '7a2c1d3e-0f4b-4f7e-9a55-2a1f7c3b9d11';
      const young = '7a2c1d3e-0f4b-4f7e-9a55-2a1f7c3b9d12';
      for (const [id, minutes] of [[orphan, 11], [young, 5]] as const) {
        await mkdir(join(dir, 'uploads', id));
        await writeFile(join(dir, 'uploads', id, 'data'), 'abc');
        const then = new Date(Date.now() - minutes * 60_000);
        await utimes(join(dir, 'uploads', id, 'data'), then, then);
      }
      // A real session as old as the orphan stays: upload_max_age (24 h here) is its limit.
      const real = await sessions.begin('alice/a');
      await age(real.id, 11);
      expect(await sessions.expire(new Date(Date.now() - 24 * 3_600_000))).toBe(1);
      expect((await readdir(join(dir, 'uploads'))).sort()).toEqual([real.id, young].sort());
      // An info.json that is there but cannot be read now (here: a folder; EIO, EMFILE) is no orphan's.
      const unreadable = await sessions.begin('alice/a');
      await rm(join(dir, 'uploads', unreadable.id, 'info.json'));
      await mkdir(join(dir, 'uploads', unreadable.id, 'info.json'));
      await age(unreadable.id, 11);
      expect(await sessions.expire(new Date(Date.now() - 24 * 3_600_000))).toBe(0);
    });
  });
});

describe('FsUploadSessions status during a chunk', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-status-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('reports only the bytes before a chunk still arriving, which may yet be cut', async () => {
    const uploads = new FsUploadSessions(dir);
    await uploads.init();
    const s = await uploads.begin('a/b');
    await uploads.append('a/b', s.id, streamOf(Buffer.alloc(100, 1)), { start: 0, end: 99 });
    const slow = new PassThrough();
    const arriving = uploads.append('a/b', s.id, slow, {});
    slow.write(Buffer.alloc(5000, 2));
    await new Promise((r) => setTimeout(r, 50));
    expect((await uploads.status('a/b', s.id))?.size).toBe(100);
    slow.destroy(new Error('client went away'));
    await expect(arriving).rejects.toThrow();
    expect((await uploads.status('a/b', s.id))?.size).toBe(100);
  });
});

describe('FsUploadSessions: open sessions per namespace', () => {
  let dir: string;
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a namespace has at most so many open at once (429); ending one (completed, cancelled, expired) makes room; counted from disk after a restart', async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-uploads-'));
    const uploads = new FsUploadSessions(dir, 3);
    await uploads.init();
    const a = await uploads.begin('alice/a');
    const b = await uploads.begin('alice/b');
    const c = await uploads.begin('alice/c/d');
    await expect(uploads.begin('alice/e')).rejects.toMatchObject({ code: 'TOOMANYREQUESTS', message: expect.stringContaining('alice has 3 uploads in progress') });
    // Another namespace is not held back.
    const other = await uploads.begin('bob/x');
    await uploads.cancel('alice/a', a.id);
    const e = await uploads.begin('alice/e');
    await uploads.append('alice/b', b.id, streamOf(Buffer.from('bytes')), {});
    await uploads.seal('alice/b', b.id, sha256(Buffer.from('bytes')));
    const f = await uploads.begin('alice/f');
    await expect(uploads.begin('alice/g')).rejects.toMatchObject({ code: 'TOOMANYREQUESTS' });
    // A restarted server counts what is on disk: alice has c, e and f open.
    const restarted = new FsUploadSessions(dir, 3);
    await expect(restarted.begin('alice/g')).rejects.toMatchObject({ code: 'TOOMANYREQUESTS' });
    // c, e, f, bob's, and b's sealed file (nobody adopted it here).
    expect(await restarted.expire(new Date(Date.now() + 60_000))).toBe(5);
    await restarted.begin('alice/g');
    expect([c, e, f, other].every((s) => s.id.length === 36)).toBe(true);
  });

  test('begins all at once share one count from disk (after a restart, or at the bound)', async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-uploads-'));
    const uploads = new FsUploadSessions(dir, 2);
    await uploads.init();
    const results = await Promise.allSettled(Array.from({ length: 30 }, () => uploads.begin('alice/x')));
    expect(uploads.counts).toBe(1);
    expect(results.filter((r) => r.status === 'fulfilled').length).toBe(2);
    // At the bound, within 10 s of that count: refused with no new count.
    await expect(uploads.begin('alice/y')).rejects.toMatchObject({ code: 'TOOMANYREQUESTS' });
    expect(uploads.counts).toBe(1);
  });
});
