#!/usr/bin/env node
// pnpm bench: Wharf against CNCF distribution (Debian's docker-registry), side by side, same workloads,
// same machine, same run. Plain ESM, Node built-ins only.
//
//   pnpm bench                     1 GiB blob (BENCH_SIZE_MB=1024)
//   BENCH_SIZE_MB=64 pnpm bench    quick run
//   BENCH_ONLY=proxy pnpm bench    only the pull-through proxy mode (BENCH_ONLY=registry: only the rest)
//
// Other knobs (all optional): BENCH_DURATION_S (manifest load, default 5), BENCH_CONNECTIONS (64),
// BENCH_TAGS (1000), BENCH_TAG_REPEAT (50), BENCH_SMALL_BLOBS (2000), BENCH_SMALL_PARALLEL (16),
// BENCH_REPEAT (3: runs of each push and pull per server, median reported), BENCH_LINK_MBIT (1000: the
// proxy mode's link to an upstream in a network namespace, for P6 and P7; run as root; 0 leaves them out).
import { execFileSync, execSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  RssSampler,
  cleanup,
  cpuSeconds,
  machineBusySeconds,
  distributionVersion,
  ensureDistribution,
  ensureWharfBuilt,
  installExitHandlers,
  registerTempDir,
  rssBytes,
  startBareHttp,
  startDistribution,
  startWharf,
  stopServer,
} from './servers.mjs';
import {
  ACCEPT,
  MiB,
  hammer,
  listTags,
  makeRandomFile,
  newAgent,
  pull,
  pushChunked,
  pushMonolithic,
  pushSmallBlobs,
  pushSmallImage,
  pushTags,
  smallBlob,
} from './workloads.mjs';
import { runProxy } from './proxy.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

