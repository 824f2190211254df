import { createRequire } from 'node:module';
import { pino, type Logger } from 'pino';
import type PinoPretty from 'pino-pretty';
import type { LogFormat, LogLevel } from './config.js';

/**
 * The process logger: JSON lines (one object per line, for log collectors), or pino-pretty's coloured
 * one-line-per-event output when `log_format` is "pretty", or "auto" and standard output is a terminal.
 * pino-pretty runs in this thread as a plain stream (no worker transport), so nothing is lost at exit.
 * It is loaded only when wanted: a server logging JSON need not carry it and its dependencies.
 */
export function createLogger(options: { level: LogLevel; format: LogFormat }, isTTY = process.stdout.isTTY === true): Logger {
  const wantPretty = options.format === 'pretty' || (options.format === 'auto' && isTTY);
  if (!wantPretty) return pino({ level: options.level });
  const pretty = createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty;
  return pino(
    { level: options.level },
    pretty({ colorize: isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true, sync: true }),
  );
}
