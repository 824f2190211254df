import { exposedGc } from '@wharf/registry-core';

/**
 * Runs V8's full garbage collection soon, outside the caller's stack. For the rare moment the server
 * knows that megabytes of buffers have just become garbage: V8 would otherwise keep them in the RSS
 * until its old generation doubles, which a manifest-only load takes long to do. A few milliseconds,
 * at most once per idle spell.
 */
export function fullGcSoon(): void {
  const gc = exposedGc();
  if (gc) setTimeout(() => gc(), 0).unref();
}