function intEnv(name, fallback, min = 1) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min} (got "${raw}")`);
  return n;
}

const sizeMiB = intEnv('BENCH_SIZE_MB', 1024);
// A quick run (a blob smaller than 1 GiB) also shortens the fixed-duration and fixed-count workloads,
// so that it finishes in about half a minute; each can still be set explicitly.
const quick = sizeMiB < 1024;
const settings = {
  sizeMiB,
  quick,
  chunkMiB: 16,
  durationS: intEnv('BENCH_DURATION_S', quick ? 3 : 5),
  warmupMs: quick ? 500 : 1000,
  connections: intEnv('BENCH_CONNECTIONS', 64),
  tags: intEnv('BENCH_TAGS', 1000),
  tagRepeat: intEnv('BENCH_TAG_REPEAT', 50),
  smallBlobs: intEnv('BENCH_SMALL_BLOBS', quick ? 1000 : 2000),
  smallParallel: intEnv('BENCH_SMALL_PARALLEL', 16),
  pullStreams: [1, 8],
  repeat: intEnv('BENCH_REPEAT', 3), // push and pull runs per server; the median is reported
  // the proxy mode's link to an upstream in a network namespace (P6, P7; root only); 0: none
  linkMbit: intEnv('BENCH_LINK_MBIT', 1000, 0),
  rssIntervalMs: 100,
};

const log = (msg) => process.stderr.write(`bench: ${msg}\n`);
const fmtS = (s) => `${s.toFixed(1)} s`;

function syncDisks() {
  try {
    execSync('sync', { stdio: 'ignore', timeout: 120_000 });
  } catch {
    /* not fatal */
  }
}

async function main() {
  installExitHandlers();
  const startedAt = new Date();
  const size = settings.sizeMiB * MiB;
  const cli = ensureWharfBuilt(root);
  const distBin = ensureDistribution();

  const tmp = mkdtempSync(join(tmpdir(), 'wharf-bench-'));
  registerTempDir(tmp);

  const machine = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round((totalmem() / 1024 ** 3) * 10) / 10,
    node: process.version,
    distribution: distributionVersion(distBin),
    wharfCommit: gitCommit(),
    tmp,
  };
  log(`${machine.cpus} CPU (${machine.cpuModel}), ${machine.memoryGiB} GiB RAM, Node ${machine.node}, ${machine.distribution}`);
  log(`temp dir ${tmp}`);

  let t = performance.now();
  const blobFile = join(tmp, 'blob.bin');
  const digest = await makeRandomFile(blobFile, size);
  log(`generated a ${settings.sizeMiB} MiB random blob ${digest.slice(0, 19)}… in ${fmtS((performance.now() - t) / 1000)}`);

  const only = process.env.BENCH_ONLY ?? '';
  if (!['', 'registry', 'proxy'].includes(only)) throw new Error(`BENCH_ONLY must be "registry" or "proxy" (got "${only}")`);
  const results = {};
  const failures = [];
  const noise = [];
  const load0 = loadavg();
  machine.loadAverageAtStart = load0.map((x) => Math.round(x * 100) / 100);
  let rows = [];
  let logs = {};
  if (only !== 'proxy') {
  const wharf = await startWharf({ root, cli, dir: join(tmp, 'wharf') });
  const dist = await startDistribution({ bin: distBin, dir: join(tmp, 'distribution') });
  const servers = [wharf, dist];
  log(`wharf pid ${wharf.pid} at ${wharf.base}; distribution pid ${dist.pid} at ${dist.base}`);
  const idleRss = Object.fromEntries(servers.map((s) => [s.name, rssBytes(s.pid)]));
  const sampler = new RssSampler(servers, settings.rssIntervalMs);
  const agents = new Map(servers.map((s) => [s.name, newAgent()]));

  /**
   * Runs one workload on Wharf, then on distribution, `repeat` times (interleaved, so that a burst of
   * outside noise hits both); a failure on one does not stop the other. Each numeric field of the result
   * is the median over the repeats; `runs` keeps every repeat.
   */
  async function both(key, fn, { sync = false, repeat = 1 } = {}) {
    const runs = Object.fromEntries(servers.map((s) => [s.name, []]));
    const errors = {};
    for (let rep = 0; rep < repeat; rep++) {
      for (const server of servers) {
        if (errors[server.name]) continue;
        sampler.setPhase(key);
        if (sync) syncDisks();
        const t0 = performance.now();
        const cpu0 = cpuSnapshot(servers);
        const tag = repeat > 1 ? `${key} #${rep + 1} on ${server.name}` : `${key} on ${server.name}`;
        try {
          if (!server.alive) throw new Error(`${server.name} is not running`);
          const r = await fn(server, agents.get(server.name));
          const seconds = (performance.now() - t0) / 1000;
          const other = otherCpuPercent(cpu0, cpuSnapshot(servers), seconds);
          runs[server.name].push({ ...r, otherCpuPercent: other });
          // (a run shorter than 0.25 s is too short for 10 ms CPU ticks to say anything)
          if (seconds >= 0.25) noise.push({ workload: key, server: server.name, run: rep + 1, otherCpuPercent: Math.round(other) });
          log(`${tag}: ${summary(r)} (${fmtS(seconds)}, other processes ${other.toFixed(0)}% CPU)`);
        } catch (err) {
          errors[server.name] = err.message;
          failures.push({ workload: key, server: server.name, error: err.message });
          log(`${tag} FAILED: ${err.message}`);
        }
      }
    }
    results[key] = {};
    for (const server of servers) {
      const list = runs[server.name];
      if (errors[server.name] || list.length === 0) {
        results[key][server.name] = { error: errors[server.name] ?? 'no result' };
        continue;
      }
      const merged = { ...list[0] };
      for (const [field, value] of Object.entries(list[0])) {
        if (typeof value === 'number') merged[field] = median(list.map((x) => x[field]));
      }
      if (list.length > 1) merged.runs = list;
      results[key][server.name] = merged;
    }
  }

  // 1. monolithic push
  const repeat = settings.repeat;
  await both('pushMonolithic', (s, a) => pushMonolithic(s, a, 'bench/big', blobFile, size, digest), { sync: true, repeat });
  // 2. chunked push of the same blob (to another repository)
  await both('pushChunked', (s, a) => pushChunked(s, a, 'bench/chunked', blobFile, size, digest, settings.chunkMiB * MiB), { sync: true, repeat });
  syncDisks();
  // 3. pull, 1 and 8 streams
  for (const streams of settings.pullStreams) {
    await both(`pull${streams}`, (s) => pull(s, 'bench/big', digest, size, streams), { repeat });
  }
  // 4. manifest GET and HEAD by tag
  const images = {};
  await both('setupManifest', async (s, a) => {
    images[s.name] = await pushSmallImage(s, a, 'bench/app', 'latest');
    return { digest: images[s.name].digest };
  });
  for (const method of ['GET', 'HEAD']) {
    await both(`manifest${method}`, (s) =>
      hammer(s, {
        path: '/v2/bench/app/manifests/latest',
        method,
        headers: { accept: ACCEPT },
        connections: settings.connections,
        durationMs: settings.durationS * 1000,
        warmupMs: settings.warmupMs,
        expectBytes: images[s.name]?.manifest.length,
      }),
    );
  }
  // The client's own ceiling: the same load against a bare node:http server with the same reply size.
  try {
    const bare = await startBareHttp(images.wharf?.manifest.length ?? images.distribution?.manifest.length ?? 440);
    try {
      results.clientCeiling = {};
      for (const method of settings.quick ? ['GET'] : ['GET', 'HEAD']) {
        const cpu0 = cpuSnapshot([...servers, bare]);
        const t0 = performance.now();
        const r = await hammer(bare, { path: '/v2/bench/app/manifests/latest', method, connections: settings.connections, durationMs: settings.durationS * 1000, warmupMs: settings.warmupMs });
        const other = otherCpuPercent(cpu0, cpuSnapshot([...servers, bare]), (performance.now() - t0) / 1000);
        results.clientCeiling[method] = { ...r, otherCpuPercent: other };
        noise.push({ workload: `clientCeiling${method}`, server: 'bare-node-http', run: 1, otherCpuPercent: Math.round(other) });
        log(`client ceiling (bare node:http server) ${method}: ${summary(r)} (other processes ${other.toFixed(0)}% CPU)`);
      }
    } finally {
      await stopServer(bare);
    }
  } catch (err) {
    log(`client ceiling measurement failed: ${err.message}`);
  }
  // 5. tag list
  await both('pushTags', async (s, a) => {
    const image = await pushSmallImage(s, a, 'bench/tags', 'latest');
    return pushTags(s, a, 'bench/tags', image.manifest, settings.tags - 1 > 0 ? settings.tags - 1 : 0);
  });
  await both('tagList', (s, a) => listTags(s, a, 'bench/tags', settings.tags, settings.tagRepeat));
  // 6. small blob pushes
  const blobs = Array.from({ length: settings.smallBlobs }, () => smallBlob(4096));
  syncDisks();
  await both('smallBlobs', (s, a) => pushSmallBlobs(s, a, 'bench/small', blobs, settings.smallParallel));

  sampler.stop();
  for (const a of agents.values()) a.destroy();
  // 7. RSS
  results.rss = Object.fromEntries(servers.map((s) => [s.name, { peakBytes: sampler.peak[s.name], idleBytes: idleRss[s.name] }]));
  results.rssByPhase = sampler.phasePeak;

  logs = Object.fromEntries(
    servers.map((s) => [s.name, { lines: s.logCount, warnings: s.warnCount, errors: s.errorCount, alive: s.alive, firstLines: s.logLines.slice(0, 20) }]),
  );

  rows = buildRows(results);
  const output = renderTable(rows);
  machine.loadAverageAtEnd = loadavg().map((x) => Math.round(x * 100) / 100);
  const notes = renderNotes(results, logs, failures, machine, noise);
  process.stdout.write(`\nWharf ${machine.wharfCommit} vs CNCF distribution — ${settings.sizeMiB} MiB blob${settings.quick ? " (quick run)" : ""}, ${machine.cpus} CPU, Node ${machine.node}, ${machine.distribution}\n`);
  process.stdout.write(`manifest load ${settings.durationS} s per figure after ${settings.warmupMs} ms warm-up; ${settings.tags} tags listed ${settings.tagRepeat}x; ${settings.smallBlobs} small blobs\n\n`);
  process.stdout.write(output + '\n');
  process.stdout.write(notes + '\n');
  }

  // Proxy mode: Wharf's pull-through proxy against distribution's, in front of one upstream
  let proxy;
  if (only !== 'registry') {
    const proxyFailures = [];
    try {
      proxy = await runProxy({
        root, cli, distBin, tmp, blobFile, size, digest, settings, log, median, cpuSnapshot, otherCpuPercent,
        localPullMiBs: get(results, 'pull1', 'wharf', 'mibPerSec'),
      });
    } catch (err) {
      proxyFailures.push({ workload: 'proxy', server: 'setup', error: err.message });
      log(`proxy mode FAILED: ${err.message}`);
      proxy = { results: {}, rows: [], noise: [], failures: proxyFailures, logs: {} };
    }
    failures.push(...proxy.failures);
    machine.loadAverageAtEnd = loadavg().map((x) => Math.round(x * 100) / 100);
    process.stdout.write(`\nProxy mode: Wharf proxy vs distribution proxy (proxy.remoteurl), one distribution upstream reached directly (its access log counts the GETs) — ${settings.sizeMiB} MiB blob, fresh proxy storage per cold measurement\n\n`);
    process.stdout.write(renderTable(proxy.rows) + '\n');
    process.stdout.write(renderProxyNotes(proxy, machine) + '\n');
  }

  let json = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    settings,
    machine,
    blob: { sizeBytes: size, digest },
    table: rows.map(({ key, label, unit, wharf, distribution, ratio, target, pass }) => ({ key, label, unit, wharf, distribution, ratio, target, pass })),
    results,
    serverLogs: logs,
    otherProcessesCpu: noise,
    ...(proxy ? { proxy: { table: proxy.rows.map(({ key, label, unit, wharf, distribution, ratio, target, pass }) => ({ key, label, unit, wharf, distribution, ratio, target, pass })), results: proxy.results, serverLogs: proxy.logs, otherProcessesCpu: proxy.noise } } : {}),
    failures,
  };
  const resultsFile = join(root, 'bench/results.json');
  if (only === 'proxy' && existsSync(resultsFile)) {
    // a proxy-only run replaces the proxy section of the last full results, and keeps the rest
    try {
      const previous = JSON.parse(readFileSync(resultsFile, 'utf8'));
      json = { ...previous, proxy: { ...json.proxy, startedAt: json.startedAt, finishedAt: json.finishedAt, settings, machine, failures } };
    } catch {
      /* unreadable: overwrite */
    }
  }
  writeFileSync(resultsFile, JSON.stringify(json, null, 2) + '\n');
  log('results written to bench/results.json');
  if (failures.length > 0) process.exitCode = 1;
}

