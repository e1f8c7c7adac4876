#!/usr/bin/env bash
# Metrics overhead: pgbench through `pgredact serve` (with [admin], so /metrics is served) for an
# unmasked role (`pgbench -S` as dba) and a masked one (the lookup
# `SELECT * FROM customers WHERE customer_id = :id` as support), each without and with a scraper
# fetching /metrics every 100 ms (curl in a loop), interleaved over ROUNDS rounds.
#
# Run by hand (not in CI):  bash benches/metrics.sh
# As root, PostgreSQL runs as the `postgres` OS user. Everything lives in one temp dir.
# Settings (environment): CLIENTS=8 DURATION=15 ROUNDS=3 SCALE=10 INTERVAL=0.1
#   PG_BIN=/usr/lib/postgresql/15/bin  PGREDACT=target/release/pgredact (built unless given)
#   KEEP=1 keeps the temp dir.
set -euo pipefail

CLIENTS=${CLIENTS:-8}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
INTERVAL=${INTERVAL:-0.1}
SCALE=${SCALE:-10}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[metrics %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
[[ -x $PG_BIN/initdb ]] || die "PostgreSQL server binaries not found in $PG_BIN"
PGBENCH=$(command -v pgbench || echo "$PG_BIN/pgbench")
PSQL=$(command -v psql || echo "$PG_BIN/psql")
if [[ $(id -u) -eq 0 ]]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi
if [[ -z ${PGREDACT:-} ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
    PGREDACT=${CARGO_TARGET_DIR:-$ROOT/target}/release/pgredact
fi
[[ -x $PGREDACT ]] || die "$PGREDACT not found"

WORK=$(mktemp -d /tmp/pgredact-metrics.XXXXXX)
chmod 0755 "$WORK"
mkdir -p "$WORK/pg" "$WORK/pgredact/policies"
if [[ $(id -u) -eq 0 ]]; then chown -R postgres: "$WORK/pg"; fi
chmod 0700 "$WORK/pg"
PID=
SCRAPER=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $SCRAPER ]]; then kill "$SCRAPER" 2>/dev/null || true; fi
    if [[ -n $PID ]]; then kill -9 "$PID" 2>/dev/null || true; fi
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    if [[ ${KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() {
    local p=$((20000 + RANDOM % 20000))
    while ss -Htln "sport = :$p" | grep -q .; do p=$((p + 1)); done
    echo "$p"
}
PG_PORT=$(free_port)
PORT=$(free_port)
while [[ $PORT == "$PG_PORT" ]]; do PORT=$(free_port); done
ADMIN_PORT=$(free_port)
while [[ $ADMIN_PORT == "$PG_PORT" || $ADMIN_PORT == "$PORT" ]]; do ADMIN_PORT=$(free_port); done

as_pg "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 --locale=C \
    --no-sync >"$WORK/initdb.log" 2>&1 || die "initdb failed"
cat >>"$WORK/pg/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/pg'
max_connections = 200
fsync = off
synchronous_commit = off
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w start >/dev/null
SQL() { "$PSQL" -h 127.0.0.1 -p "$PG_PORT" -U postgres -XAtq -v ON_ERROR_STOP=1 "$@"; }
SQL -d postgres -c 'CREATE DATABASE app'
SQL -d app -f "$ROOT/src/demo_schema.sql" >/dev/null
"$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres app >/dev/null 2>&1
SQL -d app -c 'GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers TO dba' 
cp "$ROOT/policies/app.toml" "$WORK/pgredact/policies/"
cat >"$WORK/pgredact/pgredact.toml" <<EOF
listen = "127.0.0.1:$PORT"
policies = "policies"
policy_reload_secs = 3600
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token_env = "PGREDACT_LC_TOKEN"
[upstream]
host = "127.0.0.1"
port = $PG_PORT
user = "pgredact"
password_env = "PGREDACT_LC_PASSWORD"
[secrets]
hash_key_env = "PGREDACT_LC_KEY"
EOF
export PGREDACT_LC_PASSWORD=pgredact PGREDACT_LC_KEY=metrics-bench-key PGREDACT_LC_TOKEN=metrics-bench-token
"$PGREDACT" setup-sql --config "$WORK/pgredact/pgredact.toml" | SQL -d app >/dev/null

PGREDACT_LOG=info "$PGREDACT" serve --config "$WORK/pgredact/pgredact.toml" \
    >>"$WORK/pgredact/serve.log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do
    "$PSQL" -h 127.0.0.1 -p "$PORT" -U dba -d app -XAtqc 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || die "pgredact is not ready"
printf '%s\n%s;\n' '\set id random(1, 10000)' \
    'SELECT * FROM customers WHERE customer_id = :id' >"$WORK/masked.sql"

scraper_on() {
    (
        n=0
        while :; do
            curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics" && n=$((n + 1))
            echo "$n" >"$WORK/scrapes"
            sleep "$INTERVAL"
        done
    ) &
    SCRAPER=$!
}
scraper_off() {
    kill "$SCRAPER" 2>/dev/null || true
    wait "$SCRAPER" 2>/dev/null || true
    SCRAPER=
}
# run NAME SCRAPE pgbench-args...: prints and records the tps.
declare -A TPS
run() {
    local name=$1 scrape=$2 out=$WORK/run.log tps
    shift 2
    if [[ $scrape == with ]]; then scraper_on; fi
    "$PGBENCH" -h 127.0.0.1 -p "$PORT" -n -T "$DURATION" -c "$CLIENTS" -j 2 "$@" app >"$out" 2>&1 ||
        die "pgbench failed: $(cat "$out")"
    if [[ $scrape == with ]]; then scraper_off; fi
    tps=$(grep -Eo 'tps = [0-9.]+' "$out" | head -1 | awk '{print $3}')
    TPS[$name.$scrape]="${TPS[$name.$scrape]:-} $tps"
    printf '%-9s %-12s tps %s\n' "$name" "$scrape scrape" "$tps"
}
for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS"
    # Alternate the order so drift (other jobs, caches) does not favour one side.
    if ((r % 2)); then order="without with"; else order="with without"; fi
    for s in $order; do run unmasked "$s" -S -U dba; done
    for s in $order; do run masked "$s" -f "$WORK/masked.sql" -U support; done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo
echo "median tps over $ROUNDS rounds, $CLIENTS clients, $DURATION s each; scraper every $INTERVAL s:"
for name in unmasked masked; do
    a=$(echo "${TPS[$name.without]}" | median)
    b=$(echo "${TPS[$name.with]}" | median)
    printf '%-9s without %10.1f   with %10.1f   change %+.1f%%\n' "$name" "$a" "$b" \
        "$(awk "BEGIN { print ($b - $a) / $a * 100 }")"
done
curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^pgredact_(statements|sessions_total|rewrite_cache)' || true
