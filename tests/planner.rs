//! No raw value through PostgreSQL's planner, by the differential method: three
//! tables that are identical once masked, but whose raw values differ in their number of
//! distinct values and in their order, must give a masked role identical answers, row order and
//! plan shapes included, through pgredact and straight to PostgreSQL.
//!
//! - `twin_a`: every raw first name distinct, ascending with the id;
//! - `twin_b`: 20 distinct raw first names (one per initial);
//! - `twin_c`: every raw first name distinct, descending with the id.
//!
//! The mask keeps the initial only (`A***`), so all three read the same masked rows. Raw names
//! have the same length everywhere, so the tables and their indexes have the same size: what
//! sizes reveal is a documented limit (README, "Limits"), not what this test is about.
mod support;

use pgredact::pgcluster::{Auth, ClusterOptions};
use support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

const TWINS: [&str; 3] = ["twin_a", "twin_b", "twin_c"];

fn policy() -> String {
    let mut p = pgredact::demo::EXAMPLE_POLICY.to_string();
    for t in TWINS {
        p.push_str(&format!(
            "\n[tables.\"public.{t}\"]\nsubject = \"id\"\ncolumns.first_name = {{ mask = \"partial\", keep_first = 1, padding = \"***\" }}\n"
        ));
    }
    p
}

const ROWS: i32 = 30_000;

fn fixture() -> String {
    let name = |t: &str| match t {
        "twin_a" => "lpad(g::text, 6, '0')",
        "twin_b" => "lpad((g % 20)::text, 6, '0')",
        _ => "lpad((1000000 - g)::text, 6, '0')",
    };
    // Rows from parallel workers arrive in an order that varies from run to run, whatever the
    // data: the comparison is about what the raw values decide.
    let mut sql = String::from("ALTER ROLE support SET max_parallel_workers_per_gather = 0;\n");
    for t in TWINS {
        // A wide filler column makes an index-only scan of the (first_name) INCLUDE (id) index
        // the cheapest way to read id and first_name, as it would be on a real profile table.
        sql.push_str(&format!(
            "CREATE TABLE {t} (id integer PRIMARY KEY, first_name text, tier text, filler text);
             INSERT INTO {t} SELECT g, chr(65 + g % 20) || {n}, 't' || (g % 3), repeat('x', 300)
               FROM generate_series(1, {ROWS}) g;
             CREATE INDEX {t}_first_name ON {t} (first_name) INCLUDE (id);
             GRANT SELECT ON {t} TO support;
             VACUUM (ANALYZE) {t};\n",
            n = name(t)
        ));
    }
    // A lookup table without PII, big enough that a nested loop with a Memoize over its index
    // wins when the planner believes the masked first names repeat a lot.
    sql.push_str(
        "CREATE TABLE initials (code text, label text);
         INSERT INTO initials SELECT chr(65 + g % 20) || '***' || (g / 20), 'l' || g FROM generate_series(0, 199999) g;
         INSERT INTO initials SELECT chr(65 + g) || '***', 'initial ' || g FROM generate_series(0, 19) g;
         CREATE INDEX initials_code ON initials (code);
         GRANT SELECT ON initials TO support;
         VACUUM (ANALYZE) initials;\n",
    );
    sql
}

/// The probes, with `T` for the table. Rows returned without ORDER BY are compared in order.
const PROBES: &[&str] = &[
    // Row order of a plain read: an index-only scan of the first_name index would return the
    // rows in the raw names' order.
    "SELECT id, first_name FROM T",
    "SELECT first_name FROM T WHERE tier = 't1'",
    // GROUP BY / DISTINCT: hash or sort, chosen from the estimated number of groups.
    "SELECT first_name, count(*) FROM T GROUP BY first_name",
    "SELECT DISTINCT first_name FROM T",
    "SELECT first_name FROM T UNION SELECT code FROM initials WHERE label LIKE 'initial%'",
    "EXPLAIN SELECT first_name, count(*) FROM T GROUP BY first_name",
    "EXPLAIN SELECT DISTINCT first_name FROM T WHERE id < 5000",
    // A join on the masked value: a Memoize is planned from the estimated distinct values.
    "EXPLAIN SELECT t.id, i.label FROM T t JOIN initials i ON i.code = t.first_name WHERE t.id < 3000",
    "SELECT t.id, i.label FROM T t JOIN initials i ON i.code = t.first_name WHERE t.id < 3000",
    "EXPLAIN SELECT id, first_name FROM T",
];

/// Every row of every result, as text, in order; `twin_a`/`twin_b`/`twin_c` in plans read `T`.
async fn answer(c: &Client, sql: &str) -> Result<Vec<String>, String> {
    let msgs = c.simple_query(sql).await.map_err(|e| code(&e))?;
    let mut out = Vec::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            let cells: Vec<String> = (0..r.len())
                .map(|i| r.get(i).unwrap_or("NULL").to_string())
                .collect();
            let mut line = cells.join("|");
            for t in TWINS {
                line = line.replace(t, "T");
            }
            out.push(line);
        }
    }
    Ok(out)
}

