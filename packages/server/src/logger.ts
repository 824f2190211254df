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
 * The process logger: JSON lines (one object per line, for log collectors), or pino-pretty's coloured
 * one-line-per-event output when `log_format` is "pretty", or "auto" and standard output is a terminal.
 *
 * JSON lines are written asynchronously: a line goes out at once when no write is in flight, and lines
 * logged during a write go out together in the next one. The event loop neither makes one system call
 * per request nor waits for a pipe whose reader (docker, kubectl, journald) lags; what is still
 * buffered at exit is written synchronously then (pino's exit hook). Past LOG_BUFFER_MAX unwritten,
 * lines are dropped and, once output flows again, one warning says how many.
 *
 * pino-pretty (for a person at a terminal) runs in this thread, synchronously, so nothing is lost at
 * exit. It is loaded only when wanted: a server logging JSON need not carry it and its dependencies.
 */
export function createLogger(options: { level: LogLevel; format: LogFormat }, isTTY = process.stdout.isTTY === true): Logger {
  const wantPretty = options.format === 'pretty' || (options.format === 'auto' && isTTY);
  if (!wantPretty) {
    const destination = pino.destination({ dest: 1, sync: false, minLength: 0, maxLength: LOG_BUFFER_MAX });
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
 * Before the process exits: waits up to `timeoutMs` for the lines still buffered to be written. If
 * standard output still takes nothing by then, they are dropped: the exit hook's synchronous flush
 * would otherwise retry for ever, and a stuck log reader must not keep a stopping server alive.
 * Nothing to do for a logger createLogger did not make, or a synchronous one.
 */
export async function settleLog(logger: Logger, timeoutMs: number): Promise<void> {
  const destination = destinations.get(logger);
  if (!destination || (destination as unknown as { readonly destroyed?: boolean }).destroyed === true) return;
  // sonic-boom keeps no public count of what it has not written yet; `_len` is that count (bytes
  // buffered or in the write in flight), and 'drain' comes when it reaches 0.
  const unwritten = (destination as unknown as { readonly _len?: unknown })._len;
  if (typeof unwritten !== 'number' || unwritten === 0) return;
  const drained = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => {
      destination.off('drain', onDrain);
      resolve(false);
    }, timeoutMs);
    const onDrain = () => {
      clearTimeout(timer);
      resolve(true);
    };
    destination.once('drain', onDrain);
  });
  if (!drained) destination.destroy();
}
