//! Integration tests for `pgredact::pgcluster`: throwaway clusters, the demo schema, auth modes.

mod support;

use pgredact::pgcluster::{Auth, Cluster, ClusterOptions, Error, SUPERUSER, SUPERUSER_PASSWORD};
use support::{demo_cluster, DEMO_DB, DEMO_ROW_COUNTS};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

fn start(opts: ClusterOptions) -> Cluster {
    Cluster::start(opts).unwrap_or_else(|e| panic!("starting a cluster: {e}"))
}

/// A digest of every demo row, to compare two loads.
const FINGERPRINT_SQL: &str = "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM ( \
       SELECT c::text AS t FROM customers c \
       UNION ALL SELECT e::text FROM customer_events e \
       UNION ALL SELECT o::text FROM orders o \
       UNION ALL SELECT h::text FROM customer_history h) s";

#[test]
fn two_clusters_in_parallel_load_the_demo_schema() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| demo_cluster(ClusterOptions::default()));
        let b = s.spawn(|| demo_cluster(ClusterOptions::default()));
        (a.join().expect("cluster a"), b.join().expect("cluster b"))
    });
    assert_ne!(a.port, b.port);
    assert_ne!(a.data_dir, b.data_dir);
    assert_eq!(a.host, "127.0.0.1");

    for cluster in [&a, &b] {
        // Row counts through psql.
        for (table, expected) in DEMO_ROW_COUNTS {
            let out = cluster
                .psql(
                    "support",
                    None,
                    DEMO_DB,
                    &format!("SELECT count(*) FROM {table}"),
                )
                .unwrap_or_else(|e| panic!("psql count {table}: {e}"));
            assert_eq!(out.trim(), expected.to_string(), "psql count of {table}");
        }
        // Row counts and data shape through tokio-postgres.
        block_on(async {
            let client = cluster
                .connect("support", None, DEMO_DB)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            for (table, expected) in DEMO_ROW_COUNTS {
                let row = client
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await
                    .unwrap_or_else(|e| panic!("count {table}: {e}"));
                assert_eq!(row.get::<_, i64>(0), expected, "count of {table}");
            }
            let row = client
                .query_one(
                    "SELECT first_name, last_name, email FROM customers WHERE customer_id = 42",
                    &[],
                )
                .await
                .expect("customer 42");
            let (first, last, email): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            assert!(email.ends_with("42@example.com"), "email {email}");
            let ascii = |s: &str| -> String {
                s.to_lowercase()
                    .chars()
                    .filter(|c| *c != ' ')
                    .map(|c| match c {
                        'á' => 'a',
                        'é' | 'ë' => 'e',
                        'í' => 'i',
                        'ó' | 'ö' => 'o',
                        'ú' | 'ü' => 'u',
                        c => c,
                    })
                    .collect()
            };
            assert_eq!(
                email,
                format!("{}.{}42@example.com", ascii(&first), ascii(&last)),
                "email for {first} {last}"
            );
            let row = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE email NOT LIKE '%_@example.com'), \
                            count(DISTINCT email), count(*) FILTER (WHERE phone IS NULL), \
                            count(DISTINCT tier), count(DISTINCT country) FROM customers",
                    &[],
                )
                .await
                .expect("customer shape");
            assert_eq!(row.get::<_, i64>(0), 0, "malformed emails");
            assert_eq!(row.get::<_, i64>(1), 10_000, "emails are unique");
            assert_eq!(row.get::<_, i64>(2), 500, "5% of phones are NULL");
            assert_eq!(row.get::<_, i64>(3), 4, "tiers");
            assert!(row.get::<_, i64>(4) >= 10, "countries");
            // Foreign keys hold (customer_history has none by design, but is generated valid).
            let orphans: i64 = client
                .query_one(
                    "SELECT count(*) FROM customer_history h \
                     WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = h.customer_id)",
                    &[],
                )
                .await
                .expect("orphans")
                .get(0);
            assert_eq!(orphans, 0);
            // Indexes on customer_id exist and ANALYZE ran.
            let indexed: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' \
                     AND indexdef LIKE '%(customer_id)' \
                     AND tablename IN ('customer_events', 'orders', 'customer_history')",
                    &[],
                )
                .await
                .expect("indexes")
                .get(0);
            assert_eq!(indexed, 3);
            let analyzed: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL",
                    &[],
                )
                .await
                .expect("analyzed")
                .get(0);
            assert_eq!(analyzed, 4);
        });
    }

    // Deterministic: both loads hold exactly the same rows.
    let fa = a
        .superuser_psql(DEMO_DB, FINGERPRINT_SQL)
        .expect("fingerprint a");
    let fb = b
        .superuser_psql(DEMO_DB, FINGERPRINT_SQL)
        .expect("fingerprint b");
    assert_eq!(fa.trim().len(), 32, "fingerprint {fa:?}");
    assert_eq!(fa, fb, "two loads of the demo schema differ");
}

