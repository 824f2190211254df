import { RegistryError, type ByteRange, type ChunkPosition } from '@wharf/registry-core';

/**
 * Parses a request `Range` header against a blob of `size` bytes (RFC 9110 14.1.2): one or more of
 * `a-b`, `a-`, `-n` after `bytes=`, each clamped to the blob. undefined means "serve the whole blob"
 * (no header, another unit, a malformed set); 'unsatisfiable' (416) that no range of the set overlaps
 * the blob; otherwise the satisfiable ranges, in the order asked.
 */
export function parseRanges(header: string | undefined, size: number): ByteRange[] | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^\s*bytes\s*=(.*)$/i.exec(header);
  if (!m) return undefined;
  const ranges: ByteRange[] = [];
  let specs = 0;
  for (const raw of m[1]!.split(',')) {
    const spec = raw.trim();
    if (spec === '') continue; // RFC 9110 5.6.1: empty list elements are ignored
    specs += 1;
    const r = /^(\d*)-(\d*)$/.exec(spec);
    if (!r || (r[1] === '' && r[2] === '')) return undefined;
    if (r[1] === '') {
      const suffix = Number(r[2]);
      if (suffix > 0 && size > 0) ranges.push({ start: Math.max(0, size - suffix), end: size - 1 });
      continue;
    }
    const start = Number(r[1]);
    // An end before its start makes the set invalid; answered 416, as Go's net/http (distribution) does.
    if (r[2] !== '' && Number(r[2]) < start) return 'unsatisfiable';
    if (start < size) ranges.push({ start, end: r[2] === '' ? size - 1 : Math.min(Number(r[2]), size - 1) });
  }
  if (specs === 0) return undefined;
  return ranges.length > 0 ? ranges : 'unsatisfiable';
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
