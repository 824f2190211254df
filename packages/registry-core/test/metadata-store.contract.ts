import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import type { Digest } from '../src/digest.js';
import { parseManifest, type ParsedManifest } from '../src/manifest.js';
import type { MetadataStore } from '../src/metadata-store.js';
import { compareTags } from '../src/reference.js';
import {
  EMPTY_JSON,
  OCI_CONFIG,
  OCI_EMPTY,
  OCI_INDEX,
  OCI_LAYER,
  OCI_MANIFEST,
  descriptorOf,
  ociIndexBytes,
  ociManifestBytes,
  sha256,
} from './helpers.js';

export interface MetadataStoreFixture {
  readonly store: MetadataStore;
  cleanup(): Promise<void>;
}

/** An image's pieces: its config and one layer (contents), and the manifest over them. */
export interface TestImage {
  readonly config: Buffer;
  readonly layer: Buffer;
  readonly bytes: Buffer;
  readonly manifest: ParsedManifest;
  readonly digest: Digest;
}

export function testImage(seed: string, extra: Record<string, unknown> = {}): TestImage {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', seed }));
  const layer = Buffer.from(`layer of ${seed}`);
  const bytes = ociManifestBytes(descriptorOf(config, OCI_CONFIG), [descriptorOf(layer, OCI_LAYER)], extra);
  const manifest = parseManifest(bytes, OCI_MANIFEST);
  return { config, layer, bytes, manifest, digest: manifest.digest };
}

function blobInfo(content: Buffer) {
  return { digest: sha256(content), size: content.length };
}

/**
 * The behaviour every MetadataStore must have. The factory gives a fresh, empty store per test.
 */
