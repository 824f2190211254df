import type { TagRecord } from '../sqlite/sqlite-lifecycle.js';

/** One `[[retention]]` entry. The first rule whose pattern matches a repository applies to it. */
export interface RetentionRule {
  /** Glob on repository names: `*` within one path component, `**` across components, `?` one character. */
  readonly repositories: string;
  /** The newest N tags (by last push) are always kept. */
  readonly keepLast?: number;
  /** Tags matching this regular expression are always kept. */
  readonly keepTags?: RegExp;
  /** Tags last pushed longer ago than this (ms) go. */
  readonly deleteOlderThan?: number;
  /** Tags not pulled (GET or HEAD by tag) for this long (ms; counted from the push when never pulled) go. */
  readonly deleteUnpulledFor?: number;
}

export interface RetiredTag {
  readonly repo: string;
  readonly tag: string;
  readonly digest: TagRecord['digest'];
  /** Which condition removed it: "keep_last", "delete_older_than" or "delete_unpulled_for". */
  readonly reason: string;
}

/** Compiles a repository glob to an anchored regular expression. */
export function globToRegExp(glob: string): RegExp {
  let out = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        out += '.*';
        i += 1;
      } else {
        out += '[^/]*';
      }
    } else if (c === '?') {
      out += '[^/]';
    } else {
      out += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
  }
  return new RegExp(`^${out}$`);
}

export function matchingRule(rules: readonly RetentionRule[], repo: string): RetentionRule | undefined {
  return rules.find((r) => globToRegExp(r.repositories).test(repo));
}

/**
 * Which tags of a repository a rule removes. Protected: the newest `keepLast` (by updated_at, then name),
 * and those matching `keepTags`. Of the rest, a tag goes when it is older than `deleteOlderThan` or
 * not pulled for `deleteUnpulledFor`; a rule with `keepLast` and neither duration removes every
 * unprotected tag (keep the newest N, nothing else).
 */
export function planRetention(repo: string, tags: readonly TagRecord[], rule: RetentionRule, now: number): RetiredTag[] {
  const newestFirst = [...tags].sort((a, b) => b.updatedAt - a.updatedAt || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const conditions = rule.deleteOlderThan !== undefined || rule.deleteUnpulledFor !== undefined;
  const out: RetiredTag[] = [];
  newestFirst.forEach((tag, index) => {
    if (rule.keepLast !== undefined && index < rule.keepLast) return;
    if (rule.keepTags?.test(tag.name)) return;
    let reason: string | undefined;
    if (!conditions) {
      reason = 'keep_last';
    } else if (rule.deleteOlderThan !== undefined && tag.updatedAt < now - rule.deleteOlderThan) {
      reason = 'delete_older_than';
    } else if (rule.deleteUnpulledFor !== undefined && (tag.lastPulledAt ?? tag.updatedAt) < now - rule.deleteUnpulledFor) {
      reason = 'delete_unpulled_for';
    }
    if (reason) out.push({ repo, tag: tag.name, digest: tag.digest, reason });
  });
  return out;
}
