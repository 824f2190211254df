// The tests' environment: jest's node environment, and a promise rejection nobody handled fails the
// test it happened in. In a test, process.on('unhandledRejection') listens to a copy of process that
// node never emits on, and jest itself lets such rejections pass; in a server they stop the process
// (node's default). So every in-process server and unit test checks it here, with the real process.
import { TestEnvironment } from 'jest-environment-node';

export default class StrictNodeEnvironment extends TestEnvironment {
  /** Rejections seen since the last test ended. */
  unhandled = [];
  record = (reason) => void this.unhandled.push(reason);

  async setup() {
    await super.setup();
    // Node 21 and later have a global navigator, which jest copies in. node-forge's big-number code
    // (jsbn) takes any navigator without an appName for a slow old browser and picks its slowest
    // multiplication: under jest on Node 24, each RSA signature of the TLS tests took a second.
    // Wharf never reads navigator.
    delete this.global.navigator;
    process.on('unhandledRejection', this.record);
  }

  async handleTestEvent(event) {
    if (event.name !== 'test_done' || this.unhandled.length === 0) return;
    for (const reason of this.unhandled.splice(0)) event.test.errors.push(unhandledError(reason));
  }

  async teardown() {
    process.off('unhandledRejection', this.record);
    await super.teardown();
    // One after the last test ended (a timer that fired during teardown): the file fails.
    if (this.unhandled.length > 0) throw unhandledError(this.unhandled[0]);
  }
}

function unhandledError(reason) {
  const error = new Error(`a promise rejection went unhandled (it would stop a server): ${reason instanceof Error ? reason.stack : String(reason)}`);
  error.stack = error.message;
  return error;
}
