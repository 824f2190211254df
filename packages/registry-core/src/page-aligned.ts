import { processLimit } from './process-limits.js';

/** The part of the WebAssembly global used here (the ES2023 and Node typings of this build lack it). */
declare const WebAssembly: { Memory: new (descriptor: { initial: number; maximum: number }) => { readonly buffer: ArrayBuffer } };

/** Bytes per WebAssembly page: a memory is a whole number of them. */
const WASM_PAGE = 64 * 1024;
/**
 * Memories alive at most. Each reserves about 10 GiB of address space (V8's guard regions), not of
 * memory: 512 of them are 5 TiB of the 128 TiB a process has. Past this, plain buffers.
 */
const MAX_LIVE = 512;

/**
 * Whether the process may take memories at all: not under a limit of its address space (`ulimit -v`),
 * where each one's 10 GiB of reservation would leave the rest of the process (V8's heap, undici's
 * WebAssembly parser, the fills' O_DIRECT blocks) without room. Read at the first buffer asked for.
 */
let addressSpaceUnlimited: boolean | undefined;

let live = 0;
/** `live` when making a memory last failed (no WebAssembly, `ulimit -v`): none is tried again until fewer live. */
let failedAt: number | undefined;
const collected = new FinalizationRegistry<undefined>(() => {
  live -= 1;
  if (failedAt !== undefined && live < failedAt) failedAt = undefined;
});

/**
 * A buffer of `size` bytes whose first byte is on a page boundary, for the buffers that reads from
 * files and sockets land in again and again (reused: making one costs about 20 µs).
 *
 * The kernel's copy into user memory (`copy_to_user`, the CPU's `rep movsb`) runs about five times
 * slower when the destination sits 1 to 31 bytes past the source modulo 4 KiB (measured on these AMD
 * EPYC machines, reading a page-cached file: 0.40 CPU s per GiB against 0.07-0.09 at any other
 * distance). glibc puts the first byte of a large allocation (`Buffer.allocUnsafeSlow`) 16 bytes past a
 * page boundary, so every read of a file at a page-aligned offset landed in that band: a warm proxy
 * pull or a local pull spent more than half its CPU in that one copy. Node cannot align a Buffer, but
 * a WebAssembly memory starts on a page boundary (V8 maps it on its own). Socket reads gain as well:
 * a cold pull's reads into such buffers ran at 2.1-2.3 CPU s per GiB where half the runs took 3.5-4.8.
 *
 * Memory past MAX_LIVE, under a limit of the address space, or when WebAssembly memories cannot be
 * had, is a plain buffer.
 */
export function pageAligned(size: number): Buffer {
  addressSpaceUnlimited ??= processLimit('Max address space') === undefined;
  if (size > 0 && addressSpaceUnlimited && live < MAX_LIVE && (failedAt === undefined || live < failedAt)) {
    const pages = Math.ceil(size / WASM_PAGE);
    try {
      const memory = new WebAssembly.Memory({ initial: pages, maximum: pages }).buffer;
      live += 1;
      collected.register(memory, undefined);
      return Buffer.from(memory, 0, size);
    } catch {
      failedAt = live;
    }
  }
  return Buffer.allocUnsafeSlow(size);
}

/** Page-aligned buffers alive now (for tests). */
export function pageAlignedLive(): number {
  return live;
}
