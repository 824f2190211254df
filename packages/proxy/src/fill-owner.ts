import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';

/**
 * Who a fill's temp file belongs to, written into its name: `fill-<host>-<pid>-<start>-<fills>-...`,
 * where `host` is a hash of the host's name, `start` the process's start (clock ticks since boot, from
 * /proc), and `fills` the BlobFills instance within that process. Two servers may run on one storage
 * (README, "Storage"): a server starting takes back only the files of a process that is gone, never
 * those of one still writing them.
 */
export interface FillOwner {
  readonly host: string;
  readonly pid: number;
  readonly start: string;
  readonly fills: number;
}

const HOST = createHash('sha256').update(hostname()).digest('hex').slice(0, 8);

/** The start of process `pid` as /proc has it (field 22 of its stat), undefined when there is no such process or no /proc. */
function startOf(stat: string): string | undefined {
  // The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields[19];
}

function ownStart(): string {
  try {
    return startOf(readFileSync('/proc/self/stat', 'utf8')) ?? fallbackStart();
  } catch {
    return fallbackStart();
  }
}

/** Without /proc: when this process started, in ms since the epoch. */
function fallbackStart(): string {
  return `t${Math.round(performance.timeOrigin)}`;
}

const START = ownStart();
/** BlobFills instances of this process not closed yet (tests run several servers in one process). */
const liveFills = new Set<number>();
let lastFills = 0;

/** A new BlobFills instance of this process: its owner, live until `release`. */
export function newFillOwner(): FillOwner {
  lastFills += 1;
  liveFills.add(lastFills);
  return { host: HOST, pid: process.pid, start: START, fills: lastFills };
}

/** The instance is closed: a later start in this process may take its files back. */
export function releaseFillOwner(owner: FillOwner): void {
  if (owner.host === HOST && owner.pid === process.pid && owner.start === START) liveFills.delete(owner.fills);
}

/** The prefix of the names of `owner`'s temp files (after `fill-`). */
export function ownerTag(owner: FillOwner): string {
  return `${owner.host}-${owner.pid}-${owner.start}-${owner.fills}`;
}

/** The owner a temp file's name (after `fill-`) gives; undefined for names of another form (older versions'). */
export function ownerOfName(name: string): FillOwner | undefined {
  const match = /^([0-9a-f]{8})-(\d+)-(t?\d+)-(\d+)-/.exec(name);
  if (!match) return undefined;
  return { host: match[1]!, pid: Number(match[2]), start: match[3]!, fills: Number(match[4]) };
}

/**
 * Whether `owner` may still be using its files: 'live' (a process of this host that still runs, or
 * an instance of this process not closed), 'gone' (its process ended, or its instance closed), or
 * 'elsewhere' (another host, whose processes cannot be seen from here).
 */
export async function ownerState(owner: FillOwner): Promise<'live' | 'gone' | 'elsewhere'> {
  if (owner.host !== HOST) return 'elsewhere';
  if (owner.pid === process.pid && owner.start === START) return liveFills.has(owner.fills) ? 'live' : 'gone';
  if (owner.start.startsWith('t')) {
    // No /proc to tell a process from a later one with the same number: alive is alive.
    try {
      process.kill(owner.pid, 0);
      return 'live';
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'EPERM' ? 'live' : 'gone';
    }
  }
  const stat = await readFile(`/proc/${owner.pid}/stat`, 'utf8').catch(() => undefined);
  return stat !== undefined && startOf(stat) === owner.start ? 'live' : 'gone';
}
