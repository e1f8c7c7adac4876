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
mod guard;
pub mod pool;
pub mod receipt;
mod requests;
mod tls_listener;

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

/// Shared state of the admin server.
#[derive(Clone)]
pub struct AdminState {
    pub cfg: Arc<Config>,
    pub token: Arc<String>,
    /// The last good policy set; re-read from the policy directory on every request (a broken
    /// file is logged and the last good set stays, as in the proxy).
    pub policies: Arc<std::sync::RwLock<Arc<PolicySet>>>,
    pub hash_key: Option<Arc<Vec<u8>>>,
    /// Wakes the job worker when a job is submitted.
    pub wake: Arc<Notify>,
    /// IDs per batch of API jobs.
    pub batch_size: usize,
    /// The proxy of this process, when it runs one (metrics and readiness read it).
    pub proxy: Option<Arc<Shared>>,
    /// What `/metrics` and `/readyz` keep between requests.
    probes: Arc<Probes>,
    /// Concurrency and rate limits of `/v1`.
    limits: Arc<guard::Limits>,
    /// The key receipts are signed with (`[admin] receipt_key_env`), and that variable's name.
    receipt_key: Option<Arc<Vec<u8>>>,
    receipt_key_env: Arc<String>,
    /// Signs and sends completion callbacks; None without a key (`[admin] callback_key_env`,
    /// else the receipt key): requests with a `callback_url` are then refused.
    callback: Option<callback::Deliverer>,
    callback_key_env: Arc<String>,
    /// The `/v1` handlers' connections, a few per database, kept between requests.
    pool: Arc<pool::Pool>,
}

/// Connections and caches of `/metrics` and `/readyz`.
#[derive(Default)]
struct Probes {
    /// The control connection `/readyz` checks PostgreSQL with.
    ready: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// Per database: the connection forget job counts are read with, and when they were read;
    /// held through a scrape.
    forget: tokio::sync::Mutex<ForgetCounts>,
}

#[derive(Default)]
struct ForgetCounts {
    clients: HashMap<String, tokio_postgres::Client>,
    read_at: Option<std::time::Instant>,
}

impl AdminState {
    /// State from a config: token and hash key from the environment, policies from disk.
    pub fn from_config(cfg: &Config) -> Result<AdminState, Error> {
        let token_env = cfg
            .admin
            .as_ref()
            .map(|a| a.token_env.clone())
            .unwrap_or_else(|| "PGREDACT_ADMIN_TOKEN".to_string());
        let token = std::env::var(&token_env).unwrap_or_default();
        if token.trim().is_empty() {
            return Err(Error::NoToken(token_env));
        }
        let policies = load_dir(&cfg.policies_dir(), 1).map_err(Error::Policy)?;
        let admin = cfg.admin.clone().unwrap_or_default();
        let env_key = |var: &str| {
            std::env::var(var)
                .ok()
                .filter(|k| !k.is_empty())
                .map(|k| Arc::new(k.into_bytes()))
        };
        let receipt_key = env_key(&admin.receipt_key_env);
        let callback = env_key(&admin.callback_key_env)
            .or_else(|| receipt_key.clone())
            .map(|key| {
                let ca = admin.callback_ca.as_ref().map(|p| cfg.base_dir.join(p));
                callback::Deliverer::new(key, admin.callback_attempts, ca.as_deref())
            });
        Ok(AdminState {
            cfg: Arc::new(cfg.clone()),
            token: Arc::new(token),
            policies: Arc::new(std::sync::RwLock::new(Arc::new(policies))),
            hash_key: cfg.hash_key().map(Arc::new),
            wake: Arc::new(Notify::new()),
            batch_size: forget::DEFAULT_BATCH_SIZE,
            proxy: None,
            probes: Arc::new(Probes::default()),
            limits: Arc::new(guard::Limits::new(
                admin.max_concurrent_requests,
                admin.requests_per_minute,
                admin.request_burst,
            )),
            receipt_key,
            receipt_key_env: Arc::new(admin.receipt_key_env.clone()),
            callback,
            callback_key_env: Arc::new(admin.callback_key_env.clone()),
            pool: Arc::new(pool::Pool::default()),
        })
    }

    /// The same state, serving the metrics and readiness of `proxy`.
    pub fn with_proxy(mut self, proxy: Arc<Shared>) -> AdminState {
        self.proxy = Some(proxy);
        self
    }

    /// The current policies: the directory as it is now, or the last good set when it is broken.
    fn current_policies(&self) -> Arc<PolicySet> {
        match load_dir(&self.cfg.policies_dir(), 1) {
            Ok(set) => {
                let set = Arc::new(set);
                if let Ok(mut g) = self.policies.write() {
                    *g = set.clone();
                }
                set
            }
            Err(e) => {
                tracing::error!(
                    "admin API: policy reload failed, keeping the last good policies: {e}"
                );
                match self.policies.read() {
                    Ok(g) => g.clone(),
                    Err(p) => p.into_inner().clone(),
                }
            }
        }
    }

