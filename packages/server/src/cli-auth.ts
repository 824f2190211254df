import { Writable } from 'node:stream';
import { openConfiguredDatabase } from './configured-database.js';
import { createInterface } from 'node:readline/promises';
import type { Command } from 'commander';
import { PROXY_NOT_PUBLIC, isProxyPattern, isValidAccountName, isValidPublicPattern } from './auth-config.js';
import { UsageError } from './config-error.js';
import { loadConfig, type WharfConfig } from './config.js';
import { parseDuration } from './duration.js';
import type { Accounts } from './auth/accounts.js';
import { AuthStore, type StoredToken } from './auth/auth-store.js';
import { mayCreateCiToken, parseActions, type Policy } from './auth/permissions.js';
import { generatePassword } from './auth/secrets.js';
import { counted } from './cli-progress.js';

/**
 * Longest lifetimes. A CI token kept in a pipeline's secret variable has to be rotated by hand, so it
 * may live up to 90 days; the default is one hour, for a token made for one job.
 */
const MAX_CI_TTL_MS = 90 * 86_400_000;
const MAX_PAT_TTL_MS = 366 * 86_400_000;

/**
 * bcryptjs, through passwords.ts and accounts.ts, loaded by the commands that use it: every other
 * command, `wharf serve` with auth off among them, starts without it.
 */
const passwords = () => import('./auth/passwords.js');

/** The hash of a new password, at the production cost. */
async function hashNew(password: string): Promise<string> {
  const { PRODUCTION_BCRYPT_COST, hashPassword } = await passwords();
  return hashPassword(password, PRODUCTION_BCRYPT_COST);
}

interface ConfigOption {
  readonly config: string;
}

/** Runs `work` with the configuration and the accounts of its database, closed afterwards. */
async function withAccounts<T>(file: string, work: (accounts: Accounts, config: WharfConfig) => Promise<T> | T): Promise<T> {
  const config = loadConfig({ file, secrets: false });
  const [{ Accounts }, { PRODUCTION_BCRYPT_COST }] = await Promise.all([import('./auth/accounts.js'), passwords()]);
  const db = openConfiguredDatabase(config.database);
  try {
    return await work(new Accounts(new AuthStore(db), config.auth, PRODUCTION_BCRYPT_COST), config);
  } finally {
    db.close();
  }
}

