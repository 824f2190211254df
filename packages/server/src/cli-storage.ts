import { createReadStream } from 'node:fs';
import { access } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { RegistryError, type FsckFinding } from '@wharf/registry-core';
import { writeFileWhole } from './cli-output.js';
import { counted, formatBytes, ProgressBar } from './cli-progress.js';
import { UsageError } from './config-error.js';
import { loadConfig } from './config.js';
import { parseDuration } from './duration.js';
import { openStorage, type StorageMaintenance } from './storage-maintenance.js';

interface ConfigOption {
  readonly config: string;
}

/** Opens the configuration's stores, runs `work`, closes the database. */
async function withStorage<T>(file: string, work: (storage: StorageMaintenance) => Promise<T>): Promise<T> {
  const opened = await openStorage(loadConfig({ file, secrets: false }));
  try {
    return await work(opened.storage);
  } finally {
    await opened.close();
  }
}

/** SIGINT/SIGTERM stop a long run between two steps (nothing is left half-done: each step is a transaction). */
function interruptible(): { signal: AbortSignal; done(): void } {
  const controller = new AbortController();
  const stop = () => controller.abort(new Error('interrupted'));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return {
    signal: controller.signal,
    done() {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    },
  };
}

function durationOption(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const ms = /^\d+$/.test(value) ? Number(value) * 1000 : parseDuration(value);
  if (ms === undefined) throw new UsageError(`${name} must be a duration such as "1h", "30m" or "0" (got "${value}")`);
  return ms;
}

/** A RegistryError's detail for people: ` (ref: x:1, digest: sha256:…)`, JSON only for what is no plain value. */
function detailText(detail: unknown): string {
  if (detail === undefined || detail === null) return '';
  if (typeof detail !== 'object' || Array.isArray(detail)) return ` (${JSON.stringify(detail)})`;
  const parts = Object.entries(detail).map(([key, value]) => `${key}: ${typeof value === 'string' || typeof value === 'number' ? value : JSON.stringify(value)}`);
  return parts.length > 0 ? ` (${parts.join(', ')})` : '';
}

function findingLine(f: FsckFinding): string {
  const prefix = f.severity === 'notice' ? 'notice' : f.repaired ? 'repaired' : 'error';
  return `${prefix}: ${f.message}\n`;
}

/**
 * `wharf gc`, `wharf fsck`, `wharf import` and `wharf export`. Each opens the configuration's database
 * and folders directly, so it works while the server runs (WAL; the server's manifest cache may serve a
 * manifest gc deleted for up to two seconds).
 */
