import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runFails } from '../helpers/clients.js';
import { WHARF_CLI, freePort, startWharfProcess } from '../helpers/wharf-process.js';
import { writeOpsConfig } from './helpers.js';

/**
 * A storage folder that is there but that Wharf's user cannot write (a root-owned bind mount under a
 * container that runs as `node`) passed the start and /ready, then every push failed with a bare 500
 * and every proxied blob was downloaded again at each pull. Wharf now refuses to start, naming the key.
 * As root, which writes anywhere, the server runs without CAP_DAC_OVERRIDE (util-linux's setpriv), so
 * that the folder's mode binds it as it binds another user.
 */
describe('a storage folder Wharf cannot write stops the start, naming its key', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-unwritable-'));
  });
  afterAll(async () => {
    for (const folder of ['registry', 'proxy']) await chmod(join(root, 'storage', folder), 0o700).catch(() => undefined);
    await rm(root, { recursive: true, force: true });
  });

  /** `wharf serve` as a user the folder's mode holds back: this one, or root without its override. */
  const serve = (config: string) => {
    const asRoot = process.getuid?.() === 0;
    const [cmd, args] = asRoot
      ? ['setpriv', ['--bounding-set=-dac_override,-dac_read_search', process.execPath, WHARF_CLI, 'serve', '--config', config]]
      : [process.execPath, [WHARF_CLI, 'serve', '--config', config]];
    return runFails(cmd, args, { timeoutMs: 30_000 });
  };

  for (const [key, folder] of [
    ['registry_storage', 'registry'],
    ['proxy_storage', 'proxy'],
  ] as const) {
    test(`"${key}"`, async () => {
      const port = await freePort();
      const config = await writeOpsConfig(root, port);
      for (const f of ['registry', 'proxy', '_tmp']) await mkdir(join(root, 'storage', f), { recursive: true, mode: 0o700 });
      await chmod(join(root, 'storage', folder), 0o500);
      try {
        const refused = await serve(config);
        expect(refused.exitCode).toBe(2);
        expect(refused.stderr).toMatch(new RegExp(`^wharf: configuration error: "${key}" \\(${join(root, 'storage', folder)}\\) cannot be written by the user Wharf runs as \\(uid \\d+\\): EACCES`));
      } finally {
        await chmod(join(root, 'storage', folder), 0o700);
      }
      // No probe file is left in the folders it could write.
      expect((await readdir(join(root, 'storage', '_tmp'))).filter((f) => f.startsWith('.wharf-start-'))).toEqual([]);
    });
  }

  test('with the folders writable it starts, and leaves no probe file behind', async () => {
    const port = await freePort();
    const p = await startWharfProcess(await writeOpsConfig(root, port), port);
    expect((await fetch(`${p.url}/v2/`)).status).toBe(200);
    await p.kill('SIGTERM');
    for (const f of ['registry', 'proxy', '_tmp']) expect((await readdir(join(root, 'storage', f))).filter((n) => n.startsWith('.wharf-start-'))).toEqual([]);
  });
});

/** A `database` or `listen` that cannot be used: one line naming the key (exit 2), not a stack trace. */
describe('an unusable database or listen address stops the start with one line naming the key', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'wharf-refusals-'));
  });
  afterAll(async () => rm(root, { recursive: true, force: true }));

  /** `wharf serve`'s one line of refusal, with `env` over the configuration's keys. */
  const refused = async (env: NodeJS.ProcessEnv, tables: readonly string[] = []): Promise<string> => {
    const port = await freePort();
    const config = await writeOpsConfig(root, port, { tables });
    const run = await runFails(process.execPath, [WHARF_CLI, 'serve', '--config', config], { timeoutMs: 30_000, env: { ...process.env, ...env } });
    expect(run.exitCode).toBe(2);
    expect(run.stderr.trim().split('\n')).toHaveLength(1);
    return run.stderr.trim();
  };

  test('database: a folder, a file that is not SQLite', async () => {
    await mkdir(join(root, 'a-folder.db'), { recursive: true });
    expect(await refused({ WHARF_DATABASE: join(root, 'a-folder.db') })).toMatch(/^wharf: configuration error: "database" \(.*a-folder\.db\) cannot be opened: /);
    await writeFile(join(root, 'not-sqlite.db'), 'this is not a database, only text long enough to be read as a header '.repeat(20));
    expect(await refused({ WHARF_DATABASE: join(root, 'not-sqlite.db') })).toMatch(/^wharf: configuration error: "database" \(.*not-sqlite\.db\) cannot be opened: file is not a database$/);
  });

  test('listen: a host name that does not resolve', async () => {
    // (auth off is for loopback only, unless an open registry is meant: this test means it)
    expect(await refused({ WHARF_LISTEN: `no-such-host.invalid:${await freePort()}` }, ['allow_anonymous_push = true'])).toMatch(/^wharf: configuration error: cannot listen on no-such-host\.invalid:\d+ \((ENOTFOUND|EAI_AGAIN)\): set "listen"/);
  });
});