#[test]
fn demo_roles_have_the_documented_privileges() {
    let cluster = demo_cluster(ClusterOptions::default());
    let psql = |user: &str, sql: &str| cluster.psql(user, Some(user), DEMO_DB, sql);

    // support: read only.
    assert_eq!(
        psql("support", "SELECT count(*) FROM orders")
            .expect("support reads")
            .trim(),
        "20000"
    );
    let err = psql(
        "support",
        "UPDATE orders SET status = 'paid' WHERE order_id = 1",
    )
    .expect_err("support must not update")
    .to_string();
    assert!(err.contains("permission denied"), "{err}");

    // solutions: insert and update (with the sequence), no delete.
    psql(
        "solutions",
        "INSERT INTO orders (customer_id, amount, status) VALUES (1, 9.99, 'pending'); \
         UPDATE customers SET segment = 'smb' WHERE customer_id = 1;",
    )
    .expect("solutions writes");
    let err = psql("solutions", "DELETE FROM orders WHERE order_id = 1")
        .expect_err("no delete")
        .to_string();
    assert!(err.contains("permission denied"), "{err}");

    // dba: everything on the tables, and a member of pii_readers; pii_readers cannot log in.
    psql("dba", "DELETE FROM customer_history WHERE history_id = 1").expect("dba deletes");
    assert_eq!(
        psql("dba", "SELECT pg_has_role('dba', 'pii_readers', 'MEMBER')")
            .expect("membership")
            .trim(),
        "t"
    );
    let err = cluster
        .psql("pii_readers", None, DEMO_DB, "SELECT 1")
        .expect_err("pii_readers is NOLOGIN")
        .to_string();
    assert!(err.contains("not permitted to log in"), "{err}");

    // pgredact: reads the catalog and the tables, updates, creates its own schema; no pg_authid.
    psql(
        "pgredact",
        "CREATE SCHEMA pgredact_own; CREATE TABLE pgredact.t (x int); \
         UPDATE customers SET phone = NULL WHERE customer_id = 2; \
         SELECT count(*) FROM pg_catalog.pg_attribute;",
    )
    .expect("pgredact control-plane privileges");
    let err = psql("pgredact", "SELECT count(*) FROM pg_authid")
        .expect_err("no pg_authid")
        .to_string();
    assert!(err.contains("permission denied"), "{err}");
    let err = psql("support", "CREATE TABLE public.t (x int)")
        .expect_err("no CREATE in public")
        .to_string();
    assert!(err.contains("permission denied"), "{err}");

    // Re-running the script (roles already exist, tables rebuilt) works and restores the data.
    cluster
        .superuser_psql(DEMO_DB, &pgredact::pgcluster::demo_schema_sql())
        .expect("re-running the demo schema");
    assert_eq!(
        psql("support", "SELECT count(*) FROM orders")
            .expect("count")
            .trim(),
        "20000"
    );
    // And loading it into a second database of the same cluster works too.
    support::load_demo(&cluster, "app2");
    assert_eq!(
        cluster
            .psql(
                "support",
                Some("support"),
                "app2",
                "SELECT count(*) FROM customers"
            )
            .expect("count")
            .trim(),
        "10000"
    );
}

