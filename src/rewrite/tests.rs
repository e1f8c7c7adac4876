use super::parse::RECURSION_LIMIT;
use super::*;
use crate::catalog::{Catalog, Column, Relation};
use crate::policy::{parse_policy, ColType};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

fn ty(sql: &str, base: &str, cat: char) -> ColType {
    ColType {
        sql: sql.into(),
        base: base.into(),
        category: cat,
    }
}

fn cols(spec: &[(&str, ColType)]) -> Vec<Column> {
    spec.iter()
        .map(|(n, t)| Column {
            name: (*n).into(),
            ty: t.clone(),
        })
        .collect()
}

pub(crate) fn fixture() -> Protections {
    let text = ty("text", "text", 'S');
    let big = ty("bigint", "int8", 'N');
    let mut c = Catalog::default();
    let rel = |oid, schema: &str, name: &str, kind, columns| Relation {
        oid,
        schema: schema.into(),
        name: name.into(),
        kind,
        columns,
    };
    c.add_relation(rel(
        1,
        "public",
        "customers",
        'r',
        cols(&[
            ("customer_id", big.clone()),
            ("first_name", text.clone()),
            ("email", ty("character varying(255)", "varchar", 'S')),
            ("phone", text.clone()),
            ("birth_date", ty("date", "date", 'D')),
            ("tier", text.clone()),
        ]),
    ));
    c.add_relation(rel(
        2,
        "public",
        "customer_events",
        'p',
        cols(&[
            ("event_id", big.clone()),
            ("customer_id", big.clone()),
            ("ip_address", ty("inet", "inet", 'I')),
        ]),
    ));
    c.add_relation(rel(
        3,
        "public",
        "customer_events_2024",
        'r',
        cols(&[
            ("event_id", big.clone()),
            ("customer_id", big.clone()),
            ("ip_address", ty("inet", "inet", 'I')),
        ]),
    ));
    c.parents.insert(3, vec![2]);
    c.add_relation(rel(
        4,
        "public",
        "orders",
        'r',
        cols(&[
            ("order_id", big.clone()),
            ("customer_id", big.clone()),
            ("amount", ty("numeric(12,2)", "numeric", 'N')),
        ]),
    ));
    c.add_relation(rel(
        5,
        "public",
        "customer_emails",
        'v',
        cols(&[("email", text.clone())]),
    ));
    c.view_deps.insert(5, vec![1]);
    c.add_relation(rel(
        6,
        "public",
        "order_totals",
        'v',
        cols(&[("total", big.clone())]),
    ));
    c.view_deps.insert(6, vec![4]);
    c.add_relation(rel(
        7,
        "crm",
        "Contacts",
        'r',
        cols(&[("id", big.clone()), ("Email", text.clone())]),
    ));
    c.add_relation(rel(100, "pg_catalog", "pg_stats", 'v', vec![]));
    c.add_relation(rel(103, "pg_catalog", "pg_shadow", 'v', vec![]));
    c.add_relation(rel(104, "pg_catalog", "pg_user", 'v', vec![]));
    c.view_deps.insert(104, vec![103]);
    c.add_relation(rel(105, "public", "shadow_copy", 'v', vec![]));
    c.view_deps.insert(105, vec![103]);
    c.add_relation(rel(101, "pg_catalog", "pg_class", 'r', vec![]));
    c.add_relation(rel(
        102,
        "pgredact",
        "hash_key",
        'r',
        cols(&[("ipad", ty("bytea", "bytea", 'U'))]),
    ));
    for f in [
        "upper",
        "lower",
        "count",
        "sum",
        "now",
        "length",
        "left",
        "right",
        "concat",
        "substr",
        "strpos",
        "date_trunc",
        "row_to_json",
        "query_to_xml",
        "set_config",
        "generate_series",
        "md5",
        "avg",
        "row_number",
        "current_setting",
        "to_char",
        "encode",
        "jsonb_build_object",
        "string_agg",
        "pg_sleep",
        "max",
        "min",
        "format",
        "pg_is_in_recovery",
    ] {
        c.add_function("pg_catalog", f);
    }
    c.add_function_entry("public", "leak_fn", false);
    c.add_function_entry("public", "safe_fn", false);
    c.add_function_entry("pg_catalog", "sneaky_fn", false);
    c.risky_types.insert("zq_contact".into());
    c.user_operators.insert("===".into(), HashSet::from(['S']));
    c.function_categories
        .insert("upper".into(), HashSet::from(['S']));
    for (rel, cols) in [
        ("email", 'S'),
        ("tier", 'S'),
        ("customer_id", 'N'),
        ("amount", 'N'),
    ] {
        c.column_categories
            .insert(rel.into(), HashSet::from([cols]));
    }
    let pol = parse_policy(
        r#"
database = "app"
unmasked_roles = ["dba"]
allowed_functions = ["public.safe_fn"]
[tables."public.customers"]
subject = "customer_id"
columns.email = "email"
columns.first_name = "null"
columns.phone = { mask = "partial", keep_last = 2 }
columns.birth_date = "year"
[tables."public.customer_events"]
subject = "customer_id"
columns.ip_address = "null"
[tables.'crm."Contacts"']
columns.Email = "redact"
"#,
        Path::new("t.toml"),
    )
    .unwrap();
    crate::rewrite::protect::fixture_masking_views(&mut c, &pol);
    Protections::build(&pol, Arc::new(c))
}

