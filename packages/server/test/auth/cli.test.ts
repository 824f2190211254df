import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { openDatabase } from '@wharf/registry-core';
import type { TestRegistry } from '../helpers/start-registry.js';
import { RegistryClient, basic, bcryptHash, fetchToken, pushWith, startAuthRegistry, type TokenReply } from './helpers.js';

const CLI = resolve(import.meta.dirname, '../../dist/cli.js');

interface Result {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the built `wharf` with `stdin` (empty: not a terminal, nothing to read). */
function wharf(args: readonly string[], stdin = ''): Promise<Result> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolveRun({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

const CAROL = 'carol-config-pw1';

describe('wharf user, token and repo commands', () => {
  let dir: string;
  let file: string;
  let reg: TestRegistry;
  const cli = (args: string[], stdin = '') => wharf([...args, '--config', file], stdin);
  const auth = {
    users: [
      { name: 'carol', password_hash: bcryptHash(CAROL) },
      { name: 'root', password_hash: bcryptHash('root-config-pw1'), admin: true },
    ],
    groups: [{ name: 'team', members: { carol: 'developer', alice: 'reader' } }],
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-auth-cli-'));
    file = join(dir, 'wharf.toml');
    const q = JSON.stringify;
    await writeFile(
      file,
      [
        'listen = "127.0.0.1:0"',
        `registry_storage = ${q(join(dir, 'registry'))}`,
        `temporary_registry_storage = ${q(join(dir, '_tmp'))}`,
        `proxy_storage = ${q(join(dir, 'proxy'))}`,
        `database = ${q(join(dir, 'wharf.db'))}`,
        '[auth]',
        ...auth.users.map((u) => `[[auth.users]]\nname = ${q(u.name)}\npassword_hash = ${q(u.password_hash)}\nadmin = ${u.admin === true}`),
        '[[auth.groups]]',
        'name = "team"',
        'members = { carol = "developer", alice = "reader" }',
        // An upstream whose password is in a variable the commands' environment does not have: only
        // the server and `config check` need it (every command here runs without it).
        '[proxy.upstreams.corp]',
        'url = "https://registry.corp.example"',
        'username = "robot"',
        'password_env = "WHARF_TEST_CORP_PASSWORD"',
        // And a CA file the commands cannot read (the service's alone): only the server reads it.
        `ca_file = ${q(join(dir, 'only-the-service-reads-this.pem'))}`,
        '',
      ].join('\n'),
    );
    reg = await startAuthRegistry({ root: dir, authSettings: auth });
  });

  afterAll(async () => {
    await reg?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const status = async (user: string, password: string, path = '/v2/') => (await fetch(`${reg.url}${path}`, { headers: { Authorization: basic(user, password) } })).status;

  test('user add with --password-stdin, or a generated password printed once on stdout alone', async () => {
    const alice = await cli(['user', 'add', 'alice', '--password-stdin'], 'alice-cli-pw1\n');
    expect(alice).toMatchObject({ code: 0, stdout: '' });
    const bob = await cli(['user', 'add', 'bob']);
    expect(bob.code).toBe(0);
    const generated = bob.stdout.trim();
    expect(generated).toMatch(/^[A-Za-z0-9_-]{24}$/);
    expect(bob.stderr).toContain('shown only this once');
    expect(await status('alice', 'alice-cli-pw1')).toBe(200);
    expect(await status('bob', generated)).toBe(200);
  });

  test('a command whose write waited past the lock another process held says so in one line: nothing changed, run it again', async () => {
    const other = openDatabase(join(dir, 'wharf.db'));
    try {
      other.exec('BEGIN IMMEDIATE');
      const locked = await cli(['user', 'add', 'dave', '--password-stdin'], 'dave-cli-pw12\n');
      other.exec('COMMIT');
      expect(locked.code).toBe(1);
      expect(locked.stderr).toBe(
        'wharf: the database is locked: another process (the server, another wharf command) held its write lock for 5 s; the write that waited changed nothing, and the command can be run again\n',
      );
    } finally {
      if (other.inTransaction) other.exec('ROLLBACK');
      other.close();
    }
    expect(await status('dave', 'dave-cli-pw12')).toBe(401);
    expect((await cli(['user', 'add', 'dave', '--password-stdin'], 'dave-cli-pw12\n')).code).toBe(0);
    expect(await status('dave', 'dave-cli-pw12')).toBe(200);
  }, 30_000);

  test("the upstream's password and CA file are needed by `config check` (and the server), not by the other commands", async () => {
    const check = await cli(['config', 'check']);
    expect(check.code).not.toBe(0);
    expect(check.stderr).toContain('"proxy.upstreams.corp.password_env" names WHARF_TEST_CORP_PASSWORD, which is not set');
    const purge = await cli(['proxy', 'purge', 'corp']);
    expect(purge).toMatchObject({ code: 0, stdout: 'purged corp: 0 manifests, 0 blobs, 0 bytes\n' });
    expect((await cli(['user', 'list'])).code).toBe(0);
  });

  test('Ctrl+C at the password prompt of a terminal: "cancelled", exit 130, no stack trace, no user', async () => {
    // `script` gives the command a terminal, so that it asks for the password; Ctrl+C is its byte on that terminal.
    const line = `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} user add quitter --config ${JSON.stringify(file)}`;
    const terminal = spawn('script', ['-qfec', line, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '', HOME: dir } });
    let out = '';
    const asked = new Promise<void>((resolveAsked) =>
      terminal.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('Password')) resolveAsked();
      }),
    );
    const exited = new Promise<number | null>((resolveExit) => terminal.once('close', resolveExit));
    await asked;
    terminal.stdin.write('\u0003');
    expect(await exited).toBe(130);
    expect(out).toContain('wharf: cancelled');
    expect(out).not.toMatch(/AbortError|\n\s+at /);
    expect((await cli(['user', 'list'])).stdout).not.toContain('quitter');
  });

  test('user add refuses taken names, groups, bad names and weak passwords', async () => {
    for (const [args, stdin, message] of [
      [['user', 'add', 'carol'], '', 'exists already'],
      [['user', 'add', 'team'], '', 'is a group'],
      [['user', 'add', 'Bad_Name'], '', 'not a valid user name'],
      [['user', 'add', 'proxy'], '', 'not a valid user name'],
      [['user', 'add', 'dora', '--password-stdin'], 'short\n', '8 characters'],
    ] as const) {
      const run = await cli([...args], stdin);
      expect([args.join(' '), run.code]).toEqual([args.join(' '), 2]);
      expect(run.stderr).toContain(message);
      // A command used wrongly is not called a configuration error.
      expect(run.stderr).toMatch(/^wharf: (?!configuration error)/);
    }
  });

  test('user list shows every user, where it is defined, and its groups', async () => {
    const { stdout } = await cli(['user', 'list']);
    expect(stdout.split('\n')[0]).toMatch(/^NAME\s+ADMIN\s+SOURCE\s+GROUPS$/);
    expect(stdout).toMatch(/alice\s+no\s+database\s+team:reader/);
    expect(stdout).toMatch(/carol\s+no\s+config\s+team:developer/);
    expect(stdout).toMatch(/root\s+yes\s+config\s+-/);
  });

  test('a personal access token without pull is refused at creation, with the scope to give instead', async () => {
    for (const [scope, instead] of [['push', 'pull,push'], ['push,delete', 'pull,push,delete'], ['delete', 'pull,delete']]) {
      const refused = await cli(['token', 'create', '--user', 'alice', '--scope', scope!]);
      expect([scope, refused.code, refused.stdout]).toEqual([scope, 2, '']);
      expect(refused.stderr).toBe(`wharf: --scope needs pull with ${scope}: ${instead}\n`);
    }
  });

  test('a personal access token: printed once, works as the password with any name, revoked at once', async () => {
    const created = await cli(['token', 'create', '--user', 'alice', '--scope', 'pull,push', '--expires', '30d', '--name', 'laptop']);
    expect(created.code).toBe(0);
    const secret = created.stdout.trim();
    expect(secret).toMatch(/^wharf_pat_[A-Za-z0-9_-]{43}$/);
    const id = /token (\d+) for alice/.exec(created.stderr)![1]!;
    const client = new RegistryClient(reg.url, 'basic', { user: 'anything', password: secret });
    expect((await pushWith(client, 'alice/app', '1', 'cli')).status).toBe(201);
    expect((await client.request('DELETE', '/v2/alice/app/manifests/1')).status).toBe(403);

    const list = await cli(['token', 'list', '--user', 'alice']);
    expect(list.stdout).toMatch(new RegExp(`^${id}\\s+pat\\s+alice\\s+pull,push\\s+-\\s+\\S+\\s+\\S+\\s+active\\s+laptop$`, 'm'));
    expect(list.stdout).not.toContain(secret);

    expect((await cli(['token', 'revoke', id])).code).toBe(0);
    expect(await status('anything', secret)).toBe(401);
    expect((await cli(['token', 'list'])).stdout).toMatch(new RegExp(`^${id}\\s.*revoked\\s+laptop$`, 'm'));
    const nobody = await cli(['token', 'list', '--user', 'nobody']);
    expect([nobody.code, nobody.stderr]).toEqual([2, 'wharf: no user "nobody"\n']);
  });

  test("logins: `token list --logins` shows a user's, `token revoke` ends one and the bearer tokens got through it at once, `user logout` ends the rest", async () => {
    // Two `docker login`s of alice: each keeps a refresh token (the login), and gets bearer tokens with it.
    const signIn = async (): Promise<TokenReply> => {
      const res = await fetchToken(`${reg.url}/auth/token`, 'wharf', [], { user: 'alice', password: 'alice-cli-pw1' }, '&offline_token=true');
      expect(res.status).toBe(200);
      return (await res.json()) as TokenReply;
    };
    const [laptopSignIn, desktopSignIn] = [await signIn(), await signIn()];
    const [laptop, desktop] = [laptopSignIn.refresh_token!, desktopSignIn.refresh_token!];
    const refresh = async (login: string): Promise<{ status: number; bearer?: string }> => {
      const res = await fetch(`${reg.url}/auth/token`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: login, client_id: 'docker', service: 'wharf', scope: 'repository:alice/app:pull' }).toString(),
      });
      return res.status === 200 ? { status: 200, bearer: ((await res.json()) as TokenReply).access_token } : { status: res.status };
    };
    const withBearer = async (bearer: string) => (await fetch(`${reg.url}/v2/`, { headers: { Authorization: `Bearer ${bearer}` } })).status;
    const [laptopBearer, desktopBearer] = [(await refresh(laptop)).bearer!, (await refresh(desktop)).bearer!];
    expect([await withBearer(laptopBearer), await withBearer(desktopBearer)]).toEqual([200, 200]);

