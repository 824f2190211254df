import type { ErrorCode, RegistryError } from '@wharf/registry-core';

/** The one table from registry error codes to HTTP statuses. */
export const ERROR_STATUS: Record<ErrorCode, number> = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_INVALID: 400,
  BLOB_UPLOAD_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_BLOB_UNKNOWN: 400,
  MANIFEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  SIZE_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  // A malformed tag in a request (?tag= on a manifest PUT), as distribution answers TAG_INVALID. In the
  // path it is a 404: see errorStatus.
  TAG_INVALID: 400,
  RANGE_INVALID: 416,
  PAGINATION_NUMBER_INVALID: 400,
  TOO_LARGE: 413,
  REQUEST_TIMEOUT: 408,
  NOT_FOUND: 404,
  EXPECTATION_FAILED: 417,
  UPSTREAM_ERROR: 502,
  UPSTREAM_TIMEOUT: 504,
  UNAVAILABLE: 503,
  // RFC 4918's status for a request the server cannot store: clients treat it as any 5xx (a failure,
  // retried by some), and an operator's alerting can tell a full disk from a bug.
  INSUFFICIENT_STORAGE: 507,
  UNKNOWN: 500,
};

/**
 * The status of `error`. A manifest reference in the path that is neither a digest nor a tag names no
 * resource: 404, as distribution answers (its routes do not match the reference) and as the OCI
 * conformance suite expects of GET and HEAD /manifests/.INVALID_MANIFEST_NAME. The same code for a
 * request parameter is a malformed request: the table's 400.
 */
export function errorStatus(error: RegistryError, inPath: boolean): number {
  return inPath && error.code === 'TAG_INVALID' ? 404 : ERROR_STATUS[error.code];
}
