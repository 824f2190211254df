import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { readFile } from 'node:fs/promises';
import { PassThrough, Readable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import type { Digest } from '../src/digest.js';
import type { UploadSessions } from '../src/uploads.js';
import { bytesOf, failingStream, sha256, sha512, streamOf, streamOfSlowly } from './helpers.js';

export interface UploadSessionsFixture {
  readonly sessions: UploadSessions;
  cleanup(): Promise<void>;
}

/**
 * The behaviour every UploadSessions must have. The factory gives fresh, empty sessions per test.
 * Restart survival and expiry by age depend on how a store keeps sessions and are tested beside it.
 */
export function describeUploadSessions(name: string, make: () => Promise<UploadSessionsFixture>): void {
  describe(`UploadSessions contract: ${name}`, () => {
    let fx: UploadSessionsFixture;
    let sessions: UploadSessions;

    beforeEach(async () => {
      fx = await make();
      sessions = fx.sessions;
    });

    afterEach(async () => {
      await fx.cleanup();
    });

    const part1 = Buffer.from('first part|');
    const part2 = Buffer.from('second part|');
    const part3 = Buffer.from('third');
    const whole = Buffer.concat([part1, part2, part3]);

    describe('begin and status', () => {
      test('a new session is empty and has an id', async () => {
        const before = Date.now();
        const s = await sessions.begin('alice/a');
        expect(s.repo).toBe('alice/a');
        expect(s.size).toBe(0);
        expect(typeof s.id).toBe('string');
        expect(s.id.length).toBeGreaterThan(0);
        expect(s.startedAt.getTime()).toBeGreaterThanOrEqual(before - 1000);
        expect(s.startedAt.getTime()).toBeLessThanOrEqual(Date.now() + 1000);
        expect(await sessions.status('alice/a', s.id)).toEqual({ id: s.id, repo: 'alice/a', size: 0, startedAt: s.startedAt });
      });

      test('each session gets its own id', async () => {
        const a = await sessions.begin('alice/a');
        const b = await sessions.begin('alice/a');
        expect(a.id).not.toBe(b.id);
      });

      test('status of an unknown session is undefined', async () => {
        expect(await sessions.status('alice/a', '6f1c1d3e-0f4b-4f7e-9a55-2a1f7c3b9d10')).toBeUndefined();
      });
    });

    describe('append', () => {
      test('chunks at the right offsets grow the session', async () => {
        const s = await sessions.begin('alice/a');
        expect((await sessions.append('alice/a', s.id, streamOf(part1), { start: 0, end: part1.length - 1 })).size).toBe(part1.length);
        const after2 = await sessions.append('alice/a', s.id, streamOf(part2), { start: part1.length, end: part1.length + part2.length - 1 });
        expect(after2.size).toBe(part1.length + part2.length);
        expect(after2.id).toBe(s.id);
        expect((await sessions.status('alice/a', s.id))?.size).toBe(part1.length + part2.length);
      });

      test('a chunk without a position is appended at the end (streamed upload)', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), {});
        expect((await sessions.append('alice/a', s.id, streamOf(part2, part3), {})).size).toBe(whole.length);
      });

      test('a chunk at the wrong offset is RANGE_INVALID and changes nothing', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), { start: 0, end: part1.length - 1 });
        // a gap
        await expect(
          sessions.append('alice/a', s.id, streamOf(part2), { start: part1.length + 1, end: part1.length + part2.length }),
        ).rejects.toMatchObject({ code: 'RANGE_INVALID' });
        // an overlap (a retried chunk)
        await expect(sessions.append('alice/a', s.id, streamOf(part1), { start: 0, end: part1.length - 1 })).rejects.toMatchObject({
          code: 'RANGE_INVALID',
        });
        expect((await sessions.status('alice/a', s.id))?.size).toBe(part1.length);
        // and the upload continues at the right offset
        await sessions.append('alice/a', s.id, streamOf(part2, part3), { start: part1.length, end: whole.length - 1 });
        expect((await sessions.seal('alice/a', s.id, sha256(whole))).blob).toEqual({ digest: sha256(whole), size: whole.length });
      });

      test('a chunk shorter than its Content-Range is SIZE_INVALID and is cut back', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), { start: 0, end: part1.length - 1 });
        await expect(
          sessions.append('alice/a', s.id, streamOf(part2), { start: part1.length, end: part1.length + part2.length }), // one too many
        ).rejects.toMatchObject({ code: 'SIZE_INVALID' });
        expect((await sessions.status('alice/a', s.id))?.size).toBe(part1.length);
      });

      test('a chunk longer than its Content-Range is SIZE_INVALID and is cut back', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), { start: 0, end: part1.length - 1 });
        await expect(
          sessions.append('alice/a', s.id, streamOf(part2, part3), { start: part1.length, end: part1.length + part2.length - 1 }),
        ).rejects.toMatchObject({ code: 'SIZE_INVALID' });
        expect((await sessions.status('alice/a', s.id))?.size).toBe(part1.length);
      });

      test('after a refused chunk, retrying it correctly gives the right digest', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), { start: 0, end: part1.length - 1 });
        // a large chunk that overruns its range after several writes reached the disk
        const junk = bytesOf(512 * 1024, 9);
        await expect(sessions.append('alice/a', s.id, streamOf(junk, junk), { start: part1.length, end: part1.length + junk.length - 1 })).rejects.toMatchObject({
          code: 'SIZE_INVALID',
        });
        await sessions.append('alice/a', s.id, streamOf(part2), { start: part1.length, end: part1.length + part2.length - 1 });
        await sessions.append('alice/a', s.id, streamOf(part3), { start: part1.length + part2.length, end: whole.length - 1 });
        const sealed = await sessions.seal('alice/a', s.id, sha256(whole));
        expect(sealed.blob).toEqual({ digest: sha256(whole), size: whole.length });
        expect((await readFile(sealed.file)).equals(whole)).toBe(true);
      });

      test('a chunk far longer than its Content-Range is cut off early, not read to its end', async () => {
        const s = await sessions.begin('alice/a');
        const piece = Buffer.alloc(64 * 1024, 1);
        let pulled = 0;
        const endless = Readable.from(
          (function* () {
            for (let i = 0; i < 2000; i++) {
              pulled += 1;
              yield piece;
            }
          })(),
        );
        await expect(sessions.append('alice/a', s.id, endless, { start: 0, end: 99 })).rejects.toMatchObject({ code: 'SIZE_INVALID' });
        expect(pulled).toBeLessThan(50);
        expect((await sessions.status('alice/a', s.id))?.size).toBe(0);
      });

      test('a chunk whose stream fails midway is cut back and the upload can continue', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), {});
        await expect(sessions.append('alice/a', s.id, failingStream(Buffer.from('garbage that must go')), {})).rejects.toThrow('connection reset');
        expect((await sessions.status('alice/a', s.id))?.size).toBe(part1.length);
        await sessions.append('alice/a', s.id, streamOf(part2, part3), { start: part1.length });
        expect((await sessions.seal('alice/a', s.id, sha256(whole))).blob.digest).toBe(sha256(whole));
      });

      test('appending to an unknown session is BLOB_UPLOAD_UNKNOWN', async () => {
        await expect(sessions.append('alice/a', '6f1c1d3e-0f4b-4f7e-9a55-2a1f7c3b9d10', streamOf(part1), {})).rejects.toMatchObject({
          code: 'BLOB_UPLOAD_UNKNOWN',
        });
      });

      test('pipelined chunks with Content-Range are applied one after the other, in order', async () => {
        const s = await sessions.begin('alice/a');
        // Each chunk arrives in several pieces with pauses, as from a network: interleaving would show.
        const slow = (c: Buffer) => streamOfSlowly(c.subarray(0, 4), c.subarray(4));
        const results = await Promise.all([
          sessions.append('alice/a', s.id, slow(part1), { start: 0, end: part1.length - 1 }),
          sessions.append('alice/a', s.id, slow(part2), { start: part1.length, end: part1.length + part2.length - 1 }),
          sessions.append('alice/a', s.id, slow(part3), { start: part1.length + part2.length, end: whole.length - 1 }),
        ]);
        expect(results.map((r) => r.size)).toEqual([part1.length, part1.length + part2.length, whole.length]);
        const sealed = await sessions.seal('alice/a', s.id, sha256(whole));
        expect((await readFile(sealed.file)).equals(whole)).toBe(true);
      });

      test('concurrent chunks to one session are serialised, none lost', async () => {
        const s = await sessions.begin('alice/a');
        const chunks = Array.from({ length: 8 }, (_, i) => Buffer.from(`chunk-${i};`));
        await Promise.all(chunks.map((c) => sessions.append('alice/a', s.id, streamOfSlowly(c.subarray(0, 3), c.subarray(3)), {})));
        const status = await sessions.status('alice/a', s.id);
        const total = chunks.reduce((n, c) => n + c.length, 0);
        expect(status?.size).toBe(total);
        // serialised in the order the chunks arrived, none interleaved
        const sealed = await sessions.seal('alice/a', s.id, sha256(Buffer.concat(chunks)));
        expect(sealed.blob.size).toBe(total);
      });
    });

    describe('seal', () => {
      test('verifies the digest and hands back the file with all the bytes', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), { start: 0, end: part1.length - 1 });
        await sessions.append('alice/a', s.id, streamOf(part2, part3), { start: part1.length, end: whole.length - 1 });
        const sealed = await sessions.seal('alice/a', s.id, sha256(whole));
        expect(sealed.blob).toEqual({ digest: sha256(whole), size: whole.length });
        expect((await readFile(sealed.file)).equals(whole)).toBe(true);
      });

      test('an empty upload seals to the empty digest', async () => {
        const s = await sessions.begin('alice/a');
        expect((await sessions.seal('alice/a', s.id, sha256(Buffer.alloc(0)))).blob).toEqual({ digest: sha256(Buffer.alloc(0)), size: 0 });
      });

      test('the wrong digest is DIGEST_INVALID', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(whole), {});
        await expect(sessions.seal('alice/a', s.id, sha256(part1))).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
      });

      test('a malformed digest is DIGEST_INVALID', async () => {
        const s = await sessions.begin('alice/a');
        await expect(sessions.seal('alice/a', s.id, 'sha256:abc' as Digest)).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
        await expect(sessions.seal('alice/a', s.id, `md5:${'0'.repeat(32)}` as Digest)).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
      });

      test('a session begun for sha256 can be sealed with a sha512 digest', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), {});
        await sessions.append('alice/a', s.id, streamOf(part2, part3), {});
        const sealed = await sessions.seal('alice/a', s.id, sha512(whole));
        expect(sealed.blob).toEqual({ digest: sha512(whole), size: whole.length });
      });

      test('a session begun for sha256 refuses a wrong sha512 digest', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(whole), {});
        await expect(sessions.seal('alice/a', s.id, sha512(part1))).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
      });

      test('a session begun for sha512 seals with sha512', async () => {
        const s = await sessions.begin('alice/a', 'sha512');
        await sessions.append('alice/a', s.id, streamOf(part1), {});
        await sessions.append('alice/a', s.id, streamOf(part2, part3), {});
        expect((await sessions.seal('alice/a', s.id, sha512(whole))).blob).toEqual({ digest: sha512(whole), size: whole.length });
      });

      test('a session begun for sha512 seals with sha256', async () => {
        const s = await sessions.begin('alice/a', 'sha512');
        await sessions.append('alice/a', s.id, streamOf(whole), {});
        expect((await sessions.seal('alice/a', s.id, sha256(whole))).blob).toEqual({ digest: sha256(whole), size: whole.length });
      });

      test('a refused seal leaves the session open: the client can append the rest and seal again', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1, part2), {});
        await expect(sessions.seal('alice/a', s.id, sha256(whole))).rejects.toMatchObject({ code: 'DIGEST_INVALID' });
        await sessions.append('alice/a', s.id, streamOf(part3), { start: part1.length + part2.length, end: whole.length - 1 });
        expect((await sessions.seal('alice/a', s.id, sha256(whole))).blob).toEqual({ digest: sha256(whole), size: whole.length });
      });

      test('a sealed session accepts no more data: the verified file stays as verified', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(whole), {});
        const sealed = await sessions.seal('alice/a', s.id, sha256(whole));
        // a late or concurrent PATCH to the same session, before the file is adopted
        await expect(sessions.append('alice/a', s.id, streamOf('appended after verification'), {})).rejects.toMatchObject({
          code: 'BLOB_UPLOAD_UNKNOWN',
        });
        await expect(sessions.append('alice/a', s.id, streamOf('x'), { start: whole.length, end: whole.length })).rejects.toMatchObject({
          code: 'BLOB_UPLOAD_UNKNOWN',
        });
        expect((await readFile(sealed.file)).equals(whole)).toBe(true);
      });

      test('a sealed session cannot be sealed a second time', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(whole), {});
        await sessions.seal('alice/a', s.id, sha256(whole));
        await expect(sessions.seal('alice/a', s.id, sha256(whole))).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
      });

      test('a sealed session is gone: a cancel finds nothing and leaves the sealed file', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(whole), {});
        const sealed = await sessions.seal('alice/a', s.id, sha256(whole));
        expect(await sessions.status('alice/a', s.id)).toBeUndefined();
        expect(await sessions.cancel('alice/a', s.id)).toBe(false);
        expect((await readFile(sealed.file)).equals(whole)).toBe(true);
      });

      test('sealing an unknown session is BLOB_UPLOAD_UNKNOWN', async () => {
        await expect(sessions.seal('alice/a', '6f1c1d3e-0f4b-4f7e-9a55-2a1f7c3b9d10', sha256(whole))).rejects.toMatchObject({
          code: 'BLOB_UPLOAD_UNKNOWN',
        });
      });
    });

    describe('takeWhole (a whole blob brought to an empty session)', () => {
      test('runs the store on an empty session and ends the session once it succeeded', async () => {
        const s = await sessions.begin('alice/a');
        const stored = await sessions.takeWhole('alice/a', s.id, async () => 'placed');
        expect(stored).toBe('placed');
        expect(await sessions.status('alice/a', s.id)).toBeUndefined();
        await expect(sessions.append('alice/a', s.id, streamOf(part1), {})).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
        expect(await sessions.cancel('alice/a', s.id)).toBe(false);
      });

      test('a session with bytes is left to append and seal: the store is not run', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), {});
        let ran = false;
        expect(
          await sessions.takeWhole('alice/a', s.id, async () => {
            ran = true;
            return 'placed';
          }),
        ).toBeUndefined();
        expect(ran).toBe(false);
        expect((await sessions.status('alice/a', s.id))?.size).toBe(part1.length);
        await sessions.append('alice/a', s.id, streamOf(part2, part3), {});
        expect((await sessions.seal('alice/a', s.id, sha256(whole))).blob).toEqual({ digest: sha256(whole), size: whole.length });
      });

      test('a failed store leaves the session as it was, for the client to try again', async () => {
        const s = await sessions.begin('alice/a');
        await expect(
          sessions.takeWhole('alice/a', s.id, async () => {
            throw new Error('client went away');
          }),
        ).rejects.toThrow('client went away');
        expect((await sessions.status('alice/a', s.id))?.size).toBe(0);
        expect(await sessions.takeWhole('alice/a', s.id, async () => 'placed')).toBe('placed');
      });

      test('an unknown session, or one of another repository, is BLOB_UPLOAD_UNKNOWN and the store is not run', async () => {
        const s = await sessions.begin('alice/a');
        let ran = false;
        const store = async () => {
          ran = true;
          return 'placed';
        };
        await expect(sessions.takeWhole('alice/b', s.id, store)).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
        await expect(sessions.takeWhole('alice/a', '6f1c1d3e-0f4b-4f7e-9a55-2a1f7c3b9d10', store)).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
        expect(ran).toBe(false);
        expect((await sessions.status('alice/a', s.id))?.size).toBe(0);
      });

      test('a cancel while the store runs aborts it: the call fails BLOB_UPLOAD_UNKNOWN and the session is gone', async () => {
        const s = await sessions.begin('alice/a');
        let started!: () => void;
        const running = new Promise<void>((resolve) => (started = resolve));
        const taking = sessions.takeWhole('alice/a', s.id, (signal) => {
          started();
          return new Promise<string>((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason as Error)));
        });
        const outcome = taking.then(
          () => 'stored',
          (err: { code?: string }) => err.code,
        );
        await running;
        expect(await sessions.cancel('alice/a', s.id)).toBe(true);
        expect(await outcome).toBe('BLOB_UPLOAD_UNKNOWN');
        expect(await sessions.status('alice/a', s.id)).toBeUndefined();
      });

      test('a cancel asked for at the moment the store is being set up still stops it, every time', async () => {
        // The cancel's own look at the session and the take's may end in either order: whichever
        // does, the take never stores past a cancel that came while it was running.
        const rounds = await Promise.all(
          Array.from({ length: 40 }, async () => {
            const s = await sessions.begin('alice/a');
            const taking = sessions.takeWhole(
              'alice/a',
              s.id,
              (signal) =>
                new Promise<string>((resolve, reject) => {
                  if (signal.aborted) return reject(new Error('aborted'));
                  const done = setTimeout(() => resolve('placed'), 2000);
                  signal.addEventListener('abort', () => {
                    clearTimeout(done);
                    reject(new Error('aborted'));
                  });
                }),
            );
            const cancelled = sessions.cancel('alice/a', s.id);
            const outcome = await taking.then(
              (v) => v,
              (err: { code?: string }) => err.code,
            );
            return { outcome, cancelled: await cancelled };
          }),
        );
        expect(rounds.filter((r) => r.outcome !== 'BLOB_UPLOAD_UNKNOWN' || !r.cancelled)).toEqual([]);
      });

      test('the caller\'s own abort is passed through as it is', async () => {
        const s = await sessions.begin('alice/a');
        const caller = new AbortController();
        let started!: () => void;
        const running = new Promise<void>((resolve) => (started = resolve));
        const taking = sessions.takeWhole(
          'alice/a',
          s.id,
          (signal) => {
            started();
            return new Promise<string>((_resolve, reject) => signal.addEventListener('abort', () => reject(new Error('client gone'))));
          },
          caller.signal,
        );
        await running;
        caller.abort();
        await expect(taking).rejects.toThrow('client gone');
        expect((await sessions.status('alice/a', s.id))?.size).toBe(0);
      });
    });

    describe('cancel', () => {
      test('cancel removes the session', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(whole), {});
        expect(await sessions.cancel('alice/a', s.id)).toBe(true);
        expect(await sessions.status('alice/a', s.id)).toBeUndefined();
        await expect(sessions.append('alice/a', s.id, streamOf(part1), {})).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
        await expect(sessions.seal('alice/a', s.id, sha256(whole))).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
        expect(await sessions.cancel('alice/a', s.id)).toBe(false);
      });

      test('a cancel while a chunk arrives stops it: the append fails BLOB_UPLOAD_UNKNOWN, never succeeds', async () => {
        const s = await sessions.begin('alice/a');
        const body = new PassThrough();
        const appending = sessions.append('alice/a', s.id, body, {});
        const outcome = appending.then(
          () => 'stored',
          (err: { code?: string }) => err.code,
        );
        body.write(part1);
        // The first bytes are in: the chunk is being written when the cancel comes.
        for (let i = 0; i < 100 && body.readableLength > 0; i++) await tick();
        expect(await sessions.cancel('alice/a', s.id)).toBe(true);
        body.end(part2);
        expect(await outcome).toBe('BLOB_UPLOAD_UNKNOWN');
        expect(await sessions.status('alice/a', s.id)).toBeUndefined();
      });

      test('cancel leaves other sessions alone', async () => {
        const a = await sessions.begin('alice/a');
        const b = await sessions.begin('alice/a');
        await sessions.append('alice/a', b.id, streamOf(whole), {});
        await sessions.cancel('alice/a', a.id);
        expect((await sessions.status('alice/a', b.id))?.size).toBe(whole.length);
      });
    });

    describe('repository isolation', () => {
      test('a session of one repository is unknown from another', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), {});
        expect(await sessions.status('bob/b', s.id)).toBeUndefined();
        await expect(sessions.append('bob/b', s.id, streamOf(part2), {})).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
        await expect(sessions.seal('bob/b', s.id, sha256(part1))).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
        expect(await sessions.cancel('bob/b', s.id)).toBe(false);
        // untouched in its own repository
        expect((await sessions.status('alice/a', s.id))?.size).toBe(part1.length);
        expect((await sessions.seal('alice/a', s.id, sha256(part1))).blob.size).toBe(part1.length);
      });

      test('a repository name that is a prefix of another does not share sessions', async () => {
        const s = await sessions.begin('alice/a');
        expect(await sessions.status('alice', s.id)).toBeUndefined();
        expect(await sessions.status('alice/a/b', s.id)).toBeUndefined();
      });
    });

    describe('invalid session ids are unknown', () => {
      for (const id of ['../../etc', '..', '.', '', 'uploads', '../uploads', '/etc/passwd', 'not-a-uuid', '6F1C1D3E-0F4B-4F7E-9A55-2A1F7C3B9D10/..']) {
        test(`id ${JSON.stringify(id)}`, async () => {
          expect(await sessions.status('alice/a', id)).toBeUndefined();
          await expect(sessions.append('alice/a', id, streamOf(part1), {})).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
          await expect(sessions.seal('alice/a', id, sha256(part1))).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
          expect(await sessions.cancel('alice/a', id)).toBe(false);
        });
      }
    });

    describe('expire', () => {
      test('sessions written to before the cutoff are removed', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), {});
        expect(await sessions.expire(new Date(Date.now() + 60_000))).toBe(1);
        expect(await sessions.status('alice/a', s.id)).toBeUndefined();
      });

      test('sessions written to after the cutoff are kept', async () => {
        const s = await sessions.begin('alice/a');
        await sessions.append('alice/a', s.id, streamOf(part1), {});
        expect(await sessions.expire(new Date(Date.now() - 60 * 60_000))).toBe(0);
        expect((await sessions.status('alice/a', s.id))?.size).toBe(part1.length);
      });

      test('expiring with no sessions removes nothing', async () => {
        expect(await sessions.expire(new Date(Date.now() + 60_000))).toBe(0);
      });
    });
  });
}
