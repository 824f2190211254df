import { pageAligned } from '@wharf/registry-core';

/** Bytes per slab: socket reads land one after another in a slab until less than MIN_READ is left. */
const SLAB_SIZE = 512 * 1024;
/** The least room a read is given; what a slab has left below this is not used. */
export const MIN_READ = 64 * 1024;
/**
 * Bytes per slab taken while more than CROWD readers read at once. Each reader holds its current slab
 * and the one its paused body still points into: with 80 downloads at once, 512 KiB slabs held 127
 * MiB. Reads are as large as the room left, so a smaller slab means more, smaller reads, which
 * matters to one download and not to eighty sharing two cores.
 */
const CROWDED_SLAB_SIZE = 2 * MIN_READ;
/** Readers at once past which new slabs are CROWDED_SLAB_SIZE. */
const CROWD = 16;
let readers = 0;
/** Slabs kept for reuse when nobody holds a view of them, shared by every reader. */
const SPARES = 4;
const spares: Buffer[] = [];
/**
 * Slabs each reader keeps for itself on top. A socket read on loopback often fills a whole slab, and
 * a fill waiting for the disk holds several reads in its paused body streams, then gives them all
 * back at once when it goes on. Shared alone, four spares served one download, but three at once
 * allocated a new slab for 42% of their bytes (123 MiB of garbage for three 100 MB layers, and the
 * page faults slabs exist to avoid). With two of its own, four layers of 256 MiB at once still
 * allocated 139 slabs, 70 MiB of garbage that swung RSS by 20 MiB between collections; with four,
 * 16 in all, and the pull's peak RSS 6-10 MiB lower (a rig, 3 runs each).
 */
const OWN_SPARES = 4;
/**
 * Slabs all readers together keep of their own: with many downloads at once, those past it share
 * the four spares again, so idle slabs never hold more than 10 MiB.
 */
const OWN_TOTAL = 16;
let ownHeld = 0;

/** Readers between their first read and their release (for tests). */
export function readingNow(): number {
  return readers;
}

/** Slabs kept for reuse and not read into now, by all readers together (for tests). */
export function spareSlabs(): number {
  return ownHeld + spares.length;
}

interface Slab {
  readonly buffer: Buffer;
  /** Bytes handed out from the start. */
  used: number;
  /** Views handed out and not given back. */
  lent: number;
  /** Full: reusable once every view is given back. */
  retired: boolean;
}

/**
 * Reused memory for socket reads. Node reads a socket into a fresh 64 KiB buffer per read; on a VM
 * where a fresh page costs a fault to the host, receiving a 1 GiB blob that way took 1.2-3.0 CPU
 * seconds, most of it page faults, against 0.33 s for the same reads into reused memory (measured
 * here, see docs/MEASURED.md). Slabs are page-aligned (`pageAligned`), where the kernel's copy into
 * them never meets the penalty a malloc'd buffer's alignment can.
 *
 * One SlabReader per socket: the socket reads into `room()`, `take(n)` returns the bytes read, and
 * `lend` hands parts of them on. Whoever holds a lent view may `giveBack` it once done with it
 * (written to disk, say); a slab whose views all came back is read into again. A view never given
 * back is just garbage: its slab is collected with it. Giving a view back twice, or one this reader
 * did not lend, does nothing, so a slab is never overwritten while a lent view of it is in use.
 */
/** What a released reader's socket is given to read into (node asks once more after the last read). */
const CLOSED_ROOM = Buffer.allocUnsafeSlow(MIN_READ);

export class SlabReader {
  private current: Slab | undefined;
  private closed = false;
  /** Counted among the readers reading now (from its first read to `release`). */
  private counted = false;
  /** Reads a small answer only (notADownload): never counted. */
  private small = false;
  private readonly own: Buffer[] = [];
  private readonly slabs = new WeakMap<ArrayBufferLike, Slab>();
  private readonly lentViews = new WeakSet<Buffer>();

  /** Room for the next read: at least MIN_READ bytes at the end of the current slab. */
  room(): Buffer {
    if (this.closed) return CLOSED_ROOM;
    if (!this.counted && !this.small) {
      this.counted = true;
      readers += 1;
    }
    let slab = this.current;
    if (!slab || slab.buffer.length - slab.used < MIN_READ) {
      if (slab) this.retire(slab);
      const size = readers > CROWD ? CROWDED_SLAB_SIZE : SLAB_SIZE;
      let buffer = this.own.pop();
      if (buffer) ownHeld -= 1;
      else buffer = spares.pop();
      // A small spare left by a crowd would make a lone download read in small pieces.
      if (!buffer || buffer.length < size) buffer = pageAligned(size);
      slab = { buffer, used: 0, lent: 0, retired: false };
      this.slabs.set(buffer.buffer, slab);
      this.current = slab;
    }
    return slab.buffer.subarray(slab.used);
  }

  /** The `length` bytes the last read put at the start of `room()`; lend the parts handed on with `lend`. */
  take(length: number): Buffer {
    const slab = this.current;
    if (!slab || length > slab.buffer.length - slab.used) throw new RangeError('take() past the room given');
    const region = slab.buffer.subarray(slab.used, slab.used + length);
    slab.used += length;
    return region;
  }

  /** Hands on `view`, a part of what the last `take` returned; its slab is not read into until it comes back. */
  lend(view: Buffer): Buffer {
    const slab = this.current;
    if (!slab || view.buffer !== slab.buffer.buffer) throw new RangeError('lend() of a view outside the current slab');
    slab.lent += 1;
    this.lentViews.add(view);
    return view;
  }

  /** The holder of `view` is done with it. */
  giveBack(view: Buffer): void {
    if (!this.lentViews.delete(view)) return;
    const slab = this.slabs.get(view.buffer);
    if (!slab) return;
    slab.lent -= 1;
    if (slab.retired && slab.lent === 0) this.reuse(slab);
  }

  /**
   * What this reader reads is small (a manifest, a token, a head alone): it stops counting among
   * the readers that make slabs small, so that 17 manifests at once do not shrink a lone download's.
   */
  notADownload(): void {
    if (this.counted) readers -= 1;
    this.counted = false;
    this.small = true;
  }

  /** The reader is done: its slab takes no more reads, and it takes no other. */
  release(): void {
    if (this.closed) return;
    if (this.counted) readers -= 1;
    this.closed = true;
    if (this.current) this.retire(this.current);
    this.current = undefined;
    ownHeld -= this.own.length;
    for (const buffer of this.own.splice(0)) if (spares.length < SPARES) spares.push(buffer);
  }

  private retire(slab: Slab): void {
    slab.retired = true;
    if (slab.lent === 0) this.reuse(slab);
  }

  private reuse(slab: Slab): void {
    this.slabs.delete(slab.buffer.buffer);
    // In a crowd, each reader keeps one of its own past OWN_TOTAL: with 80 downloads at once, those
    // that could keep none allocated a fresh slab for every 128 KiB read (46 MiB of them alive, most
    // of it garbage, at the peak).
    if (!this.closed && this.own.length < OWN_SPARES && (ownHeld < OWN_TOTAL || (readers > CROWD && this.own.length === 0))) {
      this.own.push(slab.buffer);
      ownHeld += 1;
    } else if (spares.length < SPARES) spares.push(slab.buffer);
  }
}
