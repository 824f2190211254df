import { randomUUID, type Hash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, rmdir, stat, truncate, unlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BlobInfo } from '../blob-store.js';
import { hashToDigest, isDigestAlgorithm, newHash, parseDigest, type Digest, type DigestAlgorithm } from '../digest.js';
import { RegistryError } from '../errors.js';
import { hashFile, hashingStage } from '../hashing.js';
import { SEALED_UPLOAD_SUFFIX, type ChunkPosition, type UploadSessions, type UploadStatus } from '../uploads.js';
import { isNotFound } from './fs-blob-store.js';

/**
 * Running hashes kept in memory, the most recently used: a session started and left (a client that
 * gave up, or a scan opening thousands) would otherwise hold one for `upload_max_age`. A session
 * whose hash was let go re-hashes its file at its next chunk.
 */
const RUNNING_HASHES = 1024;
/**
 * Sessions whose info (repository, algorithm, start) is kept in memory, the most recently used: the
 * info never changes, and reading `info.json` at every request of a session was three file reads per
 * upload. Whether the session still exists is asked of the file system each time (another process
 * sharing the storage may have ended it).
 */
const KNOWN_INFOS = 4096;

const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * Upload sessions one namespace (a repository name's first component: a user's, a group's) may have
 * open at once. Each is a folder for `upload_max_age`: without a bound, one account could fill the
 * file system's inodes with sessions it never uses.
 */
export const MAX_OPEN_UPLOADS = 10_000;
/** The count of open sessions is taken again from disk at most this often, when a namespace is at its bound. */
const RECOUNT_MS = 10_000;
/** A session folder without its info.json (a crash inside begin) is removed once this old. */
const ORPHAN_FOLDER_MS = 10 * 60_000;

function namespaceOf(repo: string): string {
  return repo.split('/', 1)[0]!;
}

function uploadUnknown(id: string): RegistryError {
  return new RegistryError('BLOB_UPLOAD_UNKNOWN', 'blob upload unknown to registry', { id });
}

interface SessionInfo {
  readonly repo: string;
  readonly algorithm: DigestAlgorithm;
  readonly startedAt: string;
}

interface RunningHash {
  readonly algorithm: DigestAlgorithm;
  hash: Hash;
  offset: number;
}

/**
 * Upload sessions as folders under the temporary storage: `<tempRoot>/uploads/<id>/{info.json,data}`.
 * PATCHes to one session are serialised; a chunk that does not start where the data ends is refused
 * (RANGE_INVALID, 416) and the client can ask for the current offset. Sealing moves `data` out to
 * `<id>.sealed` and removes the session. Append, seal and cancel of one session hold its lock, so a DELETE
 * racing a PATCH or the completing PUT finds either the whole session or none of it.
 */
export class FsUploadSessions implements UploadSessions {
  private readonly dir: string;
  private readonly running = new Map<string, RunningHash>();
  private readonly infos = new Map<string, SessionInfo>();
  private readonly locks = new Map<string, Promise<unknown>>();
  /** Sessions with a chunk being written, and the size they had before it: what status reports. */
  private readonly committed = new Map<string, number>();
  /** The chunk being written to each session: a cancel stops it rather than wait for a slow client. */
  private readonly writing = new Map<string, AbortController>();
  /** Sessions with a cancel waiting for their lock, and how many: chunks queued behind it are refused. */
  private readonly cancelling = new Map<string, number>();

  /** Open sessions per namespace, counted from disk at the first begin and kept up since. */
  private open: Map<string, number> | undefined;
  private countedAt = -Infinity;
  /** The count being taken: begins at once share it (each would otherwise read every session's info). */
  private counting: Promise<Map<string, number>> | undefined;
  /** Times the sessions were counted from disk (for tests). */
  counts = 0;

  constructor(
    tempRoot: string,
    private readonly maxOpen = MAX_OPEN_UPLOADS,
  ) {
    this.dir = join(tempRoot, 'uploads');
  }

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  async begin(repo: string, algorithm: DigestAlgorithm = 'sha256'): Promise<UploadStatus> {
    const namespace = namespaceOf(repo);
    let open = this.open ?? (await this.count());
    if ((open.get(namespace) ?? 0) >= this.maxOpen && (this.counting || performance.now() - this.countedAt >= RECOUNT_MS)) open = await this.count();
    // The latest count, which `opened` keeps up (another begin's count may have ended meanwhile).
    open = this.open ?? open;
    if ((open.get(namespace) ?? 0) >= this.maxOpen) {
      throw new RegistryError('TOOMANYREQUESTS', `${namespace} has ${this.maxOpen} uploads in progress, the most a namespace may have: finish or cancel some (unfinished ones are removed after upload_max_age)`, { namespace });
    }
    // Counted now, with no wait since the check: begins at once cannot all pass it.
    this.opened(repo, 1);
    const id = randomUUID();
    const folder = join(this.dir, id);
    const info: SessionInfo = { repo, algorithm, startedAt: new Date().toISOString() };
    try {
      await mkdir(folder, { recursive: true });
      await writeFile(join(folder, 'data'), '');
      await writeFile(join(folder, 'info.tmp'), JSON.stringify(info));
      await rename(join(folder, 'info.tmp'), join(folder, 'info.json'));
    } catch (err) {
      // A session that could not be made whole (no room for its info, say) leaves nothing behind.
      this.opened(repo, -1);
      await rm(folder, { recursive: true, force: true });
      throw err;
    }
    this.remember(id, info);
    return { id, repo, size: 0, startedAt: new Date(info.startedAt) };
  }

  async status(repo: string, id: string): Promise<UploadStatus | undefined> {
    return (await this.session(repo, id))?.status;
  }

  /** The session's status and info; its `data` file, which each ends by moving or removing, says it still exists. */
  private async session(repo: string, id: string): Promise<{ status: UploadStatus; info: SessionInfo } | undefined> {
    // A known session's existence is its data file's stat, taken below: no second look needed.
    const info = await this.info(repo, id, false);
    if (!info) return undefined;
    const onDisk = (await stat(this.dataPath(id)).catch(() => undefined))?.size;
    if (onDisk === undefined) {
      this.infos.delete(id);
      return undefined;
    }
    // While a chunk is arriving, its bytes are not the client's to resume from: they may yet be cut.
    const size = this.committed.get(id) ?? onDisk;
    return { status: { id, repo, size, startedAt: new Date(info.startedAt) }, info };
  }

  append(repo: string, id: string, chunk: Readable, position: ChunkPosition, signal?: AbortSignal): Promise<UploadStatus> {
    return this.exclusive(id, async () => {
      // A DELETE came while this chunk waited: the session is as good as gone.
      if (this.cancelling.has(id)) throw uploadUnknown(id);
      const { status: current, info } = await this.require(repo, id);
      if (position.start !== undefined && position.start !== current.size) {
        throw new RegistryError('RANGE_INVALID', 'chunk does not start where the upload ends', {
          expectedStart: current.size,
          start: position.start,
        });
      }
      const expected = position.start !== undefined && position.end !== undefined ? position.end - position.start + 1 : undefined;
      const running = await this.runningHash(id, current.size, info.algorithm);
      const counter = { bytes: 0 };
      this.committed.set(id, current.size);
      try {
        await this.stoppable(id, signal, async (stop) => {
          try {
            const sink = createWriteStream(this.dataPath(id), { flags: 'a', highWaterMark: 1024 * 1024 });
            await pipeline(chunk, hashingStage(running.hash, counter, expected), sink, { signal: stop });
            if (expected !== undefined && counter.bytes !== expected) {
              throw new RegistryError('SIZE_INVALID', 'chunk length does not match Content-Range', { expected, actual: counter.bytes });
            }
          } catch (err) {
            // The hash has seen bytes that may not all be on disk: forget it and cut the file back to
            // the last good offset, so a retry of the same chunk starts clean.
            this.running.delete(id);
            await truncate(this.dataPath(id), current.size).catch(() => undefined);
            throw err;
          }
        });
      } finally {
        this.committed.delete(id);
      }
      running.offset += counter.bytes;
      // Used last: to the recent end again, whatever other sessions did while this chunk came.
      this.running.delete(id);
      this.running.set(id, running);
      return { ...current, size: current.size + counter.bytes };
    });
  }

  seal(repo: string, id: string, digest: Digest): Promise<{ blob: BlobInfo; file: string }> {
    return this.exclusive(id, async () => {
      const { status: current } = await this.require(repo, id);
      const { algorithm } = parseDigest(digest);
      let actual: Digest;
      const running = this.running.get(id);
      if (running && running.algorithm === algorithm && running.offset === current.size) {
        actual = hashToDigest(algorithm, running.hash.copy());
      } else {
        actual = hashToDigest(algorithm, (await hashFile(this.dataPath(id), algorithm)).hash);
      }
      if (actual !== digest) {
        throw new RegistryError('DIGEST_INVALID', 'uploaded content does not match the digest', { expected: digest, actual });
      }
      const handle = await open(this.dataPath(id), 'r+');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
      // Still under the lock: move the whole session aside (one rename, which needs no room on a full
      // disk), so that a PATCH or a DELETE arriving before the caller adopts the file, in this process
      // or another one on the storage, finds no session, and neither appends to nor removes what was
      // just verified. `settle` then removes it, or puts it back if the bytes could not be stored.
      const sealed = this.sealedPath(id);
      // Renaming keeps the time of the last chunk: freshened first, or `expire` could take a folder
      // that was written to long ago but is being adopted now (even in the moment between the two).
      const now = new Date();
      await utimes(this.dataPath(id), now, now);
      await rename(join(this.dir, id), sealed);
      this.running.delete(id);
      this.opened(repo, -1);
      return { blob: { digest, size: current.size }, file: join(sealed, 'data') };
    });
  }

  settle(repo: string, id: string, stored: boolean): Promise<void> {
    return this.exclusive(id, async () => {
      const sealed = this.sealedPath(id);
      // The bytes are still there to come back as the session (they did not reach the store): back under
      // the session's name, with its info, as it was before the seal.
      // (Not put back only if a session of that name came meanwhile: impossible with random ids.)
      if (!stored && (await stat(join(sealed, 'data')).then(() => true, () => false)) && (await this.unseal(id, repo))) return;
      this.infos.delete(id);
      await rm(sealed, { recursive: true, force: true });
    });
  }

  /** Puts back a sealed session left for longer than an adoption takes; false when there is none such. */
  private restoreSealed(id: string): Promise<boolean> {
    if (!SESSION_ID.test(id) || this.locks.has(id)) return Promise.resolve(false);
    return this.exclusive(id, async () => {
      const sealed = this.sealedPath(id);
      const data = await stat(join(sealed, 'data')).catch(() => undefined);
      const info = data && (await this.readInfo(`${id}${SEALED_UPLOAD_SUFFIX}`));
      if (!data || !info || data.mtime.getTime() >= Date.now() - ORPHAN_FOLDER_MS) return false;
      return this.unseal(id, info.repo);
    });
  }

  /** A sealed session back under its own name, open again; false when it cannot be renamed back. */
  private async unseal(id: string, repo: string): Promise<boolean> {
    try {
      await rename(this.sealedPath(id), join(this.dir, id));
    } catch {
      return false;
    }
    this.opened(repo, 1);
    return true;
  }

  private sealedPath(id: string): string {
    return join(this.dir, `${id}${SEALED_UPLOAD_SUFFIX}`);
  }

  async takeWhole<T>(repo: string, id: string, store: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T | undefined> {
    return this.exclusive(id, async () => {
      if (this.cancelling.has(id)) throw uploadUnknown(id);
      const { status: current } = await this.require(repo, id);
      if (current.size !== 0) return undefined;
      const stored = await this.stoppable(id, signal, store);
      // The blob is in the store: the session, which never held a byte of it, ends as a seal ends it.
      await this.end(repo, id);
      return stored;
    });
  }

  /**
   * Runs `work` (a chunk's write, a whole blob's store) so that a cancel of session `id` stops it: its
   * signal is aborted by a cancel (or by the caller's `signal`), and work stopped by a cancel fails
   * BLOB_UPLOAD_UNKNOWN, never succeeding into a removed session. Under the session's lock.
   */
  private async stoppable<T>(id: string, signal: AbortSignal | undefined, work: (stop: AbortSignal) => Promise<T>): Promise<T> {
    const stop = new AbortController();
    this.writing.set(id, stop);
    // A cancel that came while the session was being looked at found nothing to stop yet.
    if (this.cancelling.has(id)) stop.abort();
    try {
      return await work(signal ? AbortSignal.any([signal, stop.signal]) : stop.signal);
    } catch (err) {
      // Stopped by a cancel: the client is told its session is gone, never that its bytes were kept.
      if (stop.signal.aborted && !signal?.aborted) throw uploadUnknown(id);
      throw err;
    } finally {
      this.writing.delete(id);
    }
  }

  async cancel(repo: string, id: string): Promise<boolean> {
    if (!(await this.info(repo, id))) return false;
    this.cancelling.set(id, (this.cancelling.get(id) ?? 0) + 1);
    try {
      // The chunk in flight ends now (its bytes cut back), so the DELETE need not wait for its client.
      this.writing.get(id)?.abort();
      return await this.exclusive(id, async () => {
        // Looked at again under the lock: a seal or another cancel may have ended the session meanwhile.
        if (!(await this.info(repo, id))) return false;
        await this.end(repo, id);
        return true;
      });
    } finally {
      const left = (this.cancelling.get(id) ?? 1) - 1;
      if (left > 0) this.cancelling.set(id, left);
      else this.cancelling.delete(id);
    }
  }

  async expire(olderThan: Date): Promise<number> {
    let removed = 0;
    for (const id of await readdir(this.dir).catch(() => [] as string[])) {
      // A session with a chunk arriving or queued is in use, whatever the age of its file.
      if (this.locks.has(id)) continue;
      // A sealed session that no adoption settled (the process was killed between the two) comes back
      // as the session it was: resumable, and listed by fsck, until its age ends it as any other.
      if (id.endsWith(SEALED_UPLOAD_SUFFIX) && (await this.restoreSealed(id.slice(0, -SEALED_UPLOAD_SUFFIX.length)))) continue;
      // Looked at and removed under the session's lock: a chunk arriving meanwhile waits, then finds
      // either a session it freshened (kept) or none (BLOB_UPLOAD_UNKNOWN), never a folder going away
      // under its write.
      const gone = await this.exclusive(id, async () => {
        const folder = join(this.dir, id);
        const s = await stat(join(folder, 'data')).catch(() => stat(folder).catch(() => undefined));
        if (!s) return false;
        const info = await this.readInfo(id);
        // A folder that never got its info.json (a crash inside begin, which writes it right after the
        // folder) is no session anyone can reach: gone after a few minutes, not upload_max_age.
        // Only a file that is not there: one that cannot be read now (EMFILE, EIO) is no orphan's.
        const orphan = !info && SESSION_ID.test(id) && (await stat(join(folder, 'info.json')).then(() => false, (err: unknown) => isNotFound(err)));
        const limit = orphan ? new Date(Math.max(olderThan.getTime(), Date.now() - ORPHAN_FOLDER_MS)) : olderThan;
        if (s.mtime >= limit) return false;
        this.running.delete(id);
        this.infos.delete(id);
        await rm(folder, { recursive: true, force: true });
        if (info) this.opened(info.repo, -1);
        return true;
      });
      if (gone) removed += 1;
    }
    return removed;
  }

  /**
   * Removes an ended session's folder (under its lock), and forgets it. Its files are known: `data`
   * (unless a seal moved it out) and `info.json`; a folder that holds anything else (or lost
   * something) is removed the slow way.
   */
  private async end(repo: string, id: string, dataMoved = false): Promise<void> {
    this.running.delete(id);
    this.infos.delete(id);
    const folder = join(this.dir, id);
    try {
      if (!dataMoved) await unlink(this.dataPath(id));
      await unlink(join(folder, 'info.json'));
      await rmdir(folder);
    } catch {
      await rm(folder, { recursive: true, force: true });
    }
    this.opened(repo, -1);
  }

  private remember(id: string, info: SessionInfo): void {
    this.infos.delete(id);
    this.infos.set(id, info);
    if (this.infos.size > KNOWN_INFOS) this.infos.delete(this.infos.keys().next().value!);
  }

  /** Keeps the count of `repo`'s namespace up with a session begun (1) or ended (-1). */
  private opened(repo: string, change: 1 | -1): void {
    if (!this.open) return;
    const namespace = namespaceOf(repo);
    const n = Math.max(0, (this.open.get(namespace) ?? 0) + change);
    if (n === 0) this.open.delete(namespace);
    else this.open.set(namespace, n);
  }

  /**
   * Counts the open sessions per namespace from disk (at the first begin, and to correct the count at
   * a namespace's bound): one count at a time, shared by every begin that waits for it.
   */
  private count(): Promise<Map<string, number>> {
    this.countedAt = performance.now();
    this.counting ??= (async () => {
      this.counts += 1;
      const open = new Map<string, number>();
      for (const id of await readdir(this.dir).catch(() => [] as string[])) {
        if (!SESSION_ID.test(id)) continue;
        const info = await this.readInfo(id);
        if (info) open.set(namespaceOf(info.repo), (open.get(namespaceOf(info.repo)) ?? 0) + 1);
      }
      this.open = open;
      return open;
    })().finally(() => {
      this.counting = undefined;
    });
    return this.counting;
  }

  private async readInfo(id: string): Promise<SessionInfo | undefined> {
    try {
      return JSON.parse(await readFile(join(this.dir, id, 'info.json'), 'utf8')) as SessionInfo;
    } catch {
      return undefined;
    }
  }

  private dataPath(id: string): string {
    return join(this.dir, id, 'data');
  }

  /**
   * The session's info, if `id` is a session of `repo`'s. A known one is looked for on disk too unless
   * `checked` is false (the caller stats its data file next, which tells the same).
   */
  private async info(repo: string, id: string, checked = true): Promise<SessionInfo | undefined> {
    if (!SESSION_ID.test(id)) return undefined;
    const known = this.infos.get(id);
    if (known) {
      if (known.repo !== repo) return undefined;
      if (!checked) return known;
      try {
        await stat(join(this.dir, id, 'info.json'));
        return known;
      } catch (err) {
        if (!isNotFound(err)) throw err;
        this.infos.delete(id);
        return undefined;
      }
    }
    let raw: string;
    try {
      raw = await readFile(join(this.dir, id, 'info.json'), 'utf8');
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    const info = JSON.parse(raw) as SessionInfo;
    if (!isDigestAlgorithm(info.algorithm)) return undefined;
    this.remember(id, info);
    if (info.repo !== repo) return undefined;
    return info;
  }

  private async require(repo: string, id: string): Promise<{ status: UploadStatus; info: SessionInfo }> {
    const s = await this.session(repo, id);
    if (!s) throw uploadUnknown(id);
    return s;
  }

  /** The session's hash of its data so far: kept from its last chunk, or made from its file. */
  private async runningHash(id: string, size: number, algorithm: DigestAlgorithm): Promise<RunningHash> {
    const known = this.running.get(id);
    this.running.delete(id);
    let running: RunningHash;
    if (known && known.offset === size) {
      running = known;
    } else {
      const { hash, size: hashed } = size === 0 ? { hash: newHash(algorithm), size: 0 } : await hashFile(this.dataPath(id), algorithm);
      running = { algorithm, hash, offset: hashed };
    }
    // Most recently used last; the least recently used goes when there are too many, unless a chunk
    // of it is arriving (its seal would re-hash the file).
    this.running.set(id, running);
    if (this.running.size > RUNNING_HASHES) {
      for (const other of this.running.keys()) {
        if (other === id || this.committed.has(other)) continue;
        this.running.delete(other);
        break;
      }
    }
    return running;
  }

  private async exclusive<T>(id: string, work: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(id) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(work);
    this.locks.set(id, next);
    try {
      return await next;
    } finally {
      if (this.locks.get(id) === next) this.locks.delete(id);
    }
  }
}
