#!/usr/bin/env bash
# Forget benchmark (by hand, not in CI): builds a throwaway PostgreSQL cluster with
# 1,000,000 customers, 10,000,000 events and 2,000,000 orders, forgets 50,000 customers with
# `pgredact forget --csv`, and measures how much the suppression triggers slow down a bulk COPY.
#
#   benches/forget_bench.sh                      # full size (about 3 GB of disk, ~10 minutes)
#   CUSTOMERS=100000 EVENTS=1000000 ORDERS=200000 FORGET=5000 benches/forget_bench.sh   # quick
#
# Environment: PGREDACT_BIN (default: target/release/pgredact, built if missing), PG_BIN (the
# directory with initdb/pg_ctl; default: the newest /usr/lib/postgresql/*/bin), BENCH_DIR (default:
# a new directory under /tmp), LOAD_ROWS (rows per ingest COPY, default 1,000,000), KEEP=1 keeps
# the cluster running at the end. Runs PostgreSQL as the `postgres` OS user when started as root.
set -euo pipefail

CUSTOMERS=${CUSTOMERS:-1000000}
EVENTS=${EVENTS:-10000000}
ORDERS=${ORDERS:-2000000}
FORGET=${FORGET:-50000}
LOAD_ROWS=${LOAD_ROWS:-1000000}
LOAD_RUNS=${LOAD_RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [[ -z "${PG_BIN:-}" ]]; then
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    [[ -n "$PG_BIN" ]] || PG_BIN=$(dirname "$(command -v pg_ctl)")
fi
PGREDACT_BIN=${PGREDACT_BIN:-$ROOT/target/release/pgredact}
if [[ ! -x "$PGREDACT_BIN" ]]; then
    (cd "$ROOT" && cargo build --release)
fi

BENCH_DIR=${BENCH_DIR:-$(mktemp -d /tmp/pgredact-forget-bench.XXXXXX)}
mkdir -p "$BENCH_DIR"
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
RUN=()
if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$BENCH_DIR"
    RUN=(runuser -u postgres --)
fi
chmod 0755 "$BENCH_DIR"

cleanup() {
    if [[ "${KEEP:-0}" != 1 ]]; then
        "${RUN[@]}" "$PG_BIN/pg_ctl" -D "$BENCH_DIR/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$BENCH_DIR"
    else
        echo "cluster kept: port $PORT, directory $BENCH_DIR"
    fi
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }
export PGOPTIONS="-c client_min_messages=warning"
psql_su() { psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }

echo "== cluster: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') in $BENCH_DIR (port $PORT)"
"${RUN[@]}" "$PG_BIN/initdb" -D "$BENCH_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
cat >>"$BENCH_DIR/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$BENCH_DIR'
shared_buffers = '2GB'
maintenance_work_mem = '1GB'
work_mem = '64MB'
max_wal_size = '16GB'
checkpoint_timeout = '30min'
autovacuum = off
EOF
"${RUN[@]}" "$PG_BIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" -w start >/dev/null

psql_su -d postgres -c "CREATE ROLE pgredact LOGIN" -c "CREATE ROLE loader LOGIN" -c "CREATE DATABASE app"

echo "== data: $CUSTOMERS customers, $EVENTS events, $ORDERS orders"
t0=$(now)
psql_su -d app <<SQL
SET client_min_messages = warning;
CREATE TABLE customers (
    customer_id bigint PRIMARY KEY, first_name text, last_name text, email text, phone text,
    address text, country text, birth_date date, tier text NOT NULL DEFAULT 'standard',
    lifetime_value numeric(12,2), created_at timestamptz);
CREATE TABLE customer_events (
    event_id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers, event_type text,
    ip_address inet, user_agent text, payload jsonb, occurred_at timestamptz);
CREATE TABLE orders (
    order_id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers, amount numeric(12,2),
    status text, shipping_address text, ordered_at timestamptz);
INSERT INTO customers
SELECT i, 'First' || (i % 997), 'Last' || (i % 1009), 'user' || i || '@example.com',
       '+1 555 ' || lpad((i % 10000000)::text, 7, '0'), (i % 250) || ' Main Street',
       (ARRAY['US','UK','DE','FR','JP'])[1 + i % 5], date '1950-01-01' + (i % 20000)::int,
       (ARRAY['standard','silver','gold'])[1 + i % 3], (i % 100000) / 10.0,
       timestamptz '2019-01-01' + i * interval '1 minute'
FROM generate_series(1::bigint, $CUSTOMERS) i;
INSERT INTO customer_events (customer_id, event_type, ip_address, user_agent, payload, occurred_at)
SELECT 1 + (i * 7919) % $CUSTOMERS, (ARRAY['page_view','login','purchase','email_open'])[1 + i % 4],
       ('10.' || (i % 250) || '.' || (i / 250 % 250) || '.' || (1 + i % 200))::inet,
       'Mozilla/5.0 (X11; Linux x86_64) bench/' || (i % 50),
       jsonb_build_object('path', '/p/' || (i % 1000)), timestamptz '2023-01-01' + i * interval '1 second'
FROM generate_series(1::bigint, $EVENTS) i;
INSERT INTO orders (customer_id, amount, status, shipping_address, ordered_at)
SELECT 1 + (i * 104729) % $CUSTOMERS, (i % 50000) / 100.0, (ARRAY['paid','shipped','delivered'])[1 + i % 3],
       (i % 250) || ' Oak Avenue', timestamptz '2022-01-01' + i * interval '10 seconds'
FROM generate_series(1::bigint, $ORDERS) i;
CREATE INDEX ON customer_events (customer_id);
CREATE INDEX ON orders (customer_id);
ALTER TABLE customers OWNER TO pgredact;
ALTER TABLE customer_events OWNER TO pgredact;
ALTER TABLE orders OWNER TO pgredact;
GRANT CONNECT, CREATE ON DATABASE app TO pgredact;
GRANT SELECT, INSERT, UPDATE ON customers, customer_events, orders TO loader;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO loader;
VACUUM ANALYZE;
CHECKPOINT;
SQL
echo "   built in $(elapsed "$t0" "$(now)") s"

mkdir -p "$BENCH_DIR/cfg/policies"
cat >"$BENCH_DIR/cfg/pgredact.toml" <<EOF
[upstream]
host = "127.0.0.1"
port = $PORT
user = "pgredact"
[secrets]
hash_key_env = "PGREDACT_BENCH_HASH_KEY"
EOF
cat >"$BENCH_DIR/cfg/policies/app.toml" <<'EOF'
database = "app"
[tables."public.customers"]
subject = "customer_id"
columns.first_name = "null"
columns.last_name = "null"
columns.email = "email"
columns.phone = "null"
columns.address = "null"
columns.country = "null"
columns.birth_date = "year"
[tables."public.customer_events"]
subject = "customer_id"
columns.ip_address = "null"
columns.user_agent = "null"
columns.payload = "null"
[tables."public.orders"]
subject = "customer_id"
columns.shipping_address = "null"
EOF
export PGREDACT_BENCH_HASH_KEY=bench-key-not-secret
# Every (CUSTOMERS / FORGET)-th customer.
STEP=$((CUSTOMERS / FORGET))
python3 -c "
import sys
print('customer_id')
for k in range(1, $FORGET + 1): print(k * $STEP)
" >"$BENCH_DIR/ids.csv"

echo "== forget $FORGET customers (pgredact forget --csv)"
t0=$(now)
"$PGREDACT_BIN" forget --config "$BENCH_DIR/cfg/pgredact.toml" --csv "$BENCH_DIR/ids.csv" --requester bench \
    >"$BENCH_DIR/forget.out"
t1=$(now)
sed 's/^/   /' "$BENCH_DIR/forget.out"
WALL=$(elapsed "$t0" "$t1")
ROWS=$(grep -Eo '[0-9]+ row\(s\) changed' "$BENCH_DIR/forget.out" | awk '{s += $1} END {print s + 0}')
echo "   wall time: $WALL s; rows changed: $ROWS; $(python3 -c "print(f'{$ROWS / $WALL:,.0f}')") rows/s"
LEFT=$(psql_su -d app -c "SELECT (SELECT count(*) FROM customers WHERE customer_id % $STEP = 0 AND customer_id <= $STEP * $FORGET AND email IS NOT NULL)
                              + (SELECT count(*) FROM customer_events WHERE customer_id % $STEP = 0 AND customer_id <= $STEP * $FORGET AND ip_address IS NOT NULL)")
echo "   independent re-check: $LEFT rows still hold PII for the forgotten customers"

echo "== ingest: COPY $LOAD_ROWS events ($((100 * FORGET / CUSTOMERS))% for forgotten customers), $LOAD_RUNS runs each, rolled back"
psql_su -d app -c "COPY (SELECT 1 + (i * 7919) % $CUSTOMERS, 'nightly', ('172.16.' || (i % 250) || '.' || (1 + i % 200))::inet,
                                'loader/1.0 (' || (i % 50) || ')', jsonb_build_object('n', i), timestamptz '2024-01-01' + i * interval '1 second'
                         FROM generate_series(1::bigint, $LOAD_ROWS) i) TO STDOUT" >"$BENCH_DIR/load.tsv"
TRIGGER_DDL=$(psql_su -d app -c "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = '~pgredact_forget' AND tgrelid = 'customer_events'::regclass")
# The same trigger calling the PL/pgSQL function directly (what runs without the compiled front,
# the pgredact_suppress extension): its name is the compiled front's first argument.
PLPGSQL_DDL=$(sed -E "s/EXECUTE FUNCTION pgredact_suppress\.suppress\('([a-z0-9_]+)'.*\)$/EXECUTE FUNCTION pgredact.\1()/" <<<"$TRIGGER_DDL")
if [[ "$TRIGGER_DDL" == *pgredact_suppress.suppress* ]]; then
    echo "   suppression trigger: compiled front (pgredact_suppress) calling the PL/pgSQL function for listed rows"
else
    echo "   suppression trigger: PL/pgSQL only (the pgredact_suppress extension is not installed: make -C src/forget/ext install)"
fi
# One COPY in a transaction that is rolled back; prints "wall_seconds backend_cpu_seconds" (CPU
# time of the server process from /proc: less disturbed than wall time on a busy machine).
copy_run() {
    local t0 t1 out
    t0=$(now)
    out=$({ echo "SELECT pg_backend_pid() AS bpid \gset"; echo '\setenv BPID :bpid';
            echo "\! awk '{print \$14 + \$15}' /proc/\$BPID/stat";
            echo "BEGIN;"; echo "COPY customer_events (customer_id, event_type, ip_address, user_agent, payload, occurred_at) FROM STDIN;";
            cat "$BENCH_DIR/load.tsv"; echo '\.'; echo "ROLLBACK;";
            echo "\! awk '{print \$14 + \$15}' /proc/\$BPID/stat"; } |
          psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U loader -d app)
    t1=$(now)
    local ticks_hz; ticks_hz=$(getconf CLK_TCK)
    echo "$(elapsed "$t0" "$t1") $(echo "$out" | awk -v hz="$ticks_hz" 'NR == 1 {a = $1} NR == 2 {printf "%.2f", ($1 - a) / hz}')"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
psql_su -d app -c "CREATE OR REPLACE FUNCTION public.bench_noop() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN RETURN NEW; END \$\$"
drop_all() { psql_su -d app -c 'DROP TRIGGER IF EXISTS "~pgredact_forget" ON customer_events' -c 'DROP TRIGGER IF EXISTS bench_floor ON customer_events'; }
without() { drop_all; }
with() { drop_all; psql_su -d app -c "$TRIGGER_DDL" -c 'ALTER TABLE customer_events ENABLE ALWAYS TRIGGER "~pgredact_forget"'; }
plpgsql() { drop_all; psql_su -d app -c "$PLPGSQL_DDL" -c 'ALTER TABLE customer_events ENABLE ALWAYS TRIGGER "~pgredact_forget"'; }
# The floor: a BEFORE ROW trigger whose function does nothing (COPY stops batching inserts as
# soon as a table has one), what any row-level suppression design pays.
floor() { drop_all; psql_su -d app -c 'CREATE TRIGGER bench_floor BEFORE INSERT OR UPDATE ON customer_events FOR EACH ROW EXECUTE FUNCTION public.bench_noop()'; }
run_as() {   # run_as with|without: prints "wall cpu" of one run, after a VACUUM (rolled-back rows)
    psql_su -d app -c "VACUUM customer_events"
    "$1"
    copy_run
}
copy_run >/dev/null   # warm-up (caches)
W_WALL=(); W_CPU=(); WO_WALL=(); WO_CPU=(); F_WALL=(); F_CPU=(); P_WALL=(); P_CPU=()
for r in $(seq "$LOAD_RUNS"); do
    # Rotate the order so no variant always runs in the same place.
    case $(( r % 4 )) in
        1) order=(without floor with plpgsql) ;;
        2) order=(with plpgsql without floor) ;;
        3) order=(plpgsql without floor with) ;;
        *) order=(floor with plpgsql without) ;;
    esac
    for v in "${order[@]}"; do
        read -r wall cpu < <(run_as "$v")
        case $v in
            with) W_WALL+=("$wall"); W_CPU+=("$cpu") ;;
            floor) F_WALL+=("$wall"); F_CPU+=("$cpu") ;;
            plpgsql) P_WALL+=("$wall"); P_CPU+=("$cpu") ;;
            *) WO_WALL+=("$wall"); WO_CPU+=("$cpu") ;;
        esac
    done
