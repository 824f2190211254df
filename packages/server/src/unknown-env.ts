import { TABLE_ENV_KEYS, tableEnvName } from './env-tables.js';

/** Variables Wharf reads besides the WHARF_<KEY> and WHARF_<TABLE>_<KEY> forms of the configuration keys. */
const OTHER_NAMES = ['WHARF_ADMIN_PASSWORD'];

/**
 * The environment's WHARF_* variables that set nothing: a misspelled override (WHARF_PROXY_MANIFESTTTL,
 * WHARF_LISTEN_ADDR) used to be ignored without a word, and the operator believed it applied.
 * `topKeys` are the top-level configuration keys; `named` the variables the configuration names
 * itself (an upstream's `password_env`, `[metrics] token_env`), which may start with WHARF_ too.
 */
export function unknownWharfVariables(env: NodeJS.ProcessEnv, topKeys: readonly string[], named: readonly string[]): string[] {
  const known = new Set([...OTHER_NAMES, ...named, ...topKeys.map((key) => `WHARF_${key.toUpperCase()}`)]);
  for (const [table, keys] of Object.entries(TABLE_ENV_KEYS)) for (const key of Object.keys(keys)) known.add(tableEnvName(table, key));
  return Object.keys(env)
    .filter((name) => name.startsWith('WHARF_') && !known.has(name))
    .sort();
}

/** The variables a configuration document names as where a secret is (`*_env` keys), wherever they are. */
export function namedVariables(doc: unknown): string[] {
  const out: string[] = [];
  const visit = (value: unknown): void => {
    if (Array.isArray(value)) value.forEach(visit);
    else if (typeof value === 'object' && value !== null) {
      for (const [key, inner] of Object.entries(value)) {
        if (key.endsWith('_env') && typeof inner === 'string') out.push(inner);
        else visit(inner);
      }
    }
  };
  visit(doc);
  return out;
}
