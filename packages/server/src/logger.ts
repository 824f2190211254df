import { createRequire } from 'node:module';
import { pino, type Logger } from 'pino';
import type PinoPretty from 'pino-pretty';
import type { LogFormat, LogLevel } from './config.js';
import { StdoutLog } from './log-output.js';

/** The standard outputs of the JSON loggers createLogger made, for settleLog. */
const outputs = new WeakMap<Logger, StdoutLog>();

/**
 * The process logger: JSON lines (one object per line, for log collectors), or pino-pretty's coloured
 * one-line-per-event output when `log_format` is "pretty", or "auto" and standard output is a terminal.
 *
 * JSON lines go to standard output asynchronously and bounded (log-output.ts); lines dropped for a
 * reader that stopped reading are reported in one warning once it reads again.
 *
 * pino-pretty (for a person at a terminal) runs in this thread, synchronously, so nothing is lost at
 * exit. It is loaded only when wanted: a server logging JSON need not carry it and its dependencies.
 */
export function createLogger(options: { level: LogLevel; format: LogFormat }, isTTY = process.stdout.isTTY === true): Logger {
  const wantPretty = options.format === 'pretty' || (options.format === 'auto' && isTTY);
  if (!wantPretty) {
    const output = new StdoutLog();
    const logger = pino({ level: options.level }, output);
    output.onDropped((lines) => logger.warn({ dropped: lines }, 'log lines dropped: standard output was not read fast enough'));
    outputs.set(logger, output);
    return logger;
  }
  const pretty = createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty;
  return pino(
    { level: options.level },
    pretty({ colorize: isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true, sync: true }),
  );
}

/**
 * Before the process exits: gives the lines still buffered up to `timeoutMs` to be written, then drops
 * them (StdoutLog.settle). Nothing to do for a logger createLogger did not make, or a pretty one.
 */
export async function settleLog(logger: Logger, timeoutMs: number): Promise<void> {
  await outputs.get(logger)?.settle(timeoutMs);
}
