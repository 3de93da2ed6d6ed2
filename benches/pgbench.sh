#!/usr/bin/env bash
# End-to-end throughput of pgwarden against PostgreSQL direct and PgBouncer (session mode),
# on one machine, in one run, with interleaved rounds and an A/A control.
#
#   bash benches/pgbench.sh                 # full run: 3 rounds x 10 s x 12 workloads x 4 targets (~25 min)
#   QUICK=1 bash benches/pgbench.sh         # smoke check: 1 round x 3 s, 6 workloads (~2 min)
#
# Environment (defaults in brackets):
#   ROUNDS [3, QUICK: 1]   DURATION seconds per run [10, QUICK: 3]
#   QUICK [0]              ONLY  regex: run only workloads whose name matches
#   PG_HOST [127.0.0.1]    PG_PORT [5432]   PG_DB [test]   PG_USER [postgres]
#   SCALE [10]             pgbench -i scale;  SKIP_INIT=1 reuses existing pgbench tables
#   PGWARDEN_BIN           use this binary instead of `cargo build --release`
#   PGWARDEN_POLICIES      policy directory for pgwarden (default: the shipped pack, policies/);
#                          an empty directory measures the bare proxy
#   PGWARDEN_CONFIG        a pgwarden config file (e.g. with [catalog]); flags still set listen,
#                          upstream and policies
#   PGWARDEN_LOG [info]    pgwarden's log filter
#   RESULTS_TSV            also keep the raw per-run results here
#
# Needs: pgbench, psql, pg_isready, python3, pgbouncer (installed with apt-get when missing),
# and root (pgbouncer is run as the postgres user through runuser). See benches/README.md.

set -euo pipefail

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-3}
else
    ROUNDS=${ROUNDS:-3}
    DURATION=${DURATION:-10}
fi
ONLY=${ONLY:-}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_DB=${PG_DB:-test}
PG_USER=${PG_USER:-postgres}
SCALE=${SCALE:-10}
SKIP_INIT=${SKIP_INIT:-0}
export PGWARDEN_LOG=${PGWARDEN_LOG:-info}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
SCRIPTS=$BENCH_DIR/scripts
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[pgbench.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup -----------
WORK=""
BOUNCER_DIR=""
PGWARDEN_PID=""
BOUNCER_PID=""

stop_pid() { # pid label
    local pid=$1 label=$2 i
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$label (pid $pid) did not stop on SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$PGWARDEN_PID" pgwarden
    stop_pid "${AUDIT_PID:-}" pgwarden-audit
    stop_pid "${CATALOG_PID:-}" pgwarden-catalog
    if [[ -z $BOUNCER_PID && -n $BOUNCER_DIR && -s $BOUNCER_DIR/pgbouncer.pid ]]; then
        BOUNCER_PID=$(cat "$BOUNCER_DIR/pgbouncer.pid")
    fi
    stop_pid "$BOUNCER_PID" pgbouncer
    [[ -n $WORK ]] && rm -rf -- "$WORK"
    [[ -n $BOUNCER_DIR ]] && rm -rf -- "$BOUNCER_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- checks ------------
for tool in pgbench psql pg_isready python3 runuser getconf; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
if ! command -v pgbouncer >/dev/null; then
    log "pgbouncer not found; installing it"
    apt-get install -y pgbouncer >&2 || { apt-get update >&2 && apt-get install -y pgbouncer >&2; }
fi
PGBOUNCER=$(command -v pgbouncer)
id postgres >/dev/null 2>&1 || die "no postgres user to run pgbouncer as"
pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg) # a busy machine makes every number below noise

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER")

WORK=$(mktemp -d /tmp/pgwarden-bench.XXXXXX)
BOUNCER_DIR=$(mktemp -d /tmp/pgwarden-bench-pgbouncer.XXXXXX)
chown postgres: "$BOUNCER_DIR"

# Four distinct free ports, held open together so they differ.
read -r BOUNCER_PORT PGWARDEN_PORT AUDIT_PORT CATALOG_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))
')

wait_ready() { # port label pid
    local i
    for i in $(seq 1 100); do
        if pg_isready -q -h 127.0.0.1 -p "$1" -d "$PG_DB" -U "$PG_USER"; then return 0; fi
        kill -0 "$3" 2>/dev/null || die "$2 exited during startup"
        sleep 0.1
    done
    die "$2 is not accepting connections on port $1"
}

