//! Observability against real PostgreSQL: `/metrics` counters move by what masked, refused and
//! unmasked statements did, the output is OpenMetrics text with bounded labels and no role,
//! address or statement in it; `/readyz` follows the upstream; `log_format = "json"` gives one
//! JSON object a line, with the session span and logged refusals that never carry the statement.
//!
//! The metrics are process-wide, so only one test here runs statements through a proxy and
//! checks exact deltas. Nothing asserts that something took less than some time: waits are
//! generous polls that only catch hangs.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::serve::{Proc, PATIENCE};
use support::*;

const TOKEN_ENV: &str = "PGREDACT_TEST_METRICS_TOKEN";

use support::http::http_get as get;

/// Parses OpenMetrics text as Prometheus would read it: `# TYPE/HELP/UNIT` lines, sample lines
/// `name{label="value",...} number`, and a final `# EOF`. Panics on anything else; returns
/// `name{labels}` -> value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    let mut out = HashMap::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut w = meta.splitn(3, ' ');
            match w.next() {
                Some("TYPE") => {
                    let name = w.next().expect("TYPE name");
                    let ty = w.next().expect("TYPE type");
                    assert!(
                        ["counter", "gauge", "histogram", "info", "unknown"].contains(&ty),
                        "{line}"
                    );
                    types.insert(name.to_string(), ty.to_string());
                }
                Some("HELP") | Some("UNIT") => {}
                Some("EOF") => {}
                _ => panic!("unexpected comment line {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert!(
            name.starts_with("pgredact_"),
            "metric without the prefix: {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line:?}"
                );
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
        }
        let family_known = types
            .keys()
            .any(|t| name == t || name.starts_with(&format!("{t}_")));
        assert!(family_known, "sample before its # TYPE: {line:?}");
        out.insert(series.to_string(), value);
    }
    out
}

fn val(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {m:?}"))
}

/// Starts the admin router for the env's proxy on a free port (no job worker).
async fn start_admin(env: &Env) -> std::net::SocketAddr {
    unsafe {
        std::env::set_var(TOKEN_ENV, "metrics-test-token");
    }
    let mut cfg = env.shared.cfg.clone();
    cfg.admin = Some(pgredact::config::Admin {
        listen: "127.0.0.1:0".into(),
        token_env: TOKEN_ENV.into(),
        ..Default::default()
    });
    let state = pgredact::admin::AdminState::from_config(&cfg)
        .expect("admin state")
        .with_proxy(env.shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, pgredact::admin::router(state)).await });
    addr
}