pub(crate) fn path() -> Vec<String> {
    vec!["pg_catalog".into(), "public".into()]
}

pub(crate) fn run(sql: &str) -> Outcome {
    run_at(sql, true)
}

fn run_at(sql: &str, path_at_start: bool) -> Outcome {
    let p = fixture();
    let sp = path();
    rewrite(
        sql,
        &SessionCtx {
            prot: &p,
            search_path: &sp,
            path_at_start,
        },
    )
}

fn rewritten(sql: &str) -> String {
    match run(sql).decision {
        Decision::Rewrite(s) => s,
        other => panic!("expected rewrite of {sql:?}, got {other:?}"),
    }
}

fn refused(sql: &str) -> String {
    refusal(sql).message
}

/// The refusal of `sql`, whose kind must give the metric label the message used to give. One
/// deliberate exception: reading a view over PII was counted as `pii_write` (its reason says
/// "which holds PII"); it is a refused relation, `catalog_object`.
fn refusal(sql: &str) -> Refusal {
    match run(sql).decision {
        Decision::Refuse(r) => {
            let legacy = crate::metrics::legacy_reason(&r.message);
            let view_over_pii = r.kind == RefusalKind::CatalogObject
                && legacy == "pii_write"
                && r.message
                    .contains("which holds PII; query the table instead");
            if !view_over_pii {
                assert_eq!(r.kind.label(), legacy, "{sql}: {}", r.message);
            }
            r
        }
        other => panic!("expected refusal of {sql:?}, got {other:?}"),
    }
}

fn passes(sql: &str) {
    assert_eq!(run(sql).decision, Decision::Pass, "{sql}");
}

/// Whether `out` reads masked tables only through their masking views.
fn reads_views_only(out: &str) -> bool {
    let p = fixture();
    let sp = path();
    out.contains("\"pgredact_masked")
        && Parser::new(&PostgreSqlDialect {})
            .with_recursion_limit(RECURSION_LIMIT)
            .try_with_sql(out)
            .and_then(|mut p| p.parse_statements())
            .unwrap_or_else(|e| panic!("{e}: {out}"))
            .iter()
            .all(|st| super::props::unmasked_refs(st, &p, &sp) == 0)
}

#[test]
fn plain_select_is_masked_in_place() {
    assert_eq!(
        rewritten("SELECT * FROM customers WHERE customer_id = 7"),
        "SELECT * FROM \"pgredact_masked\".\"customers\" AS \"customers\" WHERE customer_id = 7"
    );
    assert_eq!(
        rewritten("SELECT c.email FROM public.customers c"),
        "SELECT c.email FROM \"pgredact_masked\".\"customers\" c"
    );
}

#[test]
fn substitution_keeps_the_clients_text() {
    assert_eq!(
        rewritten("SELECT c.email /* note */ FROM public . customers c\nWHERE c.tier = 'é' -- end"),
        "SELECT c.email /* note */ FROM \"pgredact_masked\".\"customers\" c\nWHERE c.tier = 'é' -- end"
    );
    assert_eq!(
        rewritten("select 'ü', customers.tier from\n\t\"customers\" join orders using (customer_id), customers x"),
        "select 'ü', customers.tier from\n\t\"pgredact_masked\".\"customers\" AS \"customers\" join orders using (customer_id), \"pgredact_masked\".\"customers\" x"
    );
    assert_eq!(
        rewritten("SELECT 1;\n  SELECT email FROM customers WHERE customer_id = $1"),
        "SELECT 1;\n  SELECT email FROM \"pgredact_masked\".\"customers\" AS \"customers\" WHERE customer_id = $1"
    );
}

#[test]
fn alias_and_positions() {
    for sql in [
        "SELECT c.email FROM customers c",
        "SELECT email FROM public.customers",
        "SELECT email FROM app.public.customers",
        "SELECT email FROM \"customers\"",
        "SELECT email FROM PUBLIC.CUSTOMERS",
        "SELECT * FROM orders o JOIN customers c ON c.customer_id = o.customer_id",
        "SELECT * FROM orders WHERE customer_id IN (SELECT customer_id FROM customers WHERE email LIKE 'a%')",
        "WITH x AS (SELECT * FROM customers) SELECT * FROM x",
        "SELECT * FROM orders o, LATERAL (SELECT email FROM customers c WHERE c.customer_id = o.customer_id) l",
        "SELECT email FROM customers UNION SELECT 'x'",
        "SELECT EXISTS (SELECT 1 FROM customers WHERE email = 'a@b.c')",
        "INSERT INTO orders (customer_id) SELECT customer_id FROM customers WHERE email = 'x'",
        "CREATE TABLE t AS SELECT * FROM customers",
        "SELECT * INTO t2 FROM customers",
        "COPY (SELECT * FROM customers) TO STDOUT",
        "SELECT (SELECT max(email) FROM customers)",
        "SELECT row_to_json(c) FROM customers c",
        "EXPLAIN SELECT * FROM customers",
        "PREPARE p(bigint) AS SELECT * FROM customers WHERE customer_id = $1",
        "DECLARE cur CURSOR FOR SELECT * FROM customers",
        "SELECT * FROM ONLY customers",
        "SELECT * FROM customer_events_2024",
        "SELECT * FROM crm.\"Contacts\"",
        "SELECT 1; SELECT email FROM customers",
    ] {
        let out = rewritten(sql);
        assert!(reads_views_only(&out), "{sql} => {out}");
    }
}

