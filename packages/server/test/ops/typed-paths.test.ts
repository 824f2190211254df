import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { typedFrom } from '../../src/cli-paths.js';
import { WHARF_CLI } from '../helpers/wharf-process.js';

/**
 * `pnpm -s wharf …` runs the CLI in the repository's root whatever folder it was typed in: the paths
 * typed are relative to that folder (INIT_CWD), as the user sees them; defaults stay in the root.
 */
describe('paths typed under pnpm', () => {
  let dir: string;
  let typed: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-typed-'));
    typed = join(dir, 'backups');
    await mkdir(typed);
    await writeFile(join(typed, 'mine.toml'), ['listen = "127.0.0.1:0"', 'registry_storage = "r"', 'temporary_registry_storage = "t"', 'proxy_storage = "p"', '[auth]', 'enabled = false', ''].join('\n'));
    await writeFile(join(typed, 'app.tar'), 'not a tarball');
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** The CLI run in `dir` (the repository's root, as pnpm runs it), typed in `typed` when `script`. */
  function cli(args: string[], script: boolean) {
    const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' };
    delete env.INIT_CWD;
    delete env.npm_lifecycle_event;
    if (script) Object.assign(env, { INIT_CWD: typed, npm_lifecycle_event: 'wharf' });
    const out = spawnSync(process.execPath, [WHARF_CLI, ...args], { cwd: dir, env, encoding: 'utf8', timeout: 60_000 });
    return { code: out.status, stdout: out.stdout, stderr: out.stderr };
  }

  test('--config and a file argument are found where they were typed', () => {
    expect(cli(['config', 'check', '--config', 'mine.toml'], true)).toMatchObject({ code: 0 });
    const imported = cli(['import', 'app.tar', '--config', 'mine.toml'], true);
    expect(imported.code).toBe(1);
    expect(imported.stderr).not.toMatch(/ENOENT/);
  });

  test('outside a package script, relative to the working directory, as before', () => {
    const checked = cli(['config', 'check', '--config', 'mine.toml'], false);
    expect(checked.code).toBe(2);
    expect(checked.stderr).toContain(`cannot read configuration file ${join(dir, 'mine.toml')}`);
  });

  test('typedFrom: INIT_CWD only inside a package script', () => {
    expect(typedFrom({ INIT_CWD: '/a', npm_lifecycle_event: 'wharf' }, '/repo')).toBe('/a');
    expect(typedFrom({ INIT_CWD: '/a' }, '/repo')).toBe('/repo');
    expect(typedFrom({ npm_lifecycle_event: 'wharf' }, '/repo')).toBe('/repo');
  });
});
