//! Criterion benchmarks of the masking rewriter.
//!
//! Four statements a masked session typically sends, each measured
//! - `cold`: `pgredact::rewrite::rewrite` (parse + rewrite + audit + display, every call), and
//! - `cached`: `Snapshot::decide`, the proxy's per-statement entry point, on a cache hit.
//!
//! plus a breakdown of the cold path (sqlparser parse alone, parse + display, and for rewritten
//! statements: display, re-parse and tokenize of the rewritten text) so the cost of the rewrite
//! itself can be told apart from the parser's.
//!
//! The catalog is built in code (no database needed) with the demo tables of
//! `src/demo_schema.sql` and the example policy `policies/app.toml`.
//!
//! Run: `cargo bench --bench rewrite -- --warm-up-time 1 --measurement-time 3`
//! Targets: a typical masked lookup under 20 µs cold and under 1 µs cached.
//!
//! On a busy machine (others compiling on the same 2 cores) wall-clock figures are inflated by
//! preemption; `PGREDACT_BENCH_CPU_TIME=1` measures the benchmark thread's CPU time instead
//! (Linux `CLOCK_THREAD_CPUTIME_ID`), which is what the rewriter actually costs.

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{black_box, BenchmarkId, Criterion, Throughput};
use pgredact::catalog::{Catalog, Column, Relation};
use pgredact::policy::{parse_policy, ColType};
use pgredact::proxy::database::{build_snapshot, Snapshot};
use pgredact::rewrite::{rewrite, Decision, Protections, SessionCtx};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;

/// The statements measured: (name, SQL, whether the masked session gets a rewrite).
const CASES: &[(&str, &str, bool)] = &[
    (
        "lookup",
        "SELECT * FROM customers WHERE customer_id = $1",
        true,
    ),
    (
        "join3",
        "SELECT c.customer_id, c.first_name, c.email, c.tier, o.order_id, o.amount, o.status, \
         e.event_type, e.ip_address, e.occurred_at \
         FROM customers c \
         JOIN orders o ON o.customer_id = c.customer_id \
         JOIN customer_events e ON e.customer_id = c.customer_id \
         WHERE c.customer_id = $1 AND o.ordered_at > now() - interval '30 days' \
         ORDER BY e.occurred_at DESC LIMIT 50",
        true,
    ),
    (
        "cte",
        "WITH recent AS (\
           SELECT customer_id, count(*) AS n, max(ordered_at) AS last_order \
           FROM orders WHERE ordered_at > now() - interval '90 days' GROUP BY customer_id) \
         SELECT c.customer_id, c.first_name, c.email, c.phone, c.tier, r.n, r.last_order \
         FROM customers c JOIN recent r USING (customer_id) \
         WHERE c.tier = $1 ORDER BY r.n DESC LIMIT 20",
        true,
    ),
    (
        "update_passthrough",
        "UPDATE customers SET tier = $1, updated_at = now() WHERE customer_id = $2",
        false,
    ),
];

fn ty(sql: &str, base: &str, category: char) -> ColType {
    ColType {
        sql: sql.into(),
        base: base.into(),
        category,
    }
}

fn relation(oid: u32, schema: &str, name: &str, kind: char, cols: &[(&str, ColType)]) -> Relation {
    Relation {
        oid,
        schema: schema.into(),
        name: name.into(),
        kind,
        columns: cols
            .iter()
            .map(|(n, t)| Column {
                name: (*n).into(),
                ty: t.clone(),
            })
            .collect(),
    }
}

