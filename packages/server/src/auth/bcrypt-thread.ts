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

export class BcryptThread {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(private readonly idleMs = IDLE_MS) {}

  /** bcrypt of `password` with `salt` (a `$2b$NN$...` prefix or a whole hash, as bcryptjs takes). */
  hash(password: string, salt: string): Promise<string> {
    const worker = this.started();
    const id = this.nextId++;
    return new Promise<string>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) worker.ref();
      worker.postMessage({ id, password, salt });
    });
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
    if (this.pending.size > 0 || this.worker !== worker) return;
    worker.unref();
    this.idleTimer = setTimeout(() => {
      if (this.worker !== worker || this.pending.size > 0) return;
      this.worker = undefined;
      void worker.terminate();
    }, this.idleMs);
    this.idleTimer.unref();
  }

  /** Fails every pending hash and forgets the thread (the next hash starts another). */
  private stopped(err: Error): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    this.worker = undefined;
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const p of waiting) p.reject(err);
  }
}
