import { describe, expect, test } from '@jest/globals';
import { isPublicAddress } from '../src/public-address.js';

describe('public addresses (where a public upstream may redirect Wharf)', () => {
  test('loopback, private, link-local, shared, reserved and multicast are inside; the rest is the internet', () => {
    for (const inside of ['127.0.0.1', '10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '224.0.0.1', '255.255.255.255', '198.18.0.1', '::1', '::', 'fd00::1', 'fe80::1%eth0', 'fec0::1', '::ffff:10.0.0.1', '::ffff:7f00:1', '[::1]', '64:ff9b::7f00:1', '64:ff9b::169.254.169.254', '64:ff9b:1::a00:1', '2002:a9fe:a9fe::1', '2002:7f00:1::']) {
      expect([inside, isPublicAddress(inside)]).toEqual([inside, false]);
    }
    for (const outside of ['8.8.8.8', '172.32.0.1', '104.16.1.1', '2606:4700::1111', '::ffff:8.8.8.8', '64:ff9b::808:808', '2002:808:808::1']) {
      expect([outside, isPublicAddress(outside)]).toEqual([outside, true]);
    }
    expect(isPublicAddress('not-an-address')).toBe(false);
  });
});