    fn policy(&self, database: Option<&str>) -> Result<Arc<DatabasePolicy>, ApiError> {
        let policies = self.current_policies();
        match database {
            Some(db) => policies.get(db).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no policy for database {db:?}"),
                )
            }),
            None => {
                let mut dbs = subject_databases(&policies);
                match dbs.len() {
                    1 => Ok(dbs.remove(0)),
                    0 => Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "no policy has a table with a `subject`: nothing to forget".to_string(),
                    )),
                    _ => Err(ApiError::bad(
                        "several databases have subject tables: say which with \"database\" (JSON) or ?database=".to_string(),
                    )),
                }
            }
        }
    }

    /// A new session of its own (the job worker's, kept by the worker).
    async fn open_session(&self, policy: Arc<DatabasePolicy>) -> Result<Session, ApiError> {
        let target = Target::from_config(&self.cfg, &policy.database);
        Session::open(&target, policy, self.hash_key.as_deref().map(Vec::as_slice))
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }

    /// A pooled session with the policy resolved against the catalog as it is now (for
    /// requests that plan, parse IDs or change jobs).
    async fn session(&self, policy: Arc<DatabasePolicy>) -> Result<pool::Pooled, ApiError> {
        self.pooled(policy, true).await
    }

    /// A pooled session whose connection is all the caller needs (job status, lists, receipts).
    async fn connection(&self, policy: Arc<DatabasePolicy>) -> Result<pool::Pooled, ApiError> {
        self.pooled(policy, false).await
    }

    async fn pooled(
        &self,
        policy: Arc<DatabasePolicy>,
        refresh: bool,
    ) -> Result<pool::Pooled, ApiError> {
        let target = Target::from_config(&self.cfg, &policy.database);
        self.pool
            .get(
                &target,
                policy,
                self.hash_key.as_deref().map(Vec::as_slice),
                refresh,
            )
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }
}

fn subject_databases(policies: &PolicySet) -> Vec<Arc<DatabasePolicy>> {
    let mut v: Vec<Arc<DatabasePolicy>> = policies
        .by_database
        .values()
        .filter(|p| p.tables.values().any(|t| t.subject.is_some()))
        .cloned()
        .collect();
    v.sort_by(|a, b| a.database.cmp(&b.database));
    v
}

/// An error answer: status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for `Retry-After` (429 and 503 of the limits).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> ApiError {
        ApiError {
            status,
            message,
            retry_after: None,
        }
    }
    fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }
    fn bad(message: String) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// The routes (state included). Every `/v1` route passes [`guard::guard`] (concurrency limit,
/// bearer token, rate limit) before its handler runs, so that a request refused there never has
/// its body read.
pub fn router(state: AdminState) -> Router {
    let v1 = Router::new()
        .route("/v1/customers/remove-pii", post(remove_pii))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(job_status))
        .route("/v1/customers/{id}/status", get(customer_status))
        .route("/v1/jobs/{id}/receipt", get(job_receipt))
        .route("/v1/customers/{id}/receipt", get(customer_receipt))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// How long a readiness or forget-count query may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Forget job counts are read at most this often (a faster scraper gets the last counts).
const FORGET_COUNTS_EVERY: Duration = Duration::from_secs(1);

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.readiness().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => {
            tracing::debug!("/readyz: not ready: {why}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    // One scrape at a time: the gauges read at scrape time are rebuilt, then encoded.
    let mut counts = state.probes.forget.lock().await;
    state.update_gauges(&mut counts).await;
    let text = crate::metrics::encode();
    drop(counts);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

impl AdminState {
    /// Ok when the proxy can serve: it runs, is not draining, has policies, and PostgreSQL
    /// answers on a control connection (kept open between probes, reopened when it closed).
    async fn readiness(&self) -> Result<(), NotReady> {
        let Some(shared) = &self.proxy else {
            return Err(NotReady::NoProxy);
        };
        if shared.life.is_draining() {
            return Err(NotReady::ShuttingDown);
        }
        let set = shared.policy_set();
        let mut dbs: Vec<&String> = set.by_database.keys().collect();
        dbs.sort();
        let Some(first) = dbs.first() else {
            return Err(NotReady::NoPolicy);
        };
        let db = shared.cfg.upstream.database.as_deref().unwrap_or(first);
        let mut ready = self.probes.ready.lock().await;
        if ready.as_ref().is_none_or(|c| c.is_closed()) {
            *ready = None;
            *ready = Some(
                shared
                    .control_connect(db)
                    .await
                    .map_err(NotReady::Connect)?,
            );
        }
        let Some(client) = ready.as_ref() else {
            return Err(NotReady::NoControlConnection);
        };
        let ping = tokio::time::timeout(PROBE_TIMEOUT, client.simple_query("SELECT 1")).await;
        match ping {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => {
                *ready = None;
                Err(NotReady::NoAnswer {
                    addr: shared.upstream_addr(),
                    source,
                })
            }
            Err(_) => {
                *ready = None;
                Err(NotReady::Timeout {
                    addr: shared.upstream_addr(),
                    secs: PROBE_TIMEOUT.as_secs(),
                })
            }
        }
    }

    /// Gauges read at scrape time: the policy version and fingerprints of the proxy, and the
    /// forget jobs per state in every database with subject tables.
    async fn update_gauges(&self, counts: &mut ForgetCounts) {
        let m = crate::metrics::get();
        if let Some(shared) = &self.proxy {
            let set = shared.policy_set();
            m.policy_version
                .set(i64::try_from(set.version).unwrap_or(i64::MAX));
            m.policy_info.clear();
            for (db, p) in &set.by_database {
                m.policy_info
                    .get_or_create(&crate::metrics::PolicyLabels {
                        database: db.clone(),
                        fingerprint: p.fingerprint(),
                    })
                    .set(1);
            }
        }
        if counts
            .read_at
            .is_some_and(|t| t.elapsed() < FORGET_COUNTS_EVERY)
        {
            return;
        }
        counts.read_at = Some(std::time::Instant::now());
        let policies = match &self.proxy {
            Some(shared) => shared.policy_set(),
            None => self.current_policies(),
        };
        m.forget_jobs.clear();
        for policy in subject_databases(&policies) {
            let db = policy.database.clone();
            match self.forget_counts(&mut counts.clients, &db).await {
                Ok(by_state) => {
                    for (state, n) in by_state {
                        m.forget_jobs
                            .get_or_create(&crate::metrics::ForgetLabels {
                                database: db.clone(),
                                state,
                            })
                            .set(n);
                    }
                }
                Err(e) => {
                    counts.clients.remove(&db);
                    m.forget_query_errors.inc();
                    tracing::debug!(database = %db, "/metrics: reading the forget jobs failed: {e}");
                }
            }
        }
    }

    /// Forget jobs of `db` per state (every state, zero included).
    async fn forget_counts(
        &self,
        clients: &mut HashMap<String, tokio_postgres::Client>,
        db: &str,
    ) -> Result<Vec<(&'static str, i64)>, Error> {
        if clients.get(db).is_none_or(|c| c.is_closed()) {
            let target = Target::from_config(&self.cfg, db);
            let c = tokio::time::timeout(PROBE_TIMEOUT, target.connect())
                .await
                .map_err(|_| Error::ConnectTimeout)??;
            clients.insert(db.to_string(), c);
        }
        let client = clients.get(db).ok_or(Error::NoConnection)?;
        let rows = tokio::time::timeout(
            PROBE_TIMEOUT,
            client.query(
                "SELECT state, pg_catalog.count(*) FROM pgredact.forget_jobs \
                 WHERE kind = 'forget' GROUP BY state",
                &[],
            ),
        )
        .await
        .map_err(|_| Error::QueryTimeout)?;
        let rows = match rows {
            Ok(r) => r,
            // No job was ever submitted in this database: no table yet.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                Vec::new()
            }
            Err(e) => return Err(Error::Query(e)),
        };
        let mut out: Vec<(&'static str, i64)> =
            forget::jobs::STATES.iter().map(|s| (*s, 0)).collect();
        for r in rows {
            let state: String = r.try_get(0).map_err(Error::Row)?;
            let n: i64 = r.try_get(1).map_err(Error::Row)?;
            if let Some(slot) = out.iter_mut().find(|(s, _)| *s == state) {
                slot.1 = n;
            }
        }
        Ok(out)
    }
}

fn too_many(n: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "too many customer IDs: {n} in one request, the limit is {MAX_IDS}; split the request into several"
        ),
    )
}