    const [laptopId, desktopId] = [laptop, desktop].map((secret) => reg.auth!.store.findToken(secret)!.id);
    const list = await cli(['token', 'list', '--user', 'alice', '--logins']);
    expect(list.code).toBe(0);
    for (const id of [laptopId, desktopId]) expect(list.stdout).toMatch(new RegExp(`^${id}\\s+login\\s+alice\\s+-\\s+-\\s+\\S+\\s+\\S+\\s+active\\s+login with password$`, 'm'));
    expect(list.stdout).not.toContain(laptop);
    // Without --logins, tokens alone, as before.
    expect((await cli(['token', 'list', '--user', 'alice'])).stdout).not.toMatch(/\slogin\s/);

    // The laptop is lost: its login ends, and the bearer token it got stops at once (before: it
    // worked on until token_ttl, and the login could not be named at all).
    const revoked = await cli(['token', 'revoke', String(laptopId)]);
    expect(revoked.code).toBe(0);
    expect(revoked.stderr).toContain(`login ${laptopId} of alice revoked`);
    expect(await withBearer(laptopBearer)).toBe(401);
    expect(await withBearer(laptopSignIn.token)).toBe(401);
    expect((await refresh(laptop)).status).toBe(401);
    expect(await withBearer(desktopBearer)).toBe(200);
    expect((await refresh(desktop)).status).toBe(200);

