#!/usr/bin/env bash
# Installs everything and runs every test: type checks, unit and contract tests, HTTP tests against a
# real server, and end-to-end tests with skopeo, podman and containerd's ctr.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
export TURBO_TELEMETRY_DISABLED=1
# pnpm and turbo want CI=true when there is no terminal (no prompts, no purge confirmation).
[ -t 0 ] || export CI="${CI:-true}"

pnpm install --frozen-lockfile
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
pnpm test 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Every suite again on Node 24 (install-deps.sh puts it in .cache/node24), the image's runtime, where
# Wharf loads the other SQLite binding (registry-core src/sqlite/driver.ts). About 4 minutes.
node24() { PATH="$PWD/.cache/node24/node_modules/.bin:$PATH" "$@"; }
echo
echo "== on Node $(node24 node --version): every suite again"
# image-tree.test.ts runs once, in the first pass: it builds the image's tree with Node 24 whatever runs it.
node24 pnpm --workspace-concurrency=1 --no-bail --filter @wharf/registry-core --filter @wharf/proxy --filter @wharf/server test --testPathIgnorePatterns /test/ops/image-tree 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
set -e

# One closing line for the whole run, summed over every package's jest summary
# ("Tests:       3 failed, 299 passed, 302 total").
read -r passed failed < <(awk '/Tests: / {
    for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) }
  } END { print p + 0, f + 0 }' "$log")
echo
echo "tests: $passed passed, $failed failed"
if [ "$status" -eq 0 ] && [ "$passed" -eq 0 ]; then
  echo "no test ran" >&2
  exit 1
fi
exit "$status"