#[derive(Deserialize, Default)]
struct DbQuery {
    database: Option<String>,
}

/// Query parameters of `POST /v1/customers/remove-pii` (a CSV body has no other place for them;
/// JSON members win over them).
#[derive(Deserialize, Default)]
struct SubmitQuery {
    database: Option<String>,
    external_id: Option<String>,
    regulation: Option<String>,
    deadline: Option<String>,
    callback_url: Option<String>,
}

/// A JSON member that must be a string when present.
fn json_str(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(format!("\"{key}\" must be a string"))),
    }
}

/// The IDs of a request, not yet validated against the subject types.
enum RawIds {
    Json(Vec<csv::RawId>),
    Csv(Bytes),
}

/// A request as parsed from its query, headers and body (JSON members win over the query).
struct Submission {
    database: Option<String>,
    fields: requests::Fields,
    callback_url: Option<String>,
    requester: Option<String>,
    raw: RawIds,
}

async fn remove_pii(
    State(state): State<AdminState>,
    Query(q): Query<SubmitQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let Submission {
        database,
        fields,
        callback_url,
        requester,
        raw,
    } = parse_submission(q, &headers, body)?;
    let mut info = requests::request_info(&fields)?;
    if let Some(url) = callback_url {
        check_callback_url(&state, &url)?;
        info.callback_url = Some(url);
    }
    let policy = state.policy(database.as_deref())?;
    let mut session = state.session(policy).await?;
    let list = checked_ids(&session, raw)?;
    let origin = Origin {
        requester: requester
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "api".to_string()),
        source: "api".to_string(),
    };
    check_deadline(&session, &info).await?;
    // A repeated request id returns its job, before anything is planned.
    if let Some(answer) = repeated_request(&session, &mut info, &list.ids).await? {
        return Ok(answer);
    }
    // Planned now: a blocked request is answered here, and no job holds its IDs.
    let plan = session
        .plan(&list.ids)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if plan.has_blockers() {
        return Ok(blocked(&plan));
    }
    let job = match session
        .submit_request(&origin, &list, state.batch_size, Some(&plan), &info)
        .await
        .map_err(internal_error)?
    {
        forget::jobs::Created::New(id) => id,
        forget::jobs::Created::Existing(id, hash) => {
            return existing_job(&session, &info, id, hash).await
        }
    };
    state.wake.notify_one();
    let db = session.spec.database.clone();
    let st = session.status(job).await.map_err(internal_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "job_id": job,
            "database": db,
            "state": "queued",
            "ids": list.ids.len(),
            "duplicates": list.duplicates,
            "external_id": info.external_id,
            "regulation": info.regulation,
            "deadline": st.and_then(|s| s.deadline),
            "callback_url": info.callback_url,
            "status_url": format!("/v1/jobs/{job}?database={db}"),
        })),
    )
        .into_response())
}

