//! The proxy's lifecycle: the drain on SIGTERM and SIGINT, the reload on SIGHUP, the client
//! connection limit, and the login, idle and connect timeouts (the settings a reload changes in
//! place).
//!
//! Shutdown has two steps, each a `CancellationToken` that every session watches:
//! - `drain`: the listener closes; logins in progress end with 57P01; a session that is idle
//!   (its last ReadyForQuery said `I` and nothing is in flight) is closed at once, any other
//!   when it next becomes idle, so running statements and open transactions finish;
//! - `halt`, when `shutdown_timeout_secs` has passed (or at a second signal): every session
//!   left gets FATAL 57P01 and is closed; a statement still running is cancelled in PostgreSQL.

use super::shared::Shared;
use crate::config::Config;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a session that cannot be closed in order (its client does not read) may hold up
/// the exit after the deadline.
pub const HALT_GRACE: Duration = Duration::from_secs(2);

/// The settings a reload (SIGHUP) changes in place. Zero seconds means no limit, except for
/// `shutdown_timeout_secs`, where it means at once.
pub struct Settings {
    max_client_conn: AtomicUsize,
    login_timeout_secs: AtomicU64,
    shutdown_timeout_secs: AtomicU64,
    masked_idle_timeout_secs: AtomicU64,
    unmasked_idle_timeout_secs: AtomicU64,
    connect_timeout_secs: AtomicU64,
}

fn secs(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_secs(v))
}

impl Settings {
    pub fn new(cfg: &Config) -> Settings {
        let s = Settings {
            max_client_conn: AtomicUsize::new(0),
            login_timeout_secs: AtomicU64::new(0),
            shutdown_timeout_secs: AtomicU64::new(0),
            masked_idle_timeout_secs: AtomicU64::new(0),
            unmasked_idle_timeout_secs: AtomicU64::new(0),
            connect_timeout_secs: AtomicU64::new(0),
        };
        s.apply(cfg);
        s
    }

    /// Takes the reloadable settings of `cfg`; returns the ones that changed, as `name old -> new`.
    pub fn apply(&self, cfg: &Config) -> Vec<String> {
        let mut changed = Vec::new();
        let mut set = |name: &str, a: &AtomicU64, v: u64| {
            let old = a.swap(v, Ordering::Relaxed);
            if old != v {
                changed.push(format!("{name} {old} -> {v}"));
            }
        };
        set(
            "login_timeout_secs",
            &self.login_timeout_secs,
            cfg.login_timeout_secs,
        );
        set(
            "shutdown_timeout_secs",
            &self.shutdown_timeout_secs,
            cfg.shutdown_timeout_secs,
        );
        set(
            "masked_idle_timeout_secs",
            &self.masked_idle_timeout_secs,
            cfg.masked_idle_timeout_secs,
        );
        set(
            "unmasked_idle_timeout_secs",
            &self.unmasked_idle_timeout_secs,
            cfg.unmasked_idle_timeout_secs,
        );
        set(
            "[upstream] connect_timeout_secs",
            &self.connect_timeout_secs,
            cfg.upstream.connect_timeout_secs,
        );
        let old = self
            .max_client_conn
            .swap(cfg.max_client_conn, Ordering::Relaxed);
        if old != cfg.max_client_conn {
            changed.push(format!("max_client_conn {old} -> {}", cfg.max_client_conn));
        }
        changed
    }

    pub fn max_client_conn(&self) -> usize {
        self.max_client_conn.load(Ordering::Relaxed)
    }
    pub fn login_timeout(&self) -> Option<Duration> {
        secs(self.login_timeout_secs.load(Ordering::Relaxed))
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs.load(Ordering::Relaxed))
    }
    /// The idle-session timeout of masked or unmasked sessions.
    pub fn idle_timeout(&self, masked: bool) -> Option<Duration> {
        secs(if masked {
            self.masked_idle_timeout_secs.load(Ordering::Relaxed)
        } else {
            self.unmasked_idle_timeout_secs.load(Ordering::Relaxed)
        })
    }
    pub fn connect_timeout(&self) -> Option<Duration> {
        secs(self.connect_timeout_secs.load(Ordering::Relaxed))
    }
}

/// Why pgredact ends an established session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The drain found it idle, or the deadline passed.
    Shutdown,
    /// Idle outside a transaction for this long.
    Idle { masked: bool, secs: u64 },
}

impl Stop {
    /// The FATAL error the client gets: (SQLSTATE, message).
    pub fn error(&self) -> (&'static str, String) {
        match self {
            Stop::Shutdown => ("57P01", SHUTTING_DOWN.to_string()),
            Stop::Idle { masked, secs } => (
                "57P05",
                format!(
                    "pgredact: terminating connection due to idle-session timeout ({}_idle_timeout_secs = {secs})",
                    if *masked { "masked" } else { "unmasked" }
                ),
            ),
        }
    }

