#!/usr/bin/env bash
# Lifecycle figures: how long `pgredact serve` takes to drain under load after SIGTERM, what
# the clients see, and how long a SIGHUP takes to put a new mask in force.
#
#   drain, select:   pgbench -S (unmasked dba), CLIENTS clients, SIGTERM after WARMUP seconds
#   drain, masked:   the masked lookup as support, the same way
#   drain, tx:       transactions `BEGIN; INSERT; SELECT pg_sleep(SLEEP); INSERT; END` as dba:
#                    each transaction that had begun must commit whole (both rows) or not at all
#   reload:          SIGHUP after a policy change, until a psql statement sees the new mask
#                    (each psql is a new connection: the figure includes its connect time)
#
# Run by hand (not in CI):  bash benches/lifecycle.sh
# As root, PostgreSQL runs as the `postgres` OS user. Everything lives in one temp dir.
# Settings (environment): CLIENTS=16 WARMUP=5 SLEEP=0.5 SHUTDOWN=30 RELOADS=5 SCALE=10
#   PG_BIN=/usr/lib/postgresql/15/bin  PGREDACT=target/release/pgredact (built unless given)
#   KEEP=1 keeps the temp dir.
set -euo pipefail

CLIENTS=${CLIENTS:-16}
WARMUP=${WARMUP:-5}
SLEEP=${SLEEP:-0.5}
SHUTDOWN=${SHUTDOWN:-30}
RELOADS=${RELOADS:-5}
SCALE=${SCALE:-10}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[lifecycle %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
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

WORK=$(mktemp -d /tmp/pgredact-lifecycle.XXXXXX)
chmod 0755 "$WORK"
mkdir -p "$WORK/pg" "$WORK/pgredact/policies"
if [[ $(id -u) -eq 0 ]]; then chown -R postgres: "$WORK/pg"; fi
chmod 0700 "$WORK/pg"
PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
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
SQL -d app <<'EOF'
GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers TO dba;
CREATE TABLE drain_log (client int, step int);
GRANT INSERT ON drain_log TO dba;
EOF
cp "$ROOT/policies/app.toml" "$WORK/pgredact/policies/"
cat >"$WORK/pgredact/pgredact.toml" <<EOF
listen = "127.0.0.1:$PORT"
policies = "policies"
policy_reload_secs = 3600
shutdown_timeout_secs = $SHUTDOWN
[upstream]
host = "127.0.0.1"
port = $PG_PORT
user = "pgredact"
password_env = "PGREDACT_LC_PASSWORD"
[secrets]
hash_key_env = "PGREDACT_LC_KEY"
EOF
export PGREDACT_LC_PASSWORD=pgredact PGREDACT_LC_KEY=lifecycle-bench-key
"$PGREDACT" setup-sql --config "$WORK/pgredact/pgredact.toml" | SQL -d app >/dev/null

start() {
    PGREDACT_LOG=info "$PGREDACT" serve --config "$WORK/pgredact/pgredact.toml" \
        >>"$WORK/pgredact/serve.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 300); do
        "$PSQL" -h 127.0.0.1 -p "$PORT" -U dba -d app -XAtqc 'SELECT 1' >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "pgredact did not come up"
}
now() { date +%s.%N; }
secs() { awk "BEGIN { printf \"%.3f\", $2 - $1 }"; }

# drain NAME pgbench-args...: SIGTERM after WARMUP s of load; prints the time to exit.
drain() {
    local name=$1 out=$WORK/$1.log t0 t1 st=0
    shift
    start
    "$PGBENCH" -h 127.0.0.1 -p "$PORT" -n -T $((WARMUP + 60)) -c "$CLIENTS" -j 2 "$@" app >"$out" 2>&1 &
    local bench=$!
    sleep "$WARMUP"
    t0=$(now)
    kill -TERM "$PID"
    wait "$PID" || st=$?
    t1=$(now)
    PID=
    wait "$bench" || true
    local tps aborted
    tps=$(grep -Eo 'tps = [0-9.]+' "$out" | head -1 || true)
    aborted=$(grep -c 'aborted in command' "$out" || true)
    printf '%-8s SIGTERM to exit %s s, exit status %d; pgbench: %s, %s client(s) ended by the drain\n' \
        "$name" "$(secs "$t0" "$t1")" "$st" "${tps:-?}" "$aborted"
    grep -Eo 'aborted in command [0-9]+' "$out" | sort | uniq -c | sed 's/^/         /' || true
}

drain select -S -U dba
printf '%s\n%s;\n' '\set id random(1, 10000)' \
    'SELECT * FROM customers WHERE customer_id = :id' >"$WORK/masked.sql"
drain masked -f "$WORK/masked.sql" -U support
cat >"$WORK/tx.sql" <<EOF
BEGIN;
INSERT INTO drain_log VALUES (:client_id, 1);
SELECT pg_sleep($SLEEP);
INSERT INTO drain_log VALUES (:client_id, 2);
END;
EOF
drain tx -f "$WORK/tx.sql" -U dba
pairs=$(SQL -d app -c "SELECT count(*) FILTER (WHERE step = 1) || ' begun, ' || count(*) FILTER (WHERE step = 2) || ' finished' FROM drain_log")
echo "         tx rows: $pairs (equal: no transaction was cut)"

# SIGHUP: time until a new connection's statement sees the new mask.
start
q='SELECT city FROM customers WHERE customer_id = 1'
for i in $(seq 1 "$RELOADS"); do
    if ((i % 2)); then
        sed 's/^columns.birth_date = "year"$/columns.birth_date = "year"\ncolumns.city = "redact"/' \
            "$ROOT/policies/app.toml" >"$WORK/pgredact/policies/app.toml"
        want='****'
    else
        cp "$ROOT/policies/app.toml" "$WORK/pgredact/policies/app.toml"
        want=$(SQL -d app -c "$q")
    fi
    t0=$(now)
    kill -HUP "$PID"
    until [[ $("$PSQL" -h 127.0.0.1 -p "$PORT" -U support -d app -XAtqc "$q") == "$want" ]]; do :; done
    t1=$(now)
    printf 'reload   SIGHUP to the new mask: %s s\n' "$(secs "$t0" "$t1")"
done
