import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** V8's gc(): a full collection, or with `{ type: 'minor' }` the young generation only. */
export type Gc = (options?: { type?: 'minor' | 'major'; execution?: 'sync' | 'async' }) => void;

let gc: Gc | undefined;
let lookedUp = false;

/**
 * V8's gc(), exposed to a fresh context when the process was not started with --expose-gc (the flag
 * set at run time gives `gc` to new contexts only, so the main context's globals stay as they are).
 * Undefined where V8 refuses.
 */
export function exposedGc(): Gc | undefined {
  if (lookedUp) return gc;
  lookedUp = true;
  const own = (globalThis as { gc?: unknown }).gc;
  if (typeof own === 'function') return (gc = own as Gc);
  try {
    setFlagsFromString('--expose-gc');
    const exposed = runInNewContext('gc') as unknown;
    gc = typeof exposed === 'function' ? (exposed as Gc) : undefined;
  } catch {
    gc = undefined;
  }
  return gc;
}

/**
 * Runs V8's full garbage collection soon, outside the caller's stack. For the rare moment the process
 * knows that megabytes have just become garbage: V8 would otherwise keep them in the RSS until its old
 * generation doubles, which a manifest-only load takes long to do. A few milliseconds, at most once per
 * idle spell.
 */
export function fullGcSoon(): void {
  const collect = exposedGc();
  // Asked again before it ran (buffers let go by several sends at once): one collection does for all.
  if (!collect || gcPending) return;
  gcPending = true;
  setTimeout(() => {
    gcPending = false;
    collect();
  }, 0).unref();
}

let gcPending = false;
