//! Retrying and cancelling a forget job: what a job's state allows, in one transaction that holds
//! the job's row (and, to cancel, its advisory lock), so no worker starts or finalizes it meanwhile.

use super::db_error;
use super::exec::JOB_LOCK;
use super::jobs::{self, FAILED, FINALIZING, QUEUED, RUNNING};
use serde_json::json;
use tokio_postgres::Client;

/// Makes a failed or blocked job runnable again: queued when it never started (it is planned
/// again), running otherwise (its pending batches run, then finalize verifies every ID).
/// Returns the new state.
pub async fn retry(client: &mut Client, job_id: i64) -> Result<String, RetryError> {
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT state, started_at IS NOT NULL, kind, \
                    EXISTS (SELECT 1 FROM pgredact.forget_batches b WHERE b.job_id = j.id AND b.ids IS NULL) \
             FROM pgredact.forget_jobs j WHERE id = $1 FOR UPDATE",
            &[&job_id],
        )
        .await?
        .ok_or(RetryError::NotFound)?;
    let (state, started, kind, cleared): (String, bool, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if kind != "forget" || !(state == FAILED || state == jobs::BLOCKED) {
        return Err(RetryError::Conflict(format!(
            "job {job_id} ({kind}) is {state}: only failed or blocked forget jobs can be retried"
        )));
    }
    if cleared {
        return Err(RetryError::Conflict(format!(
            "job {job_id} no longer holds its customer IDs (an earlier pgredact version cleared them when it \
             ended): submit the IDs again"
        )));
    }
    let next = if started && state == FAILED {
        RUNNING
    } else {
        QUEUED
    };
    tx.execute(
        "UPDATE pgredact.forget_jobs SET state = $2, finished_at = NULL, error = NULL, \
         plan = CASE WHEN $2 = 'queued' THEN NULL ELSE plan END, \
         callback_attempts = 0, callback_next_at = NULL, callback_last_error = NULL, callback_delivered_at = NULL \
         WHERE id = $1",
        &[&job_id, &next],
    )
    .await?;
    tx.execute(
        "UPDATE pgredact.forget_batches SET state = 'pending' WHERE job_id = $1 AND state = 'cancelled'",
        &[&job_id],
    )
    .await?;
    tx.commit().await?;
    Ok(next.to_string())
}

/// What [`cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// The state the job was in (`queued`, `blocked` or `failed`).
    pub previous_state: String,
    /// Customer IDs whose raw value and keyed hash were removed from the job's batches.
    pub ids_removed: i64,
}

/// Cancels a forget job that is `queued`, `blocked` or `failed` and has put none of its
/// customers on the forget list: state `cancelled` with who, when and why, its raw IDs and
/// keyed hashes removed, a `cancel` record on the audit trail, and its completion callback (if
/// any) due again with outcome `cancelled`. One transaction, holding the job's row and its
/// advisory lock, so no worker starts or finalizes it meanwhile.
///
/// Refused (`Conflict`): a `running` or `finalizing` job (its customers are on the forget list
/// and being anonymized: it cannot be stopped half-way), a `done` one (use unforget), one
/// already cancelled, and a `failed` job that owns forget-list entries (it failed after its
/// start committed them: those customers are suppressed and maybe partly anonymized; cancelling
/// would leave them half-forgotten without saying so; retry it to finish, or unforget them
/// first).
pub async fn cancel(
    client: &mut Client,
    job_id: i64,
    by: &str,
    reason: Option<&str>,
) -> Result<Cancelled, RetryError> {
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT state, kind FROM pgredact.forget_jobs WHERE id = $1 FOR UPDATE",
            &[&job_id],
        )
        .await?
        .ok_or(RetryError::NotFound)?;
    let (state, kind): (String, String) = (row.get(0), row.get(1));
    if kind != "forget" {
        return Err(RetryError::Conflict(format!(
            "job {job_id} is an {kind} record, not a forget job: it cannot be cancelled"
        )));
    }
    cancellable_state(job_id, &state)?;
    check_cancellable(&tx, job_id, &state).await?;
    tx.execute(
        "UPDATE pgredact.forget_jobs SET state = 'cancelled', finished_at = now(), \
         cancelled_at = now(), cancelled_by = $2, cancel_reason = $3, callback_attempts = 0, \
         callback_next_at = NULL, callback_last_error = NULL, callback_delivered_at = NULL \
         WHERE id = $1",
        &[&job_id, &by, &reason],
    )
    .await?;
    let ids_removed: i64 = tx
        .query_one(
            "SELECT coalesce(sum(ids_count) FILTER (WHERE ids IS NOT NULL OR id_hashes IS NOT NULL), 0)::int8 \
             FROM pgredact.forget_batches WHERE job_id = $1",
            &[&job_id],
        )
        .await?
        .get(0);
    tx.execute(
        "UPDATE pgredact.forget_batches SET ids = NULL, id_hashes = NULL, \
         state = CASE WHEN state = 'pending' THEN 'cancelled' ELSE state END WHERE job_id = $1",
        &[&job_id],
    )
    .await?;
    let record = json!({
        "cancelled_by": by,
        "reason": reason,
        "previous_state": state,
        "ids_removed": ids_removed,
    });
    tx.execute(
        "SELECT pgredact.forget_audit_append('cancel', $1, CAST($2 AS text)::jsonb)",
        &[&job_id, &record.to_string()],
    )
    .await?;
    tx.commit().await?;
    Ok(Cancelled {
        previous_state: state,
        ids_removed,
    })
}

