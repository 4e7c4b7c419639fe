#!/usr/bin/env bash
# Runs every loadtest workload against nemesisdb and Redis with identical
# flags, and prints (and writes) a markdown table: ops/s, p50, p99, the ratio
# ours/Redis, and server CPU time per million operations; then measures bytes
# per session after populating fresh servers with --populate sessions.
# With --events it measures session events instead (issue #16, below).
# With --tls the same matrix runs over TLS on both servers (issue #19, below).
#
# Cores are split so the generator never competes with the server it
# measures: by default both servers get core 0 (ours as --shards 1
# --pin-cores 0, Redis under taskset) and `loadtest --threads 1` runs under
# taskset on core 1. The servers take turns, so they never run at once.
#
# Usage: scripts/compare-redis.sh [--server-cpus LIST] [--client-cpus LIST]
#          [--duration S] [--connections N] [--sessions N] [--populate N]
#          [--workloads "get set ..."] [--pipelines "1 16"] [--repeat N] [--out FILE]
#          [--tls] [--shards "1 2"] [--locality "local remote"]
#        scripts/compare-redis.sh --events [--event-sessions N] [--event-wait S]
#          [--server-cpus LIST] [--client-cpus LIST] [--out FILE]
#   --server-cpus LIST  cores for the servers (default 0); ours runs one shard
#                       per core listed, Redis is pinned to the same cores
#   --client-cpus LIST  cores for loadtest (default 1); --threads = their count
#   --duration S        seconds per run (default 5)
#   --connections N     connections per run (default 50)
#   --sessions N        sessions behind get/set/mixed/sliding/touch/incr/cas
#                       (default 10000)
#   --populate N        sessions for the memory measurement (default 1000000)
#   --repeat N          run the whole matrix N times (default 1); the table
#                       shows each column's median, and the spread of the
#                       CPU ratio over the N runs
#   --out FILE          where the table goes (default target/compare-redis.md)
#   --workloads LIST    workloads to compare, space- or comma-separated
#                       (default: all but populate, which the memory
#                       measurement runs)
#   --pipelines LIST    the --pipeline values each workload runs at (default
#                       "1 16")
#   --tls               the matrix and the memory measurement over TLS: a
#                       throwaway self-signed certificate (ECDSA P-256, made
#                       by openssl in the temporary directory, never kept)
#                       serves both servers: ours with --tls-cert/--tls-key,
#                       Redis with --port 0 --tls-port P --tls-cert-file
#                       --tls-key-file --tls-ca-cert-file --tls-auth-clients
#                       no; loadtest connects to wss:// and rediss:// with
#                       --insecure (rustls with ring, the same client for
#                       both, so both negotiate the same protocol and cipher
#                       suite, shown under the table). A third server, ours
#                       without TLS, runs each row too, and a second table
#                       sets ours plain beside ours over TLS (ops/s, server
#                       CPU per op, p99): what TLS costs us.
#                       --out defaults to target/compare-redis-tls.md
#   --shards LIST       ours runs once per shard count listed (e.g. "1 2"),
#                       each beside the same Redis run; a table column gives
#                       the count. The shards share the --server-cpus cores:
#                       shard i is pinned to the (i mod n)-th core listed, so
#                       with the default core 0 every shard shares core 0 and
#                       CPU per operation is the per-core cost of N shards.
#                       Default: one shard per --server-cpus core.
#   --locality LIST     loadtest --locality for ours (any, local, remote;
#                       default "any"), one row each, on get/set/mixed/
#                       sliding/touch/incr/cas (the others create their own
#                       sessions: run once, as any); remote skips one shard.
#                       local vs remote shows what a forwarded request costs
#   --events            instead of the above, issue #16's measurement (loadtest
#                       --workload expiry-events on each server in turn):
#                       --event-sessions sessions expire within one second, a
#                       subscriber reads every expired event as fast as it
#                       can (ours: SH_SUBSCRIBE; Redis: keyspace notifications,
#                       PSUBSCRIBE __keyevent@0__:expired) and a second client
#                       sends SH_GET / HGET one at a time meanwhile. Table: lag
#                       from deadline to arrival (p50, p99, max), events
#                       received, the second client's p99 and max. Ours runs
#                       with --shards 2 (pinned when --server-cpus lists 2 cores;
#                       default in this mode "0,1", so on a 2-core machine the
#                       client shares core 1 with a shard). --out defaults to
#                       target/compare-redis-events.md
#   --event-sessions N  sessions expiring in the same second (default 100000)
#   --event-wait S      seconds to wait for the events after the last deadline
#                       (default 120; Redis expires lazily and by sampling)
#   --persist           instead of the above, issue #17's measurements, one
#                       table each (--out defaults to target/compare-redis-persist.md):
#                       save latency: --persist-sessions sessions (keys user
#                       and cart) on each server, an open-loop `loadtest
#                       --workload get --rate --persist-rate --connections 20`,
#                       and --save-at 3 s into it a snapshot (ours: SH_SAVE;
#                       Redis: BGSAVE, polled to its end); p99 and max of the
#                       operations in flight during the save, and of the
#                       others (no save). Ours runs one shard per
#                       --server-cpus core, Redis under taskset on them.
#                       Then the change log's cost: set and mixed at each
#                       --pipelines value with ours at --log-fsync off,
#                       everysec, always and Redis at appendonly no,
#                       appendfsync everysec, always (snapshots off on both):
#                       ops/s, server CPU per op, p99, and the issue's target
#                       ratios; --repeat N repeats that matrix (medians).
#   --persist-sessions N  sessions behind the save (default 1000000)
#   --persist-rate R    the open loop's total rate, ops/s (default 50000)
set -euo pipefail

