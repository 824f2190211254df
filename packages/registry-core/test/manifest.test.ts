import { describe, expect, test } from '@jest/globals';
import { MAX_MANIFEST_BYTES, parseManifest } from '../src/manifest.js';
import {
  DOCKER_CONFIG,
  DOCKER_FOREIGN_LAYER,
  DOCKER_LAYER,
  DOCKER_LIST,
  DOCKER_MANIFEST,
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
  sha512,
} from './helpers.js';

const config = descriptorOf('{"architecture":"amd64","os":"linux"}', OCI_CONFIG);
const layer = descriptorOf('layer one', OCI_LAYER);
const layer2 = descriptorOf('layer two', OCI_LAYER);

function json(doc: unknown): Buffer {
  return Buffer.from(JSON.stringify(doc));
}

describe('parseManifest: the four manifest kinds', () => {
  test('Docker image manifest v2 schema 2', () => {
    const dConfig = descriptorOf('{"os":"linux"}', DOCKER_CONFIG);
    const dLayer = descriptorOf('docker layer', DOCKER_LAYER);
    const bytes = json({ schemaVersion: 2, mediaType: DOCKER_MANIFEST, config: dConfig, layers: [dLayer] });
    const m = parseManifest(bytes, DOCKER_MANIFEST);
    expect(m.mediaType).toBe(DOCKER_MANIFEST);
    expect(m.digest).toBe(sha256(bytes));
    expect(m.size).toBe(bytes.length);
    expect(m.blobs).toEqual([dConfig, dLayer]);
    expect(m.manifests).toEqual([]);
    expect(m.artifactType).toBe(DOCKER_CONFIG);
    expect(m.subject).toBeUndefined();
  });

  test('a Docker image manifest without layers (a FROM scratch build of labels only) is a manifest of its config alone', () => {
    const config = descriptorOf('{}', DOCKER_CONFIG);
    const bytes = json({ schemaVersion: 2, mediaType: DOCKER_MANIFEST, config, layers: [] });
    const m = parseManifest(bytes, DOCKER_MANIFEST);
    expect(m.blobs).toEqual([config]);
    expect(m.artifactType).toBe(DOCKER_CONFIG);
  });

  test('Docker manifest list', () => {
    const amd = descriptorOf('amd manifest', DOCKER_MANIFEST, { platform: { architecture: 'amd64', os: 'linux' } });
    const arm = descriptorOf('arm manifest', DOCKER_MANIFEST, { platform: { architecture: 'arm64', os: 'linux' } });
    const bytes = json({ schemaVersion: 2, mediaType: DOCKER_LIST, manifests: [amd, arm] });
    const m = parseManifest(bytes, DOCKER_LIST);
    expect(m.mediaType).toBe(DOCKER_LIST);
    expect(m.digest).toBe(sha256(bytes));
    expect(m.blobs).toEqual([]);
    expect(m.manifests).toEqual([amd, arm]);
    expect(m.manifests[1]?.platform).toEqual({ architecture: 'arm64', os: 'linux' });
  });

  test('OCI image manifest', () => {
    const bytes = ociManifestBytes(config, [layer, layer2], { annotations: { 'org.opencontainers.image.created': '2024-01-01T00:00:00Z' } });
    const m = parseManifest(bytes, OCI_MANIFEST);
    expect(m.mediaType).toBe(OCI_MANIFEST);
    expect(m.digest).toBe(sha256(bytes));
    expect(m.size).toBe(bytes.length);
    expect(m.blobs).toEqual([config, layer, layer2]);
    expect(m.manifests).toEqual([]);
    expect(m.artifactType).toBe(OCI_CONFIG);
    expect(m.annotations).toEqual({ 'org.opencontainers.image.created': '2024-01-01T00:00:00Z' });
  });

  test('OCI image manifest without the optional mediaType field, told by Content-Type', () => {
    const bytes = json({ schemaVersion: 2, config, layers: [layer] });
    const m = parseManifest(bytes, OCI_MANIFEST);
    expect(m.mediaType).toBe(OCI_MANIFEST);
    expect(m.blobs).toEqual([config, layer]);
  });

  test('OCI image index', () => {
    const child = descriptorOf('child manifest', OCI_MANIFEST, { platform: { architecture: 'amd64', os: 'linux' } });
    const bytes = ociIndexBytes([child], { annotations: { a: 'b' } });
    const m = parseManifest(bytes, OCI_INDEX);
    expect(m.mediaType).toBe(OCI_INDEX);
    expect(m.digest).toBe(sha256(bytes));
    expect(m.blobs).toEqual([]);
    expect(m.manifests).toEqual([child]);
    expect(m.annotations).toEqual({ a: 'b' });
    expect(m.artifactType).toBeUndefined();
  });

  test("an index's entries of a manifest media type are its child manifests, the others blobs (BuildKit's cache)", () => {
    const child = descriptorOf('child manifest', OCI_MANIFEST);
    const docker = descriptorOf('docker child', 'application/vnd.docker.distribution.manifest.v2+json');
    const layer = descriptorOf('cached layer', 'application/vnd.oci.image.layer.v1.tar+gzip');
    const cacheConfig = descriptorOf('{"records":[]}', 'application/vnd.buildkit.cacheconfig.v0');
    const m = parseManifest(ociIndexBytes([layer, child, cacheConfig, docker]), OCI_INDEX);
    expect(m.manifests).toEqual([child, docker]);
    expect(m.blobs).toEqual([layer, cacheConfig]);
  });

  test('an index entry whose manifest media type has parameters or capitals is still a child manifest', () => {
    const entries = [descriptorOf('a', `${OCI_MANIFEST}; charset=utf-8`), descriptorOf('b', OCI_MANIFEST.toUpperCase())];
    expect(parseManifest(ociIndexBytes(entries), OCI_INDEX).manifests).toEqual(entries);
  });

  test('an OCI index with an artifactType keeps it', () => {
    const bytes = ociIndexBytes([descriptorOf('child', OCI_MANIFEST)], { artifactType: 'application/vnd.example.bundle' });
    expect(parseManifest(bytes, OCI_INDEX).artifactType).toBe('application/vnd.example.bundle');
  });

  test('an index with config or layers is invalid', () => {
    const bytes = json({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [], layers: [layer] });
    expect(() => parseManifest(bytes, OCI_INDEX)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });

  test('an index without manifests is invalid', () => {
    expect(() => parseManifest(json({ schemaVersion: 2, mediaType: OCI_INDEX }), OCI_INDEX)).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID' }),
    );
  });

  test('an image manifest with a manifests array is invalid', () => {
    const bytes = ociManifestBytes(config, [layer], { manifests: [] });
    expect(() => parseManifest(bytes, OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });

  test("Go's encoding of an empty list, `null`, is an empty list: an image of its config alone, an index of nothing", () => {
    // distribution reads these as empty; Go's image-spec and Docker types send them for a nil slice.
    const image = json({ schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers: null });
    const m = parseManifest(image, OCI_MANIFEST);
    expect(m.blobs).toEqual([config]);
    expect(m.digest).toBe(sha256(image));
    const dConfig = descriptorOf('{}', DOCKER_CONFIG);
    expect(parseManifest(json({ schemaVersion: 2, mediaType: DOCKER_MANIFEST, config: dConfig, layers: null }), DOCKER_MANIFEST).blobs).toEqual([dConfig]);
    const index = parseManifest(json({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: null }), OCI_INDEX);
    expect(index.manifests).toEqual([]);
    expect(index.blobs).toEqual([]);
    expect(parseManifest(json({ schemaVersion: 2, mediaType: DOCKER_LIST, manifests: null }), DOCKER_LIST).manifests).toEqual([]);
    // Anything else in their place is still refused.
    for (const layers of [{}, 'none', 0, false]) {
      expect(() => parseManifest(json({ schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers }), OCI_MANIFEST)).toThrow(
        expect.objectContaining({ code: 'MANIFEST_INVALID' }),
      );
    }
  });

  test('an image manifest without config or layers is invalid', () => {
    expect(() => parseManifest(json({ schemaVersion: 2, mediaType: OCI_MANIFEST, layers: [layer] }), OCI_MANIFEST)).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID' }),
    );
    expect(() => parseManifest(json({ schemaVersion: 2, mediaType: OCI_MANIFEST, config }), OCI_MANIFEST)).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID' }),
    );
  });
});

