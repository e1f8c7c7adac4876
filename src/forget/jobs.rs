//! Forget jobs live in the database being protected, in the control schema `pgredact`:
//!
//! - `pgredact.forget_list`: one row per forgotten subject, keyed by HMAC-SHA256(key, ID)
//!   (bytea); never a raw ID. `job_id` names the job that added it (it owns the anonymization).
//! - `pgredact.forget_jobs`: one row per request (forget or unforget): requester, source, times,
//!   state, plan, counts, verification. No raw IDs.
//! - `pgredact.forget_batches`: the work queue of a job. `ids` holds the canonical IDs of one
//!   batch (and `id_hashes` their keyed hashes) until the job is done or cancelled; a failed or
//!   blocked job keeps them for a retry (see `exec::cancel` for what a cancel removes).
//!
//! Batches are claimed with `FOR UPDATE SKIP LOCKED`, so any number of workers (CLI runs, admin
//! servers) can share a job's batches without waiting on each other or doing a batch twice.
//! All three tables are readable only by the control role (which owns the schema).

use super::Error;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

/// Job states.
pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const FINALIZING: &str = "finalizing";
pub const DONE: &str = "done";
pub const BLOCKED: &str = "blocked";
pub const FAILED: &str = "failed";
/// Cancelled by an operator while queued, blocked or failed (see [`super::exec::cancel`]): its
/// customer IDs and their keyed hashes are gone, nothing more is done for it.
pub const CANCELLED: &str = "cancelled";
/// Every job state.
pub const STATES: [&str; 7] = [
    QUEUED, RUNNING, FINALIZING, DONE, BLOCKED, FAILED, CANCELLED,
];

/// The forget tables, functions and triggers (idempotent; after `control::ensure`).
pub const SCHEMA_SQL: &str = r#"
SELECT pg_catalog.pg_advisory_xact_lock(7320451);
CREATE TABLE IF NOT EXISTS pgredact.forget_jobs (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL DEFAULT 'forget' CHECK (kind IN ('forget', 'unforget')),
    database      text NOT NULL,
    requester     text NOT NULL,
    source        text NOT NULL,
    state         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    ids_total     integer NOT NULL DEFAULT 0,
    ids_duplicate integer NOT NULL DEFAULT 0,
    ids_new       integer,
    batch_size    integer NOT NULL DEFAULT 0,
    plan          jsonb,
    summary       jsonb,
    verification  jsonb,
    error         text,
    retries       integer NOT NULL DEFAULT 0,
    last_retry_error text
);
CREATE INDEX IF NOT EXISTS forget_jobs_active ON pgredact.forget_jobs (id)
    WHERE state IN ('queued', 'running', 'finalizing');
