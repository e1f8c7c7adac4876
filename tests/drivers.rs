//! The driver and tool matrix: real clients connect through pgredact as `support` and
//! `solutions` and run their usual connect-time setup and introspection, a masked read and (as
//! solutions) a non-PII write that passes and a PII write refused with 42501. Clients: psycopg 3
//! and asyncpg (Python venv), node-postgres, pgjdbc (scripts under tests/drivers/), tokio-postgres
//! and psql; the startup and catalog queries of pgAdmin 4 and DBeaver replayed; pg_dump in plain
//! and custom format, restored and compared table by table with a statically masked copy.
//!
//! The clients come from `.ci/install-tools` (into `target/tools`, or `PGREDACT_TOOLS_DIR`). A
//! missing client fails its test, naming the script to run: nothing is skipped.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

/// Customers every client reads (3 has no birth date: a NULL through every decoder).
const READ_IDS: &[i64] = &[1, 2, 3];

fn tools_dir() -> PathBuf {
    std::env::var_os("PGREDACT_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools"))
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// `path` must exist; otherwise the test fails with what to run.
fn need(path: &Path, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} not found at {}: run .ci/install-tools (or set PGREDACT_TOOLS_DIR)",
        path.display()
    );
    path.to_path_buf()
}

fn need_on_path(bin: &str, what: &str) {
    let ok = Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{what} (`{bin}`) is not installed: run .ci/install-tools"
    );
}

/// Waits until pgredact serves masked sessions (it stores the hash key, which the masking views
/// read, when it starts): one masked read through it.
async fn ready(env: &Env) {
    let c = env.proxy("support").await;
    let r = rows(&c, "SELECT last_name FROM customers WHERE customer_id = 1")
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_ne!(r[0], "NULL", "no pseudonym through pgredact");
}

/// The masked rows of `ids` as the wall's masking view gives them to `user`, read straight from
/// PostgreSQL (not through pgredact): independent of the proxy's rewriting. (The demo policy
/// gives `solutions` pseudonyms where `support` gets partial values.)
async fn expected_rows(env: &Env, user: &str, ids: &[i64]) -> Vec<Vec<Option<String>>> {
    let c = env.direct(user).await;
    c.query(
        "SELECT customer_id::text, first_name, last_name, email::text, phone, address, \
                birth_date::text, tier \
         FROM pgredact_masked.customers WHERE customer_id = ANY($1) ORDER BY customer_id",
        &[&ids],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (0..r.len())
            .map(|i| r.get::<_, Option<String>>(i))
            .collect()
    })
    .collect()
}

/// Raw PII of `ids` (superuser, straight to PostgreSQL), for the leak checks (birth dates are
/// checked by shape: a raw 1 January would equal its masked value).
async fn raw_values(env: &Env, ids: &[i64]) -> Vec<String> {
    let su = env.direct("postgres").await;
    su.query(
        "SELECT unnest(ARRAY[first_name, last_name, email::text, phone, address]) \
         FROM customers WHERE customer_id = ANY($1)",
        &[&ids],
    )
    .await
    .unwrap()
    .iter()
    .filter_map(|r| r.get::<_, Option<String>>(0))
    .collect()
}

fn json_rows(v: &Value) -> Vec<Vec<Option<String>>> {
    v.as_array()
        .unwrap_or_else(|| panic!("rows: {v}"))
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap_or_else(|| panic!("row: {r}"))
                .iter()
                .map(|c| c.as_str().map(String::from))
                .collect()
        })
        .collect()
}

