#!/usr/bin/env bash
# Turns a copy of the repository into what the image runs (the Dockerfile's build stage runs this):
# the workspace built, production dependencies only, the SQLite binding this Node loads and no other,
# no sources or tests. Run it with the Node the tree will run on, in a copy: it changes the tree in place.
# packages/server/test/ops/image-tree.test.ts runs it on Node 24, the image's, and starts Wharf from it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CI=true TURBO_TELEMETRY_DISABLED=1

# No install scripts: the root postinstall would build with turbo, which the build below does without
# it, and better-sqlite3 12 would compile from source, which a Node with Node-API 10 never loads
# (packages/registry-core/src/sqlite/driver.ts). An older Node loads 12: it is built for that one.
pnpm install --frozen-lockfile --ignore-scripts
if [ "$(node -p 'Number(process.versions.napi) >= 10')" != true ]; then
  pnpm rebuild --recursive better-sqlite3
fi
pnpm --recursive --workspace-concurrency=1 run build

# Production dependencies only. pnpm leaves the packages it unlinks in node_modules/.pnpm for
# modules-cache-max-age (a week by default): typescript, turbo, swc and jest stayed in the image,
# 134 of its 207 MB of node_modules.
pnpm install --frozen-lockfile --prod --ignore-scripts --config.modules-cache-max-age=0
node scripts/prune-sqlite-bindings.mjs

rm -rf packages/*/src packages/*/test bench .turbo
