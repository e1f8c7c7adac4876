//! `pgredact serve` as a real process: its configuration, start, signals, log and exit.
#![allow(dead_code)]

use super::{config_text, password, write_policy};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a poll waits before the test gives up (a hang, not a slow machine).
pub const PATIENCE: Duration = Duration::from_secs(120);

pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `pgredact.toml` (with `top` before the defaults of the other suites and `upstream`
/// inside `[upstream]`) and the demo policy into `dir`.
pub fn write_config(
    dir: &Path,
    listen: &str,
    upstream_port: u16,
    top: &str,
    upstream: &str,
) -> PathBuf {
    write_policy(dir, pgredact::demo::EXAMPLE_POLICY);
    let base = config_text(listen, upstream_port);
    // A value set in `top` replaces the default of the other suites.
    let base = if top.contains("policy_reload_secs") {
        base.replace("policy_reload_secs = 1\n", "")
    } else {
        base
    };
    let text = format!("{top}{base}").replace("[upstream]\n", &format!("[upstream]\n{upstream}"));
    let p = dir.join("pgredact.toml");
    std::fs::write(&p, text).expect("config");
    p
}

/// Starts `pgredact serve` (its log in `serve.log` next to `cfg`) and returns at once.
pub fn spawn_serve(cfg: &Path) -> (Proc, PathBuf) {
    let log = cfg.with_file_name("serve.log");
    let child = Proc(
        Command::new(env!("CARGO_BIN_EXE_pgredact"))
            .args(["serve", "--config"])
            .arg(cfg)
            .env("PGREDACT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn pgredact serve"),
    );
    (child, log)
}

/// Starts `pgredact serve` on `port` and waits until it accepts a masked login.
pub async fn serve(cfg: &Path, port: u16) -> (Proc, PathBuf) {
    let (mut child, log) = spawn_serve(cfg);
    let started = Instant::now();
    loop {
        if let Some(st) = child.0.try_wait().expect("try_wait") {
            panic!("pgredact serve exited: {st}\n{}", read(&log));
        }
        if accepts(port, "support").await {
            return (child, log);
        }
        assert!(
            started.elapsed() < PATIENCE,
            "serve never came up\n{}",
            read(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

pub fn signal(child: &Proc, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.0.id().to_string())
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{sig}");
}

pub async fn wait_exit(child: &mut Proc, log: &Path) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(st) = child.0.try_wait().expect("try_wait") {
            return st;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "serve did not exit\n{}",
            read(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_log(log: &Path, needle: &str) -> String {
    let started = Instant::now();
    loop {
        let text = read(log);
        if text.contains(needle) {
            return text;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the log never said {needle:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `user` can log in through the proxy on `port`.
pub async fn accepts(port: u16, user: &str) -> bool {
    let conn = format!(
        "host=127.0.0.1 port={port} user={user} password={} dbname=app sslmode=disable",
        password(user)
    );
    match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
        Ok((_c, conn)) => {
            drop(_c);
            let _ = conn.await;
            true
        }
        Err(_) => false,
    }
}
