/**
 * Token scopes of Docker registry v2 auth: `resourcetype[(class)]:resourcename:action[,action]*`,
 * e.g. `repository:team/app:pull,push` or `registry:catalog:*`. A repository name may carry a
 * `host:port`, so the type ends at the FIRST colon and the actions start after the LAST one.
 */
export interface ResourceScope {
  readonly type: string;
  readonly name: string;
  readonly actions: readonly string[];
}

/** One entry of a token's `access` claim (the same shape). */
export type AccessEntry = ResourceScope;

export const CATALOG_SCOPE: ResourceScope = { type: 'registry', name: 'catalog', actions: ['*'] };

/** Parses one scope; undefined when it is not `type:name:actions`. */
export function parseScope(text: string): ResourceScope | undefined {
  const first = text.indexOf(':');
  const last = text.lastIndexOf(':');
  if (first <= 0 || last === first) return undefined;
  // The deprecated resource class, `repository(plugin)`, does not change what is asked.
  const type = text.slice(0, first).replace(/\([^()]*\)$/, '');
  const name = text.slice(first + 1, last);
  if (!/^[a-z]+$/.test(type) || name === '') return undefined;
  const actions = [...new Set(text.slice(last + 1).split(',').map((a) => a.trim()).filter((a) => a !== ''))];
  return { type, name, actions };
}

/**
 * Parses `scope` parameters: each may hold several space-separated scopes (the OAuth2 POST form sends
 * one string; GET repeats the parameter). Scopes that do not parse are ignored: a grant is the
 * intersection of asked and allowed, and nothing is allowed for those.
 */
export function parseScopes(values: readonly string[]): ResourceScope[] {
  const out: ResourceScope[] = [];
  for (const value of values) {
    for (const part of value.split(/\s+/)) {
      if (part === '') continue;
      const scope = parseScope(part);
      if (scope) out.push(scope);
    }
  }
  return out;
}

export function formatScope(scope: ResourceScope): string {
  return `${scope.type}:${scope.name}:${scope.actions.join(',')}`;
}

/** The actions an access claim grants on one resource (entries for the same resource add up). */
export function grantedActions(access: readonly AccessEntry[], type: string, name: string): Set<string> {
  const out = new Set<string>();
  for (const entry of access) if (entry.type === type && entry.name === name) for (const a of entry.actions) out.add(a);
  return out;
}
