import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { WHARF_CLI, freePort, startWharfProcess, writeWharfConfig, type WharfProcess } from '../helpers/wharf-process.js';

/**
 * A promise rejection nothing handles is a bug; node's default ends the process with it, and every
 * pull and push in flight. `wharf serve` logs it, counts it and goes on. The rejection is planted: the
 * entry point below runs the real CLI and rejects a promise nobody handles on SIGUSR2.
 */
describe('an unhandled promise rejection in wharf serve', () => {
  let dir: string;
  let wharf: WharfProcess;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'wharf-unhandled-'));
    const entry = join(dir, 'entry.mjs');
    await writeFile(entry, `process.on('SIGUSR2', () => { Promise.reject(new Error('planted rejection')); });\nawait import(${JSON.stringify(pathToFileURL(WHARF_CLI).href)});\n`);
    const port = await freePort();
    wharf = await startWharfProcess(await writeWharfConfig(dir, port, { logLevel: 'info', top: ['log_format = "json"'] }), port, process.execPath, entry);
  });

  afterAll(async () => {
    await wharf?.kill('SIGTERM');
    await rm(dir, { recursive: true, force: true });
  });

  test('is logged at error with its stack and counted; the server goes on serving', async () => {
    wharf.child.kill('SIGUSR2');
    const deadline = Date.now() + 5_000;
    while (!wharf.output().includes('planted rejection') && Date.now() < deadline) await sleep(20);
    const line = wharf
      .output()
      .split('\n')
      .filter((l) => l.includes('unhandled promise rejection'))
      .map((l) => JSON.parse(l) as { level: number; err?: { message?: string; stack?: string } })[0];
    expect(line?.level).toBe(50);
    expect(line?.err?.message).toBe('planted rejection');
    expect(line?.err?.stack).toContain('entry.mjs');
    expect(wharf.child.exitCode).toBeNull();
    expect((await fetch(`${wharf.url}/v2/`)).status).toBe(200);
    expect(await (await fetch(`${wharf.url}/metrics`)).text()).toMatch(/^wharf_unhandled_rejections_total 1$/m);
  });
});
