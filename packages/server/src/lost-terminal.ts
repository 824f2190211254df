import { closeSync, openSync, writeSync } from 'node:fs';

const NOTHING = Buffer.alloc(0);

/**
 * The standard streams (0-2) whose terminal hung up (an ssh session closed): the kernel answers any
 * write to them, an empty one included, with EIO. A stream that is a file, a pipe or a live terminal
 * is not among them.
 */
export function lostTerminalStreams(): number[] {
  const lost: number[] = [];
  for (const fd of [0, 1, 2]) {
    try {
      writeSync(fd, NOTHING);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EIO') lost.push(fd);
    }
  }
  return lost;
}

/**
 * Points each of `fds` (from lostTerminalStreams) at /dev/null. Node.js, exiting, restores the
 * settings of a standard stream that was a terminal when it started, and aborts when that fails: a
 * server stopped by its terminal's hangup ended on an assertion (exit 134) or a crash (139), never 0.
 * A stream that is another file by then is left alone.
 *
 * Only right before the exit, once nothing else opens files: between the close and the open, a file
 * opened on another thread would take the number, and be written to as the stream.
 */
export function detachLostStreams(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      closeSync(fd);
      const reopened = openSync('/dev/null', fd === 0 ? 'r' : 'w');
      // Another thread took the number after all: that file is not ours to keep open or to touch.
      if (reopened !== fd) closeSync(reopened);
    } catch {
      // Best effort: the exit that follows is what is wanted.
    }
  }
}
