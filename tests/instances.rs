//! Two real `pgredact serve` instances behind a real HAProxy (round-robin TCP), one PostgreSQL:
//! sessions land on both and answer the same, pgbench runs through the balancer, a cancel
//! request reaches the session's backend whichever instance receives it, the instances record
//! themselves with their policy, and a policy change rolled out one instance at a time never
//! makes them fight over the masking views or forget each other's protected relations.
//!
//! Nothing here asserts that something took less than some time: waits are generous polls.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::http::http_get;
use support::serve::*;
use support::*;
use tokio_postgres::{Client, NoTls};

const ADMIN_TOKEN_ENV: &str = "PGREDACT_TEST_INSTANCES_TOKEN";

/// A second version of the demo policy: `customers.city` becomes PII, and a new table joins.
fn policy_v2() -> String {
    pgredact::demo::EXAMPLE_POLICY
        .replace(
            "columns.birth_date = \"year\"\n",
            "columns.birth_date = \"year\"\ncolumns.city = \"null\"\n",
        )
        .replace(
            "[tables.\"public.orders\"]",
            "[tables.\"public.support_notes\"]\ncolumns.author_email = \"email\"\n\n[tables.\"public.orders\"]",
        )
}

const EXTRA_SQL: &str = "CREATE TABLE public.support_notes (note_id int PRIMARY KEY, customer_id bigint, author_email text, body text);
INSERT INTO public.support_notes VALUES (1, 1, 'agent.smith@example.com', 'called back');
GRANT SELECT ON public.support_notes TO support, solutions;";

/// One instance: its config file (with `[peering]` and `[admin]`), port and admin address.
struct Instance {
    cfg: PathBuf,
    port: u16,
    admin: std::net::SocketAddr,
    proc: Option<Proc>,
    log: PathBuf,
}

fn instance(dir: &Path, upstream: u16, peer: u8, port: u16, other: (u8, u16)) -> Instance {
    let admin_port = pgredact::pgcluster::free_port();
    let cfg = write_config(
        dir,
        &format!("127.0.0.1:{port}"),
        upstream,
        "catalog_refresh_secs = 1\n",
        "",
    );
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(&format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_env = \"{ADMIN_TOKEN_ENV}\"\n\
         [peering]\npeer_id = {peer}\n[peering.peers]\n{} = \"127.0.0.1:{}\"\n",
        other.0, other.1
    ));
    std::fs::write(&cfg, text).expect("config");
    Instance {
        log: cfg.with_file_name("serve.log"),
        cfg,
        port,
        admin: format!("127.0.0.1:{admin_port}").parse().expect("addr"),
        proc: None,
    }
}

/// Starts HAProxy (foreground, round-robin over `backends`) on a free port.
async fn haproxy(dir: &Path, backends: &[u16]) -> (Proc, u16) {
    let port = pgredact::pgcluster::free_port();
    let mut cfg = format!(
        "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 10s\n  timeout client 600s\n  timeout server 600s\n\
         frontend pg\n  bind 127.0.0.1:{port}\n  default_backend pgredact\n\
         backend pgredact\n  balance roundrobin\n"
    );
    for (i, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("  server p{i} 127.0.0.1:{b}\n"));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).expect("haproxy.cfg");
    let bin = [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("HAProxy is not installed: `.ci/run` installs it (apt-get install haproxy)");
    let child = Proc(
        Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).expect("haproxy log"))
            .spawn()
            .expect("spawn haproxy"),
    );
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(started.elapsed() < PATIENCE, "HAProxy never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port)
}

fn conn(port: u16, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={} dbname=app sslmode=disable",
        password(user)
    )
}

