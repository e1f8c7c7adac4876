//! Right to be forgotten, end to end against real PostgreSQL clusters (pgcluster + demo data):
//! CLI and HTTP interfaces, plan and blockers, batches, resume, concurrency, suppression.

mod support;

use pgredact::config::Config;
use pgredact::forget::{self, Faults, ForgetArgs, Origin, Session, Target, UnforgetArgs};
use pgredact::pgcluster::Cluster;
use std::path::Path;
use std::sync::Arc;
use support::http::{get, http, post, post_as, post_json, wait_job, REMOVE_PII};
use support::{default_demo_cluster, rt, write_policy, ConfigEnv, DEMO_DB};

const HASH_KEY_ENV: &str = "PGREDACT_TEST_FORGET_HASH_KEY";
const HASH_KEY: &str = "test-forget-key-0123456789";
const TOKEN_ENV: &str = "PGREDACT_TEST_FORGET_ADMIN_TOKEN";
const TOKEN: &str = "s3cret-admin-token";

const DEMO_POLICY: &str = r#"
database = "app"
unmasked_roles = ["dba"]

[tables."public.customers"]
subject = "customer_id"
columns.first_name = "null"
columns.last_name = "null"
columns.email = "email"
columns.phone = { mask = "partial", keep_last = 2 }
columns.address = "redact"
columns.city = "null"
columns.country = "null"
columns.birth_date = "year"

[tables."public.customer_events"]
subject = "customer_id"
columns.ip_address = "null"
columns.user_agent = "null"
columns.payload = "null"

[tables."public.orders"]
subject = "customer_id"
columns.shipping_address = "redact"

[tables."public.customer_history"]
subject = "customer_id"
columns.email = "null"
columns.phone = "null"
columns.address = "null"
"#;

/// Lets the control role own the demo tables (so it can ANALYZE and REFRESH) and install
/// triggers; adds a materialized view holding copies of PII.
const DEMO_SETUP: &str = r#"
ALTER TABLE public.customers OWNER TO pgredact;
ALTER TABLE public.customer_events OWNER TO pgredact;
ALTER TABLE public.orders OWNER TO pgredact;
ALTER TABLE public.customer_history OWNER TO pgredact;
CREATE MATERIALIZED VIEW public.customer_country AS SELECT customer_id, country, first_name FROM public.customers;
ALTER MATERIALIZED VIEW public.customer_country OWNER TO pgredact;
"#;

fn set_env() {
    // Same values in every test of this binary, so parallel tests agree.
    std::env::set_var(HASH_KEY_ENV, HASH_KEY);
    std::env::set_var(TOKEN_ENV, TOKEN);
}

fn write_config(cluster: &Cluster, policy: &str) -> (Config, tempfile::TempDir) {
    write_config_extra(cluster, policy, "")
}

/// [`write_config`] with more TOML at the end (e.g. a `[forget]` section).
fn write_config_extra(cluster: &Cluster, policy: &str, extra: &str) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_policy(dir.path(), policy);
    let toml = format!(
        "listen = \"127.0.0.1:0\"\npolicies = \"policies\"\n\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"pgredact\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{TOKEN_ENV}\"\n\n[secrets]\nhash_key_env = \"{HASH_KEY_ENV}\"\n{extra}",
        cluster.port
    );
    let path = dir.path().join("pgredact.toml");
    std::fs::write(&path, toml).expect("write config");
    let cfg = Config::load(&path).expect("config loads");
    (cfg, dir)
}

fn demo_env() -> ConfigEnv {
    set_env();
    let cluster = default_demo_cluster();
    cluster
        .superuser_psql(DEMO_DB, DEMO_SETUP)
        .expect("demo setup");
    let (cfg, dir) = write_config(&cluster, DEMO_POLICY);
    ConfigEnv {
        cluster,
        cfg,
        _dir: dir,
    }
}

/// A fresh cluster with the demo roles (from the demo script) and `schema`, and a
/// configuration with `policy`.
fn schema_env(schema: &str, policy: &str) -> ConfigEnv {
    set_env();
    let cluster = Cluster::start(Default::default()).expect("cluster");
    cluster.create_database(DEMO_DB).expect("create db");
    cluster
        .superuser_psql(DEMO_DB, &pgredact::pgcluster::demo_schema_sql())
        .expect("demo roles");
    cluster.superuser_psql(DEMO_DB, schema).expect("schema");
    let (cfg, dir) = write_config(&cluster, policy);
    ConfigEnv {
        cluster,
        cfg,
        _dir: dir,
    }
}

/// A digest of all rows of the demo tables except those of the given customers.
fn fingerprint_except(env: &ConfigEnv, ids: &str) -> String {
    env.sql(&format!(
            "SELECT md5(string_agg(t, '|' ORDER BY t)) FROM ( \
               SELECT c::text AS t FROM customers c WHERE customer_id NOT IN ({ids}) \
               UNION ALL SELECT e::text FROM customer_events e WHERE customer_id NOT IN ({ids}) \
               UNION ALL SELECT o::text FROM orders o WHERE customer_id NOT IN ({ids}) \
               UNION ALL SELECT h::text FROM customer_history h WHERE customer_id NOT IN ({ids})) s"
        ))
}

fn fingerprint_all(env: &ConfigEnv) -> String {
    fingerprint_except(env, "-1")
}

/// Non-PII aggregates that forgetting must leave alone.
fn aggregates(env: &ConfigEnv) -> String {
    env.sql(
        "SELECT (SELECT count(*) FROM customers), (SELECT sum(lifetime_value) FROM customers), \
                (SELECT string_agg(tier || ':' || n, ',' ORDER BY tier) FROM (SELECT tier, count(*) n FROM customers GROUP BY tier) s), \
                (SELECT count(*) FROM customer_events), \
                (SELECT string_agg(event_type || ':' || n, ',' ORDER BY event_type) FROM (SELECT event_type, count(*) n FROM customer_events GROUP BY event_type) s), \
                (SELECT count(*) FROM orders), (SELECT sum(amount) FROM orders), \
                (SELECT count(*) FROM customer_history), \
                (SELECT count(DISTINCT customer_id) FROM customer_events)",
    )
}

fn forget_args(ids: &str) -> ForgetArgs {
    ForgetArgs {
        ids: Some(ids.to_string()),
        requester: Some("dpo@example.com".to_string()),
        batch_size: forget::DEFAULT_BATCH_SIZE,
        ..ForgetArgs::default()
    }
}

/// Forgets `ids` through the CLI and checks the job ended done; returns its report.
fn forget_done(env: &ConfigEnv, ids: &str) -> String {
    let report = rt()
        .block_on(forget::run_cli(&env.cfg, forget_args(ids)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains(": done"), "{report}");
    report
}

#[test]
fn forget_anonymizes_profile_history_and_events_and_keeps_aggregates() {
    let env = demo_env();
    let before_aggs = aggregates(&env);
    let others_before = fingerprint_except(&env, "1234, 77");
    // The issue's "before" column.
    let row = env.sql("SELECT customer_id, first_name IS NOT NULL, country IS NOT NULL FROM customers WHERE customer_id = 1234");
    assert_eq!(row, "1234|t|t");
    let tier_before = env.sql("SELECT tier || '/' || coalesce(segment, '-') || '/' || lifetime_value FROM customers WHERE customer_id = 1234");
    let events_before: i64 = env
        .sql("SELECT count(*) FROM customer_events WHERE customer_id = 1234")
        .parse()
        .unwrap();
    assert!(
        events_before > 0,
        "customer 1234 needs events for this test"
    );
    assert_eq!(env.sql("SELECT count(*) FROM customer_country WHERE customer_id = 1234 AND country IS NOT NULL"), "1");

    let report = rt()
        .block_on(forget::run_cli(&env.cfg, forget_args("1234,77,99999999")))
        .unwrap_or_else(|e| panic!("forget failed: {e}"));
    assert!(report.contains(": done"), "{report}");
    assert!(report.contains("2 forgotten now"), "{report}");
    assert!(report.contains("1 unknown"), "{report}");
    assert!(report.contains("no PII left"), "{report}");

    // The issue's "after" column: same ID, PII NULL.
    assert_eq!(
        env.sql("SELECT customer_id, first_name IS NULL, country IS NULL, last_name IS NULL, email IS NULL, phone IS NULL, \
                   address IS NULL, city IS NULL, birth_date IS NULL FROM customers WHERE customer_id = 1234"),
        "1234|t|t|t|t|t|t|t|t"
    );
    // Non-PII attributes kept.
    assert_eq!(
        env.sql("SELECT tier || '/' || coalesce(segment, '-') || '/' || lifetime_value FROM customers WHERE customer_id = 1234"),
        tier_before
    );
    // Events and history cleared, rows kept.
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_events WHERE customer_id IN (1234, 77) AND (ip_address IS NOT NULL OR user_agent IS NOT NULL OR payload IS NOT NULL)"),
        "0"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_events WHERE customer_id = 1234 AND event_type IS NOT NULL AND occurred_at IS NOT NULL"),
        events_before.to_string()
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_history WHERE customer_id IN (1234, 77) AND (email IS NOT NULL OR phone IS NOT NULL OR address IS NOT NULL)"),
        "0"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM orders WHERE customer_id IN (1234, 77) AND shipping_address IS NOT NULL"),
        "0"
    );
    // Aggregates and every other customer untouched.
    assert_eq!(aggregates(&env), before_aggs);
    assert_eq!(fingerprint_except(&env, "1234, 77"), others_before);
    // The materialized view (a copy) was refreshed.
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_country WHERE customer_id IN (1234, 77) AND (country IS NOT NULL OR first_name IS NOT NULL)"),
        "0"
    );
    assert!(report.contains("public.customer_country"), "{report}");
    assert!(
        report.contains("analyzed: public.customer_events"),
        "{report}"
    );
    // The forget list holds keyed hashes only (32 bytes), and the job record no raw ID list.
    assert_eq!(
        env.sql("SELECT count(*), min(length(subject_hash)) FROM pgredact.forget_list"),
        "3|32"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_batches WHERE ids IS NOT NULL"),
        "0"
    );
    assert_eq!(
        env.sql("SELECT state, requester, ids_total FROM pgredact.forget_jobs"),
        "done|dpo@example.com|3"
    );

    // Idempotence: forgetting again changes nothing and says so.
    let all_before = fingerprint_all(&env);
    let report2 = rt()
        .block_on(forget::run_cli(&env.cfg, forget_args("1234,77")))
        .unwrap_or_else(|e| panic!("second forget failed: {e}"));
    assert!(report2.contains("2 already forgotten"), "{report2}");
    assert!(report2.contains("0 forgotten now"), "{report2}");
    assert!(report2.contains("rows changed: none"), "{report2}");
    assert_eq!(fingerprint_all(&env), all_before);
}