CREATE TABLE IF NOT EXISTS pgredact.forget_batches (
    job_id    bigint NOT NULL REFERENCES pgredact.forget_jobs (id) ON DELETE CASCADE,
    batch     integer NOT NULL,
    state     text NOT NULL DEFAULT 'pending',
    ids       text[],
    ids_count integer NOT NULL,
    forgotten integer,
    already   integer,
    unknown   integer,
    rows      jsonb,
    done_at   timestamptz,
    PRIMARY KEY (job_id, batch)
);
CREATE TABLE IF NOT EXISTS pgredact.forget_list (
    subject_hash bytea PRIMARY KEY,
    forgotten_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    job_id       bigint
);
DO $retries$ BEGIN
    -- Columns added after the table's first version (no DDL when present).
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'pgredact.forget_jobs'::pg_catalog.regclass
                   AND attname = 'retries' AND NOT attisdropped) THEN
        ALTER TABLE pgredact.forget_jobs ADD COLUMN retries integer NOT NULL DEFAULT 0,
                                         ADD COLUMN last_retry_error text;
    END IF;
    -- The transactions open when the job's forget list committed (their virtual transaction
    -- ids): finalize waits for them before it verifies.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'pgredact.forget_jobs'::pg_catalog.regclass
                   AND attname = 'list_wait' AND NOT attisdropped) THEN
        ALTER TABLE pgredact.forget_jobs ADD COLUMN list_wait text[];
    END IF;
    -- The random token that replaces a subject ID that is PII (NULL for entries of earlier
    -- versions, whose tokens were derived from the keyed hash).
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'pgredact.forget_list'::pg_catalog.regclass
                   AND attname = 'token' AND NOT attisdropped) THEN
        ALTER TABLE pgredact.forget_list ADD COLUMN token text;
    END IF;
    -- The raw customer ID, kept only while no policy table treats it as PII (it stays in the
    -- anonymized rows anyway): the triggers then look it up without a keyed hash per row.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'pgredact.forget_list'::pg_catalog.regclass
                   AND attname = 'subject_id' AND NOT attisdropped) THEN
        ALTER TABLE pgredact.forget_list ADD COLUMN subject_id text;
        CREATE INDEX forget_list_subject_id ON pgredact.forget_list (subject_id) WHERE subject_id IS NOT NULL;
    END IF;
    -- The caller's own request id (unique per database: a repeated one returns the existing
    -- job), the regulation and deadline of the request, and a keyed hash of its ID set (a
    -- repeated request id with other IDs is refused).
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'pgredact.forget_jobs'::pg_catalog.regclass
                   AND attname = 'external_id' AND NOT attisdropped) THEN
        ALTER TABLE pgredact.forget_jobs ADD COLUMN external_id text,
                                         ADD COLUMN regulation text,
                                         ADD COLUMN deadline timestamptz,
                                         ADD COLUMN request_hash text;
    END IF;
    -- The keyed hashes of a batch's IDs (pgredact.hmac_hex, as on the forget list), kept as
    -- long as its raw IDs: the customer status of the admin API finds a queued job's customers
    -- by them, never by the raw IDs.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'pgredact.forget_batches'::pg_catalog.regclass
                   AND attname = 'id_hashes' AND NOT attisdropped) THEN
        ALTER TABLE pgredact.forget_batches ADD COLUMN id_hashes bytea[];
        CREATE INDEX forget_batches_id_hashes ON pgredact.forget_batches USING gin (id_hashes);
    END IF;
    -- The completion callback of an API request and its delivery (kept on the job, so retries
    -- survive a restart and any admin server delivers it).
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'pgredact.forget_jobs'::pg_catalog.regclass
                   AND attname = 'callback_url' AND NOT attisdropped) THEN
        ALTER TABLE pgredact.forget_jobs ADD COLUMN callback_url text,
                                         ADD COLUMN callback_attempts integer NOT NULL DEFAULT 0,
                                         ADD COLUMN callback_next_at timestamptz,
                                         ADD COLUMN callback_last_error text,
                                         ADD COLUMN callback_delivered_at timestamptz;
        CREATE INDEX forget_jobs_callback_due ON pgredact.forget_jobs (id)
            WHERE callback_url IS NOT NULL AND callback_delivered_at IS NULL;
    END IF;
    -- Who cancelled a job, when and why (state 'cancelled').
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'pgredact.forget_jobs'::pg_catalog.regclass
                   AND attname = 'cancelled_at' AND NOT attisdropped) THEN
        ALTER TABLE pgredact.forget_jobs ADD COLUMN cancelled_at timestamptz,
                                         ADD COLUMN cancelled_by text,
                                         ADD COLUMN cancel_reason text;
    END IF;
