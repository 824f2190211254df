// Keeps, of the SQLite bindings installed, the one native file this Node loads, and removes the rest:
// the other binding (better-sqlite3 12 or 13, registry-core src/sqlite/driver.ts picks one by Node-API
// version), 13's prebuilt files for other platforms, and both packages' SQLite sources and build
// intermediates. About 45 MB of an image's 73 MB of node_modules. Each package keeps its JavaScript and
// package.json, so nothing that resolves it breaks; the one this Node does not load has no native file
// left. Run by scripts/image-tree.sh, with the Node the tree will run on, after the production install.
import { existsSync, readdirSync, realpathSync, rmSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = resolve(process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..'));
/** Directories of a better-sqlite3 package that neither its JavaScript nor its loaded binding needs. */
const SOURCES = ['deps', 'src'];

const driverModule = join(root, 'packages/registry-core/dist/sqlite/driver.js');
if (!existsSync(driverModule)) throw new Error(`${driverModule} is missing: build the workspace first`);
const { Database, SQLITE_DRIVER } = await import(pathToFileURL(driverModule).href);
const db = new Database(':memory:');
db.prepare('SELECT 1').get();
db.close();

/** Every better-sqlite3 package in the virtual store (its real path), whatever name it is installed under. */
function sqlitePackages() {
  const store = join(root, 'node_modules/.pnpm');
  return readdirSync(store)
    .filter((entry) => entry.startsWith('better-sqlite3@'))
    .map((entry) => join(store, entry, 'node_modules/better-sqlite3'))
    .filter((dir) => existsSync(join(dir, 'package.json')))
    .map((dir) => realpathSync(dir));
}

const packages = sqlitePackages();
// The shared objects this process has loaded, the binding among them (process.report works everywhere,
// unlike /proc/self/maps).
const loaded = process.report
  .getReport()
  .sharedObjects.filter((file) => file.endsWith('.node') && existsSync(file))
  .map((file) => realpathSync(file))
  .filter((file) => packages.some((dir) => file.startsWith(dir + sep)));
if (loaded.length !== 1) throw new Error(`expected one loaded SQLite binding, found ${loaded.length}: ${loaded.join(', ')}`);
const keep = loaded[0];

/** Removes every native file under `dir` but `keep`, and directories left with nothing in them. */
function pruneNative(dir) {
  if (!existsSync(dir)) return;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      pruneNative(path);
      if (readdirSync(path).length === 0) rmSync(path, { recursive: true });
    } else if (path !== keep) rmSync(path);
  }
}

for (const dir of packages) {
  for (const name of SOURCES) rmSync(join(dir, name), { recursive: true, force: true });
  // build/ (compiled here) holds the object files beside the binding; prebuilds/ every platform's.
  for (const name of ['build', 'prebuilds']) pruneNative(join(dir, name));
}

console.log(`prune-sqlite-bindings: kept ${relative(root, keep)} (${SQLITE_DRIVER}), for Node ${process.version}`);
