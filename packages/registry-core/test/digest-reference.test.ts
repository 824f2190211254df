import { describe, expect, test } from '@jest/globals';
import { digestOf, isDigestAlgorithm, parseDigest, tryParseDigest } from '../src/digest.js';
import { RegistryError } from '../src/errors.js';
import { MAX_NAME_LENGTH, assertRepositoryName, assertTag, isValidRepositoryName, isValidTag } from '../src/reference.js';
import { sha256, sha512 } from './helpers.js';

const HEX64 = 'a'.repeat(63) + '0';
const HEX128 = '0123456789abcdef'.repeat(8);

describe('digests', () => {
  test('a sha256 digest parses into algorithm and hex', () => {
    const d = sha256('x');
    expect(parseDigest(d)).toEqual({ algorithm: 'sha256', hex: d.slice(7), digest: d });
    expect(tryParseDigest(`sha256:${HEX64}`)).toEqual({ algorithm: 'sha256', hex: HEX64, digest: `sha256:${HEX64}` });
  });

  test('a sha512 digest parses into algorithm and hex', () => {
    const d = sha512('x');
    expect(parseDigest(d)).toEqual({ algorithm: 'sha512', hex: d.slice(7), digest: d });
    expect(parseDigest(`sha512:${HEX128}`).algorithm).toBe('sha512');
  });

  const invalid: [string, string][] = [
    ['sha256 one hex short', `sha256:${HEX64.slice(1)}`],
    ['sha256 one hex long', `sha256:${HEX64}0`],
    ['sha256 with sha512 length', `sha256:${HEX128}`],
    ['sha512 with sha256 length', `sha512:${HEX64}`],
    ['uppercase hex', `sha256:${HEX64.toUpperCase()}`],
    ['mixed-case hex', `sha256:${'A' + HEX64.slice(1)}`],
    ['uppercase algorithm', `SHA256:${HEX64}`],
    ['non-hex characters', `sha256:${'g'.repeat(64)}`],
    ['no algorithm', HEX64],
    ['empty hex', 'sha256:'],
    ['empty string', ''],
    ['trailing newline', `sha256:${HEX64}\n`],
    ['leading space', ` sha256:${HEX64}`],
    ['path traversal', 'sha256:../../../etc/passwd'],
    ['unknown algorithm md5', `md5:${'0'.repeat(32)}`],
    ['unknown algorithm sha384', `sha384:${'0'.repeat(96)}`],
    ['unknown algorithm with a grammar-legal name', `multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8`],
  ];

  for (const [what, value] of invalid) {
    test(`${what} is DIGEST_INVALID`, () => {
      expect(tryParseDigest(value)).toBeUndefined();
      let caught: unknown;
      try {
        parseDigest(value);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(RegistryError);
      expect(caught).toMatchObject({ code: 'DIGEST_INVALID', detail: { digest: value } });
    });
  }

  test('an unknown algorithm is told apart from a malformed digest in the message', () => {
    expect(() => parseDigest(`md5:${'0'.repeat(32)}`)).toThrow(/unsupported digest algorithm/);
    expect(() => parseDigest(`sha256:${HEX64.slice(2)}`)).toThrow(/^invalid digest$/);
  });

  test('digestOf hashes with sha256 by default and sha512 on request', () => {
    const bytes = Buffer.from('some bytes');
    expect(digestOf(bytes)).toBe(sha256(bytes));
    expect(digestOf(bytes, 'sha512')).toBe(sha512(bytes));
    expect(digestOf(Buffer.alloc(0))).toBe('sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  test('isDigestAlgorithm knows only sha256 and sha512', () => {
    expect(isDigestAlgorithm('sha256')).toBe(true);
    expect(isDigestAlgorithm('sha512')).toBe(true);
    expect(isDigestAlgorithm('sha384')).toBe(false);
    expect(isDigestAlgorithm('SHA256')).toBe(false);
  });
});

describe('repository names', () => {
  const valid = [
    'a',
    'alpine',
    'library/alpine',
    'alice/a',
    'a/b/c/d/e',
    'my-org/my-app',
    'my--org/app',
    'my_app',
    'my__app',
    'my.app/v1.2',
    '0/9',
    'a1b2/c3',
    'x'.repeat(MAX_NAME_LENGTH),
    `${'a'.repeat(100)}/${'b'.repeat(100)}/${'c'.repeat(53)}`,
  ];
  for (const name of valid) {
    test(`${JSON.stringify(name.length > 40 ? `${name.slice(0, 20)}…(${name.length})` : name)} is valid`, () => {
      expect(isValidRepositoryName(name)).toBe(true);
      expect(() => assertRepositoryName(name)).not.toThrow();
    });
  }

  const invalid: [string, string][] = [
    ['uppercase', 'Alpine'],
    ['uppercase component', 'library/Alpine'],
    ['".." component', '..'],
    ['".." in the middle', 'a/../b'],
    ['"." component', '.'],
    ['"." in the middle', 'a/./b'],
    ['leading "/"', '/alpine'],
    ['trailing "/"', 'alpine/'],
    ['"//"', 'library//alpine'],
    ['256 characters', 'x'.repeat(MAX_NAME_LENGTH + 1)],
    ['256 characters over components', `${'a'.repeat(127)}/${'b'.repeat(128)}`],
    ['empty', ''],
    ['leading separator in a component', 'a/-b'],
    ['trailing separator in a component', 'a-/b'],
    ['leading "."', '.a'],
    ['trailing "."', 'a.'],
    ['"..." separator', 'a...b'],
    ['"___" separator', 'a___b'],
    ['mixed separators', 'a._b'],
    ['a space', 'a b'],
    ['a colon', 'alpine:latest'],
    ['an "@"', 'alpine@sha256'],
    ['a backslash', 'a\\b'],
    ['non-ASCII', 'ålpine'],
    ['a newline', 'alpine\n'],
  ];
  for (const [what, name] of invalid) {
    test(`${what} is invalid`, () => {
      expect(isValidRepositoryName(name)).toBe(false);
      expect(() => assertRepositoryName(name)).toThrow(expect.objectContaining({ code: 'NAME_INVALID' }));
    });
  }

  test('the length limit is 255', () => {
    expect(MAX_NAME_LENGTH).toBe(255);
  });
});

describe('tags', () => {
  const valid = ['latest', 'v1.2.3', '1', '_', '_private', 'A', 'Latest-RC_1.0', 'a'.repeat(128), '0-a', 'a..b', 'a--b'];
  for (const tag of valid) {
    test(`${JSON.stringify(tag.length > 40 ? `${tag.slice(0, 10)}…(${tag.length})` : tag)} is valid`, () => {
      expect(isValidTag(tag)).toBe(true);
      expect(() => assertTag(tag)).not.toThrow();
    });
  }

  const invalid: [string, string][] = [
    ['129 characters', 'a'.repeat(129)],
    ['leading "."', '.latest'],
    ['leading "-"', '-latest'],
    ['empty', ''],
    ['a colon', 'v:1'],
    ['a slash', 'v/1'],
    ['an "@"', 'v@1'],
    ['a space', 'v 1'],
    ['a plus', 'v1+build'],
    ['a trailing newline', 'latest\n'],
    ['non-ASCII', 'lätest'],
    ['"..": no path tricks', '..'],
  ];
  for (const [what, tag] of invalid) {
    test(`${what} is invalid`, () => {
      expect(isValidTag(tag)).toBe(false);
      expect(() => assertTag(tag)).toThrow(expect.objectContaining({ code: 'TAG_INVALID' }));
    });
  }
});