END $retries$;
CREATE UNIQUE INDEX IF NOT EXISTS forget_jobs_external_id ON pgredact.forget_jobs (external_id)
    WHERE external_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS pgredact.forget_meta (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    key_check text NOT NULL
);
REVOKE ALL ON pgredact.forget_jobs, pgredact.forget_batches, pgredact.forget_list, pgredact.forget_meta FROM PUBLIC;
-- The append-only, hash-chained audit trail of forget, unforget, retry and sweep: each record's
-- hash covers the previous hash and its own fields (checked by `pgredact forget --verify-audit`).
CREATE TABLE IF NOT EXISTS pgredact.forget_audit (
    seq       bigint PRIMARY KEY,
    at        timestamptz NOT NULL,
    operation text NOT NULL,
    job_id    bigint,
    record    jsonb NOT NULL,
    prev_hash text NOT NULL,
    hash      text NOT NULL
);
REVOKE ALL ON pgredact.forget_audit FROM PUBLIC;
-- Created once (CREATE OR REPLACE on every start would be DDL each time).
DO $audit$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE proname = 'forget_audit_append'
                 AND pronamespace = 'pgredact'::pg_catalog.regnamespace) THEN
CREATE OR REPLACE FUNCTION pgredact.forget_audit_append(op text, job bigint, rec jsonb) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
DECLARE
  prev text;
  n bigint;
  t timestamptz := pg_catalog.clock_timestamp();
  h text;
BEGIN
  -- One appender at a time, until its transaction ends, so the chain never forks.
  PERFORM pg_catalog.pg_advisory_xact_lock(7320460);
  SELECT a.seq, a.hash INTO n, prev FROM pgredact.forget_audit a ORDER BY a.seq DESC LIMIT 1;
  n := coalesce(n, 0) + 1;
  prev := coalesce(prev, 'genesis');
  h := pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
         prev || '|' || n::text || '|' || EXTRACT(epoch FROM t)::text || '|' || op || '|'
         || coalesce(job::text, '') || '|' || rec::text, 'UTF8')), 'hex');
  INSERT INTO pgredact.forget_audit (seq, at, operation, job_id, record, prev_hash, hash)
  VALUES (n, t, op, job, rec, prev, h);
  RETURN h;
END
$fn$;
    REVOKE ALL ON FUNCTION pgredact.forget_audit_append(text, bigint, jsonb) FROM PUBLIC;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE proname = 'forget_jobs_audit'
                 AND pronamespace = 'pgredact'::pg_catalog.regnamespace) THEN
CREATE OR REPLACE FUNCTION pgredact.forget_jobs_audit() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $fn$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.state IS NOT DISTINCT FROM OLD.state THEN RETURN NULL; END IF;
  PERFORM pgredact.forget_audit_append(
    NEW.kind || ':' || NEW.state, NEW.id,
    jsonb_strip_nulls(jsonb_build_object(
      'database', NEW.database, 'requester', NEW.requester, 'source', NEW.source,
      'external_id', NEW.external_id, 'regulation', NEW.regulation, 'deadline', NEW.deadline,
      'ids_total', NEW.ids_total, 'ids_new', NEW.ids_new, 'retries', NEW.retries,
      'summary', NEW.summary, 'verification', NEW.verification, 'error', NEW.error,
      'previous_state', CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END)));
  RETURN NULL;
END
$fn$;
    REVOKE ALL ON FUNCTION pgredact.forget_jobs_audit() FROM PUBLIC;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgname = 'forget_jobs_audit'
                 AND tgrelid = 'pgredact.forget_jobs'::pg_catalog.regclass) THEN
    CREATE TRIGGER forget_jobs_audit AFTER INSERT OR UPDATE ON pgredact.forget_jobs
      FOR EACH ROW EXECUTE FUNCTION pgredact.forget_jobs_audit();
  END IF;
END $audit$;
"#;

/// Creates the control tables (idempotent; after `control::ensure`).
pub async fn ensure_schema(client: &Client) -> Result<(), Error> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .map_err(|source| Error::DbDoing {
            what: "creating the forget tables in schema pgredact".to_string(),
            source,
        })
}

/// Appends a record to the forget audit trail (for operations that are not job state changes,
/// which the table's trigger records by itself). Returns the record's hash.
pub async fn audit_append(
    client: &Client,
    operation: &str,
    record: &Value,
) -> Result<String, Error> {
    Ok(client
        .query_one(
            "SELECT pgredact.forget_audit_append($1, NULL, CAST($2 AS text)::jsonb)",
            &[&operation, &record.to_string()],
        )
        .await?
        .get(0))
}