/** CPU seconds of the whole machine, of each server, and of this process. */
function cpuSnapshot(servers) {
  const own = process.cpuUsage();
  let serversCpu = 0;
  for (const s of servers) {
    try {
      serversCpu += cpuSeconds(s.pid);
    } catch {
      /* gone */
    }
  }
  return { machine: machineBusySeconds(), servers: serversCpu, own: (own.user + own.system) / 1e6 };
}

/** CPU used by processes other than the two servers and this client, in % of one core. */
function otherCpuPercent(a, b, seconds) {
  const other = b.machine - a.machine - (b.servers - a.servers) - (b.own - a.own);
  return Math.max(0, (other / seconds) * 100);
}

function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

function gitCommit() {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}

function summary(r) {
  if (r.mibPerSec !== undefined) return `${r.mibPerSec.toFixed(1)} MiB/s` + (r.serverCpuPerGiB !== undefined ? `, server CPU ${r.serverCpuPerGiB.toFixed(2)} s/GiB` : '');
  if (r.rps !== undefined && r.requests !== undefined) return `${r.rps.toFixed(0)} req/s, p99 ${r.p99ms.toFixed(1)} ms, server CPU ${r.serverCpuPercent.toFixed(0)}%, client CPU ${r.clientCpuPercent.toFixed(0)}%${r.errors ? `, ${r.errors} errors` : ''}`;
  if (r.rps !== undefined) return `${r.rps.toFixed(1)} req/s, ${r.meanMs.toFixed(1)} ms each`;
  if (r.tagsPerSec !== undefined) return `${r.tagsPerSec.toFixed(0)} tags/s`;
  if (r.blobsPerSec !== undefined) return `${r.blobsPerSec.toFixed(0)} blobs/s${r.errors ? `, ${r.errors} errors` : ''}`;
  return JSON.stringify(r);
}

