#!/usr/bin/env node
import { openConfiguredDatabase } from './configured-database.js';
import { Command } from 'commander';
import { CacheEviction } from '@wharf/proxy';
import { FsBlobStore, isBusy, isValidRepositoryName } from '@wharf/registry-core';
import { ConfigError, loadConfig } from './config.js';
import { UsageError } from './config-error.js';
import { findUpstream } from './proxy-config.js';
import { startServer } from './server.js';
import { registerAuthCommands } from './cli-auth.js';
import { registerStorageCommands } from './cli-storage.js';
import { checkTlsFiles, registerOpsCommands } from './cli-ops.js';
import { holdYoungGeneration } from './young-generation.js';
import { detachLostStreams, lostTerminalStreams } from './lost-terminal.js';
import { checkStorage } from './storage-check.js';
import { refuseGroupNamedLikeUser, userNamesIn } from './auth/group-clash.js';
import { counted } from './cli-progress.js';
import { resolveTypedPaths } from './cli-paths.js';

/** The same signal this soon after the first is one signal, delivered twice (see serve). */
const SAME_SIGNAL_MS = 250;

const program = new Command();
program.name('wharf').description('Wharf: a container registry and pull-through dependency proxy').showHelpAfterError();

/** SQLite's codes for what the system refused (a read-only or full disk; a lock: isBusy, first), not for a query Wharf got wrong. */
const SYSTEM_SQLITE_CODES = /^SQLITE_(LOCKED|READONLY|CANTOPEN|FULL|IOERR|PERM|AUTH)(_[A-Z_]+)?$/;

function fail(err: unknown): never {
  if (err instanceof UsageError) {
    process.stderr.write(`wharf: ${err.message}\n`);
    process.exit(2);
  }
  if (err instanceof ConfigError) {
    process.stderr.write(`wharf: configuration error: ${err.message}\n`);
    process.exit(2);
  }
  // Ctrl+C (or Ctrl+D) at a password prompt: the user's choice, not a failure to explain with a stack.
  if (err instanceof Error && err.name === 'AbortError' && /Ctrl\+[CD]/.test(err.message)) {
    process.stderr.write('wharf: cancelled\n');
    process.exit(err.message.includes('Ctrl+C') ? 130 : 1);
  }
  // A system's refusal (a permission, a full disk, a missing folder, another filesystem, a database
  // another process holds locked) is the operator's to act on, said in its own words: a stack trace
  // only for what Wharf did not expect.
  const code = (err as { code?: unknown } | null)?.code;
  if (isBusy(err)) {
    // A write transaction is all or nothing: what it was to change is unchanged, and running the
    // command again is safe.
    process.stderr.write('wharf: the database is locked: another process (the server, another wharf command) held its write lock for 5 s; the write that waited changed nothing, and the command can be run again\n');
    process.exit(1);
  }
  const said = err instanceof Error && typeof code === 'string' && (/^E[A-Z]+$/.test(code) || SYSTEM_SQLITE_CODES.test(code));
  process.stderr.write(`wharf: ${err instanceof Error ? (said ? err.message : (err.stack ?? err.message)) : String(err)}\n`);
  process.exit(1);
}

