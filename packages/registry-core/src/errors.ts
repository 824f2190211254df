/**
 * The one error type of the registry. `code` is an OCI Distribution Spec error code (plus the few that
 * distribution adds and clients know); the server maps codes to HTTP statuses in one table.
 */
export const ERROR_CODES = [
  'BLOB_UNKNOWN',
  'BLOB_UPLOAD_INVALID',
  'BLOB_UPLOAD_UNKNOWN',
  'DIGEST_INVALID',
  'MANIFEST_BLOB_UNKNOWN',
  'MANIFEST_INVALID',
  'MANIFEST_UNKNOWN',
  'NAME_INVALID',
  'NAME_UNKNOWN',
  'SIZE_INVALID',
  'UNAUTHORIZED',
  'DENIED',
  'UNSUPPORTED',
  'TOOMANYREQUESTS',
  // distribution's additions, which Docker-lineage clients recognise
  'TAG_INVALID',
  'RANGE_INVALID',
  'PAGINATION_NUMBER_INVALID',
  // ours: a body over a cap (413), a request not sent in time (408), a path that names no endpoint
  // (404), an `Expect` other than 100-continue (417), and failures that are not the client's fault
  // (a full disk among them)
  'TOO_LARGE',
  'REQUEST_TIMEOUT',
  'NOT_FOUND',
  'EXPECTATION_FAILED',
  'UPSTREAM_ERROR',
  'UPSTREAM_TIMEOUT',
  'UNAVAILABLE',
  'INSUFFICIENT_STORAGE',
  'UNKNOWN',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export class RegistryError extends Error {
  readonly code: ErrorCode;
  readonly detail: unknown;

  constructor(code: ErrorCode, message: string, detail?: unknown) {
    super(message);
    this.name = 'RegistryError';
    this.code = code;
    this.detail = detail;
  }
}

export function isRegistryError(err: unknown): err is RegistryError {
  return err instanceof RegistryError;
}

/**
 * Error codes of a write its storage had no room for: a full file system (ENOSPC), a user's quota
 * (EDQUOT), and SQLite's "database or disk is full". Nothing was stored; the same request succeeds
 * once space is freed.
 */
const STORAGE_FULL = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL']);

export function isStorageFull(err: unknown): boolean {
  return typeof err === 'object' && err !== null && STORAGE_FULL.has(String((err as { code?: unknown }).code));
}
