import { execFile } from 'node:child_process';
import { mkdtemp, open, rm, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * A real small file system for disk-full tests: a tmpfs of `sizeMiB` mounted on a fresh temp folder
 * (tests run as root in CI). A mount that fails throws, naming why: a disk-full test that cannot make
 * its disk fails, it is never skipped.
 */
export class SmallDisk {
  private filler = 0;

  private constructor(readonly dir: string) {}

  static async mount(sizeMiB: number): Promise<SmallDisk> {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-small-disk-'));
    try {
      await run('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0755`, 'tmpfs', dir]);
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      const why = (err as { stderr?: string; message: string }).stderr?.trim() || (err as Error).message;
      throw new Error(`this test mounts a ${sizeMiB} MiB tmpfs to fill it up, and needs root for that (CI runs it as root): mount failed: ${why}`);
    }
    return new SmallDisk(dir);
  }

  /** Bytes free now. */
  async free(): Promise<number> {
    const s = await statfs(this.dir);
    return s.bavail * s.bsize;
  }

  /** Takes space with a filler file until about `bytes` are left free. */
  async leave(bytes: number): Promise<void> {
    const take = (await this.free()) - bytes;
    if (take <= 0) return;
    const file = await open(join(this.dir, `filler-${++this.filler}`), 'w');
    try {
      const chunk = Buffer.alloc(1024 * 1024);
      for (let done = 0; done < take; ) {
        const n = Math.min(chunk.length, take - done);
        done += (await file.write(chunk, 0, n)).bytesWritten;
      }
    } catch (err) {
      // A download writing meanwhile took some of the space counted above: the disk is full, which
      // is at most what was asked to be left.
      if ((err as { code?: unknown }).code !== 'ENOSPC') throw err;
    } finally {
      await file.close();
    }
  }

  /** Removes every filler file: the space they took is free again. */
  async release(): Promise<void> {
    for (let i = 1; i <= this.filler; i++) await rm(join(this.dir, `filler-${i}`), { force: true });
    this.filler = 0;
  }

  async unmount(): Promise<void> {
    await run('umount', [this.dir]).catch(() => run('umount', ['-l', this.dir]));
    await rm(this.dir, { recursive: true, force: true });
  }
}