/// What `pgredact forget --verify-audit` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheck {
    pub records: i64,
    /// The hash of the last record: keep it outside the database (a ticket, a log) and compare
    /// later, since truncating the end of a chain leaves the rest consistent.
    pub head: String,
    /// The first record that breaks the chain, and why.
    pub broken: Option<String>,
}

/// Recomputes every record's hash from its fields and checks each record names the previous
/// one's: an edited, deleted, inserted or reordered record breaks the chain from there on.
pub async fn audit_verify(client: &Client) -> Result<AuditCheck, Error> {
    let rows = client
        .query(
            "SELECT seq, prev_hash, hash, pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to( \
               prev_hash || '|' || seq::text || '|' || EXTRACT(epoch FROM at)::text || '|' || operation || '|' \
               || coalesce(job_id::text, '') || '|' || record::text, 'UTF8')), 'hex') \
             FROM pgredact.forget_audit ORDER BY seq",
            &[],
        )
        .await?;
    let mut prev = "genesis".to_string();
    let mut broken = None;
    for (expect_seq, r) in (1i64..).zip(rows.iter()) {
        let (seq, prev_hash, hash, computed): (i64, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let why = if seq != expect_seq {
            Some(format!(
                "record {expect_seq} is missing (the next one is {seq})"
            ))
        } else if prev_hash != prev {
            Some(format!("record {seq} does not follow record {}", seq - 1))
        } else if computed != hash {
            Some(format!("record {seq} was changed after it was written"))
        } else {
            None
        };
        if why.is_some() {
            broken = why;
            break;
        }
        prev = hash;
    }
    Ok(AuditCheck {
        records: rows.len() as i64,
        head: prev,
        broken,
    })
}

/// Who asked, and through which interface.
#[derive(Debug, Clone)]
pub struct Origin {
    pub requester: String,
    /// `cli` or `api`.
    pub source: String,
}

/// What an API request adds to a job: the caller's request id, the regulation and deadline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInfo {
    /// The caller's own request id (unique per database).
    pub external_id: Option<String>,
    pub regulation: Option<String>,
    /// An explicit deadline (a `timestamptz` literal, already checked).
    pub deadline: Option<String>,
    /// Without an explicit deadline: days from receipt.
    pub deadline_days: Option<i32>,
    /// Keyed hash of the request's ID set (`pgredact.hmac_hex` of the sorted IDs).
    pub request_hash: Option<String>,
    /// Where to POST the signed completion notice when the job ends (checked: http or https).
    pub callback_url: Option<String>,
}

/// What [`create_with`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    New(i64),
    /// A job with the same `external_id` exists (nothing was created): its id and request hash.
    Existing(i64, Option<String>),
}

/// Creates a queued job with its batches (one transaction). Returns the job ID.
pub async fn create(
    client: &mut Client,
    database: &str,
    origin: &Origin,
    ids: &[String],
    duplicates: usize,
    batch_size: usize,
    plan: Option<&super::Plan>,
) -> Result<i64, Error> {
    let req = RequestInfo::default();
    match create_with(
        client, database, origin, ids, duplicates, batch_size, plan, &req,
    )
    .await?
    {
        Created::New(id) | Created::Existing(id, _) => Ok(id),
    }
}

