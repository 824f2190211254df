import type { Digest } from '../digest.js';
import type { RepositoryGarbage, RepositoryGraph } from '../sqlite/sqlite-lifecycle.js';

export interface MarkOptions {
  /** Untagged manifests that nothing reachable references go (otherwise every manifest is a root). */
  readonly deleteUntagged: boolean;
  /** Manifests created or whose grace started over (manifest_grace), and links made, at or after this time (ms) are kept whatever the graph says. */
  readonly cutoff: number;
  /** Manifests whose tags retention removed in this run: not roots, even without deleteUntagged or within the grace period. */
  readonly retired?: ReadonlySet<Digest>;
  /** Tags to treat as absent (a dry run of retention, which deletes nothing). */
  readonly ignoredTags?: ReadonlySet<string>;
}

/**
 * The mark phase for one repository, as a pure function of its graph. Roots: every tag; every
 * manifest without deleteUntagged; with it, untagged manifests pushed, or whose grace started over (a
 * tag left them, a push's HEAD asked for them), at or after the cutoff. From the roots,
 * every manifest an index references (kind 'manifest') and every manifest whose `subject` is kept (a
 * referrer of a kept image stays). Garbage: the manifests not reached, and the links to blobs that no
 * kept manifest references and that were made before the cutoff (a blob pushed before its manifest
 * survives the grace period).
 */
export function markRepository(graph: RepositoryGraph, options: MarkOptions): RepositoryGarbage & { readonly kept: ReadonlySet<Digest> } {
  const retired = options.retired ?? new Set<Digest>();
  const kept = new Set<Digest>();
  const queue: Digest[] = [];
  const keep = (digest: Digest) => {
    if (kept.has(digest)) return;
    kept.add(digest);
    queue.push(digest);
  };
  const present = new Set(graph.manifests.map((m) => m.digest));
  for (const tag of graph.tags) if (!options.ignoredTags?.has(tag.name)) keep(tag.digest);
  for (const m of graph.manifests) {
    if (retired.has(m.digest)) continue;
    if (!options.deleteUntagged || m.createdAt >= options.cutoff || (m.graceFrom ?? -Infinity) >= options.cutoff) keep(m.digest);
  }
  const children = new Map<Digest, Digest[]>();
  const blobsOf = new Map<Digest, Digest[]>();
  for (const ref of graph.references) {
    const map = ref.kind === 'manifest' ? children : blobsOf;
    let list = map.get(ref.parent);
    if (!list) map.set(ref.parent, (list = []));
    list.push(ref.child);
  }
  const referrers = new Map<Digest, Digest[]>();
  for (const m of graph.manifests) {
    if (!m.subject) continue;
    let list = referrers.get(m.subject);
    if (!list) referrers.set(m.subject, (list = []));
    list.push(m.digest);
  }
  while (queue.length > 0) {
    const digest = queue.pop()!;
    for (const child of children.get(digest) ?? []) if (present.has(child)) keep(child);
    for (const referrer of referrers.get(digest) ?? []) keep(referrer);
  }
  const manifests = graph.manifests.filter((m) => !kept.has(m.digest)).map((m) => m.digest);
  const referenced = new Set<Digest>();
  for (const digest of kept) for (const blob of blobsOf.get(digest) ?? []) referenced.add(blob);
  const links = graph.links.filter((l) => !referenced.has(l.digest) && l.linkedAt < options.cutoff);
  return { manifests, links, kept };
}