async fn scrape(addr: std::net::SocketAddr) -> (String, HashMap<String, f64>) {
    let (status, ctype, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let m = parse_metrics(&body);
    (body, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_masked_refused_and_unmasked_statements() {
    let env = start_default().await;
    let addr = start_admin(&env).await;
    let (_, before) = scrape(addr).await;

    let support = env.proxy("support").await;
    // A masked read (rewritten to the masking view), twice: the second comes from the cache.
    let q = "SELECT email FROM customers WHERE customer_id = 1";
    support.simple_query(q).await.expect("masked read");
    support.simple_query(q).await.expect("masked read again");
    // A statement without protected relations passes as sent.
    support.simple_query("SELECT 1").await.expect("pass");
    // Writing PII is refused; its literal must not reach the logs or the metrics.
    let e = support
        .simple_query("UPDATE customers SET email = 'leak@example.com' WHERE customer_id = 1")
        .await
        .expect_err("refused");
    assert_eq!(code(&e), "42501", "{e}");
    // An unmasked session: counted as a session, its statements are relayed, not decided.
    let dba = env.proxy("dba").await;
    dba.simple_query("SELECT email FROM customers LIMIT 1")
        .await
        .expect("unmasked read");

    let (text, after) = scrape(addr).await;
    let d = |s: &str| val(&after, s) - before.get(s).copied().unwrap_or(0.0);
    assert_eq!(d("pgredact_sessions_total{kind=\"masked\"}"), 1.0);
    assert_eq!(d("pgredact_sessions_total{kind=\"unmasked\"}"), 1.0);
    assert_eq!(d("pgredact_sessions_open{kind=\"masked\"}"), 1.0);
    assert_eq!(d("pgredact_sessions_open{kind=\"unmasked\"}"), 1.0);
    assert_eq!(
        d("pgredact_statements_total{decision=\"rewrite\",reason=\"none\"}"),
        2.0
    );
    assert_eq!(
        d("pgredact_statements_total{decision=\"pass\",reason=\"none\"}"),
        1.0
    );
    assert_eq!(
        d("pgredact_statements_total{decision=\"refuse\",reason=\"pii_write\"}"),
        1.0
    );
    let hits = d("pgredact_rewrite_cache_lookups_total{result=\"hit\"}");
    let misses = d("pgredact_rewrite_cache_lookups_total{result=\"miss\"}");
    assert!(hits >= 1.0, "cache hits moved by {hits}");
    assert!(misses >= 3.0, "cache misses moved by {misses}");
    assert!(
        d("pgredact_rewrite_duration_seconds_count") >= misses,
        "every miss is timed"
    );
    assert!(d("pgredact_catalog_refreshes_total{outcome=\"ok\"}") >= 1.0);
    // The policy in force, with the fingerprint of the file.
    assert_eq!(val(&after, "pgredact_policy_version"), 1.0);
    let fp = env
        .shared
        .policy_set()
        .get(DB)
        .expect("app policy")
        .fingerprint();
    assert_eq!(
        val(
            &after,
            &format!("pgredact_policy_info{{database=\"app\",fingerprint=\"{fp}\"}}")
        ),
        1.0
    );
    // Forget jobs by state, read from the database (none submitted here).
    for state in [
        "queued",
        "running",
        "finalizing",
        "done",
        "blocked",
        "failed",
    ] {
        assert_eq!(
            val(
                &after,
                &format!("pgredact_forget_jobs{{database=\"app\",state=\"{state}\"}}")
            ),
            0.0
        );
    }
    // No role, address, statement or value in the output.
    for secret in [
        "support",
        "dba",
        "127.0.0.1",
        "leak@example.com",
        "UPDATE",
        "email",
    ] {
        assert!(!text.contains(secret), "{secret:?} in /metrics:\n{text}");
    }

    // Sessions that end leave the open gauge.
    drop(support);
    drop(dba);
    let started = Instant::now();
    loop {
        let (_, now) = scrape(addr).await;
        let open = |k: &str| {
            val(&now, &format!("pgredact_sessions_open{{kind=\"{k}\"}}"))
                - val(&before, &format!("pgredact_sessions_open{{kind=\"{k}\"}}"))
        };
        if open("masked") == 0.0 && open("unmasked") == 0.0 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "sessions never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_upstream() {
    let mut env = start_default().await;
    let addr = start_admin(&env).await;
    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    // /metrics and /readyz need no token; the /v1 API still does.
    let (status, _, _) = get(addr, "/v1/jobs/1").await;
    assert_eq!(status, 401);

    let (_, before) = scrape(addr).await;
    tokio::task::block_in_place(|| env.cluster.stop());
    // The kept connection fails first, then reconnecting fails: both are 503 with a reason.
    for _ in 0..2 {
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert!(
            body.starts_with("not ready: ") && body.ends_with('\n') && body.lines().count() == 1,
            "{body:?}"
        );
    }
    let (_, after) = scrape(addr).await;
    let s = "pgredact_upstream_errors_total{connection=\"control\"}";
    assert!(val(&after, s) > val(&before, s), "upstream errors counted");
}

/// Runs `pgredact serve` on a free port with `top` (top-level keys) before the suites' usual
/// config and `sections` before its `[upstream]`; waits until a masked login works.
async fn serve(env: &Env, dir: &Path, top: &str, sections: &str) -> (Proc, u16, PathBuf) {
    write_policy(dir, pgredact::demo::EXAMPLE_POLICY);
    let port = pgredact::pgcluster::free_port();
    let base = config_text(&format!("127.0.0.1:{port}"), env.cluster.port);
    let text = format!(
        "{top}{}",
        base.replacen("[upstream]\n", &format!("{sections}[upstream]\n"), 1)
    );
    let cfg = dir.join("pgredact.toml");
    std::fs::write(&cfg, text).expect("config");
    let log = dir.join("serve.log");
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_pgredact"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("PGREDACT_LOG", "info")
            .env(TOKEN_ENV, "metrics-test-token")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn pgredact serve"),
    );
    let started = Instant::now();
    let conn = format!("host=127.0.0.1 port={port} user=support password=support dbname={DB}");
    loop {
        if let Some(st) = child.0.try_wait().expect("try_wait") {
            panic!(
                "pgredact serve exited: {st}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .is_ok()
        {
            return (child, port, log);
        }
        assert!(started.elapsed() < PATIENCE, "serve never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_session_span_and_refusals_without_statements() {
    let env = start_default().await;
    let dir = env.dir.join("json");
    let admin_port = pgredact::pgcluster::free_port();
    let sections =
        format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_env = \"{TOKEN_ENV}\"\n");
    let (child, port, log) = serve(&env, &dir, "log_format = \"json\"\n", &sections).await;
    let conn = format!("host=127.0.0.1 port={port} user=support password=support dbname={DB}");
    let (c, task) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(task);
    c.simple_query("SELECT email FROM customers WHERE customer_id = 2")
        .await
        .expect("masked read");
    let e = c
        .simple_query("UPDATE customers SET email = 'leak@example.com' WHERE customer_id = 2")
        .await
        .expect_err("refused");
    assert_eq!(code(&e), "42501");
    // The served binary wires the admin server to its proxy.
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let (_, m) = scrape(admin_addr).await;
    assert_eq!(val(&m, "pgredact_policy_version"), 1.0);
    assert_eq!(
        val(
            &m,
            "pgredact_statements_total{decision=\"refuse\",reason=\"pii_write\"}"
        ),
        1.0
    );
    let (status, _, _) = get(admin_addr, "/readyz").await;
    assert_eq!(status, 200);
    drop(c);

    // The refusal is logged (info) in the session's span, by reason only.
    let started = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("statement refused") || started.elapsed() > PATIENCE {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(child);
    let mut refusal = None;
    let mut n = 0;
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        n += 1;
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["fields"]["message"] == "statement refused" {
            refusal = Some(v);
        }
    }
    assert!(n >= 3, "{lines}");
    let r = refusal.unwrap_or_else(|| panic!("no refusal logged:\n{lines}"));
    assert_eq!(r["level"], "INFO");
    assert_eq!(r["fields"]["reason"], "pii_write");
    assert_eq!(r["span"]["name"], "session");
    assert_eq!(r["span"]["user"], "support");
    assert_eq!(r["span"]["database"], DB);
    assert_eq!(r["span"]["masked"], true);
    assert!(
        r["span"]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{r}"
    );
    assert!(!lines.contains("leak@example.com"), "{lines}");
    assert!(!lines.contains("UPDATE customers"), "{lines}");

    // Text logs written to a file have no colour codes.
    let (child, _, log) = serve(&env, &env.dir.join("text"), "", "").await;
    drop(child);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("pgredact listening on"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape in a log file:\n{text}"
    );
}
