//! The proxy under test: a real PostgreSQL cluster with the demo schema, the real pgredact proxy
//! in front of it (in-process, on a free port), and helpers to talk to both with real clients.
//! Also the test kit of the other suites: bare demo clusters (`cluster`), the admin API's HTTP
//! client (`http`), certificates and TLS on the cluster (`tls`), `pgredact serve` as a process
//! (`serve`), the adversarial fixture (`adv`), the case tables of the data-driven suites
//! (`cases`), a raw wire client (`wire`).
//! Every test binary includes this with `mod support;`; not every binary uses every helper.
#![allow(dead_code)]

use pgredact::config::Config;
use pgredact::pgcluster::{Auth, Cluster, ClusterOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio_postgres::{Client, NoTls};

pub const HASH_KEY: &str = "pgredact-test-hash-key";
pub const DB: &str = "app";

pub struct Env {
    pub cluster: Cluster,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub shared: std::sync::Arc<pgredact::proxy::Shared>,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn set_env() {
    // Same values in every test of the process, so concurrent writes are harmless.
    unsafe {
        std::env::set_var("PGREDACT_TEST_UPSTREAM_PASSWORD", "pgredact");
        std::env::set_var("PGREDACT_TEST_HASH_KEY", HASH_KEY);
    }
}

pub fn config_text(listen: &str, upstream_port: u16) -> String {
    format!(
        "listen = \"{listen}\"\npolicies = \"policies\"\npolicy_reload_secs = 1\n[upstream]\nhost = \"127.0.0.1\"\nport = {upstream_port}\nuser = \"pgredact\"\npassword_env = \"PGREDACT_TEST_UPSTREAM_PASSWORD\"\n[secrets]\nhash_key_env = \"PGREDACT_TEST_HASH_KEY\"\n"
    )
}

/// Writes `policy` as `policies/app.toml` in `dir` (the `policies` of the suites' configs).
pub fn write_policy(dir: &Path, policy: &str) {
    std::fs::create_dir_all(dir.join("policies")).expect("mkdir policies");
    std::fs::write(dir.join("policies/app.toml"), policy).expect("write policy");
}

/// Starts a cluster with the demo schema (plus `extra_sql` as superuser), applies the output of
/// `pgredact setup-sql` as a DBA would, and starts the proxy with `policy`.
pub async fn start(policy: &str, opts: ClusterOptions, extra_sql: &str) -> Env {
    start_with(policy, opts, extra_sql, true).await
}

/// `start`, optionally without running `setup-sql` (the database then fails the privilege check).
pub async fn start_with(policy: &str, opts: ClusterOptions, extra_sql: &str, setup: bool) -> Env {
    set_env();
    let extra = extra_sql.to_string();
    let cluster = tokio::task::spawn_blocking(move || {
        let c = demo_cluster(opts);
        if !extra.is_empty() {
            c.superuser_psql(DB, &extra)
                .unwrap_or_else(|e| panic!("extra sql: {e}"));
        }
        c
    })
    .await
    .expect("cluster task");
    let dir = std::env::temp_dir().join(format!(
        "pgredact-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    write_policy(&dir, policy);
    let cfg_path = dir.join("pgredact.toml");
    std::fs::write(&cfg_path, config_text("127.0.0.1:0", cluster.port)).expect("config");
    let cfg = Config::load(&cfg_path).expect("config loads");
    if setup {
        apply_setup_sql(&cluster, &cfg).await;
    }
    let (listener, shared) = pgredact::proxy::bind(cfg).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(pgredact::proxy::run(listener, shared.clone()));
    Env {
        cluster,
        addr,
        dir,
        shared,
    }
}

/// The demo policy followed by `tables` (TOML for a suite's own tables).
pub fn example_policy_with(tables: &str) -> String {
    format!("{}\n{tables}", pgredact::demo::EXAMPLE_POLICY)
}

/// `start` with the demo policy followed by `tables`, on a cluster with the default options and
/// `extra_sql` (the suite's own tables and grants).
pub async fn start_extended(tables: &str, extra_sql: &str) -> Env {
    start(
        &example_policy_with(tables),
        ClusterOptions::default(),
        extra_sql,
    )
    .await
}

/// Runs the output of `pgredact setup-sql` for database `app` as the superuser.
pub async fn apply_setup_sql(cluster: &Cluster, cfg: &Config) {
    let sql = pgredact::wall::setup_sql(cfg, Some(DB))
        .await
        .unwrap_or_else(|e| panic!("setup-sql: {e}"));
    tokio::task::block_in_place(|| {
        cluster
            .superuser_psql(DB, &sql)
            .unwrap_or_else(|e| panic!("running setup-sql: {e}\n{sql}"))
    });
}

pub async fn start_default() -> Env {
    start(
        pgredact::demo::EXAMPLE_POLICY,
        ClusterOptions {
            auth: Auth::Scram,
            log_statements: true,
            ..Default::default()
        },
        "",
    )
    .await
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The password of each demo role is its name.
pub fn password(user: &str) -> &str {
    match user {
        "postgres" => "postgres",
        other => other,
    }
}

impl Env {
    pub fn proxy_connstr(&self, user: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={} dbname={db} application_name=pgredact-test",
            self.addr.port(),
            password(user)
        )
    }

    pub async fn proxy(&self, user: &str) -> Client {
        self.try_proxy(user, DB)
            .await
            .unwrap_or_else(|e| panic!("connect {user}: {e}"))
    }

    pub async fn try_proxy(&self, user: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
        let (c, conn) = tokio_postgres::connect(&self.proxy_connstr(user, db), NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(c)
    }

    /// A direct connection to PostgreSQL (bypassing the proxy).
    pub async fn direct(&self, user: &str) -> Client {
        self.cluster
            .connect(user, Some(password(user)), DB)
            .await
            .unwrap_or_else(|e| panic!("direct connect: {e}"))
    }

    /// The proxy's configuration, loaded again from its file.
    pub fn config(&self) -> Config {
        Config::load(&self.dir.join("pgredact.toml")).expect("config loads")
    }

    /// Makes the proxy re-read the catalog of database `app` now, as the DDL trigger's NOTIFY
    /// asks it to.
    pub async fn refresh_catalog(&self) {
        let db = self.shared.db(DB).await.unwrap();
        db.refresh_since(&self.shared, std::time::Instant::now())
            .await
            .unwrap();
    }

    /// Runs `pgredact check` on the proxy's configuration and asserts that it passes; its lines.
    pub async fn check_passes(&self) -> Vec<String> {
        let (lines, failed) = pgredact::check::run(&self.config()).await;
        assert!(!failed, "{lines:#?}");
        lines
    }

    /// Runs psql against the proxy; returns (success, stdout, stderr).
    pub fn psql(&self, user: &str, sql: &str) -> (bool, String, String) {
        psql_at(self.addr.port(), user, DB, sql)
    }
}

pub fn psql_at(port: u16, user: &str, db: &str, sql: &str) -> (bool, String, String) {
    psql_conn(
        &format!("host=127.0.0.1 port={port} user={user} dbname={db}"),
        user,
        sql,
    )
}

/// psql with a full connection string (password: the role's); returns (ok, stdout, stderr).
pub fn psql_conn(conn: &str, user: &str, sql: &str) -> (bool, String, String) {
    let bin = Cluster::bin_dir()
        .map(|d| d.join("psql"))
        .unwrap_or_else(|_| "psql".into());
    let bin = if bin.exists() {
        bin
    } else {
        PathBuf::from("psql")
    };
    let mut cmd = Command::new(bin);
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(conn)
        .env("PGPASSWORD", password(user))
        .env_remove("PGSERVICE")
        .env("PGCONNECT_TIMEOUT", "30");
    // One argument may hold at most 128 KiB (Linux's MAX_ARG_STRLEN): longer scripts, such as
    // the output of `setup-sql` with its word lists, go through a file.
    let script = std::env::temp_dir().join(format!(
        "pgredact-psql-{}-{}.sql",
        std::process::id(),
        rand_suffix()
    ));
    if sql.len() > 100_000 {
        std::fs::write(&script, sql).expect("write the psql script");
        cmd.arg("-1").arg("-f").arg(&script);
    } else {
        cmd.arg("-c").arg(sql);
    }
    let out = cmd.output().expect("run psql");
    let _ = std::fs::remove_file(&script);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The SQLSTATE of an error, or "" for none.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// Asserts that `r` is a 42501 refusal whose message contains `want`.
pub fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, tokio_postgres::Error>,
    want: &str,
    what: &str,
) {
    match r {
        Ok(v) => panic!("{what}: expected a refusal, got {v:?}"),
        Err(e) => {
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            assert_eq!(code(&e), "42501", "{what}: {msg}");
            assert!(msg.contains(want), "{what}: message {msg:?} lacks {want:?}");
        }
    }
}

/// Reads `sql` right after DDL that protects what it reads: masked (`want`), or refused while
/// the proxy's catalog catches up; never raw.
pub async fn masked_or_refused(c: &Client, sql: &str, want: &[&str]) {
    match rows(c, sql).await {
        Ok(r) => assert_eq!(r, want),
        Err(e) => assert_eq!(code(&e), "42501", "{e}"),
    }
}

/// Text of all simple-query rows, cells joined by '|'.
pub async fn rows(c: &Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect())
}
pub mod adv;
pub mod cases;
pub mod cluster;
pub mod http;
pub mod masks;
pub mod serve;
pub mod tls;
pub mod wire;

pub use cluster::*;

/// Waits until exactly `want` sessions are running a statement whose text starts with `prefix`
/// (pg_stat_activity, read as `su`, which must see other roles' queries). A test that cancels or
/// signals while a statement runs waits for this first, never for a fixed time.
pub async fn wait_active(su: &Client, prefix: &str, want: i64) {
    let started = std::time::Instant::now();
    loop {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE state = 'active' AND query LIKE $1",
                &[&format!("{prefix}%")],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n == want {
            return;
        }
        assert!(
            started.elapsed() < serve::PATIENCE,
            "{n} sessions run {prefix:?}, waiting for {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