SERVER_CPUS=0
CLIENT_CPUS=1
DURATION=5
CONNECTIONS=50
SESSIONS=10000
POPULATE=1000000
WORKLOADS="get set mixed sliding touch incr cas lifecycle lifecycle-classic logout-all expiry"
PIPELINES="1 16"
REPEAT=1
OUT=""
EVENTS=0
EVENT_SESSIONS=100000
EVENT_WAIT=120
SERVER_CPUS_GIVEN=0
PERSIST=0
PERSIST_SESSIONS=1000000
PERSIST_RATE=50000
TLS=0
SHARD_LIST=""
LOCALITIES="any"

while [ $# -gt 0 ]; do
    case "$1" in
        --server-cpus) SERVER_CPUS="$2"; SERVER_CPUS_GIVEN=1; shift 2 ;;
        --client-cpus) CLIENT_CPUS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --sessions) SESSIONS="$2"; shift 2 ;;
        --populate) POPULATE="$2"; shift 2 ;;
        --workloads) WORKLOADS="${2//,/ }"; shift 2 ;;
        --pipelines) PIPELINES="${2//,/ }"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --events) EVENTS=1; shift ;;
        --event-sessions) EVENT_SESSIONS="$2"; shift 2 ;;
        --event-wait) EVENT_WAIT="$2"; shift 2 ;;
        --persist) PERSIST=1; shift ;;
        --persist-sessions) PERSIST_SESSIONS="$2"; shift 2 ;;
        --persist-rate) PERSIST_RATE="$2"; shift 2 ;;
        --tls) TLS=1; shift ;;
        --shards) SHARD_LIST="${2//,/ }"; shift 2 ;;
        --locality) LOCALITIES="${2//,/ }"; shift 2 ;;
        -h|--help) sed -n '2,96p' "$0"; exit 0 ;;
        *) echo "compare-redis: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "$EVENTS" = 1 ]; then
    OUT="${OUT:-$TARGET_DIR/compare-redis-events.md}"
    [ "$SERVER_CPUS_GIVEN" = 1 ] || SERVER_CPUS="0,1"
elif [ "$PERSIST" = 1 ]; then
    OUT="${OUT:-$TARGET_DIR/compare-redis-persist.md}"
elif [ "$TLS" = 1 ]; then
    OUT="${OUT:-$TARGET_DIR/compare-redis-tls.md}"
else
    OUT="${OUT:-$TARGET_DIR/compare-redis.md}"
fi
if [ "$TLS" = 1 ] && { [ "$EVENTS" = 1 ] || [ "$PERSIST" = 1 ]; }; then
    echo "compare-redis: --tls runs the comparison matrix; it does not combine with" \
         "--events or --persist" >&2
    exit 2
fi
if { [ -n "$SHARD_LIST" ] || [ "$LOCALITIES" != any ]; } \
    && { [ "$TLS" = 1 ] || [ "$EVENTS" = 1 ] || [ "$PERSIST" = 1 ]; }; then
    echo "compare-redis: --shards and --locality are dimensions of the plain comparison" \
         "matrix; they do not combine with --tls, --events or --persist" >&2
    exit 2
fi
for loc in $LOCALITIES; do
    case "$loc" in
        any|local|remote) ;;
        *) echo "compare-redis: --locality takes any, local or remote, not $loc" >&2; exit 2 ;;
    esac
done
WORK="$(mktemp -d)"

# "0,2-3" -> 3
count_cpus() {
    python3 - "$1" <<'EOF'
import sys
n = 0
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    n += (int(b) - int(a) + 1) if b else 1
print(n)
EOF
}
SHARDS="$(count_cpus "$SERVER_CPUS")"
CLIENT_THREADS="$(count_cpus "$CLIENT_CPUS")"
PIN=(--pin-cores "$SERVER_CPUS")
# Shard i on the (i mod n)-th core of $SERVER_CPUS: "0" 2 -> "0,0".
pin_list() {
    python3 - "$1" "$2" <<'EOF'
import sys
cores = []
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    cores += list(range(int(a), int(b) + 1)) if b else [int(a)]
print(",".join(str(cores[i % len(cores)]) for i in range(int(sys.argv[2]))))
EOF
}
SHARD_COUNTS="${SHARD_LIST:-$SHARDS}"
if [ -n "$SHARD_LIST" ]; then
    SHARDS="${SHARD_LIST%% *}"
    PIN=(--pin-cores "$(pin_list "$SERVER_CPUS" "$SHARDS")")
fi
if [ "$EVENTS" = 1 ]; then
    # The issue's setting is two shards; pinned only when two cores are
    # listed for them.
    [ "$SHARDS" -ge 2 ] || PIN=()
    SHARDS=2
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "compare-redis: installing redis-server" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

# --tls: one throwaway certificate for both servers, in $WORK (removed on
# exit). ECDSA P-256: both rustls (ring) and OpenSSL serve it, and the key
# type only costs in the handshake, which is outside every timed run.
# CA:FALSE so that rustls's webpki would also take it with --tls-ca.
TLS_DIR="$WORK/tls"
LT_TLS=()
if [ "$TLS" = 1 ]; then
    if ! command -v openssl >/dev/null 2>&1; then
        echo "compare-redis: installing openssl" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
    fi
    mkdir -p "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -addext "basicConstraints=critical,CA:FALSE" \
        -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>/dev/null
    LT_TLS=(--insecure)
fi

echo "compare-redis: building (release)" >&2
cargo build --release -q -p nemesisdb -p loadtest
# NEMESISDB_BIN measures another build (e.g. an earlier commit) with this script.
NDB="${NEMESISDB_BIN:-$TARGET_DIR/release/nemesisdb}"
LOADTEST="$TARGET_DIR/release/loadtest"