#[test]
fn only_and_children_and_quoted() {
    // Without descendants, ONLY changes nothing: the one view (ONLY on a view is a no-op).
    assert_eq!(
        rewritten("SELECT * FROM ONLY customers"),
        "SELECT * FROM ONLY \"pgredact_masked\".\"customers\" AS \"customers\""
    );
    // With descendants, ONLY reads the view of the parent's own rows.
    assert_eq!(
        rewritten("SELECT * FROM ONLY customer_events e"),
        "SELECT * FROM ONLY \"pgredact_masked\".\"pgredact$only_2\" e"
    );
    // Where no alias can be spliced in, the parsed statement is sent.
    assert_eq!(
        rewritten("SELECT * FROM ONLY (customer_events)"),
        "SELECT * FROM \"pgredact_masked\".\"pgredact$only_2\" AS \"customer_events\""
    );
    assert_eq!(
        rewritten("SELECT * FROM customer_events*"),
        "SELECT * FROM \"pgredact_masked\".\"customer_events\" AS \"customer_events\""
    );
    assert_eq!(
        rewritten("SELECT * FROM customer_events"),
        "SELECT * FROM \"pgredact_masked\".\"customer_events\" AS \"customer_events\""
    );
    assert_eq!(
        rewritten("SELECT * FROM customer_events_2024"),
        "SELECT * FROM \"pgredact_masked\".\"customer_events_2024\" AS \"customer_events_2024\""
    );
    assert_eq!(
        rewritten("SELECT * FROM crm.\"Contacts\""),
        "SELECT * FROM \"pgredact_masked_crm\".\"Contacts\" AS \"Contacts\""
    );
    // Different case, quoted: a different (unknown) table, not the policy one.
    assert!(matches!(
        run("SELECT * FROM crm.contacts").decision,
        Decision::Pass
    ));
}

#[test]
fn copy_table_to_becomes_query() {
    assert_eq!(
        rewritten("COPY customers (customer_id, email) TO STDOUT WITH (FORMAT csv)"),
        "COPY (SELECT customer_id, email FROM \"pgredact_masked\".\"customers\" AS \"customers\") TO STDOUT (FORMAT csv)"
    );
    assert!(refused("COPY customers TO '/tmp/x'").contains("file or program"));
    assert!(refused("COPY customers FROM STDIN").contains("without a column list"));
    assert!(refused("COPY customers (customer_id, email) FROM STDIN").contains("PII column email"));
    passes("COPY customers (customer_id, tier) FROM STDIN");
}

#[test]
fn non_pii_writes_pass_verbatim() {
    passes("UPDATE customers SET tier = 'gold' WHERE customer_id = 42");
    passes("update customers set tier='gold', segment = NULL where customer_id in (1,2,3)");
    passes("INSERT INTO customers (customer_id, tier) VALUES (1, 'x') ON CONFLICT (customer_id) DO UPDATE SET tier = EXCLUDED.tier");
    passes("DELETE FROM orders WHERE amount < 0");
    passes("UPDATE orders SET amount = 0 WHERE order_id = 1");
    passes("SELECT 1");
    passes("SELECT * FROM orders WHERE customer_id = $1");
    passes("BEGIN");
    passes("SET application_name = 'x'");
    passes("SHOW search_path");
}

#[test]
fn pii_writes_and_reads_in_writes_are_refused() {
    for (sql, want) in [
        ("UPDATE customers SET email = 'x' WHERE customer_id = 1", "column email"),
        ("UPDATE customers SET tier = 'x' WHERE email LIKE 'a%'", "PII column email"),
        ("UPDATE customers c SET tier = 'x' WHERE c.email LIKE 'a%'", "PII column email"),
        ("UPDATE customers SET tier = first_name", "PII column first_name"),
        ("UPDATE customers c SET tier = c::text", "whole-row"),
        ("UPDATE customers c SET tier = row_to_json(c.*)::text", "c.*"),
        ("DELETE FROM customers WHERE phone = '1'", "PII column phone"),
        ("INSERT INTO customers VALUES (1)", "without a column list"),
        ("INSERT INTO customers (customer_id, email) VALUES (1, 'x')", "column email"),
        ("INSERT INTO customers (customer_id) VALUES (1) ON CONFLICT (customer_id) DO UPDATE SET tier = EXCLUDED.email", "PII column email"),
        ("INSERT INTO customers (customer_id) VALUES (1) ON CONFLICT (email) DO NOTHING", "column email"),
        ("UPDATE customers SET tier = 'x' RETURNING email", "PII column email"),
        ("UPDATE orders SET amount = 1 FROM customers c WHERE c.customer_id = orders.customer_id AND c.email = 'x'", "__rewritten__"),
        ("UPDATE customer_events_2024 SET customer_id = 1 WHERE ip_address IS NULL", "PII column ip_address"),
    ] {
        if want == "__rewritten__" {
            // reads of other masked tables in a write are masked, not refused
            let out = rewritten(sql);
            assert!(reads_views_only(&out), "{out}");
            continue;
        }
        let m = refused(sql);
        assert!(m.contains(want), "{sql}: {m}");
    }
}

