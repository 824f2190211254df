// A blob GET that costs the client as little as curl does: one connection per pull, every socket read
// into one reused buffer (net's `onread`), the body counted and, if asked, hashed from that buffer.
//
// node:http allocates a fresh buffer per socket read; on a virtual machine every fresh page is a costly
// fault, so a node:http client took 0.4-1.5 s of CPU per GiB pulled, varying from run to run, from the
// 2 cores the server under test runs on. A reused buffer takes that cost away and its variance with it.
//
// Run as a child process (`fork`), it is one client of a concurrent pull: it connects, says 'ready',
// waits for 'go', pulls, sends the result and exits. Separate processes are what concurrent CI jobs are,
// and they let the clients' hashing use both cores instead of one event loop.
import { createHash } from 'node:crypto';
import { connect } from 'node:net';

const HEADER_LIMIT = 64 * 1024;

/**
 * GET `path` from host:port. Resolves { status, headers, bytes, digest? } when the body (Content-Length)
 * is complete; rejects on a connection error or a body cut short. `ready` (optional) is awaited after
 * the connection is up and before the request is sent.
 */
export function getBlob({ host, port, path, headers = {}, hash = false, bufferSize = 256 * 1024, ready }) {
  return new Promise((resolve, reject) => {
    const hasher = hash ? createHash('sha256') : undefined;
    let head = Buffer.alloc(0);
    let response; // { status, headers, length }
    let bytes = 0;
    let settled = false;
    const finish = (err, value) => {
      if (settled) return;
      settled = true;
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const body = (chunk) => {
      bytes += chunk.length;
      hasher?.update(chunk);
      if (bytes >= response.length) {
        const digest = hasher ? `sha256:${hasher.digest('hex')}` : undefined;
        finish(undefined, { status: response.status, headers: response.headers, bytes, digest });
      }
    };
    const onRead = (nread, buffer) => {
      if (settled) return false;
      const chunk = buffer.subarray(0, nread);
      if (response) return void body(chunk);
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end === -1) {
        if (head.length > HEADER_LIMIT) finish(new Error(`GET ${path}: response headers over ${HEADER_LIMIT} bytes`));
        return;
      }
      response = parseHead(head.subarray(0, end).toString('latin1'));
      if (response.chunked) return void finish(new Error(`GET ${path}: chunked responses are not supported by the bench client`));
      const rest = head.subarray(end + 4);
      head = undefined;
      if (response.length === 0 || response.status === 304) finish(undefined, { status: response.status, headers: response.headers, bytes: 0 });
      else if (rest.length > 0) body(rest);
    };
    const socket = connect({ host, port, onread: { buffer: Buffer.allocUnsafeSlow(bufferSize), callback: onRead } });
    socket.setNoDelay(true);
    socket.once('error', (err) => finish(err));
    socket.once('close', () => finish(new Error(`GET ${path}: connection closed after ${bytes} body bytes${response ? ` of ${response.length}` : ' (no response)'}`)));
    socket.once('connect', async () => {
      try {
        if (ready) await ready();
      } catch (err) {
        return finish(err);
      }
      const lines = [`GET ${path} HTTP/1.1`, `Host: ${host}:${port}`, 'Connection: close', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
    });
  });
}

function parseHead(text) {
  const [statusLine, ...lines] = text.split('\r\n');
  const status = Number(statusLine.split(' ')[1]);
  const headers = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const chunked = /chunked/i.test(headers['transfer-encoding'] ?? '');
  const length = headers['content-length'] === undefined ? Infinity : Number(headers['content-length']);
  return { status, headers, length, chunked };
}

// As a forked child: argv = host port path; 'ready' once connected, pull on 'go', then send the result.
if (process.send && process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop())) {
  const [host, port, path] = process.argv.slice(2);
  const go = new Promise((resolve) => process.once('message', (m) => m === 'go' && resolve()));
  const cpu0 = process.cpuUsage();
  getBlob({ host, port: Number(port), path, hash: true, ready: () => (process.send('ready'), go) })
    .then((r) => ({ ...r, headers: undefined }), (err) => ({ error: err.message }))
    .then((result) => {
      const cpu = process.cpuUsage(cpu0);
      process.send({ ...result, cpuSeconds: (cpu.user + cpu.system) / 1e6 }, () => process.exit(0));
    });
}
