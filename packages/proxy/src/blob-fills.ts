import { createHash, randomUUID, type Hash } from 'node:crypto';
import { open, readdir, readFile, rename, rm, stat, statfs, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { RegistryError, hashToDigest, newHash, noteReceived, pageAligned, parseDigest, type BlobInfo, type BlobStore, type ByteRange, type Digest, type DigestAlgorithm } from '@wharf/registry-core';
import { BLOCK_SIZE } from './aligned-blocks.js';
import { BlobFill } from './blob-fill.js';
import { BlockDigests, KEPT_SUFFIX, ProgressNote, parseKeptNote, removeFill, writeKeptNote, type KeptNote } from './fill-note.js';
import { FillOwner, ownerState, removeGoneLocks, tagOfName } from './fill-owner.js';
import { FillWriter } from './fill-writer.js';
import { isUpstreamDown, type UpstreamBlob } from './upstream.js';

/** A failure of the upstream's body itself (not of our disk or checks). */
class BodyCut extends Error {
  constructor(override readonly cause: unknown) {
    super(cause instanceof Error ? cause.message : String(cause));
  }
}

/**
 * Copies `body` into `writer`, passing every chunk to `inspect` (hash, size check) as it arrives. The
 * upstream is paused only while the writer has no room (blocks wait for the disk). Resolves at the
 * body's end, with the last blocks possibly still on their way to the disk (`writer.finish()`). A
 * failure of the body itself rejects with a BodyCut.
 */
function drainInto(upstream: UpstreamBlob, writer: FillWriter, fill: BlobFill, inspect: (chunk: Buffer) => void): Promise<void> {
  const { body, recycle } = upstream;
  return new Promise((resolve, reject) => {
    let ended = false;
    let failed = false;
    let waiting = false;
    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      reject(err);
    };
    writer.onFailed = fail;
    body.on('data', (chunk: Buffer) => {
      if (failed) return;
      let more: boolean;
      try {
        inspect(chunk);
        more = writer.push(chunk);
      } catch (err) {
        fail(err);
        return;
      }
      // Copied: the chunk's memory may take the next socket read (once none of it is held, see push).
      const held = writer.holding;
      if (!recycle) noteReceived(chunk.length);
      else if (!held) recycle(chunk);
      fill.got();
      if (!more && !waiting) {
        waiting = true;
        body.pause();
        writer.room().then(
          () => {
            waiting = false;
            if (held) recycle?.(chunk);
            if (!failed) body.resume();
          },
          (err: unknown) => {
            if (held) recycle?.(chunk);
            fail(err);
          },
        );
      }
    });
    body.once('end', () => {
      ended = true;
      // Node emits 'end' even while the body is paused: its last chunk may still be held (push).
      if (!failed) {
        try {
          writer.takeHeld();
        } catch (err) {
          fail(err);
          return;
        }
        fill.got();
        resolve();
      }
    });
    const cut = (err: unknown): void => fail(new BodyCut(err));
    // Kept for the stream's life: an error after a failure (the caller destroys the body) must not be unhandled.
    body.on('error', cut);
    // A body that failed or closed before we got here emits nothing more.
    if (body.errored) cut(body.errored);
    else if (body.destroyed && !ended) cut(new Error('the upstream body closed before it was read'));
  });
}

export interface BlobFillsOptions {
  readonly store: BlobStore & { pathOf(digest: Digest): string };
  readonly tempRoot: string;
  /** Called once a fill is verified and in place. */
  readonly onStored?: (blob: BlobInfo) => void | Promise<void>;
  /** False: fills write through the page cache only (see FillWriter). Default true. */
  readonly directIo?: boolean;
  /** How long the bytes of a download cut short are kept for the next fill to go on from. Default 15 minutes. */
  readonly remnantTtlMs?: number;
  /** Bytes all those kept together may hold (the oldest go first). Default 16 GiB. */
  readonly remnantMaxBytes?: number;
}

/** The upstream's answer for a new fill; with `remnant`, it holds the rest after it, and `kept` is the hash of the bytes kept. */
interface Asked {
  readonly upstream: UpstreamBlob | undefined;
  readonly remnant?: Remnant;
  readonly kept?: Hash;
}

