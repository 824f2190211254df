import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { checkErrorEnvelope, sleep, startUpload, uniqueRepo, within, withDigest } from '../helpers/http.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** How many sessions each race runs at once. */
const RACES = 30;

interface Answer {
  readonly status: number;
  readonly code?: string;
}

/** The status, and the OCI code when it is an error (checked to be a proper envelope). */
async function answerOf(res: Response): Promise<Answer> {
  const body = await res.text();
  if (res.status < 400) return { status: res.status };
  return { status: res.status, code: checkErrorEnvelope(res.status, (n) => res.headers.get(n) ?? undefined, body, { status: res.status }).code };
}

/** A raw HTTP reply whose head and Content-Length bytes of body are all in. */
function isWholeReply(reply: string): boolean {
  const end = reply.indexOf('\r\n\r\n');
  if (end < 0) return false;
  const length = Number(/\r\ncontent-length: *(\d+)/i.exec(reply.slice(0, end))?.[1] ?? 0);
  return reply.length - end - 4 >= length;
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/**
 * A DELETE of an upload session racing a PATCH or the completing PUT of the same session: the requests
 * serialise, the one that comes second gets a spec answer (404 BLOB_UPLOAD_UNKNOWN), never a 500, and
 * no file of a session is left behind.
 */
describe('upload session races', () => {
  let reg: TestRegistry;
  const logged: Array<{ level: number; msg: string }> = [];

  beforeAll(async () => {
    const sink = new Writable({
      write(line: Buffer, _enc, done) {
        logged.push(JSON.parse(line.toString()) as { level: number; msg: string });
        done();
      },
    });
    reg = await startRegistry({ logger: pino({ level: 'warn' }, sink) });
  });
  afterAll(async () => {
    await reg.close();
  });

  const uploadsDir = () => join(reg.root, '_tmp', 'uploads');
  const unexpected = () => logged.filter((l) => l.level >= 50);

  test('PATCH and DELETE sent together: the PATCH 202 or 404 BLOB_UPLOAD_UNKNOWN, the DELETE 204, no session left', async () => {
    const repo = uniqueRepo('race');
    const outcomes = await Promise.all(
      Array.from({ length: RACES }, async () => {
        const s = await startUpload(reg.url, repo);
        const [patch, del] = await Promise.all([
          fetch(s.url, { method: 'PATCH', headers: { 'Content-Type': 'application/octet-stream' }, body: randomBytes(64 * 1024) }).then(answerOf),
          fetch(s.url, { method: 'DELETE' }).then(answerOf),
        ]);
        return { patch, del };
      }),
    );
    for (const { patch, del } of outcomes) {
      expect([{ status: 202 }, { status: 404, code: 'BLOB_UPLOAD_UNKNOWN' }]).toContainEqual(patch);
      // Every session was deleted by its own DELETE: it never loses.
      expect(del).toEqual({ status: 204 });
    }
    expect(unexpected()).toEqual([]);
    expect(await readdir(uploadsDir())).toEqual([]);
  });

  test('the completing PUT and DELETE sent together: exactly one wins, the other is 404 BLOB_UPLOAD_UNKNOWN', async () => {
    const repo = uniqueRepo('race');
    const outcomes = await Promise.all(
      Array.from({ length: RACES }, async (_, i) => {
        const s = await startUpload(reg.url, repo);
        const data = randomBytes(256 * 1024 * (1 + (i % 3)));
        expect((await fetch(s.url, { method: 'PATCH', headers: { 'Content-Type': 'application/octet-stream' }, body: data })).status).toBe(202);
        const [put, del] = await Promise.all([
          fetch(withDigest(s.url, sha256(data)), { method: 'PUT' }).then(answerOf),
          fetch(s.url, { method: 'DELETE' }).then(answerOf),
        ]);
        const blob = await fetch(`${reg.url}/v2/${repo}/blobs/${sha256(data)}`, { method: 'HEAD' });
        return { put, del, stored: blob.status === 200 };
      }),
    );
    for (const { put, del, stored } of outcomes) {
      const unknown = { status: 404, code: 'BLOB_UPLOAD_UNKNOWN' };
      if (put.status === 201) expect(del).toEqual(unknown);
      else expect([put, del]).toEqual([unknown, { status: 204 }]);
      expect(stored).toBe(put.status === 201);
    }
    expect(unexpected()).toEqual([]);
    expect(await readdir(uploadsDir())).toEqual([]);
  });

  test('a PATCH whose session is deleted while its body arrives is not acknowledged', async () => {
    const repo = uniqueRepo('race');
    const s = await startUpload(reg.url, repo);
    const path = new URL(s.url).pathname;
    const socket = connect(Number(new URL(reg.url).port), '127.0.0.1');
    let reply = '';
    socket.on('data', (d: Buffer) => (reply += d.toString('latin1')));
    socket.on('error', () => undefined); // a cut connection fails on the status line below
    // Listened for from the start: the server may close as soon as it has answered.
    const closed = new Promise((resolve) => socket.on('close', resolve));
    // Ends with the whole reply (the connection is kept alive), or with the connection.
    const answered = new Promise((resolve) => {
      socket.on('close', resolve);
      socket.on('data', () => isWholeReply(reply) && resolve(undefined));
    });
    socket.write(`PATCH ${path} HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n`);
    socket.write(Buffer.alloc(100_000, 0x61));
    await sleep(200);

    // The DELETE does not wait for the rest of the body, which only comes once it is answered.
    expect((await fetch(s.url, { method: 'DELETE' })).status).toBe(204);
    socket.end(Buffer.alloc(100_000, 0x62));
    await answered;
    // The server lets the connection go soon: its request body was given up on, and nobody read the
    // rest (it stayed open until idle_timeout, and a graceful shutdown waited for it).
    const started = Date.now();
    await within(closed, 10_000, undefined);
    expect(Date.now() - started).toBeLessThan(10_000);
    socket.destroy();

    expect(reply.split('\r\n')[0]).toMatch(/^HTTP\/1\.1 404 Not Found: /);
    expect(reply).toContain('"code":"BLOB_UPLOAD_UNKNOWN"');
    // The rest of the body is not read: the answer says the connection ends, so no client queues
    // its next request on it.
    expect(reply.toLowerCase()).toContain('\r\nconnection: close\r\n');
    expect((await fetch(s.url)).status).toBe(404);
    expect(unexpected()).toEqual([]);
    expect(await readdir(uploadsDir())).toEqual([]);
  });
});