function policyOf(config: WharfConfig): Policy {
  return { groups: new Map(config.auth.groups.map((g) => [g.name, g.members])), publicPatterns: config.auth.public, upstreamAccess: () => undefined };
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

/** Asks on the terminal without echoing what is typed. */
async function askHidden(question: string): Promise<string> {
  let muted = false;
  const output = new Writable({
    write(chunk, _encoding, done) {
      if (!muted) process.stderr.write(chunk);
      done();
    },
  });
  const rl = createInterface({ input: process.stdin, output, terminal: true });
  try {
    process.stderr.write(question);
    muted = true;
    return await rl.question('');
  } finally {
    muted = false;
    rl.close();
    process.stderr.write('\n');
  }
}

/**
 * The new password: from standard input with --password-stdin, asked twice on a terminal, or else
 * generated (and then shown once).
 */
async function newPassword(fromStdin: boolean): Promise<{ password: string; generated: boolean }> {
  let password: string;
  if (fromStdin) {
    password = await readStdin();
  } else if (process.stdin.isTTY) {
    password = await askHidden('Password: ');
    if ((await askHidden('Password again: ')) !== password) throw new UsageError('the passwords differ');
  } else {
    return { password: generatePassword(), generated: true };
  }
  const problem = (await passwords()).checkNewPassword(password);
  if (problem) throw new UsageError(problem);
  return { password, generated: false };
}

function duration(text: string, max: number, what: string): number {
  const ms = parseDuration(text);
  if (ms === undefined || ms <= 0) throw new UsageError(`--expires must be a duration such as "2h" or "30d" (got "${text}")`);
  if (ms > max) throw new UsageError(`--expires: ${what} live at most ${Math.round(max / 86_400_000)} days`);
  return ms;
}

function date(ms: number | undefined): string {
  return ms === undefined ? '-' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

function tokenState(t: StoredToken): string {
  if (t.revoked) return 'revoked';
  return t.expiresAt <= Date.now() ? 'expired' : 'active';
}

/** `wharf user ...`, `wharf token ...`, `wharf repo public|private ...`: accounts in the SQLite database. */
export function registerAuthCommands(program: Command, fail: (err: unknown) => never): void {
  const run = (work: () => Promise<void>) => work().catch(fail);
  const configOption = ['-c, --config <file>', 'configuration file', 'configuration.toml'] as const;

  const user = program.command('user').description('users (those of configuration.toml are read-only here)');
  user
    .command('add')
    .description('add a user; the password comes from --password-stdin, a prompt, or is generated and shown once')
    .argument('<name>', 'user name (owns the namespace <name>/*)')
    .option('--admin', 'an administrator (may do everything)', false)
    .option('--password-stdin', 'read the password from standard input', false)
    .option(...configOption)
    .action((name: string, opts: ConfigOption & { admin: boolean; passwordStdin: boolean }) =>
      run(() =>
        withAccounts(opts.config, async (accounts, config) => {
          if (!isValidAccountName(name)) throw new UsageError(`"${name}" is not a valid user name: lower-case letters, digits, ".", "_" or "-" (not "proxy")`);
          if (accounts.find(name)) throw new UsageError(`user "${name}" exists already`);
          if (config.auth.groups.some((g) => g.name === name)) throw new UsageError(`"${name}" is a group; a namespace has one owner`);
          const { password, generated } = await newPassword(opts.passwordStdin);
          accounts.store.addUser(name, await hashNew(password), opts.admin);
          process.stderr.write(`user "${name}" added${opts.admin ? ' (administrator)' : ''}\n`);
          if (generated) {
            process.stderr.write('its generated password, shown only this once:\n');
            process.stdout.write(`${password}\n`);
          }
        }),
      ),
    );
  user
    .command('passwd')
    .description("change a user's password (from --password-stdin, a prompt, or generated and shown once)")
    .argument('<name>')
    .option('--password-stdin', 'read the password from standard input', false)
    .option(...configOption)
    .action((name: string, opts: ConfigOption & { passwordStdin: boolean }) =>
      run(() =>
        withAccounts(opts.config, async (accounts) => {
          const account = accounts.find(name);
          if (!account) throw new UsageError(`no user "${name}"`);
          if (account.source === 'config') throw new UsageError(`user "${name}" is defined in the configuration file; change its password_hash there`);
          const { password, generated } = await newPassword(opts.passwordStdin);
          accounts.store.setPassword(name, await hashNew(password));
          process.stderr.write(`password of "${name}" changed\n`);
          if (generated) {
            process.stderr.write('the generated password, shown only this once:\n');
            process.stdout.write(`${password}\n`);
          }
        }),
      ),
    );
  user
    .command('remove')
    .description('remove a user and revoke all of their tokens')
    .argument('<name>')
    .option(...configOption)
    .action((name: string, opts: ConfigOption) =>
      run(() =>
        withAccounts(opts.config, (accounts) => {
          const account = accounts.find(name);
          if (!account) throw new UsageError(`no user "${name}"`);
          if (account.source === 'config') throw new UsageError(`user "${name}" is defined in the configuration file; remove it there`);
          // Without an administrator nobody can purge the proxy cache or manage others' tokens until a
          // restart makes a new `admin` with a password printed into the log: say so rather than do it.
          if (account.admin && !accounts.list().some((other) => other.admin && other.name !== name)) {
            throw new UsageError(`user "${name}" is the last administrator; add another first ("wharf user add NAME --admin"), then remove this one`);
          }
          accounts.store.removeUser(name);
          process.stderr.write(`user "${name}" removed; their tokens are revoked\n`);
        }),
      ),
    );
  user
    .command('logout')
    .description("end every login of a user (`docker login` and other clients sign in again); their password and tokens stay")
    .argument('<name>')
    .option(...configOption)
    .action((name: string, opts: ConfigOption) =>
      run(() =>
        withAccounts(opts.config, (accounts) => {
          if (!accounts.find(name)) throw new UsageError(`no user "${name}"`);
          const ended = accounts.store.endLogins(name);
          process.stderr.write(`user "${name}": ${counted(ended, 'login')} ended\n`);
        }),
      ),
    );
  user
    .command('list')
    .description('list users')
    .option(...configOption)
    .action((opts: ConfigOption) =>
      run(() =>
        withAccounts(opts.config, (accounts, config) => {
          const rows = [['NAME', 'ADMIN', 'SOURCE', 'GROUPS']];
          for (const a of accounts.list()) {
            const groups = config.auth.groups.filter((g) => g.members.has(a.name)).map((g) => `${g.name}:${g.members.get(a.name)}`);
            rows.push([a.name, a.admin ? 'yes' : 'no', a.source, groups.join(',') || '-']);
          }
          process.stdout.write(table(rows));
        }),
      ),
    );

  const token = program.command('token').description('personal access tokens and CI tokens (usable as the password with any user name)');
  token
    .command('create')
    .description('create a token and print its secret once')
    .requiredOption('--user <name>', 'the user the token acts for')
    .option('--scope <actions>', 'personal token: actions among pull,push,delete', 'pull')
    .option('--ci', 'a CI token: push and pull in --namespace, pull through the proxy', false)
    .option('--namespace <ns>', 'CI token: the namespace it may push to (the user needs developer there)')
    .option('--expires <duration>', 'lifetime, e.g. 2h or 30d (default 90d; CI 1h)')
    .option('--name <text>', 'a note to recognise it by')
    .option(...configOption)
    .action((opts: ConfigOption & { user: string; scope: string; ci: boolean; namespace?: string; expires?: string; name?: string }) =>
      run(() =>
        withAccounts(opts.config, (accounts, config) => {
          const account = accounts.find(opts.user);
          if (!account) throw new UsageError(`no user "${opts.user}"`);
          const name = opts.name?.slice(0, 200);
          if (opts.ci) {
            const ns = opts.namespace;
            if (!ns || !isValidAccountName(ns)) throw new UsageError('--ci needs --namespace <ns>, a user or group namespace');
            const policy = policyOf(config);
            if (!mayCreateCiToken(account, ns, policy)) {
              // A namespace nobody has (a group not yet in the configuration) is told as such, not as a missing right.
              if (!accounts.find(ns) && !policy.groups.has(ns)) {
                throw new UsageError(`no user or group "${ns}": a group namespace is an [[auth.groups]] entry of the configuration (a running server knows it once restarted)`);
              }
              throw new UsageError(`"${account.name}" may not push to ${ns}/* (developer or more is needed there), so cannot create a CI token for it`);
            }
            const ttl = duration(opts.expires ?? '1h', MAX_CI_TTL_MS, 'CI tokens');
            const created = accounts.store.createToken({ type: 'ci', user: account.name, scopes: ['pull', 'push'], namespace: ns, expiresAt: Date.now() + ttl, ...(name ? { name } : {}) });
            process.stderr.write(`CI token ${created.id} for ${account.name}: push and pull ${ns}/*, pull through the proxy; expires ${date(Date.now() + ttl)}. Shown only this once:\n`);
            process.stdout.write(`${created.secret}\n`);
            return;
          }
          if (opts.namespace) throw new UsageError('--namespace is for CI tokens (--ci)');
          const scopes = parseActions(opts.scope);
          if (!scopes) throw new UsageError(`--scope must be actions among pull,push,delete (got "${opts.scope}")`);
          // Every client reads before it writes (a push asks for pull,push; a delete finds the manifest
          // first): a token without pull would be refused at its first request.
          if (!scopes.includes('pull')) throw new UsageError(`--scope needs pull with ${scopes.join(',')}: pull,${scopes.join(',')}`);
          const ttl = duration(opts.expires ?? '90d', MAX_PAT_TTL_MS, 'personal tokens');
          const created = accounts.store.createToken({ type: 'pat', user: account.name, scopes, expiresAt: Date.now() + ttl, ...(name ? { name } : {}) });
          process.stderr.write(`token ${created.id} for ${account.name} (${scopes.join(',')}); expires ${date(Date.now() + ttl)}. Shown only this once:\n`);
          process.stdout.write(`${created.secret}\n`);
        }),
      ),
    );
  token
    .command('list')
    .description('list tokens (never their secrets)')
    .option('--user <name>', 'only this user')
    .option('--logins', 'also the logins in use (what `docker login` and other clients keep)', false)
    .option(...configOption)
    .action((opts: ConfigOption & { user?: string; logins: boolean }) =>
      run(() =>
        withAccounts(opts.config, (accounts) => {
          const rows = [['ID', 'TYPE', 'USER', 'SCOPES', 'NAMESPACE', 'EXPIRES', 'LAST USED', 'STATE', 'NAME']];
          const tokens = [...accounts.store.tokens(opts.user), ...(opts.logins ? accounts.store.logins(opts.user) : [])].sort((a, b) => a.id - b.id);
          // As `token create` does: a misspelt name is not "no tokens" (a removed user's, kept revoked, are still listed).
          if (opts.user !== undefined && tokens.length === 0 && !accounts.find(opts.user)) throw new UsageError(`no user "${opts.user}"`);
          for (const t of tokens) {
            if (t.type === 'refresh') {
              // A login holds its user's rights, or those of the token it was got with.
              const via = t.parentId === undefined ? 'password' : `token ${t.parentId}`;
              rows.push([String(t.id), 'login', t.user, t.parentId === undefined ? '-' : t.scopes.join(','), t.namespace ?? '-', date(t.expiresAt), date(t.lastUsedAt ?? t.createdAt), tokenState(t), `login with ${via}`]);
              continue;
            }
            rows.push([String(t.id), t.type, t.user, t.scopes.join(','), t.namespace ?? '-', date(t.expiresAt), date(t.lastUsedAt), tokenState(t), t.name ?? '-']);
          }
          process.stdout.write(table(rows));
        }),
      ),
    );
  token
    .command('revoke')
    .description('revoke a token (and the logins made with it), or a login (`token list --logins`), at once')
    .argument('<id>')
    .option(...configOption)
    .action((id: string, opts: ConfigOption) =>
      run(() =>
        withAccounts(opts.config, (accounts) => {
          const found = /^\d+$/.test(id) ? accounts.store.token(Number(id)) : undefined;
          if (!found) throw new UsageError(`no token ${id}`);
          accounts.store.revoke(found.id);
          process.stderr.write(`${found.type === 'refresh' ? 'login' : 'token'} ${found.id} of ${found.user} revoked\n`);
        }),
      ),
    );

  const repo = program.command('repo').description('repository visibility');
  repo
    .command('public')
    .description('let everyone (anonymous included) pull a repository or a namespace ("team/*"); without an argument, list')
    .argument('[pattern]', 'repository name ("alice/site") or namespace ("team/*")')
    .option(...configOption)
    .action((pattern: string | undefined, opts: ConfigOption) =>
      run(() =>
        withAccounts(opts.config, (accounts, config) => {
          if (pattern === undefined) {
            const added = accounts.store.publicPatterns();
            for (const p of config.auth.public) process.stdout.write(`${p}\t(configuration)\n`);
            for (const p of added) process.stdout.write(`${p}\n`);
            // On standard error: a script reading the list gets none, a person a word rather than silence.
            if (config.auth.public.length === 0 && added.length === 0) process.stderr.write('no public repositories\n');
            return;
          }
          if (isProxyPattern(pattern)) throw new UsageError(PROXY_NOT_PUBLIC);
          if (!isValidPublicPattern(pattern)) throw new UsageError(`"${pattern}" is neither a repository name nor a namespace such as "team/*"`);
          accounts.store.addPublic(pattern);
          process.stderr.write(`${pattern} is public\n`);
        }),
      ),
    );
  repo
    .command('private')
    .description('undo "wharf repo public" for a repository or namespace')
    .argument('<pattern>')
    .option(...configOption)
    .action((pattern: string, opts: ConfigOption) =>
      run(() =>
        withAccounts(opts.config, (accounts, config) => {
          if (config.auth.public.includes(pattern)) throw new UsageError(`${pattern} is public in the configuration file ([auth] public); change it there`);
          if (!accounts.store.removePublic(pattern)) throw new UsageError(`${pattern} was not marked public`);
          process.stderr.write(`${pattern} is private again\n`);
        }),
      ),
    );
}
