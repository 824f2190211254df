import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

/**
 * Test images built offline, byte for byte reproducible: a hand-written ustar archive, gzip with no
 * name and mtime 0, a config whose rootfs.diff_ids are the digests of the uncompressed tars, and an
 * OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) that skopeo, podman and ctr read.
 */

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';

export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
}

export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
}

export interface LayoutImage {
  /** The manifest's descriptor (its digest is the sha256 of the manifest bytes). */
  readonly manifest: Descriptor;
  readonly config: Descriptor;
  readonly layers: readonly Descriptor[];
  readonly platform: Platform;
}

export interface LayoutIndex {
  readonly index: Descriptor;
  readonly images: readonly LayoutImage[];
}

export interface OciLayout {
  /** The layout folder (lower case, as podman wants). */
  readonly dir: string;
  /** `oci:<dir>:single`: one linux/amd64 image with two layers. */
  readonly single: LayoutImage & { readonly ref: 'single' };
  /** `oci:<dir>:multi`: an image index of linux/amd64 and linux/arm64/v8, each with its own layer. */
  readonly multi: LayoutIndex & { readonly ref: 'multi' };
}

export function sha256(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** Deterministic incompressible bytes, so that layers have some weight after gzip. */
export function noise(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  let block = createHash('sha256').update(seed).digest();
  for (let at = 0; at < size; at += block.length) {
    block.copy(out, at, 0, Math.min(block.length, size - at));
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

interface TarEntry {
  readonly path: string;
  /** undefined → a directory. */
  readonly content?: Buffer;
}

function tarHeader(entry: TarEntry): Buffer {
  const header = Buffer.alloc(512);
  const isDir = entry.content === undefined;
  const name = isDir ? `${entry.path.replace(/\/$/, '')}/` : entry.path;
  if (Buffer.byteLength(name) > 100) throw new Error(`tar path too long for this writer: ${name}`);
  const octal = (value: number, width: number) => value.toString(8).padStart(width - 1, '0') + '\0';
  header.write(name, 0, 100, 'utf8');
  header.write(octal(isDir ? 0o755 : 0o644, 8), 100, 8, 'ascii');
  header.write(octal(0, 8), 108, 8, 'ascii'); // uid
  header.write(octal(0, 8), 116, 8, 'ascii'); // gid
  header.write(octal(entry.content?.length ?? 0, 12), 124, 12, 'ascii');
  header.write(octal(0, 12), 136, 12, 'ascii'); // mtime: the epoch
  header.write('        ', 148, 8, 'ascii'); // checksum placeholder: spaces
  header.write(isDir ? '5' : '0', 156, 1, 'ascii');
  header.write('ustar\0', 257, 6, 'ascii');
  header.write('00', 263, 2, 'ascii');
  header.write('root', 265, 32, 'ascii');
  header.write('root', 297, 32, 'ascii');
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  return header;
}

/** A ustar archive of the entries in the given order (callers pass them sorted, parents first). */
export function tar(entries: readonly TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    parts.push(tarHeader(entry));
    if (entry.content) {
      parts.push(entry.content);
      const pad = (512 - (entry.content.length % 512)) % 512;
      if (pad) parts.push(Buffer.alloc(pad));
    }
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

class LayoutWriter {
  constructor(readonly dir: string) {}

  async blob(bytes: Buffer, mediaType: string): Promise<Descriptor> {
    const digest = sha256(bytes);
    await writeFile(join(this.dir, 'blobs', 'sha256', digest.slice('sha256:'.length)), bytes);
    return { mediaType, digest, size: bytes.length };
  }

  /**
   * Written with an unusual indent and a trailing newline: a registry that re-serializes JSON instead
   * of serving the stored bytes changes the digest, and the byte-for-byte checks catch it.
   */
  async json(doc: unknown, mediaType: string): Promise<Descriptor> {
    return this.blob(Buffer.from(`${JSON.stringify(doc, null, 3)}\n`), mediaType);
  }

  /** One image: each entry list becomes one gzip layer. */
  async image(platform: Platform, layerFiles: readonly (readonly TarEntry[])[], label: string): Promise<LayoutImage> {
    const layers: Descriptor[] = [];
    const diffIds: string[] = [];
    for (const files of layerFiles) {
      const raw = tar(files);
      diffIds.push(sha256(raw));
      layers.push(await this.blob(gzipSync(raw, { level: 6 }), OCI_LAYER_GZIP));
    }
    const config = await this.json(
      {
        created: '1970-01-01T00:00:00Z',
        architecture: platform.architecture,
        os: platform.os,
        ...(platform.variant ? { variant: platform.variant } : {}),
        config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/true'], Labels: { 'wharf.test': label } },
        rootfs: { type: 'layers', diff_ids: diffIds },
        history: layers.map((_, i) => ({ created: '1970-01-01T00:00:00Z', created_by: `wharf test layer ${i + 1} of ${label}` })),
      },
      OCI_CONFIG,
    );
    const manifest = await this.json(
      {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config,
        layers,
        annotations: { 'org.opencontainers.image.title': label },
      },
      OCI_MANIFEST,
    );
    return { manifest, config, layers, platform };
  }
}

/** Builds the test layout in `dir` (which must exist and be empty) without any tool or network. */
export async function buildOciLayout(dir: string): Promise<OciLayout> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  const w = new LayoutWriter(dir);
  const file = (path: string, content: string | Buffer): TarEntry => ({ path, content: Buffer.isBuffer(content) ? content : Buffer.from(content) });

  const single = await w.image(
    { os: 'linux', architecture: 'amd64' },
    [
      [{ path: 'etc' }, file('etc/wharf-release', 'single 1\n'), { path: 'opt' }, file('opt/data.bin', noise('single data', 2 * 1024 * 1024))],
      [{ path: 'etc' }, file('etc/wharf-second', 'second layer\n')],
    ],
    'single',
  );
  const images: LayoutImage[] = [];
  const platforms: Platform[] = [
    { os: 'linux', architecture: 'amd64' },
    { os: 'linux', architecture: 'arm64', variant: 'v8' },
  ];
  for (const platform of platforms) {
    const arch = platform.architecture + (platform.variant ? `/${platform.variant}` : '');
    images.push(
      await w.image(platform, [[{ path: 'etc' }, file('etc/wharf-arch', `${arch}\n`), file('etc/wharf-noise', noise(arch, 64 * 1024))]], `multi ${arch}`),
    );
  }
  const index = await w.json(
    {
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: images.map((img) => ({ ...img.manifest, platform: img.platform })),
    },
    OCI_INDEX,
  );
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        { ...single.manifest, annotations: { 'org.opencontainers.image.ref.name': 'single' } },
        { ...index, annotations: { 'org.opencontainers.image.ref.name': 'multi' } },
      ],
    }),
  );
  return { dir, single: { ...single, ref: 'single' }, multi: { index, images, ref: 'multi' } };
}

/** A blob of a layout (one written by us or by `skopeo copy ... oci:`), or undefined when absent. */
export async function readLayoutBlob(dir: string, digest: string): Promise<Buffer | undefined> {
  const [algorithm, hex] = digest.split(':');
  try {
    return await readFile(join(dir, 'blobs', algorithm!, hex!));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** The descriptor that `index.json` of a layout names `ref`. */
export async function layoutRef(dir: string, ref: string): Promise<Descriptor> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as {
    manifests: (Descriptor & { annotations?: Record<string, string> })[];
  };
  const found = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === ref);
  if (!found) throw new Error(`no "${ref}" in ${dir}/index.json`);
  return found;
}
