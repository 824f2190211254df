import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import type { AuthTuning } from '../../src/auth/auth-service.js';
import { buildConfig, type WharfConfig } from '../../src/config.js';
import { startServer, type RunningServer } from '../../src/server.js';

export interface TestRegistry extends RunningServer {
  /** The temp folder holding storage and database; removed by close() unless `keep` was set. */
  readonly root: string;
  readonly config: WharfConfig;
}

export interface StartRegistryOptions {
  /** Reuse a folder (for restart tests); it is then not removed on close. */
  readonly root?: string;
  /** Extra configuration keys, as they would appear in configuration.toml. */
  readonly settings?: Record<string, unknown>;
  /** Environment seen by the configuration (WHARF_ADMIN_PASSWORD, ...). */
  readonly env?: NodeJS.ProcessEnv;
  /** Internal auth knobs (bcrypt cost, login limits, where a generated admin password goes). */
  readonly auth?: AuthTuning;
  /** Capture the server's log (default: silent, or WHARF_TEST_LOG). */
  readonly logger?: Logger;
}

/** A real Wharf on 127.0.0.1 port 0 with storage in a fresh temp folder. */
export async function startRegistry(options: StartRegistryOptions = {}): Promise<TestRegistry> {
  const root = options.root ?? (await mkdtemp(join(tmpdir(), 'wharf-test-')));
  let config: WharfConfig;
  let running: RunningServer;
  try {
    config = buildConfig({
      listen: '127.0.0.1:0',
      registry_storage: join(root, 'registry'),
      temporary_registry_storage: join(root, '_tmp'),
      proxy_storage: join(root, 'proxy'),
      database: join(root, 'wharf.db'),
      log_level: 'silent',
      // Auth is off unless a test turns it on with settings.auth: the other suites push anonymously.
      // A test that listens on every interface (the proxy's loopback rule) knows it runs an open registry.
      auth: { enabled: false, allow_anonymous_push: !/^127\.|^\[?::1\]?:|^localhost:/.test(String(options.settings?.listen ?? '127.0.0.1:0')) },
      ...options.settings,
    }, { env: options.env ?? {} });
    running = await startServer(config, {
      logger: options.logger ?? pino({ level: process.env.WHARF_TEST_LOG ?? 'silent' }),
      ...(options.auth ? { auth: options.auth } : {}),
    });
  } catch (err) {
    // A configuration or a start the test expects to be refused leaves no temp folder behind.
    if (!options.root) await rm(root, { recursive: true, force: true });
    throw err;
  }
  return {
    ...running,
    root,
    config,
    async close(closeOptions) {
      await running.close(closeOptions);
      if (!options.root) await rm(root, { recursive: true, force: true });
    },
  };
}