#[test]
fn returning_star_of_a_masked_target_is_refused_with_the_columns_to_list() {
    let r = match run("UPDATE customers SET tier = 'x' WHERE customer_id = 1 RETURNING *").decision
    {
        Decision::Refuse(r) => r,
        other => panic!("{other:?}"),
    };
    assert!(r.message.contains("RETURNING * would return the PII columns of public.customers (birth_date, email, first_name, phone)"), "{}", r.message);
    assert_eq!(
        r.hint.as_deref(),
        Some("list the columns you need: RETURNING customer_id, tier")
    );
    assert!(
        refused("DELETE FROM customers c WHERE customer_id = 1 RETURNING c.*")
            .contains("RETURNING *")
    );
    passes("UPDATE customers SET tier = 'x' WHERE customer_id = 1 RETURNING customer_id, tier");
    passes("UPDATE orders SET amount = 1 WHERE order_id = 1 RETURNING *");
}

#[test]
fn identity_and_settings() {
    assert!(refused("SET ROLE dba").contains("identity"));
    assert!(refused("SET SESSION AUTHORIZATION dba").contains("identity"));
    assert!(refused("RESET ROLE").contains("RESET role"));
    assert!(refused("SELECT set_config('role', 'dba', false)").contains("set_config"));
    // search_path changes are analysed by the relay (rewrite::search_path), not by the rewriter.
    assert!(refused("SET search_path = evil, public").contains("search_path"));
    assert!(
        refused("SET standard_conforming_strings = off").contains("standard_conforming_strings")
    );
    passes("SET standard_conforming_strings = on");
    assert!(refused("SET client_encoding = 'LATIN1'").contains("client_encoding"));
    passes("SET client_encoding = 'UTF8'");
    // RESET ALL / DISCARD ALL / RESET search_path return to the startup values (checked at
    // startup): they pass while the search path is still the session's first, also inside other
    // statements (asyncpg's pool reset); after a change only alone (analysed by the relay).
    for sql in [
        "RESET ALL",
        "DISCARD ALL",
        "RESET search_path",
        "CLOSE ALL; UNLISTEN *; RESET ALL;",
    ] {
        passes(sql);
        match run_at(sql, false).decision {
            Decision::Refuse(r) => {
                assert!(r.message.contains("search_path"), "{sql}: {}", r.message);
                assert_eq!(r.kind, RefusalKind::Setting);
            }
            other => panic!("{sql} after a search_path change: {other:?}"),
        }
    }
    passes("SET row_security = off");
    passes("SET synchronize_seqscans TO off");
    passes("SET statement_timeout = '5s'");
    passes("SET TIME ZONE 'UTC'");
}

#[test]
fn set_config_of_a_setting_set_may_change_passes() {
    // asyncpg around its type introspection, pgAdmin at connect: the same change as SET.
    passes("SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new");
    passes("SELECT set_config('jit', $1, false)");
    passes("SELECT pg_catalog.set_config('bytea_output','hex',false) FROM pg_settings WHERE name = 'bytea_output'");
    passes("SELECT set_config('statement_timeout', '5s', true)");
    // The value is an ordinary expression: masked like any other read.
    assert!(reads_views_only(&rewritten(
        "SELECT set_config('application_name', (SELECT email FROM customers LIMIT 1), false)"
    )));
    // Settings SET may not change, names that are not literals, and other schemas stay refused.
    for sql in [
        "SELECT set_config('role', 'dba', false)",
        "SELECT set_config('enable_indexonlyscan', 'on', false)",
        "SELECT set_config('client_encoding', 'LATIN1', false)",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config('search_path', 'evil', true)",
        "SELECT set_config('session_authorization', 'dba', false)",
        "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'jit'",
        "SELECT set_config('ji' || 't', 'off', false)",
        "SELECT set_config('jit', 'off')",
        "SELECT * FROM set_config('jit', 'off', false)",
    ] {
        assert!(refused(sql).contains("set_config"), "{sql}");
    }
    assert!(refused("SELECT public.set_config('jit', 'off', false)").contains("not known"));
}

#[test]
fn pg_user_is_readable_pg_shadow_is_not() {
    // pgAdmin at connect; pg_user shows '********' for the password it reads from pg_shadow.
    passes("SELECT CASE WHEN usesuper THEN pg_catalog.pg_is_in_recovery() ELSE NULL END as inrecovery FROM pg_catalog.pg_user WHERE usename=current_user");
    passes("SELECT usename FROM pg_user");
    assert!(refused("SELECT passwd FROM pg_catalog.pg_shadow").contains("secrets"));
    // Any other view over pg_shadow stays refused.
    assert!(refused("SELECT * FROM shadow_copy").contains("pg_catalog.pg_shadow"));
}

