//! The proxy's lifecycle against real PostgreSQL: drain on SIGTERM (running statements and
//! open transactions finish, idle sessions close, new connections are refused, exit 0), the
//! drain deadline (57P01, and the running statement is cancelled), SIGHUP reloads, the client
//! connection limit, the login, idle and upstream connect timeouts, and the policy published
//! at start (before any session).
//!
//! Signals go to the real `pgredact serve` binary; the limits and timeouts run in-process.
//! Nothing here asserts that something took less than some time: waits are generous polls.

mod support;

use std::time::{Duration, Instant};
use support::serve::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

fn conn_str(port: u16, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={} dbname=app",
        password(user)
    )
}

/// A client whose connection task is kept: its result is how the server ended the session.
async fn connect(
    port: u16,
    user: &str,
) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(&conn_str(port, user), NoTls).await?;
    Ok((c, tokio::spawn(conn)))
}

async fn must_connect(
    port: u16,
    user: &str,
) -> (Client, JoinHandle<Result<(), tokio_postgres::Error>>) {
    connect(port, user)
        .await
        .unwrap_or_else(|e| panic!("connect {user}: {e}"))
}

/// The error of a connection that must fail.
fn refused<T>(r: Result<T, tokio_postgres::Error>, what: &str) -> tokio_postgres::Error {
    match r {
        Ok(_) => panic!("{what}: the connection was accepted"),
        Err(e) => e,
    }
}

