import { randomUUID } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Router } from '@koa/router';
import type { SqliteDatabase } from '@wharf/registry-core';
import type { Logger } from 'pino';

export interface HealthDeps {
  readonly db: SqliteDatabase;
  /** The folder every write goes through first: if it takes no file, nothing can be pushed or cached. */
  readonly temporaryRegistryStorage: string;
  /**
   * The database's folder, when it has one (not `:memory:`): a file system that takes no file there
   * leaves the database answering reads and refusing every push, token and cache entry.
   */
  readonly databaseFolder?: string;
  /** True once shutdown started: the load balancer should stop sending new work. */
  readonly draining: () => boolean;
  readonly logger: Logger;
}

const PROBE_TIMEOUT_MS = 5_000;

function withTimeout<T>(work: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${PROBE_TIMEOUT_MS} ms`)), PROBE_TIMEOUT_MS);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/**
 * Writes and removes a small file in `folder`: whether its file system takes one within the probe's
 * timeout. The file goes once its write has ended, also a write that ended after the timeout.
 */
async function probeFolder(folder: string, what: string): Promise<void> {
  const probe = join(folder, `.ready-${randomUUID()}`);
  const written = writeFile(probe, 'ready');
  void written.then(
    () => rm(probe, { force: true }).catch(() => undefined),
    () => rm(probe, { force: true }).catch(() => undefined),
  );
  await withTimeout(written, what);
}

/**
 * /health: the process is alive and answers (200 `{"status":"ok"}`), nothing else is checked, so a
 * slow disk never gets a live server restarted. /ready: the database answers a query, and the
 * temporary storage and the database's folder each take a file (a probe file is written and
 * removed); 503 otherwise, and while shutting down.
 * Neither needs credentials (auth guards /v2 and /admin only), and neither says more than ok or failed.
 */
export function registerHealth(router: Router, deps: HealthDeps): void {
  let lastReady: boolean | undefined;
  const health = (ctx: { body: unknown; set(field: string, value: string): void }) => {
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { status: 'ok' };
  };
  // @koa/router answers HEAD with the GET route.
  router.get('/health', health);

  const ready = async (ctx: { status: number; body: unknown; set(field: string, value: string): void }) => {
    const problems: Record<string, string> = {};
    const note = (key: string) => (err: unknown) => {
      problems[key] = (err as Error).message;
    };
    // Both folders at once: a slow one does not hold the other's probe back.
    await Promise.all([
      (async () => {
        deps.db.prepare('SELECT 1').get();
        if (deps.databaseFolder !== undefined) await probeFolder(deps.databaseFolder, 'the database\'s folder');
      })().catch(note('database')),
      probeFolder(deps.temporaryRegistryStorage, 'storage').catch(note('storage')),
    ]);
    if (deps.draining()) problems.server = 'shutting down';
    const ok = Object.keys(problems).length === 0;
    if (ok !== lastReady) {
      if (ok) deps.logger.info('ready');
      else deps.logger.warn({ problems }, 'not ready');
      lastReady = ok;
    }
    const check = (key: string) => (problems[key] === undefined ? 'ok' : 'failed');
    ctx.set('Cache-Control', 'no-store');
    ctx.status = ok ? 200 : 503;
    ctx.body = { status: ok ? 'ready' : 'unavailable', checks: { database: check('database'), storage: check('storage'), ...(deps.draining() ? { shutdown: 'in progress' } : {}) } };
  };
  router.get('/ready', ready);
}
