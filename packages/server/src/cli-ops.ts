import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Command } from 'commander';
import { UsageError } from './config-error.js';
import { loadConfig, type WharfConfig } from './config.js';
import { loadTlsFiles } from './tls/tls-files.js';

/** The URL a local probe reaches the configured listener at (`0.0.0.0` and `::` mean this machine). */
export function localBaseUrl(config: WharfConfig): string {
  const { host, port } = config.listen;
  const target = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host;
  return `${config.tls.enabled ? 'https' : 'http'}://${target}:${port}`;
}

/** GET `url`; resolves to the status. TLS is not verified: this asks whether the process answers, not who it is. */
export function probe(url: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const send = u.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(u, { method: 'GET', timeout: timeoutMs, rejectUnauthorized: false, headers: { Connection: 'close' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** Reads [tls] cert and key the way `serve` will, so `config check` finds a bad pair before a start does. */
export function checkTlsFiles(config: WharfConfig): string {
  if (!config.tls.enabled) return 'tls off';
  if (config.tls.selfSigned) return `tls self-signed (CA in ${config.tls.dir})`;
  const material = loadTlsFiles(config.tls.cert!, config.tls.key!);
  return `tls ${config.tls.cert} (valid until ${material.leaf.validTo})`;
}

/** `wharf healthcheck`: the container HEALTHCHECK (Dockerfile, docker-compose.yml). */
export function registerOpsCommands(program: Command, fail: (err: unknown) => never): void {
  program
    .command('healthcheck')
    .description('probe GET /health of the server this configuration describes; exit 0 when it answers 200 (the container HEALTHCHECK)')
    .option('-c, --config <file>', 'configuration file', 'configuration.toml')
    .option('--url <base>', 'probe this base URL instead of the configured listener, e.g. https://127.0.0.1:5000')
    .option('--timeout <seconds>', 'give up after this long', '3')
    .action(async (opts: { config: string; url?: string; timeout: string }) => {
      let base: string;
      try {
        base = opts.url ?? localBaseUrl(loadConfig({ file: opts.config, secrets: false }));
      } catch (err) {
        fail(err);
      }
      const seconds = Number(opts.timeout);
      if (!Number.isFinite(seconds) || seconds <= 0) fail(new UsageError('--timeout must be a number of seconds'));
      // A base URL, or the probe's own URL (`…/health`), as the README once suggested.
      const url = `${base.replace(/\/+$/, '').replace(/\/health$/, '')}/health`;
      try {
        const status = await probe(url, seconds * 1000);
        if (status !== 200) throw new Error(`${url} answered ${status}`);
        process.stdout.write(`ok ${url}\n`);
      } catch (err) {
        process.stderr.write(`wharf: unhealthy: ${url}: ${(err as Error).message}\n`);
        process.exit(1);
      }
    });
}
