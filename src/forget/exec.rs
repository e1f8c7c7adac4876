//! Running a forget job: start (plan, then put the IDs' keyed hashes on the forget list), batches
//! (each one transaction: claim with `FOR UPDATE SKIP LOCKED`, anonymize every table in one
//! statement, re-query, record counts), finalize (verify all IDs again, refresh dependent
//! materialized views, ANALYZE the changed tables, clear the raw IDs).
//!
//! Why this order:
//! - The forget list is filled (and committed) before any data is touched, so from then on the
//!   suppression triggers stop concurrent loads from writing PII for these customers while the
//!   batches run; the batches only have to clean what was there before.
//! - Each ID is anonymized by the job that put its hash on the list (`forget_list.job_id`), or
//!   by any job when that owner is no longer active. So two concurrent jobs with overlapping
//!   IDs never update the same rows (no deadlock, no double work), and forgetting an ID again
//!   later re-checks its rows (idempotent: nothing left to change, nothing written).
//! - All tables of one batch are updated in one statement (data-modifying CTEs): foreign keys
//!   between policy tables are checked at the end of that statement, after parent and children
//!   both carry the token, so a PII customer ID can be replaced without deferrable constraints.

use super::jobs::{FAILED, FINALIZING, QUEUED, RUNNING};
use super::plan::{self, Spec};
pub use super::retry::{cancel, retry, Cancelled, RetryError};
use super::{db_error, Error};
use serde_json::{json, Map, Value};
use std::time::Instant;
use tokio_postgres::{Client, GenericClient};

/// Advisory lock class for per-job start/finalize steps.
pub(super) const JOB_LOCK: i32 = 7320452;

/// Test hooks that simulate a crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Stop (as if the process died) after this many batches were committed by this call.
    pub stop_after_batches: Option<usize>,
    /// Fail inside the n-th batch (1-based) of this call, after its UPDATE and before commit.
    pub fail_inside_batch: Option<usize>,
}

/// How a job run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// The job reached a final state (done, blocked or failed) or another worker finalizes it.
    Finished,
    /// The run stopped and the job stays resumable: a fault hook, or transient errors that
    /// outlasted the retries.
    Interrupted(String),
    /// A transient error (deadlock, serialization failure, lock or statement timeout, lost
    /// connection) stopped this attempt; the job is unchanged and may be run again at once.
    Transient(String),
}

/// SQLSTATEs worth another attempt: deadlock_detected, serialization_failure,
/// lock_not_available (lock_timeout), query_canceled (statement_timeout), admin_shutdown,
/// crash_shutdown, cannot_connect_now, and the connection exceptions.
pub const TRANSIENT_SQLSTATES: &[&str] = &[
    "40P01", "40001", "55P03", "57014", "57P01", "57P02", "57P03", "08000", "08003", "08006",
    "08001", "08004",
];

/// What a job run does after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The job is marked failed (and keeps its IDs, for a retry).
    Fatal,
    /// Worth another attempt; the job is left as it is.
    Transient,
    /// A fault hook; the job is left as it is.
    Interrupted,
}

fn kind(e: &Error) -> Kind {
    match e {
        Error::FaultStop(_) | Error::FaultInBatch(_) => Kind::Interrupted,
        e if e.is_transient() => Kind::Transient,
        _ => Kind::Fatal,
    }
}

/// True for errors a later attempt may well not meet again: see [`TRANSIENT_SQLSTATES`], plus a closed
/// connection or an I/O error.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(d) => TRANSIENT_SQLSTATES.contains(&d.code().code()),
        None => {
            e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        }
    }
}

/// Drives a job as far as this worker can: start if queued, run pending batches, finalize.
pub async fn run_job(
    client: &mut Client,
    spec: &Spec,
    job_id: i64,
    faults: Faults,
) -> Result<RunEnd, Error> {
    let started = Instant::now();
    match drive(client, spec, job_id, faults, started).await {
        Ok(end) => Ok(end),
        Err(e) if kind(&e) == Kind::Interrupted => Ok(RunEnd::Interrupted(e.to_string())),
        // Whatever failed, a lost connection is worth another attempt.
        Err(e) if kind(&e) == Kind::Transient || client.is_closed() => {
            Ok(RunEnd::Transient(e.to_string()))
        }
        Err(e) => {
            mark_failed(client, job_id, &e.to_string()).await?;
            Err(e)
        }
    }
}

