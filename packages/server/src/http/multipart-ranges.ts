import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { SERVER_WAIT, type ByteRange } from '@wharf/registry-core';

/**
 * Several ranges of a blob in one `multipart/byteranges` answer (RFC 9110 14.6). containers/image
 * (podman, buildah, skopeo, CRI-O) fetches the chunks of a zstd:chunked or eStargz layer it lacks so,
 * up to 1024 ranges in one GET; a whole blob instead costs it the download the format saves.
 *
 * `planMultipart` says to send the whole blob instead for a set out of order or overlapping (that client sends
 * neither), for one asking for every byte, and for one of more than MAX_PARTS ranges (as nginx's
 * `max_ranges` and Apache's `MaxRanges` bound them: each part costs a head and a read).
 */
export const MAX_PARTS = 1024;

/** Where a body's bytes come from: each part read on its own, or one read of the span they cover. */
export type PartSource =
  /** A stored file: each part is opened as its own range (no byte between them is read). */
  | { readonly kind: 'parts'; open(range: ByteRange): Promise<Readable | undefined> }
  /** A download that may still be running (the proxy's): one reader from the first part's start to the last's end. */
  | { readonly kind: 'span'; readonly stream: Readable };

export interface MultipartPlan {
  readonly contentType: string;
  /** The whole body's length. */
  readonly length: number;
  /** From the first part's start to the last part's end: what a `span` source reads. */
  readonly span: ByteRange;
  body(source: PartSource): Readable;
}

export function planMultipart(ranges: readonly ByteRange[], size: number, partType = 'application/octet-stream'): MultipartPlan | undefined {
  if (ranges.length > MAX_PARTS) return undefined;
  const boundary = randomBytes(16).toString('hex');
  // As Go's mime/multipart writes it (distribution's answer): no CRLF before the first boundary.
  const head = (i: number): string => `${i === 0 ? '' : '\r\n'}--${boundary}\r\nContent-Type: ${partType}\r\nContent-Range: bytes ${ranges[i]!.start}-${ranges[i]!.end}/${size}\r\n\r\n`;
  const tail = `\r\n--${boundary}--\r\n`;
  let length = tail.length;
  let bytes = 0;
  for (let i = 0; i < ranges.length; i++) {
    if (i > 0 && ranges[i]!.start <= ranges[i - 1]!.end) return undefined;
    bytes += ranges[i]!.end - ranges[i]!.start + 1;
    length += head(i).length; // ASCII: characters are bytes
  }
  if (bytes >= size) return undefined;
  const span = { start: ranges[0]!.start, end: ranges[ranges.length - 1]!.end };
  return {
    contentType: `multipart/byteranges; boundary=${boundary}`,
    length: length + bytes,
    span,
    body(source) {
      // The heads are made as the parts go out, not all kept for the whole answer.
      const parts = source.kind === 'parts' ? eachPart(source, ranges, head, tail) : fromSpan(source.stream, span.start, ranges, head, tail);
      const out = Readable.from(parts, { objectMode: false });
      if (source.kind === 'span') {
        // The span's reader says when it waits for the download (its last byte waits for the whole
        // blob's digest): the sender then holds the connection's idle timeout (send-stream.ts).
        source.stream.on(SERVER_WAIT, (waiting: boolean) => out.emit(SERVER_WAIT, waiting));
        // A client gone while the reader waits for the download lets go of it at once, not when the
        // generator's pending read returns.
        out.once('close', () => source.stream.destroy());
      }
      return out;
    },
  };
}

async function* eachPart(source: Extract<PartSource, { kind: 'parts' }>, ranges: readonly ByteRange[], head: (i: number) => string, tail: string): AsyncGenerator<Buffer> {
  for (let i = 0; i < ranges.length; i++) {
    yield Buffer.from(head(i), 'latin1');
    const part = await source.open(ranges[i]!);
    if (!part) throw new Error('the blob is gone');
    let sent = 0;
    for await (const chunk of part as AsyncIterable<Buffer>) {
      sent += chunk.length;
      yield chunk;
    }
    if (sent !== ranges[i]!.end - ranges[i]!.start + 1) throw new Error(`a part of the blob ended after ${sent} bytes`);
  }
  yield Buffer.from(tail, 'latin1');
}

/** The parts, cut from `source` (the blob from `position` on); a source that ends short fails the body. */
async function* fromSpan(source: Readable, position: number, ranges: readonly ByteRange[], head: (i: number) => string, tail: string): AsyncGenerator<Buffer> {
  let i = 0;
  yield Buffer.from(head(0), 'latin1');
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
        yield Buffer.from(i < ranges.length ? head(i) : tail, 'latin1');
      }
    }
    position += chunk.length;
    if (i === ranges.length) break;
  }
  if (i < ranges.length) throw new Error(`the blob ended at byte ${position}, before the ranges asked for`);
}
