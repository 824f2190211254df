import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { captureLog } from '../auth/helpers.js';
import { openDownload } from '../helpers/http.js';
import { blob, pushBlob } from '../helpers/oci.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';
import { CountingForwarder } from '../proxy/helpers/counting-forwarder.js';

/**
 * A request cut at the shutdown deadline still gets its request log line (aborted), and before
 * 'wharf stopped': the process exits right after that line, so a later one may never be written.
 */

interface LogLine {
  readonly msg: string;
  readonly path?: string;
  readonly aborted?: boolean;
}

function linesOf(text: string): LogLine[] {
  return text
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as LogLine);
}

/** The request line of `path` comes, aborted, before 'wharf stopped'. */
function expectCutLineBeforeStop(text: string, path: string): void {
  const lines = linesOf(text);
  const request = lines.findIndex((l) => l.msg === 'request' && l.path === path);
  const stopped = lines.findIndex((l) => l.msg === 'wharf stopped');
  expect(stopped).toBeGreaterThanOrEqual(0);
  expect(request).toBeGreaterThanOrEqual(0);
  expect(lines[request]).toMatchObject({ aborted: true });
  expect(request).toBeLessThan(stopped);
}

describe('request log lines of requests cut at the shutdown deadline', () => {
  let up: TestRegistry;
  let fwd: CountingForwarder;
  // About 3 s through the throttled forwarder: far past the deadline.
  const layer = blob(randomBytes(1_500_000));

  beforeAll(async () => {
    up = await startRegistry();
    await pushBlob(up.url, 'lib/slow', layer);
    fwd = await CountingForwarder.start(up.url);
    fwd.throttle = { match: /\/blobs\/sha256:/, rate: 500_000 };
  });

  afterAll(async () => {
    await fwd?.close();
    await up?.close();
  });

  test('a proxy blob GET fed by a running fill from a slow upstream; the fill is abandoned, logged, and leaves nothing', async () => {
    const log = captureLog();
    // Our own root: the helper's close would remove it before the test looks at what is left in it.
    const root = await mkdtemp(join(tmpdir(), 'wharf-cut-'));
    const reg = await startRegistry({ root, logger: log.logger, settings: { proxy: { upstreams: { slow: { url: fwd.url } } } } });
    const path = `/v2/proxy/slow/lib/slow/blobs/${layer.digest}`;
    try {
      const res = await openDownload(`${reg.url}${path}`);
      expect(reg.fills.running).toBe(1);
      await reg.close({ timeoutMs: 500 });
      // Stopped, not downloading on after the server has gone.
      expect(reg.fills.running).toBe(0);
      res.destroy();
      expectCutLineBeforeStop(log.text(), path);
      const lines = linesOf(log.text());
      const failed = lines.findIndex((l) => l.msg === 'upstream blob fill failed');
      expect(failed).toBeGreaterThanOrEqual(0);
      expect(failed).toBeLessThan(lines.findIndex((l) => l.msg === 'wharf stopped'));
      expect((await readdir(join(root, '_tmp'))).filter((f) => f.startsWith('fill-'))).toEqual([]);
      expect(existsSync(join(root, 'proxy', 'blobs', 'sha256', layer.digest.slice(7, 9), layer.digest.slice(7)))).toBe(false);
    } finally {
      await reg.close();
      await rm(root, { recursive: true, force: true });
    }
  }, 20_000);

  test('a slow client reading a blob stored locally', async () => {
    const log = captureLog();
    const reg = await startRegistry({ logger: log.logger });
    // Larger than what the socket buffers of both ends hold: the send waits on the client.
    const big = blob(randomBytes(48 * 1024 * 1024));
    await pushBlob(reg.url, 'lib/big', big);
    const path = `/v2/lib/big/blobs/${big.digest}`;
    try {
      const res = await openDownload(`${reg.url}${path}`);
      await reg.close({ timeoutMs: 500 });
      res.destroy();
      expectCutLineBeforeStop(log.text(), path);
    } finally {
      await reg.close();
    }
  }, 20_000);
});