#[test]
fn dangerous_functions_and_relations() {
    assert!(
        refused("SELECT query_to_xml('select * from customers', true, false, '')")
            .contains("query_to_xml")
    );
    assert!(
        refused("SELECT pg_catalog.query_to_xml('x', true, false, '')").contains("query_to_xml")
    );
    assert!(refused("SELECT leak_fn(1)").contains("user-defined"));
    assert!(refused("SELECT public.leak_fn(1)").contains("user-defined"));
    passes("SELECT safe_fn(1)");
    assert!(refused("SELECT * FROM leak_fn()").contains("user-defined"));
    assert!(refused("SELECT pgredact.mask_hash('x')").contains("pgredact"));
    assert!(refused("SELECT * FROM pgredact.hash_key").contains("control data"));
    assert!(
        refused("SELECT * FROM pg_stats WHERE tablename = 'customers'").contains("data values")
    );
    assert!(refused("SELECT * FROM pg_catalog.pg_stats").contains("data values"));
    assert!(refused("SELECT * FROM customer_emails").contains("view"));
    passes("SELECT * FROM order_totals");
    passes("SELECT relname FROM pg_class");
    assert!(refused("SELECT totally_unknown_fn(1)").contains("not known"));
    // Operators sqlparser cannot read are refused (parse failure), never passed.
    assert!(refused("SELECT 1 WHERE 'a' === 'b'").contains("pgredact"));
    assert!(
        refused("DO $$ BEGIN END $$").contains("parse")
            || refused("DO $$ BEGIN END $$").contains("not allowed")
    );
    assert!(refused("CALL p()").contains("CALL"));
    assert!(refused("LISTEN ch").contains("LISTEN"));
    assert!(
        refused("CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql")
            .contains("not allowed")
    );
    assert!(refused("GRANT SELECT ON customers TO support").contains("not allowed"));
    assert!(refused("SELECT * FROM U&\"cust\\006fmers\"").contains("Unicode"));
    assert!(refused("SELEC 1").contains("could not parse"));
}

#[test]
fn user_code_behind_builtin_looking_names_is_refused() {
    assert!(refused("SELECT sneaky_fn(1)").contains("user-defined"));
    assert!(refused("SELECT pg_catalog.sneaky_fn(1)").contains("user-defined"));
    assert!(refused("SELECT CAST(1 AS zq_contact)").contains("zq_contact"));
    assert!(refused("SELECT (1::zq_contact).email").contains("zq_contact"));
    // Operators reached through syntax (LIKE, IN, BETWEEN, CASE x WHEN) are checked too.
    let mut p = fixture();
    let mut cat = (*p.catalog).clone();
    cat.user_operators.insert("~~".into(), HashSet::from(['N']));
    p.catalog = Arc::new(cat);
    let sp = path();
    for sql in [
        "SELECT 1 WHERE 777::bigint LIKE 'b'",
        "SELECT count(*) FROM customers WHERE customer_id LIKE 'x'",
        "SELECT count(*) FROM orders WHERE 1 LIKE 'x'",
    ] {
        let d = rewrite(
            sql,
            &SessionCtx {
                prot: &p,
                search_path: &sp,
                path_at_start: true,
            },
        )
        .decision;
        assert!(
            matches!(&d, Decision::Refuse(r) if r.message.contains("~~")),
            "{sql}: {d:?}"
        );
    }
    for sql in [
        "SELECT 1 WHERE 'a' LIKE 'b'",
        "SELECT count(*) FROM orders WHERE upper('x') LIKE 'b'",
    ] {
        let d = rewrite(
            sql,
            &SessionCtx {
                prot: &p,
                search_path: &sp,
                path_at_start: true,
            },
        )
        .decision;
        assert!(!matches!(d, Decision::Refuse(_)), "{sql}: {d:?}");
    }
    let d = rewrite(
        "SELECT email FROM customers WHERE email LIKE 'a%'",
        &SessionCtx {
            prot: &p,
            search_path: &sp,
            path_at_start: true,
        },
    )
    .decision;
    assert!(matches!(d, Decision::Rewrite(_)), "{d:?}");
}

#[test]
fn ctes_named_like_protected_tables_are_refused() {
    assert!(
        refused("WITH customers AS (SELECT 1 AS email) SELECT * FROM customers")
            .contains("WITH query")
    );
    passes("WITH x AS (SELECT 1) SELECT * FROM x");
    // A WITH name is not an unknown catalog name (that would force a catalog re-read and
    // disable the rewrite cache for every CTE query).
    assert!(!run("WITH x AS (SELECT * FROM customers) SELECT * FROM x").unknown_names);
}

#[test]
fn lexical_cross_check_falls_back_to_parsed_text() {
    // 'customers' in a literal or comment: not a reference; the parsed text is sent instead.
    let out = rewritten("SELECT 'customers' /* customers */");
    assert_eq!(out, "SELECT 'customers'");
    // A PII column name in a literal of a write to a masked table.
    let out = rewritten("UPDATE customers SET tier = 'email' WHERE customer_id = 1");
    assert!(
        out.starts_with("UPDATE customers SET tier = 'email'"),
        "{out}"
    );
}

#[test]
fn unknown_relations_ask_for_refresh() {
    let o = run("SELECT * FROM brand_new_table");
    assert!(o.unknown_names);
    assert_eq!(o.decision, Decision::Pass);
}

#[test]
fn deep_nesting_is_parsed() {
    let mut sql = String::from("SELECT email FROM customers");
    for _ in 0..40 {
        sql = format!("SELECT * FROM ({sql}) s");
    }
    assert!(reads_views_only(&rewritten(&sql)));
}

#[test]
fn placeholders_survive() {
    let out = rewritten("SELECT * FROM customers WHERE customer_id = $1 AND tier = $2");
    assert!(out.contains("customer_id = $1 AND tier = $2"), "{out}");
}

