import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { ByteRange } from '@wharf/registry-core';

/**
 * Several ranges of a blob in one `multipart/byteranges` answer (RFC 9110 14.6). containers/image
 * (podman, buildah, skopeo, CRI-O) fetches the chunks of a zstd:chunked or eStargz layer it lacks so,
 * up to 1024 ranges in one GET; a whole blob instead costs it the download the format saves.
 *
 * The parts are cut from one read of the blob, from the first range's start to the last range's end,
 * so ranges must come in ascending order without overlap (what that client sends); for any other set,
 * and for a set that asks for more bytes than the blob holds, `plan` says to send the whole blob.
 */
export interface MultipartPlan {
  readonly contentType: string;
  /** The whole body's length. */
  readonly length: number;
  /** The one range of the blob to read: from the first part's start to the last part's end. */
  readonly span: ByteRange;
  /** The body, from a stream of `span`. */
  body(span: Readable): Readable;
}

export function planMultipart(ranges: readonly ByteRange[], size: number, partType = 'application/octet-stream'): MultipartPlan | undefined {
  let bytes = 0;
  for (let i = 0; i < ranges.length; i++) {
    if (i > 0 && ranges[i]!.start <= ranges[i - 1]!.end) return undefined;
    bytes += ranges[i]!.end - ranges[i]!.start + 1;
  }
  if (bytes >= size) return undefined;
  const boundary = randomBytes(16).toString('hex');
  // As Go's mime/multipart writes it (distribution's answer): no CRLF before the first boundary.
  const heads = ranges.map((r, i) => Buffer.from(`${i === 0 ? '' : '\r\n'}--${boundary}\r\nContent-Type: ${partType}\r\nContent-Range: bytes ${r.start}-${r.end}/${size}\r\n\r\n`));
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  const length = heads.reduce((sum, h) => sum + h.length, 0) + bytes + tail.length;
  const span = { start: ranges[0]!.start, end: ranges[ranges.length - 1]!.end };
  return {
    contentType: `multipart/byteranges; boundary=${boundary}`,
    length,
    span,
    body: (source) => Readable.from(parts(source, span.start, ranges, heads, tail), { objectMode: false }),
  };
}

/** The parts, cut from `source` (the blob from `position` on); a source that ends short fails the body. */
async function* parts(source: Readable, position: number, ranges: readonly ByteRange[], heads: readonly Buffer[], tail: Buffer): AsyncGenerator<Buffer> {
  let i = 0;
  yield heads[0]!;
  for await (const chunk of source as AsyncIterable<Buffer>) {
    let offset = 0;
    while (offset < chunk.length && i < ranges.length) {
      const range = ranges[i]!;
      const at = position + offset;
      if (at < range.start) {
        offset += Math.min(chunk.length - offset, range.start - at);
        continue;
      }
      const take = Math.min(chunk.length - offset, range.end + 1 - at);
      yield chunk.subarray(offset, offset + take);
      offset += take;
      if (at + take > range.end) {
        i += 1;
        yield i < ranges.length ? heads[i]! : tail;
      }
    }
    position += chunk.length;
    if (i === ranges.length) break;
  }
  if (i < ranges.length) throw new Error(`the blob ended at byte ${position}, before the ranges asked for`);
}
