import type { IncomingMessage } from 'node:http';
import { clientOf } from './http/client-address.js';
import type { Readable } from 'node:stream';
import { RegistryError, assertRepositoryName, type BlobInfo, type Digest, type LocalRegistry, type RepositoryReader, type RepositoryWriter } from '@wharf/registry-core';

/** A repository name resolved to what serves it. Pull-through repositories have no writer. */
export interface ResolvedRepository {
  /** The name as the serving side knows it. */
  readonly repo: string;
  readonly reader: RepositoryReader;
  readonly writer?: RepositoryWriter;
  /** Why pushes are refused here, for the UNSUPPORTED message. */
  readonly readOnlyReason?: string;
  /** The key of the upstream a pull-through repository comes from: what access rules go by. */
  readonly upstream?: string;
  /** What OCI-Namespace echoes for a pull-through repository: the `ns` the client sent, or the upstream's key. */
  readonly namespace?: string;
  /**
   * A local repository that a pull would otherwise have read from this upstream (`default_upstream`
   * or `?ns=`): its key, so that a 404 can say why the upstream was not asked.
   */
  readonly shadows?: string;
  /** A pull-through repository's cache: what a mount into a local repository may copy from. */
  readonly cache?: CachedBlobs;
}

/** Blobs a cache holds, complete, read with no request to anyone (the proxy's PullThroughRepository). */
export interface CachedBlobs {
  /** Whether the blob is held for `repo`, whole, and no download of it runs. */
  holds(repo: string, digest: Digest): boolean;
  /** The blob as held for `repo`; undefined when it is not. */
  openCached(repo: string, digest: Digest): Promise<{ readonly blob: BlobInfo; readonly body: Readable } | undefined>;
}

/** The family of the route a request goes to. */
export type Resource = 'manifest' | 'blob' | 'upload' | 'tags' | 'referrers';

/** What of the request decides routing: reads may go upstream, writes never; who asks. */
export interface RequestInfo {
  readonly method: string;
  /** Upload sessions are pushes whatever the method, and a blob HEAD is what pushes ask first. */
  readonly resource: Resource;
  /** The client is on this machine (not forwarded for another: see http/client-address.ts). */
  readonly local?: boolean;
  /** The request's Host header: the name the client reached Wharf by. */
  readonly host?: string;
  /** The address and port the request came in on (Wharf's own, as the client reached it). */
  readonly ownAddress?: string;
  readonly ownPort?: number;
}

/** What of `req` decides routing, for a request to `resource` (its method unless `method` says). */
export function requestInfo(req: IncomingMessage, resource: Resource, method = req.method ?? 'GET'): RequestInfo {
  const socket = req.socket as { localAddress?: string; localPort?: number } | undefined;
  return {
    method,
    resource,
    local: clientOf(req).local,
    ...(req.headers.host ? { host: req.headers.host } : {}),
    ...(socket?.localAddress ? { ownAddress: socket.localAddress.replace(/^::ffff:/i, '') } : {}),
    ...(socket?.localPort ? { ownPort: socket.localPort } : {}),
  };
}

export interface RepositoryResolver {
  resolve(name: string, query: URLSearchParams, request: RequestInfo): Promise<ResolvedRepository>;
}

/** Every name is a local repository. (The proxy wraps this to claim `proxy/...` names.) */
export class LocalResolver implements RepositoryResolver {
  constructor(private readonly local: LocalRegistry) {}

  async resolve(name: string): Promise<ResolvedRepository> {
    assertRepositoryName(name);
    // Kept for the proxy, also while it is off: a repository pushed there would vanish behind it later.
    if (name.startsWith('proxy/')) {
      throw new RegistryError('NAME_UNKNOWN', 'names under proxy/ are the dependency proxy\'s, and it is off on this server ([proxy] enabled = false)', { name });
    }
    return { repo: name, reader: this.local, writer: this.local };
  }
}

export function writerOf(target: ResolvedRepository): RepositoryWriter {
  if (!target.writer) {
    throw new RegistryError('UNSUPPORTED', target.readOnlyReason ?? 'this repository is read-only', { repository: target.repo });
  }
  return target.writer;
}
