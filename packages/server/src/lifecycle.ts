import type { Server } from 'node:http';
import type { Logger } from 'pino';

export interface DrainOptions {
  /** Every listener: the main one and the HTTP redirect. */
  readonly servers: readonly Server[];
  /** Work that outlives requests (blob fills) and should end before the database closes. */
  readonly background?: () => Promise<void>;
  /** Longest wait for requests in flight and background work (ms). */
  readonly timeoutMs: number;
  readonly logger: Logger;
}

export interface DrainReport {
  /** Connections still busy at the deadline, cut. */
  readonly cut: number;
  /** Background work was still running at the deadline. */
  readonly backgroundAbandoned: boolean;
}

function connections(server: Server): Promise<number> {
  return new Promise((resolve) => server.getConnections((err, count) => resolve(err ? 0 : count)));
}

/**
 * The graceful part of a shutdown: stop accepting connections; close idle keep-alive connections at
 * once and the others as soon as their response is done (the caller's middleware also answers with
 * `Connection: close` meanwhile); wait for that and for background work up to the deadline; then cut
 * whatever is left.
 */
export async function drainServers(options: DrainOptions): Promise<DrainReport> {
  const { servers, timeoutMs, logger } = options;
  const closed = servers.map(
    (server) =>
      new Promise<void>((resolve) => {
        if (!server.listening) {
          resolve();
          return;
        }
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  );
  // A connection whose request was in flight when close() was called is idle as soon as its
  // response is out: look again often.
  const sweeper = setInterval(() => {
    for (const server of servers) server.closeIdleConnections();
  }, 50);
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<'deadline'>((resolve) => {
    timer = setTimeout(() => resolve('deadline'), timeoutMs);
  });
  let backgroundDone = false;
  const background = (options.background?.() ?? Promise.resolve()).then(
    () => {
      backgroundDone = true;
    },
    () => {
      backgroundDone = true;
    },
  );
  try {
    const outcome = await Promise.race([Promise.all([...closed, background]).then(() => 'drained' as const), deadline]);
    if (outcome === 'drained') return { cut: 0, backgroundAbandoned: false };
    let cut = 0;
    for (const server of servers) cut += await connections(server);
    if (cut > 0) logger.warn({ connections: cut, timeoutMs }, 'shutdown deadline reached; cutting requests still in flight');
    if (!backgroundDone) logger.warn({ timeoutMs }, 'shutdown deadline reached; abandoning blob fills still running');
    for (const server of servers) server.closeAllConnections();
    await Promise.race([Promise.all(closed), new Promise((r) => setTimeout(r, 1_000).unref())]);
    return { cut, backgroundAbandoned: !backgroundDone };
  } finally {
    clearInterval(sweeper);
    clearTimeout(timer);
  }
}