/** Asks the upstream for the blob, or for `range` of it (a fill going on from a remnant). */
export type FetchBlob = (range?: ByteRange) => Promise<UpstreamBlob | undefined>;

/** The bytes a fill cut short by its upstream had on disk: the next fill of the blob starts after them. */
interface Remnant {
  readonly path: string;
  /** Bytes kept, whole blocks (so that the next fill's blocks stay aligned). */
  readonly length: number;
  readonly size: number;
  /** The digest of those bytes as they were received (checked when a fill goes on from them). */
  readonly prefix: Digest;
  /**
   * Who sent them (`originTag` of the upstream): only a fill from the same upstream goes on from them.
   * Their prefix digest proves only that they are what was received; an upstream that sent wrong
   * bytes and cut the download must not spoil another upstream's pull of the blob.
   */
  readonly origin: string | undefined;
  /** Their hash, once a try found them matching `prefix` (the upstream was down): the next try need not read them again. */
  checked?: Hash;
  /** When it goes (a remnant put back after a failed try keeps its deadline). */
  readonly expiresAt: number;
  readonly timer: NodeJS.Timeout;
}

/** Remnants kept at most (the oldest goes first). */
const MAX_REMNANTS = 32;
const FILL_PREFIX = 'fill-';
const REMNANT_TTL_MS = 15 * 60 * 1000;
const REMNANT_MAX_BYTES = 16 * 1024 ** 3;

/**
 * Fills in flight by digest: N concurrent requests for one missing blob share one upstream download.
 *
 * A download its upstream cuts (a restart, a dropped connection past the upstream client's own
 * resumes) leaves its bytes behind, for a while: the next fill of that blob asks only for the rest,
 * with a range request, and its readers (clients resuming where they were cut off, say) are served the
 * bytes before from the file at once. The digest of the whole is verified as always.
 *
 * Each fill's temp file has a note next to it (`<file>.kept`, see fill-note.ts) of the bytes it holds
 * on disk, kept up as it runs, and exact once it is a remnant: a server that crashed or was killed
 * mid-download goes on from them after its restart, as one shut down gracefully does.
 */
export class BlobFills {
  private readonly inflight = new Map<Digest, Promise<BlobFill | undefined>>();
  /** Each fill of `inflight` once its upstream answered, while it runs. */
  private readonly answered = new Map<Digest, BlobFill>();
  /** Who started each fill in `inflight` (its `source`), while it runs. */
  private readonly starters = new Map<Digest, string | undefined>();
  /** The upstream bodies fills are reading (abandon). */
  private readonly bodies = new Set<Readable>();
  private readonly remnants = new Map<Digest, Remnant>();
  /** Remnants taken by a fill that waits for the upstream's answer to its range request. */
  private readonly lent = new Map<Digest, Remnant>();
  private closing = false;
  /** A shutdown past its deadline: downloads stop, and bytes kept are not hashed again. */
  private abandoned = false;
  /** Bytes kept that did not match the digest they had when received (lost in a machine crash), for tests and logs. */
  keptMismatched = 0;
  /** Times bytes kept were read back to be checked (for tests). */
  keptReads = 0;
  /** Whose the temp files are: a server starting on the same storage leaves them alone while this runs. */
  private readonly owner: FillOwner;
  /** How many upstream downloads were started (for tests and metrics). */
  started = 0;
  /** How many of those went on from a remnant. */
  resumed = 0;

  constructor(private readonly options: BlobFillsOptions) {
    this.owner = FillOwner.take(options.tempRoot);
  }

  get running(): number {
    return this.inflight.size;
  }

