#!/usr/bin/env bash
# HTTP benchmarks of core4d (login, profile with a token, one page of 100,000 roles, embedded
# start times) with PocketBase as the peer, in the same run, on the same machine.
#
#   tests/bench/http.sh [core4d binary] [pocketbase binary]
#
# Needs: wrk, curl, python3, psql; the binaries built with --release. Loopback only; every load
# is bounded in time. Prints a Markdown report on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
core4d=${1:-target/release/core4d}
pocketbase=${2:-$(command -v pocketbase || true)}
duration=${DURATION:-10s}
work=$(mktemp -d /dev/shm/core4-bench.XXXXXX)
# As root the cluster runs as `postgres`, which must reach it; a 0700 dir would make core4d put
# the cluster under /var/lib/core4d instead, where this script's cleanup would not find it.
chmod 755 "$work"
port=5301
pb_port=8391
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$work"; }
trap cleanup EXIT

json() { python3 -c "import sys,json; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
# "Latency  1.23ms ..." and the "99%" row of wrk --latency.
wrk_summary() {
    awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {bad=$NF}
         END {printf "%s req/s, p50 %s, p99 %s%s", rps, p50, p99, (bad ? ", non-2xx " bad : "")}'
}
run_wrk() { local conns=$1; shift; wrk -t2 -c"$conns" -d"$duration" --latency "$@" | wrk_summary; }

wait_ready() { # log file, needle
    for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "not ready: $1" >&2; cat "$1" >&2; exit 1
}

echo "## HTTP benchmarks ($(date -u +%Y-%m-%d), $(nproc) cores, wrk on the same machine, ${duration} per run)"
echo

# --- embedded start times -------------------------------------------------------------------
export CORE4_ADMIN_PASSWORD=bench-admin-pw
start_core4d() { # data dir, log, file receiving the seconds to ready
    local t0; t0=$(date +%s.%N)
    "$core4d" --data-dir "$1" --listen 127.0.0.1:$port 2>"$2" & pids+=($!)
    wait_ready "$2" "core4d is ready"
    python3 -c "print(f'{($(date +%s.%N) - $t0):.2f}')" >"$3"
}
start_core4d "$work/data" "$work/first.log" "$work/first.t"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
start_core4d "$work/data" "$work/core4d.log" "$work/restart.t"
first=$(cat "$work/first.t"); restart=$(cat "$work/restart.t")
echo "| core4d embedded PostgreSQL | first start (initdb) to ready | restart to ready |"
echo "|---|---|---|"
echo "| wall time | ${first} s | ${restart} s |"
echo

base=http://127.0.0.1:$port/core4/api/v1
token=$(curl -sf "$base/login?username=admin&password=$CORE4_ADMIN_PASSWORD" | json 'd["data"]["token"]')

# --- PocketBase, the peer ---------------------------------------------------------------------
pb_token=""
if [ -n "$pocketbase" ]; then
    "$pocketbase" superuser upsert bench@example.com bench-admin-pw --dir "$work/pb" >/dev/null
    "$pocketbase" serve --http 127.0.0.1:$pb_port --dir "$work/pb" >"$work/pb.log" 2>&1 & pids+=($!)
    wait_ready "$work/pb.log" "Server started"
    pb=http://127.0.0.1:$pb_port/api
    su=$(curl -sf -XPOST "$pb/collections/_superusers/auth-with-password" -H 'content-type: application/json' \
        -d '{"identity":"bench@example.com","password":"bench-admin-pw"}' | json 'd["token"]')
    pb_user=$(curl -sf -XPOST "$pb/collections/users/records" -H "Authorization: $su" -H 'content-type: application/json' \
        -d '{"email":"user1@example.com","password":"very secret pw","passwordConfirm":"very secret pw"}' | json 'd["id"]')
    pb_token=$(curl -sf -XPOST "$pb/collections/users/auth-with-password" -H 'content-type: application/json' \
        -d '{"identity":"user1@example.com","password":"very secret pw"}' | json 'd["token"]')
fi

echo "| load | core4d | PocketBase $("$pocketbase" --version 2>/dev/null | awk '{print $NF}') |"
echo "|---|---|---|"
c4=$(run_wrk 4 "$base/login?username=admin&password=$CORE4_ADMIN_PASSWORD")
pbv="-"; [ -n "$pb_token" ] && pbv=$(BODY='{"identity":"user1@example.com","password":"very secret pw"}' \
    run_wrk 4 -s "$here/post_json.lua" "$pb/collections/users/auth-with-password")
echo "| password login, 4 connections (argon2id 19 MiB/t=2 vs bcrypt) | $c4 | $pbv |"
c4=$(run_wrk 64 -H "Authorization: Bearer $token" "$base/profile")
pbv="-"; [ -n "$pb_token" ] && pbv=$(run_wrk 64 -H "Authorization: $pb_token" "$pb/collections/users/records/$pb_user")
echo "| authenticated read (core4d \`GET /profile\`, PocketBase own user record), 64 connections | $c4 | $pbv |"

# --- 100,000 roles ----------------------------------------------------------------------------
sock=$(dirname "$(find "$work/data" /var/lib/core4d -name '.s.PGSQL.5432' -path '*run*' 2>/dev/null | head -1)")
psql -q -h "$sock" -U postgres -d postgres -c "
  INSERT INTO roles (id, name, name_key, realname, perm, etag)
  SELECT lpad(to_hex(g), 24, '0'), 'role' || g, 'role' || g, 'Role number ' || g, ARRAY['app://r' || g], lpad(to_hex(g), 24, '0')
  FROM generate_series(1, 100000) g;
  INSERT INTO role_parents (role_id, parent_id) SELECT lpad(to_hex(g), 24, '0'), lpad(to_hex(g + 1), 24, '0') FROM generate_series(1, 99999, 7) g;
  ANALYZE;" >/dev/null
echo "| \`GET /roles\` page 0 of 100,002 rows, 8 connections | $(run_wrk 8 -H "Authorization: Bearer $token" "$base/roles?per_page=10") | |"
echo "| \`GET /roles?sort=name&order=-1&page=5000\`, 8 connections | $(run_wrk 8 -H "Authorization: Bearer $token" "$base/roles?per_page=10&sort=name&order=-1&page=5000") | |"
echo "| \`GET /roles?q=role9999\` (substring search), 8 connections | $(run_wrk 8 -H "Authorization: Bearer $token" "$base/roles?q=role9999") | |"