done
with   # leave suppression installed
pct() { python3 -c "print(f'{100 * ($1 - $2) / $2:.1f}')"; }
W=$(median "${W_WALL[@]}"); WO=$(median "${WO_WALL[@]}")
WC=$(median "${W_CPU[@]}"); WOC=$(median "${WO_CPU[@]}")
echo "   without suppression: wall ${WO_WALL[*]} s (median $WO), backend CPU ${WO_CPU[*]} s (median $WOC)"
echo "   with suppression:    wall ${W_WALL[*]} s (median $W), backend CPU ${W_CPU[*]} s (median $WC)"
F=$(median "${F_WALL[@]}"); FC=$(median "${F_CPU[@]}")
echo "   floor (no-op trigger): wall ${F_WALL[*]} s (median $F), backend CPU ${F_CPU[*]} s (median $FC)"
P=$(median "${P_WALL[@]}"); PC=$(median "${P_CPU[@]}")
echo "   PL/pgSQL only:       wall ${P_WALL[*]} s (median $P), backend CPU ${P_CPU[*]} s (median $PC): wall $(pct "$P" "$WO")%, backend CPU $(pct "$PC" "$WOC")%"
echo "   ingest slowdown: wall $(pct "$W" "$WO")%, backend CPU $(pct "$WC" "$WOC")%; the floor alone: wall $(pct "$F" "$WO")%, backend CPU $(pct "$FC" "$WOC")%"
# Keyed lookups, as for customer IDs that are PII: the list without raw IDs. The next job
# reinstalls the triggers with the keyed lookup (a keyed hash per row, in C or in PL/pgSQL).
if [[ "${KEYED:-1}" == 1 ]]; then
    psql_su -d app -c "UPDATE pgredact.forget_list SET subject_id = NULL"
    "$PGREDACT_BIN" forget --config "$BENCH_DIR/cfg/pgredact.toml" --ids "$((STEP * FORGET + 1))" --requester bench >/dev/null
    KEYED_DDL=$(psql_su -d app -c "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = '~pgredact_forget' AND tgrelid = 'customer_events'::regclass")
    KEYED_PLPGSQL_DDL=$(sed -E "s/EXECUTE FUNCTION pgredact_suppress\.suppress\('([a-z0-9_]+)'.*\)$/EXECUTE FUNCTION pgredact.\1()/" <<<"$KEYED_DDL")
    keyed() { drop_all; psql_su -d app -c "$KEYED_DDL" -c 'ALTER TABLE customer_events ENABLE ALWAYS TRIGGER "~pgredact_forget"'; }
    keyed_plpgsql() { drop_all; psql_su -d app -c "$KEYED_PLPGSQL_DDL" -c 'ALTER TABLE customer_events ENABLE ALWAYS TRIGGER "~pgredact_forget"'; }
    K_CPU=(); KP_CPU=(); KWO_CPU=()
    for r in $(seq "$LOAD_RUNS"); do
        case $(( r % 3 )) in
            1) order=(without keyed keyed_plpgsql) ;;
            2) order=(keyed keyed_plpgsql without) ;;
            *) order=(keyed_plpgsql without keyed) ;;
        esac
        for v in "${order[@]}"; do
            read -r wall cpu < <(run_as "$v")
            case $v in
                keyed) K_CPU+=("$cpu") ;;
                keyed_plpgsql) KP_CPU+=("$cpu") ;;
                *) KWO_CPU+=("$cpu") ;;
            esac
        done
    done
    KWOC=$(median "${KWO_CPU[@]}"); KC=$(median "${K_CPU[@]}"); KPC=$(median "${KP_CPU[@]}")
    echo "   keyed lookups, backend CPU: without ${KWO_CPU[*]} s (median $KWOC); compiled ${K_CPU[*]} s (median $KC, $(pct "$KC" "$KWOC")%); PL/pgSQL only ${KP_CPU[*]} s (median $KPC, $(pct "$KPC" "$KWOC")%)"
    keyed
fi
# Check that suppression worked on this load.
{ echo "BEGIN;"; echo "COPY customer_events (customer_id, event_type, ip_address, user_agent, payload, occurred_at) FROM STDIN;";
  head -100000 "$BENCH_DIR/load.tsv"; echo '\.';
  echo "SELECT 'rows of forgotten customers with PII after the load: ' || count(*) FROM customer_events WHERE event_type = 'nightly' AND ip_address IS NOT NULL AND customer_id % $STEP = 0 AND customer_id <= $STEP * $FORGET;";
  echo "ROLLBACK;"; } | psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U loader -d app | sed 's/^/   /'

echo "== summary: forgot $FORGET of $CUSTOMERS customers in $WALL s ($ROWS rows changed); COPY slowdown with suppression: wall $(pct "$W" "$WO")%, backend CPU $(pct "$WC" "$WOC")%; floor (no-op BEFORE ROW trigger): wall $(pct "$F" "$WO")%, backend CPU $(pct "$FC" "$WOC")%"