OURS_PID=""
REDIS_PID=""
OURS_PORT=""
REDIS_PORT=""
# --tls: ours without TLS, beside the two TLS servers.
PLAIN_PID=""
PLAIN_PORT=""
# --shards: ours with each further shard count, by count.
declare -A SHARD_PID SHARD_URL
EXTRA_PIDS=""
# What run() records beside each result (--shards, --locality).
RUN_SHARDS=""
RUN_LOCALITY=""

stop_servers() {
    for pid in $OURS_PID $REDIS_PID $PLAIN_PID $EXTRA_PIDS; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    OURS_PID=""
    REDIS_PID=""
    PLAIN_PID=""
    EXTRA_PIDS=""
}
trap 'stop_servers; rm -rf "$WORK"' EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Prints the port from our server's startup line in LOG (default
# $WORK/ours.log), once it is there; fails (saying why) if it never comes.
ours_port() {
    local log="${1:-$WORK/ours.log}" port=""
    for _ in $(seq 100); do
        port="$(grep -o 'listening on 127.0.0.1:[0-9]*' "$log" | head -1 | cut -d: -f2 || true)"
        [ -n "$port" ] && { echo "$port"; return 0; }
        sleep 0.1
    done
    echo "compare-redis: nemesisdb did not start:" >&2
    cat "$log" >&2
    return 1
}

# Waits (up to 10 s) until something accepts on 127.0.0.1:PORT.
wait_for_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
}

