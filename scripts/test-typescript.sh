#!/usr/bin/env bash
# Tests the TypeScript client (clients/typescript): installs Node (when
# missing or older than 18), npm and Chromium from Debian's packages (as root,
# or through sudo when there is one; otherwise it says what to install), then `npm ci`, the strict
# type check and build (`npm run build`), and both suites (`npm test`: the
# Node suite against the real server binary, and the browser suite in
# headless Chromium). Idempotent.
#
# The server binary is NEMESISDB_BIN, default target/debug/nemesisdb (built
# by scripts/test.sh before this runs; built here when absent).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    as_root=(sudo)
  else
    as_root=(false)
  fi
fi
apt_install() {
  if [ "${as_root[*]}" = false ]; then
    echo "missing: $* (not root and no sudo: install them, e.g. apt-get install -y $*, then run this again)" >&2
    exit 1
  fi
  step "apt-get install $*"
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "$@" >/dev/null
}
# True when `node` is present and at least version 18.
node_ok() {
  local major
  major=$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/')
  [ -n "$major" ] && [ "$major" -ge 18 ] 2>/dev/null
}

if [ -n "${CHROMIUM_BIN:-}" ] && [ ! -x "$CHROMIUM_BIN" ]; then
  echo "CHROMIUM_BIN=$CHROMIUM_BIN: no executable there (unset it to use /usr/bin/chromium)" >&2
  exit 1
fi
missing=()
node_ok || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[ -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] || missing+=(chromium)
[ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
if ! node_ok; then
  echo "node $(node --version 2>/dev/null || echo missing) is older than 18, even after installing Debian's nodejs: install Node 18+" >&2
  exit 1
fi

export NEMESISDB_BIN="${NEMESISDB_BIN:-$PWD/target/debug/nemesisdb}"
if [ ! -x "$NEMESISDB_BIN" ]; then
  step "cargo build --bin nemesisdb"
  cargo build --bin nemesisdb
fi

cd clients/typescript
step "typescript client: npm ci"
npm ci --no-audit --no-fund

step "typescript client: tsc --strict and the browser bundle (npm run build)"
npm run build

step "typescript client: node and browser suites (npm test)"
npm test
