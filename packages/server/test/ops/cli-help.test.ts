import { describe, expect, test } from '@jest/globals';
import { run } from '../helpers/clients.js';
import { WHARF_CLI } from '../helpers/wharf-process.js';

/**
 * `wharf --help` and `wharf <command> --help` describe every command, including subcommands and the
 * ones added later (gc, fsck, import, export...). One child process loads the real CLI with
 * commander's parse stopped, and prints each command's help exactly as `--help` would (a process per
 * command would take seconds); two real `--help` runs check that it is the same text.
 */

interface HelpNode {
  readonly path: string;
  readonly description: string;
  readonly help: string;
  readonly leaf: boolean;
  readonly options: { flags: string; description: string }[];
}

const WALK = `
import { createRequire } from 'node:module';
const cli = ${JSON.stringify(WHARF_CLI)};
const { Command } = await import(createRequire(cli).resolve('commander'));
let program;
Command.prototype.parseAsync = function () { program = this; return Promise.resolve(this); };
await import(cli);
const out = [];
const walk = (cmd, path) => {
  for (const sub of cmd.commands) {
    const full = [...path, sub.name()];
    out.push({
      path: full.join(' '),
      description: sub.description(),
      help: sub.helpInformation(),
      leaf: sub.commands.length === 0,
      options: sub.options.map((o) => ({ flags: o.flags, description: o.description })),
    });
    walk(sub, full);
  }
};
walk(program, []);
process.stdout.write(JSON.stringify({ root: program.helpInformation(), commands: out }));
`;

describe('wharf --help', () => {
  test('every command and subcommand has a description, its options are explained, and its --help shows them', async () => {
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', WALK]);
    const { root, commands } = JSON.parse(stdout) as { root: string; commands: HelpNode[] };
    const paths = commands.map((c) => c.path);
    for (const c of ['serve', 'config check', 'proxy purge', 'user add', 'token create', 'repo public', 'healthcheck']) expect(paths).toContain(c);
    expect(commands.length).toBeGreaterThan(15);
    const undescribed = commands.filter((c) => c.description.trim().length < 5).map((c) => c.path);
    expect(undescribed).toEqual([]);
    const unexplained = commands.flatMap((c) => c.options.filter((o) => !o.description || o.description.trim().length < 3).map((o) => `${c.path} ${o.flags}`));
    expect(unexplained).toEqual([]);
    for (const c of commands) {
      expect(c.help).toContain(`Usage: wharf ${c.path}`);
      expect(c.help.replace(/\s+/g, ' ')).toContain(c.description.replace(/\s+/g, ' '));
    }
    // Every top-level command is listed, with its description, in `wharf --help`.
    for (const c of commands.filter((x) => !x.path.includes(' '))) expect(root.replace(/\s+/g, ' ')).toContain(c.description.replace(/\s+/g, ' ').slice(0, 30));

    // The texts are what the real `--help` prints.
    expect((await run(process.execPath, [WHARF_CLI, '--help'])).stdout).toBe(root);
    const leaf = commands.find((c) => c.path === 'config check')!;
    expect((await run(process.execPath, [WHARF_CLI, 'config', 'check', '--help'])).stdout).toBe(leaf.help);
  });
});
