#!/usr/bin/env bash
# What the audit trail costs: the masked lookup `SELECT * FROM customers WHERE customer_id = :id`
# as `support` through two pgredact instances on one PostgreSQL, one without and one with
# `[audit]`, interleaved round-robin; prints the median TPS of each and their ratio, and checks
# the audit log with `pgredact audit verify` at the end.
#
# Run by hand (not in CI):  bash benches/audit.sh
# As root, PostgreSQL runs as the `postgres` OS user. Settings (environment):
#   DURATION=5 ROUNDS=3 CLIENTS="1 16" MODES="simple prepared"
#   PG_BIN=/usr/lib/postgresql/15/bin   PGREDACT=target/release/pgredact (built when missing)
#   FSYNC_MS=1000 (the audit's fsync_interval_ms)   KEEP=1 (keep the temp dir)
set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-"1 16"}
MODES=${MODES:-"simple prepared"}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGREDACT=${PGREDACT:-$ROOT/target/release/pgredact}
log() { printf '[audit-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
[[ -x $PG_BIN/initdb ]] || die "PostgreSQL server binaries not found in $PG_BIN"
PGBENCH=$PG_BIN/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench)
PSQL=$PG_BIN/psql
[[ -x $PSQL ]] || PSQL=$(command -v psql)
if [[ ! -x $PGREDACT ]]; then (cd "$ROOT" && cargo build --release --quiet); fi
if [[ $(id -u) -eq 0 ]]; then as_pg() { runuser -u postgres -- "$@"; }; else as_pg() { "$@"; }; fi

WORK=$(mktemp -d /tmp/pgredact-audit-bench.XXXXXX)
chmod 0755 "$WORK"
mkdir -p "$WORK/pg" "$WORK/plain/policies" "$WORK/audit/policies" "$WORK/results"
if [[ $(id -u) -eq 0 ]]; then chown -R postgres: "$WORK/pg"; fi
chmod 0700 "$WORK/pg"
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -f $WORK/pg/data/postmaster.pid ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
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
wait_sql() {
    for _ in $(seq 1 300); do
        "$PSQL" -h 127.0.0.1 -p "$1" -U "$2" -d app -XAtqc 'SELECT 1' >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "nothing answers on port $1 as $2"
}

log "PostgreSQL on $PG_PORT"
as_pg "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
    >"$WORK/initdb.log" 2>&1 || die "initdb failed"
cat >>"$WORK/pg/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/pg'
max_connections = 200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
log_min_messages = warning
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w start >/dev/null
SQL() { "$PSQL" -h 127.0.0.1 -p "$PG_PORT" -U postgres -XAtq -v ON_ERROR_STOP=1 "$@"; }
SQL -d postgres -c 'CREATE DATABASE app'
SQL -d app -f "$ROOT/src/demo_schema.sql" >/dev/null
SQL -d app -c 'VACUUM ANALYZE' >/dev/null

declare -A PORT=()
for inst in plain audit; do
    PORT[$inst]=$(free_port)
    cp "$ROOT/policies/app.toml" "$WORK/$inst/policies/"
    cat >"$WORK/$inst/pgredact.toml" <<EOF
listen = "127.0.0.1:${PORT[$inst]}"
policies = "policies"
[upstream]
host = "127.0.0.1"
port = $PG_PORT
user = "pgredact"
password_env = "PGREDACT_BENCH_UPSTREAM_PASSWORD"
[secrets]
hash_key_env = "PGREDACT_BENCH_HASH_KEY"
EOF
    if [[ $inst == audit ]]; then
        printf '[audit]\npath = "log/audit.jsonl"\nfsync_interval_ms = %s\n' "${FSYNC_MS:-1000}" \
            >>"$WORK/$inst/pgredact.toml"
        mkdir -p "$WORK/$inst/log"
    fi
done
"$PGREDACT" setup-sql --config "$WORK/plain/pgredact.toml" | SQL -d app >/dev/null
for inst in plain audit; do
    PGREDACT_BENCH_UPSTREAM_PASSWORD=pgredact PGREDACT_BENCH_HASH_KEY=bench-key PGREDACT_LOG=warn \
        "$PGREDACT" serve --config "$WORK/$inst/pgredact.toml" >"$WORK/$inst/pgredact.log" 2>&1 &
    PIDS+=($!)
    wait_sql "${PORT[$inst]}" dba
done
printf '%s\n%s;\n' '\set id random(1, 10000)' \
    'SELECT * FROM customers WHERE customer_id = :id' >"$WORK/masked.sql"

run_one() { # clients mode instance -> TPS
    local out="$WORK/results/c$1-$2-$3-$(date +%s%N).log"
    "$PGBENCH" -h 127.0.0.1 -p "${PORT[$3]}" -n -T "$DURATION" -c "$1" -j "$(($1 < 2 ? $1 : 2))" \
        -M "$2" -f "$WORK/masked.sql" -U support app >"$out" 2>&1 || die "pgbench failed ($out)"
    sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -1
}
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A TPS=()
for c in $CLIENTS; do
    for m in $MODES; do
        for ((r = 0; r < ROUNDS; r++)); do
            order=(plain audit)
            ((r % 2)) && order=(audit plain)
            for i in "${order[@]}"; do TPS[$c,$m,$i]+=" $(run_one "$c" "$m" "$i")"; done
        done
        log "c=$c $m: plain [${TPS[$c,$m,plain]} ] audit [${TPS[$c,$m,audit]} ]"
    done
done

echo
echo "masked lookup as support, TPS, median of $ROUNDS interleaved rounds of ${DURATION}s; $(nproc) cores"
printf '| %7s | %-8s | %9s | %9s | %11s |\n' clients mode 'no audit' audit 'audit/none'
printf '| %7s | %-8s | %9s | %9s | %11s |\n' ---: --- ---: ---: ---:
for c in $CLIENTS; do
    for m in $MODES; do
        # shellcheck disable=SC2086 # word splitting of the TPS lists is intended
        p=$(median ${TPS[$c,$m,plain]})
        # shellcheck disable=SC2086
        a=$(median ${TPS[$c,$m,audit]})
        printf '| %7s | %-8s | %9.0f | %9.0f | %11s |\n' "$c" "$m" "$p" "$a" \
            "$(awk -v a="$a" -v b="$p" 'BEGIN { printf "%.2fx", a / b }')"
    done
done
kill "${PIDS[1]}"
wait "${PIDS[1]}" || true
files=("$WORK"/audit/log/audit.jsonl.* "$WORK/audit/log/audit.jsonl")
[[ -e ${files[0]} ]] || files=("$WORK/audit/log/audit.jsonl")
echo
echo "audit log: $(cat "${files[@]}" | wc -l) records, $(du -ch "${files[@]}" | tail -1 | cut -f1)"
"$PGREDACT" audit verify "${files[@]}"
