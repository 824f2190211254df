import { pino } from 'pino';

/**
 * Log bytes waiting for standard output before new lines are dropped (and counted): a reader that
 * stopped reading costs the server this much memory, never its requests.
 */
export const LOG_BUFFER_MAX = 8 * 1024 * 1024;
/**
 * Bytes of log lines gathered before one write: at hundreds of requests a second, one write(2) for
 * about sixteen lines instead of one each (a manifest HEAD costs 6% less CPU at `info`).
 */
const LOG_BATCH = 4096;
/**
 * At low traffic, the longest a line waits for LOG_BATCH to fill before it is written anyway. Armed
 * by a line, not periodic: sonic-boom's `periodicFlush` wrote (an empty string, through libuv's pool)
 * five times a second with nothing to write, waking an idle server.
 */
const LOG_FLUSH_MS = 200;
/** At exit (any exit: a second signal, a crash), how long what is left may take to be written. */
const EXIT_FLUSH_MS = 2_000;

type Destination = ReturnType<typeof pino.destination>;

/** When the process started exiting (0: it is not), for the destinations' EAGAIN retries. */
let exitingSince = 0;
const open = new Set<StdoutLog>();
let exitHooked = false;

/**
 * Standard output for JSON log lines, written asynchronously (sonic-boom, as pino's own default):
 * LOG_BATCH bytes at a time or after LOG_FLUSH_MS, so that the event loop makes no system call per
 * request and never waits for a pipe whose reader (docker, kubectl, journald) lags. Bounded every
 * way a stuck reader could hold the server:
 * - memory: past LOG_BUFFER_MAX unwritten, lines are dropped, and counted for `onDropped` once
 *   output flows again;
 * - a normal shutdown: `settle` gives the buffer a few seconds, then drops it;
 * - any exit (a second signal, a crash): the synchronous flush at exit gives up after EXIT_FLUSH_MS
 *   (pino's own exit hook retried a blocked write for ever), and a broken pipe skips it.
 * A failing standard output (EPIPE: the reader is gone) costs the lines, never the process.
 *
 * It is pino's stream (`write`), in front of the sonic-boom `destination`.
 */
export class StdoutLog {
  readonly destination: Destination;
  private broken = false;
  private flushTimer: NodeJS.Timeout | undefined;
  private dropped = 0;
  private reportDropped: (lines: number) => void = () => undefined;

  constructor() {
    this.destination = pino.destination({
      dest: 1,
      sync: false,
      minLength: LOG_BATCH,
      maxLength: LOG_BUFFER_MAX,
      // Running: retry a full pipe for as long as it takes (the buffer is bounded). Exiting: not past the deadline.
      retryEAGAIN: () => exitingSince === 0 || Date.now() - exitingSince < EXIT_FLUSH_MS,
    });
    this.destination.on('error', () => {
      this.broken = true;
    });
    this.destination.on('drop', () => {
      this.dropped += 1;
    });
    this.destination.on('drain', () => {
      if (this.dropped === 0) return;
      const lines = this.dropped;
      this.dropped = 0;
      this.reportDropped(lines);
    });
    open.add(this);
    if (!exitHooked) {
      exitHooked = true;
      // Before pino's exit hook, which finds the destinations destroyed and does nothing.
      process.prependListener('exit', () => {
        exitingSince = Date.now();
        for (const log of open) log.flushAtExit();
      });
    }
  }

  /** One log line (pino calls this). Written with the next batch, or within LOG_FLUSH_MS. */
  write(line: string): boolean {
    const taken = this.destination.write(line);
    this.armFlush();
    return taken;
  }

  /**
   * Flushes in LOG_FLUSH_MS, and again after that while bytes are left: with a write in flight
   * (a pipe whose reader lags), sonic-boom's flush does nothing, and once that write is done it
   * writes on only while a whole batch waits. The lines after it would wait for the next line.
   */
  private armFlush(): void {
    this.flushTimer ??= setTimeout(() => {
      this.flushTimer = undefined;
      if (this.unwritten() === 0) return;
      this.destination.flush();
      this.armFlush();
    }, LOG_FLUSH_MS).unref();
  }

  /** Called with the number of lines dropped, once output flows again after dropping some. */
  onDropped(report: (lines: number) => void): void {
    this.reportDropped = report;
  }

  /**
   * Before the process exits: writes what is buffered and waits up to `timeoutMs` for it to be taken;
   * then drops the rest. A stuck log reader must not keep a stopping server alive.
   */
  async settle(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.unwritten() > 0) {
      const left = deadline - Date.now();
      if (left <= 0) {
        this.close();
        return;
      }
      await new Promise<void>((resolve) => {
        const destination = this.destination;
        const timer = setTimeout(done, left);
        function done(): void {
          clearTimeout(timer);
          destination.off('drain', done);
          destination.off('error', done);
          resolve();
        }
        destination.once('drain', done);
        destination.once('error', done);
        destination.flush();
      });
    }
  }

  /** Bytes not written yet; 0 once closed, or when standard output failed (nothing more will be). */
  private unwritten(): number {
    // sonic-boom keeps no public count of what it has not written; `_len` is that count (bytes
    // buffered or in the write in flight), and 'drain' comes when a write leaves less than a batch.
    const state = this.destination as unknown as { readonly _len?: unknown; readonly destroyed?: boolean };
    if (this.broken || state.destroyed === true || typeof state._len !== 'number') return 0;
    return state._len;
  }

  private flushAtExit(): void {
    try {
      if (this.unwritten() > 0) this.destination.flushSync();
    } catch {
      // Past EXIT_FLUSH_MS of a full pipe, or output failed: the rest is dropped.
    }
    this.close();
  }

  private close(): void {
    clearTimeout(this.flushTimer);
    open.delete(this);
    try {
      this.destination.destroy();
    } catch {
      // already closed
    }
  }
}