/// A request's IDs, checked against the subject type: at most [`MAX_IDS`] (duplicates
/// included), and at least one.
fn checked_ids(session: &Session, raw: RawIds) -> Result<csv::IdList, ApiError> {
    let list = match raw {
        RawIds::Json(ids) => csv::from_raw(&ids, session.spec.id_kind)
            .map_err(|e| ApiError::bad(format!("{e}; nothing was changed")))?,
        RawIds::Csv(bytes) => session
            .parse_csv(&bytes)
            .map_err(|e| ApiError::bad(format!("CSV body: {e}; nothing was changed")))?,
    };
    let total = list.ids.len() + list.duplicates;
    if total > MAX_IDS {
        return Err(too_many(total));
    }
    if list.ids.is_empty() {
        return Err(ApiError::bad("no customer IDs in the request".to_string()));
    }
    Ok(list)
}

/// A 500 for a failure of the control session.
fn internal_error(e: forget::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The answer to a request body that could not be read.
fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY_BYTES} bytes; the limit is {MAX_IDS} customer IDs a request"),
        )
    } else {
        ApiError::new(e.status(), format!("cannot read the request body: {e}"))
    }
}

/// Reads a request's fields and IDs from its query, headers and body (CSV or JSON, by content
/// type).
fn parse_submission(
    q: SubmitQuery,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Submission, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let mut sub = Submission {
        database: q.database,
        fields: requests::Fields {
            external_id: q.external_id,
            regulation: q.regulation,
            deadline: q.deadline,
        },
        callback_url: q.callback_url,
        requester: headers
            .get("x-requester")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        raw: RawIds::Json(Vec::new()),
    };
    sub.raw = if ctype.starts_with("text/csv") || ctype.starts_with("text/plain") {
        let fields = csv::csv_fields(&body)
            .map_err(|e| ApiError::bad(format!("CSV body: {e}; nothing was changed")))?;
        // A header line may be among the fields: one more than the limit is decided after parsing.
        if fields.len() > MAX_IDS + 1 {
            return Err(too_many(fields.len()));
        }
        RawIds::Csv(body)
    } else if ctype.starts_with("application/json") {
        RawIds::Json(parse_json_body(&body, &mut sub)?)
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type {ctype:?}: use application/json or text/csv"),
        ));
    };
    Ok(sub)
}

/// Reads a JSON request body: its members override the fields of `sub`; returns its
/// `customer_ids`.
fn parse_json_body(body: &[u8], sub: &mut Submission) -> Result<Vec<csv::RawId>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
    let obj = v.as_object().ok_or_else(|| {
        ApiError::bad("JSON body must be an object: {\"customer_ids\": [...]}".to_string())
    })?;
    if let Some(d) = obj.get("database") {
        sub.database = Some(
            d.as_str()
                .ok_or_else(|| ApiError::bad("\"database\" must be a string".to_string()))?
                .to_string(),
        );
    }
    for (key, slot) in [
        ("external_id", &mut sub.fields.external_id),
        ("regulation", &mut sub.fields.regulation),
        ("deadline", &mut sub.fields.deadline),
    ] {
        if let Some(v) = json_str(obj, key)? {
            *slot = Some(v);
        }
    }
    if let Some(u) = json_str(obj, "callback_url")? {
        sub.callback_url = Some(u);
    }
    if let Some(r) = obj.get("requester") {
        sub.requester = Some(
            r.as_str()
                .ok_or_else(|| ApiError::bad("\"requester\" must be a string".to_string()))?
                .to_string(),
        );
    }
    let arr = obj
        .get("customer_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::bad("missing \"customer_ids\": an array of integers or strings".to_string())
        })?;
    if arr.len() > MAX_IDS {
        return Err(too_many(arr.len()));
    }
    let mut ids = Vec::with_capacity(arr.len());
    for (i, x) in arr.iter().enumerate() {
        ids.push(match x {
            Value::Number(n) => csv::RawId::Int(n.as_i64().ok_or_else(|| {
                ApiError::bad(format!("customer_ids[{i}]: {n} is not an integer ID"))
            })?),
            Value::String(s) => csv::RawId::Text(s.clone()),
            other => {
                return Err(ApiError::bad(format!(
                    "customer_ids[{i}]: expected an integer or a string, got {other}"
                )))
            }
        });
    }
    Ok(ids)
}

/// Checks a request's callback URL, and that callbacks can be signed.
fn check_callback_url(state: &AdminState, url: &str) -> Result<(), ApiError> {
    callback::parse_url(url).map_err(|e| ApiError::bad(e.to_string()))?;
    if state.callback.is_none() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "callbacks are signed with a key: set the environment variable {} ([admin] callback_key_env) \
                 or the receipt key ({}); nothing was created",
                state.callback_key_env, state.receipt_key_env
            ),
        ));
    }
    Ok(())
}

/// Checks a request's deadline literal with PostgreSQL.
async fn check_deadline(
    session: &Session,
    info: &forget::jobs::RequestInfo,
) -> Result<(), ApiError> {
    if let Some(d) = &info.deadline {
        if let Err(e) = session
            .client
            .query_one("SELECT CAST($1 AS text)::timestamptz", &[d])
            .await
        {
            return Err(ApiError::bad(format!(
                "\"deadline\" {d:?}: {}",
                forget::db_error(&e)
            )));
        }
    }
    Ok(())
}

