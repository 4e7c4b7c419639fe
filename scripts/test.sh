#!/usr/bin/env bash
# Runs every test of the project: formatting and lints, the Rust unit and
# integration tests (which start the real server binary), the loadtest
# smoke test, and the Python and TypeScript clients' tests against the real
# server (the TypeScript ones in Node and in headless Chromium).
# Installs what it needs from the package registries (cargo, pip, apt).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
if command -v rustup >/dev/null; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

# The Python TLS tests make their certificates with the openssl command.
if ! command -v openssl >/dev/null; then
  step "apt-get install openssl"
  sudo_if_needed=""
  [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
  $sudo_if_needed apt-get update -qq
  $sudo_if_needed apt-get install -y -qq openssl >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo check of the fuzz targets (their own workspace)"
cargo check --manifest-path fuzz/Cargo.toml --bins

step "cargo build (server binary for the loadtest and Python tests)"
cargo build --workspace --bins

step "cargo test"
cargo test --workspace

# Its checks (every session ended, every probe answered right) on a small
# N in a debug build; its latency and memory figures mean nothing here.
step "benches/end_all, quick (END_ALL_SESSIONS=20000)"
END_ALL_SESSIONS=20000 cargo test --bench end_all

step "python client tests"
venv=target/python-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q ./clients/python pytest pytest-asyncio prometheus_client
NEMESISDB_BIN="$PWD/target/debug/nemesisdb" "$venv/bin/python" -m pytest -q clients/python/tests

step "typescript client tests"
NEMESISDB_BIN="$PWD/target/debug/nemesisdb" scripts/test-typescript.sh
