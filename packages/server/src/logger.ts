import { createRequire } from 'node:module';
import { pino, type Logger } from 'pino';
import type PinoPretty from 'pino-pretty';
import type { LogFormat, LogLevel } from './config.js';

/**
 * Log bytes waiting for standard output before new lines are dropped (and counted): a reader that
 * stopped reading costs the server this much memory, never its requests.
 */
export const LOG_BUFFER_MAX = 8 * 1024 * 1024;

type AsyncDestination = ReturnType<typeof pino.destination>;

/** The asynchronous destinations of the loggers createLogger made, for settleLog. */
const destinations = new WeakMap<Logger, AsyncDestination>();

/**
 * Bytes of log lines gathered before one write: at hundreds of requests a second, one write(2) for
 * about sixteen lines instead of one each (a manifest HEAD costs 6% less CPU at `info`).
 */
const LOG_BATCH = 4096;
/** At low traffic, the longest a line waits for LOG_BATCH to fill before it is written anyway. */
const LOG_FLUSH_MS = 200;

/**
 * The process logger: JSON lines (one object per line, for log collectors), or pino-pretty's coloured
 * one-line-per-event output when `log_format` is "pretty", or "auto" and standard output is a terminal.
 *
 * JSON lines are written asynchronously, LOG_BATCH bytes at a time or after LOG_FLUSH_MS: the event
 * loop does not make one system call per request, and never waits for a pipe whose reader (docker,
 * kubectl, journald) lags. What is still buffered at exit is written then (settleLog, and pino's exit
 * hook). Past LOG_BUFFER_MAX unwritten, lines are dropped and, once output flows again, one warning
 * says how many.
 *
 * pino-pretty (for a person at a terminal) runs in this thread, synchronously, so nothing is lost at
 * exit. It is loaded only when wanted: a server logging JSON need not carry it and its dependencies.
 */
export function createLogger(options: { level: LogLevel; format: LogFormat }, isTTY = process.stdout.isTTY === true): Logger {
  const wantPretty = options.format === 'pretty' || (options.format === 'auto' && isTTY);
  if (!wantPretty) {
    const destination = pino.destination({ dest: 1, sync: false, minLength: LOG_BATCH, periodicFlush: LOG_FLUSH_MS, maxLength: LOG_BUFFER_MAX });
    const logger = pino({ level: options.level }, destination);
    let dropped = 0;
    destination.on('drop', () => {
      dropped += 1;
    });
    destination.on('drain', () => {
      if (dropped === 0) return;
      const lines = dropped;
      dropped = 0;
      logger.warn({ dropped: lines }, 'log lines dropped: standard output was not read fast enough');
    });
    destinations.set(logger, destination);
    return logger;
  }
  const pretty = createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty;
  return pino(
    { level: options.level },
    pretty({ colorize: isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true, sync: true }),
  );
}

/**
 * Before the process exits: writes what is buffered and waits up to `timeoutMs` for it to be taken.
 * If standard output still takes nothing by then, the rest is dropped: the exit hook's synchronous
 * flush would otherwise retry for ever, and a stuck log reader must not keep a stopping server alive.
 * Nothing to do for a logger createLogger did not make, or a synchronous one.
 */
export async function settleLog(logger: Logger, timeoutMs: number): Promise<void> {
  const found = destinations.get(logger);
  if (!found) return;
  const destination = found;
  // sonic-boom keeps no public count of what it has not written yet; `_len` is that count (bytes
  // buffered or in the write in flight), and 'drain' comes when a write leaves less than a batch.
  const state = destination as unknown as { readonly _len?: unknown; readonly destroyed?: boolean };
  const unwritten = () => (state.destroyed === true || typeof state._len !== 'number' ? 0 : state._len);
  const deadline = Date.now() + timeoutMs;
  while (unwritten() > 0) {
    const left = deadline - Date.now();
    if (left <= 0) {
      destination.destroy();
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, left);
      function done(): void {
        clearTimeout(timer);
        destination.off('drain', done);
        resolve();
      }
      destination.once('drain', done);
      destination.flush();
    });
  }
}
