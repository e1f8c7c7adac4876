//! Mask kinds `fake`, `noise` and `bucket` end to end: generated rows of every type
//! they take, read through pgredact and straight from the masking views as a masked role, must
//! equal the statically masked twin (the independent implementation in support/masks.rs) and
//! keep the kinds' guarantees: deterministic (also under other session settings),
//! type-preserving, never the raw value for `noise`, lower bounds for `bucket`, and joinable
//! fakes across tables.

mod support;

use pgredact::pgcluster::{Auth, ClusterOptions};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use support::adv::Raw;
use support::*;

const TABLES: &str = r#"
CREATE TABLE public.zq_people (
  id int PRIMARY KEY, first_name text, last_name varchar(6), full_name text, email varchar(255),
  phone text, street text, city char(12), age smallint, score int, big bigint,
  amount numeric(8,2), loose numeric, ratio real, weight float8, born date, visit date,
  seen timestamp, seen_b timestamp, at timestamptz, at_n timestamptz);
CREATE TABLE public.zq_people_copy (pid int PRIMARY KEY, email varchar(255));
CREATE TABLE public.zq_nokey (email text, amount numeric(8,2), note text DEFAULT 'n');
GRANT SELECT ON public.zq_people, public.zq_people_copy, public.zq_nokey TO support, pii_readers;
"#;

const POLICY: &str = r#"
database = "app"
unmasked_roles = ["pii_readers"]

[tables."public.zq_people"]
columns.first_name = { mask = "fake", kind = "first_name" }
columns.last_name = { mask = "fake", kind = "last_name" }
columns.full_name = { mask = "fake", kind = "name" }
columns.email = { mask = "fake", kind = "email" }
columns.phone = { mask = "fake", kind = "phone" }
columns.street = { mask = "fake", kind = "street_address" }
columns.city = { mask = "fake", kind = "city" }
columns.age = { mask = "bucket", step = 10 }
columns.score = { mask = "noise", ratio = 0.1, per_row = true }
columns.big = { mask = "noise", ratio = 0.5, per_row = true }
columns.amount = { mask = "noise", ratio = 0.2, per_row = true }
columns.loose = { mask = "bucket", step = 0.5 }
columns.ratio = { mask = "noise", ratio = 0.05 }
columns.weight = { mask = "bucket", step = 2.5 }
columns.born = { mask = "bucket", interval = "10 years" }
columns.visit = { mask = "noise", interval = "7 days", per_row = true }
columns.seen = { mask = "noise", interval = "12 hours" }
columns.seen_b = { mask = "bucket", interval = "1 week" }
columns.at = { mask = "bucket", interval = "3 months" }
columns.at_n = { mask = "noise", interval = "1 hour" }

[tables."public.zq_people_copy"]
columns.email = { mask = "fake", kind = "email" }

[tables."public.zq_nokey"]
columns.email = { mask = "fake", kind = "email" }
columns.amount = { mask = "noise", ratio = 0.1 }
"#;

const COLS: &str = "id, first_name, last_name, full_name, email, phone, street, city, age, score, big, amount, loose, ratio, weight, born, visit, seen, seen_b, at, at_n";