// ---------------------------------------------------------------------------------------------
// Table

const get = (results, key, server, field) => {
  const v = results[key]?.[server]?.[field];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
};

/**
 * One row per figure. `better`: 'higher' → ratio = wharf / distribution; 'lower' (CPU, memory) →
 * ratio = distribution / wharf. Either way a ratio > 1 means Wharf did better.
 */
function buildRows(results) {
  const rows = [];
  const add = (key, label, unit, field, better, target, decimals = 1, scale = 1) => {
    const w = get(results, key, 'wharf', field);
    const d = get(results, key, 'distribution', field);
    const wv = w === undefined ? undefined : w * scale;
    const dv = d === undefined ? undefined : d * scale;
    const ratio = wv === undefined || dv === undefined || wv === 0 || dv === 0 ? undefined : better === 'higher' ? wv / dv : dv / wv;
    const pass = target && ratio !== undefined ? ratio >= target.minRatio : target ? false : undefined;
    rows.push({ key: `${key}.${field}`, label, unit, wharf: wv, distribution: dv, ratio, target: target?.text, pass, decimals });
  };
  const sz = `${settings.sizeMiB} MiB`;
  add('pushMonolithic', `1. push ${sz}, monolithic`, 'MiB/s', 'mibPerSec', 'higher', { text: '>= 1.1x distribution', minRatio: 1.1 });
  add('pushChunked', `2. push ${sz}, ${settings.chunkMiB} MiB chunks`, 'MiB/s', 'mibPerSec', 'higher');
  {
    const wm = get(results, 'pushMonolithic', 'wharf', 'mibPerSec');
    const wc = get(results, 'pushChunked', 'wharf', 'mibPerSec');
    const dm = get(results, 'pushMonolithic', 'distribution', 'mibPerSec');
    const dc = get(results, 'pushChunked', 'distribution', 'mibPerSec');
    const w = wm && wc ? wc / wm : undefined;
    const d = dm && dc ? dc / dm : undefined;
    rows.push({ key: 'chunkedOverMonolithic', label: '   chunked / monolithic (same server)', unit: 'x', wharf: w, distribution: d, ratio: undefined, target: 'Wharf >= 0.9x own monolithic', pass: w === undefined ? false : w >= 0.9, decimals: 2 });
  }
  for (const streams of settings.pullStreams) {
    add(`pull${streams}`, `3. pull ${sz}, ${streams} stream${streams > 1 ? 's' : ''} (aggregate)`, 'MiB/s', 'mibPerSec', 'higher', { text: '>= 1.0x distribution', minRatio: 1.0 });
    add(`pull${streams}`, `   server CPU per GiB pulled, ${streams} stream${streams > 1 ? 's' : ''}`, 'CPU s/GiB', 'serverCpuPerGiB', 'lower', { text: '<= distribution', minRatio: 1.0 }, 2);
  }
  add('manifestGET', `4. manifest GET by tag, ${settings.connections} conns`, 'req/s', 'rps', 'higher', { text: '>= 10x distribution', minRatio: 10 }, 0);
  add('manifestHEAD', `   manifest HEAD by tag, ${settings.connections} conns`, 'req/s', 'rps', 'higher', undefined, 0);
  add('manifestGET', '   manifest GET p99 latency', 'ms', 'p99ms', 'lower', undefined, 1);
  add('pushTags', `5. (setup) tag ${settings.tags - 1} tags, PUT manifest x16`, 'tags/s', 'tagsPerSec', 'higher', undefined, 0);
  add('tagList', `   GET tags/list?n=${settings.tags}, x${settings.tagRepeat}`, 'req/s', 'rps', 'higher', undefined, 1);
  add('smallBlobs', `6. push 4 KiB blobs, ${settings.smallParallel} parallel, ${settings.smallBlobs}`, 'blobs/s', 'blobsPerSec', 'higher', undefined, 0);
  add('rss', '7. peak server RSS (sampled every 100 ms)', 'MiB', 'peakBytes', 'lower', undefined, 1, 1 / MiB);
  add('rss', '   idle server RSS after start', 'MiB', 'idleBytes', 'lower', undefined, 1, 1 / MiB);
  // the RSS target is absolute, not relative
  const rss = rows.find((r) => r.key === 'rss.peakBytes');
  rss.target = 'Wharf <= 120 MiB';
  rss.pass = rss.wharf !== undefined ? rss.wharf <= 120 : false;
  return rows;
}

