//! `/v1/jobs`: status, list, retry and cancel.

use super::*;

/// The job id of a `/v1/jobs/{id}` path.
pub(super) fn job_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad(format!("job id {id:?} is not a number")))
}

/// The answer to a retry or cancel of job `id` that could not be done: 404 for an unknown job,
/// 409 when its state does not allow it, 500 otherwise.
pub(super) fn job_action_error(e: forget::RetryError, id: i64, db: &str) -> ApiError {
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
pub(super) async fn retry_job(
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
pub(super) const MAX_CANCEL_TEXT: usize = 1000;

/// `POST /v1/jobs/{id}/cancel` (optional `?database=`; optional JSON body `{"requester": ...,
/// "reason": ...}`, or the `X-Requester` header): a queued, blocked or failed job is cancelled
/// (200 with its status); 409 for a running, finalizing, done or cancelled job, and for a failed
/// one whose customers are already on the forget list (see [`forget::exec::cancel`]).
pub(super) async fn cancel_job(
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

pub(super) async fn job_status(
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
pub(super) struct ListQuery {
    pub(super) database: Option<String>,
    /// Comma-separated states.
    pub(super) state: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) since: Option<String>,
    pub(super) until: Option<String>,
    pub(super) external_id: Option<String>,
    pub(super) limit: Option<i64>,
    /// The `next_cursor` of the previous page (jobs with smaller ids follow).
    pub(super) cursor: Option<i64>,
}

/// `GET /v1/jobs`: jobs newest first, filtered, a page at a time.
pub(super) async fn list_jobs(
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
pub(super) fn parse_states(state: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
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
pub(super) async fn query_jobs(
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
pub(super) fn job_summary(r: &tokio_postgres::Row) -> Value {
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
