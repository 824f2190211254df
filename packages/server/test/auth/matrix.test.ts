import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { RegistryClient, Secrets, basic, bcryptHash, captureLog, pushWith, startAuthRegistry, type Credential, type Flow, type LogCapture } from './helpers.js';

/**
 * Who may do what, cell by cell: subjects × repositories × actions, through Basic credentials on
 * /v2 and through the token flow. Every cell is compared with the expected table, and the count of
 * successes that should have been refused must be 0.
 */

const PASSWORDS: Record<string, string> = {
  alice: 'alice-secret-1',
  bob: 'bob-secret-12',
  dev: 'dev-secret-123',
  rita: 'rita-secret-1234',
  eve: 'eve-secret-12345',
  root: 'root-secret-123456',
};

const SUBJECTS = ['owner', 'developer', 'reader', 'outsider', 'admin', 'anonymous', 'ci', 'revoked'] as const;
type Subject = (typeof SUBJECTS)[number];

const REPOS = { own: 'alice/app', group: 'team/app', private: 'bob/secret', public: 'pub/app', proxy: 'proxy/up/lib/app' } as const;
type RepoKind = keyof typeof REPOS;
const REPO_KINDS = Object.keys(REPOS) as RepoKind[];
const LOCAL_KINDS = REPO_KINDS.filter((k) => k !== 'proxy');

type Action = 'pull' | 'push' | 'delete' | 'catalog';
const ACTIONS: readonly Action[] = ['pull', 'push', 'delete', 'catalog'];

/** p = pull, u = push, d = delete, c = listed in _catalog. */
const EXPECTED: Record<Subject, Record<RepoKind, string>> = {
  owner: { own: 'pudc', group: '', private: '', public: 'pc', proxy: 'p' },
  developer: { own: '', group: 'puc', private: '', public: 'pc', proxy: 'p' },
  reader: { own: '', group: 'pc', private: '', public: 'pc', proxy: 'p' },
  outsider: { own: '', group: '', private: '', public: 'pc', proxy: 'p' },
  admin: { own: 'pudc', group: 'pudc', private: 'pudc', public: 'pudc', proxy: 'p' },
  anonymous: { own: '', group: '', private: '', public: 'p', proxy: '' },
  ci: { own: '', group: 'pu', private: '', public: 'p', proxy: 'p' },
  revoked: { own: '', group: '', private: '', public: '', proxy: '' },
};
const LETTER: Record<Action, string> = { pull: 'p', push: 'u', delete: 'd', catalog: 'c' };

/** May the subject list the catalog at all? */
const CATALOG_ALLOWED: Record<Subject, boolean> = {
  owner: true, developer: true, reader: true, outsider: true, admin: true, anonymous: false, ci: false, revoked: false,
};

interface Cell {
  readonly subject: Subject;
  readonly repo: RepoKind;
  readonly action: Action;
  readonly flow: Flow;
  readonly expected: boolean;
  readonly succeeded: boolean;
  readonly status: number;
}

