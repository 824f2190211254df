import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import type { Digest } from '@wharf/registry-core';
import { isPublicAddress } from '../src/public-address.js';
import { HttpUpstream, nextPageQuery, type HttpUpstreamOptions } from '../src/http-upstream.js';
import { UpstreamError } from '../src/upstream.js';
import { RESUMING } from '../src/resuming-body.js';
import { FakeUpstream } from './helpers/fake-upstream.js';

const MANIFEST = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: {}, layers: [] };
const FAST = { connect: 300, firstByte: 300, idle: 300 };

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** Resolves once `done()` holds, checking every 5 ms (fails the test after 5 s). */
async function until(done: () => boolean): Promise<void> {
  for (const started = Date.now(); !done(); await new Promise((resolve) => setTimeout(resolve, 5))) {
    if (Date.now() - started > 5_000) throw new Error('condition not met within 5 s');
  }
}

const sha256Of = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

async function failureOf(promise: Promise<unknown>): Promise<UpstreamError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(UpstreamError);
  return err as UpstreamError;
}

describe('HttpUpstream against a real misbehaving server', () => {
  let fake: FakeUpstream;
  let blobBytes: Buffer;
  let blobDigest: Digest;
  let manifestDigest: Digest;
  const others: FakeUpstream[] = [];
  const client = (options: Partial<HttpUpstreamOptions> = {}) => new HttpUpstream({ name: 'fake', url: fake.url, retries: 0, ...options });

  beforeEach(async () => {
    fake = await FakeUpstream.start();
    blobBytes = randomBytes(200_000);
    blobDigest = fake.addBlob(blobBytes);
    manifestDigest = fake.addManifest('alice/app', '1', MANIFEST);
  });
  afterEach(async () => {
    await fake.close();
    for (const o of others.splice(0)) await o.close();
  });

  test('anonymous manifest GET and HEAD return the digest the bytes hash to', async () => {
    const up = client();
    const manifest = await up.manifest('alice/app', '1');
    expect(manifest?.digest).toBe(manifestDigest);
    expect(manifest?.mediaType).toBe('application/vnd.oci.image.manifest.v1+json');
    expect((await up.head('alice/app', '1'))?.digest).toBe(manifestDigest);
    expect((await up.manifest('alice/app', manifestDigest))?.digest).toBe(manifestDigest);
  });

  test('tag lists: the pages of the upstream (its Link header) are followed until n tags are in; 404 is undefined', async () => {
    for (const tag of ['b', 'a', 'd', 'c', 'e']) fake.addManifest('alice/app', tag, { ...MANIFEST, annotations: { tag } });
    fake.tagPageSize = 2;
    const up = client();
    expect(await up.tags('alice/app', {})).toEqual({ tags: ['1', 'a', 'b', 'c', 'd', 'e'], whole: true });
    // Stopped with n tags in and a next page linked: not the whole list.
    expect(await up.tags('alice/app', { n: 3 })).toEqual({ tags: ['1', 'a', 'b', 'c'], whole: false });
    expect(await up.tags('alice/app', { n: 3, last: 'b' })).toEqual({ tags: ['c', 'd', 'e'], whole: true });
    expect(fake.requests.filter((r) => r.path === '/v2/alice/app/tags/list').map((r) => r.query).slice(-2)).toEqual(['n=3&last=b', 'n=2&last=d']);
    expect(await up.tags('alice/none', {})).toBeUndefined();
  });

  test('a tag list longer than the upstream pages followed is not called whole', async () => {
    for (let i = 0; i < 30; i++) fake.addManifest('alice/long', `t${String(i).padStart(2, '0')}`, { ...MANIFEST, annotations: { i: String(i) } });
    fake.tagPageSize = 1;
    const listed = await client().tags('alice/long', {});
    expect(listed?.tags).toHaveLength(20);
    expect(listed?.whole).toBe(false);
  });

  test('a tag list that is not one fails as invalid; names that are no tags are dropped', async () => {
    const up = client();
    fake.tagListBody = '{"name":"alice/app","tags":["ok","../../etc",7,"fine-2"]}';
    expect((await up.tags('alice/app', {}))?.tags).toEqual(['ok', 'fine-2']);
    fake.tagListBody = '{"tags":"nope"}';
    expect((await failureOf(up.tags('alice/app', {}))).failure).toBe('invalid');
    fake.tagListBody = 'not json';
    expect((await failureOf(up.tags('alice/app', {}))).failure).toBe('invalid');
    // 300,000 tags in one unpaginated answer (4.3 MiB): a long list of strings, within the byte cap.
    const many = Array.from({ length: 300_000 }, (_, i) => `v${i}`);
    fake.tagListBody = JSON.stringify({ name: 'alice/app', tags: many });
    expect((await up.tags('alice/app', {}))?.tags).toHaveLength(300_000);
  });

  test('referrers: the well-formed descriptors of the upstream index; 404 (no referrers API) is undefined', async () => {
    const good = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifestDigest, size: 10, artifactType: 'application/x-sig', annotations: { a: 'b' } };
    fake.referrers.set(`alice/app@${manifestDigest}`, [good, { mediaType: 'x', digest: 'sha256:nothex', size: 1 }, { digest: manifestDigest, size: -1 }]);
    const up = client();
    expect(await up.referrers('alice/app', manifestDigest)).toEqual([good]);
    expect(await up.referrers('alice/other', manifestDigest)).toBeUndefined();
  });

  test('referrers: pages followed up to four; a longer list is cut with a warning, a shorter one is not', async () => {
    // Each page one referrer and a link to the next, for ever (or `pages` of them).
    let pages = Infinity;
    const asked: string[] = [];
    const paging = createHttpServer((req, res) => {
      asked.push(req.url ?? '');
      const page = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('last') ?? '0');
      const entry = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${String(page + 1).padStart(64, '0')}`, size: 10 };
      const next = page + 1 < pages ? { link: `</v2/alice/app/referrers/${manifestDigest}?last=${page + 1}>; rel="next"` } : {};
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json', ...next });
      res.end(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [entry] }));
    });
    await new Promise<void>((resolve) => paging.listen(0, '127.0.0.1', resolve));
    try {
      const warnings: string[] = [];
      const up = new HttpUpstream({ name: 'paging', url: `http://127.0.0.1:${(paging.address() as AddressInfo).port}`, retries: 0, logger: { warn: (_fields, message) => warnings.push(message) } });
      expect(await up.referrers('alice/app', manifestDigest)).toHaveLength(4);
      expect(asked).toHaveLength(4);
      expect(warnings).toEqual(["upstream's referrers list has more than 4 pages; serving the referrers of the first 4"]);
      pages = 4;
      expect(await up.referrers('alice/app', manifestDigest)).toHaveLength(4);
      expect(warnings).toHaveLength(1);
    } finally {
      paging.closeAllConnections();
      await new Promise((resolve) => paging.close(resolve));
    }
  });

  test('nextPageQuery takes the query of the rel="next" link only', () => {
    expect(nextPageQuery('</v2/a/tags/list?n=2&last=b>; rel="next"')).toBe('?n=2&last=b');
    expect(nextPageQuery('<https://elsewhere.example/v2/a/tags/list?last=x>; rel=next')).toBe('?last=x');
    expect(nextPageQuery('</v2/a/tags/list?last=x>; rel="prev", </v2/a/tags/list?last=y>; rel="next"')).toBe('?last=y');
    expect(nextPageQuery('</v2/a/tags/list>; rel="next"')).toBeUndefined();
    expect(nextPageQuery(undefined)).toBeUndefined();
  });

  test('404 is absence: undefined manifest, HEAD, blob and blob stat; a present blob is stat-ed with its size', async () => {
    const up = client();
    const missing = `sha256:${'0'.repeat(64)}` as Digest;
    expect(await up.manifest('alice/app', 'nope')).toBeUndefined();
    expect(await up.head('alice/app', 'nope')).toBeUndefined();
    expect(await up.blob('alice/app', missing)).toBeUndefined();
    expect(await up.statBlob('alice/app', missing)).toBeUndefined();
    expect(await up.statBlob('alice/app', blobDigest)).toEqual({ size: blobBytes.length });
  });

  test('a manifest whose bytes do not match the requested digest is refused as invalid', async () => {
    fake.manifests.set(`alice/app@${manifestDigest}`, { bytes: Buffer.from('{"schemaVersion":2,"tampered":true}'), mediaType: 'application/vnd.oci.image.manifest.v1+json' });
    expect((await failureOf(client().manifest('alice/app', manifestDigest))).failure).toBe('invalid');
  });

  test('Bearer: the 401 challenge leads to a token from the realm, fetched with Basic credentials for the pull scope', async () => {
    fake.auth = 'bearer';
    const up = client({ username: 'alice', password: 's3cret' });
    expect((await up.manifest('alice/app', '1'))?.digest).toBe(manifestDigest);
    const tokenRequests = fake.requests.filter((r) => r.path === '/token');
    expect(tokenRequests).toHaveLength(1);
    const query = new URLSearchParams(tokenRequests[0]!.query);
    expect(query.get('scope')).toBe('repository:alice/app:pull');
    expect(query.get('service')).toBe('fake-registry');
    expect(tokenRequests[0]!.authorization).toBe(`Basic ${Buffer.from('alice:s3cret').toString('base64')}`);
    const manifestGets = fake.requests.filter((r) => r.path === '/v2/alice/app/manifests/1');
    expect(manifestGets.map((r) => r.authorization?.split(' ')[0])).toEqual([undefined, 'Bearer']);
  });

  test('challenge, token, manifest, blob and tag list go over one kept connection; a HEAD closes the one it took', async () => {
    fake.auth = 'bearer';
    const up = client({ username: 'alice', password: 's3cret' });
    expect((await up.manifest('alice/app', '1'))?.digest).toBe(manifestDigest);
    const blob = await up.blob('alice/app', blobDigest);
    expect(createHash('sha256').update(await readAll(blob!.body)).digest('hex')).toBe(blobDigest.slice(7));
    expect((await up.tags('alice/app', {}))?.tags).toEqual(['1']);
    // The 401's body was read to its end rather than costing its connection; the token came on it too.
    expect(fake.connections).toBe(1);
    expect((await up.head('alice/app', '1'))?.digest).toBe(manifestDigest);
    expect(await up.statBlob('alice/app', blobDigest)).toEqual({ size: blobBytes.length });
    // Each HEAD's connection is closed after it (a server may send a body anyway): the first took the
    // kept one, the second a new one.
    expect(fake.connections).toBe(2);
    expect(fake.requests.map((r) => `${r.method} ${r.path}`)).toEqual([
      'GET /v2/alice/app/manifests/1',
      'GET /token',
      'GET /v2/alice/app/manifests/1',
      `GET /v2/alice/app/blobs/${blobDigest}`,
      'GET /v2/alice/app/tags/list',
      'HEAD /v2/alice/app/manifests/1',
      `HEAD /v2/alice/app/blobs/${blobDigest}`,
    ]);
  });

  test("Bearer: a realm given as a path is the registry's own token service", async () => {
    fake.auth = 'bearer';
    fake.relativeRealm = true;
    try {
      expect((await client({ username: 'alice', password: 's3cret' }).manifest('alice/app', '1'))?.digest).toBe(manifestDigest);
      expect(fake.requests.filter((r) => r.path === '/token')).toHaveLength(1);
    } finally {
      fake.relativeRealm = false;
    }
  });

  test('Bearer: a cached token is reused, so a second request does not hit /token or get a 401', async () => {
    fake.auth = 'bearer';
    const up = client({ username: 'alice', password: 's3cret' });
    await up.manifest('alice/app', '1');
    const before = fake.requests.length;
    const blob = await up.blob('alice/app', blobDigest);
    expect(createHash('sha256').update(await readAll(blob!.body)).digest('hex')).toBe(blobDigest.slice(7));
    expect(await up.head('alice/app', '1')).toBeDefined();
    const after = fake.requests.slice(before);
    expect(after.map((r) => r.path)).toEqual([`/v2/alice/app/blobs/${blobDigest}`, '/v2/alice/app/manifests/1']);
    expect(after.every((r) => r.authorization?.startsWith('Bearer '))).toBe(true);
    expect(fake.count('GET', '/token')).toBe(1);
  });

  test('Bearer: a token service refusing our credentials is an "unauthorized" failure, not retried', async () => {
    fake.auth = 'bearer';
    const err = await failureOf(client({ username: 'alice', password: 'wrong', retries: 3 }).manifest('alice/app', '1'));
    expect(err.failure).toBe('unauthorized');
    expect(fake.count('GET', '/token')).toBe(1);
  });

  test('Basic: after the first challenge, credentials go with every request', async () => {
    fake.auth = 'basic';
    const up = client({ username: 'alice', password: 's3cret' });
    expect((await up.manifest('alice/app', '1'))?.digest).toBe(manifestDigest);
    expect(await up.statBlob('alice/app', blobDigest)).toEqual({ size: blobBytes.length });
    const auth = fake.requests.map((r) => r.authorization?.split(' ')[0]);
    expect(auth).toEqual([undefined, 'Basic', 'Basic']);
  });

  test('Basic: eight first requests in flight at once without credentials are each answered with them, none taken for refused', async () => {
    fake.auth = 'basic';
    fake.challengeTogether = 8;
    const digests = Array.from({ length: 5 }, (_, i) => fake.addBlob(randomBytes(1000 + i)));
    const up = client({ username: 'alice', password: 's3cret' });
    // What a runtime's pull sends at once: the manifest by tag and by digest, a HEAD, and the layers.
    const answers = await Promise.all([
      up.manifest('alice/app', '1').then((m) => m?.digest),
      up.manifest('alice/app', manifestDigest).then((m) => m?.digest),
      up.statBlob('alice/app', blobDigest).then((s) => s?.size),
      ...digests.map(async (d) => sha256Of(await readAll((await up.blob('alice/app', d))!.body))),
    ]);
    expect(answers).toEqual([manifestDigest, manifestDigest, blobBytes.length, ...digests]);
    // Each went once without credentials, and once with them.
    expect(fake.requests.map((r) => r.authorization?.split(' ')[0]).sort()).toEqual([...Array(8).fill('Basic'), ...Array(8).fill(undefined)]);
  });

  test.each([
    ['eight first requests challenged at once share one token fetch and are answered', { challengeTogether: 8 }],
    // A 401 that comes after the token it needs was fetched is answered with that token, not a second fetch.
    ['eight first requests challenged one by one, the later after the token came, share one token fetch too', { challengeLateMs: 150 }],
  ] as const)('Bearer: %s', async (_name, timing) => {
    fake.auth = 'bearer';
    Object.assign(fake, timing);
    const digests = Array.from({ length: 8 }, (_, i) => fake.addBlob(randomBytes(1000 + i)));
    const up = client({ username: 'alice', password: 's3cret' });
    const got = await Promise.all(digests.map(async (d) => sha256Of(await readAll((await up.blob('alice/app', d))!.body))));
    expect(got).toEqual(digests);
    expect(fake.count('GET', '/token')).toBe(1);
  });

  test('a token service on the upstream\'s own host that does not answer is named, not the registry', async () => {
    fake.auth = 'bearer';
    fake.holdTokens = true;
    try {
      const err = await failureOf(client({ timeouts: FAST }).manifest('alice/app', '1'));
      expect([err.failure, err.message]).toEqual(['timeout', `token service of upstream fake (${new URL(fake.url).host}) timed out`]);
    } finally {
      fake.releaseTokens();
    }
  });

  test('Basic, with no credentials configured: the error says the upstream wants some, not that it refused ours', async () => {
    fake.auth = 'basic';
    const err = await failureOf(client().manifest('alice/app', '1'));
    expect([err.failure, err.status, err.message]).toEqual(['unauthorized', 401, "upstream fake wants credentials for manifest GET (401): give it a username and password in Wharf's configuration"]);
    // A mirror, to which its upstream's credentials are not sent, names the way out instead.
    const mirror = await failureOf(client({ credentialsAdvice: 'set mirror_credentials = true' }).manifest('alice/app', '1'));
    expect(mirror.message).toBe('upstream fake wants credentials for manifest GET (401): set mirror_credentials = true');
    const wrong = await failureOf(client({ username: 'alice', password: 'wrong' }).manifest('alice/app', '1'));
    expect(wrong.message).toBe('upstream fake refused our credentials for manifest GET (401)');
  });

  test('Bearer: requests that come while a token is being fetched wait for it, without a 401 of their own', async () => {
    fake.auth = 'bearer';
    fake.holdTokens = true;
    const up = client({ username: 'alice', password: 's3cret' });
    const first = up.manifest('alice/app', '1');
    await until(() => fake.count('GET', '/token') === 1);
    const later = Promise.all([up.statBlob('alice/app', blobDigest), up.head('alice/app', '1'), up.manifest('alice/app', manifestDigest)]);
    // Give them time to reach the upstream if they were going to, before the token comes.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(fake.requests.filter((r) => r.path !== '/token')).toHaveLength(1);
    fake.releaseTokens();
    expect((await first)?.digest).toBe(manifestDigest);
    const [stat, head, byDigest] = await later;
    expect(stat).toEqual({ size: blobBytes.length });
    expect(head?.digest).toBe(manifestDigest);
    expect(byDigest?.digest).toBe(manifestDigest);
    expect(fake.count('GET', '/token')).toBe(1);
    // The first went twice (without, then with its token); the others once each, with it.
    expect(fake.requests.filter((r) => r.path !== '/token' && r.authorization === undefined)).toHaveLength(1);
  });

  test('Bearer: a request that gives up while waiting for a shared token does not cancel it for the others', async () => {
    fake.auth = 'bearer';
    fake.holdTokens = true;
    const up = client({ username: 'alice', password: 's3cret' });
    const abort = new AbortController();
    const leaving = up.manifest('alice/app', '1', abort.signal).then(
      () => 'answered',
      () => 'aborted',
    );
    await until(() => fake.count('GET', '/token') === 1);
    const staying = up.head('alice/app', '1');
    abort.abort(new Error('client went away'));
    expect(await leaving).toBe('aborted');
    fake.releaseTokens();
    expect((await staying)?.digest).toBe(manifestDigest);
    expect(fake.count('GET', '/token')).toBe(1);
  });

  test('Bearer with wrong credentials, eight requests at once: one token fetch, and each is "unauthorized"', async () => {
    fake.auth = 'bearer';
    fake.challengeTogether = 8;
    const up = client({ username: 'alice', password: 'nope', retries: 2 });
    const failures = await Promise.all(Array.from({ length: 8 }, () => failureOf(up.statBlob('alice/app', blobDigest))));
    expect(failures.map((f) => f.failure)).toEqual(Array(8).fill('unauthorized'));
    expect(fake.count('GET', '/token')).toBe(1);
  });

  test('Basic with wrong credentials, eight requests at once: each is "unauthorized" after its credentials went', async () => {
    fake.auth = 'basic';
    fake.challengeTogether = 8;
    const up = client({ username: 'alice', password: 'nope' });
    const failures = await Promise.all(Array.from({ length: 8 }, () => failureOf(up.statBlob('alice/app', blobDigest))));
    expect(failures.map((f) => f.failure)).toEqual(Array(8).fill('unauthorized'));
    expect(fake.requests.filter((r) => r.authorization?.startsWith('Basic ')).length).toBe(8);
  });

  test('Basic with wrong credentials is an "unauthorized" failure', async () => {
    fake.auth = 'basic';
    expect((await failureOf(client({ username: 'alice', password: 'nope' }).manifest('alice/app', '1'))).failure).toBe('unauthorized');
  });

  test('500 twice, then success: retried and answered', async () => {
    fake.fault = '500';
    fake.faultTimes = 2;
    const manifest = await client({ retries: 3 }).manifest('alice/app', '1');
    expect(manifest?.digest).toBe(manifestDigest);
    expect(fake.count('GET', '/v2/alice/app/manifests/1')).toBe(3);
  });

  test('500 on a blob twice, then success: retried and streamed', async () => {
    fake.fault = '500';
    fake.faultTimes = 2;
    const blob = await client({ retries: 2 }).blob('alice/app', blobDigest);
    expect((await readAll(blob!.body)).equals(blobBytes)).toBe(true);
    expect(fake.count('GET', `/v2/alice/app/blobs/${blobDigest}`)).toBe(3);
  });

  test('500 every time: a "server-error" after retries+1 attempts', async () => {
    fake.fault = '500';
    const err = await failureOf(client({ retries: 1 }).manifest('alice/app', '1'));
    expect(err.failure).toBe('server-error');
    expect(err.status).toBe(500);
    expect(fake.count('GET', '/v2/alice/app/manifests/1')).toBe(2);
  });

  test('429 with Retry-After: 1 is waited out before the retry', async () => {
    fake.fault = '429';
    fake.faultTimes = 1;
    const manifest = await client({ retries: 1 }).manifest('alice/app', '1');
    expect(manifest?.digest).toBe(manifestDigest);
    const [first, second] = fake.requests.filter((r) => r.path === '/v2/alice/app/manifests/1');
    expect(second!.at - first!.at).toBeGreaterThanOrEqual(950);
  });

  test('429 with no retries left is "rate-limited" and keeps Retry-After', async () => {
    fake.fault = '429';
    const err = await failureOf(client().manifest('alice/app', '1'));
    expect(err.failure).toBe('rate-limited');
    expect(err.status).toBe(429);
    expect(err.retryAfter).toBe(1);
  });

  test('a 429 is retried once, whatever the retries: more would hold the client for Retry-After each time', async () => {
    fake.fault = '429';
    const err = await failureOf(client({ retries: 3 }).manifest('alice/app', '1'));
    expect(err.failure).toBe('rate-limited');
    expect(err.message).toBe('upstream fake answered 429, asking to retry after 1 s');
    expect(fake.count('GET', '/v2/alice/app/manifests/1')).toBe(2);
  });

  test('429 with a Retry-After longer than maxRetryWait gives up at once', async () => {
    fake.fault = '429';
    const err = await failureOf(client({ retries: 3, maxRetryWait: 200 }).manifest('alice/app', '1'));
    expect(err.failure).toBe('rate-limited');
    expect(fake.count('GET', '/v2/alice/app/manifests/1')).toBe(1);
  });

  test('a stalled manifest request fails as "timeout" within the first-byte timeout', async () => {
    fake.fault = 'stall';
    const started = Date.now();
    const err = await failureOf(client({ timeouts: FAST }).manifest('alice/app', '1'));
    expect(err.failure).toBe('timeout');
    expect(fake.requests.filter((r) => r.at >= started).length).toBe(1);
  });

  test('no retry starts once the retry budget is spent: a stalled upstream fails while its client still waits', async () => {
    fake.fault = 'stall';
    const err = await failureOf(client({ retries: 10, retryBudget: 700, timeouts: { connect: 300, firstByte: 300, idle: 300 } }).manifest('alice/app', '1'));
    expect(err.failure).toBe('timeout');
    // 11 attempts without the budget; 300 ms each, two or three fit in 700 ms.
    expect(fake.count('GET', '/v2/alice/app/manifests/1')).toBeLessThanOrEqual(3);
  });

  test('a stalled blob request fails as "timeout", after retries, quickly', async () => {
    fake.fault = 'stall';
    const err = await failureOf(client({ timeouts: FAST, retries: 1 }).blob('alice/app', blobDigest));
    expect(err.failure).toBe('timeout');
    expect(fake.count('GET', `/v2/alice/app/blobs/${blobDigest}`)).toBe(2);
  });

  test('a refused connection is "unreachable"', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const err = await failureOf(new HttpUpstream({ name: 'gone', url: `http://127.0.0.1:${port}`, retries: 1 }).manifest('alice/app', '1'));
    expect(err.failure).toBe('unreachable');
  });

  test('bodies we drop: a short one keeps its connection, a long or stalled one is cut at once, not waited out', async () => {
    const digest = `sha256:${'a'.repeat(64)}` as Digest;
    let connections = 0;
    const open = new Set<import('node:net').Socket>();
    const raw = createServer((socket) => {
      connections += 1;
      open.add(socket);
      socket.on('error', () => undefined);
      socket.on('data', (d: Buffer) => {
        const line = d.toString('latin1').split('\r\n')[0]!;
        if (line.includes('/short/')) socket.write('HTTP/1.1 404 Not Found\r\nContent-Length: 13\r\n\r\n{"errors":[]}');
        else if (line.includes('/long/')) socket.write(`HTTP/1.1 404 Not Found\r\nContent-Length: ${1024 * 1024}\r\n\r\n{"errors":[]}`);
        // 7 bytes of 100, then silence
        else if (line.includes('/stalled/')) socket.write('HTTP/1.1 404 Not Found\r\nContent-Length: 100\r\n\r\npartial');
      });
    });
    await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
    try {
      // An idle timeout far longer than the test's own: waiting a stalled body out would fail the test.
      const up = new HttpUpstream({ name: 'raw', url: `http://127.0.0.1:${(raw.address() as { port: number }).port}`, retries: 0, timeouts: { idle: 60_000 } });
      expect(await up.blob('short', digest)).toBeUndefined();
      expect(await up.blob('short', digest)).toBeUndefined();
      expect(connections).toBe(1);
      expect(await up.blob('long', digest)).toBeUndefined();
      expect(await up.blob('stalled', digest)).toBeUndefined();
      expect(await up.statBlob('short', digest)).toBeUndefined();
      // The long body cost its connection, and so did the stalled one; the HEAD took a third.
      expect(connections).toBe(3);
    } finally {
      for (const socket of open) socket.destroy();
      await new Promise((resolve) => raw.close(resolve));
    }
  });

  test('a manifest whose chunked body breaks in the read that brought its head fails at once, not at a timeout', async () => {
    const raw = createServer((socket) => {
      socket.on('error', () => undefined);
      // Head and a chunk-size line that is no number, in one write.
      socket.on('data', () => socket.write('HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n'));
    });
    await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
    try {
      const up = new HttpUpstream({ name: 'raw', url: `http://127.0.0.1:${(raw.address() as { port: number }).port}`, retries: 0, timeouts: { firstByte: 60_000, idle: 60_000 } });
      for (const call of [() => up.manifest('alice/app', '1'), () => up.tags('alice/app', {})]) {
        const outcome = await Promise.race([failureOf(call()), new Promise((resolve) => setTimeout(() => resolve('hung'), 3000))]);
        expect(outcome).toBeInstanceOf(Error);
      }
    } finally {
      await new Promise((resolve) => raw.close(resolve));
    }
  });

  test('an answer to a manifest GET that is no manifest is refused; the document\'s mediaType wins over Content-Type', async () => {
    const index = '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}';
    const bareIndex = '{"schemaVersion":2,"manifests":[]}';
    const answers: Record<string, [string, string]> = {
      portal: ['text/html', '<html><body>Sign in to the Wi-Fi</body></html>'],
      empty: ['application/json', '{}'],
      index: ['text/plain; charset=utf-8', index],
      bare: ['application/json', bareIndex],
      // Valid JSON under 4 MiB that would parse into a million objects: refused before it is parsed.
      hostile: ['application/vnd.oci.image.index.v1+json', `{"schemaVersion":2,"manifests":[${Array(1_000_000).fill('{}').join(',')}]}`],
    };
    const raw = createServer((socket) => {
      socket.on('error', () => undefined);
      socket.on('data', (d: Buffer) => {
        const name = /\/v2\/lib\/(\w+)\//.exec(d.toString('latin1'))?.[1] ?? '';
        const [type, body] = answers[name] ?? ['text/plain', ''];
        socket.write(`HTTP/1.1 200 OK\r\nContent-Type: ${type}\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      });
    });
    await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
    try {
      const up = new HttpUpstream({ name: 'raw', url: `http://127.0.0.1:${(raw.address() as { port: number }).port}`, retries: 0 });
      expect((await failureOf(up.manifest('lib/portal', 'latest'))).failure).toBe('invalid');
      expect((await failureOf(up.manifest('lib/empty', 'latest'))).failure).toBe('invalid');
      expect((await up.manifest('lib/index', 'latest'))?.mediaType).toBe('application/vnd.oci.image.index.v1+json');
      expect((await up.manifest('lib/bare', 'latest'))?.mediaType).toBe('application/vnd.oci.image.index.v1+json');
      const hostile = await failureOf(up.manifest('lib/hostile', 'latest'));
      expect([hostile.failure, hostile.message]).toEqual(['invalid', 'upstream raw sent a manifest Wharf refuses: it holds more than 100000 objects and arrays']);
    } finally {
      await new Promise((resolve) => raw.close(resolve));
    }
  });

  test('a blob download reset mid-body goes on with a range request for the rest', async () => {
    fake.fault = 'reset';
    fake.faultTimes = 1;
    const blob = await client().blob('alice/app', blobDigest);
    expect((await readAll(blob!.body)).equals(blobBytes)).toBe(true);
    const gets = fake.requests.filter((r) => r.method === 'GET' && r.path === `/v2/alice/app/blobs/${blobDigest}`);
    expect(gets).toHaveLength(2);
  });

  test('a blob body that trickles (never silent for the idle timeout) is cut at min_speed and goes on with a range for the rest', async () => {
    fake.fault = 'trickle';
    fake.faultTimes = 1;
    // 300 ms windows of at least 19,661 bytes; the trickle sends about 1 KiB in each.
    const up = client({ timeouts: { ...FAST, minSpeed: 64 * 1024 } });
    const resumedWith: unknown[] = [];
    const blob = await up.blob('alice/app', blobDigest);
    blob!.body.on(RESUMING, (err: unknown) => resumedWith.push(err));
    expect((await readAll(blob!.body)).equals(blobBytes)).toBe(true);
    const gets = fake.requests.filter((r) => r.method === 'GET' && r.path === `/v2/alice/app/blobs/${blobDigest}`);
    expect(gets.map((r) => r.range)).toEqual([undefined, expect.stringMatching(/^bytes=1\d{5}-199999$/)]);
    expect(resumedWith).toHaveLength(1);
    expect(resumedWith[0]).toMatchObject({ failure: 'timeout', message: expect.stringMatching(/^upstream fake sent \d+ bytes of the blob in 0.3 s, slower than min_speed \(65536 bytes\/s\)$/) });
  });

  test('a blob body that trickles on every answer fails as a timeout once the resumes are spent', async () => {
    fake.fault = 'trickle';
    const blob = await client({ timeouts: { ...FAST, minSpeed: 64 * 1024 } }).blob('alice/app', blobDigest);
    await expect(readAll(blob!.body)).rejects.toMatchObject({ failure: 'timeout' });
    // The first answer and its three resumes.
    expect(fake.count('GET', `/v2/alice/app/blobs/${blobDigest}`)).toBe(4);
  });

  test('a body its reader holds back is not cut for the bytes it was not asked for', async () => {
    const up = client({ timeouts: { ...FAST, minSpeed: 64 * 1024 } });
    const blob = await up.blob('alice/app', blobDigest);
    const resumed: unknown[] = [];
    blob!.body.on(RESUMING, (err: unknown) => resumed.push(err));
    // Three windows without a read: the upstream sent all it could, Wharf did not ask for more.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect((await readAll(blob!.body)).equals(blobBytes)).toBe(true);
    expect(resumed).toEqual([]);
    expect(fake.count('GET', `/v2/alice/app/blobs/${blobDigest}`)).toBe(1);
  });

  test('a blob download reset mid-body goes on past the bytes it has when the resume is answered with the whole blob', async () => {
    // A CDN that does not keep the blob drops the Range and sends all of it again.
    fake.fault = 'reset';
    fake.faultTimes = 1;
    fake.ignoreRange = true;
    const blob = await client().blob('alice/app', blobDigest);
    expect((await readAll(blob!.body)).equals(blobBytes)).toBe(true);
    const gets = fake.requests.filter((r) => r.method === 'GET' && r.path === `/v2/alice/app/blobs/${blobDigest}`);
    expect(gets).toHaveLength(2);
  });

  test('a blob sent without a size (chunked) and reset mid-body goes on with an open-ended range for the rest', async () => {
    fake.chunked = true;
    fake.fault = 'reset';
    fake.faultTimes = 1;
    const blob = await client().blob('alice/app', blobDigest);
    expect(blob?.size).toBeUndefined();
    expect((await readAll(blob!.body)).equals(blobBytes)).toBe(true);
    const gets = fake.requests.filter((r) => r.method === 'GET' && r.path === `/v2/alice/app/blobs/${blobDigest}`);
    expect(gets.map((r) => r.range?.replace(/\d+/, 'N'))).toEqual([undefined, 'bytes=N-']);
  });

  test('a blob sent without a size, cut mid-body, goes on past its bytes when the resume is the whole blob again', async () => {
    fake.chunked = true;
    fake.fault = 'reset';
    fake.faultTimes = 1;
    fake.ignoreRange = true;
    const blob = await client().blob('alice/app', blobDigest);
    expect((await readAll(blob!.body)).equals(blobBytes)).toBe(true);
  });

  test.each(['reset', 'truncate'] as const)('a blob sent without a size whose every answer is cut (%s) never reads as complete', async (fault) => {
    // A chunked body closed before its last chunk is cut, however the connection ends.
    fake.chunked = true;
    fake.fault = fault;
    const blob = await client().blob('alice/app', blobDigest);
    await expect(readAll(blob!.body)).rejects.toThrow();
  });

  test('a range of a blob reset mid-body goes on with a range request for the rest of that range', async () => {
    fake.fault = 'reset';
    fake.faultTimes = 1;
    const range = { start: 1000, end: blobBytes.length - 2 };
    const blob = await client().blob('alice/app', blobDigest, range);
    expect(blob?.range).toEqual(range);
    expect((await readAll(blob!.body)).equals(blobBytes.subarray(range.start, range.end + 1))).toBe(true);
    const gets = fake.requests.filter((r) => r.method === 'GET' && r.path === `/v2/alice/app/blobs/${blobDigest}`);
    expect(gets).toHaveLength(2);
  });

  test('a blob reset mid-body, and each range asked for the rest too, makes the body stream error', async () => {
    fake.fault = 'reset';
    const blob = await client().blob('alice/app', blobDigest);
    expect(blob?.size).toBe(blobBytes.length);
    await expect(readAll(blob!.body)).rejects.toThrow();
  });

  test('a blob truncated after its Content-Length was announced never reads as complete', async () => {
    fake.fault = 'truncate';
    const blob = await client().blob('alice/app', blobDigest);
    const outcome = await readAll(blob!.body).then(
      (bytes) => bytes.length,
      () => 'error',
    );
    expect(outcome === 'error' || (typeof outcome === 'number' && outcome < blobBytes.length)).toBe(true);
  });

  test('a blob from a plain-HTTP upstream comes in lent chunks, which may be given back', async () => {
    const blob = (await client().blob('alice/app', blobDigest))!;
    expect(typeof blob.recycle).toBe('function');
    const copies: Buffer[] = [];
    for await (const chunk of blob.body as AsyncIterable<Buffer>) {
      copies.push(Buffer.from(chunk));
      blob.recycle!(chunk);
    }
    expect(Buffer.concat(copies).equals(blobBytes)).toBe(true);
    expect((await client().manifest('alice/app', '1'))?.digest).toBe(manifestDigest);
  });

  test('hosts NO_PROXY names, and upstreams whose scheme has no proxy, are reached directly, into lent chunks', async () => {
    // A proxy nobody listens on: a request sent through it would fail.
    const dead = 'http://127.0.0.1:9';
    for (const egress of [{ http: dead, noProxy: 'example.com,*.127.0.0.1,127.0.0.1' }, { http: dead, noProxy: '*' }, { https: dead }]) {
      const up = client({ egress });
      expect((await up.manifest('alice/app', '1'))?.digest).toBe(manifestDigest);
      const blob = (await up.blob('alice/app', blobDigest))!;
      expect(typeof blob.recycle).toBe('function');
      expect(createHash('sha256').update(await readAll(blob.body)).digest('hex')).toBe(blobDigest.slice(7));
    }
    // NO_PROXY naming another port, or another host: through the (dead) proxy, which fails.
    for (const noProxy of [`127.0.0.1:${Number(new URL(fake.url).port) + 1}`, 'example.com']) {
      const err = await failureOf(client({ egress: { http: dead, noProxy } }).manifest('alice/app', '1'));
      expect(err.failure).toBe('unreachable');
    }
  });

  test('a blob redirect to another host and port is followed without our Authorization header', async () => {
    const cdn = await FakeUpstream.start();
    others.push(cdn);
    cdn.addBlob(blobBytes);
    fake.auth = 'bearer';
    fake.redirectBlobsTo = cdn.url;
    const blob = await client({ username: 'alice', password: 's3cret' }).blob('alice/app', blobDigest);
    expect((await readAll(blob!.body)).equals(blobBytes)).toBe(true);
    const atOrigin = fake.requests.filter((r) => r.path === `/v2/alice/app/blobs/${blobDigest}`);
    expect(atOrigin.at(-1)?.authorization).toMatch(/^Bearer /);
    expect(cdn.requests).toHaveLength(1);
    expect(cdn.requests[0]!.authorization).toBeUndefined();
  });

  test('a redirect loop is named as one, after MAX_REDIRECTS hops, not as "answered 307"', async () => {
    fake.redirectBlobsTo = fake.url;
    const err = await failureOf(client().blob('alice/app', blobDigest));
    expect(err.message).toBe('upstream fake redirected the blob GET more than 5 times: a redirect loop');
    expect(fake.requests.filter((r) => r.path === `/v2/alice/app/blobs/${blobDigest}`)).toHaveLength(6);
  });

  describe('an upstream on the internet cannot send Wharf inside the network', () => {
    // 127.0.0.2 stands for a host on the internet; 127.0.0.1 (and every other internal address) is inside.
    const internet = { isPublicAddress: (address: string) => address === '127.0.0.2' || isPublicAddress(address) };
    let inside: FakeUpstream;
    beforeEach(async () => {
      inside = await FakeUpstream.start();
      others.push(inside);
      inside.addBlob(blobBytes);
    });

    test('a redirect to an address inside is refused before any connection (an address, a name, an IPv4-mapped one), GET and HEAD', async () => {
      const outside = await FakeUpstream.start('127.0.0.2');
      others.push(outside);
      outside.addBlob(blobBytes);
      outside.redirectBlobHeads = true;
      const up = new HttpUpstream({ name: 'hub', url: outside.url, retries: 0, internet });
      const port = new URL(inside.url).port;
      for (const target of [`http://127.0.0.1:${port}`, `http://localhost:${port}`, `http://[::ffff:127.0.0.1]:${port}`]) {
        outside.redirectBlobsTo = target;
        for (const ask of [() => up.blob('alice/app', blobDigest), () => up.statBlob('alice/app', blobDigest)]) {
          const err = await failureOf(ask());
          expect([target, err.failure]).toEqual([target, 'invalid']);
          expect(err.message).toMatch(/redirected to .*, an address inside the network: refused/);
        }
      }
      // Before: fetched, and its bytes (or its size, for a HEAD) passed on to whoever pulled.
      expect(inside.requests).toHaveLength(0);
    });

    test("its challenge's token realm inside is not fetched (its answer would have gone back to the upstream as a token)", async () => {
      const outside = await FakeUpstream.start('127.0.0.2');
      others.push(outside);
      outside.auth = 'bearer';
      outside.realmBase = `http://localhost:${new URL(inside.url).port}`;
      outside.addManifest('alice/app', '1', MANIFEST);
      const err = await failureOf(new HttpUpstream({ name: 'hub', url: outside.url, retries: 0, username: 'alice', password: 's3cret', internet }).manifest('alice/app', '1'));
      expect(err.message).toMatch(/sent Wharf to localhost:\d+, an address inside the network: refused/);
      expect(inside.requests).toHaveLength(0);
    });

    test('an upstream whose host was on the internet stays there: its name resolving inside later (rebinding) is refused', async () => {
      let rebound = false;
      // 127.0.0.1 plays the upstream's public address until its name "resolves inside".
      const shifting = { isPublicAddress: (address: string) => (!rebound && address === '127.0.0.1') || isPublicAddress(address) };
      const up = new HttpUpstream({ name: 'hub', url: `http://localhost:${new URL(fake.url).port}`, retries: 0, internet: shifting });
      expect((await up.manifest('alice/app', '1'))?.digest).toBe(manifestDigest);
      rebound = true;
      const asked = fake.requests.length;
      const err = await failureOf(up.manifest('alice/app', '1'));
      expect(err.message).toMatch(/now resolves to an address inside the network \(127\.0\.0\.1\)/);
      expect(fake.requests.length).toBe(asked);
    });

    test('an upstream inside may redirect inside; once a hop is on the internet, the next may not come back inside', async () => {
      // Inside, to inside: an internal registry sending pulls to its object store.
      fake.redirectBlobsTo = inside.url;
      const blob = await client({ internet }).blob('alice/app', blobDigest);
      expect((await readAll(blob!.body)).equals(blobBytes)).toBe(true);
      expect(inside.requests).toHaveLength(1);
      // Inside, to the internet (a CDN), which sends Wharf back inside: refused there.
      const cdn = await FakeUpstream.start('127.0.0.2');
      others.push(cdn);
      cdn.addBlob(blobBytes);
      cdn.redirectBlobsTo = inside.url;
      fake.redirectBlobsTo = cdn.url;
      const err = await failureOf(client({ internet }).blob('alice/app', blobDigest));
      expect(err.message).toMatch(/redirected to 127\.0\.0\.1:\d+, an address inside the network: refused/);
      expect(cdn.requests).toHaveLength(1);
      expect(inside.requests).toHaveLength(1);
    });
  });

  test('a manifest larger than the 4 MiB cap is refused as invalid, not read to the end', async () => {
    fake.addManifest('alice/app', 'huge', { ...MANIFEST, annotations: { pad: 'x'.repeat(5 * 1024 * 1024) } });
    const err = await failureOf(client().manifest('alice/app', 'huge'));
    expect(err.failure).toBe('invalid');
    expect(err.message).toMatch(/larger than/);
  });

  test('a range request returns 206 bytes, the range they hold and the full size', async () => {
    const blob = await client().blob('alice/app', blobDigest, { start: 10, end: 99 });
    expect(blob?.size).toBe(blobBytes.length);
    expect(blob?.range).toEqual({ start: 10, end: 99 });
    expect((await readAll(blob!.body)).equals(blobBytes.subarray(10, 100))).toBe(true);
  });
});
