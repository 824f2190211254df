#!/usr/bin/env bash
# Installs what a fresh machine with only Node and npm lacks for Wharf's test suite:
# pnpm and Node 24 (from npm) and the real clients the end-to-end tests drive (Debian packages).
# Idempotent: it installs only what is missing.
set -euo pipefail

PNPM_VERSION=10.34.9
# command → Debian package
declare -A TOOLS=(
  [skopeo]=skopeo
  [podman]=podman
  [ctr]=containerd
  [containerd]=containerd
  [docker-registry]=docker-registry
  [umoci]=umoci
  [jq]=jq
  [curl]=curl
  [openssl]=openssl
  [htpasswd]=apache2-utils
  [dockerd]=docker.io
  [docker]=docker.io
)

missing=()
for tool in "${!TOOLS[@]}"; do
  # /usr/sbin (dockerd) is not on every PATH
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${TOOLS[$tool]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run as root, or: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Node 24 from npm, for the tests of Wharf on it (scripts/test.sh, packages/server/test/ops/node24),
# whatever Node runs the suite: into .cache/ at the repository's root, which git and docker ignore.
# Pinned: 24.19 and later are the releases whose ObjectWrap better-sqlite3 12 trips on.
NODE24_VERSION=24.21.0
NODE24_DIR="$(cd "$(dirname "$0")/.." && pwd)/.cache/node24"
if [ "$("$NODE24_DIR/node_modules/.bin/node" --version 2>/dev/null || true)" != "v$NODE24_VERSION" ]; then
  echo "install-deps: installing Node $NODE24_VERSION from npm into $NODE24_DIR"
  mkdir -p "$NODE24_DIR"
  npm install --prefix "$NODE24_DIR" --no-save --no-audit --no-fund --silent "node@$NODE24_VERSION"
fi

if [ "$(pnpm --version 2>/dev/null || true)" != "$PNPM_VERSION" ]; then
  echo "install-deps: installing pnpm@$PNPM_VERSION"
  npm install -g "pnpm@$PNPM_VERSION" --silent
fi