/// The SQLSTATE the server ended the session with (the connection task's error).
async fn ended_with(h: JoinHandle<Result<(), tokio_postgres::Error>>, what: &str) -> String {
    match tokio::time::timeout(PATIENCE, h).await {
        Ok(Ok(Err(e))) => code(&e),
        Ok(Ok(Ok(()))) => panic!("{what}: closed without an error"),
        Ok(Err(e)) => panic!("{what}: connection task: {e}"),
        Err(_) => panic!("{what}: still open"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_and_the_deadline_closes_the_rest() {
    let env = start_default().await;
    let su = env.direct("postgres").await;

    // 1. A long deadline: everything running finishes.
    let port = pgredact::pgcluster::free_port();
    let cfg = write_config(
        &env.dir.join("drain"),
        &format!("127.0.0.1:{port}"),
        env.cluster.port,
        "shutdown_timeout_secs = 600\n",
        "",
    );
    let (mut child, log) = serve(&cfg, port).await;
    let (busy_m, _hbm) = must_connect(port, "support").await;
    let (busy_u, _hbu) = must_connect(port, "dba").await;
    let (_idle_m, idle_m) = must_connect(port, "support").await;
    let (_idle_u, idle_u) = must_connect(port, "dba").await;
    let (tx_m, tx_m_end) = must_connect(port, "support").await;
    let (tx_u, tx_u_end) = must_connect(port, "dba").await;
    tx_m.batch_execute("BEGIN; SELECT 1").await.unwrap();
    tx_u.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let run_m = tokio::spawn(async move { rows(&busy_m, "SELECT pg_sleep(2), 'masked'").await });
    let run_u = tokio::spawn(async move { rows(&busy_u, "SELECT pg_sleep(2), 'unmasked'").await });
    wait_active(&su, "SELECT pg_sleep(2)", 2).await;

    signal(&child, "TERM");
    wait_log(&log, "shutting down: no new connections").await;
    // New connections are refused at once.
    assert!(
        connect(port, "support").await.is_err(),
        "a new connection after SIGTERM"
    );
    // Idle sessions are closed at once, masked and unmasked, with 57P01.
    assert_eq!(ended_with(idle_m, "idle masked").await, "57P01");
    assert_eq!(ended_with(idle_u, "idle unmasked").await, "57P01");
    // Open transactions go on until they end, then the session is closed.
    assert_eq!(rows(&tx_m, "SELECT 2").await.unwrap(), vec!["2"]);
    assert_eq!(rows(&tx_u, "SELECT 2").await.unwrap(), vec!["2"]);
    tx_m.batch_execute("COMMIT").await.unwrap();
    tx_u.batch_execute("COMMIT").await.unwrap();
    assert_eq!(ended_with(tx_m_end, "masked after COMMIT").await, "57P01");
    assert_eq!(ended_with(tx_u_end, "unmasked after COMMIT").await, "57P01");
    // Running statements complete and return their rows.
    assert_eq!(run_m.await.unwrap().unwrap(), vec!["|masked"]);
    assert_eq!(run_u.await.unwrap().unwrap(), vec!["|unmasked"]);
    let st = wait_exit(&mut child, &log).await;
    assert!(st.success(), "exit status {st}\n{}", read(&log));
    assert!(
        read(&log).contains("every session has ended"),
        "{}",
        read(&log)
    );

    // 2. A deadline shorter than the running statements: 57P01, and the statements are
    // cancelled in PostgreSQL rather than left running.
    let port = pgredact::pgcluster::free_port();
    let cfg = write_config(
        &env.dir.join("deadline"),
        &format!("127.0.0.1:{port}"),
        env.cluster.port,
        "shutdown_timeout_secs = 1\n",
        "",
    );
    let (mut child, log) = serve(&cfg, port).await;
    let (m, _hm) = must_connect(port, "support").await;
    let (u, _hu) = must_connect(port, "dba").await;
    let run_m = tokio::spawn(async move { m.simple_query("SELECT pg_sleep(600)").await });
    let run_u = tokio::spawn(async move { u.simple_query("SELECT pg_sleep(600)").await });
    wait_active(&su, "SELECT pg_sleep(600)", 2).await;
    signal(&child, "TERM");
    for (what, r) in [("masked", run_m.await), ("unmasked", run_u.await)] {
        let e = r.unwrap().expect_err(what);
        assert_eq!(code(&e), "57P01", "{what}: {e}");
        let msg = e.as_db_error().map(|d| d.message().to_string());
        assert_eq!(msg.as_deref(), Some("pgredact is shutting down"), "{what}");
    }
    let st = wait_exit(&mut child, &log).await;
    assert!(st.success(), "exit status {st}\n{}", read(&log));
    assert!(
        read(&log).contains("shutdown deadline (1 s) passed"),
        "{}",
        read(&log)
    );
    wait_active(&su, "SELECT pg_sleep(600)", 0).await;
    // Each of the two backends (the masked session's and the unmasked one's) logged its
    // cancel. A backend may log it twice: when the client is already gone, PostgreSQL can
    // report the pending cancel again while it fails to send the first error.
    let started = Instant::now();
    loop {
        let server_log = env.cluster.read_log();
        let cancelled = |user: &str| {
            server_log.contains(&format!(
                "{user}@app ERROR:  canceling statement due to user request"
            ))
        };
        if cancelled("support") && cancelled("dba") {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "a backend was not cancelled: {server_log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_policies_and_settings() {
    let env = start_default().await;
    let port = pgredact::pgcluster::free_port();
    let dir = env.dir.join("hup");
    let cfg = write_config(
        &dir,
        &format!("127.0.0.1:{port}"),
        env.cluster.port,
        "policy_reload_secs = 3600\n",
        "",
    );
    let (child, log) = serve(&cfg, port).await;
    let (c, _h) = must_connect(port, "support").await;
    let q = "SELECT email, city FROM customers WHERE customer_id = 1";
    let before = rows(&c, q).await.unwrap();
    assert!(
        before[0].contains("***@") && !before[0].ends_with("|****"),
        "{before:?}"
    );

    // A policy that also masks city, picked up at SIGHUP (the periodic check is an hour away).
    let pol = dir.join("policies/app.toml");
    std::fs::write(
        &pol,
        pgredact::demo::EXAMPLE_POLICY.replace(
            "columns.birth_date = \"year\"",
            "columns.birth_date = \"year\"\ncolumns.city = \"redact\"",
        ),
    )
    .unwrap();
    let sent = Instant::now();
    signal(&child, "HUP");
    let started = Instant::now();
    let latency = loop {
        let r = rows(&c, q).await.unwrap();
        if r[0].ends_with("|****") {
            break sent.elapsed();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "SIGHUP reload never applied\n{}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("SIGHUP to the new mask on the next statement: {latency:?}");
    wait_log(&log, "policies reloaded (version 2)").await;

    // A broken policy: reported with file and line at SIGHUP; the last good one stays.
    std::fs::write(
        &pol,
        "database = \"app\"\n[tables.\"public.customers\"]\ncolumns.email = \"emale\"\n",
    )
    .unwrap();
    signal(&child, "HUP");
    let text = wait_log(&log, "policy reload failed").await;
    assert!(text.contains("app.toml:3:"), "{text}");
    assert!(rows(&c, q).await.unwrap()[0].ends_with("|****"));

    // The configuration: the connection limit changes at once; a changed listen address is
    // reported as needing a restart.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("max_client_conn = 1\n{text}").replace(&format!("127.0.0.1:{port}"), "127.0.0.1:1"),
    )
    .unwrap();
    signal(&child, "HUP");
    wait_log(&log, "max_client_conn 1000 -> 1").await;
    wait_log(&log, "listen changed").await;
    let e = refused(connect(port, "support").await, "over the limit");
    assert_eq!(code(&e), "53300", "{e}");
    assert_eq!(rows(&c, "SELECT 1").await.unwrap(), vec!["1"]);
}

/// An in-process proxy with extra settings.
async fn proxy_with(env: &Env, name: &str, upstream_port: u16, top: &str, upstream: &str) -> u16 {
    let cfg = write_config(
        &env.dir.join(name),
        "127.0.0.1:0",
        upstream_port,
        top,
        upstream,
    );
    let cfg = pgredact::config::Config::load(&cfg).expect("config");
    let (listener, shared) = pgredact::proxy::bind(cfg).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(pgredact::proxy::run(listener, shared));
    port
}

/// Reads until the proxy closes the connection; returns every byte.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match tokio::time::timeout(PATIENCE, s.read_to_end(&mut got)).await {
        Ok(_) => got,
        Err(_) => panic!("the proxy never closed the connection; got {got:?}"),
    }
}

fn has_error(bytes: &[u8], sqlstate: &str) -> bool {
    let want = format!("C{sqlstate}\0");
    bytes.windows(want.len()).any(|w| w == want.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_login_idle_and_connect_timeouts() {
    let env = start_default().await;

    // max_client_conn: the third client is refused with 53300; once one leaves, a new one gets in.
    let port = proxy_with(&env, "limit", env.cluster.port, "max_client_conn = 2\n", "").await;
    let (a, _ha) = must_connect(port, "support").await;
    let (_b, _hb) = must_connect(port, "dba").await;
    let e = refused(connect(port, "support").await, "third client");
    assert_eq!(code(&e), "53300", "{e}");
    let msg = e.as_db_error().map(|d| d.message().to_string());
    assert!(
        msg.as_deref()
            .is_some_and(|m| m.contains("too many connections to pgredact")),
        "{msg:?}"
    );
    drop(a);
    let started = Instant::now();
    let (c, _hc) = loop {
        match connect(port, "support").await {
            Ok(c) => break c,
            Err(e) => {
                assert_eq!(code(&e), "53300", "{e}");
                assert!(started.elapsed() < PATIENCE, "no room after a client left");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(rows(&c, "SELECT 1").await.unwrap(), vec!["1"]);

    // Login timeout: a client that sends nothing, and one that stops in the middle of its SCRAM
    // exchange, get 08P01 and are closed (releasing the upstream connection of the second).
    let port = proxy_with(
        &env,
        "login",
        env.cluster.port,
        // Long enough for a first login's control connection and catalog load on a busy machine.
        "login_timeout_secs = 5\n",
        "",
    )
    .await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let got = read_to_close(&mut silent).await;
    assert!(
        got.first() == Some(&b'E') && has_error(&got, "08P01"),
        "{got:?}"
    );
    // A first login opens the database's control connection (SCRAM reads the verifier over
    // it), so the stalled client below gets its SCRAM offer well within the login timeout.
    let (warm, _) = must_connect(port, "support").await;
    assert_eq!(rows(&warm, "SELECT 1").await.unwrap(), vec!["1"]);
    drop(warm);
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let startup = pgredact::wire::startup::Startup::Startup {
        params: vec![
            ("user".into(), "support".into()),
            ("database".into(), "app".into()),
        ],
    }
    .to_bytes();
    stalled.write_all(&startup).await.unwrap();
    let got = read_to_close(&mut stalled).await;
    assert_eq!(
        got.first(),
        Some(&b'R'),
        "the SCRAM exchange started: {got:?}"
    );
    assert!(has_error(&got, "08P01"), "{got:?}");

    // Idle timeouts: idle sessions outside a transaction are closed with 57P05; a session idle
    // inside a transaction, or running a statement longer than the timeout, is not.
    let port = proxy_with(
        &env,
        "idle",
        env.cluster.port,
        "masked_idle_timeout_secs = 1\nunmasked_idle_timeout_secs = 1\n",
        "",
    )
    .await;
    let (tx_m, tx_m_end) = must_connect(port, "support").await;
    let (tx_u, tx_u_end) = must_connect(port, "dba").await;
    tx_m.batch_execute("BEGIN").await.unwrap();
    tx_u.batch_execute("BEGIN").await.unwrap();
    let (idle_m, idle_m_end) = must_connect(port, "support").await;
    let (idle_u, idle_u_end) = must_connect(port, "dba").await;
    idle_m.batch_execute("SELECT 1").await.unwrap();
    idle_u.batch_execute("SELECT 1").await.unwrap();
    let (busy, _busy_end) = must_connect(port, "support").await;
    let long = tokio::spawn(async move { rows(&busy, "SELECT pg_sleep(3), 'done'").await });
    assert_eq!(ended_with(idle_m_end, "idle masked").await, "57P05");
    assert_eq!(ended_with(idle_u_end, "idle unmasked").await, "57P05");
    // The transactions have been idle longer than the timeout by now (they began before the
    // idle sessions' last statement); one more second to be plain about it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rows(&tx_m, "SELECT 2").await.unwrap(), vec!["2"]);
    assert_eq!(rows(&tx_u, "SELECT 2").await.unwrap(), vec!["2"]);
    tx_m.batch_execute("COMMIT").await.unwrap();
    tx_u.batch_execute("COMMIT").await.unwrap();
    assert_eq!(long.await.unwrap().unwrap(), vec!["|done"]);
    // Out of their transactions, they are idle sessions like the others.
    assert_eq!(ended_with(tx_m_end, "masked after COMMIT").await, "57P05");
    assert_eq!(ended_with(tx_u_end, "unmasked after COMMIT").await, "57P05");

    // Upstream connect timeout: a server that accepts and never answers. The client gets 08006
    // naming the address, in one line.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bh_port = blackhole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = blackhole.accept().await {
            held.push(s);
        }
    });
    let port = proxy_with(&env, "connect", bh_port, "", "connect_timeout_secs = 1\n").await;
    let e = refused(connect(port, "support").await, "no upstream");
    assert_eq!(code(&e), "08006", "{e}");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        msg.contains(&format!("127.0.0.1:{bh_port}")) && msg.contains("did not answer within 1 s"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

/// `pgredact serve` publishes its policy when it starts, not at the first session through it.
/// Straight to PostgreSQL, with no one connected through pgredact: a column the new policy
/// marks PII is closed to a masked role and masked in its masking view, and a hash mask reads
/// the stored key (the view gives NULL for it until pgredact stores the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_publishes_its_policy_at_start_before_any_session() {
    // The suite's in-process proxy is never used here (it loads a database at its first
    // session): `setup-sql` ran for the demo policy, and no pgredact has served `app` yet.
    let env = start_default().await;
    let su = env.direct("postgres").await;
    let support = env.direct("support").await;
    let (raw_last, raw_city) = {
        let r = su
            .query_one(
                "SELECT last_name, city FROM customers WHERE customer_id = 1",
                &[],
            )
            .await
            .expect("raw row");
        (r.get::<_, String>(0), r.get::<_, String>(1))
    };
    let view = "SELECT last_name, city FROM pgredact_masked.customers WHERE customer_id = 1";
    let before = support.query_one(view, &[]).await.expect("view");
    assert_eq!(
        before.get::<_, Option<String>>(0),
        None,
        "no key stored yet"
    );
    assert_eq!(
        before.get::<_, Option<String>>(1).as_deref(),
        Some(raw_city.as_str())
    );

    // The new policy also redacts `city`. pgredact starts; nobody connects through it.
    let dir = env.dir.join("publish");
    let port = pgredact::pgcluster::free_port();
    let cfg = write_config(&dir, &format!("127.0.0.1:{port}"), env.cluster.port, "", "");
    let policy = pgredact::demo::EXAMPLE_POLICY.replacen(
        "columns.address = \"redact\"\n",
        "columns.address = \"redact\"\ncolumns.city = \"redact\"\n",
        1,
    );
    assert_ne!(policy, pgredact::demo::EXAMPLE_POLICY);
    write_policy(&dir, &policy);
    let (child, log) = spawn_serve(&cfg);

    let want_last = pgredact::policy::hash_pseudonym(HASH_KEY.as_bytes(), &raw_last);
    let started = Instant::now();
    loop {
        let r = support.query_one(view, &[]).await.expect("view");
        let (last, city) = (r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1));
        if last.as_deref() == Some(want_last.as_str()) && city.as_deref() == Some("****") {
            break;
        }
        // Until it is published: the old view (NULL hash, raw city), never anything else.
        assert!(
            last.is_none() || last.as_deref() == Some(want_last.as_str()),
            "{last:?}"
        );
        assert!(
            started.elapsed() < PATIENCE,
            "not published at start: last_name {last:?}, city {city:?}\n{}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The raw column is closed to support straight to PostgreSQL (the wall followed the policy).
    let e = support
        .query_one("SELECT city FROM customers WHERE customer_id = 1", &[])
        .await
        .expect_err("city is PII now");
    assert_eq!(code(&e), "42501", "{e}");

    // A reload that names a database for the first time loads it at once (here it does not
    // exist: the attempt is logged, and its first session would try again).
    std::fs::write(
        dir.join("policies/elsewhere.toml"),
        "database = \"app_elsewhere\"\n[tables.\"public.people\"]\ncolumns.email = \"email\"\n",
    )
    .expect("second policy");
    signal(&child, "HUP");
    let text = wait_log(&log, "database app_elsewhere: not loaded yet").await;
    assert!(text.contains("policies reloaded"), "{text}");
}
