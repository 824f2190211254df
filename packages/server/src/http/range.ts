import { RegistryError, type ByteRange, type ChunkPosition } from '@wharf/registry-core';

/**
 * Parses a request `Range` header against a blob of `size` bytes (RFC 9110): `bytes=a-b`, `bytes=a-`,
 * `bytes=-n`. undefined means "serve the whole blob" (no header, another unit, several ranges);
 * 'unsatisfiable' means 416.
 */
export function parseRange(header: string | undefined, size: number): ByteRange | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || (m[2] !== '' && Number(m[2]) < start)) return 'unsatisfiable';
  return { start, end };
}

/**
 * Parses an upload chunk's `Content-Range`: the spec's `<start>-<end>` (inclusive), and the
 * `bytes <start>-<end>/<total|*>` form some clients send.
 */
export function parseContentRange(header: string | undefined): ChunkPosition {
  if (header === undefined || header.trim() === '') return {};
  const m = /^(?:bytes[ =])?(\d+)-(\d+)(?:\/(?:\d+|\*))?$/.exec(header.trim());
  if (!m) throw new RegistryError('RANGE_INVALID', 'Content-Range must be <start>-<end>', { contentRange: header });
  const start = Number(m[1]);
  const end = Number(m[2]);
  // Past 2^53 a number is rounded: the range could never be the upload's, and its detail would lie.
  if (!Number.isSafeInteger(end)) throw new RegistryError('RANGE_INVALID', 'Content-Range is beyond any blob this server stores', { contentRange: header });
  if (end < start) throw new RegistryError('RANGE_INVALID', 'Content-Range end is before its start', { contentRange: header });
  return { start, end };
}

/** The `Range` header of an upload reply: `0-<last byte>`, and `0-0` while nothing was received (as distribution). */
export function uploadRange(size: number): string {
  return `0-${Math.max(0, size - 1)}`;
}