function renderTable(rows) {
  const fmt = (v, decimals) => (v === undefined ? 'n/a' : v.toLocaleString('en-US', { minimumFractionDigits: decimals, maximumFractionDigits: decimals }));
  const header = ['workload', 'unit', 'wharf', 'distribution', 'ratio', 'target', 'result'];
  const body = rows.map((r) => [
    r.label,
    r.unit,
    fmt(r.wharf, r.decimals),
    fmt(r.distribution, r.decimals),
    r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}x`,
    r.target ?? '',
    r.pass === undefined ? '' : r.pass ? 'PASS' : 'FAIL',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const right = new Set([2, 3, 4]);
  const line = (cells) => cells.map((c, i) => (right.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join(' | ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('-|-'), ...body.map(line)].join('\n');
}

/** The disturbance warning: workloads during which other processes used > 15% of one core. */
function noiseWarning(noise) {
  const worst = new Map();
  for (const n of noise) {
    const k = `${n.workload}/${n.server}`;
    worst.set(k, Math.max(worst.get(k) ?? 0, n.otherCpuPercent));
  }
  const noisy = [...worst.entries()].filter(([, v]) => v > 15);
  if (noisy.length > 0) {
    return `WARNING: other processes on this machine used CPU during ${noisy.map(([k, v]) => `${k} (${v}%)`).join(', ')} (% of one core, worst run); those figures are disturbed, run again on a quiet machine.`;
  }
  return 'Other processes used < 15% of one core during every workload.';
}

function renderProxyNotes(proxy, machine) {
  const out = [''];
  const r = proxy.results;
  out.push(`Load average at start ${machine.loadAverageAtStart.join(' ')}, at end ${machine.loadAverageAtEnd.join(' ')}.`);
  out.push(noiseWarning(proxy.noise) + ' (CPU of the proxy, the upstream and the pull clients is not counted as "other".)');
  out.push(`Cold and 16-concurrent figures are the median of ${settings.repeat} runs per proxy, each on a fresh proxy (new storage dir); the manifest lib/app:1 is fetched through the proxy first (not timed).`);
  if (r.localPullMiBs !== undefined) out.push(`Local pull reference: ${r.localPullMiBs.toFixed(1)} MiB/s (${r.localPullSource}).`);
  if (r.link?.rateMbit) {
    out.push(
      `P6, P7: the same upstream storage served from a network namespace, across a veth pair limited to ${r.link.rateMbit} Mbit/s each way by tc tbf (no added latency), as a registry's link to Docker Hub; direct pulls across it ${(r.linkDirect?.runs ?? []).map((x) => x.toFixed(1)).join(', ')} MiB/s. The kernel's forwarding across the link counts as other processes' CPU there.`,
    );
  } else if (r.link?.skipped) out.push(`P6, P7 (across a network link) left out: ${r.link.skipped}.`);
  const cpu = (k, f) => ['wharf', 'distribution'].map((n) => `${n} ${r[k]?.[n]?.[f]?.toFixed?.(2) ?? 'n/a'}`).join(', ');
  out.push(`Proxy CPU s/GiB: cold ${cpu('pull', 'coldServerCpuPerGiB')}; warm ${cpu('pull', 'warmServerCpuPerGiB')}. 16 concurrent, proxy CPU s: ${cpu('concurrent16', 'serverCpuSeconds')}.`);
  const phases = Object.entries(proxy.results.rssByPhase ?? {});
  if (phases.length) {
    const at = (name) => phases.map(([phase, peaks]) => `${phase} ${peaks[name] === undefined ? 'n/a' : (peaks[name] / MiB).toFixed(1)}`).join(', ');
    out.push(`Peak proxy RSS by phase (MiB): wharf ${at('wharf')}; distribution ${at('distribution')}.`);
  }
  for (const [name, l] of Object.entries(proxy.logs)) {
    out.push(`${name} log: ${l.lines} lines, ${l.warnings} warnings, ${l.errors} errors${l.alive ? '' : ' — A PROCESS DIED'}.`);
    for (const line of l.firstLines.slice(0, 5)) out.push(`    ${line}`);
  }
  for (const f of proxy.failures) out.push(`FAILED: ${f.workload} on ${f.server}: ${f.error}`);
  return out.join('\n');
}

