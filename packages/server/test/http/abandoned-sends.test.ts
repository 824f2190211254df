import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { readdir, readlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { heldSendBufferBytes, spareSendBufferBytes } from '../../src/http/send-stream.js';
import { blob, pushBlob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** Blob sends whose client is gone let go of the blob's descriptor and their buffers, and never hold a shutdown. */
describe('blob GETs whose client went away', () => {
  let reg: TestRegistry;
  const empty = blob(Buffer.alloc(0));
  const small = blob('hello, world');
  const big = blob(randomBytes(16 * 1024 * 1024));

  beforeAll(async () => {
    reg = await startRegistry();
    for (const b of [empty, small, big]) await pushBlob(reg.url, 'gone/test', b);
  });
  afterAll(async () => {
    await reg?.close();
  });

  /** Descriptors of this process open on a blob file of the registry's store. */
  const blobFds = async (): Promise<number> => {
    let n = 0;
    for (const fd of await readdir('/proc/self/fd')) {
      const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
      if (target.includes('/registry/blobs/')) n += 1;
    }
    return n;
  };
  /** Waits (up to 5 s) until no blob file is open any more. */
  const noBlobFdsLeft = async (): Promise<number> => {
    for (let i = 0; i < 100 && (await blobFds()) > 0; i++) await sleep(50);
    return blobFds();
  };
  const port = (): number => Number(new URL(reg.url).port);

  /** Sends a GET's head and resets the connection at once. */
  const hitAndRun = (path: string): Promise<void> =>
    new Promise((resolve) => {
      const s = connect(port(), '127.0.0.1', () => {
        s.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`, () => {
          s.resetAndDestroy();
          resolve();
        });
      });
      s.on('error', () => resolve());
    });

  test('an empty blob, and a small one, whose client reset the connection at once', async () => {
    for (let i = 0; i < 40; i++) await hitAndRun(`/v2/gone/test/blobs/${empty.digest}`);
    for (let i = 0; i < 40; i++) await hitAndRun(`/v2/gone/test/blobs/${small.digest}`);
    expect(await noBlobFdsLeft()).toBe(0);
  });

  test('a pull cut after its first bytes gives its read buffers back for the next pulls, not to the garbage collector', async () => {
    // Spares left by the pushes are let go after a second without sends.
    for (let i = 0; i < 60 && spareSendBufferBytes() > 0; i++) await sleep(50);
    expect(spareSendBufferBytes()).toBe(0);
    await new Promise<void>((resolve) => {
      const s = connect(port(), '127.0.0.1', () => s.write(`GET /v2/gone/test/blobs/${big.digest} HTTP/1.1\r\nHost: x\r\n\r\n`));
      let got = 0;
      s.on('data', (d: Buffer) => {
        got += d.length;
        if (got >= 256 * 1024) {
          s.resetAndDestroy();
          resolve();
        }
      });
      s.on('error', () => resolve());
    });
    for (let i = 0; i < 100 && heldSendBufferBytes() > 0; i++) await sleep(5);
    expect(heldSendBufferBytes()).toBe(0);
    // Before, they were dropped (a full collection for every 8 MiB of them): none came back.
    expect(spareSendBufferBytes()).toBeGreaterThanOrEqual(2 * 1024 * 1024);
  });

  test('GETs pipelined behind an answer the client never reads, then the client goes: nothing held, and the server stops at once', async () => {
    for (let i = 0; i < 5; i++) {
      await new Promise<void>((resolve) => {
        const s = connect(port(), '127.0.0.1', () => {
          const head = (d: string): string => `GET /v2/gone/test/blobs/${d} HTTP/1.1\r\nHost: x\r\n\r\n`;
          s.write(head(big.digest) + head(small.digest) + head(small.digest) + head(empty.digest));
          // Never read: the first answer fills the socket's buffers, the others queue behind it.
          s.pause();
          setTimeout(() => {
            s.resetAndDestroy();
            resolve();
          }, 300);
        });
        s.on('error', () => resolve());
      });
    }
    expect(await noBlobFdsLeft()).toBe(0);
    expect(heldSendBufferBytes()).toBe(0);
    expect((await fetch(`${reg.url}/v2/`)).status).toBe(200);
    // Nothing left for a graceful shutdown to wait for (it waited out its whole deadline before).
    const started = Date.now();
    await reg.close();
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
