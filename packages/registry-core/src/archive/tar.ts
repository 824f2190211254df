import { createRequire } from 'node:module';
import type * as TarStream from 'tar-stream';

let loaded: typeof TarStream | undefined;

/** tar-stream, loaded on first use: a server that never imports or exports an archive does not carry it. */
export function tarStream(): typeof TarStream {
  loaded ??= createRequire(import.meta.url)('tar-stream') as typeof TarStream;
  return loaded;
}