/// Refuses to cancel a forget job in `state` unless it is `queued`, `blocked` or `failed`.
fn cancellable_state(job_id: i64, state: &str) -> Result<(), RetryError> {
    let conflict = |why: String| Err(RetryError::Conflict(format!("job {job_id} {why}")));
    match state {
        QUEUED | jobs::BLOCKED | FAILED => Ok(()),
        RUNNING | FINALIZING => conflict(format!(
            "is {state}: its customers are on the forget list (suppressed) and being anonymized; \
             a running job cannot be cancelled half-way. Wait until it ends, then lift \
             suppression with unforget if needed"
        )),
        jobs::DONE => conflict(
            "is done: its customers are forgotten; to lift suppression for some of them, use \
             unforget (pgredact unforget --ids ...); anonymized data stays anonymized"
                .to_string(),
        ),
        jobs::CANCELLED => conflict("is already cancelled".to_string()),
        other => conflict(format!("is {other}: it cannot be cancelled")),
    }
}

/// Within the cancelling transaction: refuses when a worker is starting or finalizing the job
/// (taking its advisory lock otherwise), or when the job has put customers on the forget list.
async fn check_cancellable(
    tx: &tokio_postgres::Transaction<'_>,
    job_id: i64,
    state: &str,
) -> Result<(), RetryError> {
    let conflict = |why: String| Err(RetryError::Conflict(format!("job {job_id} {why}")));
    // A worker starting or finalizing the job holds this lock for the whole step.
    let free: bool = tx
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_xact_lock($1, CAST($2 AS int4))",
            &[&JOB_LOCK, &(job_id as i32)],
        )
        .await?
        .get(0);
    if !free {
        return conflict("is being started by a worker right now: try again in a moment".into());
    }
    let listed: i64 = tx
        .query_one(
            "SELECT pg_catalog.count(*) FROM pgredact.forget_list WHERE job_id = $1",
            &[&job_id],
        )
        .await?
        .get(0);
    if listed > 0 {
        return conflict(format!(
            "is {state}, but it had already put {listed} customer(s) on the forget list: they are \
             suppressed (no new PII is written for them) and their existing rows may be partly \
             anonymized. Cancelling would leave them half-forgotten, so it is refused: retry the \
             job to finish forgetting them (pgredact forget --retry {job_id}, or POST \
             /v1/jobs/{job_id}/retry), or lift their suppression with unforget (pgredact unforget \
             --ids ...) and then cancel the job"
        ));
    }
    Ok(())
}

/// Why a job cannot be retried or cancelled.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no such job")]
    NotFound,
    /// Its state does not allow it (the message says why and what to do instead).
    #[error("{0}")]
    Conflict(String),
    #[error("{}", db_error(.0))]
    Db(#[from] tokio_postgres::Error),
}
