//! HTTP admin API (axum), on the `[admin] listen` address:
//!
//! - `GET /healthz`: liveness, no token.
//! - `POST /v1/customers/remove-pii`: body `{"customer_ids": [1, "2", ...]}` (optional
//!   `"database"`, `"requester"`) or a `text/csv` body (one ID a line; `?database=` and the
//!   `X-Requester` header instead). At most [`MAX_IDS`] IDs: more is 413. Answers 202 with the job
//!   ID; a background worker in this server runs the job.
//!   A request whose plan is blocked is answered 422 with the `blockers` (no job is created).
//!   An optional `callback_url` gets a signed notice when the job ends (see [`callback`]).
//! - `GET /v1/jobs/{id}` (optional `?database=`): state and counts.
//! - `GET /v1/jobs` (`state`, `kind`, `since`, `until`, `external_id`, `limit`, `cursor`): jobs,
//!   newest first.
//! - `GET /v1/customers/{id}/status`: forgotten, pending in a job, or not, from keyed hashes
//!   only (the forget list, the hashes kept next to a job's batches).
//! - `GET /v1/jobs/{id}/receipt`, `GET /v1/customers/{id}/receipt`: signed receipts (see
//!   [`receipt`]).
//! - `POST /v1/jobs/{id}/retry` (optional `?database=`): a failed or blocked job runs again
//!   (202); 409 for a job in another state.
//! - `POST /v1/jobs/{id}/cancel` (optional `?database=`, optional JSON body `{"requester",
//!   "reason"}`): a queued, blocked or failed job is cancelled (200): its IDs and their keyed
//!   hashes are removed, a `cancel` audit record is written, its callback says `cancelled`. 409
//!   for a running or done job, and for a failed one that already put customers on the forget
//!   list.
//!
//! - `GET /metrics`: Prometheus/OpenMetrics text (see `crate::metrics`), no token.
//! - `GET /readyz`: 200 `ready` when the proxy runs in this process, is not shutting down, has
//!   policies loaded and PostgreSQL answers `SELECT 1` on a control connection; 503 and one line
//!   saying why otherwise. No token.
//!
//! Every `/v1` call needs `Authorization: Bearer <token>`, the token being the value of the
//! environment variable named by `[admin] token_env`. Errors are JSON `{"error": "..."}`.
//! The token, a concurrency limit (503) and a per-token rate limit (429, both with
//! `Retry-After`) are checked before a handler runs, so no body is read for a refused request
//! (see `guard`). With `[tls]`, the listener speaks HTTPS only (see `tls_listener`).
//! `/healthz`, `/readyz` and `/metrics` are served without the token on purpose: load balancers
//! and Prometheus scrapers do not send one, and nothing they return is secret (counts, bounded
//! categories, policy versions and fingerprints; no role, address, statement or value).

pub mod callback;
mod customers;
mod guard;
mod http;
mod jobs;
pub mod pool;
pub mod receipt;
mod receipts;
mod requests;
mod state;
mod submit;
mod tls_listener;
mod worker;

use customers::*;
pub use http::*;
pub use jobs::*;
use receipts::*;
pub use state::*;
use submit::*;
pub use worker::*;

use crate::config::Config;
use crate::forget::{self, csv, Faults, Origin, Session, Target};
use crate::policy::{load_dir, DatabasePolicy, PolicySet};
use crate::proxy::Shared;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Most customer IDs one request may carry.
pub const MAX_IDS: usize = 50_000;
/// Largest request body read (bigger bodies are refused with 413 before parsing).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// How often the worker looks for unfinished jobs when not woken up.
const POLL: Duration = Duration::from_secs(5);

/// Why the admin server could not start or serve, or read what `/metrics` reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the admin API needs a bearer token: set the environment variable {0} ([admin] token_env)"
    )]
    NoToken(String),
    /// The policy files do not load (their own `file:line: reason` message).
    #[error("{0}")]
    Policy(crate::policy::Error),
    /// The `[tls]` certificate or key does not load.
    #[error("admin API: {0}")]
    Tls(String),
    #[error("admin API: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("admin API: {0}")]
    Serve(#[source] std::io::Error),
    /// The connection pool was closed.
    #[error("admin connection pool: {0}")]
    Pool(#[source] tokio::sync::AcquireError),
    /// Opening or refreshing a forget session failed.
    #[error(transparent)]
    Forget(#[from] forget::Error),
    #[error("connecting timed out")]
    ConnectTimeout,
    #[error("no connection")]
    NoConnection,
    #[error("the query timed out")]
    QueryTimeout,
    #[error("{}", crate::tls::error_chain(.0))]
    Query(#[source] tokio_postgres::Error),
    #[error("{0}")]
    Row(#[source] tokio_postgres::Error),
}

/// Why `/readyz` answers 503: the line after `not ready: `.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("the proxy does not run in this process")]
    NoProxy,
    #[error("shutting down")]
    ShuttingDown,
    #[error("no policy is loaded")]
    NoPolicy,
    /// Opening the control connection failed (the proxy's own message).
    #[error("{0}")]
    Connect(crate::proxy::Error),
    #[error("no control connection")]
    NoControlConnection,
    #[error(
        "PostgreSQL at {addr} did not answer: {}",
        crate::tls::error_chain(source)
    )]
    NoAnswer {
        addr: String,
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL at {addr} did not answer SELECT 1 within {secs} s")]
    Timeout { addr: String, secs: u64 },
}

/// Binds `[admin] listen` and builds the admin state (serving `proxy`'s metrics and readiness
/// when given), so that errors are reported before anything is served.
pub async fn bind(
    cfg: &Config,
    proxy: Option<Arc<Shared>>,
) -> Result<(tokio::net::TcpListener, AdminState), Error> {
    let mut state = AdminState::from_config(cfg)?;
    state.proxy = proxy;
    let listen = cfg
        .admin
        .as_ref()
        .map(|a| a.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:9187".to_string());
    // A broken certificate or key is reported before anything listens.
    tls_acceptor(cfg)?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| Error::Listen {
            addr: listen.clone(),
            source,
        })?;
    Ok((listener, state))
}

/// The acceptor of the `[tls]` certificate, when `[tls]` is configured (the admin API then
/// speaks HTTPS only).
fn tls_acceptor(cfg: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, Error> {
    match &cfg.tls {
        Some(tls) => crate::tls::acceptor(tls, &cfg.base_dir)
            .map(Some)
            .map_err(Error::Tls),
        None => Ok(None),
    }
}

/// Serves the router on a bound listener (no job worker): HTTPS with the `[tls]` certificate
/// when `[tls]` is configured, plain HTTP otherwise.
pub async fn serve(listener: tokio::net::TcpListener, state: AdminState) -> Result<(), Error> {
    let app = router(state.clone());
    match tls_acceptor(&state.cfg)? {
        Some(acceptor) => {
            let tls = tls_listener::TlsListener::new(listener, acceptor).map_err(Error::Serve)?;
            axum::serve(tls, app).await
        }
        None => axum::serve(listener, app).await,
    }
    .map_err(Error::Serve)
}

/// Serves the admin API on a bound listener with its job worker, until the process ends
/// (`crate::proxy::serve` runs it beside the proxy).
pub async fn serve_bound(
    listener: tokio::net::TcpListener,
    state: AdminState,
) -> Result<(), Error> {
    if let Ok(a) = listener.local_addr() {
        let scheme = if state.cfg.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(
            "admin API listening on {scheme}://{a} (/metrics and /readyz without a token)"
        );
    }
    spawn_worker(state.clone());
    serve(listener, state).await
}