  /**
   * Resolves once every fill in flight now has ended, verified or failed: a graceful shutdown lets
   * them finish before it closes the database their index entries go to.
   */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()].map(async (starting) => (await starting)?.done));
  }

  /**
   * Ends every fill in flight now, as if its upstream had cut it (a shutdown past its deadline): each
   * fails, is logged, and leaves no temp file and nothing cached, rather than downloading on after
   * the server stopped.
   */
  abandon(): void {
    this.abandoned = true;
    for (const body of this.bodies) body.destroy(new Error('abandoned: the server is shutting down'));
  }

  /**
   * Keeps no more remnants (a shutdown), and leaves those kept in the temp folder with a note of
   * what each holds (its deadline as it is now), for `restore` at the next start: a download abandoned
   * at the shutdown deadline, or cut by its upstream shortly before, goes on after the restart. A
   * remnant whose note cannot be written is removed.
   */
  async close(): Promise<void> {
    this.closing = true;
    // Those lent to a fill still waiting for its upstream too (a shutdown does not wait for it).
    const kept = [...this.remnants.entries(), ...this.lent.entries()];
    this.remnants.clear();
    await Promise.allSettled(
      kept.map(async ([digest, remnant]) => {
        clearTimeout(remnant.timer);
        await writeKeptNote(remnant.path, noteOf(digest, remnant)).catch(() => removeFill(remnant.path));
      }),
    );
    // Its files are now the next start's to take back (a fill still running keeps writing its own note).
    await this.owner.release();
  }

  /**
   * At start, before any fill: takes back the remnants noted before (by `close`, or by a fill running
   * when its server crashed; those not expired, whose file still holds their bytes), and removes
   * every other `fill-` entry of an owner that is gone (a file with no sound note: what it holds is
   * not known). The files of a server still running on this storage (its lock held, see
   * fill-owner.ts) are left to it. Each file taken back is renamed to this instance's name first, so
   * that two servers starting at once cannot both take it. Returns how many came back.
   */
  async restore(): Promise<number> {
    const root = this.options.tempRoot;
    const entries = await readdir(root);
    const groups = new Map<string, string[]>();
    for (const entry of entries) {
      if (!entry.startsWith(FILL_PREFIX)) continue;
      const at = entry.indexOf(KEPT_SUFFIX);
      const file = at < 0 ? entry : entry.slice(0, at);
      groups.set(file, [...(groups.get(file) ?? []), entry]);
    }
    const live = new Map<string, boolean>([[this.owner.tag, true]]);
    const now = Date.now();
    for (const [file, group] of groups) {
      const tag = tagOfName(file.slice(FILL_PREFIX.length));
      // A name of an older version's: its server is not running any more (an upgrade replaced it).
      if (tag !== undefined) {
        if (!live.has(tag)) live.set(tag, ownerState(root, tag) === 'live');
        if (live.get(tag)) continue;
      }
      const noted = group.includes(file) && group.includes(`${file}${KEPT_SUFFIX}`);
      const note = noted ? parseKeptNote(await readFile(join(root, `${file}${KEPT_SUFFIX}`), 'utf8').catch(() => '')) : undefined;
      if (note && note.expiresAt > now && !this.remnants.has(note.digest)) await this.takeBack(join(root, file), note);
      // Not ours to fail the start over (a directory of that name, say): left where it is.
      for (const entry of group) await rm(join(root, entry), { force: true }).catch(() => undefined);
    }
    await removeGoneLocks(root, entries, live);
    return this.remnants.size;
  }

  /** Makes the remnant `note` describes this instance's (restore), unless its file is short or another server took it first. */
  private async takeBack(path: string, note: KeptNote): Promise<void> {
    if (((await stat(path).catch(() => undefined))?.size ?? 0) < note.length) return;
    const claimed = this.newTempPath();
    if (!(await rename(path, claimed).then(() => true, () => false))) return;
    // A deadline further than this server's own TTL (a note from elsewhere, a clock set back) is cut to it.
    const expiresAt = Math.min(note.expiresAt, Date.now() + this.ttlMs);
    if (this.keepRemnant(note.digest, claimed, note.length, note.size, () => note.prefix, note.origin, expiresAt)) await this.noteRemnant(note.digest);
    else await removeFill(claimed);
  }

  /** A new temp file's path, named after this instance (see fill-owner.ts). */
  private newTempPath(): string {
    return join(this.options.tempRoot, `${FILL_PREFIX}${this.owner.tag}-${randomUUID()}`);
  }

  /** The fill of `digest` in flight, if any. */
  current(digest: Digest): Promise<BlobFill | undefined> | undefined {
    return this.inflight.get(digest);
  }

  /** The fill of `digest` in flight once its upstream has answered; undefined while it is starting, or when none runs. */
  answeredFill(digest: Digest): BlobFill | undefined {
    return this.answered.get(digest);
  }

  /** The `source` that started the fill of `digest` in flight, if one is (and it named one). */
  startedFor(digest: Digest): string | undefined {
    return this.starters.get(digest);
  }

  /** Bytes of `digest` kept from a download cut short (for tests and logs); 0 when none. */
  remnantOf(digest: Digest): number {
    return this.remnants.get(digest)?.length ?? 0;
  }

  /** Bytes kept of all downloads cut short, in the temp folder (for metrics). */
  get remnantBytes(): number {
    let bytes = 0;
    for (const remnant of this.remnants.values()) bytes += remnant.length;
    return bytes;
  }

  /**
   * Joins the fill of `digest`, starting it with `fetch` when none runs (then `source` is among its
   * `sources`). Resolves once the upstream has answered (undefined when it has no such blob), so the
   * caller can send headers and tail the fill. `origin` names the upstream `fetch` asks: a new fill
   * goes on only from bytes kept of a download from that same upstream.
   */
  join(digest: Digest, fetch: FetchBlob, source?: string, origin?: string): Promise<BlobFill | undefined> {
    const existing = this.inflight.get(digest);
    if (existing) return existing;
    const starting = this.start(digest, fetch, source, origin === undefined ? undefined : originTag(origin));
    this.inflight.set(digest, starting);
    this.starters.set(digest, source);
    const ended = (): void => {
      this.inflight.delete(digest);
      this.starters.delete(digest);
      this.answered.delete(digest);
    };
    starting.then(
      (fill) => {
        if (!fill) return ended();
        this.answered.set(digest, fill);
        void fill.done.finally(ended).catch(() => undefined);
      },
      ended,
    );
    return starting;
  }

  private async start(digest: Digest, fetch: FetchBlob, source: string | undefined, origin: string | undefined): Promise<BlobFill | undefined> {
    const { upstream, remnant, kept } = await this.ask(digest, fetch, origin);
    if (!upstream) return undefined;
    // Until the fill reads it (past opening the file, and hashing the bytes kept), a body that fails
    // must not throw an unhandled 'error': the fill finds it failed (`errored`) when it gets there.
    upstream.body.on('error', () => undefined);
    this.started += 1;
    if (remnant) this.resumed += 1;
    const { store, onStored } = this.options;
    const from = remnant?.length ?? 0;
    const temp = remnant?.path ?? this.newTempPath();
    const size = remnant?.size ?? upstream.size;
    let handle: FileHandle | undefined;
    let writer: FillWriter;
    try {
      handle = await open(temp, remnant ? 'r+' : 'w', 0o644);
      // Past the whole blocks kept, the file may hold a block whose write had begun.
      if (remnant) await handle.truncate(from);
      writer = await FillWriter.open(temp, handle, { direct: this.options.directIo !== false, start: from });
      // A blob larger than the room left is not written at all: the fill would end in ENOSPC anyway,
      // having taken the last free bytes of the disk from pushes and the database meanwhile.
      const free = size === undefined ? undefined : await freeBytes(this.options.tempRoot);
      if (size !== undefined && free !== undefined && size - from > free) writer.keepInMemory(noRoomFor(size - from, free));
    } catch (err) {
      // Nobody will read this body: let its connection go.
      upstream.body.destroy();
      await handle?.close().catch(() => undefined);
      await removeFill(temp);
      throw err;
    }
    const { algorithm } = parseDigest(digest);
    this.bodies.add(upstream.body);
    const hash = kept ?? newHash(algorithm);
    // With the size known the bytes may be kept: the digest of each block boundary's prefix goes in their note.
    const blocks = size !== undefined ? new BlockDigests(hash, algorithm, from) : undefined;
    const prefixOf = (length: number): Digest | undefined => (length === from ? remnant?.prefix : blocks?.take(length));
    // Kept up as the bytes reach the disk, so that a crash of the server keeps them too.
    const progress = blocks ? new ProgressNote(temp, { digest, size: size!, origin }, this.ttlMs, blocks, from) : undefined;
    const started = new BlobFill(
      digest,
      size,
      temp,
      store.pathOf(digest),
      async (fill) => {
        fill.writer = writer;
        writer.lowestReader = () => fill.lowestReader();
        writer.onWritten = (written) => {
          fill.wrote();
          progress?.update(written);
        };
        let adopted = false;
        let cut = false;
        try {
          await drainInto(upstream, writer, fill, (chunk) => {
            if (fill.size !== undefined && fill.received + chunk.length > fill.size) {
              throw new RegistryError('SIZE_INVALID', 'upstream sent more bytes than it announced', { digest, size: fill.size });
            }
            if (blocks) blocks.update(chunk);
            else hash.update(chunk);
          }).catch((err: unknown) => {
            if (!(err instanceof BodyCut)) throw err;
            cut = true;
            throw err.cause;
          });
          if (fill.size !== undefined && fill.received !== fill.size) {
            cut = true;
            // What came is kept for the next fill to go on from: on disk first.
            await writer.finish().catch(() => undefined);
            throw new RegistryError('SIZE_INVALID', 'upstream blob ended early', { digest, size: fill.size, received: fill.received });
          }
          const actual = hashToDigest(algorithm, hash);
          if (actual !== digest) {
            throw new RegistryError('DIGEST_INVALID', 'upstream blob does not match its digest', { digest, actual });
          }
          // Clients get their last byte now, from the fill's memory, while its last blocks still go to
          // disk: making the cache copy complete and durable is our business, not theirs.
          fill.markVerified();
          await writer.finish();
          if (writer.keptInMemory) {
            // No room for the cache copy: the readers are sent the rest from memory, and nothing is
            // stored. The blocks they still need stay until the last of them is gone.
            fill.notStored = writer.keptInMemory;
            await fill.readersGone();
            return { digest, size: fill.received };
          }
          await handle.sync();
          await handle.close();
          await writer.close();
          // For the next pull's sake only: a failure here costs speed, not the blob.
          await writer.warm(temp).catch(() => undefined);
          // Its note goes before the file moves: a crash in between leaves a file the next start removes.
          await progress?.stop();
          await rm(`${temp}${KEPT_SUFFIX}`, { force: true }).catch(() => undefined);
          const blob = { digest, size: fill.written };
          await store.adopt(temp, blob);
          adopted = true;
          // Bytes kept of another upstream's download of it have no use any more.
          void this.dropRemnant(digest);
          await onStored?.(blob);
          return blob;
        } catch (err) {
          upstream.body.destroy();
          // Bytes that came whole and wrong: the mirror that sent them is asked after the others.
          if (!cut && err instanceof RegistryError && (err.code === 'DIGEST_INVALID' || err.code === 'SIZE_INVALID')) upstream.refused?.();
          throw err;
        } finally {
          this.bodies.delete(upstream.body);
          await writer.close();
          await handle.close().catch(() => undefined);
          await progress?.stop();
          if (!adopted) {
            if (cut && this.keepRemnant(digest, temp, fill.written, fill.size, prefixOf, origin)) await this.noteRemnant(digest);
            else await removeFill(temp);
          }
        }
      },
      from,
    );
    if (source !== undefined) started.sources.add(source);
    return started;
  }

  /**
   * The upstream's answer for a new fill of `digest`: the rest of the blob after the remnant kept of
   * it, if any (`remnant` then says where the fill goes on from), else the whole blob. An upstream
   * that will not answer with exactly the rest (a 416, the whole blob, another range) is asked for
   * the whole; one that is down leaves the remnant, with its deadline, for the next try.
   */
  private async ask(digest: Digest, fetch: FetchBlob, origin: string | undefined): Promise<Asked> {
    const remnant = this.remnants.get(digest);
    // Another upstream's bytes stay for that upstream's next fill (until this one's, if cut, replaces them).
    if (!remnant || remnant.origin !== origin) return { upstream: await fetch() };
    // Taken while asked: no other fill can start on it (this one is in flight), and no timer removes it.
    this.remnants.delete(digest);
    clearTimeout(remnant.timer);
    this.lent.set(digest, remnant);
    try {
      return await this.askRest(digest, remnant, fetch);
    } finally {
      this.lent.delete(digest);
    }
  }

  /** `ask` for a remnant taken from the map: the rest of the blob, or else the whole. */
  private async askRest(digest: Digest, remnant: Remnant, fetch: FetchBlob): Promise<Asked> {
    // Gone from the temp folder (cleaned by hand, say): the whole blob it is.
    if (((await stat(remnant.path).catch(() => undefined))?.size ?? 0) < remnant.length) {
      await removeFill(remnant.path);
      return { upstream: await fetch() };
    }
    // The bytes kept are checked before anything is asked: after a machine crash they may not be
    // those received, and then the whole blob is the download to ask for.
    const { algorithm } = parseDigest(digest);
    const kept = remnant.checked?.copy() ?? (await this.hashKept(remnant, algorithm));
    if (!kept || hashToDigest(algorithm, kept.copy()) !== remnant.prefix) {
      if (kept) this.keptMismatched += 1;
      await removeFill(remnant.path);
      return { upstream: await fetch() };
    }
    const rest = { start: remnant.length, end: remnant.size - 1 };
    const putBack = async (): Promise<void> => {
      // Once closed, close() has noted it for the next start: it stays.
      if (this.closing) return;
      if (!this.keepRemnant(digest, remnant.path, remnant.length, remnant.size, () => remnant.prefix, remnant.origin, remnant.expiresAt)) await removeFill(remnant.path);
      else this.remnants.get(digest)!.checked = kept.copy();
    };
    let part: UpstreamBlob | undefined;
    try {
      part = await fetch(rest);
    } catch (err) {
      // The upstream is down or overloaded, so the whole blob would not come either: what was kept of a
      // blob stays for the next try. Any other answer to the range (a 416, a 500 or 501 from a server
      // that does ranges badly) is a refusal of the range, whatever its failure was filed as.
      if (!isUpstreamDown(err)) {
        // Refused, not down (a 416 to the range, say): the whole blob may well come.
        await removeFill(remnant.path);
        return { upstream: await fetch() };
      }
      await putBack();
      throw err;
    }
    if (!part) {
      await putBack();
      return { upstream: undefined };
    }
    if (part.range?.start === rest.start && part.range.end === rest.end && (part.size === undefined || part.size === remnant.size)) return { upstream: part, remnant, kept };
    // The whole blob (a 200 to the range request), or another range: the fill starts from byte 0.
    await removeFill(remnant.path);
    if (!part.range && part.size === remnant.size) return { upstream: part };
    part.body.destroy();
    return { upstream: await fetch() };
  }

  /**
   * The hash of the bytes `remnant` keeps, read from its file; undefined when they cannot be read
   * whole. A shutdown past its deadline does not wait for a long one: it throws, and the file and its
   * note stay for the next start.
   */
  private async hashKept(remnant: Remnant, algorithm: DigestAlgorithm): Promise<Hash | undefined> {
    this.keptReads += 1;
    const hash = newHash(algorithm);
    const handle = await open(remnant.path, 'r').catch(() => undefined);
    if (!handle) return undefined;
    try {
      if (!(await hashFile(handle, remnant.length, hash, () => this.abandoned))) throw new Error('abandoned: the server is shutting down');
      return hash;
    } catch (err) {
      if (this.abandoned) throw err;
      return undefined;
    } finally {
      await handle.close().catch(() => undefined);
    }
  }

  /**
   * Keeps the whole blocks a fill cut short by its upstream (`origin`) wrote to `path`, for the next
   * fill of `digest` from there, until `expiresAt` (default: REMNANT_TTL_MS from now); false when
   * there is nothing worth keeping, or no room (then the caller removes the file). The oldest go to
   * make room, and so does one kept of the blob before (from another upstream).
   */
  private keepRemnant(
    digest: Digest,
    path: string,
    written: number,
    size: number | undefined,
    prefixOf: (length: number) => Digest | undefined,
    origin: string | undefined,
    expiresAt?: number,
  ): boolean {
    const length = written - (written % BLOCK_SIZE);
    const maxBytes = this.options.remnantMaxBytes ?? REMNANT_MAX_BYTES;
    if (this.closing || size === undefined || length === 0 || length >= size || length > maxBytes) return false;
    const prefix = prefixOf(length);
    if (prefix === undefined) return false;
    const before = this.remnants.get(digest);
    if (before && before.path !== path) void this.dropRemnant(digest);
    let held = length;
    for (const kept of this.remnants.values()) held += kept.length;
    for (const [oldest, kept] of this.remnants) {
      if (this.remnants.size < MAX_REMNANTS && held <= maxBytes) break;
      held -= kept.length;
      void this.dropRemnant(oldest);
    }
    const deadline = expiresAt ?? Date.now() + this.ttlMs;
    // Its own deadline only: a remnant kept of the blob after it has a timer of its own.
    const timer = setTimeout(() => {
      if (this.remnants.get(digest) === remnant) void this.dropRemnant(digest);
    }, Math.max(0, deadline - Date.now()));
    timer.unref();
    const remnant: Remnant = { path, length, size, prefix, origin, expiresAt: deadline, timer };
    this.remnants.set(digest, remnant);
    return true;
  }

  /**
   * Notes the remnant of `digest` just kept, exactly (its running fill's note may lag by a second):
   * a crash before it is used keeps it too. One whose note cannot be written stays for this process.
   */
  private async noteRemnant(digest: Digest): Promise<void> {
    const remnant = this.remnants.get(digest);
    if (remnant) await writeKeptNote(remnant.path, noteOf(digest, remnant)).catch(() => undefined);
  }

  private get ttlMs(): number {
    return this.options.remnantTtlMs ?? REMNANT_TTL_MS;
  }

  /** Forgets the remnant of `digest` and removes its file; never rejects (a timer calls it). */
  private async dropRemnant(digest: Digest): Promise<void> {
    const remnant = this.remnants.get(digest);
    if (!remnant) return;
    this.remnants.delete(digest);
    clearTimeout(remnant.timer);
    // The next start removes what is left of it anyway.
    await removeFill(remnant.path);
  }
}

