import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { pushImage } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** Listings longer than one page must always say where the rest is: never a silent cut. */
describe('pagination past the page cap', () => {
  let reg: TestRegistry;
  const TAGS = 10_001;

  beforeAll(async () => {
    reg = await startRegistry();
    const { manifest } = await pushImage(reg.url, 'big/repo', 'seed');
    // Seed the tags straight into the database: 10,001 HTTP pushes would dominate the test's time.
    const insert = reg.db.prepare(
      `INSERT INTO tags (repository_id, name, digest, updated_at)
       SELECT id, ?, ?, 0 FROM repositories WHERE name = 'big/repo'`,
    );
    reg.db.transaction(() => {
      for (let i = 0; i < TAGS; i++) insert.run(`t${String(i).padStart(5, '0')}`, manifest.digest);
    })();
  });
  afterAll(async () => {
    await reg.close();
  });

  test('a tag list without n that exceeds one page carries a Link, and following it yields every tag once', async () => {
    const seen: string[] = [];
    let next: string | undefined = '/v2/big/repo/tags/list';
    let pages = 0;
    while (next) {
      const res: Response = await fetch(`${reg.url}${next}`);
      expect(res.status).toBe(200);
      const body = (await res.json()) as { tags: string[] };
      seen.push(...body.tags);
      pages += 1;
      next = /^<([^>]+)>; rel="next"$/.exec(res.headers.get('link') ?? '')?.[1];
    }
    expect(pages).toBe(2);
    expect(seen).toHaveLength(TAGS + 1); // and the 'seed' tag
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual([...seen].sort());
  });

  test('an n larger than the cap is answered with a full page and a Link', async () => {
    const res = await fetch(`${reg.url}/v2/big/repo/tags/list?n=50000`);
    const body = (await res.json()) as { tags: string[] };
    expect(body.tags).toHaveLength(10_000);
    expect(res.headers.get('link')).toMatch(/^<\/v2\/big\/repo\/tags\/list\?n=10000&last=t09998>; rel="next"$/);
  });

  test('n = 10,000, the cap the README names, is a page of 10,000 (the spec: n results unless fewer exist)', async () => {
    // It was 9,999: the store's limit was the cap, and the route asks one more to learn that more follow.
    for (const query of ['?n=10000', '']) {
      const res = await fetch(`${reg.url}/v2/big/repo/tags/list${query}`);
      expect(((await res.json()) as { tags: string[] }).tags).toHaveLength(10_000);
    }
  });
});