async fn drive(
    client: &mut Client,
    spec: &Spec,
    job_id: i64,
    faults: Faults,
    started: Instant,
) -> Result<RunEnd, Error> {
    let state = job_state(client, job_id).await?;
    if state == QUEUED {
        start(client, spec, job_id).await?;
    }
    let state = job_state(client, job_id).await?;
    if state != RUNNING && state != FINALIZING {
        return Ok(RunEnd::Finished);
    }
    let mut done = 0usize;
    loop {
        if faults.stop_after_batches == Some(done) {
            return Err(Error::FaultStop(done));
        }
        let inject = faults.fail_inside_batch == Some(done + 1);
        match run_batch(client, spec, job_id, inject).await? {
            true => done += 1,
            false => break,
        }
    }
    finalize(client, spec, job_id, started).await?;
    Ok(RunEnd::Finished)
}

async fn job_state(client: &Client, job_id: i64) -> Result<String, Error> {
    client
        .query_opt(
            "SELECT state FROM pgredact.forget_jobs WHERE id = $1",
            &[&job_id],
        )
        .await?
        .map(|r| r.get(0))
        .ok_or(Error::NoSuchJob(job_id))
}

async fn try_job_lock(client: &Client, job_id: i64) -> Result<bool, Error> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock($1, CAST($2 AS int4))",
            &[&JOB_LOCK, &(job_id as i32)],
        )
        .await?
        .get(0))
}

async fn job_unlock(client: &Client, job_id: i64) -> Result<(), Error> {
    client
        .execute(
            "SELECT pg_catalog.pg_advisory_unlock($1, CAST($2 AS int4))",
            &[&JOB_LOCK, &(job_id as i32)],
        )
        .await?;
    Ok(())
}

async fn all_ids(client: &Client, job_id: i64) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT ids FROM pgredact.forget_batches WHERE job_id = $1 AND ids IS NOT NULL ORDER BY batch",
            &[&job_id],
        )
        .await?;
    let mut ids = Vec::new();
    for r in rows {
        let v: Vec<String> = r.get(0);
        ids.extend(v);
    }
    Ok(ids)
}

/// queued -> running (or blocked): plan, install suppression, fill the forget list.
async fn start(client: &mut Client, spec: &Spec, job_id: i64) -> Result<(), Error> {
    if !try_job_lock(client, job_id).await? {
        return Ok(()); // another worker is starting it
    }
    let result = start_locked(client, spec, job_id).await;
    job_unlock(client, job_id).await?;
    result
}

async fn start_locked(client: &mut Client, spec: &Spec, job_id: i64) -> Result<(), Error> {
    if job_state(client, job_id).await? != QUEUED {
        return Ok(());
    }
    let ids = all_ids(client, job_id).await?;
    let plan = job_plan(client, spec, job_id, &ids).await?;
    let plan_json = serde_json::to_string(&plan)?;
    if plan.has_blockers() {
        // The IDs stay (nothing was done for these customers yet): fix the blockers, then retry.
        client
            .execute(
                "UPDATE pgredact.forget_jobs SET state = 'blocked', plan = CAST($2 AS text)::jsonb, \
                 finished_at = now(), error = $3 WHERE id = $1",
                &[
                    &job_id,
                    &plan_json,
                    &format!(
                        "blocked by the plan: {}; nothing was changed: fix the blockers, then retry job {job_id} \
                         (pgredact forget --retry {job_id}, or POST /v1/jobs/{job_id}/retry)",
                        plan.blockers.join("; ")
                    ),
                ],
            )
            .await?;
        return Ok(());
    }
    super::suppress::ensure(client, spec).await?;
    fill_forget_list(client, spec, job_id, &ids, &plan_json).await?;
    // Transactions open now may have taken their snapshot before the list committed: their
    // writes do not see it (a REPEATABLE READ load, a statement already running), so the
    // suppression triggers let them through. Finalize waits for every one of them to end.
    client
        .execute(
            "UPDATE pgredact.forget_jobs SET list_wait = ARRAY( \
               SELECT l.virtualxid FROM pg_catalog.pg_locks l \
               WHERE l.locktype = 'virtualxid' AND l.granted \
                 AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()) WHERE id = $1",
            &[&job_id],
        )
        .await?;
    Ok(())
}

