//! `GET /v1/customers/{id}/status`: forgotten, pending, or not, from keyed hashes only.

use super::*;

/// `GET /v1/customers/{id}/status`: whether the customer is forgotten, or waits in a job,
/// looked up by the keyed hash of the ID only: on the forget list (`subject_hash`), then in the
/// batches of jobs that still hold it (`forget_batches.id_hashes`), never by a stored raw ID.
/// The ID is never logged nor echoed.
///
/// `state`: `forgotten` (on the list, its job done), `pending` (a queued job holds it, or its
/// job is running or finalizing: on the list and suppressed, anonymization under way), `failed`
/// or `blocked` (its job ended so and keeps the ID for a retry), `not_forgotten` (also for a
/// customer whose only job was cancelled: cancelling removes the keyed hashes, so no job id).
pub(super) async fn customer_status(
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
pub(super) fn db_internal(e: tokio_postgres::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, forget::db_error(&e))
}

/// The status of a customer on the forget list (by keyed hash), or `None` when not on it.
pub(super) async fn listed_status(
    session: &Session,
    hash: &[u8],
) -> Result<Option<Value>, ApiError> {
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
pub(super) async fn waiting_status(session: &Session, hash: &[u8]) -> Result<Value, ApiError> {
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
pub(super) fn canonical_id(session: &Session, id: &str) -> Result<String, ApiError> {
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