/// Runs every probe on each twin, named by `table`, and returns the probes whose answers differ.
/// `direct`: straight to PostgreSQL, where EXPLAIN shows costs unless asked not to.
async fn differing(c: &Client, table: impl Fn(&str) -> String, direct: bool) -> Vec<String> {
    let mut bad = Vec::new();
    for probe in PROBES {
        let mut answers = Vec::new();
        for t in TWINS {
            let mut sql = probe.replace(" T", &format!(" {}", table(t)));
            if direct && sql.starts_with("EXPLAIN ") {
                // Straight to PostgreSQL the costs stay on unless asked (README, "Limits").
                sql = sql.replacen("EXPLAIN ", "EXPLAIN (COSTS OFF) ", 1);
            }
            answers.push(answer(c, &sql).await);
        }
        assert!(
            answers[0].as_ref().is_ok_and(|r| !r.is_empty()),
            "{probe} (direct: {direct}) must answer: {:?}",
            answers[0]
        );
        if answers[1] != answers[0] || answers[2] != answers[0] {
            bad.push(format!(
                "{probe} (direct: {direct}):\n  a: {:?}\n  b: {:?}\n  c: {:?}",
                first_lines(&answers[0]),
                first_lines(&answers[1]),
                first_lines(&answers[2])
            ));
        }
    }
    bad
}

fn first_lines(a: &Result<Vec<String>, String>) -> String {
    match a {
        Ok(rows) => rows
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join(" / "),
        Err(e) => e.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_equal_once_masked_give_equal_answers_plans_and_row_order() {
    let env = start(
        &policy(),
        ClusterOptions {
            auth: Auth::Scram,
            ..Default::default()
        },
        &fixture(),
    )
    .await;
    // The fixture does what it claims: the raw tables differ (distinct counts, order), their
    // masked rows do not, and they have the same size.
    let su = env.direct("postgres").await;
    let raw = rows(
        &su,
        "SELECT (SELECT count(DISTINCT first_name) FROM twin_a) || ',' || (SELECT count(DISTINCT first_name) FROM twin_b)
           || ',' || (SELECT count(DISTINCT first_name) FROM twin_c)",
    )
    .await
    .unwrap();
    assert_eq!(raw, vec![format!("{ROWS},20,{ROWS}")]);
    let sizes = rows(
        &su,
        "SELECT DISTINCT pg_relation_size(c.oid) FROM pg_class c WHERE c.relkind = 'r' AND c.relname IN ('twin_a', 'twin_b', 'twin_c')",
    )
    .await
    .unwrap();
    assert_eq!(sizes.len(), 1, "{sizes:?}");

    let support = env.proxy("support").await;
    let all: Vec<String> = rows(
        &support,
        "SELECT string_agg(DISTINCT first_name, ',') FROM twin_a",
    )
    .await
    .unwrap();
    assert_eq!(all[0].split(',').count(), 20, "{all:?}");
    assert!(all[0]
        .split(',')
        .all(|v| v.len() == 4 && v.ends_with("***")));

    // Through pgredact, and straight to PostgreSQL as the same masked role (on the masking
    // views, with every planner switch a session may set there).
    let mut bad = differing(&support, |t| t.to_string(), false).await;
    let direct = env.direct("support").await;
    let view = |t: &str| format!("pgredact_masked.{t}");
    bad.extend(differing(&direct, view, true).await);
    direct
        .batch_execute(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_hashagg = off",
        )
        .await
        .unwrap();
    bad.extend(differing(&direct, view, true).await);
    assert!(
        bad.is_empty(),
        "answers that depend on the raw values:\n{}",
        bad.join("\n")
    );

    // Control: views that mask the same way but let the planner see the raw column (what the
    // masking views were before) do tell the twins apart, by row order and by plan, so the
    // comparison above can fail.
    // (Read by the superuser: pgredact's wall revokes a masked role's grant on a view that
    // exposes a PII column.)
    for t in TWINS {
        su.batch_execute(&format!(
            "CREATE VIEW plain_{t} AS SELECT id, left(first_name, 1) || '***' AS first_name, tier FROM {t}"
        ))
        .await
        .unwrap();
    }
    su.batch_execute(
        "SET max_parallel_workers_per_gather = 0; SET enable_seqscan = off; SET enable_bitmapscan = off",
    )
    .await
    .unwrap();
    let plain = differing(&su, |t| format!("plain_{t}"), true).await;
    for probe in [
        "SELECT id, first_name FROM T (direct: true)",
        "EXPLAIN SELECT t.id, i.label FROM T t JOIN initials i",
    ] {
        assert!(
            plain.iter().any(|b| b.starts_with(probe)),
            "{probe}: {plain:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_columns_of_policy_tables_are_not_returned_to_masked_roles() {
    let env = start_default().await;
    let s = env.proxy("solutions").await;
    // A row's ctid after an update tells how much room the raw values take on the page.
    for sql in [
        "UPDATE customers SET tier = tier WHERE customer_id = 1 RETURNING ctid",
        "UPDATE customers SET tier = tier WHERE customer_id = 1 RETURNING customers.ctid, tier",
        "INSERT INTO orders (customer_id, amount, shipping_address) VALUES (1, 1, NULL) RETURNING xmin",
        "SELECT ctid FROM customers WHERE customer_id = 1",
        "SELECT tableoid::regclass, tier FROM customers WHERE customer_id = 1",
    ] {
        match s.simple_query(sql).await {
            Ok(r) => panic!("{sql} must not answer: {} messages", r.len()),
            Err(e) => assert_eq!(code(&e), "42501", "{sql}: {e}"),
        }
    }
    // Without system columns the same statements pass.
    assert_eq!(
        rows(
            &s,
            "UPDATE customers SET tier = tier WHERE customer_id = 1 RETURNING tier"
        )
        .await
        .unwrap()
        .len(),
        1
    );
}
