import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { request } from 'node:http';
import { heldSendBufferBytes, spareSendBufferBytes } from '../../src/http/send-stream.js';
import { blob, pushBlob, sha256 } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** Blob bodies are sent from the file descriptor through reused buffers; none of it may leak or corrupt. */
describe('blob sending from files', () => {
  let reg: TestRegistry;
  const big = blob(randomBytes(5 * 1024 * 1024 + 321));
  const empty = blob(Buffer.alloc(0));

  beforeAll(async () => {
    reg = await startRegistry();
    await pushBlob(reg.url, 'send/test', big);
    await pushBlob(reg.url, 'send/test', empty);
  });
  afterAll(async () => {
    await reg.close();
  });

  const openFds = async () => (await readdir('/proc/self/fd')).length;

  test('a multi-chunk blob arrives whole, twice in parallel', async () => {
    const [a, b] = await Promise.all(
      [0, 1].map(async () => Buffer.from(await (await fetch(`${reg.url}/v2/send/test/blobs/${big.digest}`)).arrayBuffer())),
    );
    expect(sha256(a!)).toBe(big.digest);
    expect(sha256(b!)).toBe(big.digest);
  });

  test('a finished send leaves its two buffers to the next one, which allocates none', async () => {
    const pull = async () => sha256(Buffer.from(await (await fetch(`${reg.url}/v2/send/test/blobs/${big.digest}`)).arrayBuffer()));
    expect(await pull()).toBe(big.digest);
    // A send alone reads in 1 MiB chunks through two buffers, both back in the pool once it ends.
    const held = spareSendBufferBytes();
    expect(held).toBeGreaterThanOrEqual(2 * 1024 * 1024);
    // The next send takes them and gives them back: the pool neither grows nor empties.
    expect(await pull()).toBe(big.digest);
    expect(spareSendBufferBytes()).toBe(held);
  });

  test('more distinct content than the buffer budget, pulled in parallel and in ranges, arrives exact', async () => {
    const blobs = Array.from({ length: 6 }, () => blob(randomBytes(3 * 1024 * 1024 + 17)));
    for (const b of blobs) await pushBlob(reg.url, 'send/many', b);
    const whole = async (b: (typeof blobs)[number]) => sha256(Buffer.from(await (await fetch(`${reg.url}/v2/send/many/blobs/${b.digest}`)).arrayBuffer()));
    const ranged = async (b: (typeof blobs)[number], start: number, end: number) => {
      const res = await fetch(`${reg.url}/v2/send/many/blobs/${b.digest}`, { headers: { Range: `bytes=${start}-${end}` } });
      return Buffer.from(await res.arrayBuffer()).equals(b.bytes.subarray(start, end + 1));
    };
    for (let round = 0; round < 2; round++) {
      const digests = await Promise.all([...blobs, ...blobs].map(whole));
      expect(digests).toEqual([...blobs, ...blobs].map((b) => b.digest));
      const ranges = await Promise.all(blobs.map((b, i) => ranged(b, 1024 * 1024 - 5 + i, 2 * 1024 * 1024 + 3 * i)));
      expect(ranges.every(Boolean)).toBe(true);
    }
  });

  test('a range across a chunk boundary is exact', async () => {
    const start = 1024 * 1024 - 10;
    const end = 2 * 1024 * 1024 + 10;
    const res = await fetch(`${reg.url}/v2/send/test/blobs/${big.digest}`, { headers: { Range: `bytes=${start}-${end}` } });
    expect(res.status).toBe(206);
    expect(Buffer.from(await res.arrayBuffer()).equals(big.bytes.subarray(start, end + 1))).toBe(true);
  });

  test('an empty blob is an empty 200', async () => {
    const res = await fetch(`${reg.url}/v2/send/test/blobs/${empty.digest}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-length')).toBe('0');
    expect((await res.arrayBuffer()).byteLength).toBe(0);
  });

  test('no file descriptor leaks across whole, ranged, empty and abandoned downloads', async () => {
    const before = await openFds();
    for (let i = 0; i < 20; i++) {
      await (await fetch(`${reg.url}/v2/send/test/blobs/${big.digest}`)).arrayBuffer();
      await (await fetch(`${reg.url}/v2/send/test/blobs/${big.digest}`, { headers: { Range: 'bytes=5-9' } })).arrayBuffer();
      await (await fetch(`${reg.url}/v2/send/test/blobs/${empty.digest}`)).arrayBuffer();
    }
    // Clients that go away after the first bytes.
    for (let i = 0; i < 10; i++) {
      await new Promise<void>((resolve) => {
        const req = request(`${reg.url}/v2/send/test/blobs/${big.digest}`, (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.on('error', () => resolve());
        req.end();
      });
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(await openFds()).toBeLessThanOrEqual(before + 2);
    // Every send, finished or abandoned, has given its read buffers back to the budget.
    expect(heldSendBufferBytes()).toBe(0);
    // And the server still answers.
    expect((await fetch(`${reg.url}/v2/`)).status).toBe(200);
  });
});
