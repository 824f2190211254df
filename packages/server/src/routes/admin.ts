import type { Router } from '@koa/router';
import type { CacheEviction } from '@wharf/proxy';
import { RegistryError, isValidRepositoryName } from '@wharf/registry-core';
import { decodeCapture } from '../http/path-segments.js';
import { registerStorageAdmin, type StorageAdminDeps } from './admin-storage.js';
import { assertOperator } from './operator.js';

export interface AdminDeps {
  readonly eviction: CacheEviction;
  /** An upstream key or alias → the key, and the prefix one-component names get (Docker Hub's library/). */
  resolveUpstream(name: string): { key: string; officialPrefix?: string } | undefined;
  /** With auth on, the auth middleware admits administrators only, from any address. */
  readonly authEnabled?: boolean;
  /** POST /admin/import and GET /admin/export (routes/admin-storage.ts). */
  readonly storage?: StorageAdminDeps;
}

/**
 * Operator endpoints. With auth off they answer loopback clients only; with auth on, administrators.
 * DELETE /admin/proxy/cache/<upstream>[/<repository>] purges what the proxy cached.
 */
export function registerAdmin(router: Router, deps: AdminDeps): void {
  router.delete(/^\/admin\/proxy\/cache\/([^/]+)(?:\/(.+))?$/, async (ctx) => {
    assertOperator(ctx, deps.authEnabled ?? false);
    const [name = '', path] = ctx.captures ?? [];
    const upstream = deps.resolveUpstream(decodeCapture(name));
    if (!upstream) throw new RegistryError('NAME_UNKNOWN', 'no such upstream', { upstream: name });
    let repository = path === undefined ? undefined : decodeCapture(path);
    if (repository !== undefined && !isValidRepositoryName(repository)) throw new RegistryError('NAME_INVALID', 'invalid repository name', { repository });
    if (repository !== undefined && upstream.officialPrefix && !repository.includes('/')) repository = `${upstream.officialPrefix}${repository}`;
    ctx.body = { upstream: upstream.key, ...(repository ? { repository } : {}), purged: await deps.eviction.purge(upstream.key, repository) };
  });
  if (deps.storage) registerStorageAdmin(router, deps.storage, deps.authEnabled ?? false);
}
