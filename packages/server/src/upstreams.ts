import { HttpUpstream, MirroredUpstream, type RateLimitGateLogger, type Upstream } from '@wharf/proxy';
import type { ProxyConfig, UpstreamConfig } from './proxy-config.js';

/** The client for one configured upstream: one URL, or its URL and mirrors behind a strategy. */
export function buildUpstream(
  u: UpstreamConfig,
  proxy: ProxyConfig,
  onRateLimit: (remaining: number) => void,
  onRequest?: (status: number | 'error') => void,
  logger?: RateLimitGateLogger,
): Upstream {
  // With mirrors, a failed request goes to the next mirror at once, and MirroredUpstream makes the
  // rounds that `retries` allows; a mirror's own client retrying first cost every stalled mirror its
  // timeouts `retries` times over before the next one was asked.
  const policy = u.policy ?? proxy;
  const retries = u.mirrors.length === 0 ? policy.retries : 0;
  // Each mirror's errors name its host ("upstream docker.io (mirror.gcr.io) answered 503 ..."):
  // with one name for all, an operator could not tell which mirror failed.
  // The credentials are the registry's at `url`: a mirror (mirror.gcr.io for Docker Hub) that
  // challenged would otherwise get a Docker Hub token, as would any token realm it names.
  const client = (url: string) => {
    const credentials = url === u.url || u.mirrorCredentials === true;
    return new HttpUpstream({
      name: u.mirrors.length === 0 ? u.key : `${u.key} (${new URL(url).host})`,
      url,
      ...(credentials && u.username !== undefined ? { username: u.username } : {}),
      ...(credentials && u.password !== undefined ? { password: u.password } : {}),
      ...(!credentials && u.username !== undefined
        ? { credentialsAdvice: `upstream ${u.key}'s credentials go to its url alone: set mirror_credentials = true if its mirrors share its accounts` }
        : {}),
      ...(u.ca !== undefined ? { ca: u.ca } : {}),
      ...(proxy.egress ? { egress: proxy.egress } : {}),
      timeouts: { connect: policy.connectTimeout, firstByte: policy.firstByteTimeout, idle: policy.idleTimeout, minSpeed: policy.minSpeed },
      retries,
      onRateLimit,
      ...(onRequest ? { onRequest } : {}),
      ...(logger ? { logger } : {}),
    });
  };
  if (u.mirrors.length === 0) return client(u.url);
  return new MirroredUpstream([u.url, ...u.mirrors].map(client), {
    name: u.key,
    strategy: u.strategy,
    hedgeDelay: u.hedgeDelay,
    ...(u.stripeSize !== undefined ? { stripeSize: u.stripeSize } : {}),
    retries: policy.retries,
    // Longer than outage_backoff: a mirror that stalled a cached tag's re-check, which put the whole
    // upstream in outage_backoff, is still behind the others when the next re-check goes.
    failMemory: Math.max(30_000, 2 * policy.outageBackoff),
  });
}