/// One generated row as SQL literals (NULL included), in `COLS` order after the id.
fn row_strategy() -> impl Strategy<Value = Vec<String>> {
    let opt = |s: BoxedStrategy<String>| prop_oneof![1 => Just("NULL".to_string()), 9 => s].boxed();
    let text = |re: &'static str| {
        opt(re
            .prop_map(move |s| format!("'{}'", s.replace('\'', "''")))
            .boxed())
    };
    let int = |lo: i64, hi: i64| opt((lo..=hi).prop_map(|v| v.to_string()).boxed());
    (
        (
            text("[A-Z][a-z]{2,9}"),
            text("[A-Z][a-z]{2,4}"),
            text("[A-Z][a-z]{2,8} [A-Z][a-z]{2,10}"),
            text("[a-z]{1,8}\\.[a-z]{1,8}@[a-z]{3,8}\\.(com|org)"),
            text("\\+[1-9][0-9]{9,12}"),
            text("[1-9][0-9]{0,3} [A-Z][a-z]{3,9} (Street|Road)"),
            text("[A-Z][a-z]{3,10}"),
        ),
        (
            int(-32768, 32767),
            int(-2_000_000_000, 2_000_000_000),
            prop_oneof![
                Just(i64::MAX.to_string()),
                Just(i64::MIN.to_string()),
                any::<i64>().prop_map(|v| v.to_string())
            ]
            .boxed(),
            opt((-99_999_999_i64..=99_999_999)
                .prop_map(|v| (v as f64 / 100.0).to_string())
                .boxed()),
            opt((-1_000_000i64..1_000_000, 0u32..5)
                .prop_map(|(v, s)| format!("{}e-{s}", v))
                .boxed()),
            opt((-1.0e6f32..1.0e6).prop_map(|v| format!("{v:?}")).boxed()),
            opt((-1.0e9f64..1.0e9).prop_map(|v| format!("{v:?}")).boxed()),
        ),
        (
            opt((-600_000i64..30_000)
                .prop_map(|d| format!("DATE '2000-01-01' + {d}"))
                .boxed()),
            opt((-30_000i64..30_000)
                .prop_map(|d| format!("DATE '2000-01-01' + {d}"))
                .boxed()),
            opt((-2_000_000_000i64..2_000_000_000)
                .prop_map(|s| format!("TIMESTAMP '2000-01-01' + {s} * INTERVAL '1.000001 second'"))
                .boxed()),
            opt((-2_000_000_000i64..2_000_000_000)
                .prop_map(|s| format!("TIMESTAMP '2000-01-01' + {s} * INTERVAL '1 second'"))
                .boxed()),
            opt((-2_000_000_000i64..2_000_000_000)
                .prop_map(|s| {
                    format!("TIMESTAMPTZ '2000-01-01 00:00+00' + {s} * INTERVAL '1 second'")
                })
                .boxed()),
            opt((-2_000_000_000i64..2_000_000_000)
                .prop_map(|s| {
                    format!("TIMESTAMPTZ '2000-01-01 00:00+00' + {s} * INTERVAL '1.5 second'")
                })
                .boxed()),
        ),
    )
        .prop_map(|(a, b, c)| {
            let mut v = vec![a.0, a.1, a.2, a.3, a.4, a.5, a.6];
            v.extend([b.0, b.1, b.2, b.3, b.4, b.5, b.6]);
            v.extend([c.0, c.1, c.2, c.3, c.4, c.5]);
            v
        })
}

/// Masks the policy tables of database `twin` with the reference implementation.
async fn build_twin(env: &Env, data_sql: &str) {
    let c = &env.cluster;
    tokio::task::block_in_place(|| {
        c.create_database("twin").expect("create twin");
        c.superuser_psql("twin", TABLES).expect("twin tables");
        c.superuser_psql("twin", data_sql).expect("twin data");
    });
    let t = c.superuser_connect("twin").await.expect("twin");
    pgredact::control::ensure(&t, Some(HASH_KEY.as_bytes()))
        .await
        .expect("twin key");
    let policy = pgredact::policy::parse_policy(POLICY, std::path::Path::new("app.toml"))
        .expect("policy parses");
    for tp in policy.tables.values() {
        let rel = format!("public.{}", tp.name);
        let mut sets = Vec::new();
        for (col, cp) in &tp.columns {
            let row = t
                .query_one(
                    "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod), ty.typname::text, ty.typcategory::text \
                     FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid \
                     WHERE a.attrelid = $1::text::regclass AND a.attname = $2",
                    &[&rel, col],
                )
                .await
                .expect("column type");
            let ty = pgredact::policy::ColType {
                sql: row.get(0),
                base: row.get(1),
                category: row.get::<_, String>(2).chars().next().unwrap_or('X'),
            };
            // Every column fits its mask (what `pgredact check` verifies).
            pgredact::policy::mask_fits(&cp.mask, &ty).unwrap_or_else(|e| panic!("{col}: {e}"));
            let q = pgredact::policy::quote_ident(col);
            sets.push(format!(
                "{q} = {}",
                support::masks::mask_sql(&cp.mask, &q, &ty)
            ));
        }
        t.batch_execute(&format!("UPDATE {rel} SET {}", sets.join(", ")))
            .await
            .expect("twin bucket");
        for (col, cp) in &tp.columns {
            support::adv::twin_fake_noise(&t, tp, col, &cp.mask).await;
        }
    }
}

