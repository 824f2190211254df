import { RegistryError, assertRepositoryName, type LocalRegistry } from '@wharf/registry-core';
import type { PullThroughRepository } from '@wharf/proxy';
import { nsTargets, type ProxyConfig, type UpstreamConfig } from './proxy-config.js';
import type { RepositoryResolver, RequestInfo, ResolvedRepository } from './repositories.js';

const PREFIX = 'proxy/';

/**
 * The one place that decides "local, or pull-through": `proxy/<upstream>/<repository>` names, a
 * containerd `?ns=<host>` for a name that is not local, and Docker's registry-mirrors mode
 * (`default_upstream`) for pulls of names that are not local. Pushes always stay local.
 */
export class ProxyResolver implements RepositoryResolver {
  private readonly byName = new Map<string, UpstreamConfig>();
  /** What `?ns=` may name (see nsTargets). */
  private readonly byHost: ReadonlyMap<string, UpstreamConfig>;

  /** Host names and addresses of Wharf's own (see isOwn). */
  private readonly ownNames: ReadonlySet<string>;

  constructor(
    private readonly local: LocalRegistry,
    private readonly config: ProxyConfig,
    private readonly repositories: ReadonlyMap<string, PullThroughRepository>,
    /**
     * With auth enabled, per-upstream `access` (auth middleware) replaces the loopback-only rule.
     * `ownHosts`: `host[:port]`s Wharf is reached by besides the one a request came by (`[auth]
     * realm`'s: its public address behind a proxy); `ownNames`: host names it answers on whatever
     * the port (`[tls] hosts`). Not the machine's other addresses: many of them (Docker's
     * 172.17.0.1, say) are on every machine, a node's own as much as Wharf's.
     */
    private readonly options: { readonly loopbackOnly: boolean; readonly ownHosts?: readonly string[]; readonly ownNames?: readonly string[] } = { loopbackOnly: true },
  ) {
    this.ownNames = new Set((options.ownNames ?? []).map((n) => n.toLowerCase()));
    for (const u of config.upstreams) for (const name of [u.key, ...u.aliases]) this.byName.set(name, u);
    this.byHost = nsTargets(config.upstreams);
  }

  async resolve(name: string, query: URLSearchParams, request: RequestInfo): Promise<ResolvedRepository> {
    assertRepositoryName(name);
    if (name.startsWith(PREFIX)) {
      const rest = name.slice(PREFIX.length);
      const slash = rest.indexOf('/');
      const key = slash < 0 ? rest : rest.slice(0, slash);
      const upstream = this.byName.get(key);
      if (!upstream) {
        throw new RegistryError('NAME_UNKNOWN', `no upstream named "${key}" is configured under proxy/`, { upstream: key });
      }
      if (slash < 0) throw new RegistryError('NAME_INVALID', 'a proxy name needs a repository after the upstream', { name });
      return this.pullThrough(upstream, rest.slice(slash + 1), request);
    }
    const local: ResolvedRepository = { repo: name, reader: this.local, writer: this.local };
    const ns = query.get('ns');
    const reads = (request.method === 'GET' || request.method === 'HEAD') && request.resource !== 'upload';
    if (ns && reads && !this.byHost.has(ns.toLowerCase()) && !this.isOwn(ns, request)) {
      // A registry no upstream is configured for (containerd with a catch-all hosts.toml names every
      // registry it pulls from): not Wharf's to answer. Its local repository of that name is another
      // image; a 404 sends containerd on to the registry itself.
      throw new RegistryError('NAME_UNKNOWN', `no upstream is configured for the registry ${JSON.stringify(ns)} (?ns=): Wharf serves it neither from its cache nor from its own repositories`, { ns });
    }
    if (!isPull(request)) return local;
    const upstream = ns ? this.byHost.get(ns.toLowerCase()) : this.config.defaultUpstream ? this.byName.get(this.config.defaultUpstream) : undefined;
    if (!upstream) return local;
    if (await this.local.repositoryHasManifests(name)) return this.mayPullThrough(request) ? { ...local, shadows: upstream.key } : local;
    // The spec's proxying section: `ns` SHOULD be echoed in OCI-Namespace. As it matched: lower-cased
    // it is a configured host, key or alias, plain ASCII (the client's own spelling may not be: the
    // Kelvin sign lower-cases to "k", and node refuses it in a header).
    return this.pullThrough(upstream, name, request, ns ? ns.toLowerCase() : undefined);
  }

