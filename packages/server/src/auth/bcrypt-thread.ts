import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

/**
 * bcrypt off the event loop: one worker thread, started at the first hash and ended after IDLE_MS
 * without one, hashes one password at a time (bcryptjs's hashSync) while the main thread goes on
 * serving. bcryptjs's own async API runs on the main thread in 100 ms slices, one slice per pending
 * hash in every turn of the event loop: ten logins at once held every other request, /health
 * included, for 4-5 s (distribution, hashing on goroutines, 0.45 s). bcryptjs rather than a native
 * binding because a native one hashes in libuv's thread pool, where it would hold up Wharf's file
 * reads and writes instead.
 *
 * The thread runs an inline CommonJS script that loads bcryptjs by its resolved path, so it works the
 * same from the compiled server and from the TypeScript sources under test.
 */
const IDLE_MS = 30_000;

const SCRIPT = `
const { parentPort, workerData } = require('node:worker_threads');
const bcrypt = require(workerData.bcryptjs);
parentPort.on('message', ({ id, password, salt }) => {
  let reply;
  try { reply = { id, hash: bcrypt.hashSync(password, salt) }; }
  catch (err) { reply = { id, error: err instanceof Error ? err.message : String(err) }; }
  parentPort.postMessage(reply);
});
`;

/** A young generation of 1 MiB and a small old one: bcryptjs needs a few KiB per hash. */
const LIMITS = { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16, stackSizeMb: 1 } as const;

interface Pending {
  readonly resolve: (hash: string) => void;
  readonly reject: (err: Error) => void;
}

interface Job extends Pending {
  readonly id: number;
  readonly password: string;
  readonly salt: string;
  readonly owner: string;
  readonly forget: () => void;
}

/**
 * Checks one owner (a client address) may have waiting at once; past them its next is refused. Turns
 * keep one owner's depth from holding up the others, so this only keeps one from filling MAX_WAITING:
 * it is generous for the many users one NAT address may stand for (CI tokens need no check at all).
 */
const PER_OWNER = 16;
/** Checks waiting in all; past them every new one is refused until the queue drains. */
const MAX_WAITING = 256;

/** Too many checks waiting: refused at once (`ownerLimit`: those of its owner), not queued behind them. */
export class BcryptBusy extends Error {
  override name = 'BcryptBusy';
  constructor(
    readonly ownerLimit: boolean,
    /** Seconds the waiting checks take, about. */
    readonly retryAfter: number,
  ) {
    super(ownerLimit ? 'too many password checks from this address at once' : 'too many password checks waiting');
  }
}

export interface HashOptions {
  /** Whose check it is (a client address): owners take turns, so that one sending many holds up only itself. */
  readonly owner?: string;
  /** Aborted: a check still waiting is dropped (its client went away), and rejects. */
  readonly signal?: AbortSignal;
  /**
   * A login from where its user signed in before (KnownAddresses), which no attacker can claim: when
   * the line is full it takes the place of another owner's newest check, however few that one has.
   */
  readonly known?: boolean;
}

/**
 * Checks are queued here, one on the thread at a time, and the owners' queues take turns: one at
 * a time to the thread kept a single queue, where forty addresses sending ten wrong logins each held
 * a right password for the full two minutes of `request_timeout`; taking turns, a check waits for
 * one of each other owner's at most. A check whose clients all went away is dropped before it runs.
 */
/** The error a check gets when its clients went away first (an AbortError: a client's doing, logged quietly). */
export function clientWentAway(): Error {
  return Object.assign(new Error('client went away'), { name: 'AbortError' });
}

export class BcryptThread {
  private worker: Worker | undefined;
  /** Sent to the thread, not answered yet (one at a time). */
  private readonly pending = new Map<number, Pending>();
  /** Waiting owners, in turn order, each with its checks in arrival order. */
  private readonly waiting = new Map<string, Job[]>();
  private waitingCount = 0;
  private nextId = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  /** Time of the last check the thread made, for Retry-After. */
  private lastCheckMs = 300;

  constructor(
    private readonly idleMs = IDLE_MS,
    private readonly limits: { readonly perOwner: number; readonly total: number } = { perOwner: PER_OWNER, total: MAX_WAITING },
  ) {}