# Starts ours and Redis (and with --tls, ours without TLS too); sets
# OURS_URL and REDIS_URL.
start_servers() {
    local ours_tls=() redis_listen=()
    if [ "$TLS" = 1 ]; then
        ours_tls=(--tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem")
    fi
    : > "$WORK/ours.log"
    taskset -c "$SERVER_CPUS" "$NDB" --port 0 --shards "$SHARDS" "${PIN[@]}" "${ours_tls[@]}" \
        > "$WORK/ours.log" 2>&1 &
    OURS_PID=$!
    OURS_PORT="$(ours_port)" || exit 1

    REDIS_PORT="$(free_port)"
    redis_listen=(--port "$REDIS_PORT")
    if [ "$TLS" = 1 ]; then
        redis_listen=(--port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$TLS_DIR/cert.pem"
            --tls-key-file "$TLS_DIR/key.pem" --tls-ca-cert-file "$TLS_DIR/cert.pem"
            --tls-auth-clients no)
    fi
    taskset -c "$SERVER_CPUS" redis-server "${redis_listen[@]}" --bind 127.0.0.1 \
        --save '' --appendonly no --daemonize no > "$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    wait_for_port "$REDIS_PORT"

    if [ "$TLS" = 1 ]; then
        OURS_URL="wss://127.0.0.1:$OURS_PORT/"
        REDIS_URL="rediss://127.0.0.1:$REDIS_PORT"
        : > "$WORK/plain.log"
        taskset -c "$SERVER_CPUS" "$NDB" --port 0 --shards "$SHARDS" "${PIN[@]}" \
            > "$WORK/plain.log" 2>&1 &
        PLAIN_PID=$!
        PLAIN_PORT="$(ours_port "$WORK/plain.log")" || exit 1
    else
        OURS_URL="ws://127.0.0.1:$OURS_PORT/"
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
    fi
}

# Ours with every shard count of $SHARD_COUNTS, on the same cores (the first
# count is start_servers' server); idle ones sleep while another is measured.
start_sharded() {
    local n log
    for n in $SHARD_COUNTS; do
        [ -z "${SHARD_PID[$n]:-}" ] || continue
        if [ "$n" = "$SHARDS" ]; then
            SHARD_PID[$n]="$OURS_PID"
            SHARD_URL[$n]="$OURS_URL"
            continue
        fi
        log="$WORK/ours-$n.log"
        : > "$log"
        taskset -c "$SERVER_CPUS" "$NDB" --port 0 --shards "$n" \
            --pin-cores "$(pin_list "$SERVER_CPUS" "$n")" > "$log" 2>&1 &
        SHARD_PID[$n]=$!
        EXTRA_PIDS="$EXTRA_PIDS $!"
        SHARD_URL[$n]="ws://127.0.0.1:$(ours_port "$log")/" || exit 1
    done
}

rss_kib() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# run NAME URL PID WORKLOAD PIPELINE [LOADTEST FLAGS...] -> appends one
# JSON line to results. The server's CPU time is read by loadtest itself
# around the timed run (--server-pid), so session set-up and teardown are
# not counted.
run() {
    local name="$1" url="$2" pid="$3" workload="$4" pipeline="$5"
    shift 5
    local json
    rm -rf "$WORK/report"
    json="$(taskset -c "$CLIENT_CPUS" "$LOADTEST" --url "$url" --workload "$workload" \
        --pipeline "$pipeline" --connections "$CONNECTIONS" --duration "$DURATION" \
        --sessions "$SESSIONS" --threads "$CLIENT_THREADS" --server-pid "$pid" \
        --out "$WORK/report" --json "$@" | tail -1 || true)"
    [ -n "$json" ] || json='{}'
    python3 - "$name" "$workload" "$pipeline" "$WORK/report/report.json" "$json" \
        "$RUN_SHARDS" "$RUN_LOCALITY" >> "$WORK/results.jsonl" <<'EOF'
import json, sys
name, workload, pipeline, report, raw, shards, locality = sys.argv[1:]
try:
    rep = json.load(open(report))
except (OSError, ValueError):
    rep = {}
print(json.dumps({"server": name, "workload": workload, "pipeline": int(pipeline),
                  "cpu_s": rep.get("server_cpu_s"), "client_cpu_s": rep.get("client_cpu_s"),
                  "retries": rep.get("retries"), "tls": rep.get("tls"), "r": json.loads(raw),
                  "shards": int(shards) if shards else None, "locality": locality or None}))
EOF
    echo "  $name $workload pipeline $pipeline: $json" >&2
}

if [ "$PERSIST" = 1 ]; then
    # Issue #17. Each measurement is a function that starts its own servers
    # (persistence on) and writes one markdown section; the sections are
    # joined into $OUT in order. More tables go after save_latency_table.
    PERSIST_DIR="$WORK/persist"
    # start_persist_servers [OUR FLAGS...] -> OURS_PID/PORT, REDIS_PID/PORT
    start_persist_servers() {
        rm -rf "$PERSIST_DIR"
        mkdir -p "$PERSIST_DIR/ours" "$PERSIST_DIR/redis"
        taskset -c "$SERVER_CPUS" "$NDB" --port 0 --shards "$SHARDS" "${PIN[@]}" \
            --persist-path "$PERSIST_DIR/ours" "$@" > "$WORK/ours.log" 2>&1 &
        OURS_PID=$!
        OURS_PORT="$(ours_port)" || exit 1
        REDIS_PORT="$(free_port)"
        taskset -c "$SERVER_CPUS" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
            --dir "$PERSIST_DIR/redis" --save '' --appendonly no --daemonize no \
            > "$WORK/redis.log" 2>&1 &
        REDIS_PID=$!
        wait_for_port "$REDIS_PORT"
    }

    # Save latency: a snapshot of --persist-sessions sessions under an open
    # loop of gets, on each server in turn.
    save_latency_table() {
        local name url pid
        # Snapshots only, on both sides (Redis: no AOF, no save points).
        start_persist_servers --log-fsync off --snapshot-every 0
        for name in ours redis; do
            if [ "$name" = ours ]; then
                url="ws://127.0.0.1:$OURS_PORT/"; pid="$OURS_PID"
            else
                url="redis://127.0.0.1:$REDIS_PORT"; pid="$REDIS_PID"
            fi
            rm -rf "$WORK/save-$name"
            taskset -c "$CLIENT_CPUS" "$LOADTEST" --url "$url" --workload get \
                --rate "$PERSIST_RATE" --connections 20 --threads "$CLIENT_THREADS" \
                --sessions "$PERSIST_SESSIONS" --duration 8 --save-at 3 --server-pid "$pid" \
                --out "$WORK/save-$name" --json > /dev/null 2> "$WORK/save-$name.err" || true
            echo "  $name: $(grep 'loadtest: save:' "$WORK/save-$name.err" || tail -3 "$WORK/save-$name.err")" >&2
        done
        stop_servers
        python3 - "$WORK/save-ours/report.json" "$WORK/save-redis/report.json" \
            "$PERSIST_SESSIONS" "$PERSIST_RATE" "$SHARDS" "$SERVER_CPUS" "$CLIENT_CPUS" \
            "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
            "$(redis-server --version | awk '{print $3}')" > "$WORK/persist-save.md" <<'EOF'
import json, sys
ours_path, redis_path, n, rate, shards, scpus, ccpus, rev, rver = sys.argv[1:]

def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return {}

def ms(x):
    return "-" if x is None else f"{x / 1000:,.2f}"

cols = []
for rep in (load(ours_path), load(redis_path)):
    sv, s = rep.get("save", {}), rep.get("summary", {})
    during, outside = sv.get("during_us", {}), sv.get("outside_us", {})
    cols.append([
        f"{sv['took_ms']:,.0f} ({sv['status']})" if sv else "-",
        f"{sv['during_ops']:,}" if sv else "-",
        ms(during.get("p50")), ms(during.get("p99")), ms(during.get("max")),
        ms(outside.get("p99")), ms(outside.get("max")),
        f"{s['ops_per_sec']:,.0f}" if s else "-",
        f"{s.get('errors', '-')}",
        f"{rep['server_cpu_s']:.2f}" if rep.get("server_cpu_s") is not None else "-",
    ])
rows = [
    "save took, ms",
    "gets in flight during the save",
    "during the save: p50, ms",
    "during the save: p99, ms",
    "during the save: max, ms",
    "no save (the rest of the run): p99, ms",
    "no save (the rest of the run): max, ms",
    "gets/s over the run",
    "errors",
    "server CPU s over the run",
]
plural = "s" if shards != "1" else ""
print("### Save latency")
print()
print(f"nemesisdb ({rev}, {shards} shard{plural} on cpus {scpus}) vs Redis "
      f"{rver.replace('v=', '')} (same cpus); loadtest on cpus {ccpus}. {int(n):,} sessions "
      f"(keys user and cart, 16-byte values), an open loop of {int(rate):,} gets/s over 20 "
      "connections for 8 s; 3 s in, another connection asks for a snapshot (ours: SH_SAVE, "
      "answered once the version is committed; Redis: BGSAVE, then INFO persistence every "
      "5 ms until the background save is over). Latency runs from each get's scheduled send "
      "time; \"during\" counts every get in flight at any moment of the save.")
print()
print("| | nemesisdb | Redis |")
print("|---|---:|---:|")
for name, a, b in zip(rows, *cols):
    print(f"| {name} | {a} | {b} |")
print()
EOF
    }


    # Change-log cost (issue #17's "Measure"): set and mixed at each
    # --pipelines value, one server at a time, each with its durability
    # settings: ours with the log off / everysec / always, Redis with
    # appendonly no / appendfsync everysec / always (snapshots off on both,
    # so only the log is measured). --repeat N repeats the whole matrix;
    # the table shows medians.
    start_durable_server() {
        local cfg="$1"
        rm -rf "$PERSIST_DIR"
        mkdir -p "$PERSIST_DIR"
        case "$cfg" in
            ours:*)
                taskset -c "$SERVER_CPUS" "$NDB" --port 0 --shards "$SHARDS" "${PIN[@]}" \
                    --persist-path "$PERSIST_DIR" --snapshot-every 0 \
                    --log-fsync "${cfg#ours:}" > "$WORK/ours.log" 2>&1 &
                DURABLE_PID=$!
                local port
                port="$(ours_port)" || exit 1
                DURABLE_URL="ws://127.0.0.1:$port/"
                ;;
            redis:*)
                local port aof
                port="$(free_port)"
                case "${cfg#redis:}" in
                    no) aof=(--appendonly no) ;;
                    *) aof=(--appendonly yes --appendfsync "${cfg#redis:}") ;;
                esac
                taskset -c "$SERVER_CPUS" redis-server --port "$port" --bind 127.0.0.1 \
                    --dir "$PERSIST_DIR" --save '' "${aof[@]}" --daemonize no \
                    > "$WORK/redis.log" 2>&1 &
                DURABLE_PID=$!
                wait_for_port "$port"
                DURABLE_URL="redis://127.0.0.1:$port"
                ;;
        esac
        OURS_PID="$DURABLE_PID"
    }

    log_cost_table() {
        local cfg w p
        : > "$WORK/results.jsonl"
        for _ in $(seq "$REPEAT"); do
            for cfg in ours:off ours:everysec ours:always redis:no redis:everysec redis:always; do
                start_durable_server "$cfg"
                for w in set mixed; do
                    for p in $PIPELINES; do
                        run "$cfg" "$DURABLE_URL" "$DURABLE_PID" "$w" "$p"
                    done
                done
                stop_servers
            done
        done
        python3 - "$WORK/results.jsonl" "$SHARDS" "$SERVER_CPUS" "$CLIENT_CPUS" \
            "$CONNECTIONS" "$DURATION" "$REPEAT" \
            "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
            "$(redis-server --version | awk '{print $3}')" > "$WORK/persist-log.md" <<'EOF'
import json, statistics, sys
path, shards, scpus, ccpus, conns, dur, repeat, rev, rver = sys.argv[1:]
runs = {}
for line in open(path):
    d = json.loads(line)
    r = d.get("r") or {}
    ops, cpu = r.get("ops"), d.get("cpu_s")
    row = {
        "ops_s": r.get("ops_per_sec"),
        "cpu_us": cpu / ops * 1e6 if cpu is not None and ops else None,
        "p99_ms": (r.get("latency_us") or {}).get("p99"),
        "errors": r.get("errors", 0),
    }
    runs.setdefault((d["server"], d["workload"], d["pipeline"]), []).append(row)

def med(key, cfg, w, p):
    xs = [x[key] for x in runs.get((cfg, w, p), []) if x[key] is not None]
    return statistics.median(xs) if xs else None

cfgs = ["ours:off", "ours:everysec", "ours:always", "redis:no", "redis:everysec", "redis:always"]
names = ["ours, log off", "ours, everysec", "ours, always",
         "Redis, AOF off", "Redis, everysec", "Redis, always"]
keys = sorted({(w, p) for (_, w, p) in runs})
def fmt(x, f):
    return "-" if x is None else f.format(x)
def ratio(a, b):
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}"

