import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';
import type { LogFormat, LogLevel } from './config.js';

/**
 * The process logger: JSON lines (one object per line, for log collectors), or pino-pretty's coloured
 * one-line-per-event output when `log_format` is "pretty", or "auto" and standard output is a terminal.
 * pino-pretty runs in this thread as a plain stream (no worker transport), so nothing is lost at exit.
 */
export function createLogger(options: { level: LogLevel; format: LogFormat }, isTTY = process.stdout.isTTY === true): Logger {
  const wantPretty = options.format === 'pretty' || (options.format === 'auto' && isTTY);
  if (!wantPretty) return pino({ level: options.level });
  return pino(
    { level: options.level },
    pretty({ colorize: isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true, sync: true }),
  );
}
