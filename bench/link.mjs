// A network link between the proxies and an upstream, as between a CI runner's registry and Docker Hub:
// a veth pair whose far end is in a network namespace of its own, where the upstream runs, each way
// limited to `rateMbit` by a token bucket (tc tbf). The shaping is the kernel's; it costs the processes
// on these two cores nothing. Needs root and iproute2 (`ip`, `tc`); openLink() says why when it cannot.
import { execFileSync } from 'node:child_process';

/** Runs `ip` or `tc`, throwing with its stderr. */
function run(command, args) {
  try {
    execFileSync(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    throw new Error(`${command} ${args.join(' ')}: ${err.stderr?.toString().trim() || err.message}`);
  }
}

/**
 * Sets the link up. Returns { link } or { reason } (not root, no iproute2, a kernel without veth or tbf).
 * link: { rateMbit, namespace, address (the upstream's end), command(bin, args) → [bin, args] run inside
 * the namespace, close() }.
 */
export function openLink(rateMbit) {
  if (process.getuid?.() !== 0) return { reason: 'not root (a network namespace needs it)' };
  // Names of at most 15 characters, unique to this run; the /30 is in 10.200.0.0/13, moved by pid.
  const id = process.pid % 100000;
  const namespace = `wharf-bench-${id}`;
  const hostEnd = `wbh${id}`;
  const farEnd = `wbu${id}`;
  const net = `10.${200 + (id % 50)}.${Math.floor(id / 50) % 250}`;
  const address = `${net}.2`;
  // Deleting the namespace deletes its veth end, and with it the pair and both qdiscs; the host's end
  // is deleted too in case the far one never got there.
  const remove = () => {
    for (const args of [['netns', 'del', namespace], ['link', 'del', hostEnd]]) {
      try {
        execFileSync('ip', args, { stdio: 'ignore' });
      } catch {
        /* already gone */
      }
    }
  };
  let made = false;
  const close = () => {
    if (!made) return;
    made = false;
    remove();
  };
  try {
    // A run killed with SIGKILL left its namespace behind; one of the same pid would fail on it.
    remove();
    run('ip', ['netns', 'add', namespace]);
    made = true;
    process.once('exit', close);
    run('ip', ['link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', farEnd]);
    run('ip', ['link', 'set', farEnd, 'netns', namespace]);
    run('ip', ['addr', 'add', `${net}.1/30`, 'dev', hostEnd]);
    run('ip', ['link', 'set', hostEnd, 'up']);
    const inside = (cmd, args) => run('ip', ['netns', 'exec', namespace, cmd, ...args]);
    inside('ip', ['addr', 'add', `${address}/30`, 'dev', farEnd]);
    inside('ip', ['link', 'set', farEnd, 'up']);
    inside('ip', ['link', 'set', 'lo', 'up']);
    // A 1 MB bucket: bursts of a few ms at most; 20 ms of queue before tbf drops, as a router would.
    const tbf = ['qdisc', 'add', 'dev', '', 'root', 'tbf', 'rate', `${rateMbit}mbit`, 'burst', '1mb', 'latency', '20ms'];
    run('tc', tbf.with(3, hostEnd));
    inside('tc', tbf.with(3, farEnd));
  } catch (err) {
    close();
    return { reason: err.message };
  }
  return {
    link: {
      rateMbit,
      namespace,
      address,
      command: (bin, args) => ['ip', ['netns', 'exec', namespace, bin, ...args]],
      close,
    },
  };
}