/// The demo schema (`src/demo_schema.sql`) as the catalog loader would see it.
fn demo_catalog() -> Catalog {
    let text = ty("text", "text", 'S');
    let big = ty("bigint", "int8", 'N');
    let varchar = ty("character varying(255)", "varchar", 'S');
    let numeric = ty("numeric(12,2)", "numeric", 'N');
    let tstz = ty("timestamp with time zone", "timestamptz", 'D');
    let mut c = Catalog::default();
    c.add_relation(relation(
        16384,
        "public",
        "customers",
        'r',
        &[
            ("customer_id", big.clone()),
            ("first_name", text.clone()),
            ("last_name", text.clone()),
            ("email", varchar.clone()),
            ("phone", text.clone()),
            ("address", text.clone()),
            ("city", text.clone()),
            ("country", text.clone()),
            ("birth_date", ty("date", "date", 'D')),
            ("tier", text.clone()),
            ("segment", text.clone()),
            ("lifetime_value", numeric.clone()),
            ("created_at", tstz.clone()),
            ("updated_at", tstz.clone()),
        ],
    ));
    c.add_relation(relation(
        16393,
        "public",
        "customer_events",
        'r',
        &[
            ("event_id", big.clone()),
            ("customer_id", big.clone()),
            ("event_type", text.clone()),
            ("ip_address", ty("inet", "inet", 'I')),
            ("user_agent", text.clone()),
            ("payload", ty("jsonb", "jsonb", 'U')),
            ("occurred_at", tstz.clone()),
        ],
    ));
    c.add_relation(relation(
        16402,
        "public",
        "orders",
        'r',
        &[
            ("order_id", big.clone()),
            ("customer_id", big.clone()),
            ("amount", numeric.clone()),
            ("status", text.clone()),
            ("shipping_address", text.clone()),
            ("ordered_at", tstz.clone()),
        ],
    ));
    c.add_relation(relation(
        16411,
        "public",
        "customer_history",
        'r',
        &[
            ("history_id", big.clone()),
            ("customer_id", big.clone()),
            ("changed_at", tstz.clone()),
            ("email", varchar),
            ("phone", text.clone()),
            ("address", text),
        ],
    ));
    // pgredact's control schema (installed by the proxy at first connect; see src/control.rs).
    c.add_relation(relation(
        16420,
        "pgredact",
        "hash_key",
        'r',
        &[
            ("ipad", ty("bytea", "bytea", 'U')),
            ("opad", ty("bytea", "bytea", 'U')),
        ],
    ));
    c.add_function("pgredact", "mask_hash");
    c.add_relation(relation(1259, "pg_catalog", "pg_class", 'r', &[]));
    c.add_relation(relation(12000, "pg_catalog", "pg_stats", 'v', &[]));
    // Built-ins used by the statements above and by the mask expressions (src/policy.rs).
    for f in [
        "now",
        "count",
        "max",
        "min",
        "sum",
        "avg",
        "lower",
        "upper",
        "length",
        "left",
        "right",
        "concat",
        "substr",
        "strpos",
        "date_trunc",
        "coalesce",
    ] {
        c.add_function("pg_catalog", f);
    }
    let policy = parse_policy(
        pgredact::demo::EXAMPLE_POLICY,
        Path::new("policies/app.toml"),
    )
    .expect("example policy parses");
    pgredact::rewrite::protect::fixture_masking_views(&mut c, &policy);
    c
}

fn search_path() -> Vec<String> {
    vec!["pg_catalog".into(), "public".into()]
}

fn demo_protections(catalog: Arc<Catalog>) -> Protections {
    let policy = parse_policy(
        pgredact::demo::EXAMPLE_POLICY,
        Path::new("policies/app.toml"),
    )
    .expect("example policy parses");
    Protections::build(&policy, catalog)
}

fn demo_snapshot(catalog: Arc<Catalog>) -> Snapshot {
    let policy = parse_policy(
        pgredact::demo::EXAMPLE_POLICY,
        Path::new("policies/app.toml"),
    )
    .expect("example policy parses");
    build_snapshot(
        Some(Arc::new(policy)),
        1,
        catalog,
        None,
        &Default::default(),
        None,
    )
}

/// Fails the run if a statement does not take the path it is meant to measure.
fn check_decision(name: &str, sql: &str, rewritten: bool, d: &Decision) {
    match (rewritten, d) {
        (true, Decision::Rewrite(_)) | (false, Decision::Pass) => {}
        _ => panic!("bench case {name}: unexpected decision {d:?} for {sql:?}"),
    }
}

