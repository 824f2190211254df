import { setFlagsFromString } from 'node:v8';

let applied = false;

/**
 * Keeps WebAssembly on V8's baseline compiler (Liftoff). undici parses HTTP with llhttp compiled to
 * WebAssembly; once the parser turned hot (the first large download) V8 recompiled it with TurboFan
 * on a background thread, which took about 30 MiB of compiler memory for a quarter of a second and
 * 0.1-0.2 s of CPU, in the middle of the first cold pull of every process. The parser only reads
 * response heads and counts body bytes through, so the baseline code does the same work as fast
 * (measured on cold 256 MiB pulls: same time, 0.51-0.54 instead of 0.64-0.76 CPU s, peak RSS
 * 98-103 instead of 127-132 MiB). Call it before undici compiles its parser; it affects
 * WebAssembly only.
 */
export function keepWasmOnBaseline(): void {
  if (applied) return;
  applied = true;
  setFlagsFromString('--liftoff-only');
}
