import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ProcessLock } from '@wharf/registry-core';

/** Names of the lock files: `owner-<tag>.lock`. */
const LOCK_PREFIX = 'owner-';
const LOCK_SUFFIX = '.lock';

/**
 * Whose a fill's temp files are. Each BlobFills instance (a server) names its files `fill-<tag>-...`
 * after a random tag, and holds a lock on `owner-<tag>.lock` in the same folder for as long as it
 * runs (ProcessLock: the kernel drops it when the process dies, `kill -9` included). Two servers may
 * run on one storage (README, "Storage"): a server starting takes back only the files of an owner
 * whose lock nobody holds, never those of a server still writing them.
 */
export class FillOwner {
  private constructor(
    readonly tag: string,
    private readonly root: string,
    private lock: ProcessLock | undefined,
  ) {}

  /**
   * A new owner of files in `root`, holding its lock. On a file system that cannot lock (where
   * servers could not share a database either) it runs without one: another server starting there
   * then takes its files for a gone process's.
   */
  static take(root: string): FillOwner {
    const tag = randomBytes(8).toString('hex');
    let lock: ProcessLock | undefined;
    try {
      lock = ProcessLock.create(lockFile(root, tag));
    } catch {
      lock = undefined;
    }
    return new FillOwner(tag, root, lock);
  }

  /** This owner's files are the next start's to take back; its lock file goes. */
  async release(): Promise<void> {
    const lock = this.lock;
    this.lock = undefined;
    if (!lock) return;
    try {
      lock.release();
    } catch {
      // closed already
    }
    await removeLock(this.root, this.tag);
  }
}

function lockFile(root: string, tag: string): string {
  return join(root, `${LOCK_PREFIX}${tag}${LOCK_SUFFIX}`);
}

async function removeLock(root: string, tag: string): Promise<void> {
  const file = lockFile(root, tag);
  // (A -journal: from a version that kept one next to the lock.)
  await Promise.all([file, `${file}-journal`].map((f) => rm(f, { force: true }).catch(() => undefined)));
}

/** The owner tag a temp file's name (after `fill-`) gives; undefined for names of another form (older versions'). */
export function tagOfName(name: string): string | undefined {
  return /^([0-9a-f]{16})-/.exec(name)?.[1];
}

/**
 * Whether the owner tagged `tag` may still be using its files in `root`: 'live' while someone holds
 * its lock, 'gone' otherwise (its process ended or closed it, or it left no lock file).
 */
export function ownerState(root: string, tag: string): 'live' | 'gone' {
  return ProcessLock.held(lockFile(root, tag)) === true ? 'live' : 'gone';
}

/**
 * Whether some server holds an owner lock in `root` (`entries` is the folder's listing): another
 * process writing temp files there now. Asked before a starting server takes its own.
 */
export function anyOwnerLive(root: string, entries: readonly string[]): boolean {
  return entries.some((entry) => entry.startsWith(LOCK_PREFIX) && entry.endsWith(LOCK_SUFFIX) && ownerState(root, entry.slice(LOCK_PREFIX.length, -LOCK_SUFFIX.length)) === 'live');
}

/**
 * Removes the lock files in `root` of owners that are gone (`entries` is the folder's listing): their
 * files have been dealt with. `live` holds the owners whose state is known already (true: live),
 * which are not asked again.
 */
export async function removeGoneLocks(root: string, entries: readonly string[], live: ReadonlyMap<string, boolean>): Promise<void> {
  for (const entry of entries) {
    if (!entry.startsWith(LOCK_PREFIX) || !entry.endsWith(LOCK_SUFFIX)) continue;
    const tag = entry.slice(LOCK_PREFIX.length, -LOCK_SUFFIX.length);
    if (!(live.get(tag) ?? ownerState(root, tag) === 'live')) await removeLock(root, tag);
  }
}