#[test]
fn table_statement_is_read_as_select_star() {
    assert_eq!(
        rewritten("TABLE customers"),
        "SELECT * FROM \"pgredact_masked\".\"customers\" AS \"customers\""
    );
    assert_eq!(
        rewritten("table only public.customer_events;"),
        "SELECT * FROM \"pgredact_masked\".\"pgredact$only_2\" AS \"customer_events\""
    );
}

#[test]
fn writes_with_escape_prone_lexemes_are_sent_as_parsed() {
    // Dollar quotes, E'' strings and backslashes in a write to a masked table: the parsed text is
    // sent, never the raw one.
    for sql in [
        "UPDATE customers SET tier = $$gold$$ WHERE customer_id = 1",
        "UPDATE customers SET tier = E'gold\\n' WHERE customer_id = 1",
        "UPDATE customers c SET tier = $t$x$t$ WHERE c.customer_id = 1",
    ] {
        assert!(matches!(run(sql).decision, Decision::Rewrite(_)), "{sql}");
    }
    passes("UPDATE customers SET tier = 'gold' WHERE customer_id = $1");
    // Placeholders and plain strings on non-masked tables are unaffected.
    passes("UPDATE orders SET amount = $1 WHERE order_id = $2");
}

#[test]
fn relations_outside_table_factors_are_refused() {
    assert!(refused("SELECT 1 UNION TABLE customers").contains("TABLE inside"));
    assert!(
        refused("SELECT * FROM orders UNION ALL TABLE public.customers").contains("TABLE inside")
    );
    assert!(refused(
        "WITH u AS (UPDATE customers SET tier = 'x' WHERE email LIKE 'a%' RETURNING 1) SELECT count(*) FROM u"
    )
    .contains("data-modifying"));
    assert!(refused("WITH u AS (INSERT INTO customers (customer_id, email) VALUES (1, 'a') RETURNING 1) SELECT 1")
        .contains("data-modifying"));
}