# ---------------------------------------------------------------- pgwarden ----------
if [[ -n ${PGWARDEN_BIN:-} ]]; then
    [[ -x $PGWARDEN_BIN ]] || die "PGWARDEN_BIN=$PGWARDEN_BIN is not executable"
else
    log "cargo build --release (this can take a few minutes)"
    (cd "$REPO" && cargo build --release --bin pgwarden >&2)
    TARGET_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    PGWARDEN_BIN=$TARGET_DIR/release/pgwarden
fi
CONFIG_ARGS=()
if [[ -n ${PGWARDEN_CONFIG:-} ]]; then CONFIG_ARGS=(--config "$PGWARDEN_CONFIG"); fi
"$PGWARDEN_BIN" serve "${CONFIG_ARGS[@]}" --listen "127.0.0.1:$PGWARDEN_PORT" --upstream "$PG_HOST:$PG_PORT" \
    --policies "${PGWARDEN_POLICIES:-$REPO/policies}" </dev/null >"$WORK/pgwarden.log" 2>&1 &
PGWARDEN_PID=$!
wait_ready "$PGWARDEN_PORT" pgwarden "$PGWARDEN_PID"
log "pgwarden pid $PGWARDEN_PID on 127.0.0.1:$PGWARDEN_PORT"
# AUDIT=1: a second pgwarden, the same but writing its audit log (records synced before each
# recorded statement runs), as target pgwarden-audit.
AUDIT_PID=
if [[ ${AUDIT:-0} == 1 ]]; then
    "$PGWARDEN_BIN" serve "${CONFIG_ARGS[@]}" --listen "127.0.0.1:$AUDIT_PORT" --upstream "$PG_HOST:$PG_PORT" \
        --policies "${PGWARDEN_POLICIES:-$REPO/policies}" --admin-listen off --state-dir "$WORK/state-audit" \
        --audit-file "${AUDIT_FILE:-$WORK/audit/audit.jsonl}" </dev/null >"$WORK/pgwarden-audit.log" 2>&1 &
    AUDIT_PID=$!
    wait_ready "$AUDIT_PORT" pgwarden-audit "$AUDIT_PID"
    log "pgwarden-audit pid $AUDIT_PID on 127.0.0.1:$AUDIT_PORT, audit log ${AUDIT_FILE:-$WORK/audit/audit.jsonl}"
fi

# CATALOG=1: a third pgwarden, the same with a [catalog] connection to the same PostgreSQL
# (sizes, planner estimates of writes), as target pgwarden-catalog.
CATALOG_PID=
if [[ ${CATALOG:-0} == 1 ]]; then
    printf '[catalog]\ndsn = "host=%s port=%s user=%s"\n' "$PG_HOST" "$PG_PORT" "$PG_USER" >"$WORK/catalog.toml"
    "$PGWARDEN_BIN" serve --config "$WORK/catalog.toml" --listen "127.0.0.1:$CATALOG_PORT" --upstream "$PG_HOST:$PG_PORT" \
        --policies "${PGWARDEN_POLICIES:-$REPO/policies}" --admin-listen off --state-dir "$WORK/state-catalog" \
        </dev/null >"$WORK/pgwarden-catalog.log" 2>&1 &
    CATALOG_PID=$!
    wait_ready "$CATALOG_PORT" pgwarden-catalog "$CATALOG_PID"
    log "pgwarden-catalog pid $CATALOG_PID on 127.0.0.1:$CATALOG_PORT"
fi

# ---------------------------------------------------------------- pgbouncer ---------
printf '"%s" ""\n' "$PG_USER" >"$BOUNCER_DIR/userlist.txt"
cat >"$BOUNCER_DIR/pgbouncer.ini" <<EOF
[databases]
* = host=$PG_HOST port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir = $BOUNCER_DIR
auth_type = trust
auth_file = $BOUNCER_DIR/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 40
ignore_startup_parameters = extra_float_digits
logfile = $BOUNCER_DIR/pgbouncer.log
pidfile = $BOUNCER_DIR/pgbouncer.pid
EOF
chown -R postgres: "$BOUNCER_DIR"
runuser -u postgres -- "$PGBOUNCER" -d "$BOUNCER_DIR/pgbouncer.ini" >&2
for i in $(seq 1 50); do
    [[ -s $BOUNCER_DIR/pgbouncer.pid ]] && break
    sleep 0.1
