// One page of a subject's referrers: all of them while their index fits, else pages in digest order;
// each order is read only as far as the page needs (a store reads rows as they are asked for).
import { describe, expect, test } from '@jest/globals';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Descriptor } from '../src/manifest.js';
import { referrersPage, referrersPageOf, type ReferrersQuery } from '../src/referrers-page.js';
import { openDatabase } from '../src/sqlite/database.js';
import { SqliteMetadataStore } from '../src/sqlite/sqlite-metadata-store.js';
import { parseManifest } from '../src/manifest.js';
import { sha256 } from './helpers.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const descriptor = (i: number, artifactType = i % 2 ? 'application/x.sig' : 'application/x.sbom'): Descriptor => ({
  mediaType: OCI_MANIFEST,
  digest: sha256(`referrer ${i}`),
  size: 100 + i,
  artifactType,
});
const bytesOf = (page: readonly Descriptor[]) => Buffer.byteLength(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: page }));

/** Every page of a query, following `last` as the route's Link does. */
function allPages(page: (query: ReferrersQuery) => { descriptors: Descriptor[]; more: boolean }, query: ReferrersQuery): Descriptor[][] {
  const pages: Descriptor[][] = [];
  let last: string | undefined;
  for (;;) {
    const p = page({ ...query, ...(last !== undefined ? { last } : {}) });
    pages.push(p.descriptors);
    if (!p.more) return pages;
    last = p.descriptors.at(-1)!.digest;
  }
}

describe('referrersPage', () => {
  const all = Array.from({ length: 40 }, (_, i) => descriptor(i));

  test('all of them, in the order they came, while their index fits', () => {
    expect(referrersPageOf(all, {})).toEqual({ descriptors: all, more: false });
    expect(referrersPageOf(all, { artifactType: 'application/x.sig' }).descriptors).toEqual(all.filter((d) => d.artifactType === 'application/x.sig'));
  });

  test('past maxBytes: pages in digest order, each within it, every referrer once', () => {
    const maxBytes = 1_000;
    const pages = allPages((q) => referrersPageOf(all, q), { maxBytes });
    expect(pages.length).toBeGreaterThan(3);
    for (const page of pages) expect(bytesOf(page)).toBeLessThanOrEqual(maxBytes);
    const listed = pages.flat().map((d) => d.digest);
    expect(listed).toEqual(all.map((d) => d.digest).sort());
  });

  test('reads each order only as far as the page needs', () => {
    let age = 0;
    let digest = 0;
    const counted = function* (list: readonly Descriptor[], count: () => void): Generator<Descriptor> {
      for (const d of list) {
        count();
        yield d;
      }
    };
    const sorted = [...all].sort((a, b) => (a.digest < b.digest ? -1 : 1));
    const page = referrersPage(
      () => counted(all, () => (age += 1)),
      (after) => counted(sorted.filter((d) => after === undefined || d.digest > after), () => (digest += 1)),
      { maxBytes: 1_000 },
    );
    // The first descriptor past the limit ends each read: the whole list is never read.
    expect(age).toBe(page.descriptors.length + 1);
    expect(digest).toBe(page.descriptors.length + 1);
    expect(page.more).toBe(true);
  });
});

describe('SqliteMetadataStore.referrersPage', () => {
  test('pages of a stored subject, filtered by artifactType, every referrer once', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'wharf-referrers-'));
    const db = openDatabase(join(dir, 'm.db'));
    try {
      const store = new SqliteMetadataStore(db);
      const config = Buffer.from('{}');
      await store.linkBlob('a/b', { digest: sha256(config), size: 2 });
      const subject = { mediaType: OCI_MANIFEST, digest: sha256('subject'), size: 7 };
      const pushed: Descriptor[] = [];
      for (let i = 0; i < 60; i++) {
        const artifactType = i % 3 === 0 ? 'application/x.sig' : 'application/x.sbom';
        const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType, config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256(config), size: 2 }, layers: [], subject, annotations: { n: String(i) } }));
        const manifest = parseManifest(bytes, OCI_MANIFEST);
        await store.putManifest('a/b', manifest, bytes, []);
        pushed.push({ mediaType: OCI_MANIFEST, digest: manifest.digest, size: bytes.length, artifactType, annotations: { n: String(i) } });
      }
      const whole = await store.referrersPage('a/b', subject.digest, {});
      expect(whole).toEqual({ descriptors: await store.referrers('a/b', subject.digest), more: false });
      expect(whole.descriptors).toHaveLength(60);
      const pages: Descriptor[][] = [];
      let last: string | undefined;
      for (;;) {
        const page = await store.referrersPage('a/b', subject.digest, { artifactType: 'application/x.sig', maxBytes: 1_500, ...(last !== undefined ? { last } : {}) });
        pages.push(page.descriptors);
        if (!page.more) break;
        last = page.descriptors.at(-1)!.digest;
      }
      expect(pages.length).toBeGreaterThan(2);
      for (const page of pages) expect(bytesOf(page)).toBeLessThanOrEqual(1_500);
      const sigs = pushed.filter((d) => d.artifactType === 'application/x.sig');
      expect(pages.flat()).toEqual([...sigs].sort((a, b) => (a.digest < b.digest ? -1 : 1)));
    } finally {
      db.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