print("### Change log: throughput, CPU per operation, p99")
print()
print(f"nemesisdb ({rev}, {shards} shard{'s' if shards != '1' else ''} on cpus {scpus}) vs Redis "
      f"{rver.replace('v=', '')} (same cpus, `--save ''`); loadtest on cpus {ccpus}, {conns} "
      f"connections, {dur} s per run, median of {repeat} run{'s' if repeat != '1' else ''}. "
      "Ours: `--log-fsync off|everysec|always --snapshot-every 0`; Redis: `appendonly no`, "
      "or `appendonly yes` with `appendfsync everysec|always`. Server CPU is the server "
      "process's user + system time (all its threads, the log writers included) over the timed run.")
print()
for title, key, f in [("ops/s", "ops_s", "{:,.0f}"), ("server CPU, us per op", "cpu_us", "{:.2f}"),
                      ("p99, ms", "p99_ms", "{:,.2f}")]:
    print(f"**{title}**")
    print()
    print("| workload | pipeline | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for w, p in keys:
        vals = [med(key, c, w, p) for c in cfgs]
        if key == "p99_ms":
            vals = [None if v is None else v / 1000 for v in vals]
        print(f"| {w} | {p} | " + " | ".join(fmt(v, f) for v in vals) + " |")
    print()
print("**Targets** (issue #17): at everysec, CPU per op at the highest pipeline within 1.1x of "
      "our log-off figure and at or under Redis's everysec; at always, ops/s at or above "
      "Redis's always.")
print()
print("| workload | pipeline | ours everysec / ours off, CPU | ours everysec / Redis everysec, CPU | ours always / Redis always, ops/s |")
print("|---|---:|---:|---:|---:|")
for w, p in keys:
    print(f"| {w} | {p} | {ratio(med('cpu_us', 'ours:everysec', w, p), med('cpu_us', 'ours:off', w, p))} "
          f"| {ratio(med('cpu_us', 'ours:everysec', w, p), med('cpu_us', 'redis:everysec', w, p))} "
          f"| {ratio(med('ops_s', 'ours:always', w, p), med('ops_s', 'redis:always', w, p))} |")
errors = sum(x["errors"] or 0 for rs in runs.values() for x in rs)
print()
print(f"Errors over all runs: {errors}.")
print()
EOF
    }

    echo "compare-redis: persist: servers on cpus $SERVER_CPUS ($SHARDS shards for ours)," \
         "loadtest on cpus $CLIENT_CPUS" >&2
    mkdir -p "$(dirname "$OUT")"
    : > "$OUT.tmp"
    save_latency_table
    cat "$WORK/persist-save.md" >> "$OUT.tmp"
    log_cost_table
    cat "$WORK/persist-log.md" >> "$OUT.tmp"
    mv "$OUT.tmp" "$OUT"
    cat "$OUT"
    echo "compare-redis: table written to $OUT" >&2
    exit 0