#[test]
fn shadowed_names_are_refused_as_ambiguous() {
    let mut p = fixture();
    let mut cat = (*p.catalog).clone();
    cat.add_relation(crate::catalog::Relation {
        oid: 500,
        schema: "support".into(),
        name: "customers".into(),
        kind: 'r',
        columns: vec![],
    });
    p.catalog = Arc::new(cat);
    let sp: Vec<String> = vec!["pg_catalog".into(), "support".into(), "public".into()];
    let out = rewrite(
        "SELECT * FROM customers",
        &SessionCtx {
            prot: &p,
            search_path: &sp,
            path_at_start: true,
        },
    );
    match out.decision {
        Decision::Refuse(r) => {
            assert_eq!(r.kind, RefusalKind::AmbiguousName, "{r:?}");
            assert!(r.message.contains("ambiguous"), "{r:?}");
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn prepared_effects_names_prepare_execute_deallocate() {
    use super::{prepared_effects, PreparedEffect as E};
    assert_eq!(
        prepared_effects("PREPARE Zq_PS AS SELECT contact FROM zq_late"),
        vec![E::Prepare("zq_ps".into())]
    );
    assert_eq!(
        prepared_effects("EXECUTE zq_stale_ps"),
        vec![E::Execute("zq_stale_ps".into())]
    );
    assert_eq!(
        prepared_effects("EXPLAIN EXECUTE \"Q\"(1); DEALLOCATE PREPARE q; DEALLOCATE ALL"),
        vec![
            E::Execute("Q".into()),
            E::Deallocate(Some("q".into())),
            E::Deallocate(None)
        ]
    );
    assert!(prepared_effects("SELECT 'no statements here'").is_empty());
}

#[test]
fn write_shapes_of_the_data_team() {
    // DELETE and UPDATE with non-PII predicates, in any shape.
    passes("DELETE FROM customer_events WHERE event_id = 5");
    passes("DELETE FROM customer_events e WHERE e.customer_id = 5 AND e.event_id > 3");
    passes("DELETE FROM customers WHERE customer_id IN (SELECT customer_id FROM orders WHERE amount > 5)");
    passes("delete from customers where tier = 'x' returning customer_id");
    assert_eq!(
        rewritten("DELETE FROM orders o USING customers c WHERE c.customer_id = o.customer_id AND c.tier = 'x'"),
        "DELETE FROM orders o USING \"pgredact_masked\".\"customers\" c WHERE c.customer_id = o.customer_id AND c.tier = 'x'"
    );
    // WITH queries whose main statement writes non-PII columns: the WITH queries are masked reads.
    passes("WITH x AS (SELECT customer_id FROM orders WHERE amount > 5) UPDATE customers SET tier = 'gold' WHERE customer_id IN (SELECT customer_id FROM x)");
    assert_eq!(
        rewritten("WITH x AS (SELECT customer_id, email FROM customers) DELETE FROM orders WHERE customer_id IN (SELECT customer_id FROM x)"),
        "WITH x AS (SELECT customer_id, email FROM \"pgredact_masked\".\"customers\" AS \"customers\") DELETE FROM orders WHERE customer_id IN (SELECT customer_id FROM x)"
    );
    assert!(
        refused("WITH x AS (SELECT 1) UPDATE customers SET email = 'x'").contains("column email")
    );
    assert!(
        refused("WITH x AS (SELECT 1) UPDATE customers SET tier = 'x' RETURNING *")
            .contains("RETURNING *")
    );
    // Data-modifying statements inside WITH stay refused.
    assert!(refused(
        "WITH u AS (UPDATE customers SET tier = 'x' RETURNING customer_id) SELECT * FROM u"
    )
    .contains("inside WITH"));
    // MERGE, analysed like INSERT/UPDATE/DELETE.
    passes("MERGE INTO customers c USING orders o ON c.customer_id = o.customer_id WHEN MATCHED THEN UPDATE SET tier = 'x'");
    passes("MERGE INTO orders o USING (VALUES (5, 'shipped')) v(id, st) ON o.order_id = v.id WHEN MATCHED THEN UPDATE SET amount = 1 WHEN NOT MATCHED THEN INSERT (customer_id, amount) VALUES (10, 1)");
    assert_eq!(
        rewritten("MERGE INTO orders o USING customers c ON o.customer_id = c.customer_id WHEN MATCHED AND c.tier = 'x' THEN DELETE"),
        "MERGE INTO orders o USING \"pgredact_masked\".\"customers\" c ON o.customer_id = c.customer_id WHEN MATCHED AND c.tier = 'x' THEN DELETE"
    );
    for (sql, want) in [
        ("MERGE INTO customers c USING orders o ON c.customer_id = o.customer_id WHEN MATCHED THEN UPDATE SET email = 'x'", "writing column email"),
        ("MERGE INTO customers c USING orders o ON c.email = 'x' WHEN MATCHED THEN DELETE", "reading PII column email"),
        ("MERGE INTO customers c USING orders o ON c.customer_id = o.customer_id WHEN NOT MATCHED THEN INSERT VALUES (o.customer_id)", "without a column list"),
        ("MERGE INTO customers c USING orders o ON c.customer_id = o.customer_id WHEN NOT MATCHED THEN INSERT (customer_id, phone) VALUES (o.customer_id, '1')", "writing column phone"),
        ("MERGE INTO customers c USING orders o ON c.customer_id = o.customer_id WHEN MATCHED AND c.phone IS NULL THEN UPDATE SET tier = 'x'", "reading PII column phone"),
    ] {
        let m = refused(sql);
        assert!(m.contains(want), "{sql}: {m}");
    }
}

#[test]
fn explain_over_masked_tables_shows_the_shape_only() {
    let out = rewritten("EXPLAIN SELECT email FROM customers");
    assert!(out.contains("COSTS false"), "{out}");
    assert!(reads_views_only(&out), "{out}");
    let out = rewritten("EXPLAIN (VERBOSE, COSTS OFF) SELECT email FROM customers");
    assert!(!out.contains("COSTS false"), "{out}");
    for sql in [
        "EXPLAIN ANALYZE SELECT * FROM customers",
        "EXPLAIN (ANALYZE) SELECT * FROM customers",
        "EXPLAIN (ANALYZE true, COSTS off) SELECT * FROM customers",
        "EXPLAIN (COSTS) SELECT DISTINCT email FROM customers",
        "EXPLAIN (COSTS on) SELECT DISTINCT email FROM customers",
    ] {
        assert!(refused(sql).contains("EXPLAIN"), "{sql}");
    }
    // No PII read (no PII column, no whole row, no `*`): ANALYZE and costs stay.
    assert!(!rewritten("EXPLAIN ANALYZE SELECT count(*) FROM customers").contains("COSTS"));
    assert!(
        !rewritten("EXPLAIN ANALYZE SELECT c.tier, count(*) FROM customers c GROUP BY 1")
            .contains("COSTS")
    );
    for sql in [
        "EXPLAIN ANALYZE SELECT c FROM customers c",
        "EXPLAIN ANALYZE SELECT count(c.*) FROM customers c",
        "EXPLAIN ANALYZE SELECT 1 FROM customers WHERE EMAIL = 'x'",
        "EXPLAIN ANALYZE SELECT row_to_json(customers) FROM customers",
        "EXPLAIN ANALYZE SELECT o.order_id FROM orders o JOIN customers c ON c.email = o.status",
    ] {
        assert!(refused(sql).contains("EXPLAIN ANALYZE"), "{sql}");
    }
    // No masked table: the statement is untouched.
    passes("EXPLAIN ANALYZE SELECT count(*) FROM pg_class");
    passes("EXPLAIN ANALYZE UPDATE customers SET tier = 'x'");
    passes("EXPLAIN (ANALYZE false) SELECT 1");
}

#[test]
fn lock_in_access_share_mode_goes_through_the_masking_view() {
    let out = rewritten("LOCK TABLE public.customers, orders IN ACCESS SHARE MODE");
    assert!(reads_views_only(&out), "{out}");
    assert!(
        out.starts_with("LOCK TABLE \"pgredact_masked\".\"customers\""),
        "{out}"
    );
    assert!(refused("LOCK TABLE customers").contains("ACCESS SHARE"));
    assert!(refused("LOCK TABLE customers IN EXCLUSIVE MODE").contains("ACCESS SHARE"));
}

#[test]
fn system_columns_of_masked_write_targets_are_refused() {
    for sql in [
        "UPDATE customers SET tier = tier RETURNING ctid",
        "UPDATE customers SET tier = 'x' WHERE ctid = '(0,1)'",
        "DELETE FROM customers c WHERE customer_id = 1 RETURNING c.xmin",
        "INSERT INTO customers (customer_id, tier) VALUES (1, 'x') RETURNING xmax",
        "UPDATE customers SET tier = 'x' WHERE customer_id = 1 RETURNING tableoid",
        // Reads: the masking view has no system columns.
        "SELECT ctid FROM customers WHERE customer_id = 1",
        "SELECT c.xmin, c.tier FROM customers c",
        "SELECT tableoid::regclass, * FROM customers",
        "SELECT o.ctid FROM orders o JOIN customers c USING (customer_id)",
    ] {
        assert!(refused(sql).contains("system column"), "{sql}");
    }
    // Tables without PII keep them.
    passes("UPDATE orders SET amount = 1 WHERE order_id = 1 RETURNING ctid");
    passes("SELECT ctid, xmin FROM orders WHERE order_id = 1");
}

#[test]
fn outcome_lists_the_relations_the_statement_names_not_the_masking_views() {
    let o = run("SELECT c.tier FROM customers c JOIN orders o USING (customer_id)");
    assert!(matches!(o.decision, Decision::Rewrite(_)), "{o:?}");
    assert_eq!(o.relations, vec!["public.customers", "public.orders"]);
    let o = run("UPDATE customers SET email = 'x' WHERE customer_id = 1");
    assert!(matches!(o.decision, Decision::Refuse(_)), "{o:?}");
    assert_eq!(o.relations, vec!["public.customers"]);
    assert!(run("SELEC 1").relations.is_empty());
}

#[test]
fn refusals_carry_their_kind() {
    use RefusalKind::*;
    for (sql, kind) in [
        (
            "UPDATE customers SET email = 'x' WHERE customer_id = 1",
            PiiWrite,
        ),
        ("INSERT INTO customers VALUES (1)", PiiWrite),
        ("COPY customers FROM STDIN", PiiWrite),
        ("COPY customers (customer_id, email) FROM STDIN", PiiWrite),
        (
            "UPDATE customers SET tier = 'x' WHERE email LIKE 'a%'",
            PiiRead,
        ),
        ("UPDATE customers c SET tier = c::text", PiiRead),
        (
            "UPDATE customers SET tier = 'x' WHERE customer_id = 1 RETURNING *",
            PiiRead,
        ),
        ("COPY customers TO '/tmp/x'", Copy),
        ("SET ROLE dba", Identity),
        ("SET SESSION AUTHORIZATION dba", Identity),
        ("RESET ROLE", Setting),
        ("SET search_path = evil, public", Setting),
        ("SET client_encoding = 'LATIN1'", Setting),
        ("SELECT leak_fn(1)", Function),
        ("SELECT * FROM leak_fn()", Function),
        ("SELECT totally_unknown_fn(1)", Function),
        ("SELECT CAST(1 AS zq_contact)", Function),
        ("CALL p()", Function),
        ("SELECT pgredact.mask_hash('x')", CatalogObject),
        ("SELECT * FROM pgredact.hash_key", CatalogObject),
        ("SELECT * FROM pg_catalog.pg_stats", CatalogObject),
        ("SELECT * FROM customer_emails", CatalogObject),
        ("LISTEN ch", Listen),
        ("GRANT SELECT ON customers TO support", StatementKind),
        ("SELECT * FROM U&\"cust\\006fmers\"", Other),
        ("LOCK TABLE customers", Other),
        ("SELEC 1", Unparsable),
        ("SELECT 1 UNION TABLE customers", Unsupported),
        ("EXPLAIN ANALYZE SELECT email FROM customers", Explain),
        (
            "UPDATE customers SET tier = 'x' WHERE ctid = '(0,1)'",
            Other,
        ),
    ] {
        assert_eq!(refusal(sql).kind, kind, "{sql}");
    }
}

#[test]
fn tablesample_on_a_masked_table_reads_its_view_in_a_bernoulli_filter() {
    let out = rewritten(
        "SELECT count(*) FROM customers c TABLESAMPLE BERNOULLI (10) WHERE c.tier = 'gold'",
    );
    assert!(reads_views_only(&out), "{out}");
    assert!(
        out.contains("pg_catalog.float8lt(pg_catalog.random(), 0.1)"),
        "{out}"
    );
    assert!(out.contains(") c WHERE c.tier = 'gold'"), "{out}");
    assert!(!out.to_ascii_uppercase().contains("TABLESAMPLE"), "{out}");
    // SYSTEM samples pages of a table; over a view it is read row by row.
    let out = rewritten("SELECT email FROM customers TABLESAMPLE SYSTEM (2.5)");
    assert!(reads_views_only(&out), "{out}");
    assert!(out.contains("0.025"), "{out}");
    for sql in [
        "SELECT * FROM customers TABLESAMPLE BERNOULLI (10) REPEATABLE (42)",
        "SELECT * FROM customers TABLESAMPLE BERNOULLI (200)",
        "SELECT * FROM customers TABLESAMPLE BERNOULLI ((SELECT 10))",
    ] {
        assert!(refused(sql).contains("TABLESAMPLE"), "{sql}");
    }
    // Tables without PII keep PostgreSQL's own sampling, REPEATABLE included.
    passes("SELECT * FROM orders TABLESAMPLE SYSTEM (10) REPEATABLE (1)");
}