/// Every row as binary cells (hex), ordered by `order`.
async fn binary_rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<Raw>>(i).map(|Raw(b)| hex::encode(b)))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_noise_and_bucket_match_the_twin_through_pgredact_and_directly() {
    // Generated rows (proptest strategies), plus fixed edge cases: zeros, type limits, repeats.
    let mut runner = TestRunner::deterministic();
    let strategy = row_strategy();
    let mut rows: Vec<Vec<String>> = (0..150)
        .map(|_| strategy.new_tree(&mut runner).expect("value").current())
        .collect();
    let mut edge = rows[0].clone();
    for (i, v) in ["0", "0", "0", "0.00", "0", "0", "0"].iter().enumerate() {
        edge[7 + i] = v.to_string();
    }
    rows.push(edge.clone());
    edge[7] = "32767".into();
    edge[8] = "2147483647".into();
    edge[9] = "-9223372036854775808".into();
    edge[10] = "999999.99".into();
    edge[15] = "'infinity'".into();
    edge[16] = "'-infinity'".into();
    edge[17] = "'infinity'".into();
    edge[19] = "'infinity'".into();
    rows.push(edge);
    // The same values in another row: fakes equal, noise differs (another primary key).
    rows.push(rows[3].clone());
    let mut data = String::new();
    for (i, r) in rows.iter().enumerate() {
        data.push_str(&format!(
            "INSERT INTO public.zq_people ({COLS}) VALUES ({}, {});\n",
            i + 1,
            r.join(", ")
        ));
    }
    data.push_str(
        "INSERT INTO public.zq_people_copy SELECT id + 1000, email FROM public.zq_people WHERE id % 3 = 0;\n\
         INSERT INTO public.zq_nokey (email, amount) SELECT email, amount FROM public.zq_people;\n\
         INSERT INTO public.zq_nokey (email, amount) SELECT email, amount FROM public.zq_people WHERE id <= 20;\n",
    );
    let env = start(
        POLICY,
        ClusterOptions {
            auth: Auth::Trust,
            ..Default::default()
        },
        &format!("{TABLES}{data}"),
    )
    .await;
    build_twin(&env, &data).await;
    let twin = env.cluster.superuser_connect("twin").await.expect("twin");
    let dba = env.proxy("dba").await;
    let support = env.proxy("support").await;
    let direct = env.direct("support").await;
    let n_rows = rows.len();

    for (table, order) in [
        ("zq_people", "id"),
        ("zq_people_copy", "pid"),
        ("zq_nokey", "email, amount"),
    ] {
        let q = format!("SELECT * FROM {table} ORDER BY {order}");
        let want = binary_rows(&twin, &q).await;
        let proxied = binary_rows(&support, &q).await;
        let straight = binary_rows(
            &direct,
            &format!("SELECT * FROM pgredact_masked.{table} ORDER BY {order}"),
        )
        .await;
        assert!(!want.is_empty(), "{table}");
        // zq_nokey's order uses masked values: compare as sets there.
        let sorted = |mut v: Vec<Vec<Option<String>>>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(proxied.clone()),
            sorted(want.clone()),
            "{table}: through pgredact = twin"
        );
        assert_eq!(
            sorted(straight),
            sorted(want),
            "{table}: straight from the masking view = twin"
        );
        // Deterministic: again, in a session with other settings, the same bytes.
        let odd = env.proxy("support").await;
        odd.batch_execute(
            "SET TimeZone = 'Asia/Kathmandu'; SET DateStyle = 'SQL, DMY'; SET extra_float_digits = -10; SET IntervalStyle = 'sql_standard'",
        )
        .await
        .expect("settings");
        assert_eq!(
            binary_rows(&odd, &q).await,
            proxied,
            "{table}: same answer under other settings"
        );
    }

    // The guarantees, column by column, against the raw rows.
    let raw = dba
        .query(&format!("SELECT {COLS} FROM zq_people ORDER BY id"), &[])
        .await
        .expect("raw");
    let masked = support
        .query(&format!("SELECT {COLS} FROM zq_people ORDER BY id"), &[])
        .await
        .expect("masked");
    assert_eq!(raw.len(), n_rows);
    let txt = |r: &tokio_postgres::Row, c: &str| -> Option<String> {
        r.get::<_, Option<Raw>>(c)
            .map(|Raw(b)| String::from_utf8_lossy(&b).into_owned())
    };
    let (mut moved, mut same_fake) = (0, 0);
    for (r, m) in raw.iter().zip(&masked) {
        // NULL stays NULL, and only NULL gives NULL.
        for c in COLS.split(", ") {
            assert_eq!(
                r.get::<_, Option<Raw>>(c).is_none(),
                m.get::<_, Option<Raw>>(c).is_none(),
                "{c}: NULL in, NULL out"
            );
        }
        // Type limits of the column hold (varchar(6), char(12)).
        if let Some(l) = txt(m, "last_name") {
            assert!(l.chars().count() <= 6, "{l}");
        }
        if let Some(c) = txt(m, "city") {
            assert_eq!(c.chars().count(), 12, "{c:?}");
        }
        if let Some(e) = txt(m, "email") {
            assert!(e.contains("@example."), "{e}");
        }
        for c in ["first_name", "full_name", "email", "phone", "street"] {
            if let (Some(a), Some(b)) = (txt(r, c), txt(m, c)) {
                same_fake += usize::from(a == b);
            }
        }
        // noise: never the raw value unless it is zero (or infinite), within its bound.
        let i = |row: &tokio_postgres::Row, c: &str| -> Option<i128> {
            match c {
                "score" => row.get::<_, Option<i32>>(c).map(i128::from),
                _ => row.get::<_, Option<i64>>(c).map(i128::from),
            }
        };
        for (c, ratio) in [("score", 0.1), ("big", 0.5)] {
            if let (Some(a), Some(b)) = (i(r, c), i(m, c)) {
                if a == 0 {
                    assert_eq!(b, 0, "{c}: 0 stays 0");
                } else {
                    assert_ne!(a, b, "{c}: never the raw value");
                    let bound = ((a.abs() as f64) * ratio).floor().max(1.0) as i128;
                    assert!((a - b).abs() <= bound, "{c}: {a} -> {b} beyond {bound}");
                    moved += 1;
                }
            }
        }
        if let (Some(a), Some(b)) = (
            r.get::<_, Option<f32>>("ratio"),
            m.get::<_, Option<f32>>("ratio"),
        ) {
            if a == 0.0 {
                assert_eq!(b, 0.0);
            } else {
                assert_ne!(a, b, "real: never the raw value");
                assert!(((b - a) / a).abs() <= 0.0501, "{a} -> {b}");
            }
        }
        // bucket: the lower bound of the value's bucket.
        if let (Some(a), Some(b)) = (
            r.get::<_, Option<i16>>("age"),
            m.get::<_, Option<i16>>("age"),
        ) {
            assert!(
                b <= a && (i32::from(a) - i32::from(b) < 10 || b == i16::MIN),
                "{a} -> {b}"
            );
            assert!(b % 10 == 0 || b == i16::MIN, "{a} -> {b}");
        }
        if let (Some(a), Some(b)) = (
            r.get::<_, Option<f64>>("weight"),
            m.get::<_, Option<f64>>("weight"),
        ) {
            assert!(
                b <= a && a - b < 2.5 && (b / 2.5).fract() == 0.0,
                "{a} -> {b}"
            );
        }
    }
    assert!(moved > 200, "{moved}");
    assert!(
        same_fake <= 2,
        "fakes equal to their raw value: {same_fake}"
    );
    // Dates, timestamps and numerics, checked in SQL on both sides.
    let checks = dba
        .query_one(
            "SELECT count(*) FILTER (WHERE m.born IS NOT NULL AND isfinite(r.born) AND NOT (m.born <= r.born AND extract(month FROM m.born) = 1 AND extract(day FROM m.born) = 1 AND (extract(year FROM m.born)::int % 10 = 0 OR extract(year FROM m.born) = 1))),
                    count(*) FILTER (WHERE m.visit IS NOT NULL AND isfinite(r.visit) AND (m.visit = r.visit OR abs(m.visit - r.visit) > 7)),
                    count(*) FILTER (WHERE m.seen IS NOT NULL AND isfinite(r.seen) AND (m.seen = r.seen OR abs(extract(epoch FROM m.seen - r.seen)) > 43200 OR extract(microseconds FROM m.seen)::bigint % 1000000 <> extract(microseconds FROM r.seen)::bigint % 1000000)),
                    count(*) FILTER (WHERE m.seen_b IS NOT NULL AND isfinite(r.seen_b) AND NOT (m.seen_b <= r.seen_b AND r.seen_b - m.seen_b < interval '7 days' AND extract(isodow FROM m.seen_b) = 1 AND m.seen_b = date_trunc('day', m.seen_b))),
                    count(*) FILTER (WHERE m.at IS NOT NULL AND isfinite(r.at) AND NOT (m.at <= r.at AND (m.at AT TIME ZONE 'UTC') = date_trunc('month', m.at AT TIME ZONE 'UTC') AND extract(month FROM m.at AT TIME ZONE 'UTC')::int % 3 = 1)),
                    count(*) FILTER (WHERE m.at_n IS NOT NULL AND isfinite(r.at_n) AND (m.at_n = r.at_n OR abs(extract(epoch FROM m.at_n - r.at_n)) > 3600)),
                    count(*) FILTER (WHERE m.amount IS NOT NULL AND r.amount <> 0 AND (m.amount = r.amount OR abs(m.amount - r.amount) > greatest(abs(r.amount) * 0.2, 0.01))),
                    count(*) FILTER (WHERE m.loose IS NOT NULL AND NOT (m.loose <= r.loose AND r.loose - m.loose < 0.5 AND mod(m.loose, 0.5) = 0)),
                    count(*) FILTER (WHERE m.born IS NOT NULL)
             FROM zq_people r JOIN pgredact_masked.zq_people m USING (id)",
            &[],
        )
        .await
        .expect("checks");
    let labels = [
        "born", "visit", "seen", "seen_b", "at", "at_n", "amount", "loose",
    ];
    for (i, l) in labels.iter().enumerate() {
        assert_eq!(
            checks.get::<_, i64>(i),
            0,
            "{l}: rows breaking the guarantee"
        );
    }
    assert!(checks.get::<_, i64>(8) > 100);
    // The view keeps every column's type, typmod included.
    let types = dba
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), format_type(v.atttypid, v.atttypmod) \
             FROM pg_attribute a JOIN pg_attribute v ON v.attname = a.attname AND v.attrelid = 'pgredact_masked.zq_people'::regclass \
             WHERE a.attrelid = 'public.zq_people'::regclass AND a.attnum > 0",
            &[],
        )
        .await
        .expect("types");
    assert_eq!(types.len(), 21);
    for t in &types {
        assert_eq!(
            t.get::<_, String>(1),
            t.get::<_, String>(2),
            "{}",
            t.get::<_, String>(0)
        );
    }
    // Same input, same fake in every table: the join on the fake e-mail still matches.
    let join = "SELECT count(*) FROM zq_people p JOIN zq_people_copy c ON c.email = p.email";
    let n = |r: tokio_postgres::Row| r.get::<_, i64>(0);
    let raw_join = n(dba.query_one(join, &[]).await.unwrap());
    assert!(raw_join > 30, "{raw_join}");
    assert_eq!(n(support.query_one(join, &[]).await.unwrap()), raw_join);
    // The repeated row: equal fakes, different noise.
    let rep = support
        .query(
            &format!("SELECT email, full_name, score, big FROM zq_people WHERE id IN (4, {n_rows}) ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rep[0].get::<_, Option<String>>(0),
        rep[1].get::<_, Option<String>>(0)
    );
    assert_eq!(
        rep[0].get::<_, Option<String>>(1),
        rep[1].get::<_, Option<String>>(1)
    );
    if rep[0]
        .get::<_, Option<i64>>(3)
        .is_some_and(|v| v.abs() > 1000)
    {
        assert_ne!(
            rep[0].get::<_, Option<i64>>(3),
            rep[1].get::<_, Option<i64>>(3),
            "noise is per row"
        );
    }
    // Without per_row, noise depends on the value alone: a writer who changes the primary key
    // gets no new sample (with per_row it does: README, "noise").
    let q1 =
        "SELECT ratio::text, seen::text, at_n::text, score FROM zq_people WHERE id IN (2, 100002)";
    let before = support.query_one(q1, &[]).await.unwrap();
    let su = env
        .cluster
        .superuser_connect("app")
        .await
        .expect("superuser");
    su.batch_execute("UPDATE public.zq_people SET id = 100002 WHERE id = 2")
        .await
        .unwrap();
    let after = support.query_one(q1, &[]).await.unwrap();
    for i in 0..3 {
        assert_eq!(
            before.get::<_, Option<String>>(i),
            after.get::<_, Option<String>>(i),
            "column {i}"
        );
    }
    assert!(before.get::<_, Option<String>>(1).is_some());
    // Without a primary key, noise depends on the value alone: equal raw rows, equal masks.
    let dup = support
        .query_one(
            "SELECT count(*) FROM (SELECT email, amount, count(*) FROM zq_nokey WHERE amount IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) x",
            &[],
        )
        .await
        .unwrap();
    assert!(n(dup) >= 12);
    // The masked role cannot write a masked column, nor read the key.
    let sol = env.proxy("support").await;
    assert!(sol
        .simple_query("SELECT * FROM pgredact.hash_key")
        .await
        .is_err());
}

