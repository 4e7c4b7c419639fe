#!/usr/bin/env bash
# Tests the TypeScript client (clients/typescript): installs Node, npm and
# Chromium from Debian's packages when missing, then `npm ci`, the strict
# type check and build (`npm run build`), and both suites (`npm test`: the
# Node suite against the real server binary, and the browser suite in
# headless Chromium). Idempotent.
#
# The server binary is NEMESISDB_BIN, default target/debug/nemesisdb (built
# by scripts/test.sh before this runs; built here when absent).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

sudo_if_needed=""
[ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[ -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  $sudo_if_needed apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq "${missing[@]}" >/dev/null
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