/// For a request with an `external_id`: records the hash of its IDs in `info` and, when a job
/// has that request id already, the answer for it.
async fn repeated_request(
    session: &Session,
    info: &mut forget::jobs::RequestInfo,
    ids: &[String],
) -> Result<Option<Response>, ApiError> {
    let Some(ext) = &info.external_id else {
        return Ok(None);
    };
    let hash: String = session
        .client
        .query_one(
            "SELECT pgredact.hmac_hex(pg_catalog.string_agg(v, pg_catalog.chr(10) ORDER BY v COLLATE \"C\")) \
             FROM pg_catalog.unnest(CAST($1 AS pg_catalog.text[])) v",
            &[&ids],
        )
        .await
        .map_err(|e| internal_error(e.into()))?
        .get(0);
    let existing = session
        .client
        .query_opt(
            "SELECT id, request_hash FROM pgredact.forget_jobs WHERE external_id = $1",
            &[ext],
        )
        .await
        .map_err(|e| internal_error(e.into()))?;
    info.request_hash = Some(hash);
    match existing {
        Some(row) => Ok(Some(
            existing_job(session, info, row.get(0), row.get(1)).await?,
        )),
        None => Ok(None),
    }
}

/// The answer to a request whose `external_id` names a job already: 200 with that job when the
/// IDs are the same, 409 when they differ (nothing is created either way).
async fn existing_job(
    session: &Session,
    info: &forget::jobs::RequestInfo,
    id: i64,
    hash: Option<String>,
) -> Result<Response, ApiError> {
    let ext = info.external_id.as_deref().unwrap_or_default();
    if hash != info.request_hash {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "external_id {ext:?} already names job {id}, with other customer IDs: nothing was created; \
                 use a new external_id for a new request"
            ),
        ));
    }
    let st = session
        .status(id)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("job {id} vanished")))?;
    let db = session.spec.database.clone();
    Ok((
        StatusCode::OK,
        Json(json!({
            "job_id": id,
            "database": db,
            "state": st.state,
            "ids": st.ids_total,
            "duplicates": st.ids_duplicate,
            "external_id": st.external_id,
            "regulation": st.regulation,
            "deadline": st.deadline,
            "existing": true,
            "status_url": format!("/v1/jobs/{id}?database={db}"),
        })),
    )
        .into_response())
}

/// 422: the plan is blocked; nothing was changed and no job was created.
fn blocked(plan: &forget::Plan) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "error": format!(
                "the request is blocked: nothing was changed and no job was created; fix the blockers and send it again: {}",
                plan.blockers.join("; ")
            ),
            "blockers": plan.blockers,
            "plan": plan,
        })),
    )
        .into_response()
}

/// The job id of a `/v1/jobs/{id}` path.
fn job_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad(format!("job id {id:?} is not a number")))
}

/// The answer to a retry or cancel of job `id` that could not be done: 404 for an unknown job,
/// 409 when its state does not allow it, 500 otherwise.
fn job_action_error(e: forget::RetryError, id: i64, db: &str) -> ApiError {
    match e {
        forget::RetryError::NotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no job {id} in database {db:?}"),
        ),
        forget::RetryError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
        e @ forget::RetryError::Db(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// `POST /v1/jobs/{id}/retry`: a failed or blocked job runs again (it kept its IDs).
async fn retry_job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<DbQuery>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let policy = state.policy(q.database.as_deref())?;
    let mut session = state.session(policy).await?;
    let db = session.spec.database.clone();
    let new_state = session
        .retry(id)
        .await
        .map_err(|e| job_action_error(e, id, &db))?;
    state.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "job_id": id,
            "database": db,
            "state": new_state,
            "status_url": format!("/v1/jobs/{id}?database={db}"),
        })),
    )
        .into_response())
}

/// Longest `reason` or `requester` of a cancel request.
const MAX_CANCEL_TEXT: usize = 1000;

/// `POST /v1/jobs/{id}/cancel` (optional `?database=`; optional JSON body `{"requester": ...,
/// "reason": ...}`, or the `X-Requester` header): a queued, blocked or failed job is cancelled
/// (200 with its status); 409 for a running, finalizing, done or cancelled job, and for a failed
/// one whose customers are already on the forget list (see [`forget::exec::cancel`]).
async fn cancel_job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<DbQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let body =
        body.map_err(|e| ApiError::new(e.status(), format!("cannot read the request body: {e}")))?;
    let mut requester = headers
        .get("x-requester")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut reason = None;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            ApiError::bad("JSON body must be an object: {\"reason\": \"...\"}".to_string())
        })?;
        if let Some(r) = json_str(obj, "requester")? {
            requester = Some(r);
        }
        reason = json_str(obj, "reason")?;
    }
    for (name, v) in [("requester", &requester), ("reason", &reason)] {
        if v.as_ref()
            .is_some_and(|s| s.chars().count() > MAX_CANCEL_TEXT)
        {
            return Err(ApiError::bad(format!(
                "\"{name}\" is longer than {MAX_CANCEL_TEXT} characters"
            )));
        }
    }
    let requester = requester
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "api".to_string());
    let reason = reason.filter(|r| !r.trim().is_empty());
    let policy = state.policy(q.database.as_deref())?;
    let mut session = state.session(policy).await?;
    let db = session.spec.database.clone();
    let done = session
        .cancel(id, &requester, reason.as_deref())
        .await
        .map_err(|e| job_action_error(e, id, &db))?;
    // Its callback (if any) is due now.
    state.wake.notify_one();
    let st = session
        .status(id)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")))?;
    let mut out = serde_json::to_value(&st)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(o) = out.as_object_mut() {
        o.insert("previous_state".into(), json!(done.previous_state));
        o.insert("ids_removed".into(), json!(done.ids_removed));
    }
    Ok(Json(out).into_response())
}

async fn job_status(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<DbQuery>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let policy = state.policy(q.database.as_deref())?;
    let session = state.connection(Arc::clone(&policy)).await?;
    let st = forget::jobs::status(&session.client, id)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no job {id} in database {:?}", policy.database),
            )
        })?;
    Ok(Json(st).into_response())
}

