import { readFileSync } from 'node:fs';

/**
 * The process's soft limit `name` as /proc/self/limits words it ("Max open files", "Max address
 * space"), in its unit; undefined when unlimited, or where it cannot be read (no /proc: not Linux).
 */
export function processLimit(name: string): number | undefined {
  try {
    const text = readFileSync('/proc/self/limits', 'utf8');
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    const soft = line?.slice(name.length).trim().split(/\s+/)[0];
    return soft === undefined || soft === 'unlimited' || !/^\d+$/.test(soft) ? undefined : Number(soft);
  } catch {
    return undefined;
  }
}
