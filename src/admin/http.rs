//! Errors as HTTP answers, the router, and the unauthenticated endpoints (health, readiness, metrics).

use super::*;

/// An error answer: status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    /// Seconds for `Retry-After` (429 and 503 of the limits).
    pub(super) retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: String) -> ApiError {
        ApiError {
            status,
            message,
            retry_after: None,
        }
    }
    pub(super) fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }
    pub(super) fn bad(message: String) -> ApiError {
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

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// How long a readiness or forget-count query may take.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Forget job counts are read at most this often (a faster scraper gets the last counts).
pub(super) const FORGET_COUNTS_EVERY: Duration = Duration::from_secs(1);

pub(super) async fn readyz(State(state): State<AdminState>) -> Response {
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

pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
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
    pub(super) async fn readiness(&self) -> Result<(), NotReady> {
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
    pub(super) async fn update_gauges(&self, counts: &mut ForgetCounts) {
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
        let policies = self.current_policies();
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
    pub(super) async fn forget_counts(
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
