import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { chmod, mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pushImage } from './helpers/oci.js';
import { startRegistry, type TestRegistry } from './helpers/start-registry.js';

describe('smoke', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
  });
  afterAll(async () => {
    await reg.close();
  });

  test('GET /v2/ answers 200 with the API version header', async () => {
    const res = await fetch(`${reg.url}/v2/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
  });

  test('a pushed image pulls back byte for byte', async () => {
    const { manifest } = await pushImage(reg.url, 'alice/app', '1');
    const res = await fetch(`${reg.url}/v2/alice/app/manifests/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('docker-content-digest')).toBe(manifest.digest);
    expect(Buffer.from(await res.arrayBuffer())).toEqual(manifest.bytes);
  });
});

describe('storage folders', () => {
  test('Wharf makes them readable by its own user only (they hold private images); folders that exist keep their mode', async () => {
    const top = await mkdtemp(join(tmpdir(), 'wharf-modes-'));
    try {
      await mkdir(join(top, 'kept'));
      await chmod(join(top, 'kept'), 0o755);
      const reg = await startRegistry({ root: join(top, 'kept', 'new') });
      await reg.close();
      const mode = async (path: string): Promise<string> => ((await stat(join(top, path))).mode & 0o777).toString(8);
      for (const folder of ['kept/new', 'kept/new/registry', 'kept/new/_tmp', 'kept/new/proxy']) expect([folder, await mode(folder)]).toEqual([folder, '700']);
      expect(await mode('kept')).toBe('755');
    } finally {
      await rm(top, { recursive: true, force: true });
    }
  });
});