/// Checks the masked rows: equal to the masking view, of the known masked shapes, and free of
/// every raw value.
fn check_masked(
    what: &str,
    user: &str,
    got: &[Vec<Option<String>>],
    want: &[Vec<Option<String>>],
    raw: &[String],
) {
    assert_eq!(got, want, "{what}: rows differ from the masking view");
    let pseudonym = |v: &str| v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit());
    for r in got {
        let email = r[3].as_deref().unwrap_or("");
        let phone = r[4].as_deref().unwrap_or("");
        if user == "solutions" {
            assert!(
                pseudonym(email),
                "{what}: e-mail {email:?} is not a pseudonym"
            );
            assert!(
                pseudonym(phone),
                "{what}: phone {phone:?} is not a pseudonym"
            );
        } else {
            assert!(
                email.len() > 4 && &email[1..5] == "***@",
                "{what}: e-mail {email:?} is not masked"
            );
            assert!(phone.starts_with("****"), "{what}: phone {phone:?}");
        }
        if let Some(b) = &r[6] {
            assert!(b.ends_with("-01-01"), "{what}: birth date {b:?}");
        }
        for cell in r.iter().flatten() {
            assert!(
                !raw.iter().any(|v| v.len() > 4 && v == cell),
                "{what}: raw value {cell:?}"
            );
        }
    }
}

