import { describe, expect, test } from '@jest/globals';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { reasonPhrase } from '../../src/http/reason-phrase.js';

describe('reasonPhrase: an error\'s message in the status line', () => {
  test('the standard phrase, then the message', () => {
    expect(reasonPhrase('Bad Gateway', 'upstream docker.io is unreachable (ECONNREFUSED)')).toBe('Bad Gateway: upstream docker.io is unreachable (ECONNREFUSED)');
  });

  test('control characters and non-ASCII become spaces, a long message is cut, and node sends the result', async () => {
    const phrase = reasonPhrase('Bad Gateway', `line\r\nInjected: yes\tü ${'x'.repeat(300)}`);
    expect(phrase).toMatch(/^Bad Gateway: line Injected: yes /);
    expect(phrase).toMatch(/^[\x20-\x7e]+$/);
    expect(phrase.length).toBe(200);
    const server = createServer((_req, res) => {
      res.statusMessage = phrase;
      res.writeHead(502).end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const res = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
      expect(res.status).toBe(502);
      expect(res.statusText).toBe(phrase);
      expect(res.headers.get('injected')).toBeNull();
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
