#!/usr/bin/env bash
# End-to-end throughput: pgbench directly against PostgreSQL, through pgbouncer (session mode)
# and through pgredact, interleaved round-robin, for
#   select  = `pgbench -S` (built-in select-only) as `dba` (unmasked: pgredact relays verbatim)
#   masked  = `SELECT * FROM customers WHERE customer_id = :id`: as `support` through pgredact
#             (masked: pgredact reads the masking view), as `dba` direct and through pgbouncer
#             (plain passthrough of the raw table: support is denied it there, by PostgreSQL)
# with 1 and 16 clients and pgbench modes simple, extended and prepared. Prints the median TPS
# per target and the ratios pgredact/pgbouncer and pgbouncer/direct.
#
# The masked workload has a fourth target, bouncer-rw: the SQL text pgredact sends upstream
# (taken from the server log, `... FROM "pgredact_masked"."customers" ...`) run as support
# through pgbouncer. It splits the masked gap in two: bouncer-rw/pgbouncer is what masking costs
# inside PostgreSQL (the view's mask expressions and keyed hash), pgredact/bouncer-rw is what
# pgredact itself costs compared with pgbouncer.
#
# Run by hand (not in CI), from anywhere:  bash benches/e2e.sh
# As root, PostgreSQL and pgbouncer run as the `postgres` OS user. Installs pgbouncer with apt
# when it is missing. Everything it starts lives in one temp dir and is stopped on exit.
#
# Settings (environment):
#   DURATION=5        seconds per pgbench run
#   ROUNDS=3          rounds per cell (the median is reported)
#   CLIENTS="1 16"    client counts
#   MODES="simple extended prepared"
#   WORKLOADS="select masked"   (also: cte = a masked lookup written with a WITH query)
#   SCALE=10          pgbench -i scale
#   PG_BIN=/usr/lib/postgresql/15/bin
#   KEEP=1            keep the temp dir (logs) after exit
#   SKIP_BUILD=1      use the existing target/release/pgredact
#   ENFORCEMENT=database  the policy's enforcement ("proxy": pgredact alone, per-statement checks)
#   FRESHNESS=true    pgredact's per_statement_freshness (proxy enforcement only)
#   MEMBERSHIP=true   pgredact's per_statement_membership (proxy enforcement only)
# Runtime: |CLIENTS| x |MODES| x (3 select + 4 masked targets) x ROUNDS x DURATION, plus about
# a minute of setup (more for the first release build): 2 x 3 x 7 x 3 x 5 s = 10.5 min by default.
set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-"1 16"}
MODES=${MODES:-"simple extended prepared"}
WORKLOADS=${WORKLOADS:-"select masked"}
SCALE=${SCALE:-10}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------
[[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl ]] ||
    die "PostgreSQL server binaries not found in $PG_BIN (apt-get install postgresql-15, or set PG_BIN)"
