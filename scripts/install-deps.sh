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

# Node 24 from npm, for the tests of Wharf on it (packages/server/test/ops/node24), whatever Node
# runs the suite: into .cache/ at the repository's root, which git ignores.
NODE24_DIR="$(cd "$(dirname "$0")/.." && pwd)/.cache/node24"
if ! "$NODE24_DIR/node_modules/.bin/node" --version 2>/dev/null | grep -q '^v24\.'; then
  echo "install-deps: installing Node 24 from npm into $NODE24_DIR"
  mkdir -p "$NODE24_DIR"
  npm install --prefix "$NODE24_DIR" --no-save --no-audit --no-fund --silent node@24
fi

if [ "$(pnpm --version 2>/dev/null || true)" != "$PNPM_VERSION" ]; then
  echo "install-deps: installing pnpm@$PNPM_VERSION"
  npm install -g "pnpm@$PNPM_VERSION" --silent
fi