/// [`create`] with the request's id and deadline; a job whose `external_id` exists already is
/// returned instead (even when the two requests race).
#[allow(clippy::too_many_arguments)]
pub async fn create_with(
    client: &mut Client,
    database: &str,
    origin: &Origin,
    ids: &[String],
    duplicates: usize,
    batch_size: usize,
    plan: Option<&super::Plan>,
    req: &RequestInfo,
) -> Result<Created, Error> {
    let plan_json = match plan {
        Some(p) => Some(serde_json::to_string(p)?),
        None => None,
    };
    let batch_size = batch_size.max(1);
    let tx = client.transaction().await?;
    let inserted = tx
        .query_opt(
            "INSERT INTO pgredact.forget_jobs (database, requester, source, state, ids_total, ids_duplicate, batch_size, plan, \
                    external_id, regulation, deadline, request_hash, callback_url) \
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, CAST($7 AS text)::jsonb, $8, $9, \
                     coalesce(CAST($10 AS text)::timestamptz, now() + make_interval(days => $11)), $12, $13) \
             ON CONFLICT (external_id) WHERE external_id IS NOT NULL DO NOTHING RETURNING id",
            &[
                &database,
                &origin.requester,
                &origin.source,
                &(ids.len() as i32),
                &(duplicates as i32),
                &(batch_size as i32),
                &plan_json,
                &req.external_id,
                &req.regulation,
                &req.deadline,
                &req.deadline_days,
                &req.request_hash,
                &req.callback_url,
            ],
        )
        .await?;
    let Some(inserted) = inserted else {
        let existing = tx
            .query_one(
                "SELECT id, request_hash FROM pgredact.forget_jobs WHERE external_id = $1",
                &[&req.external_id],
            )
            .await?;
        return Ok(Created::Existing(existing.get(0), existing.get(1)));
    };
    let id: i64 = inserted.get(0);
    let stmt = tx
        .prepare(
            "INSERT INTO pgredact.forget_batches (job_id, batch, ids, ids_count, id_hashes) VALUES ($1, $2, $3, $4, \
               ARRAY(SELECT pg_catalog.decode(pgredact.hmac_hex(v), 'hex') FROM pg_catalog.unnest(CAST($3 AS pg_catalog.text[])) v))",
        )
        .await?;
    for (n, chunk) in ids.chunks(batch_size).enumerate() {
        let chunk: Vec<String> = chunk.to_vec();
        tx.execute(&stmt, &[&id, &(n as i32), &chunk, &(chunk.len() as i32)])
            .await?;
    }
    tx.commit().await?;
    Ok(Created::New(id))
}

