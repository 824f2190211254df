import type { ErrorCode } from '@wharf/registry-core';

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
  // A tag outside the grammar: 404, as distribution answers (its routes do not match the reference)
  // and as the OCI conformance suite expects of GET and HEAD /manifests/.INVALID_MANIFEST_NAME.
  TAG_INVALID: 404,
  RANGE_INVALID: 416,
  PAGINATION_NUMBER_INVALID: 400,
  TOO_LARGE: 413,
  NOT_FOUND: 404,
  EXPECTATION_FAILED: 417,
  UPSTREAM_ERROR: 502,
  UPSTREAM_TIMEOUT: 504,
  UNAVAILABLE: 503,
  UNKNOWN: 500,
};