async fn client(port: u16, user: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(&conn(port, user), NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {user} on {port}: {e}"));
    tokio::spawn(conn);
    c
}

/// A metric's value on an instance (sum over every sample whose line starts with `prefix`).
async fn metric(admin: std::net::SocketAddr, prefix: &str) -> f64 {
    let (status, _, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_metric(admin: std::net::SocketAddr, prefix: &str, want: f64) {
    let started = Instant::now();
    loop {
        let v = metric(admin, prefix).await;
        if v == want {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{prefix} on {admin}: {v}, waiting for {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_sql(su: &Client, sql: &str, want: &str) {
    let started = Instant::now();
    loop {
        let got = rows(su, sql).await.expect(sql);
        if got.join(",") == want {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{sql}: {got:?}, waiting for {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `SELECT pg_sleep(60)` on `c`, cancels it with `cancel`, and returns the SQLSTATE the
/// statement ended with.
async fn cancelled<F, Fut>(su: &Client, c: Client, tag: &str, cancel: F) -> String
where
    F: FnOnce(tokio_postgres::CancelToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let token = c.cancel_token();
    let sql = format!("SELECT pg_sleep(60) /* {tag} */");
    let run = tokio::spawn(async move { c.simple_query(&sql).await.map(|_| ()) });
    wait_active(su, &format!("SELECT pg_sleep(60) /* {tag} */"), 1).await;
    cancel(token).await;
    match tokio::time::timeout(PATIENCE, run).await {
        Ok(Ok(Err(e))) => code(&e),
        Ok(Ok(Ok(()))) => panic!("{tag}: pg_sleep(60) was not cancelled"),
        other => panic!("{tag}: {other:?}"),
    }
}

fn pgbench(port: u16, user: &str, script: &Path, extra: &[&str]) -> String {
    let bin = pgredact::pgcluster::Cluster::bin_dir()
        .map(|d| d.join("pgbench"))
        .unwrap_or_else(|_| "pgbench".into());
    let out = Command::new(bin)
        .args(["-n", "-c", "4", "-j", "2", "-t", "25", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", user, "-f"])
        .arg(script)
        .args(extra)
        .arg("app")
        .env("PGPASSWORD", password(user))
        .output()
        .expect("pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench as {user}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_behind_haproxy() {
    // SAFETY: set before any instance starts; every test of this binary uses the same value.
    unsafe { std::env::set_var(ADMIN_TOKEN_ENV, "instances-test-token") };
    let env = start(
        pgredact::demo::EXAMPLE_POLICY,
        pgredact::pgcluster::ClusterOptions {
            auth: pgredact::pgcluster::Auth::Scram,
            ..Default::default()
        },
        EXTRA_SQL,
    )
    .await;
    let su = env.direct("postgres").await;
    let (pa, pb) = (
        pgredact::pgcluster::free_port(),
        pgredact::pgcluster::free_port(),
    );
    let mut a = instance(&env.dir.join("a"), env.cluster.port, 1, pa, (2, pb));
    let mut b = instance(&env.dir.join("b"), env.cluster.port, 2, pb, (1, pa));
    for i in [&mut a, &mut b] {
        let (p, log) = serve(&i.cfg, i.port).await;
        i.proc = Some(p);
        i.log = log;
    }
    let (_haproxy, ph) = haproxy(&env.dir, &[pa, pb]).await;

    // 1. Round-robin psql sessions: both instances serve them, and the answers are the same
    //    masked values the in-process proxy gives.
    // (The suite's in-process proxy is never used here: it would be a third instance.)
    let sql = "SELECT email, phone, tier FROM customers WHERE customer_id = 1";
    let want = rows(
        &env.direct("support").await,
        &sql.replace("FROM customers", "FROM pgredact_masked.customers"),
    )
    .await
    .expect(sql);
    assert!(want[0].contains("***"), "{want:?}");
    for _ in 0..4 {
        let (ok, out, err) = psql_conn(&conn(ph, "support"), "support", sql);
        assert!(ok, "{err}");
        assert!(
            out.contains(want[0].split('|').next().unwrap_or_default()),
            "{out} vs {want:?}"
        );
    }
    for i in [&a, &b] {
        assert!(
            metric(i.admin, "pgredact_sessions_total{kind=\"masked\"}").await >= 1.0,
            "instance on {} served no masked session",
            i.port
        );
    }

    // 2. pgbench through the balancer: masked (simple protocol) and unmasked (prepared).
    let script = env.dir.join("read.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 100)\nSELECT email, tier FROM customers WHERE customer_id = :id;\n",
    )
    .expect("script");
    for (user, extra) in [("support", &[][..]), ("dba", &["-M", "prepared"][..])] {
        let out = pgbench(ph, user, &script, extra);
        assert!(
            out.contains("number of transactions actually processed: 100/100"),
            "{out}"
        );
    }

    // 3. The registry: both instances, their peer ids, one policy.
    let fp1 = pgredact::policy::load_dir(&a.cfg.with_file_name("policies"), 1)
        .expect("policy")
        .get("app")
        .expect("app")
        .fingerprint();
    wait_sql(
        &su,
        "SELECT string_agg(peer_id::text || ':' || policy_fingerprint, ' ' ORDER BY peer_id) FROM pgredact.instances",
        &format!("1:{fp1} 2:{fp1}"),
    )
    .await;
    for i in [&a, &b] {
        wait_metric(
            i.admin,
            &format!("pgredact_instances{{database=\"app\",fingerprint=\"{fp1}\"}}"),
            2.0,
        )
        .await;
        wait_metric(
            i.admin,
            "pgredact_policy_disagreements{database=\"app\"}",
            0.0,
        )
        .await;
    }

    // 4. Cancel requests: sent to the other instance than the session's, and through the
    //    balancer (round-robin gives the cancel connection to the next instance).
    let on_a = client(pa, "support").await;
    let got = cancelled(&su, on_a, "a-by-b", |t| async move {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", pb))
            .await
            .expect("connect b");
        t.cancel_query_raw(s, NoTls).await.expect("cancel via b");
    })
    .await;
    assert_eq!(
        got, "57014",
        "the cancel sent to instance B reached A's session"
    );
    assert!(
        metric(
            b.admin,
            "pgredact_cancel_requests_total{outcome=\"forwarded\"}"
        )
        .await
            >= 1.0
    );
    assert!(metric(a.admin, "pgredact_cancel_requests_total{outcome=\"local\"}").await >= 1.0);
    for (n, user) in ["support", "dba", "support", "dba"].into_iter().enumerate() {
        let c = client(ph, user).await;
        let got = cancelled(&su, c, &format!("lb-{n}"), |t| async move {
            t.cancel_query(NoTls).await.expect("cancel via haproxy");
        })
        .await;
        assert_eq!(got, "57014", "cancel {n} ({user}) through HAProxy");
    }
    let forwarded = metric(
        a.admin,
        "pgredact_cancel_requests_total{outcome=\"forwarded\"}",
    )
    .await
        + metric(
            b.admin,
            "pgredact_cancel_requests_total{outcome=\"forwarded\"}",
        )
        .await;
    assert!(forwarded >= 2.0, "{forwarded} cancels forwarded");

    // 5. A policy change rolled out one instance at a time. A first: it publishes v2.
    std::fs::write(
        a.cfg.with_file_name("policies").join("app.toml"),
        policy_v2(),
    )
    .expect("policy v2");
    let fp2 = pgredact::policy::load_dir(&a.cfg.with_file_name("policies"), 1)
        .expect("policy v2 parses")
        .get("app")
        .expect("app")
        .fingerprint();
    assert_ne!(fp1, fp2);
    wait_sql(
        &su,
        "SELECT spec->>'fingerprint' FROM pgredact.policy",
        &fp2,
    )
    .await;
    wait_log(&b.log, "the masking views follow the policy of instance").await;
    // B leaves A's views alone: the published policy and the views stay v2 while B runs v1.
    let views = "SELECT string_agg(view_name || '=' || fingerprint, ',' ORDER BY view_name) FROM pgredact_admin.masking_views";
    let before = rows(&su, views).await.expect("views");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        rows(&su, views).await.expect("views"),
        before,
        "views rebuilt"
    );
    wait_sql(
        &su,
        "SELECT spec->>'fingerprint' FROM pgredact.policy",
        &fp2,
    )
    .await;
    // ...and keeps the relation only v2 protects in the shared record, also after a DDL makes
    // it read its catalog and record its protections again.
    let refreshes = "pgredact_catalog_refreshes_total{outcome=\"ok\"}";
    let n = metric(b.admin, refreshes).await;
    su.batch_execute("COMMENT ON TABLE public.orders IS 'rollout'")
        .await
        .expect("DDL");
    let started = Instant::now();
    while metric(b.admin, refreshes).await <= n {
        assert!(
            started.elapsed() < PATIENCE,
            "B never refreshed after the DDL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rows(
            &su,
            "SELECT policy_table FROM pgredact.protected_relations WHERE relid = 'public.support_notes'::regclass"
        )
        .await
        .expect("protected_relations"),
        vec!["public.support_notes"],
        "{:?} {:?}\n{}",
        rows(&su, "SELECT relid::regclass::text || '=' || policy_table FROM pgredact.protected_relations").await,
        rows(&su, "SELECT instance || ' ' || policy_tables::text || ' ' || seen_at::text FROM pgredact.instances").await,
        read(&a.log)
    );
    // Through A: v2's masks.
    let a_support = client(pa, "support").await;
    assert_eq!(
        rows(
            &a_support,
            "SELECT city IS NULL FROM customers WHERE customer_id = 1"
        )
        .await
        .expect("city through A"),
        vec!["t"]
    );
    assert_eq!(
        rows(&a_support, "SELECT author_email FROM support_notes")
            .await
            .expect("notes through A"),
        vec!["a***@example.com"]
    );
    // Through B: customers (whose masks differ) is refused with the reason; orders (same
    // masks in both versions) is served; the new PII column is denied by PostgreSQL's wall.
    let b_support = client(pb, "support").await;
    let e = rows(
        &b_support,
        "SELECT city FROM customers WHERE customer_id = 1",
    )
    .await
    .expect_err("customers through B during the rollout");
    assert_eq!(code(&e), "42501");
    assert!(
        format!("{e:?}").contains("another pgredact instance"),
        "{e:?}"
    );
    assert_eq!(
        rows(
            &b_support,
            "SELECT count(*) FROM orders WHERE customer_id = 1"
        )
        .await
        .expect("orders through B")
        .len(),
        1
    );
    let e = rows(&b_support, "SELECT author_email FROM support_notes")
        .await
        .expect_err("the new PII column through B");
    assert_eq!(code(&e), "42501", "{e:?}");
    // Both sides report the disagreement.
    wait_metric(
        b.admin,
        "pgredact_policy_disagreements{database=\"app\"}",
        1.0,
    )
    .await;
    wait_metric(
        a.admin,
        "pgredact_policy_disagreements{database=\"app\"}",
        1.0,
    )
    .await;
    let check = Command::new(env!("CARGO_BIN_EXE_pgredact"))
        .args(["check", "--config"])
        .arg(&b.cfg)
        .output()
        .expect("pgredact check");
    let report = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(report.contains("runs another policy"), "{report}");
    assert!(report.contains(&fp2), "{report}");
    assert!(report.contains("2 live pgredact instance(s)"), "{report}");

    // Then B: the instances agree, and B serves v2's masks.
    std::fs::write(
        b.cfg.with_file_name("policies").join("app.toml"),
        policy_v2(),
    )
    .expect("policy v2 on B");
    for i in [&a, &b] {
        wait_metric(
            i.admin,
            "pgredact_policy_disagreements{database=\"app\"}",
            0.0,
        )
        .await;
    }
    let started = Instant::now();
    let b_support = client(pb, "support").await;
    loop {
        match rows(
            &b_support,
            "SELECT city IS NULL FROM customers WHERE customer_id = 1",
        )
        .await
        {
            Ok(r) => {
                assert_eq!(r, vec!["t"]);
                break;
            }
            Err(e) => assert!(started.elapsed() < PATIENCE, "B after its reload: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_sql(
        &su,
        "SELECT spec->>'fingerprint' FROM pgredact.policy",
        &fp2,
    )
    .await;

    // 6. A stopping instance leaves the registry.
    let mut pa_proc = a.proc.take().expect("a runs");
    signal(&pa_proc, "TERM");
    let st = wait_exit(&mut pa_proc, &a.log).await;
    assert!(st.success(), "{}", read(&a.log));
    wait_sql(
        &su,
        "SELECT string_agg(peer_id::text, ',') FROM pgredact.instances",
        "2",
    )
    .await;
}
