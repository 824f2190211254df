import { isAbsolute, resolve } from 'node:path';
import type { Command } from 'commander';

/** Options whose value is a path the user typed. */
const PATH_OPTIONS = ['config', 'output'] as const;
/** Arguments whose value is a path the user typed (`-` is standard input). */
const PATH_ARGUMENTS = new Set(['file']);

/**
 * The folder that relative paths typed on the command line are relative to. `pnpm wharf …` (and
 * `npm run wharf`) runs the script in the repository's root, from whatever folder of it without a
 * package.json of its own it was typed in (in packages/*: `pnpm -w wharf`), and
 * names that folder in INIT_CWD: `cd backups && pnpm -s wharf import app.tar` means backups/app.tar.
 * Outside a package script, the working directory.
 */
export function typedFrom(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): string {
  return env.npm_lifecycle_event !== undefined && env.INIT_CWD ? env.INIT_CWD : cwd;
}

/**
 * Makes the paths a command was given (`--config`, `--output`, import's file) absolute from
 * `typedFrom()` before its action runs. Defaults are not typed: `configuration.toml` stays the one in
 * the working directory (the repository's root under pnpm).
 */
export function resolveTypedPaths(program: Command, from: string = typedFrom()): void {
  if (from === process.cwd()) return;
  program.hook('preAction', (_program, command) => {
    for (const option of PATH_OPTIONS) {
      const value: unknown = command.getOptionValue(option);
      if (command.getOptionValueSource(option) === 'cli' && typeof value === 'string' && !isAbsolute(value)) {
        command.setOptionValueWithSource(option, resolve(from, value), 'cli');
      }
    }
    command.registeredArguments.forEach((argument, index) => {
      const value: unknown = command.processedArgs[index];
      if (PATH_ARGUMENTS.has(argument.name()) && typeof value === 'string' && value !== '-' && !isAbsolute(value)) {
        command.processedArgs[index] = resolve(from, value);
      }
    });
  });
}