export function registerStorageCommands(program: Command, fail: (err: unknown) => never): void {
  /** Registry errors (a bad archive, an unknown image) are the user's to fix: one line, no stack. */
  const failClearly = (err: unknown): never => {
    if (err instanceof RegistryError) {
      process.stderr.write(`wharf: ${err.message}${detailText(err.detail)}\n`);
      process.exit(1);
    }
    return fail(err);
  };

  program
    .command('gc')
    .description('collect garbage: [[retention]] rules, then manifests, blob links, blobs and files nothing references, then the proxy cache')
    .option('-c, --config <file>', 'configuration file', 'configuration.toml')
    .option('--dry-run', 'list what would be deleted; delete nothing')
    .option('--delete-untagged', 'also delete untagged manifests that no tag, index or kept subject reaches (default: [gc] delete_untagged)')
    .option('--grace <duration>', 'keep links, blobs and files younger than this (default: [gc] grace)')
    .action(async (opts: ConfigOption & { dryRun?: boolean; deleteUntagged?: boolean; grace?: string }) => {
      const stop = interruptible();
      try {
        const grace = durationOption('--grace', opts.grace);
        await withStorage(opts.config, async (storage) => {
          const { gc, proxy } = await storage.gc({
            dryRun: opts.dryRun ?? false,
            ...(opts.deleteUntagged ? { deleteUntagged: true } : {}),
            ...(grace !== undefined ? { grace } : {}),
            signal: stop.signal,
          });
          const would = gc.dryRun ? 'would ' : '';
          const out: string[] = [];
          for (const t of gc.tags) out.push(`${would}remove tag ${t.repo}:${t.tag} (${t.reason})`);
          for (const m of gc.manifests) out.push(`${would}delete manifest ${m.repo}@${m.digest}`);
          if (gc.dryRun) for (const b of gc.blobs) out.push(`would delete blob ${b.digest} (${formatBytes(b.size)})`);
          for (const e of gc.errors) out.push(`error: ${e}`);
          const freed = gc.bytes + gc.orphans.bytes;
          out.push(
            `gc${gc.dryRun ? ' --dry-run' : ''}: ${counted(gc.tags.length, 'tag')} (retention), ${counted(gc.manifests.length, 'manifest')}, ${counted(gc.links, 'blob link')}, ` +
              `${counted(gc.blobs.length, 'blob')} and ${counted(gc.orphans.files, 'orphan file')} ${gc.dryRun ? 'would go' : 'deleted'}: ${formatBytes(freed)} ${gc.dryRun ? 'to free' : 'freed'}` +
              (proxy ? `; proxy cache: ${counted(proxy.manifests, 'manifest')}, ${counted(proxy.blobs, 'blob')}, ${formatBytes(proxy.bytes)} evicted` : '') +
              ` (${(gc.durationMs / 1000).toFixed(1)} s)`,
          );
          process.stdout.write(`${out.join('\n')}\n`);
          if (gc.errors.length > 0) process.exitCode = 1;
        });
      } catch (err) {
        failClearly(err);
      } finally {
        stop.done();
      }
    });

  program
    .command('fsck')
    .description('check every blob file against its digest, metadata against files, manifests against their blobs; report unfinished uploads')
    .option('-c, --config <file>', 'configuration file', 'configuration.toml')
    .option('--repair', 'remove corrupt and orphan files, drop rows of missing files, mark manifests that reference missing content')
    .action(async (opts: ConfigOption & { repair?: boolean }) => {
      const stop = interruptible();
      try {
        await withStorage(opts.config, async (storage) => {
          const bar = new ProgressBar('fsck');
          const report = await storage.fsck({
            repair: opts.repair ?? false,
            signal: stop.signal,
            onProgress: (p) => bar.update(p.bytes, p.totalBytes, `${p.files}/${p.totalFiles} files, ${formatBytes(p.bytes)}/${formatBytes(p.totalBytes)}`),
            onFinding: (f) => {
              bar.clear();
              process.stdout.write(findingLine(f));
            },
          });
          bar.clear();
          const notices = report.findings.filter((f) => f.severity === 'notice').length;
          process.stdout.write(
            `fsck: ${counted(report.files, 'file')} (${formatBytes(report.bytes)}) checked: ${counted(report.problems, 'problem')}${opts.repair ? ` remaining, ${report.repaired} repaired` : ''}, ${counted(notices, 'notice')}\n`,
          );
          process.exitCode = report.problems > 0 ? 1 : 0;
        });
      } catch (err) {
        failClearly(err);
      } finally {
        stop.done();
      }
    });

  program
    .command('import')
    .description('import a docker save or OCI image layout tarball (gzip or not); tags as named in it unless --repository/--tag')
    .argument('<file>', 'the tarball; - reads standard input')
    .option('-c, --config <file>', 'configuration file', 'configuration.toml')
    .option('--repository <name>', 'store the images in this repository')
    .option('--tag <tag>', 'tag the image (an archive of one image; needs --repository)')
    .action(async (file: string, opts: ConfigOption & { repository?: string; tag?: string }) => {
      try {
        // A slip in the command line, told as one (exit 2) before the archive or the storage is opened.
        if (opts.tag !== undefined && opts.repository === undefined) throw new UsageError('--tag needs --repository: the repository the tagged image goes to');
        if (file !== '-') {
          await access(file).catch((err: Error) => {
            throw new UsageError(`cannot read ${file}: ${err.message}`);
          });
        }
        await withStorage(opts.config, async (storage) => {
          const source = file === '-' ? process.stdin : createReadStream(file);
          const result = await storage.importArchive(source, {
            ...(opts.repository !== undefined ? { repository: opts.repository } : {}),
            ...(opts.tag !== undefined ? { tag: opts.tag } : {}),
          });
          const lines = result.images.map(
            (i) => `imported ${i.repository}${i.tags.length ? `:${i.tags.join(',')}` : ''} ${i.digest}`,
          );
          lines.push(`${result.format}: ${counted(result.images.length, 'image')}, ${counted(result.blobs, 'blob')} stored (${formatBytes(result.bytes)})`);
          process.stdout.write(`${lines.join('\n')}\n`);
        });
      } catch (err) {
        failClearly(err);
      }
    });

  program
    .command('export')
    .description('write images (every platform of an index) as an OCI image layout tarball for docker load, podman load, skopeo oci-archive:')
    .argument('<refs...>', 'images: alice/app:1, alice/app@sha256:…')
    .option('-c, --config <file>', 'configuration file', 'configuration.toml')
    .option('-o, --output <file>', 'write here instead of standard output')
    .action(async (refs: string[], opts: ConfigOption & { output?: string }) => {
      try {
        if (opts.output === undefined && process.stdout.isTTY) {
          throw new UsageError('a tarball would go to the terminal: redirect standard output (> out.tar) or give --output FILE');
        }
        await withStorage(opts.config, async (storage) => {
          const { plan, stream } = await storage.exportArchive(refs);
          if (opts.output !== undefined) await writeFileWhole(opts.output, stream);
          else await pipeline(stream, process.stdout);
          let bytes = 0;
          for (const b of plan.blobs.values()) bytes += b.size;
          for (const i of plan.images) {
            if (i.convertedFrom) {
              process.stderr.write(`note: ${i.ref} is a Docker manifest (${i.convertedFrom}); written as OCI ${i.manifest.digest}, config and layers unchanged\n`);
            }
          }
          process.stderr.write(
            `exported ${plan.images.map((i) => i.ref).join(', ')}: ${counted(plan.manifests.size, 'manifest')}, ${counted(plan.blobs.size, 'blob')} (${formatBytes(bytes)})\n`,
          );
        });
      } catch (err) {
        failClearly(err);
      }
    });
}
