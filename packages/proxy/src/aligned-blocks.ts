import { fullGcSoon } from '@wharf/registry-core';

/** Bytes per block: a fill's bytes sit in blocks at file offsets that are multiples of this. */
export const BLOCK_SIZE = 1024 * 1024;
/** Blocks of one memory, for all fills together. */
const BLOCKS_PER_MEMORY = 32;
/** An idle pool lets its memory go after this long, so that a finished fill's blocks stop counting in RSS. */
const IDLE_MS = 1000;

/** The part of the WebAssembly global used here (the ES2023 and Node typings of this build lack it). */
declare const WebAssembly: { Memory: new (descriptor: { initial: number; maximum: number }) => { readonly buffer: ArrayBuffer } };

/**
 * Page-aligned blocks of memory, as writes with O_DIRECT need them. Node cannot align a Buffer, but a
 * WebAssembly memory starts on a page boundary (V8 maps it on its own), so the blocks are carved from
 * one. Blocks come back with `give`; once every block of a memory is back and nothing was taken for
 * IDLE_MS, the memory is dropped (its pages stop counting in RSS when it is collected), and the next
 * `take` makes a new one. `take` answers undefined when every block is out: the caller uses plain
 * memory and writes through the page cache.
 */
export class AlignedBlocks {
  private memory: ArrayBuffer | undefined;
  private free: Buffer[] = [];
  private out = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private unavailable = false;

  constructor(private readonly blocks = BLOCKS_PER_MEMORY) {}

  take(): Buffer | undefined {
    if (this.idleTimer) {
      clearTimeout(this.idleTimer);
      this.idleTimer = undefined;
    }
    if (!this.memory) {
      if (this.unavailable) return undefined;
      const pages = (this.blocks * BLOCK_SIZE) / 65536;
      let memory: ArrayBuffer;
      try {
        memory = new WebAssembly.Memory({ initial: pages, maximum: pages }).buffer;
      } catch {
        // No WebAssembly (node --jitless) or no address space for it (ulimit -v): plain memory it is.
        this.unavailable = true;
        return undefined;
      }
      this.memory = memory;
      this.free = [];
      for (let i = this.blocks - 1; i >= 0; i--) this.free.push(Buffer.from(memory, i * BLOCK_SIZE, BLOCK_SIZE));
    }
    const block = this.free.pop();
    if (block) this.out += 1;
    return block;
  }

  /** `block` (from `take`) is no longer read or written by anyone. */
  give(block: Buffer): void {
    if (block.buffer !== this.memory) return; // from a memory already let go
    this.free.push(block);
    this.out -= 1;
    if (this.out === 0) {
      this.idleTimer = setTimeout(() => {
        this.idleTimer = undefined;
        if (this.out === 0) {
          this.memory = undefined;
          this.free = [];
          // Its pages count in the RSS until V8 collects it, which for an old object waits for the old
          // generation to grow: a server left idle after a 1 GiB cold pull kept 4-6 MiB more.
          fullGcSoon();
        }
      }, IDLE_MS);
      this.idleTimer.unref();
    }
  }

  /** Blocks taken and not given back (for tests). */
  get taken(): number {
    return this.out;
  }

  /** Blocks that `take` can still hand out. */
  get available(): number {
    return this.memory ? this.free.length : this.unavailable ? 0 : this.blocks;
  }
}