fi

if [ "$EVENTS" = 1 ]; then
    # The measuring is loadtest's (expiry-events); this runs it on each
    # server in turn and writes the table.
    event_run() {
        local name="$1" url="$2" pid="$3" json
        rm -rf "$WORK/events-$name"
        json="$(taskset -c "$CLIENT_CPUS" "$LOADTEST" --url "$url" --workload expiry-events \
            --sessions "$EVENT_SESSIONS" --connections 8 --duration "$EVENT_WAIT" \
            --server-pid "$pid" --out "$WORK/events-$name" --json | tail -1 || true)"
        echo "  $name expiry-events: $json" >&2
    }
    echo "compare-redis: events: $EVENT_SESSIONS sessions expiring within one second;" \
         "ours with $SHARDS shards; servers on cpus $SERVER_CPUS, loadtest on cpus $CLIENT_CPUS" >&2
    start_servers
    event_run ours "$OURS_URL" "$OURS_PID"
    event_run redis "$REDIS_URL" "$REDIS_PID"
    stop_servers
    mkdir -p "$(dirname "$OUT")"
    python3 - "$WORK/events-ours/report.json" "$WORK/events-redis/report.json" \
        "$EVENT_SESSIONS" "$EVENT_WAIT" "$SHARDS" "$SERVER_CPUS" "$CLIENT_CPUS" "${#PIN[@]}" \
        "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "$(redis-server --version | awk '{print $3}')" > "$OUT" <<'EOF'
import json, sys
ours_path, redis_path, n, wait, shards, scpus, ccpus, pinned, rev, rver = sys.argv[1:]

def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return {}

def fmt(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"

def ms(us):
    return None if us is None else us / 1000

cols = []
for rep in (load(ours_path), load(redis_path)):
    ev, s = rep.get("events", {}), rep.get("summary", {})
    lat, lag = s.get("latency_us", {}), ev.get("lag_ms", {})
    cols.append([
        f"{ev['received']:,} of {ev['expected']:,}" if ev else "-",
        f"{ev.get('lost', '-')}",
        fmt(lag.get("p50")),
        fmt(lag.get("p99")),
        fmt(lag.get("max")),
        fmt(ev.get("last_after_last_deadline_ms")),
        fmt(ev.get("deadline_spread_ms"), 0),
        f"{s['ops']:,}" if s else "-",
        fmt(ms(lat.get("p99")), 2),
        fmt(ms(lat.get("max")), 2),
        f"{s.get('errors', '-')}",
        fmt(rep.get("server_cpu_s"), 2),
    ])
rows = [
    "expired events received",
    "lost (sum of `lost` events)",
    "lag p50, ms",
    "lag p99, ms",
    "lag max, ms",
    "last event after the latest deadline, ms",
    "deadlines spread over, ms",
    "second client's requests (one at a time)",
    "second client's p99, ms",
    "second client's max, ms (target: under 50)",
    "errors",
    "server CPU s while probing",
]
pin = f"pinned to cpus {scpus}" if pinned != "0" else f"under taskset on cpus {scpus}"
print(f"nemesisdb ({rev}, {shards} shards, {pin}) vs Redis {rver.replace('v=', '')} "
      f"(same cpus); loadtest on cpus {ccpus}.")
print()
print(f"{int(n):,} sessions expire within the same second; a subscriber reads every expired "
      "event as fast as it can. Lag = arrival (wall clock) minus the session's deadline "
      "(ours: the event's `deadline`; Redis: the key's PEXPIREAT, known from its name). "
      "Meanwhile a second client sends SH_GET / HGET of its own session one at a time, from "
      f"1 s before the first deadline until every event is in (at most {wait} s after the last "
      "deadline).")
print()
print("| | nemesisdb | Redis |")
print("|---|---:|---:|")
for name, a, b in zip(rows, *cols):
    print(f"| {name} | {a} | {b} |")
print()
print('Ours: `SH_SUBSCRIBE {"events":["expired"],"withKeys":false}`, sessions made by SH_NEW '
      "with expiry (deleteSession) and keys. Redis: `CONFIG SET notify-keyspace-events Ex`, "
      "`PSUBSCRIBE __keyevent@0__:expired`, keys made by HSET + PEXPIREAT spread evenly over the "
      "second; Redis sends a key's notification when it deletes the key, which it does when "
      "something touches it or its expire cycle samples it (hz 10 by default), not at the "
      "deadline. Sessions are created over 8 connections, untimed.")
EOF
    cat "$OUT"
    echo "compare-redis: table written to $OUT" >&2
    exit 0
fi

echo "compare-redis: servers on cpus $SERVER_CPUS, loadtest on cpus $CLIENT_CPUS," \
     "$CONNECTIONS connections, $DURATION s per run$([ "$TLS" = 1 ] && echo ', over TLS')" >&2
: > "$WORK/results.jsonl"
DIMENSIONS=0
if [ -n "$SHARD_LIST" ] || [ "$LOCALITIES" != any ]; then
    DIMENSIONS=1
fi
start_servers
start_sharded
# The machine's speed drifts over minutes; repeating the whole matrix (not
# each row back to back) spreads that drift over both servers alike.
for _ in $(seq "$REPEAT"); do
    for w in $WORKLOADS; do
        for p in $PIPELINES; do
            if [ "$DIMENSIONS" = 1 ]; then
                locs="$LOCALITIES"
                case "$w" in
                    get|set|mixed|sliding|touch|incr|cas) ;;
                    *) locs=any ;;
                esac
                for n in $SHARD_COUNTS; do
                    for loc in $locs; do
                        # One shard has no other shard to send requests to.
                        [ "$loc" = remote ] && [ "$n" = 1 ] && continue
                        RUN_SHARDS="$n"
                        RUN_LOCALITY="$loc"
                        run ours "${SHARD_URL[$n]}" "${SHARD_PID[$n]}" "$w" "$p" --locality "$loc"
                    done
                done
                RUN_SHARDS=""
                RUN_LOCALITY=""
            else
                run ours "$OURS_URL" "$OURS_PID" "$w" "$p" "${LT_TLS[@]}"
            fi
            run redis "$REDIS_URL" "$REDIS_PID" "$w" "$p" "${LT_TLS[@]}"
            if [ "$TLS" = 1 ]; then
                run ours-plain "ws://127.0.0.1:$PLAIN_PORT/" "$PLAIN_PID" "$w" "$p"
            fi
        done
    done
