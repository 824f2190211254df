import { createHash, timingSafeEqual } from 'node:crypto';
import type { Router } from '@koa/router';
import { RegistryError } from '@wharf/registry-core';
import { clientOf } from '../http/client-address.js';
import type { MetricsConfig } from '../metrics/metrics-config.js';
import type { WharfMetrics } from '../metrics/metrics.js';

export type MetricsAccess = 'allowed' | 'unauthorized' | 'denied';

function sameSecret(given: string, expected: string): boolean {
  // Hash both sides first: timingSafeEqual needs equal lengths, and the length must not leak either.
  return timingSafeEqual(createHash('sha256').update(given).digest(), createHash('sha256').update(expected).digest());
}

/**
 * Who may scrape: loopback clients always; others with `Authorization: Bearer <[metrics] token>`
 * (compared in constant time); without a configured token, nobody else.
 */
export function metricsAccess(local: boolean, authorization: string | undefined, config: MetricsConfig): MetricsAccess {
  if (local) return 'allowed';
  if (config.token === undefined) return 'denied';
  const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
  return m && sameSecret(m[1]!, config.token) ? 'allowed' : 'unauthorized';
}

/** GET /metrics in the Prometheus text format. */
export function registerMetrics(router: Router, metrics: WharfMetrics, config: MetricsConfig): void {
  router.get('/metrics', async (ctx) => {
    const access = metricsAccess(clientOf(ctx.req).local, ctx.get('Authorization') || undefined, config);
    if (access === 'unauthorized') {
      ctx.set('WWW-Authenticate', 'Bearer realm="wharf-metrics"');
      throw new RegistryError('UNAUTHORIZED', 'a bearer token is required for /metrics from another host', undefined);
    }
    if (access === 'denied') {
      throw new RegistryError('DENIED', '/metrics answers local clients only; set [metrics] token for remote scrapers', undefined);
    }
    const text = await metrics.text();
    ctx.set('Cache-Control', 'no-store');
    ctx.set('Content-Type', metrics.contentType);
    ctx.body = text;
  });
}