/// Creates role `alice` with password `right` and checks who gets in over TCP.
fn check_password_auth(auth: Auth, stored_prefix: &str) {
    let cluster = start(ClusterOptions {
        auth,
        ..Default::default()
    });
    assert_eq!(cluster.auth(), auth);
    cluster
        .superuser_psql("postgres", "CREATE ROLE alice LOGIN PASSWORD 'right'")
        .expect("create alice");
    let stored = cluster
        .superuser_psql(
            "postgres",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'",
        )
        .expect("stored password");
    assert!(
        stored.starts_with(stored_prefix),
        "{auth:?}: stored {stored:?}"
    );

    // psql
    let out = cluster
        .psql("alice", Some("right"), "postgres", "SELECT current_user")
        .expect("psql with the right password");
    assert_eq!(out.trim(), "alice");
    let err = cluster
        .psql("alice", Some("wrong"), "postgres", "SELECT 1")
        .expect_err("psql with a wrong password must fail")
        .to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    let err = cluster
        .psql("alice", None, "postgres", "SELECT 1")
        .expect_err("psql without a password must fail")
        .to_string();
    assert!(err.contains("password"), "{err}");

    // tokio-postgres
    block_on(async {
        let client = cluster
            .connect("alice", Some("right"), "postgres")
            .await
            .unwrap_or_else(|e| panic!("{auth:?}: right password refused: {e}"));
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), "alice");
        let err = cluster
            .connect("alice", Some("wrong"), "postgres")
            .await
            .expect_err("wrong password must be refused")
            .to_string();
        assert!(
            err.contains("password authentication failed"),
            "{auth:?}: {err}"
        );
        assert!(cluster.connect("alice", None, "postgres").await.is_err());
        // The superuser has a password too, so it can log in over TCP whatever the method.
        let su = cluster
            .superuser_connect("postgres")
            .await
            .expect("superuser login");
        su.simple_query("SELECT 1").await.expect("superuser query");
        let err = cluster
            .connect(SUPERUSER, Some("not-the-password"), "postgres")
            .await
            .expect_err("superuser with a wrong password")
            .to_string();
        assert!(err.contains("password authentication failed"), "{err}");
    });
}

#[test]
fn md5_auth_accepts_the_right_password_only() {
    check_password_auth(Auth::Md5, "md5");
}

#[test]
fn scram_auth_accepts_the_right_password_only() {
    check_password_auth(Auth::Scram, "SCRAM-SHA-256$");
}

#[test]
fn trust_auth_needs_no_password() {
    let cluster = start(ClusterOptions::default());
    cluster
        .superuser_psql("postgres", "CREATE ROLE bob LOGIN")
        .expect("create bob");
    assert_eq!(
        cluster
            .psql("bob", None, "postgres", "SELECT current_user")
            .expect("bob")
            .trim(),
        "bob"
    );
    // psql reports SQL errors (ON_ERROR_STOP) and stops at the first one.
    let err = cluster
        .psql("bob", None, "postgres", "SELECT 1/0; SELECT 'not reached'")
        .expect_err("division by zero")
        .to_string();
    assert!(err.contains("division by zero"), "{err}");
    let err = cluster
        .psql("nobody", None, "postgres", "SELECT 1")
        .expect_err("unknown role")
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn stop_is_idempotent_and_drop_removes_the_directory() {
    let mut cluster = start(ClusterOptions::default());
    let data_dir = cluster.data_dir.clone();
    let log_path = cluster.log_path();
    assert!(
        data_dir.join("PG_VERSION").is_file(),
        "{}",
        data_dir.display()
    );
    assert_eq!(
        log_path.parent(),
        data_dir.parent(),
        "server.log sits next to the data dir"
    );
    assert!(
        cluster.read_log().contains("ready to accept connections"),
        "{}",
        cluster.read_log()
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", cluster.port)).is_ok());

    cluster.stop();
    cluster.stop();
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "server still running"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", cluster.port)).is_err(),
        "port {} still accepts connections after stop",
        cluster.port
    );
    assert!(data_dir.exists(), "stop must keep the data dir until drop");
    drop(cluster);
    assert!(
        !data_dir.exists(),
        "drop must remove {}",
        data_dir.display()
    );
    assert!(
        !log_path.exists(),
        "drop must remove {}",
        log_path.display()
    );

    // Drop of a running cluster stops it too.
    let cluster = start(ClusterOptions::default());
    let (port, root) = (cluster.port, cluster.socket_dir().to_path_buf());
    drop(cluster);
    assert!(!root.exists(), "drop must remove {}", root.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still open"
    );
}

#[test]
fn options_reach_postgresql_conf() {
    let cluster = start(ClusterOptions {
        log_statements: true,
        extra_conf: vec![
            ("work_mem".into(), "7MB".into()),
            ("cluster_name".into(), "it's quoted".into()),
        ],
        ..Default::default()
    });
    let out = cluster
        .superuser_psql(
            "postgres",
            "SHOW work_mem; SHOW cluster_name; SHOW fsync; SHOW max_connections; \
             SHOW listen_addresses; SELECT 'sentinel-7f3a'",
        )
        .expect("show");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "7MB",
            "it's quoted",
            "off",
            "200",
            "127.0.0.1",
            "sentinel-7f3a"
        ],
        "{out}"
    );
    let log = cluster.read_log();
    assert!(
        log.contains("statement: SELECT 'sentinel-7f3a'"),
        "log_statement=all: {log}"
    );

    let err = Cluster::start(ClusterOptions {
        extra_conf: vec![("work_mem = '1MB'\nfsync".into(), "on".into())],
        ..Default::default()
    })
    .expect_err("invalid setting names are refused");
    assert!(matches!(err, Error::InvalidSetting(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("invalid setting name"), "{err}");

    // Statements are not logged by default.
    let quiet = start(ClusterOptions::default());
    quiet
        .superuser_psql("postgres", "SELECT 'sentinel-9c1d'")
        .expect("select");
    assert!(!quiet.read_log().contains("sentinel-9c1d"));
}

#[test]
fn connstr_and_bin_dir() {
    let bin = Cluster::bin_dir().expect("PostgreSQL binaries");
    assert!(bin.join("initdb").is_file() && bin.join("pg_ctl").is_file());
    let cluster = start(ClusterOptions::default());
    let s = cluster.connstr("support", Some("p w'd"), "app");
    let config: tokio_postgres::Config = s.parse().expect("connstr parses");
    assert_eq!(config.get_user(), Some("support"));
    assert_eq!(config.get_password(), Some("p w'd".as_bytes()));
    assert_eq!(config.get_ports(), &[cluster.port]);
    assert!(SUPERUSER_PASSWORD.len() > 1);
}

#[test]
fn many_clusters_start_in_parallel() {
    let clusters: Vec<Cluster> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| start(ClusterOptions::default())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start thread"))
            .collect()
    });
    let mut ports: Vec<u16> = clusters.iter().map(|c| c.port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), clusters.len(), "ports must differ: {ports:?}");
    for cluster in &clusters {
        let out = cluster
            .superuser_psql("postgres", "SELECT current_setting('port')")
            .expect("query");
        assert_eq!(out.trim(), cluster.port.to_string());
    }
}