done
stop_servers

# Memory: fresh servers, RSS before and after populating (populate stops
# by itself after --sessions sessions).
start_servers
sleep 0.5
mem_run() {
    local name="$1" url="$2" pid="$3" before after json
    before="$(rss_kib "$pid")"
    json="$(taskset -c "$CLIENT_CPUS" "$LOADTEST" --url "$url" --workload populate \
        --pipeline 16 --connections "$CONNECTIONS" --sessions "$POPULATE" \
        --threads "$CLIENT_THREADS" --json "${LT_TLS[@]}" | tail -1 || true)"
    sleep 0.5
    after="$(rss_kib "$pid")"
    [ -n "$json" ] || json='{}'
    echo "  $name populate $POPULATE: $json" >&2
    python3 - "$name" "$before" "$after" "$json" >> "$WORK/memory.jsonl" <<'EOF'
import json, sys
name, before, after, raw = sys.argv[1:]
print(json.dumps({"server": name, "before": int(before), "after": int(after), "r": json.loads(raw)}))
EOF
}
: > "$WORK/memory.jsonl"
mem_run ours "$OURS_URL" "$OURS_PID"
mem_run redis "$REDIS_URL" "$REDIS_PID"
stop_servers

mkdir -p "$(dirname "$OUT")"
python3 - "$WORK/results.jsonl" "$WORK/memory.jsonl" "$POPULATE" \
    "$SERVER_CPUS" "$CLIENT_CPUS" "$CONNECTIONS" "$DURATION" "$SESSIONS" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(redis-server --version | awk '{print $3}')" \
    "$REPEAT" "$TLS" "$DIMENSIONS" > "$OUT" <<'EOF'
import json, statistics, sys
(results, memory, populate, scpus, ccpus, conns, dur, sessions, rev, rver, repeat, tls,
 dims) = sys.argv[1:]
dims = dims == "1"

def cpu_per_m(d, key):
    ops = d["r"].get("ops") or 0
    return d[key] / ops * 1e6 if ops and d.get(key) is not None else None

# Every run of a row, per server, as the numbers the table shows.
rows = {}
# --tls: what the connections agreed on, per server.
agreed = {}
for line in open(results):
    d = json.loads(line)
    r = d["r"]
    if d.get("tls"):
        agreed.setdefault(d["server"], set()).add(d["tls"])
    run = {
        "ops": r.get("ops_per_sec"),
        "p50": r.get("latency_us", {}).get("p50"),
        "p99": r.get("latency_us", {}).get("p99"),
        "cpu": cpu_per_m(d, "cpu_s"),
        "client": cpu_per_m(d, "client_cpu_s"),
        "errors": r.get("errors"),
        # cas: lost compare-and-sets tried again, per completed operation.
        "retries": d["retries"] / r["ops"] if d.get("retries") is not None and r.get("ops") else None,
    }
    # --shards / --locality: one row per ours variant, beside the same Redis.
    server = d["server"]
    if dims and server == "ours":
        server = ("ours", d.get("shards") or 0, d.get("locality") or "any")
    rows.setdefault((d["workload"], d["pipeline"]), {}).setdefault(server, []).append(run)

def median(runs, key):
    values = [run[key] for run in runs if run[key] is not None]
    return statistics.median(values) if values else None

def fmt(x, nd=0):
    return "-" if x is None else f"{x:,.{nd}f}"

runs_note = f"median of {repeat} runs per row, " if int(repeat) > 1 else ""
over = " Both over TLS (wss://, rediss://, loadtest --insecure), one self-signed ECDSA P-256 certificate." if tls == "1" else ""
print(f"nemesisdb ({rev}) vs Redis {rver.replace('v=', '')}: servers on cpus {scpus}, "
      f"loadtest on cpus {ccpus}; {conns} connections, {dur} s per run, {runs_note}{sessions} sessions.{over}")
print()
if dims:
    print(f"Ours with N shards pins shard i to the (i mod n)-th of the n server cpus {scpus} "
        "(so with one server core every shard shares it, and CPU per operation is the "
        "per-core cost); locality is "
        "loadtest's --locality: local keeps every request on the connection's shard, remote "
        "forwards every one to another shard, any picks sessions at random.")
    print()
dim_head = "| shards | locality " if dims else ""
dim_rule = "---:|---|" if dims else ""
print("| workload | pipeline " + dim_head + "| ours ops/s | ours p50 us | ours p99 us | Redis ops/s | Redis p50 us "
      "| Redis p99 us | ours/Redis | ours CPU s/M ops | Redis CPU s/M ops | CPU ours/Redis per run "
      "| loadtest CPU s/M ops ours/Redis | errors ours/Redis | retries per op ours/Redis |")