  /**
   * Whether `ns` names Wharf itself: its images pulled through a catch-all mirror configuration that
   * names Wharf otherwise than the image does (containerd sends `ns` only then). By the host the
   * request came by or `ownHosts`; or by its address, `ownNames` or a loopback name on the port the
   * request came by or in on (a port left out is 80 or 443).
   */
  private isOwn(ns: string, request: RequestInfo): boolean {
    const named = splitHost(ns);
    if (!named) return false;
    // A loopback name is the client's own machine: Wharf's only for a client on Wharf's machine (a
    // node's catch-all sends `localhost:5000`, its own local registry, as ns too).
    const loopback = LOOPBACK_NAMES.includes(named.hostname) || /^127\./.test(named.hostname);
    if (loopback && request.local !== true) return false;
    if (sameHost(ns, request.host) || this.options.ownHosts?.some((host) => sameHost(ns, host))) return true;
    const reached = request.host === undefined ? undefined : splitHost(request.host);
    const names = new Set([...this.ownNames, ...LOOPBACK_NAMES]);
    if (reached) names.add(reached.hostname);
    if (request.ownAddress) names.add(request.ownAddress.toLowerCase());
    if (!names.has(named.hostname)) return false;
    return (reached !== undefined && samePort(named.port, reached.port)) || (request.ownPort !== undefined && samePort(named.port, request.ownPort));
  }

  /** Whether this request may be served through an upstream at all (without auth: loopback only, unless `anonymous`). */
  private mayPullThrough(request: RequestInfo): boolean {
    return !this.options.loopbackOnly || this.config.anonymous || request.local === true;
  }

  /** `namespace`: what OCI-Namespace says; the upstream's key unless the client named it by `ns`. */
  private pullThrough(upstream: UpstreamConfig, path: string, request: RequestInfo, namespace = upstream.key): ResolvedRepository {
    if (!this.mayPullThrough(request)) {
      throw new RegistryError('DENIED', 'the dependency proxy serves only local clients until accounts are configured; set [proxy] anonymous = true to open it', {
        upstream: upstream.key,
      });
    }
    const repo = upstream.officialPrefix && !path.includes('/') ? `${upstream.officialPrefix}${path}` : path;
    const reader = this.repositories.get(upstream.key);
    if (!reader) throw new RegistryError('NAME_UNKNOWN', `upstream "${upstream.key}" is not available`, { upstream: upstream.key });
    return {
      repo,
      reader,
      readOnlyReason: `proxy/${upstream.key}/... is a read-only pull-through cache of ${upstream.key}; push to a repository of your own namespace instead`,
      upstream: upstream.key,
      namespace,
      cache: reader,
    };
  }
}

const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '::1'];

/** `host[:port]` or `[v6][:port]`, lower-cased, brackets off; undefined when it is neither. */
function splitHost(value: string): { hostname: string; port?: number } | undefined {
  const m = /^(?:\[([0-9a-f:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/i.exec(value.trim());
  if (!m) return /^[0-9a-f:]+$/i.test(value) && value.includes(':') ? { hostname: value.toLowerCase() } : undefined;
  const hostname = (m[1] ?? m[2]!).toLowerCase();
  return m[3] === undefined ? { hostname } : { hostname, port: Number(m[3]) };
}

/** Whether two ports are the same; a port left out is the scheme's, 80 or 443. */
function samePort(a: number | undefined, b: number | undefined): boolean {
  const isDefault = (port: number | undefined) => port === undefined || port === 80 || port === 443;
  return a === undefined || b === undefined ? isDefault(a) && isDefault(b) : a === b;
}

/** Whether `ns` and `host` (a Host header, `[auth] realm`'s host) name the same host and port. */
function sameHost(ns: string, host: string | undefined): boolean {
  const a = splitHost(ns);
  const b = host === undefined ? undefined : splitHost(host);
  return a !== undefined && b !== undefined && a.hostname === b.hostname && samePort(a.port, b.port);
}

/**
 * Whether a request on a name that is not local may be served from an upstream by `?ns=` or
 * `default_upstream`: what pulls send. Upload sessions belong to a push whatever the method. A blob
 * HEAD is what a push asks before uploading a layer (pulls GET blobs): answered from an upstream
 * holding the layer, it made docker, podman, skopeo and ctr skip the upload, and their manifest was
 * then refused for a blob unknown to the repository. So it answers for the local repository.
 */
function isPull(request: RequestInfo): boolean {
  if (request.resource === 'upload') return false;
  if (request.method === 'GET') return true;
  return request.method === 'HEAD' && request.resource !== 'blob';
}
