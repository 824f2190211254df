import { randomUUID, type Hash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rename, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { hashToDigest, tryParseDigest, type Digest, type DigestAlgorithm } from '@wharf/registry-core';
import { BLOCK_SIZE } from './aligned-blocks.js';

/** Next to a fill's temp file: how many of its first bytes are the blob's, for the next start to go on from. */
export const KEPT_SUFFIX = '.kept';
/** A running fill's note, padded to this many bytes, so that a shorter one leaves nothing of a longer one behind it. */
const RECORD_BYTES = 512;
/** A note being written (renamed over the note once whole), each under a name of its own. */
const NEW_SUFFIX = '.new';
/** A running fill's note follows its progress at least this often... */
export const NOTE_INTERVAL_MS = 1000;
/**
 * ...and whenever this many more bytes are on disk. Clients resuming after a crash ask from where
 * they got to, which may be past the note by what came since it, plus the blocks the fill held in
 * memory (4 to 7 MiB); a range more than 16 MiB past a fill goes to the upstream on its own
 * (pull-through.ts), so the note must stay within 16 MiB of them at any rate of download.
 */
export const NOTE_BYTES = 8 * 1024 * 1024;

/** What a note says of the temp file `<note without .kept>`. */
export interface KeptNote {
  readonly digest: Digest;
  readonly size: number;
  /** Bytes at the file's start that are the blob's: whole blocks, fewer than `size`. */
  readonly length: number;
  /**
   * The digest of those bytes as they came from the upstream. A fill going on from them checks it
   * before it asks the upstream for the rest: after a machine crash the file may hold what never
   * reached the disk.
   */
  readonly prefix: Digest;
  /** When they go (ms since the epoch). */
  readonly expiresAt: number;
  /** The upstream they came from (a tag of its name), the only one a fill goes on from them with. */
  readonly origin?: string;
}

/** The note, when it is one: a remnant of whole blocks, short of its blob's size. */
export function parseKeptNote(text: string): KeptNote | undefined {
  let note: Partial<Record<keyof KeptNote, unknown>>;
  try {
    note = JSON.parse(text) as typeof note;
  } catch {
    return undefined;
  }
  const { digest, size, length, expiresAt, prefix, origin } = note ?? {};
  if (typeof digest !== 'string' || !tryParseDigest(digest)) return undefined;
  if (typeof prefix !== 'string' || tryParseDigest(prefix)?.algorithm !== tryParseDigest(digest)!.algorithm) return undefined;
  if (![size, length, expiresAt].every((n) => typeof n === 'number' && Number.isSafeInteger(n))) return undefined;
  if (origin !== undefined && typeof origin !== 'string') return undefined;
  const [s, l] = [size as number, length as number];
  if (l <= 0 || l % BLOCK_SIZE !== 0 || l >= s) return undefined;
  return { digest: digest as Digest, size: s, length: l, expiresAt: expiresAt as number, prefix: prefix as Digest, ...(origin === undefined ? {} : { origin }) };
}

/**
 * Writes the note of the temp file `path` (or its record, already serialised), whole or not at all: a
 * crash while it is written leaves the previous note (or none), never half of one.
 */
export async function writeKeptNote(path: string, note: KeptNote | string): Promise<void> {
  // Two writers at once (close() and a fill just cut) must not rename each other's file away.
  const fresh = `${path}${KEPT_SUFFIX}.${randomUUID().slice(0, 8)}${NEW_SUFFIX}`;
  try {
    await writeFile(fresh, typeof note === 'string' ? note : JSON.stringify(note));
    await rename(fresh, `${path}${KEPT_SUFFIX}`);
  } catch (err) {
    await rm(fresh, { force: true }).catch(() => undefined);
    throw err;
  }
}

/** Removes the temp file `path` and its note; never rejects (what is left, the next start removes). */
export async function removeFill(path: string): Promise<void> {
  await Promise.all([path, `${path}${KEPT_SUFFIX}`].map((file) => rm(file, { force: true }).catch(() => undefined)));
}

/**
 * A fill's hash, fed through here: the digest of the bytes before each block boundary is kept (a
 * copy of the hash's state, finished) until `take` asks for it or one after it, for the notes.
 */
export class BlockDigests {
  private readonly at = new Map<number, Digest>();

  constructor(
    private readonly hash: Hash,
    private readonly algorithm: DigestAlgorithm,
    /** Bytes the hash has had already (a block boundary). */
    private position: number,
  ) {}

  update(chunk: Buffer): void {
    for (let offset = 0; offset < chunk.length; ) {
      const n = Math.min(BLOCK_SIZE - (this.position % BLOCK_SIZE), chunk.length - offset);
      this.hash.update(n === chunk.length ? chunk : chunk.subarray(offset, offset + n));
      offset += n;
      this.position += n;
      if (this.position % BLOCK_SIZE === 0) this.at.set(this.position, hashToDigest(this.algorithm, this.hash.copy()));
    }
  }

  /** The digest of the first `length` bytes (a block boundary the hash has passed); those before it are forgotten. */
  take(length: number): Digest | undefined {
    for (const boundary of this.at.keys()) {
      if (boundary >= length) break;
      this.at.delete(boundary);
    }
    return this.at.get(length);
  }
}

/**
 * The note of a running fill, kept up with the bytes its writer has on disk: whole blocks, once
 * NOTE_BYTES more are on disk or NOTE_INTERVAL_MS has passed, one write at a time (about 90 a
 * second at 700 MiB/s). A crash of the server (kill -9, the kernel's out-of-memory killer) then
 * loses at most the last 8 MiB or second of the download: the next start takes the bytes noted back
 * (BlobFills.restore), checks them against their noted digest before using them, and the digest of
 * the whole is verified as always.
 */
export class ProgressNote {
  private noted: number;
  private notedAt = 0;
  /** Bytes on disk, as last told. */
  private written: number;
  private writing: Promise<void> | undefined;
  /** The note, open while the fill runs: each note is one write in place, not a new file. */
  private handle: FileHandle | undefined;
  /** Notes what came meanwhile once the interval is over (a fill that stalls after a burst). */
  private later: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly path: string,
    /** What every note says of the fill: its blob and where the bytes come from. */
    private readonly fill: { readonly digest: Digest; readonly size: number; readonly origin: string | undefined },
    private readonly ttlMs: number,
    private readonly blocks: BlockDigests,
    /** Bytes the file holds already, noted by whoever kept them. */
    from: number,
  ) {
    this.noted = from;
    this.written = from;
    // The first note after a second too: a small blob, done sooner, writes none.
    this.notedAt = performance.now();
  }

  /** The writer has `written` bytes on disk. */
  update(written: number): void {
    this.written = Math.max(this.written, written);
    const length = this.written - (this.written % BLOCK_SIZE);
    if (this.stopped || length <= this.noted || length >= this.fill.size) return;
    // The monotonic clock: one set back must not hold the notes for as long.
    const wait = length - this.noted >= NOTE_BYTES ? 0 : this.notedAt + NOTE_INTERVAL_MS - performance.now();
    if (wait > 0 || this.writing) {
      // Once the second is over, or the note being written is (the next block written may come first).
      if (!this.later) {
        this.later = setTimeout(() => {
          this.later = undefined;
          this.update(this.written);
        }, Math.max(wait, 10));
        this.later.unref();
      }
      return;
    }
    clearTimeout(this.later);
    this.later = undefined;
    const prefix = this.blocks.take(length);
    if (prefix === undefined) return;
    this.notedAt = performance.now();
    this.noted = length;
    // A note that cannot be written costs only what a crash would have kept.
    const { digest, size, origin } = this.fill;
    this.writing = this.write({ digest, size, length, expiresAt: Date.now() + this.ttlMs, prefix, origin })
      .catch(() => undefined)
      .finally(() => {
        this.writing = undefined;
      });
  }

  /**
   * One write of RECORD_BYTES at the start of the note file, kept open: about 90 notes a second at
   * 700 MiB/s, where a new file and a rename each cost the cold pull 10% (measured). A write this
   * small lands whole when the process dies; a machine crash may tear it, and a torn note is
   * discarded at the next start (not JSON), which loses only those bytes.
   */
  private async write(note: KeptNote): Promise<void> {
    const record = JSON.stringify(note).padEnd(RECORD_BYTES, ' ');
    if (!this.handle) {
      // The first note as a whole file renamed into place: created empty and written after, a crash
      // in between left an empty note. The next ones go in place, into that file kept open.
      await writeKeptNote(this.path, record);
      // Awaited here, inside the write `stop` waits for: an open that fails (no descriptor left, the
      // note removed meanwhile) is this note's failure, not a rejection nobody holds until the next.
      this.handle = await open(`${this.path}${KEPT_SUFFIX}`, constants.O_WRONLY);
      return;
    }
    await this.handle.write(record, 0, 'utf8');
  }

  /** No more notes; resolves once the one being written is (the fill then keeps or removes it). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.later);
    this.later = undefined;
    await this.writing;
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close().catch(() => undefined);
  }
}