/// Most jobs `GET /v1/jobs` returns at once.
pub const MAX_LIST: i64 = 1000;

#[derive(Deserialize, Default)]
struct ListQuery {
    database: Option<String>,
    /// Comma-separated states.
    state: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    external_id: Option<String>,
    limit: Option<i64>,
    /// The `next_cursor` of the previous page (jobs with smaller ids follow).
    cursor: Option<i64>,
}

/// `GET /v1/jobs`: jobs newest first, filtered, a page at a time.
async fn list_jobs(
    State(state): State<AdminState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let states = parse_states(q.state.as_deref())?;
    if let Some(k) = &q.kind {
        if k != "forget" && k != "unforget" {
            return Err(ApiError::bad(format!(
                "unknown kind {k:?}: forget or unforget"
            )));
        }
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::bad(format!(
            "limit must be between 1 and {MAX_LIST}"
        )));
    }
    let since = q
        .since
        .as_deref()
        .map(|d| requests::instant_literal("since", d))
        .transpose()?;
    let until = q
        .until
        .as_deref()
        .map(|d| requests::instant_literal("until", d))
        .transpose()?;
    let policy = state.policy(q.database.as_deref())?;
    let session = state.connection(Arc::clone(&policy)).await?;
    let client = &session.client;
    let rows = query_jobs(client, &q, &states, &since, &until, limit).await?;
    let more = rows.len() as i64 > limit;
    let jobs: Vec<Value> = rows.iter().take(limit as usize).map(job_summary).collect();
    let next = if more {
        jobs.last().and_then(|j| j["job_id"].as_i64())
    } else {
        None
    };
    Ok(Json(json!({
        "database": policy.database,
        "jobs": jobs,
        "next_cursor": next,
    }))
    .into_response())
}

/// The `state` filter of a job listing: comma-separated job states.
fn parse_states(state: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
    match state {
        None => Ok(None),
        Some(s) => {
            let v: Vec<String> = s
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect();
            if let Some(bad) = v
                .iter()
                .find(|x| !forget::jobs::STATES.contains(&x.as_str()))
            {
                return Err(ApiError::bad(format!(
                    "unknown state {bad:?}: one of {}",
                    forget::jobs::STATES.join(", ")
                )));
            }
            Ok(Some(v))
        }
    }
}

/// One page of jobs (one more than `limit`, to tell whether more follow), newest first.
async fn query_jobs(
    client: &tokio_postgres::Client,
    q: &ListQuery,
    states: &Option<Vec<String>>,
    since: &Option<String>,
    until: &Option<String>,
    limit: i64,
) -> Result<Vec<tokio_postgres::Row>, ApiError> {
    let ts =
        |c: &str| format!("to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')");
    let query = format!(
        "SELECT id, kind, state, external_id, regulation, requester, source, {}, {}, {}, \
                CASE WHEN deadline IS NULL THEN NULL WHEN state = 'done' THEN finished_at <= deadline \
                     WHEN now() > deadline THEN false END, \
                ids_total::int8, error \
         FROM pgredact.forget_jobs \
         WHERE ($1::text[] IS NULL OR state = ANY ($1)) AND ($2::text IS NULL OR kind = $2) \
           AND ($3::text IS NULL OR created_at >= $3::timestamptz) AND ($4::text IS NULL OR created_at < $4::timestamptz) \
           AND ($5::text IS NULL OR external_id = $5) AND ($6::int8 IS NULL OR id < $6) \
         ORDER BY id DESC LIMIT $7",
        ts("created_at"),
        ts("finished_at"),
        ts("deadline")
    );
    match client
        .query(
            &query,
            &[
                states,
                &q.kind,
                since,
                until,
                &q.external_id,
                &q.cursor,
                &(limit + 1),
            ],
        )
        .await
    {
        Ok(r) => Ok(r),
        // No job was ever submitted in this database.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            Ok(Vec::new())
        }
        Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => Err(ApiError::bad(
            format!("since/until: {}", forget::db_error(&e)),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            forget::db_error(&e),
        )),
    }
}

/// One job of a job listing.
fn job_summary(r: &tokio_postgres::Row) -> Value {
    json!({
        "job_id": r.get::<_, i64>(0),
        "kind": r.get::<_, String>(1),
        "state": r.get::<_, String>(2),
        "external_id": r.get::<_, Option<String>>(3),
        "regulation": r.get::<_, Option<String>>(4),
        "requester": r.get::<_, String>(5),
        "source": r.get::<_, String>(6),
        "created_at": r.get::<_, String>(7),
        "finished_at": r.get::<_, Option<String>>(8),
        "deadline": r.get::<_, Option<String>>(9),
        "deadline_met": r.get::<_, Option<bool>>(10),
        "ids_total": r.get::<_, i64>(11),
        "error": r.get::<_, Option<String>>(12),
    })
}