/// The plan of a job starting with `ids`: a plan made by the submitter a moment ago (the CLI
/// plans before submitting) is reused; jobs from the API are planned here.
async fn job_plan(
    client: &Client,
    spec: &Spec,
    job_id: i64,
    ids: &[String],
) -> Result<plan::Plan, Error> {
    let stored: Option<String> = client
        .query_one(
            "SELECT plan::text FROM pgredact.forget_jobs WHERE id = $1",
            &[&job_id],
        )
        .await?
        .get(0);
    Ok(
        match stored.and_then(|s| serde_json::from_str::<plan::Plan>(&s).ok()) {
            Some(p) if !p.has_blockers() => p,
            _ => plan::plan(client, spec, ids).await?,
        },
    )
}

/// In one transaction: puts the job's customers on the forget list (those not on it yet) and
/// marks the job `running` with its plan.
async fn fill_forget_list(
    client: &mut Client,
    spec: &Spec,
    job_id: i64,
    ids: &[String],
    plan_json: &str,
) -> Result<(), Error> {
    let tx = client.transaction().await?;
    // Sorted, so concurrent jobs with overlapping IDs wait on each other in one order.
    let new: i64 = tx
        .query_one(
            &format!(
                "WITH ins AS (INSERT INTO pgredact.forget_list (subject_hash, job_id, token) \
               SELECT h, $2, {token} FROM (SELECT pg_catalog.decode(pgredact.hmac_hex(v), 'hex') AS h \
                                  FROM pg_catalog.unnest(CAST($1 AS pg_catalog.text[])) AS v) s \
               ORDER BY h ON CONFLICT (subject_hash) DO NOTHING RETURNING 1) \
             SELECT count(*) FROM ins",
                token = plan::NEW_TOKEN_SQL
            ),
            &[&ids, &job_id],
        )
        .await?
        .get(0);
    if !spec.tokenize {
        // The ID is not PII in any table: keep it raw next to its hash (see suppress).
        tx.execute(
            "UPDATE pgredact.forget_list f SET subject_id = x.v \
             FROM pg_catalog.unnest(CAST($1 AS pg_catalog.text[])) AS x(v) \
             WHERE f.subject_hash = pg_catalog.decode(pgredact.hmac_hex(x.v), 'hex') AND f.subject_id IS NULL",
            &[&ids],
        )
        .await?;
    }
    tx.execute(
        "UPDATE pgredact.forget_jobs SET state = 'running', started_at = now(), \
         plan = CAST($2 AS text)::jsonb, ids_new = $3 WHERE id = $1",
        &[&job_id, &plan_json, &(new as i32)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// How long one finalize attempt waits for older transactions, or for the jobs that own some
/// of its IDs, before it leaves the job for a later attempt (a transient outcome).
const FINALIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Waits until `left` says none is left, polling every 200 ms; after [`FINALIZE_WAIT`], the
/// (transient) error `what` makes of the count left.
async fn wait_until<F, Fut>(what: impl Fn(i64) -> Error, mut left: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<i64, Error>>,
{
    let deadline = Instant::now() + FINALIZE_WAIT;
    loop {
        let n = left().await?;
        if n == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(what(n));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Finalize's waits, before it verifies: (1) every transaction that was open when the job's
/// forget list committed has ended, so no write that could not see the list is still to come;
/// (2) every other job that owns some of this job's IDs has finished its batches, so this job
/// can verify every ID it reports (not only those it anonymized itself).
async fn wait_before_verifying(client: &Client, job_id: i64, ids: &[String]) -> Result<(), Error> {
    wait_until(Error::OldTransactions, || async {
        Ok(client
            .query_one(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks l, pgredact.forget_jobs j \
                     WHERE j.id = $1 AND l.locktype = 'virtualxid' AND l.granted \
                       AND l.virtualxid = ANY (j.list_wait)",
                &[&job_id],
            )
            .await?
            .get::<_, i64>(0))
    })
    .await?;
    wait_until(
        Error::OtherJobsOwnIds,
        || async {
            Ok(client
                .query_one(
                    "SELECT pg_catalog.count(*) FROM pg_catalog.unnest(CAST($1 AS pg_catalog.text[])) AS x(v) \
                     JOIN pgredact.forget_list f ON f.subject_hash = pg_catalog.decode(pgredact.hmac_hex(x.v), 'hex') \
                     JOIN pgredact.forget_jobs j ON j.id = f.job_id \
                     WHERE f.job_id <> $2 AND j.state IN ('queued', 'running')",
                    &[&ids, &job_id],
                )
                .await?
                .get::<_, i64>(0))
        },
    )
    .await
}

/// IDs of `ids` this job may anonymize now, and how many were already forgotten before it.
async fn owned_ids<C: GenericClient>(
    c: &C,
    job_id: i64,
    ids: &[String],
) -> Result<(Vec<String>, Vec<String>, usize), Error> {
    let rows = c
        .query(
            "SELECT v, f.job_id, j.state FROM pg_catalog.unnest(CAST($1 AS pg_catalog.text[])) WITH ORDINALITY AS x(v, n) \
             LEFT JOIN pgredact.forget_list f ON f.subject_hash = pg_catalog.decode(pgredact.hmac_hex(x.v), 'hex') \
             LEFT JOIN pgredact.forget_jobs j ON j.id = f.job_id ORDER BY x.n",
            &[&ids],
        )
        .await?;
    let mut process = Vec::new();
    let mut mine = Vec::new();
    let mut already = 0;
    for r in rows {
        let v: String = r.get(0);
        let owner: Option<i64> = r.get(1);
        let owner_state: Option<String> = r.get(2);
        if owner == Some(job_id) {
            mine.push(v.clone());
            process.push(v);
            continue;
        }
        already += 1;
        let owner_active = matches!(owner_state.as_deref(), Some(QUEUED | RUNNING | FINALIZING));
        if !owner_active {
            process.push(v); // re-check: idempotent, finds nothing left to change
        }
    }
    Ok((process, mine, already))
}

/// The one statement that anonymizes a set of IDs in every table; returns rows per table.
fn update_sql(spec: &Spec) -> String {
    let mut ctes = Vec::new();
    let mut sels = Vec::new();
    for (i, t) in spec.changing_tables().enumerate() {
        ctes.push(format!(
            "u{i} AS (UPDATE {} AS t SET {} WHERE {} AND {} RETURNING 1)",
            t.qname(),
            t.set_sql(),
            t.match_sql("t", "$1"),
            t.not_forgotten_sql("t")
        ));
        sels.push(format!("(SELECT count(*) FROM u{i})"));
    }
    format!("WITH {} SELECT {}", ctes.join(", "), sels.join(", "))
}

/// Rows that still hold PII for these IDs, per table.
fn verify_sql(spec: &Spec) -> String {
    let sels: Vec<String> = spec
        .changing_tables()
        .map(|t| {
            format!(
                "(SELECT count(*) FROM {} AS t WHERE {} AND {})",
                t.qname(),
                t.match_sql("t", "$1"),
                t.not_forgotten_sql("t")
            )
        })
        .collect();
    format!("SELECT {}", sels.join(", "))
}

/// What `pgredact forget --sweep` did to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepTable {
    pub table: String,
    /// Rows of forgotten customers that held PII and were anonymized now.
    pub changed: i64,
    /// Rows of forgotten customers that still hold PII after the sweep (0 when it worked).
    pub left: i64,
}

/// The rows of `t` whose subject is on the forget list (its keyed hash computed inline from
/// the key table `k`, so no function call per row) and still hold something forget changes.
fn swept_rows_sql(t: &plan::TableSpec) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pgredact.forget_list f WHERE f.subject_hash OPERATOR(pg_catalog.=) \
         pg_catalog.sha256(k.opad OPERATOR(pg_catalog.||) pg_catalog.sha256(k.ipad OPERATOR(pg_catalog.||) \
         pg_catalog.convert_to({}, 'UTF8')))) AND {}",
        t.id_text_sql(&t.subj("t")),
        t.not_forgotten_sql("t")
    )
}

/// Re-applies the whole forget list to every subject table: after a restore from a backup
/// taken before some customers were forgotten, or after a table or column joined the policy.
/// One statement per table (each its own transaction, retried after transient errors), then a
/// re-query. The IDs are never needed: rows are found by the keyed hash of their subject.
pub async fn sweep(client: &mut Client, spec: &Spec) -> Result<Vec<SweepTable>, Error> {
    super::suppress::ensure(client, spec).await?;
    let mut out = Vec::new();
    for t in spec.changing_tables() {
        let update = format!(
            "WITH u AS (UPDATE {} AS t SET {} FROM pgredact.hash_key AS k WHERE {} RETURNING 1) \
             SELECT pg_catalog.count(*) FROM u",
            t.qname(),
            t.set_sql(),
            swept_rows_sql(t)
        );
        let mut attempt = 0;
        let changed: i64 = loop {
            match client.query_one(&update, &[]).await {
                Ok(r) => break r.get(0),
                Err(e) if is_transient(&e) && attempt < 4 && !client.is_closed() => {
                    attempt += 1;
                    tracing::warn!("sweep of {}: retrying after {}", t.display(), db_error(&e));
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
                Err(source) => {
                    return Err(Error::DbDoing {
                        what: format!("sweep of {}", t.display()),
                        source,
                    })
                }
            }
        };
        let left: i64 = client
            .query_one(
                &format!(
                    "SELECT pg_catalog.count(*) FROM {} AS t, pgredact.hash_key AS k WHERE {}",
                    t.qname(),
                    swept_rows_sql(t)
                ),
                &[],
            )
            .await
            .map_err(|source| Error::DbDoing {
                what: format!("verifying the sweep of {}", t.display()),
                source,
            })?
            .get(0);
        out.push(SweepTable {
            table: t.display(),
            changed,
            left,
        });
    }
    Ok(out)
}

/// IDs with no row in any policy table.
fn unknown_sql(spec: &Spec) -> String {
    let exists: Vec<String> = spec
        .tables
        .iter()
        .map(|t| {
            format!(
                "EXISTS (SELECT 1 FROM {} AS t WHERE {})",
                t.qname(),
                t.match_sql("t", "ARRAY[x.v]")
            )
        })
        .collect();
    format!(
        "SELECT count(*) FROM pg_catalog.unnest(CAST($1 AS pg_catalog.text[])) AS x(v) WHERE NOT ({})",
        exists.join(" OR ")
    )
}

fn counts(row: &tokio_postgres::Row, n: usize) -> Vec<i64> {
    (0..n).map(|i| row.get::<_, i64>(i)).collect()
}

/// Claims and runs one pending batch. Returns false when none is left to claim.
async fn run_batch(
    client: &mut Client,
    spec: &Spec,
    job_id: i64,
    inject: bool,
) -> Result<bool, Error> {
    let tables: Vec<String> = spec.changing_tables().map(|t| t.display()).collect();
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT batch, ids FROM pgredact.forget_batches WHERE job_id = $1 AND state = 'pending' \
             ORDER BY batch LIMIT 1 FOR UPDATE SKIP LOCKED",
            &[&job_id],
        )
        .await?
    else {
        tx.commit().await?;
        return Ok(false);
    };
    let batch: i32 = row.get(0);
    let ids: Vec<String> = row.get::<_, Option<Vec<String>>>(1).unwrap_or_default();
    let (process, mine, already) = owned_ids(&tx, job_id, &ids).await?;
    let unknown: i64 = if mine.is_empty() {
        0
    } else {
        tx.query_one(&unknown_sql(spec), &[&mine]).await?.get(0)
    };
    let changed = apply_batch(&tx, spec, batch, &process, &tables, inject).await?;
    let rows: Map<String, Value> = tables
        .iter()
        .zip(&changed)
        .map(|(t, n)| (t.clone(), json!(n)))
        .collect();
    let forgotten = mine.len() as i64 - unknown;
    tx.execute(
        "UPDATE pgredact.forget_batches SET state = 'done', done_at = now(), forgotten = $3, already = $4, \
         unknown = $5, rows = CAST($6 AS text)::jsonb WHERE job_id = $1 AND batch = $2",
        &[
            &job_id,
            &batch,
            &(forgotten as i32),
            &(already as i32),
            &(unknown as i32),
            &Value::Object(rows).to_string(),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Anonymizes the rows of the IDs `process` in batch `batch` and verifies none is left (a
/// second pass catches rows a concurrent writer committed during the first); returns the rows
/// changed per table. `inject`: fails inside the batch, as a crash would.
async fn apply_batch(
    tx: &tokio_postgres::Transaction<'_>,
    spec: &Spec,
    batch: i32,
    process: &[String],
    tables: &[String],
    inject: bool,
) -> Result<Vec<i64>, Error> {
    let mut changed = vec![0i64; tables.len()];
    if !process.is_empty() && !tables.is_empty() {
        let upd = tx.prepare(&update_sql(spec)).await?;
        let ver = tx.prepare(&verify_sql(spec)).await?;
        let mut remaining = vec![0i64; tables.len()];
        // A second pass catches rows a concurrent writer committed during the first.
        for _attempt in 0..2 {
            let r = tx.query_one(&upd, &[&process]).await?;
            for (c, n) in changed.iter_mut().zip(counts(&r, tables.len())) {
                *c += n;
            }
            if inject {
                // Dropping the transaction rolls the batch back, as a crash would.
                return Err(Error::FaultInBatch(batch));
            }
            let v = tx.query_one(&ver, &[&process]).await?;
            remaining = counts(&v, tables.len());
            if remaining.iter().all(|n| *n == 0) {
                break;
            }
        }
        if remaining.iter().any(|n| *n > 0) {
            let left: Vec<String> = tables
                .iter()
                .zip(&remaining)
                .filter(|(_, n)| **n > 0)
                .map(|(t, n)| format!("{t}: {n}"))
                .collect();
            return Err(Error::PiiLeft { batch, left });
        }
    }
    Ok(changed)
}

/// running -> finalizing -> done (or failed): verify, refresh, analyze, clear raw IDs.
async fn finalize(
    client: &mut Client,
    spec: &Spec,
    job_id: i64,
    started: Instant,
) -> Result<(), Error> {
    if !try_job_lock(client, job_id).await? {
        return Ok(()); // another worker finalizes
    }
    let result = finalize_locked(client, spec, job_id, started).await;
    job_unlock(client, job_id).await?;
    result
}

async fn finalize_locked(
    client: &mut Client,
    spec: &Spec,
    job_id: i64,
    started: Instant,
) -> Result<(), Error> {
    let claimed = client
        .execute(
            "UPDATE pgredact.forget_jobs SET state = 'finalizing' WHERE id = $1 \
             AND state IN ('running', 'finalizing') \
             AND NOT EXISTS (SELECT 1 FROM pgredact.forget_batches WHERE job_id = $1 AND state = 'pending')",
            &[&job_id],
        )
        .await?;
    if claimed == 0 {
        return Ok(()); // batches still running elsewhere, or already final
    }
    let tables: Vec<String> = spec.changing_tables().map(|t| t.display()).collect();
    let ids = all_ids(client, job_id).await?;
    wait_before_verifying(client, job_id, &ids).await?;
    // Every ID the job reports, its own and those other jobs forgot.
    let process = ids;
    let (remaining, reapplied) = verify_rows(client, spec, &process, tables.len()).await?;
    let ok = remaining.iter().all(|n| *n == 0);
    let mut per_table = Map::new();
    for (t, n) in tables.iter().zip(&remaining) {
        per_table.insert(t.clone(), json!(n));
    }
    let verification = json!({
        "ok": ok,
        "ids_checked": process.len(),
        "rows_with_pii_left": per_table,
        "rows_fixed_at_verification": reapplied,
    });
    let changed_specs = changed_tables(client, spec, job_id, reapplied).await?;
    let mut warnings = Vec::new();
    let refreshed = refresh_matviews(client, &changed_specs, &mut warnings).await?;
    let analyzed = analyze_changed(client, &changed_specs, &mut warnings).await?;
    let summary = json!({
        "refreshed": refreshed,
        "analyzed": analyzed,
        "warnings": warnings,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    let (state, error) = if ok {
        ("done", None)
    } else {
        (
            "failed",
            Some("verification found rows that still hold PII".to_string()),
        )
    };
    client
        .execute(
            "UPDATE pgredact.forget_jobs SET state = $2, finished_at = now(), \
             verification = CAST($3 AS text)::jsonb, summary = CAST($4 AS text)::jsonb, error = $5 WHERE id = $1",
            &[&job_id, &state, &verification.to_string(), &summary.to_string(), &error],
        )
        .await?;
    clear_ids(client, job_id).await?;
    Ok(())
}

/// Verification: re-queries every table for the IDs `process` (a second pass fixes rows that a
/// write started before the job committed after its batch). Returns the rows still holding PII,
/// per table, and how many rows the second pass fixed.
async fn verify_rows(
    client: &Client,
    spec: &Spec,
    process: &[String],
    n_tables: usize,
) -> Result<(Vec<i64>, i64), Error> {
    let mut remaining = vec![0i64; n_tables];
    let mut reapplied = 0i64;
    if !process.is_empty() && n_tables > 0 {
        for attempt in 0..2 {
            let v = client.query_one(&verify_sql(spec), &[&process]).await?;
            remaining = counts(&v, n_tables);
            if remaining.iter().all(|n| *n == 0) || attempt == 1 {
                break;
            }
            let r = client.query_one(&update_sql(spec), &[&process]).await?;
            reapplied += counts(&r, n_tables).iter().sum::<i64>();
        }
    }
    Ok((remaining, reapplied))
}

/// The tables of `spec` the job changed, from the batch records (all that change anything
/// when verification fixed rows).
async fn changed_tables<'a>(
    client: &Client,
    spec: &'a Spec,
    job_id: i64,
    reapplied: i64,
) -> Result<Vec<&'a plan::TableSpec>, Error> {
    let changed: Vec<String> = client
        .query(
            "SELECT DISTINCT e.key FROM pgredact.forget_batches b, jsonb_each_text(b.rows) e \
             WHERE b.job_id = $1 AND e.value::int8 > 0 ORDER BY 1",
            &[&job_id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(spec
        .tables
        .iter()
        .filter(|t| changed.contains(&t.display()) || reapplied > 0 && t.changes_anything())
        .collect())
}

/// Refreshes the materialized views that depend on the changed tables; returns those
/// refreshed, with a warning for each one it could not refresh.
async fn refresh_matviews(
    client: &Client,
    changed_specs: &[&plan::TableSpec],
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, Error> {
    let mut refreshed = Vec::new();
    let oids: Vec<u32> = changed_specs.iter().flat_map(|t| t.tree_oids()).collect();
    for (mv, owned) in plan::dependent_matviews(client, &oids).await? {
        if !owned {
            warnings.push(format!(
                "materialized view {mv} not refreshed: not owned by the control role"
            ));
            continue;
        }
        match client
            .batch_execute(&format!("REFRESH MATERIALIZED VIEW {mv}"))
            .await
        {
            Ok(()) => refreshed.push(mv),
            Err(e) if client.is_closed() => return Err(e.into()),
            Err(e) => warnings.push(format!(
                "materialized view {mv} still holds copies of the removed values: refreshing it failed: {}; \
                 run REFRESH MATERIALIZED VIEW {mv}",
                db_error(&e)
            )),
        }
    }
    Ok(refreshed)
}

/// ANALYZEs the changed tables (so pg_stats forgets the removed values); returns those
/// analyzed, with a warning for each one it could not analyze.
async fn analyze_changed(
    client: &Client,
    changed_specs: &[&plan::TableSpec],
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, Error> {
    let mut analyzed = Vec::new();
    for (qname, shown, owned) in analyze_targets(changed_specs) {
        if !owned {
            warnings.push(format!(
                "{shown} not analyzed: not owned by the control role"
            ));
            continue;
        }
        match client.batch_execute(&format!("ANALYZE {qname}")).await {
            Ok(()) => analyzed.push(shown),
            Err(e) if client.is_closed() => return Err(e.into()),
            Err(e) => warnings.push(format!(
                "{shown}: ANALYZE failed, so pg_stats may still show removed values: {}; run ANALYZE {qname}",
                db_error(&e)
            )),
        }
    }
    Ok(analyzed)
}

/// What to ANALYZE: each changed table (for a partitioned one, ANALYZE covers its partitions)
/// and its inheritance children (ANALYZE of a parent does not analyze them). `(qname, display,
/// owned)`.
fn analyze_targets(tables: &[&plan::TableSpec]) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for t in tables {
        out.push((t.qname(), t.display(), t.owned));
        for d in t.inheritance_children() {
            out.push((d.qname(), d.display(), d.owned));
        }
    }
    out
}

async fn clear_ids(client: &Client, job_id: i64) -> Result<(), Error> {
    client
        .execute(
            "UPDATE pgredact.forget_batches SET ids = NULL, id_hashes = NULL, \
             state = CASE WHEN state = 'pending' THEN 'cancelled' ELSE state END WHERE job_id = $1",
            &[&job_id],
        )
        .await?;
    Ok(())
}

/// Marks the job failed. Its IDs stay (the customers not forgotten yet must not be lost): a
/// retry ([`retry`]) runs it on.
async fn mark_failed(client: &Client, job_id: i64, msg: &str) -> Result<(), Error> {
    client
        .execute(
            "UPDATE pgredact.forget_jobs SET state = $2, finished_at = now(), \
             error = $3 || '; the job keeps its customer IDs: fix the cause, then retry it' \
             WHERE id = $1 AND state IN ('queued', 'running', 'finalizing')",
            &[&job_id, &FAILED, &msg],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_retried_by_cause_not_by_message() {
        // PostgreSQL errors are judged by their SQLSTATE (is_transient); the others by what
        // they are, never by how their message ends.
        for e in [Error::OldTransactions(2), Error::OtherJobsOwnIds(1)] {
            assert_eq!(kind(&e), Kind::Transient, "{e}");
        }
        for e in [Error::FaultStop(0), Error::FaultInBatch(3)] {
            assert_eq!(kind(&e), Kind::Interrupted, "{e}");
        }
        let pii_left = Error::PiiLeft {
            batch: 0,
            left: vec!["public.t: 1".into()],
        };
        assert_eq!(
            pii_left.to_string(),
            "batch 0: rows still hold PII after the update (public.t: 1); the batch was rolled back"
        );
        for e in [
            pii_left,
            Error::NoSuchJob(7),
            Error::ReservedTag("public.t".into()),
            Error::JobNotDone {
                report: "deadlock mentioned (40P01)".into(),
            },
        ] {
            assert_eq!(kind(&e), Kind::Fatal, "{e}");
        }
    }
}