done
[[ -s $BOUNCER_DIR/pgbouncer.pid ]] || { cat "$BOUNCER_DIR/pgbouncer.log" >&2 || true; die "pgbouncer did not start"; }
BOUNCER_PID=$(cat "$BOUNCER_DIR/pgbouncer.pid")
wait_ready "$BOUNCER_PORT" pgbouncer "$BOUNCER_PID"
log "pgbouncer pid $BOUNCER_PID on 127.0.0.1:$BOUNCER_PORT"

# ---------------------------------------------------------------- data --------------
if [[ $SKIP_INIT == 1 ]]; then
    log "SKIP_INIT=1: reusing the pgbench tables in $PG_DB"
    SCALE=$("${PSQL[@]}" -d "$PG_DB" -Atc 'SELECT count(*) FROM pgbench_branches')
else
    if [[ -z $("${PSQL[@]}" -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") ]]; then
        "${PSQL[@]}" -d postgres -c "CREATE DATABASE \"$PG_DB\""
    fi
    log "pgbench -i -s $SCALE $PG_DB (direct)"
    pgbench -i -q -s "$SCALE" -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_DB" >"$WORK/init.log" 2>&1 ||
        { cat "$WORK/init.log" >&2; die "pgbench -i failed"; }
fi

# ---------------------------------------------------------------- workloads ---------
# name | clients | pgbench arguments
WORKLOADS=()
add() { WORKLOADS+=("$1|$2|$3"); }
if [[ $QUICK == 1 ]]; then
    add select-simple-c8 8 "-S -M simple"
    add select-extended-c8 8 "-S -M extended"
    add select-prepared-c8 8 "-S -M prepared"
    add tpcb-prepared-c8 8 "-M prepared"
    add pipeline10-prepared-c8 8 "-M prepared -f $SCRIPTS/pipeline.sql -D scale=$SCALE"
    add rows1000-prepared-c8 8 "-M prepared -f $SCRIPTS/rows1000.sql"
else
    for mode in simple extended prepared; do
        for c in 1 8 32; do
            add "select-$mode-c$c" "$c" "-S -M $mode"
        done
    done
    add tpcb-simple-c8 8 "-M simple"
    add tpcb-prepared-c8 8 "-M prepared"
    add pipeline10-prepared-c8 8 "-M prepared -f $SCRIPTS/pipeline.sql -D scale=$SCALE"
    add rows1000-prepared-c8 8 "-M prepared -f $SCRIPTS/rows1000.sql"
fi
if [[ -n $ONLY ]]; then
    selected=()
    for w in "${WORKLOADS[@]}"; do
        [[ ${w%%|*} =~ $ONLY ]] && selected+=("$w")
    done
    WORKLOADS=("${selected[@]}")
fi
((${#WORKLOADS[@]} > 0)) || die "no workload matches ONLY=$ONLY"

TARGETS=(direct pgbouncer pgwarden direct-AA)
[[ -n $AUDIT_PID ]] && TARGETS+=(pgwarden-audit)
[[ -n $CATALOG_PID ]] && TARGETS+=(pgwarden-catalog)
target_port() {
    case $1 in
    direct | direct-AA) echo "$PG_PORT" ;;
    pgbouncer) echo "$BOUNCER_PORT" ;;
    pgwarden) echo "$PGWARDEN_PORT" ;;
    pgwarden-audit) echo "$AUDIT_PORT" ;;
    pgwarden-catalog) echo "$CATALOG_PORT" ;;
    esac
}
target_host() { case $1 in direct | direct-AA) echo "$PG_HOST" ;; *) echo 127.0.0.1 ;; esac; }
target_pid() { case $1 in pgbouncer) echo "$BOUNCER_PID" ;; pgwarden) echo "$PGWARDEN_PID" ;; pgwarden-audit) echo "$AUDIT_PID" ;; pgwarden-catalog) echo "$CATALOG_PID" ;; *) echo "" ;; esac; }