    /// Whether this reason to end a session still holds now, for a session whose last event
    /// (client message or ReadyForQuery) was at `last_event`, under idle timeout `limit`.
    pub(crate) fn due(&self, limit: Option<std::time::Duration>, last_event: Instant) -> bool {
        match (self, limit) {
            (Stop::Idle { .. }, Some(d)) => Instant::now() >= last_event + d,
            (Stop::Idle { .. }, None) => false,
            (Stop::Shutdown, _) => true,
        }
    }
}

pub const SHUTTING_DOWN: &str = "pgredact is shutting down";

pub struct Lifecycle {
    pub settings: Settings,
    drain: CancellationToken,
    halt: CancellationToken,
    /// Every client connection admitted under `max_client_conn`, from accept to close.
    sessions: TaskTracker,
    /// Serializes reloads (the periodic policy check and SIGHUP).
    pub(crate) reload: tokio::sync::Mutex<()>,
}

impl Lifecycle {
    pub fn new(cfg: &Config) -> Lifecycle {
        Lifecycle {
            settings: Settings::new(cfg),
            drain: CancellationToken::new(),
            halt: CancellationToken::new(),
            sessions: TaskTracker::new(),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts the drain; a second call skips to the deadline.
    pub fn shutdown(&self, why: &str) {
        if self.drain.is_cancelled() {
            tracing::info!("{why} again: closing every session now");
            self.halt.cancel();
        } else {
            tracing::info!("{why}: shutting down");
            self.drain.cancel();
        }
    }

    /// Resolves when the drain has started.
    pub async fn draining(&self) {
        self.drain.cancelled().await
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Resolves when the deadline has passed.
    pub async fn halted(&self) {
        self.halt.cancelled().await
    }

    /// Resolves `HALT_GRACE` after the deadline: a session still not closed is dropped.
    pub async fn halted_long_ago(&self) {
        self.halt.cancelled().await;
        tokio::time::sleep(HALT_GRACE).await
    }

    /// Client connections open (logins in progress included).
    pub fn open_connections(&self) -> usize {
        self.sessions.len()
    }

    /// Runs a client connection, counted against `max_client_conn` and waited for at shutdown.
    pub fn spawn_session<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.sessions.spawn(f);
    }

    /// After the listener has closed: waits for the sessions to end, up to the deadline, then
    /// closes the rest.
    pub async fn wait_for_sessions(&self) {
        self.sessions.close();
        let timeout = self.settings.shutdown_timeout();
        tracing::info!(
            "shutting down: no new connections; {} client connection(s) open; idle sessions close now, running statements and transactions get up to {} s",
            self.sessions.len(),
            timeout.as_secs()
        );
        tokio::select! {
            _ = self.sessions.wait() => {
                tracing::info!("shutdown: every session has ended");
                return;
            }
            _ = tokio::time::sleep(timeout) => tracing::info!(
                "shutdown deadline ({} s) passed: closing {} remaining session(s) with 57P01",
                timeout.as_secs(),
                self.sessions.len()
            ),
            _ = self.halt.cancelled() => {}
        }
        self.halt.cancel();
        if tokio::time::timeout(2 * HALT_GRACE, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown: {} session(s) could not be closed in order; exiting without them",
                self.sessions.len()
            );
        } else {
            tracing::info!("shutdown: every session has ended");
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
pub async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs `f` until `by` (without a limit when None).
pub async fn within<F: std::future::Future>(
    by: Option<Instant>,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match by {
        Some(d) => tokio::time::timeout_at(d, f).await,
        None => Ok(f.await),
    }
}

/// Re-reads the configuration file: the connection limit and the timeouts change now; other
/// changed settings are named as needing a restart. A file that does not load changes nothing.
pub fn reload_config(shared: &Shared) {
    let path = &shared.cfg.file;
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("configuration reload failed, keeping the running settings: {e}");
            return;
        }
    };
    let changed = shared.life.settings.apply(&new);
    if changed.is_empty() {
        tracing::info!(
            "configuration reloaded from {}: no reloadable setting changed",
            path.display()
        );
    } else {
        tracing::info!(
            "configuration reloaded from {}: {}",
            path.display(),
            changed.join(", ")
        );
    }
    let restart = shared.cfg.restart_needed(&new);
    if !restart.is_empty() {
        tracing::warn!(
            "configuration: {} changed in {} but take(s) effect only after a restart",
            restart.join(", "),
            path.display()
        );
    }
}

/// SIGTERM and SIGINT start the drain (a second one closes every session at once); SIGHUP
/// reloads the configuration's reloadable settings and the policies.
#[cfg(unix)]
pub fn listen_for_signals(shared: Arc<Shared>) -> Result<(), super::Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |k: SignalKind, name: &'static str| {
        signal(k).map_err(|source| super::Error::Signal { name, source })
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => shared.life.shutdown("SIGTERM"),
                _ = int.recv() => shared.life.shutdown("SIGINT"),
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration and the policies");
                    tokio::spawn(super::reload(shared.clone()));
                }
            }
        }
    });
    Ok(())
}

/// Ctrl-C starts the drain (a second one closes every session at once).
#[cfg(not(unix))]
pub fn listen_for_signals(shared: Arc<Shared>) -> Result<(), super::Error> {
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            shared.life.shutdown("Ctrl-C");
        }
    });
    Ok(())
}