#[test]
fn a_taken_port_is_detected() {
    let first = start(ClusterOptions::default());
    // Force every attempt onto the first cluster's port: start must notice "address in use",
    // retry, and finally give up with a clear message (and clean up after itself).
    let err = Cluster::start(ClusterOptions {
        extra_conf: vec![("port".into(), first.port.to_string())],
        ..Default::default()
    })
    .expect_err("the port is taken");
    assert!(matches!(err, Error::PortsTaken { .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("could not find a free port"), "{err}");
    assert!(err.contains("Address already in use"), "{err}");
    // The first cluster is unaffected.
    assert_eq!(
        first
            .superuser_psql("postgres", "SELECT 1")
            .expect("first still up")
            .trim(),
        "1"
    );
}

/// Not a test on its own: `a_killed_owner_leaves_no_cluster_behind` runs it in a child process.
#[test]
#[ignore = "helper, run by a_killed_owner_leaves_no_cluster_behind"]
fn helper_start_a_cluster_and_hang() {
    if std::env::var_os("PGREDACT_PGCLUSTER_HELPER").is_none() {
        return;
    }
    let cluster = start(ClusterOptions::default());
    println!(
        "PGREDACT_HELPER {} {}",
        cluster.port,
        cluster.socket_dir().display()
    );
    use std::io::Write;
    std::io::stdout().flush().expect("flush");
    std::thread::sleep(std::time::Duration::from_secs(120));
}

#[test]
fn a_killed_owner_leaves_no_cluster_behind() {
    use std::io::BufRead;
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "helper_start_a_cluster_and_hang",
            "--ignored",
            "--nocapture",
        ])
        .env("PGREDACT_PGCLUSTER_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let stdout = child.stdout.take().expect("helper stdout");
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(stdout);
    let (port, dir) = loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read helper stdout");
        assert!(n > 0, "helper exited before starting a cluster");
        if let Some(rest) = line.trim_end().strip_prefix("PGREDACT_HELPER ") {
            let (port, dir) = rest.split_once(' ').expect("port and dir");
            break (
                port.parse::<u16>().expect("port"),
                std::path::PathBuf::from(dir),
            );
        }
    };
    assert!(dir.exists(), "{}", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    child.kill().expect("SIGKILL the helper"); // no Drop runs in the helper
    child.wait().expect("reap the helper");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dir.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!dir.exists(), "{} outlived its owner", dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server on port {port} outlived its owner"
    );
}
