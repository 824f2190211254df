import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import type { Digest } from '../src/digest.js';

/** Digest of bytes, computed here rather than through the code under test. */
export function sha256(bytes: Buffer | string): Digest {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export function sha512(bytes: Buffer | string): Digest {
  return `sha512:${createHash('sha512').update(bytes).digest('hex')}`;
}

/** A stream that yields `chunks` one at a time (so hashing sees several writes). */
export function streamOf(...chunks: (Buffer | string)[]): Readable {
  return Readable.from(chunks.map((c) => (typeof c === 'string' ? Buffer.from(c) : c)));
}

/** Like streamOf, with a pause (a few event-loop turns) before each chunk, as bytes from a network arrive. */
export function streamOfSlowly(...chunks: (Buffer | string)[]): Readable {
  return Readable.from(
    (async function* () {
      for (const c of chunks) {
        for (let i = 0; i < 3; i++) await tick();
        yield typeof c === 'string' ? Buffer.from(c) : c;
      }
    })(),
  );
}

/** A stream that yields `before`, then fails like a dropped connection. */
export function failingStream(before: Buffer, message = 'connection reset'): Readable {
  return Readable.from(
    (async function* () {
      yield before;
      await tick();
      throw new Error(message);
    })(),
  );
}

export async function readAll(stream: Readable | undefined): Promise<Buffer> {
  if (!stream) throw new Error('expected a stream, got undefined');
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}

/** Deterministic pseudo-random bytes (distinct per seed), cheap enough for megabytes. */
export function bytesOf(size: number, seed = 1): Buffer {
  const out = Buffer.alloc(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

export interface TestDescriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  [key: string]: unknown;
}

/** A descriptor of `content` (the digest and size are computed here). */
export function descriptorOf(content: Buffer | string, mediaType: string, extra: Record<string, unknown> = {}): TestDescriptor {
  const bytes = typeof content === 'string' ? Buffer.from(content) : content;
  return { mediaType, digest: sha256(bytes), size: bytes.length, ...extra };
}

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const OCI_EMPTY = 'application/vnd.oci.empty.v1+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';
export const DOCKER_LAYER = 'application/vnd.docker.image.rootfs.diff.tar.gzip';
export const DOCKER_FOREIGN_LAYER = 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip';

/** The OCI empty descriptor's content, `{}`. */
export const EMPTY_JSON = Buffer.from('{}');

export function ociManifestBytes(config: TestDescriptor, layers: TestDescriptor[], extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers, ...extra }));
}

export function ociIndexBytes(manifests: TestDescriptor[], extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests, ...extra }));
}