/// `fake` inside a JSON document: the same fake as a text column holding the value (so a name
/// in an event payload and in the profile table stay joinable), computed by the twin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_inside_json_paths_matches_the_twin_and_the_column_fake() {
    const SQL: &str = "
CREATE TABLE public.zq_docs (id int PRIMARY KEY, name text, doc jsonb);
INSERT INTO public.zq_docs VALUES
  (1, 'Alice Martin', '{\"buyer\": {\"name\": \"Alice Martin\", \"email\": \"alice@example.org\"}, \"sku\": \"A-1\"}'),
  (2, 'Bob Stone', '{\"buyer\": {\"name\": \"Bob Stone\", \"email\": \"bob@example.net\"}, \"n\": 3}'),
  (3, 'Zoë Ünal', '{\"buyer\": {\"name\": \"Zoë Ünal\"}, \"tags\": [\"x\", {\"name\": \"Zoë Ünal\"}]}'),
  (4, NULL, '{\"buyer\": {\"name\": null, \"email\": 17}}');
GRANT SELECT ON public.zq_docs TO support, pii_readers;
";
    const POLICY: &str = r#"
database = "app"
unmasked_roles = ["pii_readers"]

[tables."public.zq_docs"]
columns.name = { mask = "fake", kind = "name" }

[tables."public.zq_docs".columns.doc]
mask = "json"
paths = { "$.**.name" = { mask = "fake", kind = "name" }, "$.buyer.email" = { mask = "fake", kind = "email" } }
"#;
    let env = start(
        POLICY,
        ClusterOptions {
            auth: Auth::Scram,
            ..Default::default()
        },
        SQL,
    )
    .await;
    let policy = pgredact::policy::parse_policy(POLICY, std::path::Path::new("policies/app.toml"))
        .expect("policy parses");
    let tp = policy.table("public", "zq_docs").expect("table");
    let pgredact::policy::Mask::Json(jm) = &tp.columns["doc"].mask else {
        panic!("json mask");
    };
    let dba = env.proxy("dba").await;
    let raw = dba
        .query("SELECT id, doc::text FROM zq_docs ORDER BY id", &[])
        .await
        .unwrap();
    let want: Vec<String> = raw
        .iter()
        .map(|r| {
            let doc: serde_json::Value = serde_json::from_str(r.get(1)).unwrap();
            support::masks::mask_json(jm, &doc, HASH_KEY.as_bytes()).to_string()
        })
        .collect();
    let q = "SELECT doc::text FROM zq_docs ORDER BY id";
    let normal = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter()
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(r.get(0))
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let support = env.proxy("support").await;
    assert_eq!(normal(support.query(q, &[]).await.unwrap()), want);
    let direct = env.direct("support").await;
    assert_eq!(
        normal(
            direct
                .query(
                    &q.replace("FROM zq_docs", "FROM pgredact_masked.zq_docs"),
                    &[]
                )
                .await
                .unwrap()
        ),
        want,
        "straight to PostgreSQL"
    );
    // Joinable: the fake of a name in the document is the fake of the same name in a column.
    let joined = rows(
        &support,
        "SELECT count(*) FROM zq_docs d JOIN zq_docs c ON c.name = d.doc->'buyer'->>'name'",
    )
    .await
    .unwrap();
    assert_eq!(joined, vec!["3"]);
    // Never the raw name; NULL stays null; a number under a fake path becomes a fake too.
    let all = want.join(" ");
    for raw_name in ["Alice Martin", "Bob Stone", "Zoë Ünal", "alice@example.org"] {
        assert!(!all.contains(raw_name), "{raw_name} in {all}");
    }
    assert!(want[3].contains("\"name\":null"), "{}", want[3]);
}
