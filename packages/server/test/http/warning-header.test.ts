import { describe, expect, test } from '@jest/globals';
import { validateHeaderValue } from 'node:http';
import { warningHeader } from '../../src/http/warning-header.js';

describe('the Warning header', () => {
  test('only printable ASCII goes in: node would refuse the header, and the text may hold an upstream\'s words', () => {
    const header = warningHeader('upstream \u212Aube said "no"\\\r\n\u0000\u00e9 ok');
    expect(header).toBe('299 - "upstream  ube said  no       ok"');
    expect(() => validateHeaderValue('Warning', header)).not.toThrow();
    expect(warningHeader('x'.repeat(5000)).length).toBe(1000 + '299 - ""'.length);
  });
});