PGBENCH=$PG_BIN/pgbench
PSQL=$PG_BIN/psql
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found"
[[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql not found"

if ! command -v pgbouncer >/dev/null 2>&1 && [[ ! -x /usr/sbin/pgbouncer ]]; then
    [[ $(id -u) -eq 0 ]] || die "pgbouncer is missing; install it with: sudo apt-get install -y pgbouncer"
    log "installing pgbouncer (apt-get install -y pgbouncer)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y pgbouncer >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y pgbouncer >/dev/null; } ||
        die "apt-get install pgbouncer failed"
    # The package may start its own service on the default port; this script uses its own.
    if command -v service >/dev/null 2>&1; then service pgbouncer stop >/dev/null 2>&1 || true; fi
fi
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)

# PostgreSQL and pgbouncer refuse to run as root: run them as `postgres` then.
if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no postgres OS user"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet)
fi
PGREDACT=$ROOT/target/release/pgredact
[[ -x $PGREDACT ]] || die "$PGREDACT not found"

# ---------------------------------------------------------------------------------------------
# Temp dir, ports, cleanup
# ---------------------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/pgredact-e2e.XXXXXX)
chmod 0755 "$WORK"
mkdir -p "$WORK/pg" "$WORK/bouncer" "$WORK/pgredact/policies" "$WORK/results"
if [[ $(id -u) -eq 0 ]]; then chown -R postgres: "$WORK/pg" "$WORK/bouncer"; fi
chmod 0700 "$WORK/pg"

PGREDACT_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $PGREDACT_PID ]]; then kill "$PGREDACT_PID" 2>/dev/null || true; fi
    if [[ -f $WORK/bouncer/pgbouncer.pid ]]; then
        kill "$(cat "$WORK/bouncer/pgbouncer.pid")" 2>/dev/null || true
    fi
    if [[ -f $WORK/pg/data/postmaster.pid ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [[ -n $PGREDACT_PID ]]; then wait "$PGREDACT_PID" 2>/dev/null || true; fi
    if [[ ${KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A TCP port nothing listens on (from a random start, so parallel runs rarely collide).
declare -A TAKEN=()
free_port() {
    local p=$((20000 + RANDOM % 20000))
    while [[ -n ${TAKEN[$p]:-} ]] || ss -Htln "sport = :$p" | grep -q .; do
        p=$((p + 1))
    done
    TAKEN[$p]=1
    echo "$p"
}
PG_PORT=$(free_port)
BOUNCER_PORT=$(free_port)
PGREDACT_PORT=$(free_port)

wait_sql() { # port user: until `SELECT 1` succeeds (30 s)
    local _
    for _ in $(seq 1 300); do
        if "$PSQL" -h 127.0.0.1 -p "$1" -U "$2" -d app -XAtqc 'SELECT 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    die "nothing answers on port $1 as $2"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL 15 with the demo schema and pgbench tables
# ---------------------------------------------------------------------------------------------
log "initdb + start PostgreSQL on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 --locale=C \
    --no-sync >"$WORK/initdb.log" 2>&1 || die "initdb failed (see $WORK/initdb.log)"
cat >>"$WORK/pg/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK/pg'
max_connections = 200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
EOF
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w start >/dev/null ||
    die "PostgreSQL did not start (see $WORK/pg/server.log)"

export PGCONNECT_TIMEOUT=10
SQL() { "$PSQL" -h 127.0.0.1 -p "$PG_PORT" -U postgres -XAtq -v ON_ERROR_STOP=1 "$@"; }
SQL -d postgres -c 'CREATE DATABASE app'
log "loading src/demo_schema.sql and pgbench -i -s $SCALE into database app"
SQL -d app -f "$ROOT/src/demo_schema.sql" >/dev/null
"$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres app >"$WORK/pgbench-init.log" 2>&1 ||
    die "pgbench -i failed (see $WORK/pgbench-init.log)"
SQL -d app <<'EOF'
GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history
    TO dba, support;
VACUUM ANALYZE;
EOF

# ---------------------------------------------------------------------------------------------
# pgbouncer, session mode
# ---------------------------------------------------------------------------------------------
log "starting pgbouncer (session mode) on 127.0.0.1:$BOUNCER_PORT"
printf '"%s" ""\n' dba support postgres >"$WORK/bouncer/userlist.txt"
cat >"$WORK/bouncer/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$PG_PORT dbname=app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/bouncer/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 40
max_db_connections = 0
logfile = $WORK/bouncer/pgbouncer.log
pidfile = $WORK/bouncer/pgbouncer.pid
EOF
if [[ $(id -u) -eq 0 ]]; then chown -R postgres: "$WORK/bouncer"; fi
as_pg "$PGBOUNCER" -d -q "$WORK/bouncer/pgbouncer.ini" ||
    die "pgbouncer did not start (see $WORK/bouncer/pgbouncer.log)"
wait_sql "$BOUNCER_PORT" dba

# ---------------------------------------------------------------------------------------------
# pgredact
# ---------------------------------------------------------------------------------------------
log "starting pgredact on 127.0.0.1:$PGREDACT_PORT"
if [[ ${ENFORCEMENT:-database} == proxy ]]; then
    { echo 'enforcement = "proxy"'; cat "$ROOT/policies/app.toml"; } >"$WORK/pgredact/policies/app.toml"
else
    cp "$ROOT/policies/app.toml" "$WORK/pgredact/policies/"
fi
cat >"$WORK/pgredact/pgredact.toml" <<EOF
listen = "127.0.0.1:$PGREDACT_PORT"
policies = "policies"
per_statement_freshness = ${FRESHNESS:-true}
per_statement_membership = ${MEMBERSHIP:-true}

[upstream]
host = "127.0.0.1"
port = $PG_PORT
user = "pgredact"
password_env = "PGREDACT_E2E_UPSTREAM_PASSWORD"

[secrets]
hash_key_env = "PGREDACT_E2E_HASH_KEY"
EOF
# What a DBA runs once: the control schema, pgredact_admin, privileges, masking views.
"$PGREDACT" setup-sql --config "$WORK/pgredact/pgredact.toml" | SQL -d app >/dev/null
PGREDACT_E2E_UPSTREAM_PASSWORD=pgredact PGREDACT_E2E_HASH_KEY=e2e-bench-hash-key \
    PGREDACT_LOG=${PGREDACT_LOG:-warn} \
    "$PGREDACT" serve --config "$WORK/pgredact/pgredact.toml" >"$WORK/pgredact/pgredact.log" 2>&1 &
PGREDACT_PID=$!
wait_sql "$PGREDACT_PORT" dba

# Sanity: support is masked through pgredact and denied raw PII elsewhere; dba is not masked.
probe='SELECT email FROM customers WHERE customer_id = 1'
masked=$("$PSQL" -h 127.0.0.1 -p "$PGREDACT_PORT" -U support -d app -XAtqc "$probe")
raw=$("$PSQL" -h 127.0.0.1 -p "$BOUNCER_PORT" -U dba -d app -XAtqc "$probe")
unmasked=$("$PSQL" -h 127.0.0.1 -p "$PGREDACT_PORT" -U dba -d app -XAtqc "$probe")
denied=$("$PSQL" -h 127.0.0.1 -p "$BOUNCER_PORT" -U support -d app -XAtqc "$probe" 2>&1 || true)
log "customer 1 email: support via pgredact '$masked', dba via pgbouncer '$raw', dba via pgredact '$unmasked', support via pgbouncer: $denied"
[[ $masked == *'***@'* && $raw != "$masked" && $unmasked == "$raw" ]] ||
    die "masking sanity check failed"
if [[ ${ENFORCEMENT:-database} != proxy && $denied != *'permission denied'* ]]; then
    die "support read raw PII straight from PostgreSQL"
fi

# The text pgredact sends upstream for the masked lookup, from the server log.
SQL -d app -c "ALTER SYSTEM SET log_statement = 'all'" -c 'SELECT pg_reload_conf()' >/dev/null
"$PSQL" -h 127.0.0.1 -p "$PGREDACT_PORT" -U support -d app -XAtqc \
    'SELECT * FROM customers WHERE customer_id = 4242' >/dev/null
SQL -d app -c 'ALTER SYSTEM RESET log_statement' -c 'SELECT pg_reload_conf()' >/dev/null
rewritten=$(grep -a 'statement: SELECT .*customer_id = 4242$' "$WORK/pg/server.log" | tail -1 |
    sed 's/^.*statement: //')
[[ $rewritten == *'pgredact_masked'* ]] || die "no rewritten lookup in $WORK/pg/server.log"
log "rewritten lookup: ${#rewritten} bytes (46 sent by the client)"

# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------
printf '%s\n%s;\n' '\set id random(1, 10000)' \
    'SELECT * FROM customers WHERE customer_id = :id' >"$WORK/masked.sql"
printf '%s\n%s;\n' '\set id random(1, 10000)' "${rewritten%4242}:id" >"$WORK/masked-rw.sql"
printf '%s\n%s\n%s;\n' '\set id random(1, 10000)' \
    'WITH o AS (SELECT customer_id, count(*) AS n FROM orders WHERE customer_id = :id GROUP BY 1)' \
    'SELECT c.customer_id, c.email, c.tier, o.n FROM customers c JOIN o USING (customer_id)' \
    >"$WORK/cte.sql"

targets_of() { # workload
    case $1 in
        select | cte) echo direct pgbouncer pgredact ;;
        masked) echo direct pgbouncer pgredact bouncer-rw ;;
    esac
}

# run_one workload clients mode target -> prints TPS
run_one() {
    local workload=$1 clients=$2 mode=$3 target=$4 out user port
    case $target in
        direct) port=$PG_PORT ;;
        pgbouncer | bouncer-rw) port=$BOUNCER_PORT ;;
        pgredact) port=$PGREDACT_PORT ;;
    esac
    local -a args=(-h 127.0.0.1 -p "$port" -n -T "$DURATION"
        -c "$clients" -j "$((clients < 2 ? clients : 2))" -M "$mode")
    case $workload:$target in
        select:*) user=dba; args+=(-S) ;;
        masked:bouncer-rw) user=support; args+=(-f "$WORK/masked-rw.sql") ;;
        masked:pgredact) user=support; args+=(-f "$WORK/masked.sql") ;;
        masked:*) user=dba; args+=(-f "$WORK/masked.sql") ;;
        cte:pgredact) user=support; args+=(-f "$WORK/cte.sql") ;;
        cte:*) user=dba; args+=(-f "$WORK/cte.sql") ;;
    esac
    out="$WORK/results/$workload-c$clients-$mode-$target-$(date +%s%N).log"
    if ! "$PGBENCH" "${args[@]}" -U "$user" app >"$out" 2>&1; then
        log "pgbench failed: $workload c=$clients $mode $target (see $out)"
        tail -5 "$out" >&2
        return 1
    fi
    if grep -q 'number of failed transactions: [1-9]' "$out"; then
        log "warning: failed transactions in $out"
    fi
    sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | head -1
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END {
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

read -ra W <<<"$WORKLOADS"
read -ra C <<<"$CLIENTS"
read -ra M <<<"$MODES"
for w in "${W[@]}"; do [[ $w =~ ^(select|masked|cte)$ ]] || die "unknown workload $w"; done
for m in "${M[@]}"; do [[ $m =~ ^(simple|extended|prepared)$ ]] || die "unknown mode $m"; done
runs=0
for w in "${W[@]}"; do
    read -ra T <<<"$(targets_of "$w")"
    runs=$((runs + ${#C[@]} * ${#M[@]} * ${#T[@]} * ROUNDS))
done
log "$runs pgbench runs of ${DURATION}s: about $((runs * DURATION / 60 + 1)) min"

declare -A TPS=()
for w in "${W[@]}"; do
    read -ra T <<<"$(targets_of "$w")"
    for c in "${C[@]}"; do
        for m in "${M[@]}"; do
            for ((r = 0; r < ROUNDS; r++)); do
                # Rotate the starting target each round so none always runs first.
                for ((k = 0; k < ${#T[@]}; k++)); do
                    t=${T[$(((r + k) % ${#T[@]}))]}
                    tps=$(run_one "$w" "$c" "$m" "$t") || exit 1
                    [[ -n $tps ]] || die "no TPS in the pgbench output for $w c=$c $m $t"
                    TPS[$w,$c,$m,$t]="${TPS[$w,$c,$m,$t]:-}${TPS[$w,$c,$m,$t]:+ }$tps"
                done
            done
            line="$w c=$c $m:"
            for t in "${T[@]}"; do line+=" $t [${TPS[$w,$c,$m,$t]}]"; done
            log "$line"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
echo
echo "pgbench TPS, median of $ROUNDS interleaved rounds of ${DURATION}s; $(nproc) cores;" \
    "$(date -u '+%Y-%m-%d %H:%M UTC'); load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
fmt='| %-8s | %7s | %-8s | %8s | %9s | %8s | %10s | %16s | %14s | %18s | %18s |\n'
# shellcheck disable=SC2059 # the format is a constant
printf "$fmt" workload clients mode direct pgbouncer pgredact bouncer-rw \
    'pgredact/bouncer' 'bouncer/direct' 'pgredact/bouncer-rw' 'bouncer-rw/bouncer'
# shellcheck disable=SC2059
printf "$fmt" --- ---: --- ---: ---: ---: ---: ---: ---: ---: ---:
for w in "${W[@]}"; do
    for c in "${C[@]}"; do
        for m in "${M[@]}"; do
            # shellcheck disable=SC2086 # word splitting of the TPS lists is intended
            d=$(median ${TPS[$w,$c,$m,direct]})
            # shellcheck disable=SC2086
            b=$(median ${TPS[$w,$c,$m,pgbouncer]})
            # shellcheck disable=SC2086
            p=$(median ${TPS[$w,$c,$m,pgredact]})
            rw=- prw=- rwb=-
            if [[ -n ${TPS[$w,$c,$m,bouncer-rw]:-} ]]; then
                # shellcheck disable=SC2086
                rw=$(median ${TPS[$w,$c,$m,bouncer-rw]})
                prw=$(ratio "$p" "$rw")
                rwb=$(ratio "$rw" "$b")
                rw=$(printf '%.0f' "$rw")
            fi
            # shellcheck disable=SC2059
            printf "$fmt" "$w" "$c" "$m" "$(printf '%.0f' "$d")" "$(printf '%.0f' "$b")" \
                "$(printf '%.0f' "$p")" "$rw" "$(ratio "$p" "$b")" "$(ratio "$b" "$d")" "$prw" "$rwb"
        done
    done
done
echo
echo "select: pgbench -S as dba (unmasked; pgredact relays it verbatim)."
echo "masked: SELECT * FROM customers WHERE customer_id = :id: as support through pgredact (masked),"
echo "        as dba direct and through pgbouncer (raw passthrough); bouncer-rw runs pgredact's"
echo "        rewritten SQL as support through pgbouncer (masking cost inside PostgreSQL)."
if [[ " ${W[*]} " == *" cte "* ]]; then
    echo "cte:    the masked lookup as a WITH query (orders per customer joined to customers), as support."
fi
