import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { WHARF_CLI, freePort, startWharfProcess, writeWharfConfig } from '../helpers/wharf-process.js';

/** A module hook (node:module `register`) that writes down every module the process resolves. */
const HOOKS = `
import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const found = await next(specifier, context);
  appendFileSync(process.env.WHARF_TEST_LOADED, found.url + '\\n');
  return found;
}
`;

const loads = (list: string, pkg: string) => list.split('\n').some((url) => url.includes(`/node_modules/${pkg}/`) || url.includes(`/node_modules/.pnpm/${pkg}@`));

/**
 * bcryptjs and jose cost a server about 3 MiB of RSS; only auth uses them. A server with auth off,
 * the bench's and many a CI runner's, starts without them; the commands that hash passwords load them.
 */
describe('bcryptjs and jose, loaded by auth only', () => {
  let dir: string;
  let nodeOptions: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-lazy-auth-'));
    await writeFile(join(dir, 'hooks.mjs'), HOOKS);
    const register = join(dir, 'register.mjs');
    await writeFile(register, `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(join(dir, 'hooks.mjs')).href)});\n`);
    nodeOptions = `--import ${pathToFileURL(register).href}`;
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('a server with auth off serves without loading either', async () => {
    const log = join(dir, 'serve.txt');
    const port = await freePort();
    const wharf = await startWharfProcess(await writeWharfConfig(dir, port), port, process.execPath, WHARF_CLI, { NODE_OPTIONS: nodeOptions, WHARF_TEST_LOADED: log });
    try {
      expect((await fetch(`${wharf.url}/v2/lazy/app/manifests/1`)).status).toBe(404);
      expect((await fetch(`${wharf.url}/auth/token?service=wharf`)).status).toBeGreaterThanOrEqual(400);
    } finally {
      await wharf.kill('SIGTERM');
    }
    const list = await readFile(log, 'utf8');
    expect(list).toContain('/dist/auth/credentials.js');
    expect(list).not.toContain('/dist/auth/auth-service.js');
    expect(loads(list, 'bcryptjs')).toBe(false);
    expect(loads(list, 'jose')).toBe(false);
  });

  test('`wharf user add` loads bcryptjs and hashes the password', async () => {
    const log = join(dir, 'user-add.txt');
    const config = await writeWharfConfig(dir, await freePort());
    const run = spawnSync(process.execPath, [WHARF_CLI, 'user', 'add', 'lazy', '--password-stdin', '--config', config], {
      cwd: dir,
      input: 'a-long-enough-password-42\n',
      env: { ...process.env, NODE_OPTIONS: nodeOptions, WHARF_TEST_LOADED: log },
      encoding: 'utf8',
    });
    expect(run.stderr).toContain('user "lazy" added');
    expect(run.status).toBe(0);
    expect(loads(await readFile(log, 'utf8'), 'bcryptjs')).toBe(true);
  });
});
