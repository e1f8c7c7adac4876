//! The proxy: listener, per-session tasks, and the background tasks that keep policies and
//! catalogs current.

mod admit;
mod auth;
mod cancel;
pub mod database;
pub mod error;
mod handshake;
pub mod lifecycle;
mod masked;
pub mod peers;
pub mod scram;
pub mod session;
pub mod shared;
mod unmasked;

use crate::config::Config;
use crate::policy;
pub use error::Error;
pub use shared::Shared;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

/// A fingerprint of the policy directory (names, sizes, modification times).
fn dir_fingerprint(dir: &Path) -> Vec<(String, u64, SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        m.len(),
                        m.modified().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Binds the listener and returns it with the shared state (so callers, like tests and the demo,
/// learn the bound address before serving).
pub async fn bind(cfg: Config) -> Result<(TcpListener, Arc<Shared>), Error> {
    let setup = |e: String| Error::Setup(e);
    let dir = cfg.policies_dir();
    let set = policy::load_dir(&dir, 1)?;
    let tls = match &cfg.tls {
        Some(t) => Some(crate::tls::acceptor(t, &cfg.base_dir).map_err(setup)?),
        None => None,
    };
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: cfg.listen.clone(),
            source,
        })?;
    let audit = match &cfg.audit {
        Some(a) => {
            Some(crate::audit::start(a, &cfg.base_dir).map_err(|e| Error::Setup(e.to_string()))?)
        }
        None => None,
    };
    let shared = Shared::with_tls(cfg, set, tls);
    if let Some(a) = audit {
        let _ = shared.audit.set(a);
    }
    Ok((listener, shared))
}

/// Serves clients until the drain starts (SIGTERM, SIGINT), then waits for the sessions (see
/// `lifecycle`) and returns.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    tokio::spawn(policy_reloader(shared.clone()));
    tokio::spawn(catalog_refresher(shared.clone()));
    let life = &shared.life;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = life.draining() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, peer)) => {
                tracing::debug!(%peer, "connection");
                let sh = shared.clone();
                let limit = life.settings.max_client_conn();
                if life.open_connections() < limit {
                    life.spawn_session(session::handle(sh, sock, true));
                } else {
                    // Refused after its startup packet (so cancel requests still work), before
                    // anything is opened for it; not counted, and bounded by the login timeout.
                    tracing::warn!(%peer, "refusing a client: max_client_conn ({limit}) reached");
                    tokio::spawn(session::handle(sh, sock, false));
                }
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    life.wait_for_sessions().await;
    for db in shared.all_dbs() {
        db.unregister(&shared).await;
    }
    if let Some(a) = shared.audit.get() {
        a.flush().await;
    }
}

/// Serves until SIGTERM or SIGINT and the drain that follows; SIGHUP reloads. With `[admin]`,
/// the admin server runs beside the proxy (with its metrics and readiness) until the proxy ends.
pub async fn serve(cfg: Config) -> Result<(), Error> {
    let (l, shared) = bind(cfg).await?;
    let admin_failed = |e: &dyn std::fmt::Display| Error::Setup(e.to_string());
    let admin = match &shared.cfg.admin {
        Some(_) => Some(
            crate::admin::bind(&shared.cfg, Some(shared.clone()))
                .await
                .map_err(|e| admin_failed(&e))?,
        ),
        None => None,
    };
    lifecycle::listen_for_signals(shared.clone())?;
    tracing::info!("pgredact listening on {}", shared.cfg.listen);
    shared.load_policy_databases();
    match admin {
        Some((listener, state)) => tokio::select! {
            _ = run(l, shared) => Ok(()),
            r = crate::admin::serve_bound(listener, state) => r.map_err(|e| admin_failed(&e)),
        },
        None => {
            run(l, shared).await;
            Ok(())
        }
    }
}

/// SIGHUP: the reloadable settings of the configuration file, then the policies.
pub async fn reload(shared: Arc<Shared>) {
    lifecycle::reload_config(&shared);
    reload_policies(&shared).await;
}

/// Re-reads the policy directory and installs it when it differs from the policies in force. A
/// broken file is reported (file:line: reason) and the last good policy set stays in force.
pub async fn reload_policies(shared: &Arc<Shared>) {
    let _serial = shared.life.reload.lock().await;
    let current = shared.policy_set();
    let version = current.version + 1;
    match policy::load_dir(&shared.cfg.policies_dir(), version) {
        Ok(set) if set.by_database == current.by_database => {
            tracing::info!("policies unchanged (version {})", current.version)
        }
        Ok(set) => {
            tracing::info!("policies reloaded (version {version})");
            shared.set_policies(set).await;
            // A database the new policies name for the first time is loaded (and published) now.
            shared.load_new_policy_databases();
        }
        Err(e) => tracing::error!("policy reload failed, keeping the last good policies: {e}"),
    }
}

/// Checks the policy directory every `policy_reload_secs` and reloads it when it changed.
async fn policy_reloader(shared: Arc<Shared>) {
    let dir = shared.cfg.policies_dir();
    let mut last = dir_fingerprint(&dir);
    let period = Duration::from_secs(shared.cfg.policy_reload_secs.max(1));
    loop {
        tokio::time::sleep(period).await;
        let fp = dir_fingerprint(&dir);
        if fp == last {
            continue;
        }
        last = fp;
        reload_policies(&shared).await;
    }
}

async fn catalog_refresher(shared: Arc<Shared>) {
    let period = Duration::from_secs(shared.cfg.catalog_refresh_secs.max(1));
    loop {
        tokio::time::sleep(period).await;
        for db in shared.all_dbs() {
            if let Err(e) = db.periodic_refresh(&shared).await {
                tracing::warn!("{e}");
            }
            db.prune_ddl_log().await;
            db.heartbeat(&shared).await;
        }
    }
}
