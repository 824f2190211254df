import type { Router, RouterContext } from '@koa/router';
import type { Readable } from 'node:stream';
import { RegistryError, type ExportPlan, type ImportOptions, type ImportResult } from '@wharf/registry-core';
import { assertOperator } from './operator.js';

/** What the storage admin endpoints need (StorageMaintenance provides it). */
export interface StorageAdminDeps {
  importArchive(source: Readable, options?: ImportOptions): Promise<ImportResult>;
  exportArchive(refs: readonly string[], signal?: AbortSignal): Promise<{ plan: ExportPlan; stream: Readable }>;
}

/**
 * Paths of the endpoints that move whole images: like blob transfers they are limited by idle time on
 * the socket, not by request_timeout (a multi-GB import takes a while).
 */
export function isArchiveTransfer(path: string): boolean {
  return path === '/admin/import' || path === '/admin/export';
}

function oneParam(ctx: RouterContext, name: string): string | undefined {
  const value = ctx.query[name];
  if (Array.isArray(value)) throw new RegistryError('NAME_INVALID', `give "${name}" once`, { [name]: value });
  return value === undefined || value === '' ? undefined : value;
}

/**
 * POST /admin/import?repository=&tag=: the request body is a docker-save or OCI layout tarball (gzip or
 * not), streamed into the store; 201 with what was imported. GET /admin/export?ref=alice/app:1&ref=…:
 * an OCI image layout tarball, streamed. Loopback clients only with auth off, administrators with it on.
 */
export function registerStorageAdmin(router: Router, deps: StorageAdminDeps, authEnabled: boolean): void {
  const checkCaller = (ctx: RouterContext) => assertOperator(ctx, authEnabled);

  router.post('/admin/import', async (ctx) => {
    checkCaller(ctx);
    const repository = oneParam(ctx, 'repository');
    const tag = oneParam(ctx, 'tag');
    const result = await deps.importArchive(ctx.req, {
      ...(repository !== undefined ? { repository } : {}),
      ...(tag !== undefined ? { tag } : {}),
    });
    ctx.status = 201;
    ctx.body = result;
  });

  router.get('/admin/export', async (ctx) => {
    checkCaller(ctx);
    const raw = ctx.query.ref;
    const refs = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
    const cancelled = new AbortController();
    ctx.res.once('close', () => {
      if (!ctx.res.writableFinished) cancelled.abort();
    });
    const { stream } = await deps.exportArchive(refs, cancelled.signal);
    ctx.status = 200;
    ctx.type = 'application/x-tar';
    ctx.set('Content-Disposition', 'attachment; filename="images.tar"');
    ctx.body = stream;
  });
}