/// Runs a client script with the connection in the environment; returns its JSON report.
fn run_client(
    env: &Env,
    what: &str,
    mut cmd: Command,
    user: &str,
    write: Option<(i64, &str)>,
) -> Value {
    cmd.current_dir(scripts_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PGR_HOST", "127.0.0.1")
        .env("PGR_PORT", env.addr.port().to_string())
        .env("PGR_USER", user)
        .env("PGR_PASSWORD", password(user))
        .env("PGR_DB", DB)
        .env(
            "PGR_IDS",
            READ_IDS
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
    if let Some((id, tier)) = write {
        cmd.env("PGR_WRITE_ID", id.to_string())
            .env("PGR_TIER", tier);
    }
    let out = tokio::task::block_in_place(|| cmd.output())
        .unwrap_or_else(|e| panic!("{what} as {user}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} as {user} failed through pgredact:\n{stderr}\n{stdout}"
    );
    let line = stdout.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{what} as {user}: report {line:?}: {e}\n{stderr}"));
    println!(
        "{what} {} as {user}: ok",
        v["version"].as_str().unwrap_or("?")
    );
    v
}

/// The checks every client report gets: each `rows*` equal to the masking view, and as
/// solutions the write passed, the PII write was refused (42501) and the session went on.
async fn check_report(
    env: &Env,
    what: &str,
    user: &str,
    v: &Value,
    write: Option<(i64, &str)>,
    raw_email_of_write: Option<&str>,
) {
    let want = expected_rows(env, user, READ_IDS).await;
    let raw = raw_values(env, READ_IDS).await;
    let obj = v.as_object().unwrap_or_else(|| panic!("{what}: {v}"));
    let mut n = 0;
    for (k, rows) in obj {
        if k.starts_with("rows") {
            n += 1;
            check_masked(
                &format!("{what} as {user}, {k}"),
                user,
                &json_rows(rows),
                &want,
                &raw,
            );
        }
    }
    assert!(n >= 2, "{what}: at least two reads in {v}");
    if let Some((id, tier)) = write {
        assert_eq!(v["write"]["rowcount"], 1, "{what} as {user}: {v}");
        assert_eq!(v["write"]["tier_after"], tier, "{what} as {user}: {v}");
        assert_eq!(
            v["pii_write"]["sqlstate"], "42501",
            "{what} as {user}: the PII write: {v}"
        );
        assert!(
            v["pii_write"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("email"),
            "{what}: {v}"
        );
        assert_eq!(v["after_refusal"], 1, "{what} as {user}: {v}");
        // In the database: the tier was written, the e-mail was not.
        let su = env.direct("postgres").await;
        let r = su
            .query_one(
                "SELECT tier, email::text FROM customers WHERE customer_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(r.get::<_, String>(0), tier, "{what}");
        assert_eq!(r.get::<_, Option<String>>(1).as_deref(), raw_email_of_write);
    }
}

async fn raw_email(env: &Env, id: i64) -> Option<String> {
    env.direct("postgres")
        .await
        .query_one(
            "SELECT email::text FROM customers WHERE customer_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

fn python() -> PathBuf {
    need(&tools_dir().join("venv/bin/python"), "the Python venv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_read_masked_and_write_non_pii() {
    let env = start_default().await;
    ready(&env).await;
    let node_modules = tools_dir().join("node/node_modules");
    need(&node_modules.join("pg/package.json"), "node-postgres (pg)");
    need_on_path("node", "Node.js");
    let jar = std::env::var_os("PGREDACT_JDBC_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/postgresql.jar"));
    need(&jar, "pgjdbc (libpostgresql-jdbc-java)");
    need_on_path("java", "a JDK");
    let mut write_id = 100;
    for user in ["support", "solutions"] {
        for tool in ["psycopg", "asyncpg", "node-postgres", "pgjdbc"] {
            let cmd = match tool {
                "psycopg" | "asyncpg" => {
                    let mut c = Command::new(python());
                    c.arg(format!("{}_client.py", tool));
                    c
                }
                "node-postgres" => {
                    let mut c = Command::new("node");
                    c.arg("node_pg_client.js")
                        .env("PGR_NODE_MODULES", &node_modules);
                    c
                }
                _ => {
                    let mut c = Command::new("java");
                    c.arg("-cp").arg(&jar).arg("JdbcClient.java");
                    c
                }
            };
            write_id += 1;
            let tier = format!("tier-{tool}");
            let write = (user == "solutions").then_some((write_id, tier.as_str()));
            let email = raw_email(&env, write_id).await;
            let v = run_client(&env, tool, cmd, user, write);
            check_report(&env, tool, user, &v, write, email.as_deref()).await;
            let intro = &v["introspection"];
            match tool {
                "psycopg" => {
                    // CompositeInfo reads pg_attribute: every column, PII ones included.
                    assert!(intro["customers_fields"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == "email")));
                    assert_eq!(intro["jsonb_oid"], 3802);
                }
                "asyncpg" => {
                    // Its type introspection ran (a table's row type) and the record is masked.
                    assert!(intro["row_type_fields"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == "email")));
                    let want = expected_rows(&env, user, &[1]).await;
                    assert_eq!(v["row_as_record"][3].as_str(), want[0][3].as_deref(), "{v}");
                    assert_eq!(intro["client_encoding"], "UTF8");
                    // The pool's default reset, which ends in RESET ALL, passes.
                    assert_eq!(v["default_reset"]["message"], "succeeded", "{v}");
                    assert!(
                        v["pool_reset_query"]
                            .as_str()
                            .is_some_and(|q| q.contains("RESET ALL")),
                        "{v}"
                    );
                }
                "node-postgres" => {
                    assert_eq!(intro["types"], serde_json::json!(["date", "inet", "jsonb"]));
                }
                _ => {
                    assert_eq!(intro["current_schema"], "public", "{v}");
                    for (k, x) in [
                        ("tables", "customers"),
                        ("columns", "email"),
                        ("primary_key", "customer_id"),
                        ("indexes", "customers_pkey"),
                    ] {
                        assert!(
                            intro[k]
                                .as_array()
                                .is_some_and(|a| a.iter().any(|y| y == x)),
                            "pgjdbc {k}: {v}"
                        );
                    }
                }
            }
        }
    }

    // tokio-postgres: extended protocol with typed parameters, then the writes.
    let raw = raw_values(&env, READ_IDS).await;
    for user in ["support", "solutions"] {
        let want = expected_rows(&env, user, READ_IDS).await;
        let c = env.proxy(user).await;
        let got: Vec<Vec<Option<String>>> = c
            .query(
                "SELECT customer_id::text, first_name, last_name, email::text, phone, address, \
                        birth_date::text, tier \
                 FROM customers WHERE customer_id = ANY($1) ORDER BY customer_id",
                &[&READ_IDS],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect();
        check_masked(
            &format!("tokio-postgres as {user}"),
            user,
            &got,
            &want,
            &raw,
        );
        if user == "solutions" {
            let n = c
                .execute(
                    "UPDATE customers SET tier = $1 WHERE customer_id = $2",
                    &[&"tier-tokio", &200i64],
                )
                .await
                .unwrap();
            assert_eq!(n, 1);
            assert_refused(
                c.execute(
                    "UPDATE customers SET email = $1 WHERE customer_id = $2",
                    &[&"leak@example.com", &200i64],
                )
                .await,
                "email",
                "tokio-postgres PII write",
            );
        }
    }

    // psql: a read, \d, and as solutions the two writes (SQLSTATE shown with VERBOSITY verbose).
    let port = env.addr.port();
    let expect_line = |r: &Vec<Option<String>>| {
        r.iter()
            .map(|c| c.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("|")
    };
    for user in ["support", "solutions"] {
        let want = expected_rows(&env, user, READ_IDS).await;
        let conn = format!("host=127.0.0.1 port={port} user={user} dbname={DB}");
        let (ok, out, err) = tokio::task::block_in_place(|| {
            psql_conn(
                &conn,
                user,
                "SELECT customer_id, first_name, last_name, email, phone, address, birth_date, tier \
                 FROM customers WHERE customer_id IN (1, 2, 3) ORDER BY customer_id",
            )
        });
        assert!(ok, "psql as {user}: {err}");
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            want.iter().map(expect_line).collect::<Vec<_>>(),
            "psql as {user}"
        );
        let (ok, out, err) =
            tokio::task::block_in_place(|| psql_conn(&conn, user, "\\d customers"));
        assert!(ok && out.contains("email"), "psql \\d as {user}: {err}");
        if user == "solutions" {
            let (ok, _, err) = tokio::task::block_in_place(|| {
                psql_conn(
                    &conn,
                    user,
                    "UPDATE customers SET tier = 'tier-psql' WHERE customer_id = 201",
                )
            });
            assert!(ok, "psql non-PII write: {err}");
            let out =
                tokio::task::block_in_place(|| {
                    Command::new("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"])
                    .arg(&conn)
                    .env("PGPASSWORD", password(user))
                    .arg("-c")
                    .arg("UPDATE customers SET email = 'leak@example.com' WHERE customer_id = 201")
                    .output()
                    .expect("psql")
                });
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("42501") && err.contains("email"),
                "psql PII write: {err}"
            );
        }
    }
    let su = env.direct("postgres").await;
    let tiers = rows(
        &su,
        "SELECT customer_id, tier FROM customers WHERE customer_id IN (200, 201) ORDER BY 1",
    )
    .await
    .unwrap();
    assert_eq!(tiers, vec!["200|tier-tokio", "201|tier-psql"]);
}

/// What pgAdmin 4 sends right after connecting (web/pgadmin/utils/driver/psycopg3/connection.py
/// and server_manager: session settings in one simple query, version, database, GSSAPI, role
/// and recovery state), then a table's "View data".
const PGADMIN: &[&str] = &[
    "SET DateStyle=ISO; SET client_min_messages=notice; SELECT set_config('bytea_output','hex',false) FROM pg_settings WHERE name = 'bytea_output'; SET client_encoding='UTF8';",
    "SET DateStyle=ISO; SET client_min_messages=notice; SELECT set_config('bytea_output','hex',false) FROM pg_show_all_settings() WHERE name = 'bytea_output'; SET client_encoding='utf-8';",
    "SELECT version()",
    "SELECT db.oid as did, db.datname, db.datallowconn, pg_encoding_to_char(db.encoding) AS serverencoding, has_database_privilege(db.oid, 'CREATE') as cancreate, datistemplate FROM pg_catalog.pg_database db WHERE db.datname = current_database()",
    "SELECT gss_authenticated, encrypted FROM pg_catalog.pg_stat_gssapi WHERE pid = pg_backend_pid()",
    "SELECT roles.oid as id, roles.rolname as name, roles.rolsuper as is_superuser, CASE WHEN roles.rolsuper THEN true ELSE roles.rolcreaterole END as can_create_role, CASE WHEN roles.rolsuper THEN true ELSE roles.rolcreatedb END as can_create_db, CASE WHEN 'pg_signal_backend'=ANY(ARRAY(WITH RECURSIVE cte AS ( SELECT pg_roles.oid,pg_roles.rolname FROM pg_roles WHERE pg_roles.oid = roles.oid UNION ALL SELECT m.roleid,pgr.rolname FROM cte cte_1 JOIN pg_auth_members m ON m.member = cte_1.oid JOIN pg_roles pgr ON pgr.oid = m.roleid) SELECT rolname FROM cte)) THEN True ELSE False END as can_signal_backend FROM pg_catalog.pg_roles as roles WHERE rolname = current_user",
    "SELECT CASE WHEN usesuper THEN pg_catalog.pg_is_in_recovery() ELSE NULL END as inrecovery, CASE WHEN usesuper AND pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_is_wal_replay_paused() ELSE NULL END as isreplaypaused FROM pg_catalog.pg_user WHERE usename=current_user",
];

/// What DBeaver sends at connect and when its navigator opens a table (PostgreDataSource,
/// PostgreExecutionContext, PostgreSchema/PostgreTable readers over pgjdbc).
const DBEAVER: &[&str] = &[
    "SELECT current_database()",
    "SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE 1 = 1 AND datallowconn AND NOT datistemplate OR db.datname = 'app'",
    "SELECT version()",
    "SELECT reset_val FROM pg_settings WHERE name = 'search_path'",
    "SELECT current_schema(),session_user",
    "SHOW search_path",
    "SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=n.oid AND d.objsubid=0 AND d.classoid='pg_namespace'::regclass ORDER BY nspname",
    "select * from pg_settings where name='standard_conforming_strings'",
    "select string_agg(word, ',') from pg_catalog.pg_get_keywords()",
    "SELECT c.oid,c.*,d.description,pg_catalog.pg_get_expr(c.relpartbound, c.oid) as partition_expr, pg_catalog.pg_get_partkeydef(c.oid) as partition_key FROM pg_catalog.pg_class c LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=c.oid AND d.objsubid=0 AND d.classoid='pg_class'::regclass WHERE c.relnamespace='public'::regnamespace AND c.relkind not in ('i','I','c')",
    "SELECT c.relname,a.*,pg_catalog.pg_get_expr(ad.adbin, ad.adrelid, true) as def_value,dsc.description,dep.objid FROM pg_catalog.pg_attribute a INNER JOIN pg_catalog.pg_class c ON (a.attrelid=c.oid) LEFT OUTER JOIN pg_catalog.pg_attrdef ad ON (a.attrelid=ad.adrelid AND a.attnum = ad.adnum) LEFT OUTER JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid AND a.attnum = dsc.objsubid) LEFT OUTER JOIN pg_depend dep on dep.refobjid = a.attrelid AND dep.deptype = 'i' and dep.refobjsubid = a.attnum and dep.classid = dep.refclassid WHERE NOT a.attisdropped AND c.relkind not in ('i','I','c') AND c.oid='public.customers'::regclass ORDER BY a.attnum",
    "SELECT t.oid,t.*,c.relkind,format_type(nullif(t.typbasetype, 0), t.typtypmod) as base_type_name, d.description FROM pg_catalog.pg_type t LEFT OUTER JOIN pg_catalog.pg_type et ON et.oid=t.typelem LEFT OUTER JOIN pg_catalog.pg_class c ON c.oid=t.typrelid LEFT OUTER JOIN pg_catalog.pg_description d ON t.oid=d.objoid WHERE t.typname IS NOT NULL AND (c.relkind IS NULL OR c.relkind = 'c') AND (et.typcategory IS NULL OR et.typcategory <> 'C')",
    "SET search_path = public",
    "SELECT COUNT(*) FROM public.customers",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgadmin_and_dbeaver_startup_queries_answer_masked() {
    let env = start_default().await;
    ready(&env).await;
    let raw = raw_values(&env, READ_IDS).await;
    for user in ["support", "solutions"] {
        let want = expected_rows(&env, user, READ_IDS).await;
        for (tool, list) in [("pgAdmin", PGADMIN), ("DBeaver", DBEAVER)] {
            let c = env.proxy(user).await;
            for sql in list {
                // Single statements over the extended protocol (pgAdmin's psycopg 3 and
                // DBeaver's pgjdbc use it): Parse and Describe (tokio-postgres asks for binary
                // results, which aclitem has not: executing is left to the simple protocol).
                // First, because tokio-postgres's prepare returns before its ReadyForQuery,
                // and pgredact takes a search_path change only with no statement in flight.
                if !sql.trim_end_matches(';').contains(';') && !sql.starts_with("SET") {
                    let r = c.prepare(sql).await;
                    assert!(
                        r.is_ok(),
                        "{tool} as {user} (extended): {sql}: {:?}",
                        r.err()
                    );
                }
                // Then the simple protocol, as sent.
                let r = c.simple_query(sql).await;
                assert!(r.is_ok(), "{tool} as {user}: {sql}: {:?}", r.err());
            }
            // The table's data, as each tool's data viewer reads it.
            let view = match tool {
                "pgAdmin" => "SELECT customer_id::text, first_name, last_name, email::text, phone, address, birth_date::text, tier FROM public.customers WHERE customer_id IN (1, 2, 3) ORDER BY customer_id ASC LIMIT 1000",
                _ => "SELECT x.customer_id::text, x.first_name, x.last_name, x.email::text, x.phone, x.address, x.birth_date::text, x.tier FROM public.customers x WHERE x.customer_id IN (1, 2, 3) ORDER BY x.customer_id LIMIT 200",
            };
            let got: Vec<Vec<Option<String>>> = c
                .query(view, &[])
                .await
                .unwrap_or_else(|e| panic!("{tool} data viewer as {user}: {e}"))
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect()
                })
                .collect();
            check_masked(&format!("{tool} as {user}"), user, &got, &want, &raw);
            // The connection's settings took: pgAdmin's bytea_output, DBeaver's search_path.
            let check = match tool {
                "pgAdmin" => ("SHOW bytea_output", "hex"),
                _ => ("SHOW search_path", "public"),
            };
            assert_eq!(rows(&c, check.0).await.unwrap(), vec![check.1]);
        }
    }
}

/// The four demo tables.
const TABLES: &[&str] = &["customers", "customer_events", "orders", "customer_history"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_as_support_restores_to_the_statically_masked_copy() {
    let env = start_default().await;
    ready(&env).await;
    let su = env.direct("postgres").await;
    // pg_dump reads sequence values (not PII); support needs SELECT on them, as without pgredact.
    for sql in [
        "GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO support",
        "CREATE DATABASE restored_plain",
        "CREATE DATABASE restored_custom",
    ] {
        su.batch_execute(sql).await.unwrap();
    }
    let bin = |name: &str| {
        pgredact::pgcluster::Cluster::bin_dir()
            .map(|d| d.join(name))
            .ok()
            .filter(|p| p.exists())
            .unwrap_or_else(|| name.into())
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("app.sql");
    let custom = dir.path().join("app.dump");
    let proxy_port = env.addr.port().to_string();
    let db_port = env.cluster.port.to_string();
    let run = |mut c: Command, what: &str, pw: &str| {
        let out = tokio::task::block_in_place(|| c.env("PGPASSWORD", pw).output())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (file, format) in [(&plain, "p"), (&custom, "c")] {
        let mut c = Command::new(bin("pg_dump"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &proxy_port,
            "-U",
            "support",
            "-d",
            DB,
        ])
        .args(["-N", "pgredact*", "-F", format, "-f"])
        .arg(file);
        let (ok, _, err) = run(c, "pg_dump", "support");
        assert!(ok, "pg_dump -F{format} as support through pgredact: {err}");
    }
    // No raw PII in either file (the custom format is compressed: checked after the restore).
    let text = std::fs::read_to_string(&plain).unwrap();
    let raw_emails = rows(&su, "SELECT email FROM customers WHERE email IS NOT NULL")
        .await
        .unwrap();
    assert!(raw_emails.len() > 9000);
    let fields: std::collections::HashSet<&str> = text.split(['\t', '\n', '"', ' ']).collect();
    assert!(fields.contains("d***@example.com"), "no masked e-mail");
    for e in &raw_emails {
        assert!(
            !fields.contains(e.as_str()),
            "raw e-mail {e} in the plain dump"
        );
    }

    // Restore as the superuser, straight to PostgreSQL, without owners and grants (a scratch
    // copy). pgredact's own event triggers are in the dump (pg_dump includes every event
    // trigger) but call functions of the excluded pgredact_admin schema: left out of the
    // custom restore with a list (pg_restore -L), and their statements are the only ones that
    // may fail in the plain restore.
    let mut c = Command::new(bin("psql"));
    c.args([
        "-X",
        "-q",
        "-h",
        "127.0.0.1",
        "-p",
        &db_port,
        "-U",
        "postgres",
    ])
    .args(["-d", "restored_plain", "-o", "/dev/null", "-f"])
    .arg(&plain);
    let (ok, _, err) = run(c, "psql -f", "postgres");
    assert!(ok, "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors
            .iter()
            .all(|l| l.contains("pgredact_admin") || l.contains("event trigger \"pgredact_ddl")),
        "plain restore: {err}"
    );
    let mut c = Command::new(bin("pg_restore"));
    c.arg("-l").arg(&custom);
    let (ok, list, err) = run(c, "pg_restore -l", "postgres");
    assert!(ok, "{err}");
    let list: String = list
        .lines()
        .filter(|l| !l.contains("EVENT TRIGGER"))
        .map(|l| format!("{l}\n"))
        .collect();
    let list_file = dir.path().join("list");
    std::fs::write(&list_file, list).unwrap();
    let mut c = Command::new(bin("pg_restore"));
    c.args(["-h", "127.0.0.1", "-p", &db_port, "-U", "postgres"])
        .args(["-d", "restored_custom", "--no-owner", "--no-privileges"])
        .args(["--exit-on-error", "-L"])
        .arg(&list_file)
        .arg(&custom);
    let (ok, _, err) = run(c, "pg_restore", "postgres");
    assert!(ok, "pg_restore: {err}");

    // Table by table against the statically masked copy: the masking views read directly by
    // the superuser. They are PostgreSQL's own masking (the wall), so the comparison does not
    // go through pgredact's rewriting or pg_dump's path: a table dumped raw, a missed rewrite or
    // a COPY of the table itself would differ. Same schema (columns and types), same rows.
    let schema_sql = "SELECT table_name || '.' || column_name || ':' || data_type \
                      FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1";
    let source_schema = rows(&su, schema_sql).await.unwrap();
    for db in ["restored_plain", "restored_custom"] {
        let r = env
            .cluster
            .connect("postgres", Some("postgres"), db)
            .await
            .unwrap();
        assert_eq!(rows(&r, schema_sql).await.unwrap(), source_schema, "{db}");
        for t in TABLES {
            let digest = |schema: &str| {
                format!(
                    "SELECT count(*), md5(string_agg(x::text, E'\\n' ORDER BY x::text)) FROM {schema}.{t} x"
                )
            };
            let got = rows(&r, &digest("public")).await.unwrap();
            let want = rows(&su, &digest("pgredact_masked")).await.unwrap();
            let raw = rows(&su, &digest("public")).await.unwrap();
            assert_eq!(got, want, "{db}.{t} differs from the masked copy");
            assert_ne!(got, raw, "{db}.{t} equals the raw table");
            println!("pg_dump {db}.{t}: {} (count|md5) = masked copy", got[0]);
        }
        // Independent of the views: the masked shapes, and no raw e-mail left.
        let bad = rows(
            &r,
            "SELECT (SELECT count(*) FROM customers WHERE email !~ '^.\\*\\*\\*@') \
                  + (SELECT count(*) FROM customer_events WHERE ip_address IS NOT NULL) \
                  + (SELECT count(*) FROM customer_history WHERE phone IS NOT NULL)",
        )
        .await
        .unwrap();
        assert_eq!(bad, vec!["0"], "{db}: unmasked values");
        let restored_emails: std::collections::HashSet<String> =
            rows(&r, "SELECT email FROM customers WHERE email IS NOT NULL")
                .await
                .unwrap()
                .into_iter()
                .collect();
        assert!(
            raw_emails.iter().all(|e| !restored_emails.contains(e)),
            "{db}: raw e-mails restored"
        );
    }
}
