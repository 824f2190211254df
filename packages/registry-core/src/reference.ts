import { RegistryError } from './errors.js';

/**
 * Repository names per the OCI Distribution Spec. The grammar admits no "." or ".." component, no
 * leading or trailing separator and no "/" run, so a valid name can never escape a directory; Wharf
 * keeps names out of file paths anyway (blobs are content-addressed, names live in SQLite).
 */
const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_PATTERN = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG_PATTERN = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
export const MAX_NAME_LENGTH = 255;

export function isValidRepositoryName(name: string): boolean {
  return name.length > 0 && name.length <= MAX_NAME_LENGTH && NAME_PATTERN.test(name);
}

export function assertRepositoryName(name: string): void {
  if (!isValidRepositoryName(name)) {
    throw new RegistryError('NAME_INVALID', 'invalid repository name', { name });
  }
}

export function isValidTag(tag: string): boolean {
  return TAG_PATTERN.test(tag);
}

export function assertTag(tag: string): void {
  if (!isValidTag(tag)) throw new RegistryError('TAG_INVALID', 'invalid tag', { tag });
}

/**
 * The order tags are listed in: the spec's "lexical order (i.e. case-insensitive alphanumeric
 * order)", ASCII letters folded, and tags equal but for case by their bytes (SQLite's NOCASE, then
 * BINARY: what the registry's listing does).
 */
export function compareTags(a: string, b: string): number {
  const la = a.toLowerCase();
  const lb = b.toLowerCase();
  if (la !== lb) return la < lb ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}