function noteOf(digest: Digest, remnant: Remnant): KeptNote {
  return { digest, size: remnant.size, length: remnant.length, expiresAt: remnant.expiresAt, prefix: remnant.prefix, origin: remnant.origin };
}

/** An upstream's name as remnants and their notes keep it: short and of one length, whatever the name. */
function originTag(origin: string): string {
  return createHash('sha256').update(origin).digest('hex').slice(0, 32);
}

/** Feeds the first `length` bytes of the file to `hash`; false when `stopped` said to stop first. */
async function hashFile(handle: FileHandle, length: number, hash: { update(bytes: Buffer): unknown }, stopped: () => boolean): Promise<boolean> {
  const buffer = pageAligned(BLOCK_SIZE);
  for (let position = 0; position < length; ) {
    if (stopped()) return false;
    const { bytesRead } = await handle.read(buffer, 0, Math.min(BLOCK_SIZE, length - position), position);
    if (bytesRead === 0) throw new Error('the bytes kept of an earlier download are gone');
    hash.update(buffer.subarray(0, bytesRead));
    position += bytesRead;
  }
  return true;
}

/** Bytes free for an unprivileged writer on the file system of `dir`; undefined when it cannot be told. */
async function freeBytes(dir: string): Promise<number | undefined> {
  try {
    const s = await statfs(dir);
    return s.bavail * s.bsize;
  } catch {
    return undefined;
  }
}

/** Why a fill of `bytes` is kept in memory from its start: as a write with no room fails, ENOSPC. */
function noRoomFor(bytes: number, free: number): Error {
  return Object.assign(new Error(`no space left on storage for the blob (${bytes} bytes to write, ${free} free)`), { code: 'ENOSPC' });
}