    // Signed out everywhere, the password unchanged.
    const logout = await cli(['user', 'logout', 'alice']);
    expect(logout.code).toBe(0);
    expect(logout.stderr).toContain('user "alice": 1 login ended');
    expect(await withBearer(desktopBearer)).toBe(401);
    expect(await withBearer(desktopSignIn.token)).toBe(401);
    expect((await refresh(desktop)).status).toBe(401);
    expect(await status('alice', 'alice-cli-pw1')).toBe(200);
    expect((await cli(['token', 'list', '--user', 'alice', '--logins'])).stdout).not.toMatch(/\slogin\s/);
    expect((await cli(['user', 'logout', 'nobody'])).code).toBe(2);
  });

  test('a CI token needs developer on its namespace, pushes there only, and pulls through the proxy', async () => {
    const refused = await cli(['token', 'create', '--ci', '--user', 'alice', '--namespace', 'team', '--expires', '2h']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('developer or more is needed');
    // A namespace that is no user and no configured group is named as such.
    const nowhere = await cli(['token', 'create', '--ci', '--user', 'carol', '--namespace', 'nosuchteam', '--expires', '2h']);
    expect(nowhere.code).toBe(2);
    expect(nowhere.stderr).toContain('no user or group "nosuchteam": a group namespace is an [[auth.groups]] entry');
    const tooLong = await cli(['token', 'create', '--ci', '--user', 'carol', '--namespace', 'team', '--expires', '91d']);
    expect(tooLong.code).toBe(2);

    const created = await cli(['token', 'create', '--ci', '--user', 'carol', '--namespace', 'team', '--expires', '2h']);
    expect(created.code).toBe(0);
    const secret = created.stdout.trim();
    expect(secret).toMatch(/^wharf_ci_/);
    const ci = new RegistryClient(reg.url, 'basic', { user: 'ci', password: secret });
    expect((await pushWith(ci, 'team/app', '1', 'ci')).status).toBe(201);
    expect((await pushWith(ci, 'carol/app', '1', 'ci')).status).toBe(403);
  });

  test('repo public and private', async () => {
    const root = new RegistryClient(reg.url, 'basic', { user: 'root', password: 'root-config-pw1' });
    expect((await pushWith(root, 'web/site', '1', 'site')).status).toBe(201);
    expect((await fetch(`${reg.url}/v2/web/site/manifests/1`)).status).toBe(401);
    expect((await cli(['repo', 'public', 'web/*'])).code).toBe(0);
    expect((await cli(['repo', 'public'])).stdout).toBe('web/*\n');
    expect((await fetch(`${reg.url}/v2/web/site/manifests/1`)).status).toBe(200);
    expect((await cli(['repo', 'private', 'web/*'])).code).toBe(0);
    expect((await fetch(`${reg.url}/v2/web/site/manifests/1`)).status).toBe(401);
    expect((await cli(['repo', 'public', 'Not A Name'])).code).toBe(2);
    // The proxy's names: opened by their upstream's access, never by this (it was accepted, and did nothing).
    for (const pattern of ['proxy/*', 'proxy/docker.io/library/alpine']) {
      const refused = await cli(['repo', 'public', pattern]);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain('opened by their upstream\'s "access"');
    }
    const none = await cli(['repo', 'public']);
    expect(none.stdout).toBe('');
    expect(none.stderr).toBe('no public repositories\n');
  });

  test('user passwd and user remove take effect on the running server', async () => {
    expect((await cli(['user', 'passwd', 'alice', '--password-stdin'], 'alice-cli-pw2\n')).code).toBe(0);
    expect(await status('alice', 'alice-cli-pw1')).toBe(401);
    expect(await status('alice', 'alice-cli-pw2')).toBe(200);
    const configUser = await cli(['user', 'passwd', 'carol', '--password-stdin'], 'carol-new-pw1\n');
    expect(configUser.code).toBe(2);
    expect(configUser.stderr).toContain('defined in the configuration file');
    expect((await cli(['user', 'remove', 'alice'])).code).toBe(0);
    expect(await status('alice', 'alice-cli-pw2')).toBe(401);
    // Her tokens stay on record, revoked: still listed by her name.
    const kept = await cli(['token', 'list', '--user', 'alice']);
    expect(kept.code).toBe(0);
    expect(kept.stdout).toMatch(/\salice\s.*revoked/);
  });
});