print("|---|---:|" + dim_rule + "---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
def variants(d):
    """Each ours row of a (workload, pipeline): one without --shards/--locality."""
    if not dims:
        return [("", d.get("ours", []))]
    keys = sorted(k for k in d if isinstance(k, tuple))
    return [(f"| {k[1]} | {k[2]} ", d[k]) for k in keys]
for (w, p), d, (dim, o) in ((k, d, v) for k, d in rows.items() for v in variants(d)):
    r = d.get("redis", [])
    oo, ro = median(o, "ops"), median(r, "ops")
    ratio = oo / ro if oo and ro else None
    per_run = [a["cpu"] / b["cpu"] for a, b in zip(o, r) if a["cpu"] and b["cpu"]]
    spread = ", ".join(f"{x:.2f}" for x in per_run) or "-"
    errors = f"{sum(x['errors'] or 0 for x in o)}/{sum(x['errors'] or 0 for x in r)}"
    # Only workloads that retry (cas) have a number here.
    retried = w == "cas" or any(x["retries"] for x in o + r)
    retries = f"{fmt(median(o, 'retries'), 3)}/{fmt(median(r, 'retries'), 3)}" if retried else "-"
    print(f"| {w} | {p} {dim}| {fmt(oo)} | {fmt(median(o, 'p50'), 1)} | {fmt(median(o, 'p99'), 1)} "
          f"| {fmt(ro)} | {fmt(median(r, 'p50'), 1)} | {fmt(median(r, 'p99'), 1)} | {fmt(ratio, 2)} "
          f"| {fmt(median(o, 'cpu'), 2)} | {fmt(median(r, 'cpu'), 2)} | {spread} "
          f"| {fmt(median(o, 'client'), 2)}/{fmt(median(r, 'client'), 2)} | {errors} | {retries} |")
print()
if tls == "1":
    for server, name in (("ours", "ours"), ("redis", "Redis")):
        print(f"TLS agreed with {name}: {', '.join(sorted(agreed.get(server, []))) or 'not reported'}.")
    print()
    print("What TLS costs us: ours without TLS (`ws://`, a second nemesisdb with the same flags "
          "but no certificate, run right after the other two in each row) beside ours over TLS "
          "(the table above). CPU: server s per million ops; ratios TLS / plain.")
    print()
    print("| workload | pipeline | plain ops/s | TLS ops/s | ops/s TLS/plain | plain CPU s/M ops "
          "| TLS CPU s/M ops | CPU TLS/plain | plain p99 us | TLS p99 us "
          "| loadtest CPU s/M ops plain/TLS | errors plain/TLS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (w, p), d in rows.items():
        pl, t = d.get("ours-plain", []), d.get("ours", [])
        po, to = median(pl, "ops"), median(t, "ops")
        pc, tc = median(pl, "cpu"), median(t, "cpu")
        errors = f"{sum(x['errors'] or 0 for x in pl)}/{sum(x['errors'] or 0 for x in t)}"
        print(f"| {w} | {p} | {fmt(po)} | {fmt(to)} | {fmt(to / po if po and to else None, 2)} "
              f"| {fmt(pc, 2)} | {fmt(tc, 2)} | {fmt(tc / pc if pc and tc else None, 2)} "
              f"| {fmt(median(pl, 'p99'), 1)} | {fmt(median(t, 'p99'), 1)} "
              f"| {fmt(median(pl, 'client'), 2)}/{fmt(median(t, 'client'), 2)} | {errors} |")
    print()
print(f"Memory after `populate` of {int(populate):,} sessions (keys user and cart, 3600 s expiry), "
      "from each fresh server's resident set:")
print()
print("| server | RSS before MiB | RSS after MiB | bytes per session | populate ops/s | errors |")
print("|---|---:|---:|---:|---:|---:|")
for line in open(memory):
    d = json.loads(line)
    per = (d["after"] - d["before"]) * 1024 / int(populate)
    print(f"| {'ours' if d['server'] == 'ours' else 'Redis'} | {d['before'] / 1024:,.1f} "
          f"| {d['after'] / 1024:,.1f} | {per:,.0f} | {fmt(d['r'].get('ops_per_sec'))} "
          f"| {d['r'].get('errors', '-')} |")
print()
print("One operation (requests, ours / Redis): sliding = SH_GET with extendOnGet / HGET + EXPIRE "
      "(1 / 2); touch = SH_TOUCH slide on sessions with duration 3600 / PEXPIRE + PTTL (1 / 2); "
      "incr = SH_INCR / HINCRBY of a counter (1 / 1); cas = compare-and-set increment of that "
      "counter: SH_GET withVersion, then SH_SET ifVersion / WATCH + HGET, then MULTI + HSET + EXEC "
      "(2 / 5 per attempt, two round trips on both; a lost write, 104 / nil EXEC, is retried from "
      "the read and the operation counts once; on Redis a connection runs one cas at a time "
      "between WATCH and EXEC, as WATCH is per connection, so its pipeline overlaps only the next "
      "WATCH with the last EXEC); "
      "lifecycle = SH_NEW with keys, then SH_GET + SH_END / HSET + EXPIRE + HGETALL + DEL (3 / 4); "
      "lifecycle-classic = SH_NEW, then SH_SET + SH_GET + SH_END / the same 4 Redis commands (4 / 4; "
      "Redis has no server-chosen token, so its lifecycle is the same for both); logout-all = one "
      "owner with 5 sessions: SH_OWNER_END, then 5 SH_NEW with owner and keys / SMEMBERS, then "
      "DEL of each session hash + DEL of the set + 5 HSET + SADD (6 / 13, two round trips on both); "
      "expiry/populate = SH_NEW then SH_SET / HSET + EXPIRE (2 / 2). CPU columns: utime + stime "
      "during the timed run only (loadtest reads /proc/PID/stat around it); loadtest CPU shows "
      "whether the generator's core was the limit.")
EOF
cat "$OUT"
echo "compare-redis: table written to $OUT" >&2
