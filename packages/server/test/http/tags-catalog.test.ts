import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { expectOciError, nextLink, pushManifest, uniqueRepo } from '../helpers/http.js';
import { blob, pushBlob, pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** Pushes one image and tags it with every name in `tags`, in the order given. */
async function tagged(url: string, repo: string, tags: readonly string[]): Promise<void> {
  const { manifest } = await pushImage(url, repo, tags[0]!, repo);
  for (const tag of tags.slice(1)) await pushManifest(url, repo, tag, manifest);
}

/** Byte order, which is what "lexical" means for the ASCII tag alphabet. */
function lexical(values: readonly string[]): string[] {
  return [...values].sort((a, b) => (Buffer.compare(Buffer.from(a), Buffer.from(b))));
}

/** The spec's order for tags: "lexical order (i.e. case-insensitive alphanumeric order)"; ties by bytes. */
function tagOrder(values: readonly string[]): string[] {
  return [...values].sort((a, b) => Buffer.compare(Buffer.from(a.toLowerCase()), Buffer.from(b.toLowerCase())) || Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

describe('tags list', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => {
    await reg.close();
  });

  const list = (repo: string, query = '') => fetch(`${reg.url}/v2/${repo}/tags/list${query}`);

  test('tags come back in the spec\'s lexical, case-insensitive order, and pages follow it', async () => {
    const repo = uniqueRepo('tags');
    const tags = ['v2', 'latest', 'V1', '10', '9', 'a_b', 'a-b', 'a.b', 'A', '_x', 'z', 'Z', 'B', 'v1'];
    await tagged(reg.url, repo, tags);
    const res = await list(repo);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json(;|$)/);
    const expected = tagOrder(tags);
    expect(expected.slice(-4)).toEqual(['v1', 'v2', 'Z', 'z']);
    expect(await res.json()).toEqual({ name: repo, tags: expected });
    const paged: string[] = [];
    let next: string | undefined = `/v2/${repo}/tags/list?n=3`;
    while (next) {
      const page: Response = await fetch(`${reg.url}${next}`);
      paged.push(...((await page.json()) as { tags: string[] }).tags);
      next = /^<([^>]+)>; rel="next"$/.exec(page.headers.get('link') ?? '')?.[1];
    }
    expect(paged).toEqual(expected);
  });

  test('a full list has no Link header', async () => {
    const repo = uniqueRepo('tags');
    await tagged(reg.url, repo, ['a', 'b']);
    const res = await list(repo);
    expect(res.headers.get('link')).toBeNull();
    await res.arrayBuffer();
  });

  test('n limits the page and Link points at the next one with n and last', async () => {
    const repo = uniqueRepo('tags');
    await tagged(reg.url, repo, ['e', 'd', 'c', 'b', 'a']);
    const res = await list(repo, '?n=2');
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ name: repo, tags: ['a', 'b'] });
    expect(res.headers.get('link')).toBe(`</v2/${repo}/tags/list?n=2&last=b>; rel="next"`);
  });

  test('following Link walks every tag once and the last page has no Link', async () => {
    const repo = uniqueRepo('tags');
    const tags = ['t1', 't2', 't3', 't4', 't5'];
    await tagged(reg.url, repo, tags);
    const seen: string[] = [];
    let path: string | undefined = `/v2/${repo}/tags/list?n=2`;
    const pages: number[] = [];
    while (path !== undefined) {
      const res: Response = await fetch(`${reg.url}${path}`);
      expect(res.status).toBe(200);
      const body = (await res.json()) as { tags: string[] };
      pages.push(body.tags.length);
      seen.push(...body.tags);
      path = nextLink(res);
    }
    expect(seen).toEqual(tags);
    expect(pages).toEqual([2, 2, 1]);
  });

  test('a page that ends exactly at the last tag has no Link', async () => {
    const repo = uniqueRepo('tags');
    await tagged(reg.url, repo, ['a', 'b', 'c', 'd']);
    const res = await list(repo, '?n=2&last=b');
    expect(await res.json()).toEqual({ name: repo, tags: ['c', 'd'] });
    expect(res.headers.get('link')).toBeNull();
  });

  test('n larger than the number of tags returns them all without Link', async () => {
    const repo = uniqueRepo('tags');
    await tagged(reg.url, repo, ['a', 'b', 'c']);
    const res = await list(repo, '?n=100');
    expect(await res.json()).toEqual({ name: repo, tags: ['a', 'b', 'c'] });
    expect(res.headers.get('link')).toBeNull();
  });

  test('last alone returns the tags after it', async () => {
    const repo = uniqueRepo('tags');
    await tagged(reg.url, repo, ['a', 'b', 'c', 'd']);
    const res = await list(repo, '?last=b');
    expect(await res.json()).toEqual({ name: repo, tags: ['c', 'd'] });
  });

  test('last need not be an existing tag', async () => {
    const repo = uniqueRepo('tags');
    await tagged(reg.url, repo, ['a', 'c', 'e']);
    const res = await list(repo, '?n=1&last=b');
    expect(await res.json()).toEqual({ name: repo, tags: ['c'] });
    expect(res.headers.get('link')).toBe(`</v2/${repo}/tags/list?n=1&last=c>; rel="next"`);
  });

  test('n=0 answers an empty list with no Link', async () => {
    const repo = uniqueRepo('tags');
    await tagged(reg.url, repo, ['a', 'b']);
    const res = await list(repo, '?n=0');
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ name: repo, tags: [] });
    expect(res.headers.get('link')).toBeNull();
  });

  test('a repository with blobs but no tags answers an empty list', async () => {
    const repo = uniqueRepo('tags');
    await pushBlob(reg.url, repo, blob('just a blob'));
    const res = await list(repo);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ name: repo, tags: [] });
  });

  test('an unknown repository answers 404 NAME_UNKNOWN', async () => {
    await expectOciError(await list(uniqueRepo('nobody')), 404, 'NAME_UNKNOWN');
  });

  test('an unknown repository answers 404 NAME_UNKNOWN with n=0 too', async () => {
    await expectOciError(await list(uniqueRepo('nobody'), '?n=0'), 404, 'NAME_UNKNOWN');
  });

  test('a negative n answers 400', async () => {
    const repo = uniqueRepo('tags');
    await tagged(reg.url, repo, ['a']);
    await expectOciError(await list(repo, '?n=-1'), 400);
  });

  test('a non-numeric n answers 400', async () => {
    const repo = uniqueRepo('tags');
    await tagged(reg.url, repo, ['a']);
    await expectOciError(await list(repo, '?n=ten'), 400);
  });

  test('an invalid repository name answers 400 NAME_INVALID', async () => {
    await expectOciError(await list('Upper/Case'), 400, 'NAME_INVALID');
  });
});

