#!/usr/bin/env bash
# Is loadtest efficient enough not to limit a measurement? Runs the same work
# through redis-benchmark and loadtest: HGET of random keys among 10000
# hashes, 50 connections, at pipeline 1 and 16, with Redis on one core and the
# client on another (`taskset`). Pairs alternate so machine noise hits both;
# prints each pair, the client CPU per million operations, and the median
# ratio loadtest/redis-benchmark (the target is >= 0.9).
#
# Usage: loadtest/efficiency.sh [--pairs N] [--server-cpu C] [--client-cpu C]
set -euo pipefail

PAIRS=5
SERVER_CPU=0
CLIENT_CPU=1
while [ $# -gt 0 ]; do
    case "$1" in
        --pairs) PAIRS="$2"; shift 2 ;;
        --server-cpu) SERVER_CPU="$2"; shift 2 ;;
        --client-cpu) CLIENT_CPU="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "efficiency: unknown option $1" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build --release -q -p loadtest
LT="${CARGO_TARGET_DIR:-target}/release/loadtest"

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
taskset -c "$SERVER_CPU" redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
    > /dev/null 2>&1 &
REDIS_PID=$!
trap 'kill $REDIS_PID 2>/dev/null || true; wait $REDIS_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    redis-cli -p "$PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done
# The keys redis-benchmark's -r 10000 picks (s:000000001234); loadtest makes its own.
python3 -c '
for i in range(10000):
    print(f"HSET s:{i:012d} user abcdefghijklmnop cart abcdefghijklmnop")' \
    | redis-cli -p "$PORT" > /dev/null

for P in 1 16; do
    if [ "$P" = 1 ]; then N=250000; else N=2500000; fi
    ratios=""
    for i in $(seq "$PAIRS"); do
        rbout="$( { /usr/bin/time -f "CPU %U %S" taskset -c "$CLIENT_CPU" redis-benchmark -p "$PORT" \
            -c 50 -n "$N" -P "$P" -r 10000 -q hget s:__rand_int__ user 2>&1; } | tr '\r' '\n')"
        rb="$(echo "$rbout" | grep 'requests per second' | tail -1 | sed 's/.*user: //' | awk '{print $1}')"
        rbcpu="$(echo "$rbout" | grep '^CPU' | awk -v n="$N" '{printf "%.2f", ($2+$3)/n*1e6}')"
        ltout="$( { /usr/bin/time -f "CPU %U %S" taskset -c "$CLIENT_CPU" "$LT" --url "redis://127.0.0.1:$PORT" \
            --workload get --connections 50 --pipeline "$P" --threads 1 --requests "$N" --json; } 2>&1)"
        lt="$(echo "$ltout" | grep '^{' | python3 -c 'import json,sys; print(json.load(sys.stdin)["ops_per_sec"])')"
        ltcpu="$(echo "$ltout" | grep '^CPU' | awk -v n="$N" '{printf "%.2f", ($2+$3)/n*1e6}')"
        r="$(python3 -c "print(round($lt / $rb, 3))")"
        ratios="$ratios,$r"
        echo "pipeline $P pair $i: redis-benchmark $rb ops/s (${rbcpu} s CPU/M ops)," \
             "loadtest $lt ops/s (${ltcpu} s CPU/M ops, set-up included), ratio $r"
    done
    echo "pipeline $P: median ratio loadtest/redis-benchmark $(python3 -c "import statistics; print(round(statistics.median([${ratios#,}]), 3))")"
done