/// Unfinished forget jobs, oldest first.
pub async fn active(client: &Client) -> Result<Vec<i64>, Error> {
    Ok(client
        .query(
            "SELECT id FROM pgredact.forget_jobs WHERE kind = 'forget' \
             AND state IN ('queued', 'running', 'finalizing') ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// State and counts of a job, as the API and the CLI report them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobStatus {
    pub job_id: i64,
    pub kind: String,
    pub database: String,
    pub requester: String,
    pub source: String,
    pub state: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub ids_total: i64,
    pub ids_duplicate: i64,
    pub batches_total: i64,
    pub batches_done: i64,
    /// IDs whose data this job anonymized (or found already clean).
    pub ids_forgotten: i64,
    /// IDs already on the forget list before this job (nothing to do).
    pub ids_already_forgotten: i64,
    /// IDs with no rows in any policy table (added to the forget list all the same).
    pub ids_unknown: i64,
    /// Rows changed per table.
    pub rows_changed: serde_json::Map<String, Value>,
    pub plan: Option<Value>,
    pub summary: Option<Value>,
    pub verification: Option<Value>,
    pub error: Option<String>,
    /// What a job that ended done could not do (a refresh or ANALYZE that failed, a view it does
    /// not own): the data is clean, these copies or statistics may not be.
    pub warnings: Vec<String>,
    /// Attempts repeated after transient errors (deadlock, timeouts, lost connection).
    pub retries: i64,
    pub last_retry_error: Option<String>,
    /// The caller's own request id.
    pub external_id: Option<String>,
    /// `gdpr`, `ccpa` or the caller's name for it.
    pub regulation: Option<String>,
    pub deadline: Option<String>,
    /// true: done by the deadline; false: done after it, or not done and past it; null: no
    /// deadline, or not done yet and still within it.
    pub deadline_met: Option<bool>,
    /// The completion callback and its delivery: `url`, `attempts`, `next_attempt_at`,
    /// `last_error`, `delivered_at` (None for a job without one).
    pub callback: Option<Value>,
    /// A cancelled job's `at`, `by` and `reason` (None for a job not cancelled).
    pub cancellation: Option<Value>,
}

/// Reads a job (None when there is no such job).
pub async fn status(client: &Client, job_id: i64) -> Result<Option<JobStatus>, Error> {
    let Some(j) = client
        .query_opt(
            "SELECT id, kind, database, requester, source, state, \
                    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    ids_total::int8, ids_duplicate::int8, plan::text, summary::text, verification::text, error, \
                    retries::int8, last_retry_error, external_id, regulation, \
                    to_char(deadline AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    CASE WHEN deadline IS NULL THEN NULL WHEN state = 'done' THEN finished_at <= deadline \
                         WHEN now() > deadline THEN false END, \
                    callback_url, callback_attempts::int8, \
                    to_char(callback_next_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    callback_last_error, \
                    to_char(callback_delivered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    to_char(cancelled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                    cancelled_by, cancel_reason \
             FROM pgredact.forget_jobs WHERE id = $1",
            &[&job_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let b = batch_totals(client, job_id).await?;
    Ok(Some(job_status(&j, &b)))
}

/// The batch totals of job `job_id`: batches, batches done, IDs forgotten, already forgotten,
/// unknown, and rows changed per table (JSON text).
async fn batch_totals(client: &Client, job_id: i64) -> Result<tokio_postgres::Row, Error> {
    Ok(client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE state = 'done'), \
                    coalesce(sum(forgotten), 0)::int8, coalesce(sum(already), 0)::int8, coalesce(sum(unknown), 0)::int8, \
                    coalesce((SELECT jsonb_object_agg(key, total)::text FROM ( \
                        SELECT e.key, sum(e.value::int8) AS total FROM pgredact.forget_batches b2, \
                               jsonb_each_text(b2.rows) e WHERE b2.job_id = $1 GROUP BY e.key) s), '{}') \
             FROM pgredact.forget_batches WHERE job_id = $1",
            &[&job_id],
        )
        .await?)
}

/// A job's status from its `forget_jobs` row `j` (as [`status`] reads it) and its batch totals
/// `b`.
fn job_status(j: &tokio_postgres::Row, b: &tokio_postgres::Row) -> JobStatus {
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str::<Value>(&s).ok());
    let rows_changed = match parse(Some(b.get(5))) {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let summary = parse(j.get(12));
    let warnings = summary
        .as_ref()
        .and_then(|s| s.get("warnings"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|w| w.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    JobStatus {
        job_id: j.get(0),
        kind: j.get(1),
        database: j.get(2),
        requester: j.get(3),
        source: j.get(4),
        state: j.get(5),
        created_at: j.get(6),
        started_at: j.get(7),
        finished_at: j.get(8),
        ids_total: j.get(9),
        ids_duplicate: j.get(10),
        batches_total: b.get(0),
        batches_done: b.get(1),
        ids_forgotten: b.get(2),
        ids_already_forgotten: b.get(3),
        ids_unknown: b.get(4),
        rows_changed,
        plan: parse(j.get(11)),
        summary,
        verification: parse(j.get(13)),
        error: j.get(14),
        warnings,
        retries: j.get(15),
        last_retry_error: j.get(16),
        external_id: j.get(17),
        regulation: j.get(18),
        deadline: j.get(19),
        deadline_met: j.get(20),
        callback: j.get::<_, Option<String>>(21).map(|url| {
            serde_json::json!({
                "url": url,
                "attempts": j.get::<_, i64>(22),
                "next_attempt_at": j.get::<_, Option<String>>(23),
                "last_error": j.get::<_, Option<String>>(24),
                "delivered_at": j.get::<_, Option<String>>(25),
            })
        }),
        cancellation: j.get::<_, Option<String>>(26).map(|at| {
            serde_json::json!({
                "at": at,
                "by": j.get::<_, Option<String>>(27),
                "reason": j.get::<_, Option<String>>(28),
            })
        }),
    }
}

impl JobStatus {
    /// Human-readable report (what the CLI prints).
    pub fn render(&self) -> String {
        let mut s = format!(
            "job {} on database {:?} (requested by {} via {}): {}\n",
            self.job_id, self.database, self.requester, self.source, self.state
        );
        s.push_str(&format!(
            "  ids: {} requested ({} duplicate(s) ignored): {} forgotten now, {} already forgotten, {} unknown (no rows; suppressed from now on)\n",
            self.ids_total + self.ids_duplicate,
            self.ids_duplicate,
            self.ids_forgotten,
            self.ids_already_forgotten,
            self.ids_unknown
        ));
        s.push_str(&format!(
            "  batches: {}/{} done\n",
            self.batches_done, self.batches_total
        ));
        self.render_outcome(&mut s);
        self.render_request(&mut s);
        if let Some(e) = &self.error {
            s.push_str(&format!("  error: {e}\n"));
        }
        s
    }

    /// The rows changed, verification, refreshes, analyzes, wall time and warnings.
    fn render_outcome(&self, s: &mut String) {
        let changed: Vec<(&String, i64)> = self
            .rows_changed
            .iter()
            .map(|(t, n)| (t, n.as_i64().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        if changed.is_empty() {
            s.push_str("  rows changed: none\n");
        }
        for (t, n) in changed {
            s.push_str(&format!("  {t}: {n} row(s) changed\n"));
        }
        if let Some(Value::Object(v)) = &self.verification {
            let ok = v.get("ok").and_then(Value::as_bool).unwrap_or(false);
            s.push_str(&format!(
                "  verification: {}\n",
                if ok {
                    "re-queried every table: no PII left for these customers".to_string()
                } else {
                    format!("FAILED: {}", Value::Object(v.clone()))
                }
            ));
        }
        if let Some(Value::Object(sm)) = &self.summary {
            for key in ["refreshed", "analyzed"] {
                if let Some(Value::Array(a)) = sm.get(key) {
                    if !a.is_empty() {
                        let names: Vec<String> = a
                            .iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect();
                        s.push_str(&format!("  {key}: {}\n", names.join(", ")));
                    }
                }
            }
            if let Some(w) = sm.get("wall_seconds").and_then(Value::as_f64) {
                s.push_str(&format!("  wall time: {w:.2} s\n"));
            }
        }
        for w in &self.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
    }

    /// The request's id and deadline, retries, callback and cancellation.
    fn render_request(&self, s: &mut String) {
        if let Some(e) = &self.external_id {
            s.push_str(&format!("  request id: {e}\n"));
        }
        if let Some(d) = &self.deadline {
            let met = match self.deadline_met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "pending",
            };
            s.push_str(&format!(
                "  deadline ({}): {d}: {met}\n",
                self.regulation.as_deref().unwrap_or("-")
            ));
        }
        if self.retries > 0 {
            s.push_str(&format!(
                "  retried after transient errors: {} time(s) (last: {})\n",
                self.retries,
                self.last_retry_error.as_deref().unwrap_or("-")
            ));
        }
        if let Some(Value::Object(c)) = &self.callback {
            let delivered = c.get("delivered_at").and_then(Value::as_str);
            let attempts = c.get("attempts").and_then(Value::as_i64).unwrap_or(0);
            s.push_str(&match delivered {
                Some(at) => format!("  callback: delivered at {at} ({attempts} attempt(s))\n"),
                None => format!(
                    "  callback: not delivered yet ({attempts} attempt(s); last error: {})\n",
                    c.get("last_error").and_then(Value::as_str).unwrap_or("-")
                ),
            });
        }
        if let Some(Value::Object(c)) = &self.cancellation {
            let field = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
            s.push_str(&format!(
                "  cancelled at {} by {} (reason: {}): its customer IDs and their keyed hashes were removed\n",
                field("at"),
                field("by"),
                field("reason")
            ));
        }
    }
}
