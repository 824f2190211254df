import { randomUUID } from 'node:crypto';
import { lstatSync } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ConfigError } from './config-error.js';
import type { WharfConfig } from './config.js';

type StorageKey = 'registry_storage' | 'temporary_registry_storage' | 'proxy_storage';

/**
 * The checks a start makes of its storage folders, shared by `wharf serve` (which makes the missing
 * ones, `create`) and `wharf config check` (which makes nothing: a folder that does not exist yet is
 * judged by the nearest folder above it, where the start would make it). Each must be writable by
 * this user, and the three must share one filesystem: blobs are written to the temporary folder and
 * renamed into place, and only a same-filesystem rename is atomic.
 */
export async function checkStorage(config: WharfConfig, create: boolean): Promise<void> {
  const folders: Record<StorageKey, string> = {
    registry_storage: config.registryStorage,
    temporary_registry_storage: config.temporaryRegistryStorage,
    proxy_storage: config.proxyStorage,
  };
  const devices = new Map<StorageKey, number>();
  for (const [key, folder] of Object.entries(folders) as [StorageKey, string][]) {
    let existing: string;
    try {
      // Folders Wharf makes are its user's alone: they hold private images. Existing ones keep their mode.
      if (create) await mkdir(folder, { recursive: true, mode: 0o700 });
      existing = create ? folder : nearestExisting(folder);
      const info = await stat(existing);
      if (!info.isDirectory()) throw new Error(`${existing} is not a folder`);
      devices.set(key, info.dev);
    } catch (err) {
      throw new ConfigError(`"${key}" (${folder}) is not a usable folder: ${(err as Error).message}`);
    }
    await probeWrite(key, folder, existing);
  }
  const tempDevice = devices.get('temporary_registry_storage');
  for (const key of ['registry_storage', 'proxy_storage'] as const) {
    if (devices.get(key) !== tempDevice) {
      throw new ConfigError(
        `"temporary_registry_storage" (${config.temporaryRegistryStorage}) must be on the same filesystem as "${key}" (${folders[key]}), so that finished blobs are moved into place atomically`,
      );
    }
  }
}

/** `path`, or the nearest folder above it that exists (a link counts, even one to nothing: the start would fail on it). */
function nearestExisting(path: string): string {
  let at = path;
  while (!isThere(at) && dirname(at) !== at) at = dirname(at);
  return at;
}

function isThere(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Refuses a storage folder this user cannot write (`in`: the folder, or the one above it the folder
 * would be made in): a root-owned bind mount under a server that runs as another user passed the
 * start and /ready, then failed every push with a bare 500 and downloaded every proxied blob again at
 * every pull (nothing could be cached). A full disk is no reason (Wharf serves on, see "When the disk
 * fills up"), nor any other passing failure.
 */
async function probeWrite(key: StorageKey, folder: string, into: string): Promise<void> {
  const probe = join(into, `.wharf-start-${randomUUID()}`);
  try {
    await writeFile(probe, '');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
      const who = typeof process.getuid === 'function' ? ` (uid ${process.getuid()})` : '';
      throw new ConfigError(`"${key}" (${folder}) cannot be written by the user Wharf runs as${who}: ${(err as Error).message}`);
    }
    return;
  }
  await rm(probe, { force: true }).catch(() => undefined);
}
