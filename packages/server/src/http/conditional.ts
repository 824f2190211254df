/**
 * Conditional requests (RFC 9110 section 13) on content-addressed answers, whose entity tag is
 * `"<digest>"`: the same tag always means the same bytes.
 */

/** The entity tags of a field value (`"a", W/"b"`), weak ones marked by their `W/`. */
function entityTags(field: string): string[] {
  return field.split(',').map((t) => t.trim()).filter((t) => t !== '');
}

/** `If-None-Match` names the answer's tag (or `*`): a GET or HEAD gets 304 Not Modified (weak comparison). */
export function notModified(ifNoneMatch: string | undefined, etag: string): boolean {
  if (!ifNoneMatch) return false;
  return entityTags(ifNoneMatch).some((t) => t === '*' || t.replace(/^W\//, '') === etag);
}

/**
 * Whether `Range` is to be honoured: always without `If-Range`; with it, only when it is this
 * answer's tag (strong comparison). A date never matches: no `Last-Modified` is sent. Otherwise the
 * whole content is sent (section 13.1.5).
 */
export function rangeApplies(ifRange: string | undefined, etag: string): boolean {
  if (!ifRange) return true;
  return ifRange.trim() === etag;
}
