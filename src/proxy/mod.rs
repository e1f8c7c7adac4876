//! The proxy: listener, per-session tasks, and the background tasks that keep policies and
//! catalogs current.

pub mod frame;
pub mod scram;
pub mod session;
pub mod state;

use crate::config::Config;
use crate::policy;
pub use state::Shared;
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
pub async fn bind(cfg: Config) -> Result<(TcpListener, Arc<Shared>), String> {
    let dir = cfg.policies_dir();
    let set = policy::load_dir(&dir, 1)?;
    let tls = match &cfg.tls {
        Some(t) => Some(crate::tls::acceptor(t, &cfg.base_dir)?),
        None => None,
    };
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    Ok((listener, Shared::with_tls(cfg, set, tls)))
}

/// Serves clients forever.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    tokio::spawn(policy_reloader(shared.clone()));
    tokio::spawn(catalog_refresher(shared.clone()));
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                tracing::debug!(%peer, "connection");
                let sh = shared.clone();
                tokio::spawn(async move {
                    session::handle(sh, sock).await;
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn serve(cfg: Config) -> Result<(), String> {
    let (l, shared) = bind(cfg).await?;
    tracing::info!("pgredact listening on {}", shared.cfg.listen);
    run(l, shared).await;
    Ok(())
}

/// Re-reads the policy directory when it changes; a broken file is reported (file:line: reason)
/// and the last good policy set stays in force.
async fn policy_reloader(shared: Arc<Shared>) {
    let dir = shared.cfg.policies_dir();
    let mut last = dir_fingerprint(&dir);
    let mut version = shared.policy_set().version;
    let period = Duration::from_secs(shared.cfg.policy_reload_secs.max(1));
    loop {
        tokio::time::sleep(period).await;
        let fp = dir_fingerprint(&dir);
        if fp == last {
            continue;
        }
        last = fp;
        match policy::load_dir(&dir, version + 1) {
            Ok(set) => {
                version += 1;
                tracing::info!("policies reloaded (version {version})");
                shared.set_policies(set).await;
            }
            Err(e) => tracing::error!("policy reload failed, keeping the last good policies: {e}"),
        }
    }
}

async fn catalog_refresher(shared: Arc<Shared>) {
    let period = Duration::from_secs(shared.cfg.catalog_refresh_secs.max(1));
    loop {
        tokio::time::sleep(period).await;
        for db in shared.all_dbs().await {
            if let Err(e) = db.periodic_refresh(&shared).await {
                tracing::warn!("{e}");
            }
            db.prune_ddl_log().await;
        }
    }
}
