import type { Server } from 'node:http';
import type { Logger } from 'pino';

export interface DrainOptions {
  /** Every listener: the main one and the HTTP redirect. */
  readonly servers: readonly Server[];
  /** Work that outlives requests (blob fills) and should end before the database closes. */
  readonly background?: () => Promise<void>;
  /** Ends that work now (called at the deadline when it still runs); `background` then settles. */
  readonly abandonBackground?: () => void;
  /**
   * Resolves once every request has written its log line. The servers' close callbacks do not wait
   * for that: a cut socket is counted out of its server before it emits the 'close' that ends its
   * response (and writes the line), so without this the lines of cut requests came after 'wharf
   * stopped', or never, the process having exited.
   */
  readonly requestsDone?: () => Promise<void>;
  /** Longest wait for requests in flight and background work (ms). */
  readonly timeoutMs: number;
  readonly logger: Logger;
}

/** After cutting, longest wait for the cut sockets to close and their requests to log their lines (ms). */
const CUT_WAIT_MS = 2_000;

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
  const requestsDone = (): Promise<unknown> => options.requestsDone?.() ?? Promise.resolve();
  try {
    const outcome = await Promise.race([Promise.all([...closed, background, requestsDone()]).then(() => 'drained' as const), deadline]);
    if (outcome === 'drained') return { cut: 0, backgroundAbandoned: false };
    let cut = 0;
    for (const server of servers) cut += await connections(server);
    if (cut > 0) logger.warn({ connections: cut, timeoutMs }, 'shutdown deadline reached; cutting requests still in flight');
    const abandoned = !backgroundDone;
    if (abandoned) {
      logger.warn({ timeoutMs }, 'shutdown deadline reached; abandoning blob fills still running');
      options.abandonBackground?.();
    }
    for (const server of servers) server.closeAllConnections();
    // The abandoned fills too: each removes its temp file and logs its failure before the database closes.
    await Promise.race([Promise.all([...closed, requestsDone(), background]), new Promise((r) => setTimeout(r, CUT_WAIT_MS).unref())]);
    return { cut, backgroundAbandoned: abandoned };
  } finally {
    clearInterval(sweeper);
    clearTimeout(timer);
  }
}
