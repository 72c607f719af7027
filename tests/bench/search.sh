#!/usr/bin/env bash
# Role search over 100,000 roles: `GET /core4/api/v1/roles?q=…` under wrk, 8 connections.
#
#   CORE4_ADMIN_PASSWORD=… tests/bench/search.sh http://127.0.0.1:5001
#
# Tops the server up to 100,000 roles through the API first (roles without email or password,
# so no password hashing; 8 connections of wrk with tests/bench/seed_roles.lua), then searches
# for a term that matches about a dozen roles per seeding run. Prints one line:
#   RESULT search core4d p50_ms=… p99_ms=… req_per_s=…
# Whether core4d searches through the trigram index or scans decides the figure: its log says
# at startup (a warning when it scans). To compare on one server, start core4d once as a
# database user that may not create pg_trgm (it reads every role), run this, then
# `CREATE EXTENSION pg_trgm;` as a superuser, restart core4d (it builds the index) and run again.
# Needs: wrk, curl, python3.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
url=${1:?usage: search.sh URL}
roles=${ROLES:-100000}
duration=${DURATION:-10s}
q=${QUERY:-t1n4242}
base=${url%/}/core4/api/v1
: "${CORE4_ADMIN_PASSWORD:?set CORE4_ADMIN_PASSWORD to the admin password}"

json() { python3 -c "import sys,json; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
token=$(curl -sfG "$base/login" --data-urlencode username=admin \
    --data-urlencode "password=$CORE4_ADMIN_PASSWORD" | json 'd["data"]["token"]')
total() { curl -sf -H "Authorization: Bearer $token" "$base/roles?per_page=1" | json 'd["total_count"]'; }

have=$(total)
if [ "$have" -lt "$roles" ]; then
    need=$((roles - have))
    t0=$(date +%s)
    # Each of the 2 threads stops sending after its share of responses (a few in flight may add
    # to it); wrk itself only ends after -d, so it is ended here once the roles are in.
    wrk -t2 -c8 -d1h -H "Authorization: Bearer $token" -s "$here/seed_roles.lua" "$base/roles" \
        -- $(((need + 1) / 2)) "s$(date +%s)" >/dev/null &
    seeder=$!
    trap 'kill $seeder 2>/dev/null || true' EXIT
    while kill -0 "$seeder" 2>/dev/null && [ "$(total)" -lt "$roles" ]; do sleep 2; done
    kill "$seeder" 2>/dev/null || true
    wait "$seeder" 2>/dev/null || true
    have=$(total)
    echo "seeded $need roles in $(( $(date +%s) - t0 )) s; the server holds $have" >&2
fi
[ "$have" -ge "$roles" ] || { echo "only $have roles after seeding" >&2; exit 1; }
matches=$(curl -sf -H "Authorization: Bearer $token" "$base/roles?per_page=1&q=$q" | json 'd["total_count"]')
echo "q=$q matches $matches of $have roles" >&2

out=$(wrk -t2 -c8 -d"$duration" --latency -H "Authorization: Bearer $token" "$base/roles?q=$q")
echo "$out" >&2
if grep -q "Non-2xx" <<<"$out"; then echo "some searches failed" >&2; exit 1; fi
# wrk prints latencies as 812.00us, 1.23ms or 1.50s.
awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0;
                      if (v ~ /m$/) return v * 60000; return v * 1000 }
     /^ +50%/ {p50 = ms($2)} /^ +99%/ {p99 = ms($2)} /Requests\/sec/ {rps = $2}
     END {printf "RESULT search core4d p50_ms=%.2f p99_ms=%.2f req_per_s=%.1f\n", p50, p99, rps}' <<<"$out"