program
  .command('serve')
  .description('start the registry with the given configuration (default ./configuration.toml)')
  .option('-c, --config <file>', 'configuration file', 'configuration.toml')
  .action(async (opts: { config: string }) => {
    let running: Awaited<ReturnType<typeof startServer>>;
    let shutdownTimeout: number;
    holdYoungGeneration();
    try {
      const c = loadConfig({ file: opts.config });
      shutdownTimeout = c.shutdownTimeout;
      running = await startServer(c);
    } catch (err) {
      fail(err);
    }
    // A promise nobody handles is a bug, and node's default ends the process with it: every pull and
    // push in flight would fail with it. Logged, loud, and the registry goes on.
    process.on('unhandledRejection', (reason) => {
      running.metrics.unhandledRejection();
      running.logger.error({ err: reason }, 'unhandled promise rejection (a bug; please report it): the server goes on');
    });
    let stopping: { signal: string; at: number } | undefined;
    /** Standard streams whose terminal hung up: nothing more is written to them. */
    let lost: number[] = [];
    const say = (line: string): void => {
      if (!lost.includes(2)) process.stderr.write(line);
    };
    const exit = (code: number): never => {
      detachLostStreams(lost);
      process.exit(code);
    };
    const stop = (signal: string) => {
      // Whatever the signal: a terminal can hang up without a SIGHUP reaching the server (one started
      // in the background of a shell that then exits), and its SIGTERM stop met the same abort.
      if (lost.length === 0) lost = lostTerminalStreams();
      if (stopping) {
        // One signal can arrive twice: a Ctrl-C reaches the terminal's whole foreground group, and a
        // SIGTERM the whole process group (systemd's `stop`, `kill -- -PGID`), while a parent that
        // forwards signals (pnpm running `pnpm wharf serve`) sends it on. That is not a second one.
        if (stopping.signal === signal && Date.now() - stopping.at < SAME_SIGNAL_MS) return;
        // A second signal: the operator does not want to wait.
        say(`wharf: second ${signal}, exiting now\n`);
        exit(1);
      }
      stopping = { signal, at: Date.now() };
      say(`wharf: ${signal} received; finishing requests in flight (up to ${shutdownTimeout / 1000} s), then exiting\n`);
      running.close().then(
        () => exit(0),
        (err: unknown) => fail(err),
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    // The terminal Wharf was started from went away (an ssh session closed): node's default ends the
    // process at once, cutting every transfer without its log line. Stopped as SIGTERM stops it.
    // Its terminal gone, nothing can be shown on it, and node's exit would abort on it (lost-terminal.ts).
    process.on('SIGHUP', () => stop('SIGHUP'));
  });

const config = program.command('config').description('configuration tools');
config
  .command('check')
  .description('validate the configuration without starting')
  .option('-c, --config <file>', 'configuration file', 'configuration.toml')
  .action(async (opts: { config: string }) => {
    try {
      const c = loadConfig({ file: opts.config });
      const tls = checkTlsFiles(c);
      // What a start refuses besides the file itself: storage it cannot use, a group named like a user.
      await checkStorage(c, false);
      refuseGroupNamedLikeUser(c.auth.groups, userNamesIn(c.database));
      for (const warning of c.warnings ?? []) process.stderr.write(`warning: ${warning}\n`);
      process.stdout.write(`configuration OK: listen ${c.listen.host}:${c.listen.port}, registry_storage ${c.registryStorage}, database ${c.database}, ${tls}\n`);
    } catch (err) {
      fail(err);
    }
  });

const proxy = program.command('proxy').description('dependency proxy tools');
proxy
  .command('purge')
  .description('forget what the proxy cached from an upstream, or from one of its repositories')
  .argument('<upstream>', 'upstream key or alias, e.g. docker.io')
  .argument('[repository]', 'repository at that upstream, e.g. library/alpine')
  .option('-c, --config <file>', 'configuration file', 'configuration.toml')
  .action(async (name: string, repository: string | undefined, opts: { config: string }) => {
    try {
      const c = loadConfig({ file: opts.config, secrets: false });
      const upstream = findUpstream(c.proxy, name);
      if (!upstream) throw new ConfigError(`no upstream "${name}" in the configuration`);
      // As the admin endpoint: a name no repository can have is a mistake to say, not "0 purged".
      if (repository !== undefined && !isValidRepositoryName(repository)) {
        throw new UsageError(`"${repository}" is not a repository name (lower-case path components such as library/alpine)`);
      }
      const repo = repository && upstream.officialPrefix && !repository.includes('/') ? `${upstream.officialPrefix}${repository}` : repository;
      const db = openConfiguredDatabase(c.database);
      try {
        const report = await new CacheEviction(db, new FsBlobStore(c.proxyStorage, c.temporaryRegistryStorage)).purge(upstream.key, repo);
        process.stdout.write(`purged ${upstream.key}${repo ? `/${repo}` : ''}: ${counted(report.manifests, 'manifest')}, ${counted(report.blobs, 'blob')}, ${counted(report.bytes, 'byte')}\n`);
      } finally {
        db.close();
      }
    } catch (err) {
      fail(err);
    }
  });

registerAuthCommands(program, fail);
registerStorageCommands(program, fail);
registerOpsCommands(program, fail);

resolveTypedPaths(program);
await program.parseAsync(process.argv);