export function describeMetadataStore(name: string, make: () => Promise<MetadataStoreFixture>): void {
  describe(`MetadataStore contract: ${name}`, () => {
    let fx: MetadataStoreFixture;
    let store: MetadataStore;

    beforeEach(async () => {
      fx = await make();
      store = fx.store;
    });

    afterEach(async () => {
      await fx.cleanup();
    });

    async function linkImage(repo: string, image: TestImage): Promise<void> {
      await store.linkBlob(repo, blobInfo(image.config));
      await store.linkBlob(repo, blobInfo(image.layer));
    }

    async function pushImage(repo: string, image: TestImage, tags: string[] = []): Promise<void> {
      await linkImage(repo, image);
      await store.putManifest(repo, image.manifest, image.bytes, tags);
    }

    describe('blob links', () => {
      const content = Buffer.from('a layer');
      const info = blobInfo(content);

      test('a linked blob is known to its repository', async () => {
        await store.linkBlob('alice/a', info);
        expect(await store.blob('alice/a', info.digest)).toEqual(info);
      });

      test('a blob linked to one repository is absent from another', async () => {
        await store.linkBlob('alice/a', info);
        expect(await store.blob('bob/b', info.digest)).toBeUndefined();
        expect(await store.blob('alice', info.digest)).toBeUndefined();
        expect(await store.blob('alice/a/b', info.digest)).toBeUndefined();
      });

      test('linking the same blob twice is harmless', async () => {
        await store.linkBlob('alice/a', info);
        await store.linkBlob('alice/a', info);
        expect(await store.blob('alice/a', info.digest)).toEqual(info);
      });

      test('the same blob can be linked to two repositories', async () => {
        await store.linkBlob('alice/a', info);
        await store.linkBlob('bob/b', info);
        expect(await store.blob('alice/a', info.digest)).toEqual(info);
        expect(await store.blob('bob/b', info.digest)).toEqual(info);
      });

      test('an unknown digest is absent', async () => {
        await store.linkBlob('alice/a', info);
        expect(await store.blob('alice/a', sha256('never linked'))).toBeUndefined();
      });

      test('unlinkBlob removes the link from that repository only', async () => {
        await store.linkBlob('alice/a', info);
        await store.linkBlob('bob/b', info);
        expect(await store.unlinkBlob('alice/a', info.digest)).toBe(true);
        expect(await store.blob('alice/a', info.digest)).toBeUndefined();
        expect(await store.blob('bob/b', info.digest)).toEqual(info);
        expect(await store.unlinkBlob('alice/a', info.digest)).toBe(false);
      });

      test('unlinkBlob in an unknown repository is false', async () => {
        expect(await store.unlinkBlob('nobody/here', info.digest)).toBe(false);
      });

      test('linking a blob makes the repository exist', async () => {
        expect(await store.repositoryExists('alice/a')).toBe(false);
        await store.linkBlob('alice/a', info);
        expect(await store.repositoryExists('alice/a')).toBe(true);
        expect(await store.repositoryExists('alice')).toBe(false);
        // It holds no image yet: to those who pull, the name is not a local one.
        expect(await store.repositoryHasManifests('alice/a')).toBe(false);
      });
    });

    describe('putManifest', () => {
      const img = testImage('one');

      test('stores the bytes exactly as received, under their digest', async () => {
        // Unusual but valid JSON formatting: re-serialising would change the digest.
        const config = Buffer.from('{"os":"linux"}');
        const layer = Buffer.from('layer');
        const text = `{\n  "schemaVersion" : 2,\n\t"mediaType": "${OCI_MANIFEST}",\n  "config": ${JSON.stringify(descriptorOf(config, OCI_CONFIG))},\n  "layers": [ ${JSON.stringify(descriptorOf(layer, OCI_LAYER))} ]\n}\n`;
        const bytes = Buffer.from(text);
        const manifest = parseManifest(bytes, undefined);
        await store.linkBlob('alice/a', blobInfo(config));
        await store.linkBlob('alice/a', blobInfo(layer));
        await store.putManifest('alice/a', manifest, bytes, []);
        const stored = await store.manifest('alice/a', sha256(bytes));
        expect(stored).toBeDefined();
        expect(stored!.digest).toBe(sha256(bytes));
        expect(stored!.mediaType).toBe(OCI_MANIFEST);
        expect(Buffer.compare(stored!.bytes, bytes)).toBe(0);
        expect(stored!.bytes.toString('utf8')).toBe(text);
      });

      test('a manifest is visible only in its repository', async () => {
        await pushImage('alice/a', img, ['latest']);
        expect(await store.manifest('bob/b', img.digest)).toBeUndefined();
        expect(await store.taggedManifest('bob/b', 'latest')).toBeUndefined();
      });

      test('refuses a manifest whose blobs are not linked: MANIFEST_BLOB_UNKNOWN, nothing stored', async () => {
        await store.linkBlob('alice/a', blobInfo(img.config)); // the layer is missing
        await expect(store.putManifest('alice/a', img.manifest, img.bytes, ['latest'])).rejects.toMatchObject({
          code: 'MANIFEST_BLOB_UNKNOWN',
          detail: { digest: sha256(img.layer) },
        });
        expect(await store.manifest('alice/a', img.digest)).toBeUndefined();
        expect(await store.taggedManifest('alice/a', 'latest')).toBeUndefined();
        expect(await store.tags('alice/a', {})).toEqual([]);
      });

      test('refuses a manifest whose config is missing', async () => {
        await store.linkBlob('alice/a', blobInfo(img.layer));
        await expect(store.putManifest('alice/a', img.manifest, img.bytes, [])).rejects.toMatchObject({ code: 'MANIFEST_BLOB_UNKNOWN' });
      });

      test('refuses a manifest whose blobs are linked only to another repository', async () => {
        await linkImage('bob/b', img);
        await expect(store.putManifest('alice/a', img.manifest, img.bytes, [])).rejects.toMatchObject({ code: 'MANIFEST_BLOB_UNKNOWN' });
        expect(await store.manifest('alice/a', img.digest)).toBeUndefined();
      });

      test('refuses a descriptor whose size differs from the stored blob: MANIFEST_INVALID', async () => {
        await store.linkBlob('alice/a', blobInfo(img.config));
        await store.linkBlob('alice/a', { digest: sha256(img.layer), size: img.layer.length + 1 });
        await expect(store.putManifest('alice/a', img.manifest, img.bytes, ['latest'])).rejects.toMatchObject({ code: 'MANIFEST_INVALID' });
        expect(await store.manifest('alice/a', img.digest)).toBeUndefined();
        expect(await store.taggedManifest('alice/a', 'latest')).toBeUndefined();
      });

      test('an index needs its child manifests in the repository', async () => {
        const child = testImage('child');
        const bytes = ociIndexBytes([{ mediaType: OCI_MANIFEST, digest: child.digest, size: child.bytes.length }]);
        const index = parseManifest(bytes, OCI_INDEX);
        await linkImage('alice/a', child); // blobs present, child manifest not pushed
        await expect(store.putManifest('alice/a', index, bytes, ['multi'])).rejects.toMatchObject({
          code: 'MANIFEST_BLOB_UNKNOWN',
          detail: { digest: child.digest },
        });
        expect(await store.manifest('alice/a', index.digest)).toBeUndefined();
        expect(await store.taggedManifest('alice/a', 'multi')).toBeUndefined();
      });

      test('an index whose child manifest is only in another repository is refused', async () => {
        const child = testImage('child');
        await pushImage('bob/b', child);
        const bytes = ociIndexBytes([{ mediaType: OCI_MANIFEST, digest: child.digest, size: child.bytes.length }]);
        await expect(store.putManifest('alice/a', parseManifest(bytes, OCI_INDEX), bytes, [])).rejects.toMatchObject({
          code: 'MANIFEST_BLOB_UNKNOWN',
        });
      });

      test('an index over pushed children is stored', async () => {
        const amd = testImage('amd64');
        const arm = testImage('arm64');
        await pushImage('alice/a', amd);
        await pushImage('alice/a', arm);
        const bytes = ociIndexBytes([
          { mediaType: OCI_MANIFEST, digest: amd.digest, size: amd.bytes.length },
          { mediaType: OCI_MANIFEST, digest: arm.digest, size: arm.bytes.length },
        ]);
        const index = parseManifest(bytes, OCI_INDEX);
        await store.putManifest('alice/a', index, bytes, ['multi']);
        const stored = await store.taggedManifest('alice/a', 'multi');
        expect(stored?.digest).toBe(index.digest);
        expect(stored?.mediaType).toBe(OCI_INDEX);
        expect(stored && Buffer.compare(stored.bytes, bytes)).toBe(0);
      });

      test('putting the same manifest again is idempotent and adds its new tags', async () => {
        await pushImage('alice/a', img, ['v1']);
        await store.putManifest('alice/a', img.manifest, img.bytes, ['v1', 'latest']);
        expect(await store.tags('alice/a', {})).toEqual(['latest', 'v1']);
        expect((await store.manifest('alice/a', img.digest))?.bytes.equals(img.bytes)).toBe(true);
      });

      test('the same manifest in two repositories is two independent records', async () => {
        await pushImage('alice/a', img, ['latest']);
        await pushImage('bob/b', img, ['latest']);
        expect(await store.deleteManifest('alice/a', img.digest)).toBe(true);
        expect(await store.manifest('alice/a', img.digest)).toBeUndefined();
        expect((await store.manifest('bob/b', img.digest))?.digest).toBe(img.digest);
        expect((await store.taggedManifest('bob/b', 'latest'))?.digest).toBe(img.digest);
      });
    });

    describe('tags', () => {
      test('taggedManifest resolves a tag to its manifest', async () => {
        const img = testImage('one');
        await pushImage('alice/a', img, ['latest', 'v1']);
        for (const tag of ['latest', 'v1']) {
          const stored = await store.taggedManifest('alice/a', tag);
          expect(stored?.digest).toBe(img.digest);
          expect(stored?.mediaType).toBe(OCI_MANIFEST);
          expect(stored?.bytes.equals(img.bytes)).toBe(true);
        }
        expect(await store.taggedManifest('alice/a', 'v2')).toBeUndefined();
      });

      test('pushing another manifest under a tag moves the tag', async () => {
        const one = testImage('one');
        const two = testImage('two');
        await pushImage('alice/a', one, ['latest', 'v1']);
        await pushImage('alice/a', two, ['latest']);
        expect((await store.taggedManifest('alice/a', 'latest'))?.digest).toBe(two.digest);
        expect((await store.taggedManifest('alice/a', 'v1'))?.digest).toBe(one.digest);
        expect(await store.tags('alice/a', {})).toEqual(['latest', 'v1']);
        // the old manifest stays, reachable by digest
        expect((await store.manifest('alice/a', one.digest))?.digest).toBe(one.digest);
      });

      test('tags of one repository do not leak into another', async () => {
        await pushImage('alice/a', testImage('one'), ['latest']);
        await pushImage('bob/b', testImage('two'), ['stable']);
        expect(await store.tags('alice/a', {})).toEqual(['latest']);
        expect(await store.tags('bob/b', {})).toEqual(['stable']);
      });

      test('deleteManifest removes the manifest and every tag pointing at it', async () => {
        const one = testImage('one');
        const two = testImage('two');
        await pushImage('alice/a', one, ['latest', 'v1']);
        await pushImage('alice/a', two, ['v2']);
        expect(await store.deleteManifest('alice/a', one.digest)).toBe(true);
        expect(await store.manifest('alice/a', one.digest)).toBeUndefined();
        expect(await store.taggedManifest('alice/a', 'latest')).toBeUndefined();
        expect(await store.taggedManifest('alice/a', 'v1')).toBeUndefined();
        expect(await store.tags('alice/a', {})).toEqual(['v2']);
        expect(await store.deleteManifest('alice/a', one.digest)).toBe(false);
        // Holding a manifest, the repository is a local one; its last deleted, it is not any more.
        expect(await store.repositoryHasManifests('alice/a')).toBe(true);
        expect(await store.deleteManifest('alice/a', two.digest)).toBe(true);
        expect(await store.repositoryHasManifests('alice/a')).toBe(false);
        expect(await store.repositoryExists('alice/a')).toBe(true);
      });

      test('deleteManifest of an unknown manifest or repository is false', async () => {
        await pushImage('alice/a', testImage('one'));
        expect(await store.deleteManifest('alice/a', sha256('nothing'))).toBe(false);
        expect(await store.deleteManifest('nobody/here', sha256('nothing'))).toBe(false);
      });

      test('deleteTag removes the tag and keeps the manifest', async () => {
        const img = testImage('one');
        await pushImage('alice/a', img, ['latest', 'v1']);
        expect(await store.deleteTag('alice/a', 'latest')).toBe(true);
        expect(await store.taggedManifest('alice/a', 'latest')).toBeUndefined();
        expect((await store.taggedManifest('alice/a', 'v1'))?.digest).toBe(img.digest);
        expect((await store.manifest('alice/a', img.digest))?.bytes.equals(img.bytes)).toBe(true);
        expect(await store.tags('alice/a', {})).toEqual(['v1']);
        expect(await store.deleteTag('alice/a', 'latest')).toBe(false);
      });

      test('deleteTag of another repository’s tag is false and changes nothing', async () => {
        const img = testImage('one');
        await pushImage('alice/a', img, ['latest']);
        await pushImage('bob/b', testImage('two'));
        expect(await store.deleteTag('bob/b', 'latest')).toBe(false);
        expect((await store.taggedManifest('alice/a', 'latest'))?.digest).toBe(img.digest);
      });

      test('tags are listed in the spec\'s lexical order: case-insensitive, not numeric', async () => {
        await pushImage('alice/a', testImage('one'), ['v2', 'latest', 'V1', '1.10', '1.9', '_x', 'a-b', 'a.b', 'Z', 'b', 'v1']);
        const expected = ['1.10', '1.9', '_x', 'a-b', 'a.b', 'b', 'latest', 'V1', 'v1', 'v2', 'Z'];
        expect(await store.tags('alice/a', {})).toEqual(expected);
        // compareTags (the proxy's sort) agrees.
        expect([...expected].reverse().sort(compareTags)).toEqual(expected);
      });

      test('tags pagination in that order: last continues after a tag whatever its case', async () => {
        await pushImage('alice/a', testImage('one'), ['b', 'Z', 'A', 'a', 'V1', 'v1', 'v2']);
        expect(await store.tags('alice/a', { n: 2 })).toEqual(['A', 'a']);
        expect(await store.tags('alice/a', { n: 2, last: 'a' })).toEqual(['b', 'V1']);
        expect(await store.tags('alice/a', { n: 2, last: 'V1' })).toEqual(['v1', 'v2']);
        expect(await store.tags('alice/a', { n: 2, last: 'v2' })).toEqual(['Z']);
        expect(await store.tags('alice/a', { last: 'B' })).toEqual(['b', 'V1', 'v1', 'v2', 'Z']);
      });

      test('tags pagination: n limits the page, last continues after a tag', async () => {
        const tags = ['a', 'b', 'c', 'd', 'e'];
        await pushImage('alice/a', testImage('one'), [...tags].reverse());
        expect(await store.tags('alice/a', { n: 2 })).toEqual(['a', 'b']);
        expect(await store.tags('alice/a', { n: 2, last: 'b' })).toEqual(['c', 'd']);
        expect(await store.tags('alice/a', { n: 2, last: 'd' })).toEqual(['e']);
        expect(await store.tags('alice/a', { n: 2, last: 'e' })).toEqual([]);
        expect(await store.tags('alice/a', { last: 'b' })).toEqual(['c', 'd', 'e']);
        expect(await store.tags('alice/a', { n: 0 })).toEqual([]);
        expect(await store.tags('alice/a', { n: 100 })).toEqual(tags);
      });

      test('tags pagination: last need not be an existing tag', async () => {
        await pushImage('alice/a', testImage('one'), ['apple', 'banana', 'cherry']);
        expect(await store.tags('alice/a', { last: 'b' })).toEqual(['banana', 'cherry']);
        expect(await store.tags('alice/a', { last: 'bz', n: 1 })).toEqual(['cherry']);
      });

      test('tags of an unknown repository are undefined', async () => {
        expect(await store.tags('nobody/here', {})).toBeUndefined();
        await pushImage('alice/a', testImage('one'), ['latest']);
        expect(await store.tags('alice', {})).toBeUndefined();
      });

      test('a known repository without tags has an empty tag list', async () => {
        await pushImage('alice/a', testImage('one'));
        expect(await store.tags('alice/a', {})).toEqual([]);
      });
    });

    describe('repositories', () => {
      test('lists repositories holding manifests, in lexical order, paginated', async () => {
        for (const repo of ['zeta', 'alpha/b', 'alpha', 'mid/x/y']) await pushImage(repo, testImage(repo));
        expect(await store.repositories({})).toEqual(['alpha', 'alpha/b', 'mid/x/y', 'zeta']);
        expect(await store.repositories({ n: 2 })).toEqual(['alpha', 'alpha/b']);
        expect(await store.repositories({ n: 2, last: 'alpha/b' })).toEqual(['mid/x/y', 'zeta']);
        expect(await store.repositories({ n: 2, last: 'zeta' })).toEqual([]);
        expect(await store.repositories({ last: 'b' })).toEqual(['mid/x/y', 'zeta']);
      });

      test('an empty store lists no repositories', async () => {
        expect(await store.repositories({})).toEqual([]);
      });

      test('a repository with blobs but no manifest is not listed', async () => {
        await store.linkBlob('only/blobs', blobInfo(Buffer.from('x')));
        await pushImage('with/manifest', testImage('one'));
        expect(await store.repositories({})).toEqual(['with/manifest']);
      });
    });

    describe('referrers', () => {
      async function pushArtifact(repo: string, subject: TestImage, artifactType: string, annotations: Record<string, string>, payload: string) {
        const layer = Buffer.from(payload);
        await store.linkBlob(repo, blobInfo(EMPTY_JSON));
        await store.linkBlob(repo, blobInfo(layer));
        const bytes = ociManifestBytes(descriptorOf(EMPTY_JSON, OCI_EMPTY), [descriptorOf(layer, 'application/vnd.example.sig')], {
          artifactType,
          subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.bytes.length },
          annotations,
        });
        const manifest = parseManifest(bytes, OCI_MANIFEST);
        await store.putManifest(repo, manifest, bytes, []);
        return { bytes, digest: manifest.digest };
      }

      test('lists the manifests whose subject is the digest, with artifactType and annotations', async () => {
        const subject = testImage('subject');
        await pushImage('alice/a', subject, ['latest']);
        const sig = await pushArtifact('alice/a', subject, 'application/vnd.example.signature', { 'org.example.by': 'alice' }, 'sig');
        const sbom = await pushArtifact('alice/a', subject, 'application/vnd.example.sbom', { 'org.example.format': 'spdx' }, 'sbom');
        const referrers = await store.referrers('alice/a', subject.digest);
        expect(referrers).toHaveLength(2);
        expect(referrers).toEqual(
          expect.arrayContaining([
            {
              mediaType: OCI_MANIFEST,
              digest: sig.digest,
              size: sig.bytes.length,
              artifactType: 'application/vnd.example.signature',
              annotations: { 'org.example.by': 'alice' },
            },
            {
              mediaType: OCI_MANIFEST,
              digest: sbom.digest,
              size: sbom.bytes.length,
              artifactType: 'application/vnd.example.sbom',
              annotations: { 'org.example.format': 'spdx' },
            },
          ]),
        );
      });

      test('an image manifest with a subject and no artifactType is listed under its config media type', async () => {
        const subject = testImage('subject');
        await pushImage('alice/a', subject);
        const referrer = testImage('referrer', { subject: { mediaType: OCI_MANIFEST, digest: subject.digest, size: subject.bytes.length } });
        await pushImage('alice/a', referrer);
        expect(await store.referrers('alice/a', subject.digest)).toEqual([
          { mediaType: OCI_MANIFEST, digest: referrer.digest, size: referrer.bytes.length, artifactType: OCI_CONFIG },
        ]);
      });

      test('a digest nothing refers to has no referrers', async () => {
        const subject = testImage('subject');
        await pushImage('alice/a', subject);
        expect(await store.referrers('alice/a', subject.digest)).toEqual([]);
        expect(await store.referrers('nobody/here', subject.digest)).toEqual([]);
      });

      test('referrers are per repository', async () => {
        const subject = testImage('subject');
        await pushImage('alice/a', subject);
        await pushImage('bob/b', subject);
        await pushArtifact('alice/a', subject, 'application/vnd.example.signature', {}, 'sig');
        expect(await store.referrers('alice/a', subject.digest)).toHaveLength(1);
        expect(await store.referrers('bob/b', subject.digest)).toEqual([]);
      });

      test('a referrer may be pushed before its subject', async () => {
        const subject = testImage('subject');
        const sig = await pushArtifact('alice/a', subject, 'application/vnd.example.signature', {}, 'sig');
        expect((await store.referrers('alice/a', subject.digest)).map((d) => d.digest)).toEqual([sig.digest]);
      });

      test('a deleted referrer is no longer listed', async () => {
        const subject = testImage('subject');
        await pushImage('alice/a', subject);
        const sig = await pushArtifact('alice/a', subject, 'application/vnd.example.signature', {}, 'sig');
        await store.deleteManifest('alice/a', sig.digest);
        expect(await store.referrers('alice/a', subject.digest)).toEqual([]);
      });
    });
  });
}
