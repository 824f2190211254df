import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { startAuthRegistry } from '../auth/helpers.js';
import { startRegistry, type TestRegistry } from '../helpers/start-registry.js';

/** /health (alive) and /ready (database and storage), without credentials even with auth on. */
describe('/health and /ready', () => {
  let reg: TestRegistry;

  beforeAll(async () => {
    reg = await startAuthRegistry();
  });

  afterAll(async () => {
    await reg?.close();
  });

  test('/health answers 200 {"status":"ok"} with no credentials while /v2/ asks for them', async () => {
    expect((await fetch(`${reg.url}/v2/`)).status).toBe(401);
    const res = await fetch(`${reg.url}/health`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await res.json()).toEqual({ status: 'ok' });
    const head = await fetch(`${reg.url}/health`, { method: 'HEAD' });
    expect(head.status).toBe(200);
  });

  test('/ready answers 200 when the database answers and the temporary storage takes a file', async () => {
    const res = await fetch(`${reg.url}/ready`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ready', checks: { database: 'ok', storage: 'ok' } });
  });

  test('/metrics needs no registry credentials from this machine', async () => {
    expect((await fetch(`${reg.url}/metrics`)).status).toBe(200);
  });
});

describe('/ready when something is wrong', () => {
  let reg: TestRegistry | undefined;

  afterAll(async () => {
    await reg?.close();
  });

  test('503 while the temporary storage cannot take a file, 200 again once it can', async () => {
    reg = await startRegistry();
    const temp = reg.config.temporaryRegistryStorage;
    // Tests run as root, where a read-only mode does not stop writes: make the folder a file instead.
    await rm(temp, { recursive: true, force: true });
    await writeFile(temp, 'not a folder');
    const res = await fetch(`${reg.url}/ready`);
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ status: 'unavailable', checks: { database: 'ok', storage: 'failed' } });
    expect((await fetch(`${reg.url}/health`)).status).toBe(200); // alive all the same
    await rm(temp);
    await mkdir(temp);
    expect((await fetch(`${reg.url}/ready`)).status).toBe(200);
  });

  test('503 when the database does not answer', async () => {
    reg!.db.close();
    const res = await fetch(`${reg!.url}/ready`);
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ status: 'unavailable', checks: { database: 'failed', storage: 'ok' } });
    expect((await fetch(`${reg!.url}/health`)).status).toBe(200);
  });
});