/// `GET /v1/customers/{id}/status`: whether the customer is forgotten, or waits in a job,
/// looked up by the keyed hash of the ID only: on the forget list (`subject_hash`), then in the
/// batches of jobs that still hold it (`forget_batches.id_hashes`), never by a stored raw ID.
/// The ID is never logged nor echoed.
///
/// `state`: `forgotten` (on the list, its job done), `pending` (a queued job holds it, or its
/// job is running or finalizing: on the list and suppressed, anonymization under way), `failed`
/// or `blocked` (its job ended so and keeps the ID for a retry), `not_forgotten` (also for a
/// customer whose only job was cancelled: cancelling removes the keyed hashes, so no job id).
async fn customer_status(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<DbQuery>,
) -> Result<Response, ApiError> {
    let policy = state.policy(q.database.as_deref())?;
    let session = state.session(policy).await?;
    let canonical = canonical_id(&session, &id)?;
    let hash: Vec<u8> = session
        .client
        .query_one(
            "SELECT pg_catalog.decode(pgredact.hmac_hex($1), 'hex')",
            &[&canonical],
        )
        .await
        .map_err(db_internal)?
        .get(0);
    if let Some(listed) = listed_status(&session, &hash).await? {
        return Ok(Json(listed).into_response());
    }
    Ok(Json(waiting_status(&session, &hash).await?).into_response())
}

/// A 500 for a failed query of the control session.
fn db_internal(e: tokio_postgres::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, forget::db_error(&e))
}

/// The status of a customer on the forget list (by keyed hash), or `None` when not on it.
async fn listed_status(session: &Session, hash: &[u8]) -> Result<Option<Value>, ApiError> {
    let row = session
        .client
        .query_opt(
            "SELECT to_char(l.forgotten_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), l.job_id, \
                    j.external_id, j.state \
             FROM pgredact.forget_list l LEFT JOIN pgredact.forget_jobs j ON j.id = l.job_id \
             WHERE l.subject_hash = $1",
            &[&hash],
        )
        .await
        .map_err(db_internal)?;
    Ok(row.map(|r| {
        let job_state: Option<String> = r.get(3);
        let st = match job_state.as_deref() {
            None | Some(forget::jobs::DONE) => "forgotten",
            Some(forget::jobs::FAILED) => "failed",
            Some(_) => "pending",
        };
        json!({
            "forgotten": true,
            "state": st,
            "forgotten_at": r.get::<_, String>(0),
            "job_id": r.get::<_, Option<i64>>(1),
            "external_id": r.get::<_, Option<String>>(2),
            "job_state": job_state,
        })
    }))
}

/// The status of a customer not on the forget list: a job that holds the ID and has not put it
/// there (queued, or blocked before its start), found by the keyed hashes kept next to its
/// batches; else `not_forgotten`.
async fn waiting_status(session: &Session, hash: &[u8]) -> Result<Value, ApiError> {
    let waiting = session
        .client
        .query_opt(
            "SELECT j.id, j.state, j.external_id, \
                    to_char(j.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
             FROM pgredact.forget_batches b JOIN pgredact.forget_jobs j ON j.id = b.job_id \
             WHERE b.id_hashes @> ARRAY[$1::bytea] AND j.kind = 'forget' \
               AND j.state IN ('queued', 'running', 'finalizing', 'blocked', 'failed') \
             ORDER BY j.state IN ('queued', 'running', 'finalizing') DESC, j.id LIMIT 1",
            &[&hash],
        )
        .await
        .map_err(db_internal)?;
    Ok(match waiting {
        Some(r) => {
            let job_state: String = r.get(1);
            let st = match job_state.as_str() {
                forget::jobs::BLOCKED => "blocked",
                forget::jobs::FAILED => "failed",
                _ => "pending",
            };
            json!({
                "forgotten": false,
                "state": st,
                "job_id": r.get::<_, i64>(0),
                "external_id": r.get::<_, Option<String>>(2),
                "job_state": job_state,
                "requested_at": r.get::<_, String>(3),
            })
        }
        None => json!({ "forgotten": false, "state": "not_forgotten" }),
    })
}

/// The canonical form of one customer ID from a path, for this database's subject type. Errors
/// never repeat the ID (it may be an e-mail address).
fn canonical_id(session: &Session, id: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad(
            "the customer ID in the path is not one valid ID for this database's subject column type"
                .to_string(),
        )
    };
    if id.contains(',') || id.trim().is_empty() {
        return Err(bad());
    }
    let list = session.parse_ids(id).map_err(|_| bad())?;
    match <[String; 1]>::try_from(list.ids) {
        Ok([one]) => Ok(one),
        Err(_) => Err(bad()),
    }
}

/// `GET /v1/jobs/{id}/receipt`: the signed receipt of a done forget job.
async fn job_receipt(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<DbQuery>,
) -> Result<Response, ApiError> {
    let key = state.receipt_key()?;
    let id = job_id(&id)?;
    let policy = state.policy(q.database.as_deref())?;
    let session = state.connection(policy).await?;
    let receipt = job_receipt_doc(&session.client, id).await?;
    signed_response(&key, receipt)
}

/// `GET /v1/customers/{id}/receipt`: the receipt of the job that forgot this customer, with the
/// customer's keyed hash and the time the customer joined the forget list.
async fn customer_receipt(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<DbQuery>,
) -> Result<Response, ApiError> {
    let key = state.receipt_key()?;
    let policy = state.policy(q.database.as_deref())?;
    let session = state.session(policy).await?;
    let canonical = canonical_id(&session, &id)?;
    let row = session
        .client
        .query_opt(
            "SELECT pg_catalog.encode(l.subject_hash, 'hex'), \
                    to_char(l.forgotten_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), l.job_id \
             FROM pgredact.forget_list l WHERE l.subject_hash = pg_catalog.decode(pgredact.hmac_hex($1), 'hex')",
            &[&canonical],
        )
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, forget::db_error(&e)))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "this customer is not on the forget list: no receipt".to_string(),
            )
        })?;
    let job: Option<i64> = row.get(2);
    let job = job.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this customer's forget list entry names no job: no receipt".to_string(),
        )
    })?;
    let mut receipt = job_receipt_doc(&session.client, job).await?;
    if let Value::Object(m) = &mut receipt {
        m.insert("kind".into(), json!("customer"));
        m.insert(
            "subject".into(),
            json!({
                "keyed_hash": row.get::<_, String>(0),
                "forgotten_at": row.get::<_, String>(1),
            }),
        );
    }
    signed_response(&key, receipt)
}