describe('_catalog', () => {
  let reg: TestRegistry;
  // Pushed in this order; the catalog must list them sorted.
  const names = ['zeta/app', 'alpha/app', 'alpha/app-b', 'mid', 'alpha/app/sub'];
  beforeAll(async () => {
    reg = await startRegistry();
    for (const name of names) await pushImage(reg.url, name, 'v1');
    // A repository holding only a blob has no image to list.
    await pushBlob(reg.url, 'blob-only', blob('no manifest here'));
  });
  afterAll(async () => {
    await reg.close();
  });

  const catalog = (query = '') => fetch(`${reg.url}/v2/_catalog${query}`);

  test('lists every repository with a manifest, in lexical order', async () => {
    const res = await catalog();
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json(;|$)/);
    expect(await res.json()).toEqual({ repositories: lexical(names) });
    expect(res.headers.get('link')).toBeNull();
  });

  test('n limits the page and Link points at the next one with n and last', async () => {
    const res = await catalog('?n=2');
    const sorted = lexical(names);
    expect(await res.json()).toEqual({ repositories: sorted.slice(0, 2) });
    expect(res.headers.get('link')).toBe(`</v2/_catalog?n=2&last=${encodeURIComponent(sorted[1]!)}>; rel="next"`);
  });

  test('following Link walks every repository once and the last page has no Link', async () => {
    const seen: string[] = [];
    let path: string | undefined = '/v2/_catalog?n=2';
    let pages = 0;
    while (path !== undefined) {
      const res: Response = await fetch(`${reg.url}${path}`);
      expect(res.status).toBe(200);
      seen.push(...((await res.json()) as { repositories: string[] }).repositories);
      path = nextLink(res);
      pages += 1;
    }
    expect(seen).toEqual(lexical(names));
    expect(pages).toBe(3);
  });

  test('last alone returns the repositories after it', async () => {
    const res = await catalog('?last=mid');
    expect(await res.json()).toEqual({ repositories: ['zeta/app'] });
  });

  test('n=0 answers an empty list with no Link', async () => {
    const res = await catalog('?n=0');
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ repositories: [] });
    expect(res.headers.get('link')).toBeNull();
  });

  test('an invalid n answers 400', async () => {
    await expectOciError(await catalog('?n=abc'), 400);
  });

  test('a negative n answers 400', async () => {
    await expectOciError(await catalog('?n=-5'), 400);
  });
});