# utime + stime of a whole process (all threads), in clock ticks.
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat") || die "cannot read /proc/$1/stat"
    stat=${stat##*) }
    local -a f
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

RESULTS=$WORK/results.tsv
printf 'round\tworkload\ttarget\ttps\tlatency_ms\ttxns\tcpu_ticks\n' >"$RESULTS"

est=$((${#WORKLOADS[@]} * ${#TARGETS[@]} * ROUNDS * (DURATION + 1)))
log "${#WORKLOADS[@]} workloads x ${#TARGETS[@]} targets x $ROUNDS rounds x ${DURATION}s (~$((est / 60)) min $((est % 60)) s)"

failures=0
for ((round = 1; round <= ROUNDS; round++)); do
    for wi in "${!WORKLOADS[@]}"; do
        IFS='|' read -r wname clients wargs <<<"${WORKLOADS[$wi]}"
        jobs=$((clients < 2 ? clients : 2))
        # Rotate the target order so no target always runs first or after the same one.
        off=$(((round - 1 + wi) % ${#TARGETS[@]}))
        for ((k = 0; k < ${#TARGETS[@]}; k++)); do
            target=${TARGETS[$(((k + off) % ${#TARGETS[@]}))]}
            pid=$(target_pid "$target")
            if [[ $wname == tpcb-* ]]; then
                # What pgbench's own pre-run vacuum does, done directly so it never goes
                # through (and is never counted against) a proxy.
                "${PSQL[@]}" -d "$PG_DB" -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' \
                    -c 'TRUNCATE pgbench_history' >/dev/null
            fi
            if [[ -n $pid ]]; then
                kill -0 "$pid" 2>/dev/null || die "$target (pid $pid) is gone"
                before=$(cpu_ticks "$pid")
            fi
            out=$WORK/run-$round-$wname-$target.log
            # shellcheck disable=SC2086 # $wargs is a list of arguments
            if pgbench -n -T "$DURATION" -c "$clients" -j "$jobs" $wargs \
                -h "$(target_host "$target")" -p "$(target_port "$target")" -U "$PG_USER" "$PG_DB" \
                >"$out" 2>&1; then
                ok=1
            else
                ok=0
            fi
            ticks=""
            if [[ -n $pid ]]; then
                after=$(cpu_ticks "$pid")
                ticks=$((after - before))
            fi
            tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -n1)
            lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -n1)
            txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -n1)
            if [[ $ok != 1 || -z $tps || -z $txns ]]; then
                failures=$((failures + 1))
                log "FAILED: round $round $wname $target"
                tail -n 20 "$out" >&2
                tps="" lat="" txns=""
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$wname" "$target" \
                "$tps" "$lat" "$txns" "$ticks" >>"$RESULTS"
            log "round $round/$ROUNDS  $wname  $target: tps=${tps:-?} lat=${lat:-?}ms"
        done
    done
done

RSS_PGWARDEN=$(status_kb "$PGWARDEN_PID" VmRSS)
HWM_PGWARDEN=$(status_kb "$PGWARDEN_PID" VmHWM)
RSS_BOUNCER=$(status_kb "$BOUNCER_PID" VmRSS)
HWM_BOUNCER=$(status_kb "$BOUNCER_PID" VmHWM)
[[ -n ${RESULTS_TSV:-} ]] && cp "$RESULTS" "$RESULTS_TSV"

# ---------------------------------------------------------------- report ------------
{
    echo "## pgbench: direct vs pgbouncer vs pgwarden ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "- host: $(uname -srm), $(nproc) CPUs, load average before: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- PostgreSQL: $("${PSQL[@]}" -d "$PG_DB" -Atc 'SHOW server_version'), $PG_HOST:$PG_PORT over TCP;" \
        "$(pgbench --version); $("$PGBOUNCER" --version | head -n1) (session mode)"
    echo "- pgwarden: $PGWARDEN_BIN ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$REPO" && git diff --quiet HEAD 2>/dev/null || echo ', dirty tree')), PGWARDEN_LOG=$PGWARDEN_LOG${PGWARDEN_CONFIG:+, config $PGWARDEN_CONFIG}"
    echo "- $ROUNDS round(s) x ${DURATION}s per run, targets interleaved, scale $SCALE$([[ $QUICK == 1 ]] && echo ', QUICK=1 smoke check')"
    echo
} >"$WORK/header.md"

python3 - "$RESULTS" "$CLK_TCK" "$RSS_PGWARDEN" "$HWM_PGWARDEN" "$RSS_BOUNCER" "$HWM_BOUNCER" \
    >"$WORK/report.md" <<'PY'
import csv, math, statistics, sys

path, clk_tck = sys.argv[1], int(sys.argv[2])
rss = {"pgwarden": (sys.argv[3], sys.argv[4]), "pgbouncer": (sys.argv[5], sys.argv[6])}
targets = ["direct", "direct-AA", "pgbouncer", "pgwarden"]

runs = {}  # (workload, target) -> list of rows
order = []
with open(path) as f:
    for r in csv.DictReader(f, delimiter="\t"):
        key = (r["workload"], r["target"])
        if r["workload"] not in order:
            order.append(r["workload"])
        runs.setdefault(key, []).append(r)
for extra in ("pgwarden-audit", "pgwarden-catalog"):
    if any(t == extra for (_, t) in runs):
        targets.append(extra)

def med(xs):
    return statistics.median(xs) if xs else None

stats = {}
for (w, t), rows in runs.items():
    ok = [r for r in rows if r["tps"]]
    tps = [float(r["tps"]) for r in ok]
    lat = [float(r["latency_ms"]) for r in ok if r["latency_ms"]]
    cpu = [
        int(r["cpu_ticks"]) / clk_tck * 1e6 / int(r["txns"])
        for r in ok
        if r["cpu_ticks"] and int(r["txns"]) > 0
    ]
    stats[w, t] = {
        "tps": med(tps),
        "lat": med(lat),
        "cpu": med(cpu),
        "spread": (max(tps) - min(tps)) / med(tps) * 100 if len(tps) > 1 else None,
        "n": len(ok),
        "failed": len(rows) - len(ok),
    }

def ratio(a, b):
    return a / b if a is not None and b else None

def fmt(x, spec):
    return "—" if x is None else format(x, spec)

def gmean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None

print("| workload | target | TPS (median) | spread | latency ms (median) | TPS / direct | TPS / pgbouncer | latency / direct | latency / pgbouncer | proxy CPU µs/txn |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
ratios = {t: {"td": [], "tb": [], "ld": [], "lb": [], "cpu": []} for t in targets}
for w in order:
    d, b = stats.get((w, "direct")), stats.get((w, "pgbouncer"))
    for t in targets:
        s = stats.get((w, t))
        if s is None:
            continue
        td = ratio(s["tps"], d and d["tps"])
        tb = ratio(s["tps"], b and b["tps"])
        ld = ratio(s["lat"], d and d["lat"])
        lb = ratio(s["lat"], b and b["lat"])
        for k, v in (("td", td), ("tb", tb), ("ld", ld), ("lb", lb), ("cpu", s["cpu"])):
            ratios[t][k].append(v)
        fail = f" ({s['failed']} failed)" if s["failed"] else ""
        print(
            f"| {w} | {t}{fail} | {fmt(s['tps'], ',.0f')} | "
            f"{fmt(s['spread'], '.1f') + '%' if s['spread'] is not None else '—'} | "
            f"{fmt(s['lat'], '.3f')} | {fmt(td, '.3f')} | {fmt(tb, '.3f')} | "
            f"{fmt(ld, '.3f')} | {fmt(lb, '.3f')} | {fmt(s['cpu'], '.1f')} |"
        )

print()
print("Geometric means over all workloads (TPS ratio > 1 and latency ratio < 1 are better; "
      "direct-AA is the A/A control: its distance from 1.000 is the noise floor):")
print()
print("| target | TPS / direct | TPS / pgbouncer | latency / direct | latency / pgbouncer | CPU µs/txn (geomean) | RSS at end | peak RSS |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for t in targets:
    r = ratios[t]
    mem = rss.get(t)
    mem_end = f"{int(mem[0]) / 1024:.1f} MiB" if mem and mem[0] else "—"
    mem_hwm = f"{int(mem[1]) / 1024:.1f} MiB" if mem and mem[1] else "—"
    print(
        f"| {t} | {fmt(gmean(r['td']), '.3f')} | {fmt(gmean(r['tb']), '.3f')} | "
        f"{fmt(gmean(r['ld']), '.3f')} | {fmt(gmean(r['lb']), '.3f')} | "
        f"{fmt(gmean(r['cpu']), '.1f')} | {mem_end} | {mem_hwm} |"
    )
PY

cat "$WORK/header.md" "$WORK/report.md"
if ((failures > 0)); then
    log "$failures run(s) failed; see the FAILED lines above"
    exit 1
fi