#[test]
fn dry_run_and_blocked_plans_change_nothing() {
    let env = demo_env();
    let before = fingerprint_all(&env);
    let out = rt()
        .block_on(forget::run_cli(
            &env.cfg,
            ForgetArgs {
                dry_run: true,
                ..forget_args("1234,77")
            },
        ))
        .unwrap_or_else(|e| panic!("dry run failed: {e}"));
    assert!(
        out.contains("public.customers (subject customer_id): 2 row(s) match"),
        "{out}"
    );
    assert!(out.contains("first_name -> NULL"), "{out}");
    assert!(out.contains("blockers: none"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert_eq!(fingerprint_all(&env), before);
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_list"), "0");
    assert_eq!(
        env.sql("SELECT count(*) FROM pg_trigger WHERE tgname = '~pgredact_forget'"),
        "0"
    );

    // A NOT NULL PII column without a `forget` value blocks; so does a CHECK the value breaks.
    env.sql("ALTER TABLE customer_history ADD CONSTRAINT phone_shape CHECK (phone IS NULL OR phone LIKE '+%')");
    let blocked_policy = format!(
        "{DEMO_POLICY}\n[tables.\"public.customer_notes\"]\nsubject = \"customer_id\"\ncolumns.note = \"null\"\n"
    )
    .replace("columns.country = \"null\"", "columns.country = \"null\"\ncolumns.tier = \"null\"")
    .replace("columns.phone = \"null\"\ncolumns.address = \"null\"", "columns.phone = { mask = \"null\", forget = \"n/a\" }\ncolumns.address = \"null\"");
    let (cfg, _dir) = write_config(&env.cluster, &blocked_policy);
    // A customer with a phone number in the history table, so the CHECK is evaluated on rows.
    let with_history =
        env.sql("SELECT min(customer_id) FROM customer_history WHERE phone IS NOT NULL");
    let err = rt()
        .block_on(forget::run_cli(&cfg, forget_args(&with_history)))
        .expect_err("blocked plan must fail");
    assert!(matches!(err, forget::Error::Blocked(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("BLOCKED"), "{err}");
    assert!(err.contains("public.customers.tier is NOT NULL"), "{err}");
    assert!(err.contains("public.customer_notes (policy line"), "{err}");
    assert!(err.contains("CHECK constraint phone_shape"), "{err}");
    assert_eq!(fingerprint_all(&env), before);
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_list"), "0");
}

#[test]
fn malformed_csv_is_rejected_whole_with_its_line_number() {
    let env = demo_env();
    let before = fingerprint_all(&env);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ids.csv");
    std::fs::write(&bad, "customer_id\n1234\n\n77\n12x\n88\n").unwrap();
    let err = rt()
        .block_on(forget::run_cli(
            &env.cfg,
            ForgetArgs {
                csv: Some(bad.clone()),
                ..forget_args("")
            }
            .without_ids(),
        ))
        .expect_err("malformed CSV must be rejected");
    assert!(
        matches!(
            err,
            forget::Error::CsvFile {
                source: forget::csv::Error::Line { line: 5, .. },
                ..
            }
        ),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(fingerprint_all(&env), before);
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_list"), "0");
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_jobs"), "0");

    // The same file without the bad line works (header and blank line accepted).
    let good = dir.path().join("good.csv");
    std::fs::write(&good, "customer_id\r\n1234\r\n\r\n77\r\n88\r\n").unwrap();
    let report = rt()
        .block_on(forget::run_cli(
            &env.cfg,
            ForgetArgs {
                csv: Some(good),
                ..forget_args("")
            }
            .without_ids(),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("3 forgotten now"), "{report}");
    assert_eq!(
        env.sql("SELECT count(*) FROM customers WHERE customer_id IN (1234, 77, 88) AND first_name IS NULL"),
        "3"
    );
}

trait WithoutIds {
    fn without_ids(self) -> Self;
}
impl WithoutIds for ForgetArgs {
    fn without_ids(mut self) -> Self {
        self.ids = None;
        self
    }
}

#[test]
fn http_api_accepts_jobs_refuses_oversize_and_requires_a_token() {
    let env = demo_env();
    let rt = rt();
    rt.block_on(async {
        let state = pgredact::admin::AdminState::from_config(&env.cfg).expect("admin state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        pgredact::admin::spawn_worker(state.clone());
        tokio::spawn(async move { axum::serve(listener, pgredact::admin::router(state)).await });
        let r = http(addr, "GET", "/healthz", &[], b"").await;
        assert_eq!(r.status, 200, "{}", r.body);

        // No token, wrong token.
        let r = http(
            addr,
            "POST",
            REMOVE_PII,
            &[("Content-Type", "application/json")],
            br#"{"customer_ids":[1]}"#,
        )
        .await;
        assert_eq!(r.status, 401, "{}", r.body);
        let r = post_json(addr, "nope", REMOVE_PII, r#"{"customer_ids":[1]}"#).await;
        assert_eq!(r.status, 401);
        let r = http(addr, "GET", "/v1/jobs/1", &[], b"").await;
        assert_eq!(r.status, 401);

        // 50,001 IDs: 413 with a clear message, as JSON and as CSV; nothing queued.
        let ids: Vec<String> = (1..=50_001).map(|i| i.to_string()).collect();
        let big = format!("{{\"customer_ids\":[{}]}}", ids.join(","));
        let r = post_json(addr, TOKEN, REMOVE_PII, &big).await;
        assert_eq!(r.status, 413, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON error body");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains("50001") && msg.contains("50000"), "{msg}");
        let csv_big = format!("customer_id\n{}\n", ids.join("\n"));
        let r = post_as(addr, TOKEN, REMOVE_PII, "text/csv", &csv_big).await;
        assert_eq!(r.status, 413, "{}", r.body);
        // Exactly 50,000 (with a header line) is not refused for its size.
        let ok_ids = &ids[..50_000];
        let csv_ok = format!("customer_id\n{}\n", ok_ids.join("\n"));
        let path = format!("{REMOVE_PII}?database=app");
        let r = post_as(addr, TOKEN, &path, "text/csv", &csv_ok).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let big_job: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let big_id = big_job["job_id"].as_i64().expect("job_id");
        assert_eq!(big_job["ids"], 50_000);
        // Malformed input: 400 naming the problem.
        let r = post_json(addr, TOKEN, REMOVE_PII, r#"{"customer_ids":[1, true]}"#).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("customer_ids[1]"), "{}", r.body);

        // Wait for the 50,000-ID job, then check the data.
        let status = wait_job(addr, TOKEN, big_id).await;
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["ids_forgotten"], 10_000, "{status}");
        assert_eq!(status["ids_unknown"], 40_000, "{status}");
        assert_eq!(status["verification"]["ok"], true, "{status}");
        assert_eq!(
            status["rows_changed"]["public.customers"], 10_000,
            "{status}"
        );
        assert_eq!(status["requester"], "api");
        assert_eq!(
            env.sql(
                "SELECT count(*) FROM customers WHERE first_name IS NOT NULL OR email IS NOT NULL"
            ),
            "0"
        );

        // A JSON job with strings and ints: everything already forgotten now, reported so.
        let r = post_json(
            addr,
            TOKEN,
            REMOVE_PII,
            r#"{"customer_ids":[42, "43"], "requester":"crm"}"#,
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let id = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["job_id"]
            .as_i64()
            .unwrap();
        let status = wait_job(addr, TOKEN, id).await;
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["ids_already_forgotten"], 2, "{status}");
        assert_eq!(status["requester"], "crm");
        assert_eq!(get(addr, TOKEN, "/v1/jobs/999999").await.status, 404);

        // Policies are re-read per request: a broken file is logged and the last good policy
        // keeps serving; a policy naming another database is picked up without a restart.
        let pol_dir = env.cfg.policies_dir();
        std::fs::write(pol_dir.join("broken.toml"), "database = [\n").unwrap();
        let r = post_json(addr, TOKEN, REMOVE_PII, r#"{"customer_ids":[44]}"#).await;
        assert_eq!(r.status, 202, "last good policy still serves: {}", r.body);
        std::fs::remove_file(pol_dir.join("broken.toml")).unwrap();
        std::fs::write(
            pol_dir.join("other.toml"),
            "database = \"otherdb\"\n[tables.\"public.people\"]\nsubject = \"id\"\ncolumns.name = \"null\"\n",
        )
        .unwrap();
        let r = get(addr, TOKEN, "/v1/jobs/1?database=otherdb").await;
        // The new policy is known (so not "no policy for database"); its database does not exist.
        assert!(
            !r.body.contains("no policy for database"),
            "{} {}",
            r.status,
            r.body
        );
        std::fs::remove_file(pol_dir.join("other.toml")).unwrap();
    });
}

const PII_ID_SCHEMA: &str = r#"
CREATE TABLE public.accounts (
    email text PRIMARY KEY,
    name text,
    country text,
    plan text NOT NULL DEFAULT 'free'
);
CREATE TABLE public.sessions (
    session_id serial PRIMARY KEY,
    email text NOT NULL REFERENCES public.accounts (email),
    ip inet,
    seconds integer
);
CREATE TABLE public.invoices (
    invoice_id serial PRIMARY KEY,
    email text REFERENCES public.accounts (email) ON UPDATE CASCADE,
    amount numeric
);
CREATE INDEX ON public.sessions (email);
CREATE INDEX ON public.invoices (email);
INSERT INTO public.accounts VALUES ('alice@example.com', 'Alice', 'UK', 'pro'), ('bob@example.com', 'Bob', 'FR', 'free');
INSERT INTO public.sessions (email, ip, seconds) VALUES ('alice@example.com', '10.0.0.1', 30), ('alice@example.com', '10.0.0.2', 40), ('bob@example.com', '10.0.0.3', 50);
INSERT INTO public.invoices (email, amount) VALUES ('alice@example.com', 10), ('bob@example.com', 20);
ALTER TABLE public.accounts OWNER TO pgredact;
ALTER TABLE public.sessions OWNER TO pgredact;
ALTER TABLE public.invoices OWNER TO pgredact;
GRANT SELECT, INSERT, UPDATE ON public.accounts, public.sessions, public.invoices TO solutions;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO solutions;
"#;

const PII_ID_POLICY: &str = r#"
database = "app"
[tables."public.accounts"]
subject = "email"
columns.email = "email"
columns.name = "null"
columns.country = "null"
[tables."public.sessions"]
subject = "email"
columns.ip = "null"
[tables."public.invoices"]
subject = "email"
"#;

#[test]
fn customer_id_that_is_pii_becomes_one_token_everywhere() {
    let env = schema_env(PII_ID_SCHEMA, PII_ID_POLICY);
    let (cluster, cfg) = (&env.cluster, &env.cfg);
    let q = |s: &str| env.sql(s);

    let report = rt()
        .block_on(forget::run_cli(cfg, forget_args("alice@example.com")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains(": done"), "{report}");
    let token = q("SELECT email FROM accounts WHERE plan = 'pro'");
    assert!(
        token.starts_with("forgotten:") && token.len() == 34,
        "{token}"
    );
    assert_eq!(
        q(&format!(
            "SELECT name IS NULL, country IS NULL FROM accounts WHERE email = '{token}'"
        )),
        "t|t"
    );
    // Same token in every table, rows and non-PII kept, links intact.
    assert_eq!(q(&format!("SELECT count(*), sum(seconds), bool_and(ip IS NULL) FROM sessions WHERE email = '{token}'")), "2|70|t");
    assert_eq!(
        q(&format!(
            "SELECT count(*), sum(amount) FROM invoices WHERE email = '{token}'"
        )),
        "1|10"
    );
    // Untraceable: the token is random (kept on the forget list), not the keyed hash of the ID
    // that `hash` masks show (nor any part of it), so no masked value leads back to Alice.
    let keyed = q("SELECT pgredact.hmac_hex('alice@example.com')");
    let hex = token.trim_start_matches("forgotten:");
    assert_eq!(hex.len(), 24, "{token}");
    assert!(!keyed.contains(&hex[..8]), "{token} vs {keyed}");
    assert_eq!(
        q(&format!(
            "SELECT count(*) FROM pgredact.forget_list WHERE token = '{token}'"
        )),
        "1"
    );
    // Untraceable: the raw ID is nowhere, not in the data nor in pgredact's own tables.
    let everywhere = "SELECT (SELECT count(*) FROM accounts a WHERE a::text LIKE '%alice%') \
                      + (SELECT count(*) FROM sessions s WHERE s::text LIKE '%alice%') \
                      + (SELECT count(*) FROM invoices i WHERE i::text LIKE '%alice%') \
                      + (SELECT count(*) FROM pgredact.forget_jobs j WHERE j::text ILIKE '%alice%') \
                      + (SELECT count(*) FROM pgredact.forget_batches b WHERE b::text ILIKE '%alice%') \
                      + (SELECT count(*) FROM pgredact.forget_list f WHERE f::text ILIKE '%alice%')";
    assert_eq!(q(everywhere), "0");
    assert_eq!(
        q("SELECT name FROM accounts WHERE email = 'bob@example.com'"),
        "Bob"
    );
    // Bob's rows untouched.
    assert_eq!(
        q("SELECT count(*) FROM sessions WHERE email = 'bob@example.com' AND ip IS NOT NULL"),
        "1"
    );

    // A nightly load that bypasses the proxy and upserts Alice again: lands on the token row,
    // with the PII left empty and the non-PII value updated.
    cluster
        .psql(
            "solutions",
            None,
            DEMO_DB,
            "INSERT INTO accounts (email, name, country, plan) VALUES ('alice@example.com', 'Alice', 'UK', 'enterprise') \
             ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name, country = EXCLUDED.country, plan = EXCLUDED.plan; \
             INSERT INTO sessions (email, ip, seconds) VALUES ('alice@example.com', '10.9.9.9', 5); \
             UPDATE accounts SET name = 'Alice B' WHERE email LIKE 'forgotten:%';",
        )
        .expect("nightly load");
    assert_eq!(q(everywhere), "0");
    assert_eq!(
        q(&format!(
            "SELECT name IS NULL, country IS NULL, plan FROM accounts WHERE email = '{token}'"
        )),
        "t|t|enterprise"
    );
    assert_eq!(q(&format!("SELECT count(*), sum(seconds), bool_and(ip IS NULL) FROM sessions WHERE email = '{token}'")), "3|75|t");
    assert_eq!(q("SELECT count(*) FROM accounts"), "2");
}

#[test]
fn crash_between_batches_then_resume_finishes_the_job() {
    let env = demo_env();
    let ids: Vec<String> = (101..=110).map(|i| i.to_string()).collect();
    let args = ForgetArgs {
        batch_size: 2,
        ..forget_args(&ids.join(","))
    };
    // Simulated crash after two committed batches.
    let err = rt()
        .block_on(forget::run_cli_with(
            &env.cfg,
            args.clone(),
            Faults {
                stop_after_batches: Some(2),
                ..Faults::default()
            },
        ))
        .expect_err("stopped run reports an interruption")
        .to_string();
    assert!(
        err.contains("interrupted") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(env.sql("SELECT state FROM pgredact.forget_jobs"), "running");
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_batches WHERE state = 'done'"),
        "2"
    );
    assert_eq!(env.sql("SELECT count(*) FROM customers WHERE customer_id BETWEEN 101 AND 104 AND first_name IS NULL"), "4");
    assert_eq!(env.sql("SELECT count(*) FROM customers WHERE customer_id BETWEEN 105 AND 110 AND first_name IS NOT NULL"), "6");
    // All ten are suppressed already (forget list filled at start).
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_list"), "10");

    // A crash inside the third batch rolls that batch back whole.
    let events_105: String = env.sql("SELECT count(*) FROM customer_events WHERE customer_id IN (105, 106) AND ip_address IS NOT NULL");
    let resume = ForgetArgs {
        resume: true,
        ids: None,
        ..args.clone()
    };
    let err = rt()
        .block_on(forget::run_cli_with(
            &env.cfg,
            resume.clone(),
            Faults {
                fail_inside_batch: Some(1),
                ..Faults::default()
            },
        ))
        .expect_err("failed batch interrupts")
        .to_string();
    assert!(err.contains("fault injection inside batch"), "{err}");
    assert_eq!(env.sql("SELECT count(*) FROM customers WHERE customer_id IN (105, 106) AND first_name IS NOT NULL"), "2");
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_events WHERE customer_id IN (105, 106) AND ip_address IS NOT NULL"),
        events_105
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_batches WHERE state = 'done'"),
        "2"
    );

    // Resume: finishes the remaining three batches, verifies, clears the raw IDs.
    let report = rt()
        .block_on(forget::run_cli(&env.cfg, resume))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains(": done"), "{report}");
    assert!(report.contains("batches: 5/5 done"), "{report}");
    assert!(report.contains("10 forgotten now"), "{report}");
    assert_eq!(env.sql("SELECT count(*) FROM customers WHERE customer_id BETWEEN 101 AND 110 AND first_name IS NULL"), "10");
    assert_eq!(env.sql("SELECT count(*) FROM customer_events WHERE customer_id BETWEEN 101 AND 110 AND ip_address IS NOT NULL"), "0");
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_batches WHERE ids IS NOT NULL"),
        "0"
    );
    // Nothing left to resume.
    let again = rt()
        .block_on(forget::run_cli(
            &env.cfg,
            ForgetArgs {
                resume: true,
                ..ForgetArgs::default()
            },
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.contains("no unfinished"), "{again}");
}

#[test]
fn two_concurrent_jobs_with_overlapping_ids_do_no_double_work() {
    let env = demo_env();
    let matched: i64 = env.sql("SELECT count(*) FROM customer_events WHERE customer_id BETWEEN 1 AND 500 AND ip_address IS NOT NULL")
        .parse()
        .unwrap();
    let policy = forget::pick_policy(&env.cfg, Some("app")).unwrap();
    let target = Target::from_config(&env.cfg, "app");
    let key = HASH_KEY.as_bytes().to_vec();
    let origin = Origin {
        requester: "test".into(),
        source: "cli".into(),
    };
    let rt = rt();
    let (a, b) = rt.block_on(async {
        let run = |ids: Vec<i64>| {
            let (target, policy, key, origin) = (
                target.clone(),
                Arc::clone(&policy),
                key.clone(),
                origin.clone(),
            );
            tokio::spawn(async move {
                let mut s = Session::open(&target, policy, Some(&key)).await?;
                let text: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                let list = s.parse_ids(&text.join(","))?;
                let job = s.submit(&origin, &list, 25).await?;
                s.run(job, Faults::default()).await?;
                s.status(job).await?.ok_or(forget::Error::JobVanished(job))
            })
        };
        let a = run((1..=300).collect());
        let b = run((201..=500).rev().collect());
        (a.await.expect("join a"), b.await.expect("join b"))
    });
    let (a, b) = (
        a.unwrap_or_else(|e| panic!("job a: {e}")),
        b.unwrap_or_else(|e| panic!("job b: {e}")),
    );
    assert_eq!(a.state, "done", "{}", a.render());
    assert_eq!(b.state, "done", "{}", b.render());
    // Every customer 1..500 forgotten exactly once: the changed rows add up to what matched.
    let n = |s: &forget::JobStatus, t: &str| {
        s.rows_changed.get(t).and_then(|v| v.as_i64()).unwrap_or(0)
    };
    assert_eq!(
        n(&a, "public.customers") + n(&b, "public.customers"),
        500,
        "{}{}",
        a.render(),
        b.render()
    );
    assert_eq!(
        n(&a, "public.customer_events") + n(&b, "public.customer_events"),
        matched
    );
    assert_eq!(a.ids_forgotten + b.ids_forgotten, 500);
    assert_eq!(a.ids_already_forgotten + b.ids_already_forgotten, 100);
    assert_eq!(env.sql("SELECT count(*) FROM customers WHERE customer_id BETWEEN 1 AND 500 AND first_name IS NOT NULL"), "0");
    assert_eq!(
        env.sql(
            "SELECT count(*) FROM customers WHERE customer_id = 501 AND first_name IS NOT NULL"
        ),
        "1"
    );
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_list"), "500");
}

#[test]
fn nightly_load_after_forget_leaves_pii_empty_until_unforget() {
    let env = demo_env();
    rt().block_on(forget::run_cli(&env.cfg, forget_args("1234,77")))
        .unwrap_or_else(|e| panic!("{e}"));
    let lv_1235 = env.sql("SELECT lifetime_value FROM customers WHERE customer_id = 1235");
    // Straight into the database as the loader role (no proxy): upsert, COPY, UPDATE.
    let load = "\
INSERT INTO customers (customer_id, first_name, last_name, email, country, tier, lifetime_value) VALUES
  (1234, 'John', 'Smith', 'john@example.com', 'UK', 'gold', 999.00),
  (1235, 'Jane', 'Doe', 'jane@example.com', 'FR', 'gold', 555.00)
ON CONFLICT (customer_id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
  email = EXCLUDED.email, country = EXCLUDED.country, tier = EXCLUDED.tier, lifetime_value = EXCLUDED.lifetime_value;
COPY customer_events (customer_id, event_type, ip_address, user_agent, occurred_at) FROM STDIN;
1234\tnightly_login\t192.0.2.1\tcurl/8\t2024-05-01 00:00:00+00
1235\tnightly_login\t192.0.2.2\tcurl/8\t2024-05-01 00:00:00+00
77\tnightly_login\t192.0.2.3\tcurl/8\t2024-05-01 00:00:00+00
\\.
COPY customer_history (customer_id, changed_at, email, phone, address) FROM STDIN WITH (FORMAT csv);
1234,2024-05-01,john@example.com,+44 1,1 Main Street
\\.
UPDATE customers SET phone = '+44 20 7946 0000' WHERE customer_id = 77;
";
    env.cluster
        .psql("solutions", None, DEMO_DB, load)
        .expect("nightly load");
    // Forgotten customers: PII empty, non-PII landed.
    assert_eq!(
        env.sql("SELECT first_name IS NULL, last_name IS NULL, email IS NULL, country IS NULL, tier, lifetime_value FROM customers WHERE customer_id = 1234"),
        "t|t|t|t|gold|999.00"
    );
    assert_eq!(
        env.sql("SELECT phone IS NULL FROM customers WHERE customer_id = 77"),
        "t"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_events WHERE event_type = 'nightly_login' AND customer_id IN (1234, 77) AND ip_address IS NULL AND user_agent IS NULL"),
        "2"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_history WHERE customer_id = 1234 AND changed_at = '2024-05-01' AND email IS NULL AND address IS NULL"),
        "1"
    );
    // Other customers' data lands as sent.
    assert_eq!(
        env.sql(
            "SELECT first_name, country, lifetime_value FROM customers WHERE customer_id = 1235"
        ),
        "Jane|FR|555.00"
    );
    assert_ne!(lv_1235, "555.00");
    assert_eq!(
        env.sql("SELECT host(ip_address) FROM customer_events WHERE event_type = 'nightly_login' AND customer_id = 1235"),
        "192.0.2.2"
    );

    // Masked roles and the loader cannot read the forget list or the key.
    for role in ["support", "solutions"] {
        for table in [
            "pgredact.forget_list",
            "pgredact.hash_key",
            "pgredact.forget_jobs",
        ] {
            let r = env.cluster.psql(
                role,
                None,
                DEMO_DB,
                &format!("SELECT count(*) FROM {table}"),
            );
            assert!(
                r.as_ref()
                    .is_err_and(|e| e.to_string().contains("permission denied")),
                "{role} reads {table}: {r:?}"
            );
        }
    }

    // Another hash key would silently break the forget list: refused, and nothing is changed.
    let policy = forget::pick_policy(&env.cfg, Some("app")).unwrap();
    let target = Target::from_config(&env.cfg, "app");
    let err = rt()
        .block_on(Session::open(&target, policy, Some(b"another-key")))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("differs from the one the forget list was built with"),
        "{err}"
    );
    env.cluster
        .psql(
            "solutions",
            None,
            DEMO_DB,
            "UPDATE customers SET first_name = 'Again' WHERE customer_id = 77",
        )
        .expect("update");
    assert_eq!(
        env.sql("SELECT first_name IS NULL FROM customers WHERE customer_id = 77"),
        "t"
    );

    // Unforget (audited) lifts suppression for 1234 only.
    let out = rt()
        .block_on(forget::run_unforget_cli(
            &env.cfg,
            UnforgetArgs {
                ids: Some("1234".into()),
                requester: "dpo@example.com".into(),
                reason: Some("customer re-registered".into()),
                ..UnforgetArgs::default()
            },
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("1 of 1 ID(s) removed"), "{out}");
    assert_eq!(
        env.sql("SELECT kind, requester, summary->>'reason' FROM pgredact.forget_jobs WHERE kind = 'unforget'"),
        "unforget|dpo@example.com|customer re-registered"
    );
    env.cluster
        .psql(
            "solutions",
            None,
            DEMO_DB,
            "UPDATE customers SET first_name = 'John' WHERE customer_id IN (1234, 77)",
        )
        .expect("update");
    assert_eq!(env.sql("SELECT customer_id || ':' || coalesce(first_name, '-') FROM customers WHERE customer_id IN (1234, 77) ORDER BY 1"), "1234:John\n77:-");
}

#[test]
fn config_errors_are_clear() {
    set_env();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/app.toml"), "database = \"app\"\n").unwrap();
    let path = dir.path().join("pgredact.toml");
    std::fs::write(&path, "[upstream]\nuser = \"pgredact\"\nport = 1\n").unwrap();
    let cfg = Config::load(Path::new(&path)).unwrap();
    let err = rt()
        .block_on(forget::run_cli(&cfg, forget_args("1")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing to forget"), "{err}");
}

/// `customer_history` becomes a partitioned table (two partitions); `customer_notes` gets an
/// inheritance child. Both are policy tables; the partitions and the child are not listed.
const TREE_SETUP: &str = r#"
ALTER TABLE public.customer_history RENAME TO customer_history_flat;
CREATE TABLE public.customer_history (
    history_id bigint NOT NULL, customer_id bigint, changed_at timestamptz NOT NULL,
    email varchar(255), phone text, address text
) PARTITION BY RANGE (changed_at);
CREATE TABLE public.customer_history_2023 PARTITION OF public.customer_history
    FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE public.customer_history_other PARTITION OF public.customer_history DEFAULT;
CREATE INDEX ON public.customer_history (customer_id);
INSERT INTO public.customer_history SELECT * FROM public.customer_history_flat;
DROP TABLE public.customer_history_flat;
CREATE TABLE public.customer_notes (customer_id bigint, note text, kind text);
CREATE TABLE public.customer_notes_archive (archived_on date) INHERITS (public.customer_notes);
INSERT INTO public.customer_notes VALUES (1234, 'called about order', 'call'), (77, 'prefers e-mail', 'pref'), (500, 'keep me', 'call');
INSERT INTO public.customer_notes_archive VALUES (1234, 'old complaint', 'complaint', '2020-01-01'), (500, 'kept too', 'call', '2020-01-01');
ALTER TABLE public.customer_history OWNER TO pgredact;
ALTER TABLE public.customer_history_2023 OWNER TO pgredact;
ALTER TABLE public.customer_history_other OWNER TO pgredact;
ALTER TABLE public.customer_notes OWNER TO pgredact;
ALTER TABLE public.customer_notes_archive OWNER TO pgredact;
GRANT SELECT, INSERT, UPDATE ON public.customer_history, public.customer_history_2023, public.customer_history_other,
    public.customer_notes, public.customer_notes_archive TO solutions;
"#;

fn tree_env() -> ConfigEnv {
    let mut env = demo_env();
    env.sql(TREE_SETUP);
    let policy = format!(
        "{DEMO_POLICY}\n[tables.\"public.customer_notes\"]\nsubject = \"customer_id\"\ncolumns.note = \"null\"\n"
    );
    let (cfg, dir) = write_config(&env.cluster, &policy);
    env.cfg = cfg;
    env._dir = dir;
    env
}

/// Rows of these customers that still hold PII, in each partition and in the child (ONLY).
fn pii_left_in_tree(env: &ConfigEnv, ids: &str) -> String {
    env.sql(
        &format!(
            "SELECT (SELECT count(*) FROM ONLY customer_history_2023 WHERE customer_id IN ({ids}) AND (email IS NOT NULL OR phone IS NOT NULL OR address IS NOT NULL)) \
             || '/' || (SELECT count(*) FROM ONLY customer_history_other WHERE customer_id IN ({ids}) AND (email IS NOT NULL OR phone IS NOT NULL OR address IS NOT NULL)) \
             || '/' || (SELECT count(*) FROM ONLY customer_notes WHERE customer_id IN ({ids}) AND note IS NOT NULL) \
             || '/' || (SELECT count(*) FROM ONLY customer_notes_archive WHERE customer_id IN ({ids}) AND note IS NOT NULL)"
        ),
    )
}

#[test]
fn partitioned_and_inherited_policy_tables_are_forgotten_and_suppressed() {
    let env = tree_env();
    // A customer with history rows in both partitions.
    let both = env.sql(
        "SELECT customer_id FROM customer_history WHERE phone IS NOT NULL GROUP BY 1 \
         HAVING count(*) FILTER (WHERE changed_at >= '2023-01-01' AND changed_at < '2024-01-01') > 0 \
            AND count(*) FILTER (WHERE changed_at < '2023-01-01' OR changed_at >= '2024-01-01') > 0 \
         ORDER BY 1 LIMIT 1",
    );
    assert!(
        !both.is_empty(),
        "the demo data needs a customer in both partitions"
    );
    let ids = format!("1234,77,{both}");
    assert_ne!(pii_left_in_tree(&env, &ids), "0/0/0/0");
    let others =
        env.sql("SELECT count(*) FROM customer_notes WHERE customer_id = 500 AND note IS NOT NULL");
    assert_eq!(others, "2");

    let report = rt()
        .block_on(forget::run_cli(&env.cfg, forget_args(&ids)))
        .unwrap_or_else(|e| panic!("forget failed: {e}"));
    assert!(report.contains(": done"), "{report}");
    assert!(report.contains("no PII left"), "{report}");
    assert_eq!(pii_left_in_tree(&env, &ids), "0/0/0/0");
    // Rows kept, other customers untouched, the child analyzed too.
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_notes WHERE customer_id IN (1234, 77)"),
        "3"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_notes WHERE customer_id = 500 AND note IS NOT NULL"),
        "2"
    );
    assert!(report.contains("public.customer_notes_archive"), "{report}");

    // Loads straight into the parent, into a partition, into the inheritance child.
    let load = format!(
        "INSERT INTO customer_history VALUES (900001, 1234, '2023-06-01', 'john@example.com', '+44 1', '1 Main St'); \
         INSERT INTO customer_history_2023 VALUES (900002, 77, '2023-07-01', 'x@example.com', '+44 2', '2 Main St'); \
         INSERT INTO customer_history_other VALUES (900003, {both}, '2021-07-01', 'y@example.com', '+44 3', '3 Main St'); \
         INSERT INTO customer_history VALUES (900004, 500, '2023-06-01', 'kept@example.com', '+44 4', '4 Main St'); \
         INSERT INTO customer_notes VALUES (77, 'new note', 'call'); \
         INSERT INTO customer_notes_archive VALUES (1234, 'archived again', 'call', '2024-01-01'); \
         UPDATE customer_notes_archive SET note = 'changed' WHERE customer_id = 1234; \
         INSERT INTO customer_notes_archive VALUES (500, 'other customer', 'call', '2024-01-01');"
    );
    env.cluster
        .psql("solutions", None, DEMO_DB, &load)
        .expect("load");
    assert_eq!(pii_left_in_tree(&env, &ids), "0/0/0/0");
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_history WHERE history_id BETWEEN 900001 AND 900003 AND email IS NULL AND phone IS NULL"),
        "3"
    );
    assert_eq!(
        env.sql("SELECT email FROM customer_history WHERE history_id = 900004"),
        "kept@example.com"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_notes WHERE customer_id = 500 AND note IS NOT NULL"),
        "3"
    );

    // A second CLI job on the same tables (the install step runs again).
    let second = env.sql("SELECT min(customer_id) FROM ONLY customer_history_2023 WHERE phone IS NOT NULL AND customer_id > 2000");
    let report = rt()
        .block_on(forget::run_cli(&env.cfg, forget_args(&second)))
        .unwrap_or_else(|e| panic!("second forget failed: {e}"));
    assert!(report.contains(": done"), "{report}");
    assert_eq!(pii_left_in_tree(&env, &second), "0/0/0/0");

    // And through the API.
    let api_id = env.sql("SELECT min(customer_id) FROM ONLY customer_history_other WHERE phone IS NOT NULL AND customer_id > 3000");
    env.sql(&format!(
        "INSERT INTO customer_notes_archive VALUES ({api_id}, 'api note', 'call', '2020-01-01')"
    ));
    rt().block_on(async {
        let addr = start_admin(&env).await;
        let body = format!("{{\"customer_ids\":[{api_id}]}}");
        let r = post_json(addr, TOKEN, REMOVE_PII, &body).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let id = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["job_id"]
            .as_i64()
            .unwrap();
        let status = wait_job(addr, TOKEN, id).await;
        assert_eq!(status["state"], "done", "{status}");
    });
    assert_eq!(pii_left_in_tree(&env, &api_id), "0/0/0/0");
    env.cluster
        .psql(
            "solutions",
            None,
            DEMO_DB,
            &format!("INSERT INTO customer_history_other VALUES (900005, {api_id}, '2020-07-01', 'z@example.com', '+44 5', '5 Main St'); \
                      INSERT INTO customer_notes_archive VALUES ({api_id}, 'again', 'call', '2020-01-01');"),
        )
        .expect("load");
    assert_eq!(pii_left_in_tree(&env, &api_id), "0/0/0/0");

    // A partition listed in the policy too: covered by its parent when it forgets the same
    // columns the same way, a blocker otherwise.
    let listed = |cols: &str| {
        format!(
            "{DEMO_POLICY}\n[tables.\"public.customer_history_2023\"]\nsubject = \"customer_id\"\n{cols}"
        )
    };
    let same =
        listed("columns.email = \"null\"\ncolumns.phone = \"null\"\ncolumns.address = \"null\"\n");
    let (cfg, _dir) = write_config(&env.cluster, &same);
    let out = rt()
        .block_on(forget::run_cli(
            &cfg,
            ForgetArgs {
                dry_run: true,
                ..forget_args("1234")
            },
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("blockers: none"), "{out}");
    let (cfg, _dir) = write_config(&env.cluster, &listed("columns.email = \"null\"\n"));
    let err = rt()
        .block_on(forget::run_cli(&cfg, forget_args("1234")))
        .expect_err("a partition that forgets differently blocks")
        .to_string();
    assert!(
        err.contains("public.customer_history_2023 is listed in the policy")
            && err
                .contains("partition or inheritance child of policy table public.customer_history"),
        "{err}"
    );
}

/// Starts the admin API with its worker; returns its address.
async fn start_admin(env: &ConfigEnv) -> std::net::SocketAddr {
    let state = pgredact::admin::AdminState::from_config(&env.cfg).expect("admin state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    pgredact::admin::spawn_worker(state.clone());
    tokio::spawn(async move { axum::serve(listener, pgredact::admin::router(state)).await });
    addr
}

/// `pgredact check`'s lines about the suppression triggers.
fn suppression_errors(env: &ConfigEnv) -> Vec<String> {
    let (lines, _) = rt().block_on(pgredact::check::run(&env.cfg));
    lines
        .into_iter()
        .filter(|l| l.starts_with("error:") && l.contains("forget suppression"))
        .collect()
}

#[test]
fn suppression_triggers_fire_always_and_last_and_check_reports_holes() {
    let env = tree_env();
    assert_eq!(suppression_errors(&env), Vec::<String>::new());
    // A trigger of the application, named late in the alphabet, that writes PII.
    env.sql(
        "CREATE FUNCTION public.put_back() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN NEW.first_name := 'Back'; RETURN NEW; END$$; \
         CREATE TRIGGER zzzz_put_back BEFORE INSERT OR UPDATE ON public.customers \
           FOR EACH ROW EXECUTE FUNCTION public.put_back();",
    );
    forget_done(&env, "1234,77");
    // Every pgredact trigger (partition clones included) fires ALWAYS.
    assert_eq!(
        env.sql(
            "SELECT string_agg(DISTINCT tgenabled::text, ','), count(*) FROM pg_trigger WHERE tgname = '~pgredact_forget'"
        ),
        "A|8"
    );
    // It has the last word over zzzz_put_back.
    env.sql("UPDATE customers SET last_name = 'Smith' WHERE customer_id = 1234");
    assert_eq!(
        env.sql(
            "SELECT first_name IS NULL, last_name IS NULL FROM customers WHERE customer_id = 1234"
        ),
        "t|t"
    );
    // (the application's trigger does run: for a customer not forgotten it writes its value)
    env.sql("UPDATE customers SET last_name = 'Doe' WHERE customer_id = 1235");
    assert_eq!(
        env.sql("SELECT first_name FROM customers WHERE customer_id = 1235"),
        "Back"
    );
    // A load under session_replication_role = replica (as logical replication applies rows).
    env.sql(
        "SET session_replication_role = replica; \
         INSERT INTO customers (customer_id, first_name, email, country) VALUES (77, 'Ann', 'ann@example.com', 'UK') \
           ON CONFLICT (customer_id) DO UPDATE SET first_name = EXCLUDED.first_name, email = EXCLUDED.email, country = EXCLUDED.country; \
         INSERT INTO customer_history_2023 VALUES (900010, 77, '2023-03-01', 'ann@example.com', '+44 9', '9 Main St'); \
         INSERT INTO customer_notes_archive VALUES (77, 'replicated note', 'call', '2024-01-01');",
    );
    assert_eq!(
        env.sql("SELECT first_name IS NULL, email IS NULL, country IS NULL FROM customers WHERE customer_id = 77"),
        "t|t|t"
    );
    assert_eq!(pii_left_in_tree(&env, "1234, 77"), "0/0/0/0");
    assert_eq!(suppression_errors(&env), Vec::<String>::new());

    // check: a trigger sorting after pgredact's, a disabled one, one not ALWAYS, a missing one.
    env.sql(
        "CREATE TRIGGER \"~~late\" BEFORE UPDATE ON public.customer_notes_archive \
           FOR EACH ROW EXECUTE FUNCTION public.put_back(); \
         ALTER TABLE public.customer_notes_archive DISABLE TRIGGER \"~~late\"; \
         CREATE TRIGGER \"~~later\" BEFORE INSERT ON public.customer_events \
           FOR EACH ROW EXECUTE FUNCTION public.put_back();",
    );
    let errors = suppression_errors(&env);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("public.customer_events: trigger \"~~later\" fires after"),
        "{errors:#?}"
    );
    env.sql(
        "DROP TRIGGER \"~~later\" ON public.customer_events; \
               ALTER TABLE public.customers DISABLE TRIGGER \"~pgredact_forget\"; \
               ALTER TABLE public.customer_history_2023 ENABLE TRIGGER \"~pgredact_forget\"; \
               DROP TRIGGER \"~pgredact_forget\" ON public.customer_notes_archive;",
    );
    let errors = suppression_errors(&env).join("\n");
    assert!(
        errors
            .contains("public.customers: the suppression trigger \"~pgredact_forget\" is disabled"),
        "{errors}"
    );
    assert!(errors.contains("public.customer_history_2023: the suppression trigger \"~pgredact_forget\" is not ENABLE ALWAYS"), "{errors}");
    assert!(errors.contains("public.customer_notes_archive: the suppression trigger \"~pgredact_forget\" is missing"), "{errors}");
    assert_eq!(errors.lines().count(), 3, "{errors}");
    // The next job repairs all three.
    rt().block_on(forget::run_cli(&env.cfg, forget_args("78")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(suppression_errors(&env), Vec::<String>::new());
    assert_eq!(
        env.sql(
            "SELECT string_agg(DISTINCT tgenabled::text, ','), count(*) FROM pg_trigger WHERE tgname = '~pgredact_forget'"
        ),
        "A|8"
    );
}

#[test]
fn transient_errors_are_retried_until_the_job_completes() {
    let mut env = demo_env();
    let (cfg, dir) = write_config_extra(
        &env.cluster,
        DEMO_POLICY,
        "\n[forget]\nlock_timeout_ms = 100\n",
    );
    env.cfg = cfg;
    env._dir = dir;
    // A first job installs the triggers (so the second one takes no table lock to start).
    rt().block_on(forget::run_cli(&env.cfg, forget_args("1")))
        .unwrap_or_else(|e| panic!("{e}"));
    let report = rt().block_on(async {
        // Another session holds a lock that blocks the job's UPDATE (not its reads).
        let locker = env
            .cluster
            .superuser_connect(DEMO_DB)
            .await
            .expect("superuser connection");
        locker
            .batch_execute("BEGIN; LOCK TABLE public.customer_events IN EXCLUSIVE MODE")
            .await
            .expect("lock");
        let cfg = env.cfg.clone();
        let job = tokio::spawn(async move { forget::run_cli(&cfg, forget_args("1234,77")).await });
        // Until the job has met the lock timeout at least once.
        loop {
            let retries: i64 = locker
                .query_one(
                    "SELECT coalesce(max(retries), 0)::int8 FROM pgredact.forget_jobs",
                    &[],
                )
                .await
                .expect("retries")
                .get(0);
            if retries > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        locker.batch_execute("COMMIT").await.expect("unlock");
        job.await.expect("join").unwrap_or_else(|e| panic!("{e}"))
    });
    assert!(report.contains(": done"), "{report}");
    assert!(
        report.contains("retried after transient errors"),
        "{report}"
    );
    assert!(report.contains("lock timeout (55P03)"), "{report}");
    assert!(report.contains("2 forgotten now"), "{report}");
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_events WHERE customer_id IN (1234, 77) AND ip_address IS NOT NULL"),
        "0"
    );
    assert_eq!(
        env.sql("SELECT state FROM pgredact.forget_jobs ORDER BY id DESC LIMIT 1"),
        "done"
    );
}

#[test]
fn blocked_requests_are_refused_with_422_and_their_ids_kept_nowhere() {
    let mut env = demo_env();
    let blocked = DEMO_POLICY.replace(
        "columns.country = \"null\"",
        "columns.country = \"null\"\ncolumns.tier = \"null\"",
    );
    let (cfg, dir) = write_config(&env.cluster, &blocked);
    env.cfg = cfg;
    env._dir = dir;
    api_blocks_1234_and_77(&env, "public.customers.tier is NOT NULL");
}

#[test]
fn a_failed_refresh_ends_done_with_warnings() {
    let env = demo_env();
    env.sql(
        "CREATE TABLE public.refresh_switch (broken boolean); \
         INSERT INTO public.refresh_switch VALUES (false); \
         ALTER TABLE public.refresh_switch OWNER TO pgredact; \
         CREATE FUNCTION public.refresh_guard() RETURNS int LANGUAGE plpgsql AS \
           $$BEGIN IF EXISTS (SELECT 1 FROM public.refresh_switch WHERE broken) THEN \
             RAISE EXCEPTION 'refresh refused'; END IF; RETURN 1; END$$; \
         CREATE MATERIALIZED VIEW public.customer_names AS \
           SELECT customer_id, first_name, public.refresh_guard() AS g FROM public.customers; \
         ALTER MATERIALIZED VIEW public.customer_names OWNER TO pgredact; \
         UPDATE public.refresh_switch SET broken = true;",
    );
    let report = forget_done(&env, "1234");
    assert!(report.contains("no PII left"), "{report}");
    assert!(
        report.contains("warning: materialized view public.customer_names still holds copies")
            && report.contains("refresh refused"),
        "{report}"
    );
    assert!(
        report.contains("refreshed: public.customer_country"),
        "{report}"
    );
    let policy = forget::pick_policy(&env.cfg, Some("app")).unwrap();
    let target = Target::from_config(&env.cfg, "app");
    let status = rt().block_on(async {
        let s = Session::open(&target, policy, Some(HASH_KEY.as_bytes()))
            .await
            .expect("session");
        s.status(1).await.expect("status").expect("job 1")
    });
    assert_eq!(status.state, "done");
    assert!(
        status.warnings.iter().any(|w| w.contains("customer_names")),
        "{:?}",
        status.warnings
    );
    let json = serde_json::to_value(&status).expect("job JSON");
    assert!(
        json["warnings"].as_array().is_some_and(|a| !a.is_empty()),
        "{json}"
    );
    assert_eq!(
        env.sql(
            "SELECT count(*) FROM customers WHERE customer_id = 1234 AND first_name IS NOT NULL"
        ),
        "0"
    );
}

/// An application trigger on orders that refuses updates while the switch is on.
const REFUSE_UPDATES: &str = "CREATE TABLE public.update_switch (broken boolean); \
    INSERT INTO public.update_switch VALUES (true); \
    ALTER TABLE public.update_switch OWNER TO pgredact; \
    CREATE FUNCTION public.refuse_update() RETURNS trigger LANGUAGE plpgsql AS \
      $$BEGIN IF EXISTS (SELECT 1 FROM public.update_switch WHERE broken) THEN \
        RAISE EXCEPTION 'orders are frozen'; END IF; RETURN NEW; END$$; \
    CREATE TRIGGER aaa_refuse_update BEFORE UPDATE ON public.orders \
      FOR EACH ROW EXECUTE FUNCTION public.refuse_update();";

#[test]
fn failed_jobs_keep_their_ids_and_can_be_retried_from_cli_and_api() {
    let env = demo_env();
    env.sql(REFUSE_UPDATES);
    let err = rt()
        .block_on(forget::run_cli(&env.cfg, forget_args("1234,77")))
        .expect_err("the job fails")
        .to_string();
    assert!(
        err.contains(": failed") && err.contains("orders are frozen"),
        "{err}"
    );
    // The IDs are kept (none of these customers is forgotten yet), and they stay suppressed.
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_batches WHERE ids IS NOT NULL AND state = 'pending'"),
        "1"
    );
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_list"), "2");
    assert_eq!(
        env.sql("SELECT count(*) FROM customers WHERE customer_id IN (1234, 77) AND first_name IS NOT NULL"),
        "2"
    );
    // Retrying while the cause is still there fails again, still keeping the IDs.
    let retry = |job: i64| ForgetArgs {
        retry: Some(job),
        ids: None,
        ..forget_args("")
    };
    let err = rt()
        .block_on(forget::run_cli(&env.cfg, retry(1)))
        .expect_err("still failing")
        .to_string();
    assert!(err.contains("orders are frozen"), "{err}");
    env.sql("UPDATE public.update_switch SET broken = false");
    let report = rt()
        .block_on(forget::run_cli(&env.cfg, retry(1)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.contains("job 1 ") && report.contains(": done"),
        "{report}"
    );
    assert!(report.contains("2 forgotten now"), "{report}");
    assert_eq!(
        env.sql("SELECT count(*) FROM customers WHERE customer_id IN (1234, 77) AND first_name IS NOT NULL"),
        "0"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_batches WHERE ids IS NOT NULL"),
        "0"
    );
    let err = rt()
        .block_on(forget::run_cli(&env.cfg, retry(1)))
        .expect_err("a done job is not retried")
        .to_string();
    assert!(err.contains("only failed or blocked"), "{err}");

    // The same through the API.
    env.sql("UPDATE public.update_switch SET broken = true");
    rt().block_on(async {
        let addr = start_admin(&env).await;
        let r = post_json(addr, TOKEN, REMOVE_PII, r#"{"customer_ids":[88]}"#).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let id = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["job_id"]
            .as_i64()
            .unwrap();
        let status = wait_job(addr, TOKEN, id).await;
        assert_eq!(status["state"], "failed", "{status}");
        env.sql("UPDATE public.update_switch SET broken = false");
        let path = format!("/v1/jobs/{id}/retry");
        let r = post(addr, TOKEN, &path).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let status = wait_job(addr, TOKEN, id).await;
        assert_eq!(status["state"], "done", "{status}");
        assert_eq!(status["ids_forgotten"], 1, "{status}");
        let r = post(addr, TOKEN, &path).await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert_eq!(post(addr, TOKEN, "/v1/jobs/999/retry").await.status, 404);
        assert_eq!(http(addr, "POST", &path, &[], b"").await.status, 401);
    });
    assert_eq!(
        env.sql("SELECT count(*) FROM customers WHERE customer_id = 88 AND first_name IS NOT NULL"),
        "0"
    );
}

#[test]
fn json_payloads_lose_only_their_masked_paths_now_and_in_later_loads() {
    set_env();
    let cluster = default_demo_cluster();
    cluster
        .superuser_psql(DEMO_DB, DEMO_SETUP)
        .expect("demo setup");
    let policy = DEMO_POLICY.replace(
        "columns.payload = \"null\"",
        "columns.payload = { mask = \"json\", paths = { \"$.to\" = \"email\", \"$.billing.name\" = \"hash\", \
         \"$.billing.address\" = \"redact\", \"$.**.phone\" = \"null\" } }",
    );
    let (cfg, dir) = write_config(&cluster, &policy);
    let env = ConfigEnv {
        cluster,
        cfg,
        _dir: dir,
    };
    let id = env.sql(
        "SELECT customer_id FROM customer_events WHERE event_type = 'purchase' \
         INTERSECT SELECT customer_id FROM customer_events WHERE event_type = 'email_open' \
         INTERSECT SELECT customer_id FROM customer_events WHERE event_type = 'page_view' ORDER BY 1 LIMIT 1",
    );
    assert!(!id.is_empty());
    let others_before = fingerprint_except(&env, &id);
    let report = rt()
        .block_on(forget::run_cli(&env.cfg, forget_args(&id)))
        .unwrap_or_else(|e| panic!("forget failed: {e}"));
    assert!(report.contains("no PII left"), "{report}");
    // The masked paths are JSON null; the keys and every other value stay.
    assert_eq!(
        env.sql(&format!(
            "SELECT bool_and(payload ? 'to' AND payload->'to' = 'null' AND payload->>'campaign' IS NOT NULL) \
             FROM customer_events WHERE customer_id = {id} AND event_type = 'email_open'"
        )),
        "t"
    );
    assert_eq!(
        env.sql(&format!(
            "SELECT bool_and(payload->'billing' = '{{\"name\": null, \"address\": null}}' AND payload->>'total' IS NOT NULL) \
             FROM customer_events WHERE customer_id = {id} AND event_type = 'purchase'"
        )),
        "t"
    );
    assert_eq!(
        env.sql(&format!(
            "SELECT bool_and(payload->>'path' IS NOT NULL) FROM customer_events WHERE customer_id = {id} AND event_type = 'page_view'"
        )),
        "t"
    );
    assert_eq!(fingerprint_except(&env, &id), others_before);
    // A later delivery of the same customer's events keeps its data but not its PII.
    env.sql(
        &format!(
            "INSERT INTO customer_events (customer_id, event_type, payload, occurred_at) VALUES \
             ({id}, 'email_open', '{{\"to\": \"back@example.com\", \"campaign\": \"c1\", \"x\": {{\"phone\": \"+1 555\"}}}}', now())"
        ),
    );
    assert_eq!(
        env.sql(&format!(
            "SELECT payload::text FROM customer_events WHERE customer_id = {id} AND payload->>'campaign' = 'c1'"
        )),
        r#"{"x": {"phone": null}, "to": null, "campaign": "c1"}"#
    );
    // Another customer's delivery is untouched.
    env.sql(
        "INSERT INTO customer_events (customer_id, event_type, payload, occurred_at) VALUES \
         (2, 'email_open', '{\"to\": \"kept@example.com\"}', now())",
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_events WHERE payload->>'to' = 'kept@example.com'"),
        "1"
    );
}

/// Polls the superuser's `q` until it answers `want`.
async fn wait_sql(env: &ConfigEnv, q: &str, want: &str) {
    let started = std::time::Instant::now();
    loop {
        // An error (the forget tables not created yet) counts as not yet.
        let got = env
            .cluster
            .superuser_psql(DEMO_DB, q)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| e.to_string());
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "{q}: {got}, waiting for {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn finalize_waits_for_older_transactions_and_for_jobs_that_own_its_ids() {
    let env = demo_env();
    let policy = forget::pick_policy(&env.cfg, Some("app")).unwrap();
    let target = Target::from_config(&env.cfg, "app");
    let key = HASH_KEY.as_bytes().to_vec();
    let origin = Origin {
        requester: "test".into(),
        source: "cli".into(),
    };
    let submit = |ids: String, batch: usize, faults: Faults| {
        let (target, policy, key, origin) = (
            target.clone(),
            Arc::clone(&policy),
            key.clone(),
            origin.clone(),
        );
        async move {
            let mut s = Session::open(&target, policy, Some(&key)).await?;
            let list = s.parse_ids(&ids)?;
            let job = s.submit(&origin, &list, batch).await?;
            s.run(job, faults).await?;
            s.status(job).await?.ok_or(forget::Error::JobVanished(job))
        }
    };
    rt().block_on(async {
        // 1. A REPEATABLE READ transaction whose snapshot is older than the job's forget list:
        //    its insert cannot see the list, so the suppression trigger lets the PII through.
        let old = env
            .cluster
            .connect("postgres", Some("postgres"), DEMO_DB)
            .await
            .expect("connect");
        old.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM customers")
            .await
            .expect("old snapshot");
        let job = tokio::spawn(submit("7".into(), 25, Faults::default()));
        wait_sql(&env, "SELECT state FROM pgredact.forget_jobs", "finalizing").await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        // Finalize waits while the older transaction is open...
        assert_eq!(env.sql("SELECT state FROM pgredact.forget_jobs"), "finalizing");
        old.batch_execute(
            "INSERT INTO customer_history (customer_id, changed_at, email, phone, address) \
             VALUES (7, now(), 'late.writer@example.com', '+1 555 0100', '1 Late Street'); COMMIT",
        )
        .await
        .expect("late insert");
        // ...then verifies, and finds and clears what it wrote.
        let st = job.await.expect("join").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st.state, "done", "{}", st.render());
        assert_eq!(
            env.sql("SELECT count(*) FROM customer_history WHERE customer_id = 7 AND (email IS NOT NULL OR phone IS NOT NULL OR address IS NOT NULL)"),
            "0"
        );

        // 2. Job A stops after its first batch of 10 (customers 101..110 done, 111..150 not),
        //    and job B asks for 120..125, which A owns.
        let a = submit(
            (101..=150).map(|i| i.to_string()).collect::<Vec<_>>().join(","),
            10,
            Faults {
                stop_after_batches: Some(1),
                ..Faults::default()
            },
        )
        .await;
        assert!(a.is_err() || a.as_ref().is_ok_and(|s| s.state == "running"), "{:?}", a.as_ref().map(|s| s.render()));
        let pii_b = "SELECT count(*) FROM customers WHERE customer_id BETWEEN 120 AND 125 AND first_name IS NOT NULL";
        assert_eq!(env.sql(pii_b), "6");
        let b = tokio::spawn(submit("120,121,122,123,124,125".into(), 25, Faults::default()));
        let b_state = "SELECT state FROM pgredact.forget_jobs ORDER BY id DESC LIMIT 1";
        wait_sql(&env, b_state, "finalizing").await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        // B does not report customers A has not anonymized yet.
        assert_eq!(env.sql(b_state), "finalizing");
        assert_eq!(env.sql(pii_b), "6");
        // A resumes and finishes; then B verifies all six.
        let a_id: i64 = env.sql("SELECT min(id) FROM pgredact.forget_jobs WHERE state = 'running'")
            .parse()
            .expect("job a");
        let mut s = Session::open(&target, Arc::clone(&policy), Some(&key))
            .await
            .expect("session");
        s.run(a_id, Faults::default()).await.expect("resume a");
        let st = b.await.expect("join").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(st.state, "done", "{}", st.render());
        assert_eq!(st.ids_already_forgotten, 6, "{}", st.render());
        let v = st.verification.clone().expect("verification");
        assert_eq!(v["ids_checked"], 6, "{v}");
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(env.sql(pii_b), "0");
    });
}

const CI_SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TABLE public.members (email citext PRIMARY KEY, name text, tier text);
CREATE TABLE public.logins (login_id serial PRIMARY KEY, email text NOT NULL, ip inet);
CREATE INDEX ON public.logins (email);
INSERT INTO public.members VALUES ('Carol@Example.com', 'Carol', 'gold'), ('dave@example.com', 'Dave', 'silver');
INSERT INTO public.logins (email, ip) VALUES ('carol@example.com', '10.0.0.1'), ('CAROL@EXAMPLE.COM', '10.0.0.2'), ('dave@example.com', '10.0.0.3');
ALTER TABLE public.members OWNER TO pgredact;
ALTER TABLE public.logins OWNER TO pgredact;
"#;

const CI_POLICY: &str = r#"
database = "app"
[tables."public.members"]
subject = "email"
columns.email = "email"
columns.name = "null"
[tables."public.logins"]
subject = "email"
columns.email = "email"
columns.ip = "null"
"#;

#[test]
fn case_insensitive_ids_are_forgotten_and_suppressed_in_every_spelling() {
    let env = schema_env(CI_SCHEMA, CI_POLICY);
    let cfg = &env.cfg;
    let q = |s: &str| env.sql(s);
    // Requested in yet another spelling, with spaces around it.
    let report = rt()
        .block_on(forget::run_cli(cfg, forget_args(" CAROL@example.COM ")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains(": done"), "{report}");
    let token = q("SELECT email FROM members WHERE tier = 'gold'");
    assert!(token.starts_with("forgotten:"), "{token}\n{report}");
    assert_eq!(
        q("SELECT name IS NULL FROM members WHERE tier = 'gold'"),
        "t"
    );
    // Both spellings in the text table: one token, no IP.
    assert_eq!(
        q(&format!(
            "SELECT count(*), bool_and(ip IS NULL) FROM logins WHERE email = '{token}'"
        )),
        "2|t"
    );
    // Later deliveries in other spellings are suppressed and land on the token.
    q(
        "INSERT INTO logins (email, ip) VALUES ('Carol@EXAMPLE.com', '10.9.9.9'); \
       INSERT INTO members VALUES ('carol@example.COM', 'Carol again', 'platinum') \
       ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name, tier = EXCLUDED.tier",
    );
    assert_eq!(
        q(&format!(
            "SELECT count(*), bool_and(ip IS NULL) FROM logins WHERE email = '{token}'"
        )),
        "3|t"
    );
    assert_eq!(
        q(&format!(
            "SELECT name IS NULL, tier FROM members WHERE email = '{token}'"
        )),
        "t|platinum"
    );
    assert_eq!(
        q(
            "SELECT (SELECT count(*) FROM members m WHERE m::text ILIKE '%carol%') \
            + (SELECT count(*) FROM logins l WHERE l::text ILIKE '%carol%')"
        ),
        "0"
    );
    // Dave is untouched.
    assert_eq!(
        q("SELECT name FROM members WHERE email = 'DAVE@example.com'"),
        "Dave"
    );
    assert_eq!(
        q("SELECT count(*) FROM logins WHERE email = 'dave@example.com' AND ip IS NOT NULL"),
        "1"
    );
}

#[test]
fn sweep_reapplies_the_forget_list_after_a_restore_and_to_new_policy_columns() {
    let env = demo_env();
    forget_done(&env, "11,12");
    // The customer ID is not PII here: the list keeps it raw, and the triggers look it up so.
    assert_eq!(
        env.sql("SELECT string_agg(subject_id, ',' ORDER BY subject_id) FROM pgredact.forget_list"),
        "11,12"
    );
    assert_eq!(
        env.sql("SELECT bool_and(p.prosrc LIKE '%f.subject_id%' AND p.prosrc NOT LIKE '%sha256%') \
                   FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgname = '~pgredact_forget' \
                     AND p.proname LIKE 'forget_suppress_%'"),
        ""
    );
    // The compiled front calls those functions, and looks the raw IDs up too.
    assert_eq!(
        env.sql(
            "SELECT bool_and(p.prosrc LIKE '%f.subject_id%' AND p.prosrc NOT LIKE '%sha256%' \
                          AND split_part(encode(t.tgargs, 'escape'), '\\000', 3) = 'raw') \
                   FROM pg_trigger t JOIN pg_proc p ON p.pronamespace = 'pgredact'::regnamespace \
                     AND p.proname = split_part(encode(t.tgargs, 'escape'), '\\000', 1) \
                   WHERE t.tgname = '~pgredact_forget'"
        ),
        "t"
    );
    let untouched = "SELECT md5(c::text) FROM customers c WHERE customer_id = 13";
    let customer_13 = env.sql(untouched);
    // A restore from a backup taken before the job: the old values come back (triggers off, as
    // a restore of the data files or a dump with --disable-triggers would), and the schema
    // restore lost the trigger of the events table, so a delivery for customer 11 lands raw.
    env.sql(
        "ALTER TABLE customers DISABLE TRIGGER ALL; \
         UPDATE customers SET first_name = 'Restored', email = 'restored@example.com', segment = 'vip' \
         WHERE customer_id IN (11, 12); \
         ALTER TABLE customers ENABLE TRIGGER ALL; \
         DROP TRIGGER \"~pgredact_forget\" ON customer_events; \
         INSERT INTO customer_events (customer_id, event_type, ip_address, occurred_at) \
         VALUES (11, 'login', '192.0.2.11', now())",
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customers WHERE customer_id IN (11, 12) AND first_name = 'Restored'"),
        "2"
    );
    // Meanwhile `segment` joined the policy.
    let (cfg2, _dir2) = write_config(
        &env.cluster,
        &DEMO_POLICY.replace(
            "columns.birth_date = \"year\"\n",
            "columns.birth_date = \"year\"\ncolumns.segment = \"null\"\n",
        ),
    );
    let report = rt()
        .block_on(forget::run_cli(
            &cfg2,
            ForgetArgs {
                sweep: true,
                ..ForgetArgs::default()
            },
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("forget list (2 customer(s))"), "{report}");
    assert!(
        report.contains("public.customers: 2 row(s) changed"),
        "{report}"
    );
    assert!(
        report.contains("public.customer_events: 1 row(s) changed"),
        "{report}"
    );
    assert!(
        report.contains("verification: no row of a forgotten customer holds PII"),
        "{report}"
    );
    assert_eq!(
        env.sql(
            "SELECT count(*) FROM customers WHERE customer_id IN (11, 12) \
                   AND (first_name IS NOT NULL OR email IS NOT NULL OR segment IS NOT NULL)"
        ),
        "0"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_events WHERE customer_id = 11 AND ip_address IS NOT NULL"),
        "0"
    );
    // The lost trigger is back, and suppresses again.
    env.sql(
        "INSERT INTO customer_events (customer_id, event_type, ip_address, occurred_at) \
         VALUES (12, 'login', '192.0.2.12', now())",
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customer_events WHERE customer_id = 12 AND ip_address IS NOT NULL"),
        "0"
    );
    // Everyone else is untouched; a second sweep finds nothing to do.
    assert_eq!(env.sql(untouched), customer_13);
    let again = rt()
        .block_on(forget::run_cli(
            &cfg2,
            ForgetArgs {
                sweep: true,
                ..ForgetArgs::default()
            },
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        again.contains("public.customers: 0 row(s) changed"),
        "{again}"
    );
}

#[test]
fn code_of_other_roles_that_forget_would_run_is_a_blocker() {
    let env = demo_env();
    env.sql(
        "CREATE ROLE app_owner; \
         CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$; \
         ALTER FUNCTION public.touch() OWNER TO app_owner; \
         CREATE TRIGGER touch BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION public.touch(); \
         CREATE FUNCTION public.short_status(text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT length($1) < 40 $$; \
         ALTER FUNCTION public.short_status(text) OWNER TO app_owner; \
         ALTER TABLE orders ADD CONSTRAINT status_short CHECK (public.short_status(status)); \
         CREATE RULE keep_history AS ON UPDATE TO customer_history WHERE false DO ALSO NOTHING;",
    );
    let err = rt()
        .block_on(forget::run_cli(&env.cfg, forget_args("21")))
        .expect_err("blocked")
        .to_string();
    for want in [
        "trigger touch on public.customers calls function public.touch(), owned by role app_owner and not SECURITY DEFINER",
        "constraint status_short on public.orders calls function public.short_status(text), owned by role app_owner",
        "rule keep_history on public.customer_history rewrites UPDATEs",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
    assert_eq!(
        env.sql("SELECT count(*) FROM customers WHERE customer_id = 21 AND first_name IS NOT NULL"),
        "1"
    );
    // SECURITY DEFINER (runs as its owner), a superuser's function, no rule: forget proceeds,
    // and the application's trigger still runs.
    env.sql(
        "ALTER FUNCTION public.touch() SECURITY DEFINER; \
         ALTER FUNCTION public.short_status(text) OWNER TO postgres; \
         DROP RULE keep_history ON customer_history;",
    );
    forget_done(&env, "21");
    assert_eq!(
        env.sql("SELECT first_name IS NULL, updated_at > now() - interval '1 hour' FROM customers WHERE customer_id = 21"),
        "t|t"
    );
}

#[test]
fn the_forget_audit_trail_is_hash_chained_and_edits_are_found() {
    let env = demo_env();
    let verify = || {
        rt().block_on(forget::run_cli(
            &env.cfg,
            ForgetArgs {
                verify_audit: true,
                ..ForgetArgs::default()
            },
        ))
    };
    forget_done(&env, "41,42");
    let un = UnforgetArgs {
        ids: Some("42".into()),
        requester: "dpo@example.com".into(),
        reason: Some("re-registered".into()),
        ..UnforgetArgs::default()
    };
    rt().block_on(forget::run_unforget_cli(&env.cfg, un))
        .unwrap_or_else(|e| panic!("{e}"));
    rt().block_on(forget::run_cli(
        &env.cfg,
        ForgetArgs {
            sweep: true,
            ..ForgetArgs::default()
        },
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    // Every step is there, in order, without a customer ID.
    assert_eq!(
        env.sql("SELECT string_agg(operation, ',' ORDER BY seq) FROM pgredact.forget_audit"),
        "forget:queued,forget:running,forget:finalizing,forget:done,unforget:done,sweep"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_audit WHERE record::text ~ '\\m4[12]\\M'"),
        "0"
    );
    let ok = verify().unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.contains("6 record(s), chain intact; head "), "{ok}");
    // An edit, a deletion: each is named.
    env.sql("UPDATE pgredact.forget_audit SET record = record || '{\"requester\": \"someone else\"}' WHERE seq = 2");
    let e = verify().expect_err("edited").to_string();
    assert!(
        e.contains("BROKEN: record 2 was changed after it was written"),
        "{e}"
    );
    env.sql("DELETE FROM pgredact.forget_audit WHERE seq IN (1, 2)");
    let e = verify().expect_err("deleted").to_string();
    assert!(e.contains("BROKEN: record 1 is missing"), "{e}");
}

#[test]
fn opening_a_forget_session_again_runs_no_ddl() {
    let env = demo_env();
    let policy = forget::pick_policy(&env.cfg, Some("app")).unwrap();
    let target = Target::from_config(&env.cfg, "app");
    let key = HASH_KEY.as_bytes().to_vec();
    let generation =
        "SELECT (SELECT count(*) FROM pgredact.ddl_log) + (SELECT n FROM pgredact.ddl_pruned)";
    rt().block_on(async {
        Session::open(&target, Arc::clone(&policy), Some(&key))
            .await
            .expect("first open");
    });
    let before = env.sql(generation);
    // Every API request opens a session: the second and later ones must not look like DDL to
    // the proxies (each DDL makes every masked session re-read the catalog).
    rt().block_on(async {
        for _ in 0..3 {
            Session::open(&target, Arc::clone(&policy), Some(&key))
                .await
                .expect("open again");
        }
    });
    assert_eq!(env.sql(generation), before);
}

#[test]
fn a_table_the_control_role_does_not_own_is_a_blocker_before_any_job() {
    let env = demo_env();
    // SELECT, UPDATE and TRIGGER are not enough: ENABLE ALWAYS is an ALTER TABLE (owner only).
    env.sql(
        "CREATE ROLE shop_owner; ALTER TABLE public.orders OWNER TO shop_owner; \
         GRANT SELECT, UPDATE, TRIGGER ON public.orders TO pgredact;",
    );
    let want = "public.orders: the control role does not own the table";
    let err = rt()
        .block_on(forget::run_cli(&env.cfg, forget_args("1234,77")))
        .expect_err("a table the control role does not own blocks the CLI")
        .to_string();
    assert!(err.contains("BLOCKED"), "{err}");
    assert!(err.contains(want), "{err}");
    assert!(err.contains("ENABLE ALWAYS"), "{err}");
    assert!(!err.contains("must be owner of table"), "{err}");
    api_blocks_1234_and_77(&env, want);
    // Membership in the owner role is enough.
    env.sql("GRANT shop_owner TO pgredact");
    forget_done(&env, "1234,77");
}

/// The API refuses to forget customers 1234 and 77 with 422 and a blocker containing `want`;
/// no job was created, nobody is on the list, nothing changed.
fn api_blocks_1234_and_77(env: &ConfigEnv, want: &str) {
    rt().block_on(async {
        let addr = start_admin(env).await;
        let r = post_json(addr, TOKEN, REMOVE_PII, r#"{"customer_ids":[1234, 77]}"#).await;
        let body = r.body;
        assert_eq!(r.status, 422, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let blockers = v["blockers"].as_array().expect("blockers array");
        assert!(
            blockers
                .iter()
                .any(|b| b.as_str().unwrap_or("").contains(want)),
            "{body}"
        );
        assert!(
            v["error"]
                .as_str()
                .unwrap_or("")
                .contains("no job was created"),
            "{body}"
        );
    });
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_jobs"), "0");
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_list"), "0");
    assert_eq!(
        env.sql("SELECT count(*) FROM customers WHERE customer_id IN (1234, 77) AND first_name IS NOT NULL"),
        "2"
    );
}

/// Submits a job for `ids` without running it (it stays queued); returns its id.
fn submit_queued(env: &ConfigEnv, ids: &str) -> i64 {
    let policy = forget::pick_policy(&env.cfg, Some("app")).expect("policy");
    let target = Target::from_config(&env.cfg, "app");
    let key = HASH_KEY.as_bytes().to_vec();
    rt().block_on(async {
        let mut s = Session::open(&target, policy, Some(&key))
            .await
            .expect("open");
        let list = s.parse_ids(ids).expect("ids");
        let origin = Origin {
            requester: "dpo@example.com".to_string(),
            source: "cli".to_string(),
        };
        s.submit(&origin, &list, 1).await.expect("submit")
    })
}

fn cancel_args(job: i64, reason: Option<&str>) -> ForgetArgs {
    ForgetArgs {
        cancel: Some(job),
        reason: reason.map(str::to_string),
        requester: Some("privacy-lead@example.com".to_string()),
        ..ForgetArgs::default()
    }
}

fn verify_audit(env: &ConfigEnv) -> Result<String, forget::Error> {
    rt().block_on(forget::run_cli(
        &env.cfg,
        ForgetArgs {
            verify_audit: true,
            ..ForgetArgs::default()
        },
    ))
}

#[test]
fn a_queued_job_is_cancelled_from_the_cli_and_never_runs() {
    let env = demo_env();
    let before = fingerprint_all(&env);
    let job = submit_queued(&env, "21,22,23");
    // Three batches of one ID, each with the raw ID and its keyed hash.
    assert_eq!(
        env.sql(&format!("SELECT count(*) FROM pgredact.forget_batches WHERE job_id = {job} AND ids IS NOT NULL AND id_hashes IS NOT NULL")),
        "3"
    );
    let report = rt()
        .block_on(forget::run_cli(
            &env.cfg,
            cancel_args(job, Some("sent twice")),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains(&format!("job {job} ")), "{report}");
    assert!(report.contains(": cancelled"), "{report}");
    assert!(
        report.contains("by privacy-lead@example.com (reason: sent twice)"),
        "{report}"
    );
    assert!(
        report.contains("cancelled (was queued): 3 customer ID(s)"),
        "{report}"
    );
    // State, who, when and why; no raw ID nor keyed hash left; nothing on the forget list.
    assert_eq!(
        env.sql(&format!(
            "SELECT state, cancelled_by, cancel_reason, cancelled_at IS NOT NULL, finished_at IS NOT NULL \
             FROM pgredact.forget_jobs WHERE id = {job}"
        )),
        "cancelled|privacy-lead@example.com|sent twice|t|t"
    );
    assert_eq!(
        env.sql(&format!(
            "SELECT count(*) FILTER (WHERE ids IS NOT NULL OR id_hashes IS NOT NULL), \
                    string_agg(DISTINCT state, ',') FROM pgredact.forget_batches WHERE job_id = {job}"
        )),
        "0|cancelled"
    );
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_list"), "0");
    // The audit trail: the state change and a cancel record naming who and why, no ID; the
    // chain verifies.
    assert_eq!(
        env.sql("SELECT string_agg(operation, ',' ORDER BY seq) FROM pgredact.forget_audit"),
        "forget:queued,forget:cancelled,cancel"
    );
    assert_eq!(
        env.sql(
            "SELECT job_id, record->>'cancelled_by', record->>'reason', record->>'previous_state', record->>'ids_removed' \
             FROM pgredact.forget_audit WHERE operation = 'cancel'"
        ),
        format!("{job}|privacy-lead@example.com|sent twice|queued|3")
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_audit WHERE record::text ~ '\\m2[123]\\M'"),
        "0"
    );
    let ok = verify_audit(&env).unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.contains("3 record(s), chain intact"), "{ok}");

    // Never picked up: not resumed, not run when asked directly, not retried, not cancelled
    // twice; the data is untouched.
    let resumed = rt()
        .block_on(forget::run_cli(
            &env.cfg,
            ForgetArgs {
                resume: true,
                ..ForgetArgs::default()
            },
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resumed, "no unfinished forget jobs\n");
    let policy = forget::pick_policy(&env.cfg, Some("app")).expect("policy");
    let target = Target::from_config(&env.cfg, "app");
    let key = HASH_KEY.as_bytes().to_vec();
    rt().block_on(async {
        let mut s = Session::open(&target, policy, Some(&key))
            .await
            .expect("open");
        s.run(job, Faults::default()).await.expect("run");
        assert!(s
            .resume_all(Faults::default())
            .await
            .expect("resume")
            .is_empty());
    });
    let err = rt()
        .block_on(forget::run_cli(
            &env.cfg,
            ForgetArgs {
                retry: Some(job),
                ..ForgetArgs::default()
            },
        ))
        .expect_err("a cancelled job is not retried")
        .to_string();
    assert!(err.contains("only failed or blocked"), "{err}");
    let err = rt()
        .block_on(forget::run_cli(&env.cfg, cancel_args(job, None)))
        .expect_err("cancelled twice")
        .to_string();
    assert!(err.contains("already cancelled"), "{err}");
    assert_eq!(
        env.sql(&format!(
            "SELECT state FROM pgredact.forget_jobs WHERE id = {job}"
        )),
        "cancelled"
    );
    assert_eq!(fingerprint_all(&env), before);
    assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_list"), "0");
    // Customers of a cancelled job can be forgotten later by a new job.
    let report = forget_done(&env, "21");
    assert!(report.contains("1 forgotten now"), "{report}");
}

#[test]
fn done_jobs_and_failed_jobs_whose_customers_are_listed_are_not_cancelled() {
    let env = demo_env();
    forget_done(&env, "1,2");
    let err = rt()
        .block_on(forget::run_cli(&env.cfg, cancel_args(1, None)))
        .expect_err("a done job is not cancelled")
        .to_string();
    assert!(
        err.contains("job 1 is done") && err.contains("unforget"),
        "{err}"
    );
    assert_eq!(
        env.sql("SELECT state FROM pgredact.forget_jobs WHERE id = 1"),
        "done"
    );

    // A job that failed after its start put its customers on the forget list.
    env.sql(REFUSE_UPDATES);
    let err = rt()
        .block_on(forget::run_cli(&env.cfg, forget_args("1234,77")))
        .expect_err("the job fails")
        .to_string();
    assert!(err.contains("job 2 ") && err.contains(": failed"), "{err}");
    let err = rt()
        .block_on(forget::run_cli(
            &env.cfg,
            cancel_args(2, Some("changed my mind")),
        ))
        .expect_err("half-forgotten customers are not left behind silently")
        .to_string();
    assert!(
        err.contains("already put 2 customer(s) on the forget list")
            && err.contains("--retry 2")
            && err.contains("unforget"),
        "{err}"
    );
    // Nothing changed: still failed, IDs and hashes kept (a retry can finish it), customers
    // still suppressed, no cancel record.
    assert_eq!(
        env.sql("SELECT state, cancelled_at IS NULL FROM pgredact.forget_jobs WHERE id = 2"),
        "failed|t"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_batches WHERE job_id = 2 AND ids IS NOT NULL AND id_hashes IS NOT NULL"),
        "1"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_list WHERE job_id = 2"),
        "2"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_audit WHERE operation = 'cancel'"),
        "0"
    );
    // Once their suppression is lifted with unforget, the job can be cancelled: then nobody is
    // half-forgotten.
    let un = UnforgetArgs {
        ids: Some("1234,77".into()),
        requester: "dpo@example.com".into(),
        reason: Some("request withdrawn".into()),
        ..UnforgetArgs::default()
    };
    rt().block_on(forget::run_unforget_cli(&env.cfg, un))
        .unwrap_or_else(|e| panic!("{e}"));
    let report = rt()
        .block_on(forget::run_cli(
            &env.cfg,
            cancel_args(2, Some("request withdrawn")),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.contains("cancelled (was failed): 2 customer ID(s)"),
        "{report}"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM pgredact.forget_batches WHERE job_id = 2 AND (ids IS NOT NULL OR id_hashes IS NOT NULL)"),
        "0"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM customers WHERE customer_id IN (1234, 77) AND first_name IS NOT NULL"),
        "2"
    );
    verify_audit(&env).unwrap_or_else(|e| panic!("{e}"));
}

/// The function pgredact's suppression trigger on `table` calls, and its first argument.
fn trigger_target(env: &ConfigEnv, table: &str) -> String {
    env.sql(&format!(
            "SELECT tg.tgfoid::regproc::text || ' ' || coalesce(split_part(encode(tg.tgargs, 'escape'), '\\000', 1), '') \
             FROM pg_trigger tg WHERE tg.tgrelid = '{table}'::regclass AND tg.tgname = '~pgredact_forget'"
        ),
    )
}

/// The compiled front (the `pgredact_suppress` extension, src/forget/ext) answers from a cache
/// of the forget list in each session: a session that wrote before a change of the list must
/// see the change in its next statement (forget, unforget), fall back to the PL/pgSQL check
/// when the invalidation trigger is gone, and nobody but the control role may use it.
#[test]
fn compiled_suppression_sees_every_change_of_the_list_in_long_lived_sessions() {
    let env = demo_env();
    forget_done(&env, "1234");
    assert_eq!(
        env.sql("SELECT count(*) FROM pg_extension WHERE extname = 'pgredact_suppress'"),
        "1",
        "the pgredact_suppress extension is not installed on this machine: make -C src/forget/ext install"
    );
    let target = trigger_target(&env, "customer_events");
    assert!(
        target.starts_with("pgredact_suppress.suppress forget_suppress_"),
        "{target}"
    );
    // One long-lived writer session (its own runtime, so the CLI calls in between can block).
    let wrt = rt();
    let w = wrt.block_on(async {
        let (w, conn) = tokio_postgres::connect(
            &env.cluster.connstr("postgres", None, DEMO_DB),
            tokio_postgres::NoTls,
        )
        .await
        .expect("writer connects");
        tokio::spawn(conn);
        w
    });
    // Inserts an event in the writer session and says whether its IP landed.
    let write = |id: i64| -> bool {
        wrt.block_on(w.query_one(
            "INSERT INTO customer_events (customer_id, event_type, ip_address, user_agent, occurred_at) \
             VALUES ($1, 'probe', '192.0.2.9', 'probe/1', now()) RETURNING ip_address IS NOT NULL",
            &[&id],
        ))
        .unwrap_or_else(|e| panic!("insert for {id}: {e}"))
        .get::<_, bool>(0)
    };
    assert!(!write(1234), "a forgotten customer's IP was written");
    assert!(write(77), "a customer who is not forgotten lost the IP");
    // The writer's cache is loaded; forgetting 77 elsewhere must reach its next statement.
    forget_done(&env, "77");
    assert!(
        !write(77),
        "the writer's cache missed a forget of another session"
    );
    assert!(!write(1234));
    // Many rows in one statement, in the same session.
    wrt.block_on(w.batch_execute(
        "INSERT INTO customer_events (customer_id, event_type, ip_address, occurred_at) \
         SELECT CASE WHEN i % 2 = 0 THEN 77 ELSE 5000 + i END, 'probe_many', '192.0.2.7', now() \
         FROM generate_series(1, 200) i",
    ))
    .expect("multi-row insert");
    assert_eq!(
        env.sql(
            "SELECT count(*) FILTER (WHERE customer_id = 77 AND ip_address IS NULL), \
                          count(*) FILTER (WHERE customer_id <> 77 AND ip_address IS NOT NULL) \
                   FROM customer_events WHERE event_type = 'probe_many'"
        ),
        "100|100"
    );
    // Unforget reaches it too.
    rt_unforget(&env, "77");
    assert!(write(77), "the writer's cache kept an unforgotten customer");

    // Without the invalidation trigger the cache is not trusted: a list entry made with no
    // invalidation at all (the trigger disabled) is still suppressed, by the PL/pgSQL check.
    env.sql("ALTER TABLE pgredact.forget_list DISABLE TRIGGER \"~pgredact_list_changed\"");
    let errors = suppression_errors(&env).join("\n");
    assert!(
        errors.contains("pgredact.forget_list: the cache invalidation trigger"),
        "{errors}"
    );
    assert!(write(5555));
    env.sql(
        "INSERT INTO pgredact.forget_list (subject_hash, subject_id) \
         VALUES (decode(pgredact.hmac_hex('5555'), 'hex'), '5555')",
    );
    assert!(
        !write(5555),
        "an entry made without invalidation was missed"
    );
    env.sql("DELETE FROM pgredact.forget_list WHERE subject_id = '5555'");
    // The next job repairs the trigger.
    forget_done(&env, "6000");
    assert_eq!(suppression_errors(&env), Vec::<String>::new());
    assert!(!write(6000));
    assert!(write(5555));
    drop(w);

    // Nobody else may use the compiled functions, or call them.
    let refused = env
        .cluster
        .superuser_psql(
            DEMO_DB,
            "CREATE ROLE mallory LOGIN; GRANT CREATE ON SCHEMA public TO mallory; \
             SET ROLE mallory; CREATE TABLE public.m (customer_id bigint, x text); \
             CREATE TRIGGER t BEFORE INSERT ON public.m FOR EACH ROW EXECUTE FUNCTION \
               pgredact_suppress.suppress('forget_suppress_x', 'customer_id', 'raw', 'exact', '');",
        )
        .expect_err("another role used the compiled trigger function")
        .to_string();
    assert!(
        refused.contains("permission denied for schema pgredact_suppress"),
        "{refused}"
    );

    // `compiled_trigger = false` puts the PL/pgSQL functions back, and suppression holds.
    let (cfg, _dir) = write_config_extra(
        &env.cluster,
        DEMO_POLICY,
        "\n[forget]\ncompiled_trigger = false\n",
    );
    let report = rt()
        .block_on(forget::run_cli(&cfg, forget_args("7000")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains(": done"), "{report}");
    let target = trigger_target(&env, "customer_events");
    assert!(target.starts_with("pgredact.forget_suppress_"), "{target}");
    env.sql("INSERT INTO customer_events (customer_id, event_type, ip_address, occurred_at) VALUES (7000, 'probe_off', '192.0.2.1', now()), (7001, 'probe_off', '192.0.2.1', now())");
    assert_eq!(
        env.sql("SELECT string_agg(customer_id || ':' || (ip_address IS NULL), ',' ORDER BY customer_id) FROM customer_events WHERE event_type = 'probe_off'"),
        "7000:true,7001:false"
    );
}

fn rt_unforget(env: &ConfigEnv, ids: &str) {
    let out = rt()
        .block_on(forget::run_unforget_cli(
            &env.cfg,
            UnforgetArgs {
                ids: Some(ids.into()),
                requester: "dpo@example.com".into(),
                reason: Some("test".into()),
                ..UnforgetArgs::default()
            },
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("removed"), "{out}");
}