impl AdminState {
    fn receipt_key(&self) -> Result<Arc<Vec<u8>>, ApiError> {
        self.receipt_key.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "receipts are signed with a key: set the environment variable {} ([admin] receipt_key_env)",
                    self.receipt_key_env
                ),
            )
        })
    }
}

/// The unsigned receipt of job `id`: 404 when there is none, 409 unless it is a done forget job.
async fn job_receipt_doc(client: &tokio_postgres::Client, id: i64) -> Result<Value, ApiError> {
    let st = forget::jobs::status(client, id)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {id}")))?;
    if st.kind != "forget" || st.state != forget::jobs::DONE {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job {id} ({}) is {}: a receipt is issued for a forget job that ended done (verified)",
                st.kind, st.state
            ),
        ));
    }
    // Every table the job covered: those it changed and those verification re-queried.
    let mut tables = serde_json::Map::new();
    if let Some(Value::Object(left)) = st
        .verification
        .as_ref()
        .and_then(|v| v.get("rows_with_pii_left"))
    {
        for t in left.keys() {
            tables.insert(t.clone(), json!(0));
        }
    }
    for (t, n) in &st.rows_changed {
        tables.insert(t.clone(), n.clone());
    }
    let issued: String = client
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
            &[],
        )
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, forget::db_error(&e)))?
        .get(0);
    Ok(json!({
        "type": "pgredact.erasure_receipt",
        "version": 1,
        "kind": "job",
        "issued_at": issued,
        "database": st.database,
        "job_id": st.job_id,
        "external_id": st.external_id,
        "regulation": st.regulation,
        "requester": st.requester,
        "received_at": st.created_at,
        "deadline": st.deadline,
        "deadline_met": st.deadline_met,
        "pii_removed_at": st.finished_at,
        "customers": {
            "requested": st.ids_total,
            "anonymized_by_this_job": st.ids_forgotten,
            "already_forgotten": st.ids_already_forgotten,
            "without_rows": st.ids_unknown,
        },
        "rows_changed_per_table": tables,
        "verification": st.verification,
        "warnings": st.warnings,
        "suppression": "the customers' keyed hashes are on the forget list: later writes of their PII to these tables are blanked by triggers",
    }))
}

fn signed_response(key: &[u8], receipt: Value) -> Result<Response, ApiError> {
    let (doc, sig) = receipt::signed(key, receipt)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut r = Json(doc).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&sig) {
        r.headers_mut().insert("x-pgredact-signature", v);
    }
    Ok(r)
}

/// Runs jobs in the background: installs suppression at start, then resumes unfinished jobs
/// whenever woken (a job was submitted) or every few seconds. Errors are logged, not fatal.
pub fn spawn_worker(state: AdminState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sessions: HashMap<String, Session> = HashMap::new();
        let mut suppression_done: HashMap<String, bool> = HashMap::new();
        loop {
            for policy in subject_databases(&state.current_policies()) {
                let db = policy.database.clone();
                // A changed policy (new subject tables, other masks): new session and spec, and
                // suppression triggers installed again for it.
                if sessions.get(&db).is_some_and(|s| *s.policy != *policy) {
                    sessions.remove(&db);
                    suppression_done.remove(&db);
                }
                if !sessions.contains_key(&db) {
                    match state.open_session(policy.clone()).await {
                        Ok(s) => {
                            sessions.insert(db.clone(), s);
                        }
                        Err(e) => {
                            tracing::warn!(database = %db, "forget worker: {}", e.message);
                            continue;
                        }
                    }
                }
                let Some(session) = sessions.get_mut(&db) else {
                    continue;
                };
                if !suppression_done.get(&db).copied().unwrap_or(false) {
                    match session.ensure_suppression().await {
                        Ok(_) => {
                            suppression_done.insert(db.clone(), true);
                        }
                        Err(e) => {
                            tracing::warn!(database = %db, "forget worker: suppression triggers: {e}")
                        }
                    }
                }
                match session.resume_all(Faults::default()).await {
                    Ok(ends) => {
                        for (id, end) in ends {
                            tracing::info!(database = %db, job = id, "forget job: {end:?}");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(database = %db, "forget worker: {e}");
                        if session.client.is_closed() {
                            sessions.remove(&db);
                            continue;
                        }
                    }
                }
                // Completion callbacks of jobs that ended (here or in another process), and
                // retries that are due.
                if let Some(d) = &state.callback {
                    if let Err(e) = callback::deliver_due(&session.client, d).await {
                        tracing::warn!(database = %db, "forget worker: callbacks: {e}");
                        if session.client.is_closed() {
                            sessions.remove(&db);
                        }
                    }
                }
            }
            tokio::select! {
                _ = state.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    })
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

/// Serves the admin API on a bound listener with its job worker, until the process ends. Returns
/// the error's message: `crate::proxy::serve` selects over this and its own string errors.
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

/// Serves the admin API on `[admin] listen` with its job worker (without a proxy), until the
/// process ends.
pub async fn serve_admin(cfg: &Config) -> Result<(), Error> {
    let (listener, state) = bind(cfg, None).await?;
    serve_bound(listener, state).await
}
