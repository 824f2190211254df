import { MAX_MANIFEST_BYTES, type Descriptor } from './manifest.js';
import { MediaType } from './media-types.js';

/** What a referrers request asks for: `?artifactType=` and `?last=` (the digest a page ended at). */
export interface ReferrersQuery {
  readonly artifactType?: string;
  readonly last?: string;
  /** The most an index of one page may take (default MAX_MANIFEST_BYTES: what clients read at most). */
  readonly maxBytes?: number;
}

/** One page of a subject's referrers, and whether more follow (after its last digest). */
export interface ReferrersSlice {
  readonly descriptors: Descriptor[];
  readonly more: boolean;
}

/** The index around the descriptors, in bytes: `{"schemaVersion":2,"mediaType":"...","manifests":[` and `]}`. */
const INDEX_FRAME = Buffer.byteLength(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OciIndex, manifests: [] }));

/**
 * One page of referrers: all of them, in the order they came (`byAge`), when their index fits in
 * `maxBytes` (oras-go reads 4 MiB at most); else those after `last` in digest order (`byDigest`), as
 * many as fit, at least one. The spec: "A Link header MUST be included in the response when the
 * descriptor list cannot be returned in a single manifest." Digest order, because a page's `last`
 * names a place in it whatever is pushed between two pages.
 *
 * Each sequence is read only as far as the page needs (a store reads its rows as they are asked
 * for): a page costs what it holds, not what the subject has. 20,000 referrers of one subject were
 * read, parsed and sorted whole for every page.
 */
export function referrersPage(
  byAge: () => Iterable<Descriptor>,
  byDigest: (after: string | undefined) => Iterable<Descriptor>,
  query: ReferrersQuery,
): ReferrersSlice {
  const limit = query.maxBytes ?? MAX_MANIFEST_BYTES;
  if (query.last === undefined) {
    const all: Descriptor[] = [];
    let bytes = INDEX_FRAME;
    let fits = true;
    for (const d of byAge()) {
      bytes += descriptorBytes(d) + (all.length > 0 ? 1 : 0);
      if (bytes > limit) {
        fits = false;
        break;
      }
      all.push(d);
    }
    if (fits) return { descriptors: all, more: false };
  }
  const items: Descriptor[] = [];
  let bytes = INDEX_FRAME;
  for (const d of byDigest(query.last)) {
    const adds = descriptorBytes(d) + (items.length > 0 ? 1 : 0);
    // At least one to a page, so that paging always moves on; one more seen says more follow.
    if (items.length > 0 && bytes + adds > limit) return { descriptors: items, more: true };
    items.push(d);
    bytes += adds;
  }
  return { descriptors: items, more: false };
}

/** referrersPage of a list held whole (the proxy's, as its upstream gave it), filtered by `artifactType`. */
export function referrersPageOf(all: readonly Descriptor[], query: ReferrersQuery): ReferrersSlice {
  const wanted = query.artifactType === undefined ? all : all.filter((d) => d.artifactType === query.artifactType);
  return referrersPage(
    () => wanted,
    (after) => [...wanted].filter((d) => after === undefined || d.digest > after).sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0)),
    query,
  );
}

function descriptorBytes(d: Descriptor): number {
  return Buffer.byteLength(JSON.stringify(d));
}