fn benches<M: Measurement>(c: &mut Criterion<M>) {
    let catalog = Arc::new(demo_catalog());
    let prot = demo_protections(catalog.clone());
    let snap = demo_snapshot(catalog);
    let path = search_path();
    let ctx = SessionCtx {
        prot: &prot,
        search_path: &path,
        path_at_start: true,
    };

    for (name, sql, rewritten) in CASES {
        let out = rewrite(sql, &ctx);
        check_decision(name, sql, *rewritten, &out.decision);
        // `unknown_names` makes `Snapshot::decide` skip its cache (and the proxy refresh the
        // catalog), so the "cached" figure of such a statement is really a cold one.
        if out.unknown_names {
            eprintln!(
                "note: bench case {name}: the rewriter reports unknown names, so Snapshot::decide \
                 does not cache it"
            );
        }
        let (d, _) = snap.decide(sql, 1, &path, true);
        check_decision(name, sql, *rewritten, &d);
    }

    let mut g = c.benchmark_group("rewrite_cold");
    for (name, sql, _) in CASES {
        g.bench_with_input(BenchmarkId::from_parameter(name), sql, |b, sql| {
            b.iter(|| rewrite(black_box(sql), &ctx))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("rewrite_cached");
    for (name, sql, _) in CASES {
        g.bench_with_input(BenchmarkId::from_parameter(name), sql, |b, sql| {
            b.iter(|| snap.decide(black_box(sql), 1, &path, true))
        });
    }
    g.finish();

    // Where the cold time goes: sqlparser alone, and sqlparser plus re-printing the AST.
    let dialect = PostgreSqlDialect {};
    let mut g = c.benchmark_group("breakdown");
    for (name, sql, _) in CASES {
        g.bench_with_input(BenchmarkId::new("parse", name), sql, |b, sql| {
            b.iter(|| {
                Parser::new(&dialect)
                    .with_recursion_limit(400)
                    .try_with_sql(black_box(sql))
                    .and_then(|mut p| p.parse_statements())
                    .expect("parses")
            })
        });
        g.bench_with_input(BenchmarkId::new("parse_display", name), sql, |b, sql| {
            b.iter(|| {
                let stmts = Parser::parse_sql(&dialect, black_box(sql)).expect("parses");
                stmts.iter().map(|s| s.to_string()).collect::<Vec<_>>()
            })
        });
        // Printing the rewritten statement (derived tables with every mask expression), the
        // last step of the cold path for the statements that are rewritten.
        if let Decision::Rewrite(text) = rewrite(sql, &ctx).decision {
            let stmts = Parser::parse_sql(&dialect, &text).expect("rewritten text parses");
            eprintln!(
                "{name}: {} bytes in, {} bytes rewritten",
                sql.len(),
                text.len()
            );
            g.bench_function(BenchmarkId::new("display_rewritten", name), |b| {
                b.iter(|| {
                    black_box(&stmts)
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                })
            });
            // The read-back checks on the rewritten text: parse it again, and tokenize it.
            g.bench_function(BenchmarkId::new("reparse_rewritten", name), |b| {
                b.iter(|| {
                    Parser::new(&dialect)
                        .with_recursion_limit(400)
                        .try_with_sql(black_box(&text))
                        .and_then(|mut p| p.parse_statements())
                        .expect("parses")
                })
            });
            g.bench_function(BenchmarkId::new("tokenize_rewritten", name), |b| {
                b.iter(|| {
                    Tokenizer::new(&dialect, black_box(&text))
                        .tokenize()
                        .expect("tokenizes")
                })
            });
        }
    }
    g.finish();
}

/// CPU time of the calling thread, in nanoseconds (criterion runs the routine on one thread).
#[cfg(target_os = "linux")]
struct ThreadCpuTime;

#[cfg(target_os = "linux")]
impl ThreadCpuTime {
    fn now_ns() -> u64 {
        #[repr(C)]
        struct Timespec {
            tv_sec: i64,
            tv_nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout) for the call.
        let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

#[cfg(target_os = "linux")]
impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        Self::now_ns()
    }
    fn end(&self, start: u64) -> u64 {
        Self::now_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNanos
    }
}

/// Formats nanoseconds like criterion's wall-clock formatter (ns, µs, ms, s).
struct CpuNanos;

impl ValueFormatter for CpuNanos {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = match typical {
            t if t < 1e3 => (1.0, "ns"),
            t if t < 1e6 => (1e3, "µs"),
            t if t < 1e9 => (1e6, "ms"),
            _ => (1e9, "s"),
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Elements(n) => *n,
        } as f64;
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v);
        "/s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("PGREDACT_BENCH_CPU_TIME").is_some_and(|v| v != "0") {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpuTime)
            .configure_from_args();
        benches(&mut c);
        c.final_summary();
        return;
    }
    let mut c = Criterion::default()
        .with_measurement(WallTime)
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