  /** bcrypt of `password` with `salt` (a `$2b$NN$...` prefix or a whole hash, as bcryptjs takes). */
  hash(password: string, salt: string, options: HashOptions = {}): Promise<string> {
    const owner = options.owner ?? '';
    const signal = options.signal;
    if (signal?.aborted) return Promise.reject(clientWentAway());
    const queue = this.waiting.get(owner);
    const own = queue?.length ?? 0;
    const seconds = (): number => Math.max(1, Math.ceil(((this.waitingCount + 1) * this.lastCheckMs) / 1000));
    if (own >= this.limits.perOwner) return Promise.reject(new BcryptBusy(true, seconds()));
    // Full: the owner with the most waiting gives up its newest, so that addresses enough to fill the
    // line (each within its own limit) cannot keep everyone else's logins out; unless none has more
    // than this owner would, or, for a login from a known address, none has any.
    if (this.waitingCount >= this.limits.total && !this.makeRoom(options.known ? 0 : own + 1, owner, seconds())) {
      return Promise.reject(new BcryptBusy(false, seconds()));
    }
    return new Promise<string>((resolve, reject) => {
      const onAbort = (): void => this.drop(job, clientWentAway());
      const forget = (): void => signal?.removeEventListener('abort', onAbort);
      const job: Job = { id: this.nextId++, password, salt, owner, resolve, reject, forget };
      signal?.addEventListener('abort', onAbort, { once: true });
      if (queue) queue.push(job);
      else this.waiting.set(owner, [job]);
      this.waitingCount += 1;
      this.next();
    });
  }

  /** Checks waiting for the thread now (for tests and metrics). */
  get queued(): number {
    return this.waitingCount;
  }

  /** Checks on the thread now, sent to it and not answered yet: 0 or 1 (for tests). */
  get running(): number {
    return this.pending.size;
  }

  /** Sends the next owner's first check to the thread, if none is there. */
  private next(): void {
    if (this.pending.size > 0) return;
    const first = this.waiting.entries().next();
    if (first.done) return;
    const [owner, queue] = first.value;
    const job = queue.shift()!;
    this.waitingCount -= 1;
    // Its turn taken: the owner goes to the back of the line (or out of it).
    this.waiting.delete(owner);
    if (queue.length > 0) this.waiting.set(owner, queue);
    job.forget();
    const worker = this.started();
    const started = Date.now();
    this.pending.set(job.id, {
      resolve: (hash) => {
        this.lastCheckMs = Math.max(50, Date.now() - started);
        job.resolve(hash);
      },
      reject: job.reject,
    });
    worker.ref();
    worker.postMessage({ id: job.id, password: job.password, salt: job.salt });
  }

  /** Drops the newest check of the other owner with the most waiting, if it has more than `than`; whether it did. */
  private makeRoom(than: number, owner: string, retryAfter: number): boolean {
    let largest: Job[] | undefined;
    // Among equals, the one last in the turns: its check would have waited longest.
    for (const [who, queue] of this.waiting) if (who !== owner && (!largest || queue.length >= largest.length)) largest = queue;
    if (!largest || largest.length <= than) return false;
    const job = largest[largest.length - 1]!;
    this.drop(job, new BcryptBusy(true, retryAfter));
    job.forget();
    return true;
  }

  /** A waiting check leaves the queue (its client went away). */
  private drop(job: Job, err: Error): void {
    const queue = this.waiting.get(job.owner);
    const at = queue?.indexOf(job) ?? -1;
    if (!queue || at < 0) return;
    queue.splice(at, 1);
    if (queue.length === 0) this.waiting.delete(job.owner);
    this.waitingCount -= 1;
    job.reject(err);
  }

  /** Ends the thread (pending hashes fail). */
  async close(): Promise<void> {
    const worker = this.worker;
    this.stopped(new Error('password hashing stopped'));
    await worker?.terminate();
  }

  private started(): Worker {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (this.worker) return this.worker;
    const worker = new Worker(SCRIPT, {
      eval: true,
      workerData: { bcryptjs: createRequire(import.meta.url).resolve('bcryptjs') },
      resourceLimits: LIMITS,
      stdout: false,
      stderr: false,
    });
    worker.on('message', (reply: { id: number; hash?: string; error?: string }) => this.answered(worker, reply));
    worker.on('error', (err) => {
      if (this.worker === worker) this.stopped(err);
    });
    worker.on('exit', () => {
      if (this.worker === worker) this.stopped(new Error('the password hashing thread exited'));
    });
    worker.unref();
    this.worker = worker;
    return worker;
  }

  private answered(worker: Worker, reply: { id: number; hash?: string; error?: string }): void {
    const waiting = this.pending.get(reply.id);
    if (!waiting) return;
    this.pending.delete(reply.id);
    if (reply.hash !== undefined) waiting.resolve(reply.hash);
    else waiting.reject(new Error(reply.error ?? 'bcrypt failed'));
    if (this.worker !== worker) return;
    this.next();
    if (this.pending.size > 0) return;
    worker.unref();
    this.idleTimer = setTimeout(() => {
      if (this.worker !== worker || this.pending.size > 0) return;
      this.worker = undefined;
      void worker.terminate();
    }, this.idleMs);
    this.idleTimer.unref();
  }

  /** Fails every pending and waiting hash and forgets the thread (the next hash starts another). */
  private stopped(err: Error): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    this.worker = undefined;
    const failed: Pending[] = [...this.pending.values()];
    this.pending.clear();
    for (const queue of this.waiting.values()) for (const job of queue) (job.forget(), failed.push(job));
    this.waiting.clear();
    this.waitingCount = 0;
    for (const p of failed) p.reject(err);
  }
}