function renderNotes(results, logs, failures, machine, noise) {
  const out = [];
  out.push('');
  out.push(`Load average at start ${machine.loadAverageAtStart.join(' ')}, at end ${machine.loadAverageAtEnd.join(' ')}.`);
  out.push(noiseWarning(noise));
  out.push(`Push and pull figures are the median of ${settings.repeat} runs per server (every run is in results.json).`);
  const g = results.manifestGET ?? {};
  const h = results.manifestHEAD ?? {};
  const cpu = (r) => (r && r.clientCpuPercent !== undefined ? `server ${r.serverCpuPercent.toFixed(0)}% / client ${r.clientCpuPercent.toFixed(0)}%` : 'n/a');
  out.push(
    `The load client is this Node process (node:http keep-alive agents for pushes, bench/pull-client.mjs for pulls, undici for the manifest load) on the same ${machine.cpus}-core machine: it competes with the server for CPU, so request rates are a floor, not a ceiling.`,
  );
  out.push(`  CPU during manifest GET: wharf ${cpu(g.wharf)}; distribution ${cpu(g.distribution)} (100% = one core).`);
  out.push(`  CPU during manifest HEAD: wharf ${cpu(h.wharf)}; distribution ${cpu(h.distribution)}.`);
  const ceiling = results.clientCeiling?.GET;
  if (ceiling) {
    out.push(
      `  Client ceiling: the same client against a bare node:http server (no framework, same reply) got ${ceiling.rps.toFixed(0)} GET/s (${cpu(ceiling)})${results.clientCeiling.HEAD ? `, ${results.clientCeiling.HEAD.rps.toFixed(0)} HEAD/s` : ''}.`,
    );
    const d = g.distribution?.rps;
    if (d !== undefined && 10 * d > 0.8 * ceiling.rps) {
      out.push(`  10x distribution would be ${(10 * d).toFixed(0)} GET/s: at or beyond what this client can drive here, so that target cannot be shown on this machine.`);
    }
  }
  for (const streams of settings.pullStreams) {
    const p = results[`pull${streams}`] ?? {};
    const c = (r) => (r?.clientCpuPerGiB !== undefined ? r.clientCpuPerGiB.toFixed(2) : 'n/a');
    out.push(`  client CPU s/GiB during pull x${streams}: wharf ${c(p.wharf)}, distribution ${c(p.distribution)}.`);
  }
  const pushCpu = (key) => {
    const r = results[key] ?? {};
    const c = (x) => (x?.serverCpuPerGiB !== undefined ? x.serverCpuPerGiB.toFixed(2) : 'n/a');
    return `wharf ${c(r.wharf)}, distribution ${c(r.distribution)}`;
  };
  out.push(`Server CPU s/GiB during push: monolithic ${pushCpu('pushMonolithic')}; chunked ${pushCpu('pushChunked')}.`);
  const sb = results.smallBlobs ?? {};
  if (sb.wharf?.serverCpuMsPerBlob !== undefined && sb.distribution?.serverCpuMsPerBlob !== undefined) {
    out.push(`Server CPU per 4 KiB blob push: wharf ${sb.wharf.serverCpuMsPerBlob.toFixed(2)} ms, distribution ${sb.distribution.serverCpuMsPerBlob.toFixed(2)} ms.`);
  }
  const tl = results.tagList ?? {};
  if (tl.wharf?.serverCpuMsPerRequest !== undefined && tl.distribution?.serverCpuMsPerRequest !== undefined) {
    out.push(`Server CPU per tags/list: wharf ${tl.wharf.serverCpuMsPerRequest.toFixed(2)} ms, distribution ${tl.distribution.serverCpuMsPerRequest.toFixed(2)} ms.`);
  }
  const phases = results.rssByPhase ?? {};
  const peakPhase = (name) => {
    let best;
    for (const [phase, v] of Object.entries(phases)) if (v[name] !== undefined && (!best || v[name] > best[1])) best = [phase, v[name]];
    return best ? `${(best[1] / MiB).toFixed(1)} MiB during ${best[0]}` : 'n/a';
  };
  out.push(`Peak RSS: wharf ${peakPhase('wharf')}; distribution ${peakPhase('distribution')}.`);
  for (const [name, l] of Object.entries(logs)) {
    out.push(`${name} log: ${l.lines} lines, ${l.warnings} warnings, ${l.errors} errors${l.alive ? '' : ' — THE SERVER DIED'}.`);
    for (const line of l.firstLines.slice(0, 5)) out.push(`    ${line}`);
  }
  for (const r of ['manifestGET', 'manifestHEAD', 'smallBlobs']) {
    for (const [name, x] of Object.entries(results[r] ?? {})) {
      if (x.errors) out.push(`${r} on ${name}: ${x.errors} failed requests (first: ${x.firstError}).`);
      if (x.wrongBodies) out.push(`${r} on ${name}: ${x.wrongBodies} answers with a wrong body length.`);
    }
  }
  for (const f of failures) out.push(`FAILED: ${f.workload} on ${f.server}: ${f.error}`);
  return out.join('\n');
}

main()
  .catch((err) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanup());
