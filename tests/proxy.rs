//! End-to-end tests of the proxy: real PostgreSQL, the real proxy, real clients.

mod support;

use pgredact::pgcluster::{Auth, ClusterOptions};
use pgredact::policy::hash_pseudonym;
use support::tls::sh;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn expected_email(raw: &str) -> String {
    match raw.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", &local[..1]),
        None => "****".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masks_exactly_as_specified_and_dba_sees_raw() {
    let env = start_default().await;
    let dba = env.proxy("dba").await;
    let support = env.proxy("support").await;
    let q = "SELECT customer_id, first_name, last_name, email, phone, address, birth_date::text, tier FROM customers WHERE customer_id <= 50 ORDER BY customer_id";
    let raw = dba.query(q, &[]).await.expect("dba query");
    let masked = support
        .query(q, &[])
        .await
        .expect("support query (extended protocol)");
    let masked_simple = rows(&support, q)
        .await
        .expect("support query (simple protocol)");
    assert_eq!(raw.len(), 50);
    assert_eq!(masked.len(), 50);
    assert_eq!(masked_simple.len(), 50);
    let mut saw_null_birth = false;
    for (r, m) in raw.iter().zip(&masked) {
        let id: i64 = r.get(0);
        assert_eq!(id, m.get::<_, i64>(0));
        let first: String = r.get(1);
        assert_eq!(
            m.get::<_, String>(1),
            format!("{}***", first.chars().next().unwrap()),
            "first_name partial"
        );
        let last: String = r.get(2);
        assert_eq!(
            m.get::<_, String>(2),
            hash_pseudonym(HASH_KEY.as_bytes(), &last),
            "last_name hash"
        );
        let email: String = r.get(3);
        assert_eq!(m.get::<_, String>(3), expected_email(&email), "email");
        let phone: Option<String> = r.get(4);
        let mphone: Option<String> = m.get(4);
        match phone {
            None => assert!(mphone.is_none()),
            Some(p) if p.chars().count() <= 2 => assert_eq!(mphone.as_deref(), Some("****")),
            Some(p) => {
                let last2: String = p
                    .chars()
                    .rev()
                    .take(2)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                assert_eq!(
                    mphone,
                    Some(format!("****{last2}")),
                    "phone partial keep_last=2"
                );
            }
        }
        let addr: Option<String> = r.get(5);
        assert_eq!(
            m.get::<_, Option<String>>(5),
            addr.map(|_| "****".to_string()),
            "address redact"
        );
        let bd: Option<String> = r.get(6);
        let mbd: Option<String> = m.get(6);
        match bd {
            None => {
                saw_null_birth = true;
                assert!(mbd.is_none(), "NULL in, NULL out");
            }
            Some(b) => assert_eq!(mbd, Some(format!("{}-01-01", &b[..4])), "birth_date year"),
        }
        assert_eq!(
            r.get::<_, String>(7),
            m.get::<_, String>(7),
            "non-PII untouched"
        );
    }
    let _ = saw_null_birth;
    // Types in RowDescription are unchanged.
    let s1 = dba
        .prepare("SELECT * FROM customers")
        .await
        .expect("prepare dba");
    let s2 = support
        .prepare("SELECT * FROM customers")
        .await
        .expect("prepare support");
    let t1: Vec<_> = s1
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect();
    let t2: Vec<_> = s2
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect();
    assert_eq!(t1, t2);
    // Expressions, predicates and aggregates only ever see masked values.
    let leak = rows(
        &support,
        "SELECT count(*) FROM customers WHERE email LIKE 'david.%'",
    )
    .await
    .unwrap();
    assert_eq!(
        leak,
        vec!["0"],
        "predicate on a masked column must see the mask"
    );
    let up = rows(
        &support,
        "SELECT upper(email) FROM customers WHERE customer_id = 1",
    )
    .await
    .unwrap();
    assert!(up[0].starts_with(&expected_email(&raw[0].get::<_, String>(3)).to_uppercase()[..1]));
    assert!(up[0].contains("***@"), "{up:?}");
    // Placeholders work through the rewrite (prepared, extended protocol).
    let st = support
        .prepare("SELECT email FROM customers WHERE customer_id = $1")
        .await
        .unwrap();
    for id in [1i64, 2, 3] {
        let r = support.query_one(&st, &[&id]).await.unwrap();
        assert!(r.get::<_, String>(0).contains("***@"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_non_pii_pass_byte_for_byte_and_pii_writes_are_refused() {
    let env = start_default().await;
    let sol = env.proxy("solutions").await;
    let marker = "UPDATE customers   SET tier = 'gold' /* byte-marker-7 */ WHERE customer_id = 7";
    let n = sol.execute(marker, &[]).await.expect("non-PII update");
    assert_eq!(n, 1);
    let simple = "update customers set segment='vip',   tier = 'platinum' where customer_id in (8, 9) -- trailing comment";
    sol.simple_query(simple)
        .await
        .expect("simple non-PII update");
    let log = env.cluster.read_log();
    assert!(
        log.contains(marker),
        "the extended-protocol statement must arrive unchanged"
    );
    assert!(
        log.contains(simple),
        "the simple-protocol statement must arrive unchanged"
    );
    let dba = env.proxy("dba").await;
    let tiers = rows(
        &dba,
        "SELECT tier FROM customers WHERE customer_id IN (7,8,9) ORDER BY 1",
    )
    .await
    .unwrap();
    assert_eq!(tiers, vec!["gold", "platinum", "platinum"]);
    for (sql, want) in [
        ("UPDATE customers SET email = 'x@y.z' WHERE customer_id = 1", "column email"),
        ("UPDATE customers SET tier = 'x' WHERE email LIKE 'd%'", "PII column email"),
        ("UPDATE customers SET segment = first_name WHERE customer_id = 1", "PII column first_name"),
        ("DELETE FROM orders WHERE shipping_address LIKE '1%'", "PII column shipping_address"),
        ("INSERT INTO customers (customer_id, email) VALUES (99999, 'a@b.c')", "column email"),
        ("INSERT INTO customers VALUES (99999)", "without a column list"),
        ("COPY customers (customer_id, email) FROM STDIN", "PII column email"),
        ("MERGE INTO customers c USING orders o ON o.customer_id = c.customer_id WHEN MATCHED THEN UPDATE SET email = 'x'", "column email"),
    ] {
        assert_refused(sol.execute(sql, &[]).await, want, sql);
        assert_refused(sol.simple_query(sql).await, want, sql);
    }
    // Nothing refused reached the database.
    let raw = rows(&dba, "SELECT email FROM customers WHERE customer_id = 1")
        .await
        .unwrap();
    assert_ne!(raw, vec!["x@y.z"]);
    // RETURNING * would return PII columns: refused, with the columns that may be listed.
    let e = sol
        .simple_query("UPDATE customers SET tier = 'gold' WHERE customer_id = 1 RETURNING *")
        .await
        .unwrap_err();
    let d = e.as_db_error().expect("a database error");
    assert_eq!(d.code().code(), "42501");
    assert!(d.message().contains("RETURNING *"), "{}", d.message());
    assert_eq!(
        d.hint(),
        Some("list the columns you need: RETURNING customer_id, city, country, tier, segment, lifetime_value, created_at, updated_at")
    );
    let r = rows(
        &sol,
        "UPDATE customers SET tier = 'gold' WHERE customer_id = 1 RETURNING customer_id, tier",
    )
    .await
    .unwrap();
    assert_eq!(r, vec!["1|gold"]);
    // Straight to PostgreSQL, the same role meets the same wall: PostgreSQL's own privileges.
    let direct = env.direct("solutions").await;
    for sql in [
        "UPDATE customers SET email = 'x@y.z' WHERE customer_id = 1",
        "UPDATE customers SET tier = 'x' WHERE email LIKE 'd%'",
        "INSERT INTO customers (customer_id, email) VALUES (99999, 'a@b.c')",
        "SELECT email FROM customers LIMIT 1",
        "UPDATE customers SET tier = 'gold' WHERE customer_id = 1 RETURNING *",
    ] {
        let e = direct.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&e), "42501", "{sql}: {e}");
    }
    direct
        .simple_query("UPDATE customers SET tier = 'gold' WHERE customer_id = 2")
        .await
        .expect("non-PII writes work directly too");
    // Session remains usable after refusals, inside and outside transactions.
    sol.simple_query("BEGIN").await.unwrap();
    assert!(sol
        .simple_query("UPDATE customers SET email = 'x'")
        .await
        .is_err());
    let e = sol.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(
        code(&e),
        "25P02",
        "a refusal aborts the transaction like any error"
    );
    sol.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(rows(&sol, "SELECT 1").await.unwrap(), vec!["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_for_identity_dynamic_sql_and_catalog_leaks() {
    let env = start_default().await;
    let s = env.proxy("support").await;
    for (sql, want) in [
        ("SET ROLE dba", "identity"),
        ("SET SESSION AUTHORIZATION dba", "identity"),
        ("RESET ROLE", "role"),
        ("SELECT set_config('role', 'dba', false)", "set_config"),
        (
            "SELECT query_to_xml('select * from customers', true, false, '')",
            "query_to_xml",
        ),
        (
            "SELECT * FROM table_to_xml('customers', true, false, '')",
            "table_to_xml",
        ),
        ("DO $$ BEGIN PERFORM 1; END $$", "pgredact"),
        (
            "SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers'",
            "pg_stats",
        ),
        ("SELECT * FROM pg_catalog.pg_statistic", "pgredact"),
        ("SELEKT 1", "could not parse"),
        ("SELECT 1; SET ROLE dba", "identity"),
        ("SELECT pgredact.mask_hash('x')", "pgredact"),
    ] {
        assert_refused(s.simple_query(sql).await, want, sql);
    }
    assert_refused(
        s.prepare("SELECT query_to_xml($1, true, false, '')").await,
        "query_to_xml",
        "extended",
    );
    // The session is still usable.
    assert_eq!(
        rows(&s, "SELECT current_user").await.unwrap(),
        vec!["support"]
    );
    // Multi-statement: each statement masked.
    let r = rows(
        &s,
        "SELECT 1; SELECT email FROM customers WHERE customer_id = 1",
    )
    .await
    .unwrap();
    assert_eq!(r.len(), 2);
    assert!(r[1].contains("***@"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_payloads_are_masked_per_path_through_pgredact_and_directly() {
    let env = start_default().await;
    let dba = env.proxy("dba").await;
    let support = env.proxy("support").await;
    let direct = env.direct("support").await;
    let q = "SELECT event_id, payload::text FROM customer_events \
             WHERE event_type IN ('email_open', 'purchase', 'login', 'support_ticket', 'page_view') \
             AND customer_id <= 40 ORDER BY event_id";
    let raw = dba.query(q, &[]).await.expect("dba");
    let masked = support.query(q, &[]).await.expect("support");
    let masked_direct = direct
        .query(
            &q.replace("customer_events", "pgredact_masked.customer_events"),
            &[],
        )
        .await
        .expect("support, straight to PostgreSQL");
    assert!(raw.len() > 50, "{}", raw.len());
    assert_eq!(raw.len(), masked.len());
    let mut checked = 0;
    for ((r, m), d) in raw.iter().zip(&masked).zip(&masked_direct) {
        let rv: serde_json::Value = serde_json::from_str(r.get(1)).unwrap();
        let mv: serde_json::Value = serde_json::from_str(m.get(1)).unwrap();
        assert_eq!(
            m.get::<_, &str>(1),
            d.get::<_, &str>(1),
            "same through both paths"
        );
        // Same keys, masked values where the policy says, the rest as it is.
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&rv), keys(&mv));
        for (k, v) in rv.as_object().unwrap() {
            let got = &mv[k];
            match (k.as_str(), v) {
                ("to" | "username" | "email", serde_json::Value::String(e)) => {
                    assert_eq!(got.as_str().unwrap(), expected_email(e));
                    checked += 1;
                }
                ("billing", b) => {
                    let name = b["name"].as_str().unwrap();
                    assert_eq!(
                        got["name"].as_str().unwrap(),
                        hash_pseudonym(HASH_KEY.as_bytes(), name)
                    );
                    assert_eq!(got["address"], "****");
                    checked += 1;
                }
                ("callback_phone", serde_json::Value::String(p)) => {
                    let last2: String = p.chars().skip(p.chars().count() - 2).collect();
                    assert_eq!(got.as_str().unwrap(), format!("****{last2}"));
                    checked += 1;
                }
                _ => assert_eq!(got, v, "{k} is kept"),
            }
        }
    }
    assert!(checked > 20, "{checked}");
    // Predicates see the masked document only.
    let email: String = dba
        .query_one(
            "SELECT payload->>'to' FROM customer_events WHERE event_type = 'email_open' ORDER BY event_id LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let count = "SELECT count(*) FROM customer_events WHERE payload->>'to' = $1 OR payload @> jsonb_build_object('to', $1::text)";
    let n = |c: tokio_postgres::Row| c.get::<_, i64>(0);
    assert!(n(dba.query_one(count, &[&email]).await.unwrap()) > 0);
    assert_eq!(n(support.query_one(count, &[&email]).await.unwrap()), 0);
    // Writing the column is writing PII.
    let sol = env.proxy("solutions").await;
    assert_refused(
        sol.simple_query("UPDATE customer_events SET payload = '{}' WHERE event_id = 1")
            .await,
        "payload",
        "UPDATE payload",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_through_pgredact_writes_a_masked_dump() {
    let env = start_default().await;
    let su = env.direct("postgres").await;
    // Sequence values are not PII; pg_dump reads them.
    su.batch_execute("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO support")
        .await
        .unwrap();
    let dba = env.proxy("dba").await;
    let raw: Vec<String> = dba
        .query(
            "SELECT email FROM customers ORDER BY customer_id LIMIT 20",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let bin = pgredact::pgcluster::Cluster::bin_dir()
        .map(|d| d.join("pg_dump"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| "pg_dump".into());
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(bin)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "support",
                "-d",
                "app",
                "-N",
                "pgredact*",
                "-p",
            ])
            .arg(env.addr.port().to_string())
            .env("PGPASSWORD", "support")
            .output()
            .expect("run pg_dump")
    });
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dump.contains("COPY public.customers ("),
        "no customers data"
    );
    assert!(dump.matches("***@").count() > 1000);
    for e in &raw {
        assert!(!dump.contains(e.as_str()), "raw e-mail {e} in the dump");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_shows_masked_sessions_no_raw_statistics_or_order() {
    let env = start_default().await;
    let s = env.proxy("support").await;
    // EXPLAIN of a statement over a masked table: the shape, without estimates computed on raw
    // values; ANALYZE and explicit COSTS are refused with the reason.
    let plan = rows(
        &s,
        "EXPLAIN SELECT email FROM customers WHERE customer_id = 1",
    )
    .await
    .unwrap()
    .join("\n");
    assert!(plan.contains("Scan"), "{plan}");
    assert!(!plan.contains("cost="), "{plan}");
    for sql in [
        "EXPLAIN ANALYZE SELECT * FROM customers",
        "EXPLAIN (ANALYZE, COSTS OFF) SELECT count(DISTINCT email) FROM customers",
        "EXPLAIN (COSTS) SELECT DISTINCT email FROM customers",
        "EXPLAIN ANALYZE SELECT tier FROM customers WHERE email LIKE 'a%'",
    ] {
        assert_refused(s.simple_query(sql).await, "EXPLAIN", sql);
    }
    // Statements that read no PII keep the full EXPLAIN.
    let plan = rows(
        &s,
        "EXPLAIN ANALYZE SELECT count(*) FROM orders WHERE amount > 10",
    )
    .await
    .unwrap()
    .join("\n");
    assert!(plan.contains("actual time="), "{plan}");
    // TABLESAMPLE reads the masking view with BERNOULLI's row filter (a view cannot be
    // sampled by PostgreSQL itself); REPEATABLE cannot be reproduced and is refused.
    let all: i64 = rows(&s, "SELECT count(*) FROM customers").await.unwrap()[0]
        .parse()
        .unwrap();
    let some: i64 = rows(
        &s,
        "SELECT count(*) FROM customers TABLESAMPLE BERNOULLI (50)",
    )
    .await
    .unwrap()[0]
        .parse()
        .unwrap();
    assert!(some > 0 && some < all, "{some} of {all}");
    let sampled = rows(
        &s,
        "SELECT email FROM customers c TABLESAMPLE SYSTEM (100) WHERE c.customer_id = 1",
    )
    .await
    .unwrap();
    assert!(sampled[0].contains("***@"), "{sampled:?}");
    assert_refused(
        s.simple_query("SELECT * FROM customers TABLESAMPLE BERNOULLI (5) REPEATABLE (7)")
            .await,
        "REPEATABLE",
        "TABLESAMPLE REPEATABLE",
    );
    // The planner switches stay refused (with them a session could steer plans on purpose);
    // index-only scans are left on: the masking views make one over a PII column impossible
    // (tests/planner.rs).
    assert_eq!(
        rows(&s, "SHOW enable_indexonlyscan").await.unwrap(),
        vec!["on"]
    );
    assert_refused(
        s.simple_query("SET enable_indexonlyscan = off").await,
        "enable_indexonlyscan",
        "SET",
    );
    let d = env.proxy("dba").await;
    let plan = rows(
        &d,
        "EXPLAIN SELECT email FROM customers WHERE customer_id = 1",
    )
    .await
    .unwrap()
    .join("\n");
    assert!(plan.contains("cost="), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_children_views_and_new_tables_follow_the_policy() {
    let extra = "CREATE TABLE vip_customers (vip_since date) INHERITS (customers);
                 INSERT INTO vip_customers (customer_id, first_name, last_name, email, tier) VALUES (900001, 'Vera', 'Secret', 'vera.secret@example.com', 'vip');
                 CREATE VIEW customer_emails AS SELECT customer_id, email FROM customers;
                 GRANT SELECT ON vip_customers, customer_emails TO support;";
    let env = start(
        pgredact::demo::EXAMPLE_POLICY,
        ClusterOptions {
            auth: Auth::Scram,
            ..Default::default()
        },
        extra,
    )
    .await;
    let s = env.proxy("support").await;
    let r = rows(&s, "SELECT email FROM vip_customers").await.unwrap();
    assert_eq!(r, vec!["v***@example.com"]);
    // Reading the parent includes the child's row, masked.
    let r = rows(&s, "SELECT email FROM customers WHERE customer_id = 900001")
        .await
        .unwrap();
    assert_eq!(r, vec!["v***@example.com"]);
    let r = rows(
        &s,
        "SELECT count(*) FROM ONLY customers WHERE customer_id = 900001",
    )
    .await
    .unwrap();
    assert_eq!(r, vec!["0"]);
    assert_refused(
        s.simple_query("SELECT * FROM customer_emails").await,
        "view",
        "view over PII",
    );
    // A table created after the proxy started is picked up (catalog refresh on unknown names).
    let dba_direct = env.direct("postgres").await;
    dba_direct
        .batch_execute("CREATE TABLE customers_2027 (LIKE customers INCLUDING ALL) ; ALTER TABLE customers_2027 INHERIT customers; INSERT INTO customers_2027 (customer_id, email, tier) VALUES (900002, 'late.comer@example.com', 'x'); GRANT SELECT ON customers_2027 TO support; CREATE VIEW late_view AS SELECT email FROM customers_2027; GRANT SELECT ON late_view TO support;")
        .await
        .unwrap();
    // Known at once: an unknown name makes the proxy re-read the catalog before deciding.
    let r = rows(&s, "SELECT email FROM customers_2027").await.unwrap();
    assert_eq!(r, vec!["l***@example.com"]);
    assert_refused(
        s.simple_query("SELECT * FROM late_view").await,
        "view",
        "late view",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sees_masks_copy_is_masked_and_meta_commands_work() {
    let env = start_default().await;
    let (ok, out, err) = env.psql(
        "support",
        "SELECT email FROM customers WHERE customer_id = 1",
    );
    assert!(ok, "{err}");
    assert!(out.trim().contains("***@example.com"), "{out}");
    let (ok, out, err) = env.psql("support", "COPY (SELECT customer_id, email FROM customers WHERE customer_id <= 3 ORDER BY 1) TO STDOUT WITH (FORMAT csv)");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3);
    assert!(out.lines().all(|l| l.contains("***@")), "{out}");
    let (ok, out, err) = env.psql("support", "COPY customers TO STDOUT");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 10_000);
    assert!(
        !out.contains(".muller") && !out.contains(".walker"),
        "raw local parts must not appear"
    );
    let (ok, out, err) = env.psql("support", "\\d customers");
    assert!(ok, "{err}");
    assert!(out.contains("email"), "{out}");
    let (ok, _out, err) = env.psql("support", "SET ROLE dba");
    assert!(!ok);
    assert!(
        err.contains("pgredact") && err.contains("identity"),
        "{err}"
    );
    let (ok, out, _) = env.psql("dba", "SELECT email FROM customers WHERE customer_id = 1");
    assert!(ok);
    assert!(!out.contains("***"), "dba sees raw: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_positions_never_point_into_rewritten_text() {
    let env = start_default().await;
    let s = env.proxy("support").await;
    let e = s
        .simple_query("SELECT emali FROM customers")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("db error");
    assert_eq!(db.code().code(), "42703");
    assert!(
        db.position().is_none(),
        "position into rewritten text must be dropped"
    );
    // A statement passed verbatim keeps its position.
    let e = s
        .simple_query("SELECT nosuchcol FROM pg_catalog.pg_class")
        .await
        .unwrap_err();
    assert!(e.as_db_error().and_then(|d| d.position()).is_some());
    // Integrity errors do not echo row values.
    let sol = env.proxy("solutions").await;
    let e = sol
        .simple_query("INSERT INTO customers (customer_id, tier) VALUES (1, 'x')")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23505");
    assert!(
        e.as_db_error().and_then(|d| d.detail()).is_none(),
        "no Key (...)=(...) detail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_methods_cancel_and_connect_time_refusals() {
    for auth in [Auth::Md5, Auth::Trust] {
        let env = start(
            pgredact::demo::EXAMPLE_POLICY,
            ClusterOptions {
                auth,
                ..Default::default()
            },
            "",
        )
        .await;
        let c = env.proxy("support").await;
        assert_eq!(
            rows(&c, "SELECT email FROM customers WHERE customer_id = 2")
                .await
                .unwrap()
                .len(),
            1
        );
        if auth == Auth::Md5 {
            let bad = format!(
                "host=127.0.0.1 port={} user=support password=wrong dbname=app",
                env.addr.port()
            );
            let Err(e) = tokio_postgres::connect(&bad, tokio_postgres::NoTls).await else {
                panic!("wrong password refused");
            };
            assert_eq!(code(&e), "28P01");
        }
    }
    let env = start_default().await;
    // Wrong SCRAM password.
    let bad = format!(
        "host=127.0.0.1 port={} user=support password=wrong dbname=app",
        env.addr.port()
    );
    let Err(e) = tokio_postgres::connect(&bad, tokio_postgres::NoTls).await else {
        panic!("wrong password refused");
    };
    assert_eq!(code(&e), "28P01");
    // Cancel is routed to the right backend.
    let c = env.proxy("support").await;
    let token = c.cancel_token();
    let h = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(60)").await });
    wait_active(&env.direct("postgres").await, "SELECT pg_sleep(60)", 1).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let r = h.await.unwrap();
    assert_eq!(code(&r.unwrap_err()), "57014");
    // Masked role on a database without a policy: refused at connect.
    let Err(e) = env.try_proxy("support", "postgres").await else {
        panic!("refused");
    };
    assert_eq!(code(&e), "42501");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("no masking policy"), "{msg}");
    // A forbidden startup setting for a masked role.
    let cs = format!("{} options='-c role=dba'", env.proxy_connstr("support", DB));
    let Err(e) = tokio_postgres::connect(&cs, tokio_postgres::NoTls).await else {
        panic!("refused");
    };
    assert_eq!(code(&e), "42501");
    // What drivers send at startup: a search path (JDBC's currentSchema), 'utf-8' with quotes
    // (asyncpg). The session's search path is read back before the client gets control.
    let mut cfg: tokio_postgres::Config = env.proxy_connstr("support", DB).parse().unwrap();
    cfg.options("-c search_path=pg_catalog,public -c client_encoding='utf-8'");
    let (c, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .expect("driver startup settings are accepted");
    tokio::spawn(conn);
    let r = rows(&c, "SELECT email FROM customers WHERE customer_id = 1")
        .await
        .unwrap();
    assert!(r[0].contains("***@"), "{r:?}");
    // The search path is tracked: names resolve as PostgreSQL resolves them after the change.
    c.batch_execute("SELECT pg_catalog.set_config('search_path', '', false)")
        .await
        .expect("pg_dump's form");
    let e = c
        .simple_query("SELECT email FROM customers WHERE customer_id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42P01", "not on the path any more: {e}");
    assert!(rows(
        &c,
        "SELECT email FROM public.customers WHERE customer_id = 1"
    )
    .await
    .unwrap()[0]
        .contains("***@"));
    c.batch_execute("SET search_path TO public").await.unwrap();
    assert!(
        rows(&c, "SELECT email FROM customers WHERE customer_id = 1")
            .await
            .unwrap()[0]
            .contains("***@")
    );
    c.batch_execute("BEGIN").await.unwrap();
    assert_refused(
        c.simple_query("SET search_path TO pg_catalog").await,
        "outside a transaction block",
        "search path in a transaction",
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_refused(
        c.simple_query("SET LOCAL search_path TO pg_catalog").await,
        "transaction-local",
        "SET LOCAL search_path",
    );
    // Planner switches would let a masked session force a scan of a PII index (rows in raw order).
    assert_refused(
        c.simple_query("SET enable_seqscan = off").await,
        "enable_seqscan",
        "planner switch",
    );
    // Back to the startup path (pg_catalog, public): RESET ALL, DISCARD ALL, RESET search_path
    // and SET search_path TO DEFAULT. After a change, only alone and outside a transaction
    // block; then names resolve on the startup path again.
    let on_startup_path = |c: tokio_postgres::Client| async move {
        let r = rows(&c, "SELECT email FROM customers WHERE customer_id = 1")
            .await
            .unwrap();
        assert!(r[0].contains("***@"), "{r:?}");
        c
    };
    let reset_forms = [
        "RESET ALL",
        "DISCARD ALL",
        "RESET search_path",
        "SET search_path TO DEFAULT",
    ];
    let mut c = c;
    for reset in reset_forms {
        c.batch_execute("SET search_path TO pg_catalog")
            .await
            .unwrap();
        assert_refused(
            c.simple_query(&format!("{reset}; SELECT 1")).await,
            "search_path",
            "a reset among other statements after a change",
        );
        c.batch_execute("BEGIN").await.unwrap();
        assert_refused(
            c.simple_query(reset).await,
            "outside a transaction block",
            "a reset in a transaction block after a change",
        );
        c.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(
            code(
                &c.simple_query("SELECT email FROM customers WHERE customer_id = 1")
                    .await
                    .unwrap_err()
            ),
            "42P01",
            "still on pg_catalog only"
        );
        c.batch_execute(reset)
            .await
            .unwrap_or_else(|e| panic!("{reset}: {e}"));
        c = on_startup_path(c).await;
    }
    // On the startup path, resets are no change at all: they pass anywhere, also in a pool's
    // multi-statement reset query (asyncpg's) and inside a transaction block.
    c.batch_execute("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;")
        .await
        .expect("asyncpg's reset query");
    c.batch_execute("BEGIN; RESET ALL; RESET search_path; COMMIT")
        .await
        .expect("resets in a transaction block on the startup path");
    // DISCARD ALL drops prepared statements; pgredact forgets them too.
    c.batch_execute("PREPARE zq_p AS SELECT email FROM customers WHERE customer_id = 1")
        .await
        .unwrap();
    assert!(rows(&c, "EXECUTE zq_p").await.unwrap()[0].contains("***@"));
    c.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(
        code(&c.simple_query("EXECUTE zq_p").await.unwrap_err()),
        "26000",
        "the prepared statement is gone"
    );
    let c = on_startup_path(c).await;
    // Nothing of pgredact's is undone by RESET ALL: the planner channels are closed by the
    // masking views themselves (tests/planner.rs).
    c.batch_execute("RESET ALL").await.unwrap();
    on_startup_path(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_close_only_that_session() {
    let env = start_default().await;
    let good = env.proxy("support").await;
    // A raw client: startup as trust-less scram user would need SCRAM; use a garbage startup instead.
    let mut raw = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    raw.write_all(&[0, 0, 0, 8, 0x7f, 0x7f, 0x7f, 0x7f])
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = raw.read(&mut buf).await.unwrap();
    assert!(n > 0 && buf[0] == b'E', "an ErrorResponse, then close");
    assert_eq!(raw.read(&mut buf).await.unwrap_or(0), 0);
    // Oversized startup length.
    let mut raw = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    raw.write_all(&[0x7f, 0, 0, 0]).await.unwrap();
    let n = raw.read(&mut buf).await.unwrap();
    assert!(n > 0 && buf[0] == b'E');
    // The established session and new sessions are unaffected.
    assert_eq!(rows(&good, "SELECT 1").await.unwrap(), vec!["1"]);
    let again = env.proxy("support").await;
    assert_eq!(rows(&again, "SELECT 2").await.unwrap(), vec!["2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_is_seen_as_it_commits_and_prepared_statements_are_rechecked() {
    let extra = "CREATE TABLE late_people (LIKE customers INCLUDING DEFAULTS);
                 INSERT INTO late_people (customer_id, email, tier) VALUES (900003, 'late.person@example.com', 'x');
                 GRANT SELECT ON late_people TO support;";
    let env = start(
        pgredact::demo::EXAMPLE_POLICY,
        ClusterOptions::default(),
        extra,
    )
    .await;
    let s = env.proxy("support").await;
    let su = env.direct("postgres").await;
    // Before: an ordinary table, read as is. Prepare statements over it and over a masked table.
    assert_eq!(
        rows(&s, "SELECT email FROM late_people").await.unwrap(),
        vec!["late.person@example.com"]
    );
    let stale = s.prepare("SELECT email FROM late_people").await.unwrap();
    let kept = s
        .prepare("SELECT email FROM customers WHERE customer_id = $1")
        .await
        .unwrap();
    s.batch_execute("PREPARE late_ps AS SELECT email FROM late_people; PREPARE kept_ps AS SELECT email FROM customers WHERE customer_id = 1")
        .await
        .unwrap();
    // The periodic refresh keeps the snapshot (and its rewrite cache) while no DDL committed.
    let db = env.shared.db("app").await.unwrap();
    let epoch = db.snapshot().epoch;
    db.periodic_refresh(&env.shared).await.unwrap();
    assert_eq!(db.snapshot().epoch, epoch, "no DDL, same snapshot");
    // An unrelated DDL: statements whose decision did not change keep working.
    su.batch_execute("CREATE TABLE unrelated_x (a int)")
        .await
        .unwrap();
    let r = s.query(&kept, &[&1i64]).await.expect("still bindable");
    assert!(r[0].get::<_, String>(0).contains("***@"));
    assert!(rows(&s, "EXECUTE kept_ps").await.unwrap()[0].contains("***@"));
    // The table becomes a child of customers. The DDL trigger revokes masked roles' access to
    // its PII in the DDL's own transaction, so the very next statement gets masked data or a
    // permission error, never raw data, whether or not pgredact's catalog caught up yet.
    su.batch_execute("ALTER TABLE late_people INHERIT customers")
        .await
        .unwrap();
    match rows(&s, "SELECT email FROM late_people").await {
        Ok(r) => assert_eq!(r, vec!["l***@example.com"]),
        Err(e) => assert_eq!(code(&e), "42501", "{e}"),
    }
    let direct = env.direct("support").await;
    assert_eq!(
        code(
            &direct
                .simple_query("SELECT email FROM late_people")
                .await
                .unwrap_err()
        ),
        "42501",
        "denied straight away by PostgreSQL"
    );
    assert_eq!(
        rows(&direct, "SELECT email FROM pgredact_masked.late_people")
            .await
            .unwrap(),
        vec!["l***@example.com"],
        "its masking view was built in the same transaction"
    );
    // Once the catalog is current (the DDL trigger's NOTIFY asks for that), masked.
    db.refresh_since(&env.shared, std::time::Instant::now())
        .await
        .unwrap();
    assert_eq!(
        rows(&s, "SELECT email FROM late_people").await.unwrap(),
        vec!["l***@example.com"]
    );
    // Statements prepared before now read PII: they are refused, with a hint to prepare again
    // (or, with a stale catalog, PostgreSQL denies them).
    assert_refused(
        s.query(&stale, &[]).await,
        "decided before a change",
        "stale protocol statement",
    );
    assert_refused(
        s.simple_query("EXECUTE late_ps").await,
        "late_ps",
        "stale SQL-level statement",
    );
    // Prepared again, it runs masked.
    s.batch_execute("DEALLOCATE late_ps; PREPARE late_ps AS SELECT email FROM late_people")
        .await
        .unwrap();
    assert_eq!(
        rows(&s, "EXECUTE late_ps").await.unwrap(),
        vec!["l***@example.com"]
    );
    let again = s.prepare("SELECT email FROM late_people").await.unwrap();
    let r = s.query(&again, &[]).await.unwrap();
    assert_eq!(r[0].get::<_, String>(0), "l***@example.com");
    // Without the DDL trigger, PostgreSQL would not lock down what becomes protected: masked
    // statements are refused (fail closed) from the next check on (the periodic refresh notices),
    // until it is enabled again; unmasked sessions are unaffected.
    su.batch_execute("ALTER EVENT TRIGGER pgredact_ddl DISABLE")
        .await
        .unwrap();
    db.periodic_refresh(&env.shared).await.unwrap();
    assert_refused(
        s.simple_query("SELECT tier FROM customers LIMIT 1").await,
        "pgredact_ddl is missing or not enabled ALWAYS",
        "no DDL trigger",
    );
    let dba = env.proxy("dba").await;
    assert_eq!(rows(&dba, "SELECT 1").await.unwrap(), vec!["1"]);
    su.batch_execute("ALTER EVENT TRIGGER pgredact_ddl ENABLE ALWAYS")
        .await
        .unwrap();
    db.periodic_refresh(&env.shared).await.unwrap();
    assert_eq!(rows(&s, "SELECT 1").await.unwrap(), vec!["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_exemption_counts_from_the_next_statement_in_postgresql_itself() {
    // temp_dba reads raw data through pii_readers only, and is also a support user.
    let extra =
        "CREATE ROLE temp_dba LOGIN PASSWORD 'temp_dba'; GRANT pii_readers, support TO temp_dba;";
    let env = start(
        pgredact::demo::EXAMPLE_POLICY,
        ClusterOptions::default(),
        extra,
    )
    .await;
    let su = env.direct("postgres").await;
    let t = env.proxy("temp_dba").await;
    let raw = rows(&t, "SELECT email FROM customers WHERE customer_id = 1")
        .await
        .unwrap();
    assert!(!raw[0].contains("***"), "unmasked before: {raw:?}");
    su.batch_execute("REVOKE pii_readers FROM temp_dba")
        .await
        .unwrap();
    // The unmasked session is a plain relay: PostgreSQL itself refuses the raw read.
    let e = t
        .simple_query("SELECT email FROM customers WHERE customer_id = 1")
        .await
        .expect_err("raw access is gone at the next statement");
    assert_eq!(code(&e), "42501", "{e:?}");
    assert_eq!(
        rows(&t, "SELECT tier FROM customers WHERE customer_id = 1")
            .await
            .unwrap(),
        vec!["silver"],
        "what support may read still works"
    );
    // A new session of that role is masked.
    let t2 = env.proxy("temp_dba").await;
    let r = rows(&t2, "SELECT email FROM customers WHERE customer_id = 1")
        .await
        .unwrap();
    assert!(r[0].contains("***@"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_proxy_enforcement_revoking_membership_ends_an_open_unmasked_session() {
    let extra = "CREATE ROLE temp_dba LOGIN PASSWORD 'temp_dba'; GRANT pii_readers TO temp_dba; GRANT SELECT ON ALL TABLES IN SCHEMA public TO temp_dba;";
    let policy = format!(
        "enforcement = \"proxy\"\n{}",
        pgredact::demo::EXAMPLE_POLICY
    );
    let env = start(&policy, ClusterOptions::default(), extra).await;
    let su = env.direct("postgres").await;
    let t = env.proxy("temp_dba").await;
    let raw = rows(&t, "SELECT email FROM customers WHERE customer_id = 1")
        .await
        .unwrap();
    assert!(!raw[0].contains("***"), "unmasked before: {raw:?}");
    // Another role's change does not disturb the session.
    su.batch_execute("CREATE ROLE bystander; GRANT pii_readers TO bystander")
        .await
        .unwrap();
    assert_eq!(rows(&t, "SELECT 1").await.unwrap(), vec!["1"]);
    su.batch_execute("REVOKE pii_readers FROM temp_dba")
        .await
        .unwrap();
    let e = t
        .simple_query("SELECT email FROM customers WHERE customer_id = 1")
        .await
        .expect_err("the session must end");
    let msg = e.as_db_error().map(|d| d.message().to_string());
    assert_eq!(code(&e), "57P01", "{e:?}");
    assert!(
        msg.as_deref().unwrap_or("").contains("no longer exempt"),
        "{msg:?}"
    );
    // A new session of that role is masked.
    let t2 = env.proxy("temp_dba").await;
    let r = rows(&t2, "SELECT email FROM customers WHERE customer_id = 1")
        .await
        .unwrap();
    assert!(r[0].contains("***@"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_terminated_at_the_proxy_and_can_be_required() {
    let env = start_default().await;
    let dir = env.dir.join("tls");
    write_policy(&dir, pgredact::demo::EXAMPLE_POLICY);
    let gen = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl (installed by .ci/run)");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    // A broken key is reported with its file name, before anything listens.
    std::fs::write(dir.join("bad.pem"), "not a key").unwrap();
    let bad = pgredact::config::Config::parse(
        &format!(
            "{}[tls]\ncert = \"cert.pem\"\nkey = \"bad.pem\"\n",
            config_text("127.0.0.1:0", env.cluster.port)
        ),
        &dir.join("pgredact.toml"),
    )
    .unwrap();
    let e = pgredact::proxy::bind(bad)
        .await
        .err()
        .expect("bad key refused");
    assert!(matches!(e, pgredact::proxy::Error::Setup(_)), "{e:?}");
    assert!(e.to_string().contains("bad.pem"), "{e}");

    let cfg = pgredact::config::Config::parse(
        &format!(
            "{}[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nrequire = true\n",
            config_text("127.0.0.1:0", env.cluster.port)
        ),
        &dir.join("pgredact.toml"),
    )
    .unwrap();
    let (listener, shared) = pgredact::proxy::bind(cfg).await.expect("bind with TLS");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(pgredact::proxy::run(listener, shared));
    let root = dir.join("cert.pem");
    let conn = |user: &str, mode: &str| {
        format!(
            "host=localhost port={port} dbname=app user={user} sslmode={mode} sslrootcert={}",
            root.display()
        )
    };
    // verify-full: the proxy presents our certificate for "localhost"; masked over TLS.
    let (ok, out, err) = tokio::task::block_in_place(|| {
        psql_conn(
            &conn("support", "verify-full"),
            "support",
            "SELECT email FROM customers WHERE customer_id = 1",
        )
    });
    assert!(ok, "{err}");
    assert!(out.trim().contains("***@"), "{out}");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        psql_conn(&conn("support", "verify-full"), "support", "\\conninfo")
    });
    assert!(ok && out.contains("SSL connection"), "{out}{err}");
    // The unmasked relay over TLS.
    let (ok, out, err) = tokio::task::block_in_place(|| {
        psql_conn(
            &conn("dba", "require"),
            "dba",
            "SELECT email FROM customers WHERE customer_id = 1",
        )
    });
    assert!(ok, "{err}");
    assert!(out.contains('@') && !out.contains("***"), "{out}");
    // require = true: a plaintext session is refused at startup.
    let (ok, _, err) = tokio::task::block_in_place(|| {
        psql_conn(&conn("support", "disable"), "support", "SELECT 1")
    });
    assert!(!ok);
    assert!(err.contains("requires TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_towards_postgresql_with_verify_full() {
    let env = start(
        pgredact::demo::EXAMPLE_POLICY,
        ClusterOptions::default(),
        "",
    )
    .await;
    let dir = env.dir.join("up");
    write_policy(&dir, pgredact::demo::EXAMPLE_POLICY);
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    sh(
        &dir,
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=pgredact-test-ca \
          -keyout ca.key -out ca.crt \
        && openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout pg.key -out pg.csr \
        && printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf \
        && openssl x509 -req -in pg.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
          -extfile ext.cnf -out pg.crt",
    );
    // Hand PostgreSQL its certificate and key.
    env.enable_server_tls(&dir).await;
    let su = env.direct("postgres").await;

    // Settings errors are reported when the config is read.
    let base = config_text("127.0.0.1:0", env.cluster.port);
    let with = |extra: &str| {
        pgredact::config::Config::parse(
            &base.replace("[upstream]\n", &format!("[upstream]\n{extra}\n")),
            &dir.join("pgredact.toml"),
        )
    };
    assert!(with("sslmode = \"prefer\"")
        .unwrap_err()
        .to_string()
        .contains("verify-full"));
    assert!(with("sslmode = \"verify-full\"")
        .unwrap_err()
        .to_string()
        .contains("upstream.ca"));

    let cfg = with("sslmode = \"verify-full\"\nca = \"ca.crt\"").expect("config");
    let (listener, shared) = pgredact::proxy::bind(cfg).await.expect("bind");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(pgredact::proxy::run(listener, shared));
    let log_tail = || {
        let l = env.cluster.read_log();
        l[l.len().saturating_sub(3000)..].to_string()
    };
    let connect = |user: &str| {
        let conn = format!(
            "host=127.0.0.1 port={port} dbname=app user={user} password={}",
            password(user)
        );
        async move {
            let (c, conn) = match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
                Ok(x) => x,
                Err(e) => panic!(
                    "connect through the TLS-upstream proxy: {e:?}\n{}",
                    log_tail()
                ),
            };
            tokio::spawn(conn);
            c
        }
    };
    let s = connect("support").await;
    let r = rows(&s, "SELECT email FROM customers WHERE customer_id = 1")
        .await
        .unwrap();
    assert!(r[0].contains("***@"), "{r:?}");
    let d = connect("dba").await;
    assert_eq!(
        rows(
            &d,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .await
        .unwrap(),
        vec!["t"],
        "the unmasked session's upstream connection is TLS"
    );
    // Every connection pgredact holds to PostgreSQL (sessions and control) is TLS.
    let r = rows(
        &su,
        "SELECT a.usename || ':' || s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.usename IN ('support', 'dba', 'pgredact') ORDER BY 1",
    )
    .await
    .unwrap();
    assert!(
        r.iter().any(|x| x == "support:true") && r.iter().any(|x| x == "pgredact:true"),
        "{r:?}"
    );
    assert!(r.iter().all(|x| x.ends_with(":true")), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_tables_that_are_renamed_or_detached_stay_protected() {
    let extra = "CREATE TABLE contact_log (customer_id bigint, region text, email text) PARTITION BY LIST (region);
                 CREATE TABLE contact_log_eu PARTITION OF contact_log FOR VALUES IN ('eu');
                 INSERT INTO contact_log VALUES (1, 'eu', 'eu.person@example.com');
                 GRANT SELECT ON contact_log, contact_log_eu TO support;";
    let policy = example_policy_with(
        "[tables.\"public.contact_log\"]\nsubject = \"customer_id\"\ncolumns.email = \"email\"\n",
    );
    let env = start(&policy, ClusterOptions::default(), extra).await;
    let s = env.proxy("support").await;
    let su = env.direct("postgres").await;
    assert_eq!(
        rows(&s, "SELECT email FROM contact_log_eu").await.unwrap(),
        vec!["e***@example.com"]
    );
    // The table swap of a migration: the old table keeps its PII under a new name.
    su.batch_execute(
        "ALTER TABLE customers RENAME TO customers_old; \
         CREATE TABLE customers (LIKE customers_old INCLUDING DEFAULTS); \
         GRANT SELECT ON customers TO support; \
         ALTER TABLE contact_log DETACH PARTITION contact_log_eu;",
    )
    .await
    .unwrap();
    assert_refused(
        s.simple_query("SELECT email FROM customers_old WHERE customer_id = 1")
            .await,
        "was protected as public.customers",
        "renamed policy table",
    );
    assert_refused(
        s.simple_query("SELECT email FROM contact_log_eu").await,
        "was protected as public.contact_log",
        "detached partition",
    );
    // The new table under the policy's name is protected as usual.
    assert_eq!(
        rows(&s, "SELECT count(*) FROM customers").await.unwrap(),
        vec!["0"]
    );
    // The record lives in the database: a pgredact started now knows it too.
    let rec = rows(
        &su,
        "SELECT relid::regclass::text || '=' || policy_table FROM pgredact.protected_relations ORDER BY 1",
    )
    .await
    .unwrap();
    assert!(
        rec.contains(&"customers_old=public.customers".to_string())
            && rec.contains(&"contact_log_eu=public.contact_log".to_string()),
        "{rec:?}"
    );
    let (listener, shared) = pgredact::proxy::bind(env.config()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(pgredact::proxy::run(listener, shared));
    let (ok, _, err) = tokio::task::block_in_place(|| {
        psql_at(
            port,
            "support",
            "app",
            "SELECT email FROM customers_old LIMIT 1",
        )
    });
    assert!(
        !ok && err.contains("was protected as public.customers"),
        "{err}"
    );
    // Once the policy names the table, it is masked by its own entry.
    let named = format!("{policy}\n[tables.\"public.customers_old\"]\ncolumns.email = \"email\"\n");
    std::fs::write(env.dir.join("policies/app.toml"), named).unwrap();
    let mut masked = None;
    for _ in 0..600 {
        match rows(&s, "SELECT email FROM customers_old WHERE customer_id = 1").await {
            Ok(r) => {
                masked = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let masked = masked.expect("the policy reload names customers_old");
    assert!(masked[0].contains("***@"), "{masked:?}");
}
