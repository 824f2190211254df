import { createHash } from 'node:crypto';
import { Readable, Transform, pipeline } from 'node:stream';
import { SERVER_WAIT } from '@wharf/registry-core';

/**
 * An upstream's answer to a range request, cut (an error) as soon as it holds more bytes than the
 * range, or at its end if it held fewer: a client never gets a complete-looking 206 of another length.
 */
export function exactRange(body: Readable, length: number): Readable {
  let seen = 0;
  const check = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      if (seen > length) done(new Error(`upstream sent more than the ${length} bytes of the range`));
      else done(null, chunk);
    },
    flush(done) {
      done(seen === length ? null : new Error(`upstream sent ${seen} of the ${length} bytes of the range`));
    },
  });
  // Either side failing destroys the other; the error reaches whoever reads `check`.
  pipeline(body, check, () => undefined);
  return check;
}

/**
 * A range of a blob as the upstream answered it, passed on as it comes but for its last byte, which
 * goes once the same range of the verified blob (`verified()`: its bytes once the whole blob matched
 * its digest) hashes alike. An answer with wrong bytes is cut, never a complete-looking 206; one
 * with more or fewer bytes than the range is cut too (exactRange). The wait is announced
 * (SERVER_WAIT): it is the server's, not a client that stopped reading.
 */
export function checkedRange(body: Readable, length: number, verified: () => Promise<Readable | undefined>): Readable {
  const out: Readable = Readable.from(checked(), { objectMode: false, highWaterMark: 64 * 1024 });
  return out;

  async function* checked(): AsyncGenerator<Buffer> {
    const sent = createHash('sha256');
    let seen = 0;
    let last: Buffer | undefined;
    for await (const chunk of exactRange(body, length) as AsyncIterable<Buffer>) {
      seen += chunk.length;
      sent.update(chunk);
      if (seen < length) {
        yield chunk;
        continue;
      }
      // A copy: the chunk's memory (a slab the upstream connection reads into) is not held for the wait.
      last = Buffer.from(chunk.subarray(chunk.length - 1));
      if (chunk.length > 1) yield chunk.subarray(0, chunk.length - 1);
    }
    // exactRange ended the loop with an error unless the range's last byte came.
    if (!last) throw new Error(`upstream sent ${seen} of the ${length} bytes of the range`);
    out.emit(SERVER_WAIT, true);
    try {
      const reference = await verified();
      // A client gone meanwhile: the range is read and hashed again for no one otherwise.
      if (out.destroyed) {
        reference?.destroy();
        return;
      }
      if (!reference) throw new Error('the blob to check the range against is gone');
      const expected = createHash('sha256');
      for await (const chunk of reference as AsyncIterable<Buffer>) {
        if (out.destroyed) {
          reference.destroy();
          return;
        }
        expected.update(chunk);
      }
      if (!expected.digest().equals(sent.digest())) throw new Error('upstream sent a range whose bytes are not the blob\'s');
    } finally {
      out.emit(SERVER_WAIT, false);
    }
    yield last;
  }
}
