import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { expectOciError, manifestOf, pushBlobs, pushManifest, putManifest, uniqueRepo } from '../helpers/http.js';
import { OCI_INDEX, OCI_MANIFEST, blob, imageManifest, pushImage, sha256 } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

const EMPTY = blob('{}');
const SBOM = 'application/vnd.example.sbom.v1+json';
const SIGNATURE = 'application/vnd.example.signature.v1+json';

interface Index {
  schemaVersion: number;
  mediaType: string;
  manifests: { mediaType: string; digest: string; size: number; artifactType?: string; annotations?: Record<string, string> }[];
}

describe('referrers', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => {
    await reg.close();
  });

  /** An artifact manifest (empty config, one layer) pointing at `subject`, its blobs pushed to `repo`. */
  async function artifactFor(repo: string, subject: { digest: string; size: number; mediaType: string }, artifactType: string, note: string) {
    const payload = blob(`payload ${note}`);
    await pushBlobs(reg.url, repo, [EMPTY, payload]);
    return manifestOf(
      {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        artifactType,
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: EMPTY.digest, size: 2 },
        layers: [{ mediaType: artifactType, digest: payload.digest, size: payload.bytes.length }],
        subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
        annotations: { 'org.example.note': note },
      },
      OCI_MANIFEST,
    );
  }

  const referrers = (repo: string, digest: string, query = '') => fetch(`${reg.url}/v2/${repo}/referrers/${digest}${query}`);

  test('a manifest with a subject answers 201 with OCI-Subject', async () => {
    const repo = uniqueRepo('ref');
    const { manifest } = await pushImage(reg.url, repo, 'v1');
    const artifact = await artifactFor(repo, manifest, SBOM, 'subject header');
    const res = await putManifest(reg.url, repo, artifact.digest, artifact.bytes, OCI_MANIFEST);
    expect(res.status).toBe(201);
    expect(res.headers.get('oci-subject')).toBe(manifest.digest);
  });

  test('a manifest without a subject answers 201 with no OCI-Subject', async () => {
    const repo = uniqueRepo('ref');
    const config = blob('{"plain":true}');
    const layer = blob('plain layer');
    await pushBlobs(reg.url, repo, [config, layer]);
    const manifest = imageManifest(config, [layer]);
    const res = await putManifest(reg.url, repo, 'v1', manifest.bytes, manifest.mediaType);
    expect(res.status).toBe(201);
    expect(res.headers.get('oci-subject')).toBeNull();
  });

  test('GET referrers answers 200 with an OCI index listing the referrer with artifactType, annotations, size and digest', async () => {
    const repo = uniqueRepo('ref');
    const { manifest } = await pushImage(reg.url, repo, 'v1');
    const artifact = await artifactFor(repo, manifest, SBOM, 'listed');
    await pushManifest(reg.url, repo, artifact.digest, artifact);
    const res = await referrers(repo, manifest.digest);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(OCI_INDEX);
    expect(await res.json()).toEqual({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [{ mediaType: OCI_MANIFEST, digest: artifact.digest, size: artifact.size, artifactType: SBOM, annotations: { 'org.example.note': 'listed' } }],
    });
  });

  test('referrers are listed for a subject that was never pushed', async () => {
    const repo = uniqueRepo('ref');
    const absent = { digest: sha256('a manifest pushed later, or never'), size: 123, mediaType: OCI_MANIFEST };
    const artifact = await artifactFor(repo, absent, SBOM, 'dangling');
    expect((await putManifest(reg.url, repo, artifact.digest, artifact.bytes, OCI_MANIFEST)).status).toBe(201);
    const body = (await (await referrers(repo, absent.digest)).json()) as Index;
    expect(body.manifests.map((m) => m.digest)).toEqual([artifact.digest]);
  });

  // The spec: "If the artifactType is empty or missing in the image manifest, the value of
  // artifactType MUST be set to the config descriptor mediaType value."
  test.each([['without artifactType', undefined], ['with an empty artifactType', '']])('an image manifest %s is listed under its config media type', async (_case, artifactType) => {
    const repo = uniqueRepo('ref');
    const { manifest } = await pushImage(reg.url, repo, 'v1');
    const config = blob('{"signature":"config"}');
    const layer = blob('signature layer');
    await pushBlobs(reg.url, repo, [config, layer]);
    const signature = manifestOf(
      {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        ...(artifactType === undefined ? {} : { artifactType }),
        config: { mediaType: 'application/vnd.example.sig.config+json', digest: config.digest, size: config.bytes.length },
        layers: [{ mediaType: 'application/octet-stream', digest: layer.digest, size: layer.bytes.length }],
        subject: { mediaType: OCI_MANIFEST, digest: manifest.digest, size: manifest.size },
      },
      OCI_MANIFEST,
    );
    await pushManifest(reg.url, repo, signature.digest, signature);
    const listed = [{ mediaType: OCI_MANIFEST, digest: signature.digest, size: signature.size, artifactType: 'application/vnd.example.sig.config+json' }];
    expect(((await (await referrers(repo, manifest.digest)).json()) as Index).manifests).toEqual(listed);
    const filtered = await referrers(repo, manifest.digest, `?artifactType=${encodeURIComponent('application/vnd.example.sig.config+json')}`);
    expect(((await filtered.json()) as Index).manifests).toEqual(listed);
  });

  test('referrers whose index would pass 4 MiB come in pages linked by Link, each under 4 MiB, every referrer once', async () => {
    const repo = uniqueRepo('ref');
    const { manifest } = await pushImage(reg.url, repo, 'v1');
    const subject = { digest: manifest.digest, size: manifest.size, mediaType: OCI_MANIFEST };
    const pushed = new Set<string>();
    // 44 signatures with 100 KB of annotations each: a 4.4 MB index whole.
    for (let i = 0; i < 44; i++) {
      const type = i % 2 === 0 ? SIGNATURE : SBOM;
      const artifact = await artifactFor(repo, subject, type, `${i} ${'x'.repeat(100_000)}`);
      await pushManifest(reg.url, repo, artifact.digest, artifact);
      pushed.add(`${artifact.digest} ${type}`);
    }
    for (const filter of ['', `?artifactType=${encodeURIComponent(SIGNATURE)}`]) {
      const seen: string[] = [];
      let next: string | undefined = `/v2/${repo}/referrers/${manifest.digest}${filter}`;
      let pages = 0;
      while (next) {
        const res: Response = await fetch(`${reg.url}${next}`);
        expect(res.status).toBe(200);
        const bytes = Buffer.from(await res.arrayBuffer());
        expect(bytes.length).toBeLessThanOrEqual(4 * 1024 * 1024);
        expect(res.headers.get('oci-filters-applied')).toBe(filter ? 'artifactType' : null);
        for (const m of (JSON.parse(bytes.toString()) as Index).manifests) seen.push(`${m.digest} ${m.artifactType}`);
        next = /^<([^>]+)>; rel="next"$/.exec(res.headers.get('link') ?? '')?.[1];
        pages += 1;
      }
      const expected = [...pushed].filter((p) => !filter || p.endsWith(SIGNATURE));
      expect(pages).toBe(filter ? 1 : 2);
      expect(seen.sort()).toEqual(expected.sort());
    }
  });

  test('a digest with no referrers answers 200 with an empty OCI index', async () => {
    const repo = uniqueRepo('ref');
    const { manifest } = await pushImage(reg.url, repo, 'v1');
    const res = await referrers(repo, manifest.digest);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(OCI_INDEX);
    expect(await res.json()).toEqual({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] });
  });

  test('referrers in another repository are not listed', async () => {
    const repo = uniqueRepo('ref');
    const other = uniqueRepo('ref');
    const { manifest } = await pushImage(reg.url, repo, 'v1');
    await pushImage(reg.url, other, 'v1');
    const artifact = await artifactFor(other, manifest, SBOM, 'elsewhere');
    await pushManifest(reg.url, other, artifact.digest, artifact);
    const body = (await (await referrers(repo, manifest.digest)).json()) as Index;
    expect(body.manifests).toEqual([]);
  });

  test('?artifactType= keeps only matching referrers and answers OCI-Filters-Applied: artifactType', async () => {
    const repo = uniqueRepo('ref');
    const { manifest } = await pushImage(reg.url, repo, 'v1');
    const sbom = await artifactFor(repo, manifest, SBOM, 'sbom');
    const sig = await artifactFor(repo, manifest, SIGNATURE, 'sig');
    await pushManifest(reg.url, repo, sbom.digest, sbom);
    await pushManifest(reg.url, repo, sig.digest, sig);
    const all = (await (await referrers(repo, manifest.digest)).json()) as Index;
    expect(all.manifests.map((m) => m.digest).sort()).toEqual([sbom.digest, sig.digest].sort());
    const res = await referrers(repo, manifest.digest, `?artifactType=${encodeURIComponent(SIGNATURE)}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('oci-filters-applied')).toBe('artifactType');
    expect(res.headers.get('content-type')).toBe(OCI_INDEX);
    const body = (await res.json()) as Index;
    expect(body.manifests.map((m) => [m.digest, m.artifactType])).toEqual([[sig.digest, SIGNATURE]]);
  });

  test('a GET without a filter has no OCI-Filters-Applied header', async () => {
    const repo = uniqueRepo('ref');
    const { manifest } = await pushImage(reg.url, repo, 'v1');
    const res = await referrers(repo, manifest.digest);
    expect(res.headers.get('oci-filters-applied')).toBeNull();
    await res.arrayBuffer();
  });

  test('?artifactType= that matches nothing answers an empty index with OCI-Filters-Applied', async () => {
    const repo = uniqueRepo('ref');
    const { manifest } = await pushImage(reg.url, repo, 'v1');
    const sbom = await artifactFor(repo, manifest, SBOM, 'only sbom');
    await pushManifest(reg.url, repo, sbom.digest, sbom);
    const res = await referrers(repo, manifest.digest, `?artifactType=${encodeURIComponent('application/vnd.none')}`);
    expect(res.headers.get('oci-filters-applied')).toBe('artifactType');
    expect(((await res.json()) as Index).manifests).toEqual([]);
  });

  test('a deleted referrer is no longer listed', async () => {
    const repo = uniqueRepo('ref');
    const { manifest } = await pushImage(reg.url, repo, 'v1');
    const sbom = await artifactFor(repo, manifest, SBOM, 'deleted');
    await pushManifest(reg.url, repo, sbom.digest, sbom);
    expect((await fetch(`${reg.url}/v2/${repo}/manifests/${sbom.digest}`, { method: 'DELETE' })).status).toBe(202);
    expect(((await (await referrers(repo, manifest.digest)).json()) as Index).manifests).toEqual([]);
  });

  test('an invalid digest answers 400 DIGEST_INVALID', async () => {
    const repo = uniqueRepo('ref');
    await pushImage(reg.url, repo, 'v1');
    await expectOciError(await referrers(repo, 'sha256:nothex'), 400, 'DIGEST_INVALID');
  });

  test('a tag instead of a digest answers 400 DIGEST_INVALID', async () => {
    const repo = uniqueRepo('ref');
    await pushImage(reg.url, repo, 'v1');
    await expectOciError(await referrers(repo, 'v1'), 400, 'DIGEST_INVALID');
  });

  test('an invalid repository name answers 400 NAME_INVALID', async () => {
    await expectOciError(await referrers('Bad/Name', sha256('x')), 400, 'NAME_INVALID');
  });
});