describe('wharf user remove and the last administrator', () => {
  let dir: string;
  let file: string;
  const cli = (args: string[], stdin = '') => wharf([...args, '--config', file], stdin);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-last-admin-'));
    file = join(dir, 'wharf.toml');
    const q = JSON.stringify;
    await writeFile(file, [`registry_storage = ${q(join(dir, 'registry'))}`, `temporary_registry_storage = ${q(join(dir, '_tmp'))}`, `proxy_storage = ${q(join(dir, 'proxy'))}`, `database = ${q(join(dir, 'wharf.db'))}`, ''].join('\n'));
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('is refused while no other administrator is left, and works once there is one', async () => {
    for (const name of ['boss', 'deputy']) expect((await cli(['user', 'add', name, '--admin'])).code).toBe(0);
    expect((await cli(['user', 'add', 'dev'])).code).toBe(0);
    expect((await cli(['user', 'remove', 'boss'])).code).toBe(0);
    const last = await cli(['user', 'remove', 'deputy']);
    expect(last.code).toBe(2);
    expect(last.stderr).toBe('wharf: user "deputy" is the last administrator; add another first ("wharf user add NAME --admin"), then remove this one\n');
    // Nothing was removed, and a user who is no administrator is removed as before.
    expect((await cli(['user', 'list'])).stdout).toMatch(/deputy\s+yes\s+database/);
    expect((await cli(['user', 'remove', 'dev'])).code).toBe(0);
  });
});