describe('the permission matrix', () => {
  let up: TestRegistry;
  let reg: TestRegistry;
  const log: LogCapture = captureLog();
  const secrets = new Secrets();
  const creds = {} as Record<Subject, Credential | undefined>;
  const cells: Cell[] = [];

  beforeAll(async () => {
    up = await startRegistry();
    await pushImage(up.url, 'lib/app', '1');
    reg = await startAuthRegistry({
      logger: log.logger,
      // automatic_mount on: a mount without from must still not tell anyone what they cannot pull.
      settings: { automatic_mount: true, proxy: { retries: 0, upstreams: { up: { url: up.url } } } },
      authSettings: {
        users: [
          ...['alice', 'bob', 'dev', 'rita', 'eve'].map((name) => ({ name, password_hash: bcryptHash(PASSWORDS[name]!) })),
          { name: 'root', password_hash: bcryptHash(PASSWORDS.root!), admin: true },
        ],
        groups: [{ name: 'team', members: { dev: 'developer', rita: 'reader' } }],
        public: ['pub/*'],
      },
    });
    const store = reg.auth!.store;
    const ci = store.createToken({ type: 'ci', user: 'dev', scopes: ['pull', 'push'], namespace: 'team', expiresAt: Date.now() + 3_600_000 });
    const revoked = store.createToken({ type: 'pat', user: 'alice', scopes: ['pull', 'push', 'delete'], expiresAt: Date.now() + 3_600_000 });
    store.revoke(revoked.id);
    Object.assign(creds, {
      owner: { user: 'alice', password: PASSWORDS.alice },
      developer: { user: 'dev', password: PASSWORDS.dev },
      reader: { user: 'rita', password: PASSWORDS.rita },
      outsider: { user: 'eve', password: PASSWORDS.eve },
      admin: { user: 'root', password: PASSWORDS.root },
      anonymous: undefined,
      ci: { user: 'gitlab-ci-token', password: ci.secret },
      revoked: { user: 'alice', password: revoked.secret },
    });
    for (const [user, password] of Object.entries(PASSWORDS)) secrets.addBasic(user, password);
    secrets.addBasic('gitlab-ci-token', ci.secret);
    secrets.addBasic('alice', revoked.secret);

    // The administrator seeds every local repository, and one tag per (subject, flow) for the delete cells.
    const admin = new RegistryClient(reg.url, 'basic', creds.admin);
    for (const kind of LOCAL_KINDS) {
      const seeded = await pushWith(admin, REPOS[kind], '1', `seed ${kind}`);
      expect([kind, seeded.status]).toEqual([kind, 201]);
      for (const subject of SUBJECTS) {
        for (const flow of ['basic', 'token'] as const) {
          const res = await pushWith(admin, REPOS[kind], `del-${subject}-${flow}`, `seed ${kind}`);
          expect(res.status).toBe(201);
        }
      }
    }
  });

  afterAll(async () => {
    await reg?.close();
    await up?.close();
  });

  async function runCell(client: RegistryClient, subject: Subject, flow: Flow, kind: RepoKind, action: Exclude<Action, 'catalog'>): Promise<number> {
    const repo = REPOS[kind];
    let res: Response;
    if (action === 'pull') res = await client.request('GET', `/v2/${repo}/manifests/1`);
    else if (action === 'push') res = await pushWith(client, repo, `push-${subject}-${flow}`, `${subject} ${flow} ${kind}`);
    else res = await client.request('DELETE', `/v2/${repo}/manifests/${kind === 'proxy' ? '1' : `del-${subject}-${flow}`}`);
    await res.arrayBuffer();
    return res.status;
  }

  test.each(['basic', 'token'] as const)('every cell through %s credentials', async (flow) => {
    for (const subject of SUBJECTS) {
      const client = new RegistryClient(reg.url, flow, creds[subject], secrets);
      for (const kind of REPO_KINDS) {
        for (const action of ['pull', 'push', 'delete'] as const) {
          const status = await runCell(client, subject, flow, kind, action);
          const succeeded = status >= 200 && status < 300;
          cells.push({ subject, repo: kind, action, flow, expected: EXPECTED[subject][kind].includes(LETTER[action]), succeeded, status });
        }
      }
      const res = await client.request('GET', '/v2/_catalog');
      const listed = res.status === 200 ? ((await res.json()) as { repositories: string[] }).repositories : (await res.arrayBuffer(), []);
      expect([subject, res.status === 200]).toEqual([subject, CATALOG_ALLOWED[subject]]);
      for (const kind of REPO_KINDS) {
        cells.push({ subject, repo: kind, action: 'catalog', flow, expected: EXPECTED[subject][kind].includes('c'), succeeded: listed.includes(REPOS[kind]), status: res.status });
      }
    }
    const flowCells = cells.filter((c) => c.flow === flow);
    expect(flowCells).toHaveLength(SUBJECTS.length * REPO_KINDS.length * ACTIONS.length);
    const wrong = flowCells.filter((c) => c.expected !== c.succeeded).map((c) => `${c.subject} ${c.action} ${c.repo}: ${c.status}`);
    expect(wrong).toEqual([]);
  });

  test('refusals: 401 without (or with bad) credentials, 403 for a signed-in user without the right, 401 insufficient_scope for a token, 405 for a write on a proxy name', () => {
    const refused = cells.filter((c) => !c.expected && c.action !== 'catalog');
    expect(refused.length).toBeGreaterThan(50);
    for (const c of refused) {
      const anonymousOrBad = c.subject === 'anonymous' || c.subject === 'revoked';
      // Nobody writes through the proxy: someone signed in is told so (UNSUPPORTED), whatever their rights.
      const want = c.repo === 'proxy' && c.action !== 'pull' && !anonymousOrBad ? 405 : c.flow === 'token' || anonymousOrBad ? 401 : 403;
      expect(`${c.flow} ${c.subject} ${c.action} ${c.repo}: ${c.status}`).toBe(`${c.flow} ${c.subject} ${c.action} ${c.repo}: ${want}`);
    }
  });

  test('no unauthorized success in any cell', () => {
    expect(cells).toHaveLength(2 * SUBJECTS.length * REPO_KINDS.length * ACTIONS.length);
    expect(cells.filter((c) => c.succeeded && !c.expected)).toHaveLength(0);
  });

  test('a challenge names the repository and the actions the route needs', async () => {
    const cases: [string, string, string][] = [
      ['GET', '/v2/alice/app/manifests/1', 'repository:alice/app:pull'],
      ['HEAD', '/v2/alice/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000', 'repository:alice/app:pull'],
      ['POST', '/v2/alice/app/blobs/uploads/', 'repository:alice/app:pull,push'],
      ['PUT', '/v2/alice/app/manifests/2', 'repository:alice/app:pull,push'],
      ['DELETE', '/v2/alice/app/manifests/1', 'repository:alice/app:delete'],
      ['GET', '/v2/_catalog', 'registry:catalog:*'],
    ];
    for (const [method, path, scope] of cases) {
      const res = await fetch(`${reg.url}${path}`, { method });
      expect([path, res.status]).toEqual([path, 401]);
      expect(res.headers.get('www-authenticate')).toBe(`Bearer realm="${reg.url}/auth/token",service="wharf",scope="${scope}"`);
      if (method !== 'HEAD') expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('UNAUTHORIZED');
    }
    const base = await fetch(`${reg.url}/v2/`);
    expect(base.status).toBe(401);
    expect(base.headers.get('www-authenticate')).toBe(`Bearer realm="${reg.url}/auth/token",service="wharf"`);
    const signedIn = await fetch(`${reg.url}/v2/`, { headers: { Authorization: basic('eve', PASSWORDS.eve!) } });
    expect(signedIn.status).toBe(200);
  });

  test('the catalog paginates over what the caller may see', async () => {
    const headers = { Authorization: basic('alice', PASSWORDS.alice!) };
    const first = await fetch(`${reg.url}/v2/_catalog?n=1`, { headers });
    expect(await first.json()).toEqual({ repositories: ['alice/app'] });
    expect(first.headers.get('link')).toBe('</v2/_catalog?n=1&last=alice%2Fapp>; rel="next"');
    const second = await fetch(`${reg.url}/v2/_catalog?n=1&last=alice%2Fapp`, { headers });
    expect(await second.json()).toEqual({ repositories: ['pub/app'] });
  });

  // Without `from`, the source is the first repository holding the blob that the caller may pull:
  // alice may not pull bob/secret, and a 201 would tell her the blob exists.
  test.each([
    ['from a repository the caller may not pull', '&from=bob/secret', 'mounted'],
    ['without from, of a blob only repositories the caller may not pull hold', '', 'discovered'],
  ])('a cross-repository mount %s becomes a plain upload; its owner gets 201', async (_what, from, target) => {
    const layer = await fetch(`${reg.url}/v2/bob/secret/manifests/1`, { headers: { Authorization: basic('root', PASSWORDS.root!) } });
    const digest = ((await layer.json()) as { layers: { digest: string }[] }).layers[0]!.digest;
    const mount = (user: string, to: string) =>
      fetch(`${reg.url}/v2/${to}/blobs/uploads/?mount=${digest}${from}`, { method: 'POST', headers: { Authorization: basic(user, PASSWORDS[user]!) } });
    const refused = await mount('alice', `alice/${target}`);
    expect(refused.status).toBe(202);
    expect(refused.headers.get('location')).toMatch(new RegExp(`^/v2/alice/${target}/blobs/uploads/`));
    const blob = await fetch(`${reg.url}/v2/alice/${target}/blobs/${digest}`, { method: 'HEAD', headers: { Authorization: basic('alice', PASSWORDS.alice!) } });
    expect(blob.status).toBe(404);
    const allowed = await mount('bob', `bob/${target}`);
    expect(allowed.status).toBe(201);
    expect(allowed.headers.get('docker-content-digest')).toBe(digest);
  });

  test("a mount's challenge names its source too: a token for the scope it asks for mounts (201)", async () => {
    const layer = await fetch(`${reg.url}/v2/bob/secret/manifests/1`, { headers: { Authorization: basic('root', PASSWORDS.root!) } });
    const digest = ((await layer.json()) as { layers: { digest: string }[] }).layers[0]!.digest;
    const url = `${reg.url}/v2/bob/challenged/blobs/uploads/?mount=${digest}&from=bob/secret`;
    const anonymous = await fetch(url, { method: 'POST' });
    expect(anonymous.status).toBe(401);
    const scope = /scope="([^"]+)"/.exec(anonymous.headers.get('www-authenticate') ?? '')![1]!;
    expect(scope).toBe('repository:bob/challenged:pull,push repository:bob/secret:pull');
    // As a client does: the challenge's scope, as it came, from the realm.
    const grant = await fetch(`${reg.url}/auth/token?service=wharf&scope=${encodeURIComponent(scope)}`, { headers: { Authorization: basic('bob', PASSWORDS.bob!) } });
    const { token } = (await grant.json()) as { token: string };
    const mounted = await fetch(url, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
    expect(mounted.status).toBe(201);
  });

  test('a mount with a token for the target alone: challenged for the source when the caller may pull it, a plain upload when not', async () => {
    const layer = await fetch(`${reg.url}/v2/bob/secret/manifests/1`, { headers: { Authorization: basic('root', PASSWORDS.root!) } });
    const digest = ((await layer.json()) as { layers: { digest: string }[] }).layers[0]!.digest;
    const tokenFor = async (user: string, scope: string) => {
      const grant = await fetch(`${reg.url}/auth/token?service=wharf&scope=${encodeURIComponent(scope)}`, { headers: { Authorization: basic(user, PASSWORDS[user]!) } });
      return ((await grant.json()) as { token: string }).token;
    };
    // A token cached from the push's first request names the target only (the OCI conformance suite's case).
    const pushOnly = await tokenFor('bob', 'repository:bob/cached:pull,push');
    const url = `${reg.url}/v2/bob/cached/blobs/uploads/?mount=${digest}&from=bob/secret`;
    const challenged = await fetch(url, { method: 'POST', headers: { Authorization: `Bearer ${pushOnly}` } });
    expect(challenged.status).toBe(401);
    const header = challenged.headers.get('www-authenticate') ?? '';
    expect(header).toContain('error="insufficient_scope"');
    const scope = /scope="([^"]+)"/.exec(header)![1]!;
    expect(scope).toBe('repository:bob/cached:pull,push repository:bob/secret:pull');
    const mounted = await fetch(url, { method: 'POST', headers: { Authorization: `Bearer ${await tokenFor('bob', scope)}` } });
    expect(mounted.status).toBe(201);
    // alice may not pull bob/secret: no challenge that would tell her anything, a plain upload.
    const alice = await tokenFor('alice', 'repository:alice/cached:pull,push');
    const upload = await fetch(`${reg.url}/v2/alice/cached/blobs/uploads/?mount=${digest}&from=bob/secret`, { method: 'POST', headers: { Authorization: `Bearer ${alice}` } });
    expect(upload.status).toBe(202);
  });

  test('after the suite, no password, token or Authorization value is in the log', () => {
    expect(secrets.size).toBeGreaterThan(15);
    expect(log.text()).toContain('"path":"/auth/token"');
    secrets.assertNotIn(log.text());
  });
});