describe('parseManifest: artifacts and subjects', () => {
  test('an OCI artifact with artifactType and the empty config', () => {
    const empty = descriptorOf(EMPTY_JSON, OCI_EMPTY);
    expect(empty.digest).toBe('sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a');
    const payload = descriptorOf('signature payload', 'application/vnd.example.signature.v1');
    const bytes = ociManifestBytes(empty, [payload], { artifactType: 'application/vnd.example.signature' });
    const m = parseManifest(bytes, OCI_MANIFEST);
    expect(m.artifactType).toBe('application/vnd.example.signature');
    // the empty config is a real blob the repository must hold
    expect(m.blobs).toEqual([empty, payload]);
  });

  test('an artifact with the empty descriptor as its only layer', () => {
    const empty = descriptorOf(EMPTY_JSON, OCI_EMPTY);
    const bytes = ociManifestBytes(empty, [empty], { artifactType: 'application/vnd.example.thing' });
    expect(parseManifest(bytes, OCI_MANIFEST).blobs.map((b) => b.digest)).toEqual([empty.digest, empty.digest]);
  });

  test('a manifest with a subject exposes it', () => {
    const subject = descriptorOf('the image it refers to', OCI_MANIFEST);
    const bytes = ociManifestBytes(descriptorOf(EMPTY_JSON, OCI_EMPTY), [layer], {
      artifactType: 'application/vnd.example.sbom',
      subject,
      annotations: { 'org.example.kind': 'sbom' },
    });
    const m = parseManifest(bytes, OCI_MANIFEST);
    expect(m.subject).toEqual(subject);
    expect(m.annotations).toEqual({ 'org.example.kind': 'sbom' });
  });

  test('an index with a subject exposes it', () => {
    const subject = descriptorOf('the image it refers to', OCI_MANIFEST);
    const bytes = ociIndexBytes([], { subject });
    expect(parseManifest(bytes, OCI_INDEX).subject).toEqual(subject);
  });

  test('a subject that is not a valid descriptor is MANIFEST_INVALID', () => {
    const bytes = ociManifestBytes(config, [layer], { subject: { mediaType: OCI_MANIFEST, digest: 'sha256:nope', size: 1 } });
    expect(() => parseManifest(bytes, OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });

  test('a non-string artifactType is MANIFEST_INVALID', () => {
    const bytes = ociManifestBytes(config, [layer], { artifactType: 42 });
    expect(() => parseManifest(bytes, OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });

  test('annotations must be a map of strings', () => {
    const bytes = ociManifestBytes(config, [layer], { annotations: { n: 1 } });
    expect(() => parseManifest(bytes, OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });
});

describe('parseManifest: media type from Content-Type and body', () => {
  test('Content-Type and body mediaType that disagree are MANIFEST_INVALID', () => {
    const bytes = ociManifestBytes(config, [layer]);
    expect(() => parseManifest(bytes, DOCKER_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
    expect(() => parseManifest(bytes, OCI_INDEX)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });

  test('no Content-Type with a mediaType in the body is accepted', () => {
    const bytes = ociManifestBytes(config, [layer]);
    expect(parseManifest(bytes, undefined).mediaType).toBe(OCI_MANIFEST);
    expect(parseManifest(bytes, '').mediaType).toBe(OCI_MANIFEST);
  });

  test('a generic JSON Content-Type defers to the body mediaType', () => {
    const bytes = ociIndexBytes([]);
    expect(parseManifest(bytes, 'application/json').mediaType).toBe(OCI_INDEX);
    expect(parseManifest(bytes, 'application/octet-stream').mediaType).toBe(OCI_INDEX);
  });

  test('Content-Type parameters and case are ignored', () => {
    const bytes = ociManifestBytes(config, [layer]);
    expect(parseManifest(bytes, `${OCI_MANIFEST}; charset=utf-8`).mediaType).toBe(OCI_MANIFEST);
    expect(parseManifest(bytes, OCI_MANIFEST.toUpperCase()).mediaType).toBe(OCI_MANIFEST);
  });

  test('neither Content-Type nor body mediaType is MANIFEST_INVALID', () => {
    const bytes = json({ schemaVersion: 2, config, layers: [layer] });
    expect(() => parseManifest(bytes, undefined)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });

  test('an unknown manifest Content-Type is MANIFEST_INVALID', () => {
    const bytes = ociManifestBytes(config, [layer]);
    expect(() => parseManifest(bytes, 'text/plain')).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
    expect(() => parseManifest(bytes, 'application/vnd.docker.distribution.manifest.v1+prettyjws')).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID' }),
    );
  });

  test('a Docker manifest or list without its mediaType field is MANIFEST_INVALID (the OCI ones may leave it out)', () => {
    const image = json({ schemaVersion: 2, config: descriptorOf('{}', DOCKER_CONFIG), layers: [descriptorOf('l', DOCKER_LAYER)] });
    const list = json({ schemaVersion: 2, manifests: [descriptorOf('m', DOCKER_MANIFEST)] });
    expect(() => parseManifest(image, DOCKER_MANIFEST)).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID', message: expect.stringContaining(`"mediaType": "${DOCKER_MANIFEST}"`) }),
    );
    expect(() => parseManifest(list, DOCKER_LIST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
    expect(parseManifest(json({ schemaVersion: 2, config, layers: [layer] }), OCI_MANIFEST).mediaType).toBe(OCI_MANIFEST);
    expect(parseManifest(json({ schemaVersion: 2, manifests: [] }), OCI_INDEX).mediaType).toBe(OCI_INDEX);
    // One kept before this rule is still read (an export of it works).
    expect(parseManifest(image, DOCKER_MANIFEST, 'sha256', { stored: true }).mediaType).toBe(DOCKER_MANIFEST);
  });

  test('an unknown body mediaType is MANIFEST_INVALID', () => {
    const bytes = json({ schemaVersion: 2, mediaType: 'application/vnd.example.manifest', config, layers: [layer] });
    expect(() => parseManifest(bytes, undefined)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });
});

describe('parseManifest: malformed documents', () => {
  test('invalid JSON is MANIFEST_INVALID', () => {
    expect(() => parseManifest(Buffer.from('{"schemaVersion": 2,'), OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
    expect(() => parseManifest(Buffer.alloc(0), OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });

  test('JSON that is not an object is MANIFEST_INVALID', () => {
    for (const text of ['[]', '"manifest"', '2', 'null']) {
      expect(() => parseManifest(Buffer.from(text), OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
    }
  });

  test('schemaVersion 1 is refused', () => {
    const bytes = json({ schemaVersion: 1, name: 'alice/a', tag: 'latest', architecture: 'amd64', fsLayers: [], history: [] });
    expect(() => parseManifest(bytes, 'application/vnd.docker.distribution.manifest.v1+json')).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID' }),
    );
    expect(() => parseManifest(ociManifestBytes(config, [layer], { schemaVersion: 1 }), OCI_MANIFEST)).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID' }),
    );
  });

  test('a document that is no manifest, sent as another media type, is refused for its media type', () => {
    expect(() => parseManifest(json({ foo: 1 }), 'application/vnd.example.thing+json')).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID', message: 'unsupported manifest media type' }),
    );
    expect(() => parseManifest(json({ mediaType: OCI_MANIFEST, config, layers: [layer] }), OCI_MANIFEST)).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID', message: 'only schemaVersion 2 manifests are supported' }),
    );
  });

  test('a missing or string schemaVersion is refused', () => {
    expect(() => parseManifest(json({ mediaType: OCI_MANIFEST, config, layers: [layer] }), OCI_MANIFEST)).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID' }),
    );
    expect(() => parseManifest(ociManifestBytes(config, [layer], { schemaVersion: '2' }), OCI_MANIFEST)).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID' }),
    );
  });

  test('a manifest over 4 MiB is TOO_LARGE', () => {
    expect(MAX_MANIFEST_BYTES).toBe(4 * 1024 * 1024);
    const base = ociManifestBytes(config, [layer], { annotations: { pad: '' } }).toString();
    const pad = 'x'.repeat(MAX_MANIFEST_BYTES - base.length + 1);
    const bytes = Buffer.from(base.replace('"pad":""', `"pad":"${pad}"`));
    expect(bytes.length).toBe(MAX_MANIFEST_BYTES + 1);
    expect(() => parseManifest(bytes, OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'TOO_LARGE' }));
  });

  test('a manifest of exactly 4 MiB is accepted', () => {
    const base = ociManifestBytes(config, [layer], { annotations: { pad: '' } }).toString();
    const pad = 'x'.repeat(MAX_MANIFEST_BYTES - base.length);
    const bytes = Buffer.from(base.replace('"pad":""', `"pad":"${pad}"`));
    expect(bytes.length).toBe(MAX_MANIFEST_BYTES);
    expect(parseManifest(bytes, OCI_MANIFEST).size).toBe(MAX_MANIFEST_BYTES);
  });

  test('a document under 4 MiB that would parse into a huge object graph is refused before it is parsed', () => {
    // 4 MiB of `[` took 296 MiB of RSS to find invalid; 4 MiB of `{}` 73 MiB of heap and 0.9 s.
    const deep = Buffer.from(`{"schemaVersion":2,"x":${'['.repeat(MAX_MANIFEST_BYTES - 100)}`);
    expect(() => parseManifest(deep, OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID', message: 'manifest refused: it nests objects and arrays more than 64 deep' }));
    const empties = Buffer.from(`{"schemaVersion":2,"x":[${Array(1_300_000).fill('{}').join(',')}]}`);
    expect(() => parseManifest(empties, OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID', message: 'manifest refused: it holds more than 100000 objects and arrays' }));
    const numbers = Buffer.from(`{"schemaVersion":2,"x":[${Array(1_000_000).fill('1.5').join(',')}]}`);
    expect(() => parseManifest(numbers, OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID', message: 'manifest refused: it holds more than 250000 values' }));
  });

  test('brackets, braces and commas inside strings do not count; a real index of 15,000 platform manifests (3 MiB) is accepted', () => {
    const tricky = ociManifestBytes(config, [layer], { annotations: { a: '['.repeat(100_000), b: '{},'.repeat(300_000), c: 'x\\"[[[', d: '\\' } });
    expect(parseManifest(tricky, OCI_MANIFEST).annotations?.a).toHaveLength(100_000);
    const children = Array.from({ length: 15_000 }, (_, i) => ({ ...descriptorOf(`manifest ${i}`, OCI_MANIFEST), platform: { architecture: 'amd64', os: 'linux', variant: `v${i}` }, annotations: { 'org.example.n': String(i) } }));
    const index = json({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: children });
    expect(index.length).toBeGreaterThan(3 * 1024 * 1024);
    expect(parseManifest(index, OCI_INDEX).manifests).toHaveLength(15_000);
  });

  test('a descriptor with a malformed digest is MANIFEST_INVALID', () => {
    const bad = { ...layer, digest: 'sha256:ABC' };
    expect(() => parseManifest(ociManifestBytes(config, [bad as never]), OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });

  test('a descriptor with a negative, fractional or string size is MANIFEST_INVALID', () => {
    for (const size of [-1, 1.5, '10']) {
      const bad = { ...layer, size };
      expect(() => parseManifest(ociManifestBytes(config, [bad as never]), OCI_MANIFEST)).toThrow(
        expect.objectContaining({ code: 'MANIFEST_INVALID' }),
      );
    }
  });

  test('a descriptor without mediaType is MANIFEST_INVALID', () => {
    const { mediaType: _omit, ...bad } = layer;
    expect(() => parseManifest(ociManifestBytes(config, [bad as never]), OCI_MANIFEST)).toThrow(
      expect.objectContaining({ code: 'MANIFEST_INVALID' }),
    );
  });
});

describe('parseManifest: the digest is of the exact bytes', () => {
  test('whitespace variants of the same document have different digests', () => {
    const doc = { schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers: [layer] };
    const compact = Buffer.from(JSON.stringify(doc));
    const pretty = Buffer.from(JSON.stringify(doc, null, 2));
    const trailing = Buffer.from(`${JSON.stringify(doc)}\n`);
    const a = parseManifest(compact, OCI_MANIFEST);
    const b = parseManifest(pretty, OCI_MANIFEST);
    const c = parseManifest(trailing, OCI_MANIFEST);
    expect(a.digest).toBe(sha256(compact));
    expect(b.digest).toBe(sha256(pretty));
    expect(c.digest).toBe(sha256(trailing));
    expect(new Set([a.digest, b.digest, c.digest]).size).toBe(3);
    expect(b.size).toBe(pretty.length);
    expect(a.blobs).toEqual(b.blobs);
  });

  test('key order is kept: reordered keys are a different manifest', () => {
    const one = Buffer.from(`{"schemaVersion":2,"mediaType":"${OCI_MANIFEST}","config":${JSON.stringify(config)},"layers":[]}`);
    const two = Buffer.from(`{"mediaType":"${OCI_MANIFEST}","schemaVersion":2,"layers":[],"config":${JSON.stringify(config)}}`);
    expect(parseManifest(one, OCI_MANIFEST).digest).not.toBe(parseManifest(two, OCI_MANIFEST).digest);
  });

  test('the digest algorithm can be sha512', () => {
    const bytes = ociManifestBytes(config, [layer]);
    const m = parseManifest(bytes, OCI_MANIFEST, 'sha512');
    expect(m.digest).toBe(sha512(bytes));
  });
});

describe('parseManifest: required blobs', () => {
  test('foreign layers with urls are not required', () => {
    const dConfig = descriptorOf('{"os":"windows"}', DOCKER_CONFIG);
    const foreign = descriptorOf('windows base layer', DOCKER_FOREIGN_LAYER, {
      urls: ['https://mcr.microsoft.com/v2/windows/servercore/blobs/sha256:0000'],
    });
    const normal = descriptorOf('app layer', DOCKER_LAYER);
    const bytes = json({ schemaVersion: 2, mediaType: DOCKER_MANIFEST, config: dConfig, layers: [foreign, normal] });
    const m = parseManifest(bytes, DOCKER_MANIFEST);
    expect(m.blobs).toEqual([dConfig, normal]);
  });

  test('OCI non-distributable layers with urls are not required', () => {
    const nd = descriptorOf('nd layer', 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', { urls: ['https://example.com/layer'] });
    const m = parseManifest(ociManifestBytes(config, [nd, layer]), OCI_MANIFEST);
    expect(m.blobs).toEqual([config, layer]);
  });

  test('a foreign layer without urls is still required', () => {
    const dConfig = descriptorOf('{"os":"windows"}', DOCKER_CONFIG);
    const foreign = descriptorOf('windows base layer', DOCKER_FOREIGN_LAYER);
    const bytes = json({ schemaVersion: 2, mediaType: DOCKER_MANIFEST, config: dConfig, layers: [foreign] });
    expect(parseManifest(bytes, DOCKER_MANIFEST).blobs).toEqual([dConfig, foreign]);
  });

  test('an ordinary layer with urls is still required', () => {
    const withUrls = descriptorOf('layer with mirror urls', OCI_LAYER, { urls: ['https://example.com/l'] });
    expect(parseManifest(ociManifestBytes(config, [withUrls]), OCI_MANIFEST).blobs).toEqual([config, withUrls]);
  });

  test('urls that are not strings are MANIFEST_INVALID', () => {
    const bad = descriptorOf('x', DOCKER_FOREIGN_LAYER, { urls: [1] });
    expect(() => parseManifest(ociManifestBytes(config, [bad]), OCI_MANIFEST)).toThrow(expect.objectContaining({ code: 'MANIFEST_INVALID' }));
  });
});
