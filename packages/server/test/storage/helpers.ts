import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { access, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { WHARF_CLI } from '../helpers/wharf-process.js';

/**
 * Storage lifecycle tests: the CLI (`node dist/cli.js gc|fsck|import|export`) on the storage of a
 * registry started by startRegistry (same folders, same database), and plain-HTTP push and pull with
 * sha256 checks.
 */

export function sha256(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** A configuration.toml naming the folders startRegistry({ root }) uses, for the CLI. */
export async function storageConfig(root: string, extra: readonly string[] = [], port = 0): Promise<string> {
  const file = join(root, 'configuration.toml');
  await writeFile(
    file,
    [
      `listen = "127.0.0.1:${port}"`,
      `registry_storage = "${join(root, 'registry')}"`,
      `temporary_registry_storage = "${join(root, '_tmp')}"`,
      `proxy_storage = "${join(root, 'proxy')}"`,
      `database = "${join(root, 'wharf.db')}"`,
      'log_level = "silent"',
      '[proxy]',
      'enabled = false',
      '[auth]',
      'enabled = false',
      ...extra,
      '',
    ].join('\n'),
  );
  return file;
}

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: Buffer;
  readonly stderr: string;
  text(): string;
}

/** Runs the built `wharf` CLI; never throws on a non-zero exit (tests check the code). */
export async function wharf(args: readonly string[], options: { input?: Buffer; timeoutMs?: number } = {}): Promise<CliResult> {
  await access(WHARF_CLI).catch(() => {
    throw new Error(`${WHARF_CLI} is missing: run "pnpm build" in /work/main first`);
  });
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WHARF_CLI, ...args], { env: { ...process.env, NODE_OPTIONS: '' }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out);
      resolve({ code, signal, stdout, stderr: err, text: () => `${stdout.toString('utf8')}${err}` });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? Buffer.alloc(0));
  });
}

export interface PushedImage {
  readonly repo: string;
  readonly tag: string;
  readonly digest: string;
  readonly manifest: Buffer;
  /** Config and layers, with their content. */
  readonly blobs: readonly { readonly digest: string; readonly bytes: Buffer }[];
}

export async function pushBlob(url: string, repo: string, bytes: Buffer): Promise<string> {
  const digest = sha256(bytes);
  const res = await fetch(`${url}/v2/${repo}/blobs/uploads/?digest=${digest}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream' },
    body: bytes,
  });
  if (res.status !== 201) throw new Error(`push blob ${digest} to ${repo}: ${res.status} ${await res.text()}`);
  return digest;
}

/** Pushes layers and a config (monolithic uploads) and an OCI manifest under `tag`. */
export async function pushLayers(url: string, repo: string, tag: string, layers: readonly Buffer[], label = tag): Promise<PushedImage> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', label, nonce: randomBytes(8).toString('hex') }));
  const blobs: { digest: string; bytes: Buffer }[] = [{ digest: await pushBlob(url, repo, config), bytes: config }];
  for (const layer of layers) blobs.push({ digest: await pushBlob(url, repo, layer), bytes: layer });
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: blobs[0]!.digest, size: config.length },
      layers: blobs.slice(1).map((b) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: b.digest, size: b.bytes.length })),
    }),
  );
  const res = await fetch(`${url}/v2/${repo}/manifests/${tag}`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' },
    body: manifest,
  });
  if (res.status !== 201) throw new Error(`push manifest ${repo}:${tag}: ${res.status} ${await res.text()}`);
  return { repo, tag, digest: sha256(manifest), manifest, blobs };
}

/** Pulls an image by tag and checks the manifest digest and every blob's sha256; throws on any difference. */
export async function pullAndCheck(url: string, image: PushedImage): Promise<void> {
  const res = await fetch(`${url}/v2/${image.repo}/manifests/${image.tag}`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
  if (res.status !== 200) throw new Error(`pull ${image.repo}:${image.tag}: ${res.status} ${await res.text()}`);
  const bytes = Buffer.from(await res.arrayBuffer());
  if (sha256(bytes) !== image.digest) throw new Error(`pull ${image.repo}:${image.tag}: manifest ${sha256(bytes)}, pushed ${image.digest}`);
  for (const b of image.blobs) {
    const blob = await fetch(`${url}/v2/${image.repo}/blobs/${b.digest}`);
    const content = Buffer.from(await blob.arrayBuffer());
    if (blob.status !== 200 || sha256(content) !== b.digest) {
      throw new Error(`pull ${image.repo}:${image.tag}: blob ${b.digest} answered ${blob.status} with ${content.length} bytes hashing to ${sha256(content)}`);
    }
  }
}

/** Where the registry store keeps a blob's file (startRegistry's layout). */
export function blobFile(root: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return join(root, 'registry', 'blobs', 'sha256', hex.slice(0, 2), hex);
}

export async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** Pushes an image again exactly as it was (same blobs, same manifest bytes). */
export async function repush(url: string, image: PushedImage): Promise<void> {
  for (const b of image.blobs) await pushBlob(url, image.repo, b.bytes);
  const res = await fetch(`${url}/v2/${image.repo}/manifests/${image.tag}`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json' },
    body: image.manifest,
  });
  if (res.status !== 201) throw new Error(`push manifest ${image.repo}:${image.tag}: ${res.status} ${await res.text()}`);
}
