//! Right to be forgotten: anonymize a customer's PII in every policy table with a `subject`,
//! keep the record and its aggregates, and keep the PII from coming back.
//!
//! - [`csv`]: IDs from CSV files, `--ids` lists and JSON, validated and canonical.
//! - [`plan`]: the catalog-checked specification and the plan (rows matched, blockers).
//! - [`suppress`]: the BEFORE INSERT OR UPDATE triggers that keep forgotten PII out.
//! - [`jobs`]: the control tables (forget list, jobs, batches) and job status.
//! - [`exec`]: running a job in resumable, idempotent batches.
//! - [`Error`]: what can go wrong, one variant per cause (transient ones: [`Error::is_transient`]).
//!
//! Entry points: [`run_cli`] (`pgredact forget`), [`run_unforget_cli`] (`pgredact unforget`),
//! and [`Session`] (used by the admin API and the tests).

pub mod csv;
mod error;
pub mod exec;
pub mod jobs;
pub mod plan;
mod resolve;
mod retry;
mod spec;
pub mod suppress;

use crate::config::Config;
use crate::policy::{load_dir, DatabasePolicy};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::Client;

pub use error::{db_error, Error};
pub use exec::{Cancelled, Faults, RetryError, RunEnd};
pub use jobs::{JobStatus, Origin};
pub use plan::{Plan, Spec};

/// Default IDs per batch (one transaction each).
pub const DEFAULT_BATCH_SIZE: usize = 5_000;

/// `pgredact forget`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ForgetArgs {
    /// Database whose policy applies (default: the only policy database with subject tables).
    #[arg(long)]
    pub database: Option<String>,
    /// CSV file of customer IDs: one a line, optional header, blank lines ignored.
    #[arg(long, value_name = "PATH", conflicts_with = "ids")]
    pub csv: Option<PathBuf>,
    /// Comma-separated customer IDs.
    #[arg(long, value_name = "ID,ID,...")]
    pub ids: Option<String>,
    /// Print the plan (tables, columns, rows matched, blockers) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Who asked (recorded in the job; default: $USER).
    #[arg(long)]
    pub requester: Option<String>,
    /// Customer IDs per transaction.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Resume unfinished jobs (after a crash) instead of starting a new one.
    #[arg(long, conflicts_with_all = ["csv", "ids", "dry_run"])]
    pub resume: bool,
    /// Retry a failed or blocked job (it kept its customer IDs) and run it to the end.
    #[arg(long, value_name = "JOB_ID", conflicts_with_all = ["csv", "ids", "dry_run", "resume"])]
    pub retry: Option<i64>,
    /// Re-apply the whole forget list to every subject table (after restoring a backup, or
    /// after a table or column joined the policy), reinstalling the suppression triggers.
    #[arg(long, conflicts_with_all = ["csv", "ids", "dry_run", "resume", "retry"])]
    pub sweep: bool,
    /// Check the signature of a receipt saved from the admin API (`GET /v1/jobs/{id}/receipt`)
    /// with the key in `[admin] receipt_key_env`; nothing else is done.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["csv", "ids", "dry_run", "resume", "retry", "sweep"])]
    pub verify_receipt: Option<PathBuf>,
    /// Check the hash chain of the forget audit trail (`pgredact.forget_audit`) and print its
    /// head hash (keep it elsewhere: a later check can then tell a truncated trail).
    #[arg(long, conflicts_with_all = ["csv", "ids", "dry_run", "resume", "retry", "sweep", "verify_receipt"])]
    pub verify_audit: bool,
    /// Cancel a queued, blocked or failed job: its customer IDs and their keyed hashes are
    /// removed and it never runs (refused for a running or done job, and for a failed one whose
    /// customers are already on the forget list).
    #[arg(long, value_name = "JOB_ID", conflicts_with_all = ["csv", "ids", "dry_run", "resume", "retry", "sweep", "verify_receipt", "verify_audit"])]
    pub cancel: Option<i64>,
    /// Why the job is cancelled (with `--cancel`; recorded on the job and the audit trail).
    #[arg(long, requires = "cancel")]
    pub reason: Option<String>,
}

/// `pgredact unforget`: lifts suppression for IDs (audited; anonymized data stays anonymized).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UnforgetArgs {
    /// Database whose policy applies (default: the only policy database with subject tables).
    #[arg(long)]
    pub database: Option<String>,
    /// CSV file of customer IDs: one a line, optional header, blank lines ignored.
    #[arg(long, value_name = "PATH", conflicts_with = "ids")]
    pub csv: Option<PathBuf>,
    /// Comma-separated customer IDs.
    #[arg(long, value_name = "ID,ID,...")]
    pub ids: Option<String>,
    /// Who asked (required: unforget is audited).
    #[arg(long)]
    pub requester: String,
    /// Why (recorded in the audit record).
    #[arg(long)]
    pub reason: Option<String>,
}

/// How to reach one database as the control role.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub tls: Option<crate::tls::UpstreamTls>,
    /// Timeouts of the session and retries of job runs (`[forget]`).
    pub settings: crate::config::ForgetSettings,
    /// `application_name` of the connections (`pgredact-forget`; the admin API's pool uses
    /// `pgredact-admin`).
    pub application_name: &'static str,
}

impl Target {
    pub fn from_config(cfg: &Config, database: &str) -> Target {
        Target {
            host: cfg.upstream.host.clone(),
            port: cfg.upstream.port,
            user: cfg.upstream.user.clone(),
            password: cfg.upstream_password(),
            database: database.to_string(),
            tls: cfg.upstream_tls.clone(),
            settings: cfg.forget.clone(),
            application_name: "pgredact-forget",
        }
    }

    pub async fn connect(&self) -> Result<Client, Error> {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database)
            .application_name(self.application_name)
            // Type names from format_type() come out schema-qualified unless built in, and
            // nothing the session runs can be redirected by objects in other schemas.
            // lock_timeout: a forget statement queued behind a long lock would hold its own
            // locks and stall every writer queued behind it; it gives up and is retried instead.
            .options(format!(
                "-c search_path=pg_catalog -c client_min_messages=warning -c lock_timeout={}ms -c statement_timeout={}s",
                self.settings.lock_timeout_ms, self.settings.statement_timeout_secs
            ));
        if let Some(p) = &self.password {
            c.password(p);
        }
        let client = crate::tls::pg_connect(c, self.tls.as_ref())
            .await
            .map_err(|source| Error::Connect {
                host: self.host.clone(),
                port: self.port,
                user: self.user.clone(),
                database: self.database.clone(),
                source,
            })?;
        Ok(client)
    }
}

/// A control-plane connection to one database, with its resolved forget specification.
pub struct Session {
    pub client: Client,
    pub spec: Spec,
    pub policy: Arc<DatabasePolicy>,
    /// Where `client` goes (to reconnect after a lost connection).
    pub target: Target,
}

/// Pause before attempt `n + 1` after a transient error: 200 ms doubling to 10 s, with up to
/// 25% jitter so workers that failed together do not retry together.
fn backoff(n: u32) -> std::time::Duration {
    use rand::Rng;
    let base = 200u64
        .saturating_mul(1u64 << n.saturating_sub(1).min(16))
        .min(10_000);
    let jitter = rand::thread_rng().gen_range(0..=base / 4);
    std::time::Duration::from_millis(base + jitter)
}

impl Session {
    /// Connects, creates the control schema and tables, stores the key (when given), and
    /// resolves the policy against the catalog.
    pub async fn open(
        target: &Target,
        policy: Arc<DatabasePolicy>,
        hash_key: Option<&[u8]>,
    ) -> Result<Session, Error> {
        let client = target.connect().await?;
        // The forget list only works with the key it was built with: refuse a different one
        // before it is stored.
        if let Some(key) = hash_key {
            if let Some(stored) = stored_key_check(&client).await? {
                if stored != key_check_hex(key) {
                    return Err(Error::KeyChanged);
                }
            }
        }
        install_schema(&client, hash_key).await?;
        check_stored_key(&client).await?;
        let mut spec = plan::resolve(&client, &policy).await?;
        spec.compiled_trigger = target.settings.compiled_trigger;
        Ok(Session {
            client,
            spec,
            policy,
            target: target.clone(),
        })
    }

    /// Resolves `policy` against the catalog again, on the same connection: a session kept
    /// between requests (the admin API's pool) plans with the schema as it is now.
    pub async fn refresh(&mut self, policy: Arc<DatabasePolicy>) -> Result<(), Error> {
        self.spec = plan::resolve(&self.client, &policy).await?;
        self.spec.compiled_trigger = self.target.settings.compiled_trigger;
        self.policy = policy;
        Ok(())
    }

    /// Installs the suppression triggers (idempotent).
    pub async fn ensure_suppression(&mut self) -> Result<Vec<String>, Error> {
        if !self.spec.static_blockers.is_empty() {
            return Err(Error::SuppressionBlocked(self.spec.static_blockers.clone()));
        }
        suppress::ensure(&mut self.client, &self.spec).await
    }

    /// Plans without changing anything.
    pub async fn plan(&self, ids: &[String]) -> Result<Plan, Error> {
        plan::plan(&self.client, &self.spec, ids).await
    }

    /// Creates a queued job. IDs must be canonical ([`csv`]).
    pub async fn submit(
        &mut self,
        origin: &Origin,
        list: &csv::IdList,
        batch_size: usize,
    ) -> Result<i64, Error> {
        self.submit_planned(origin, list, batch_size, None).await
    }

    /// [`Session::submit`] with a plan just made for the same IDs (the job start reuses it).
    pub async fn submit_planned(
        &mut self,
        origin: &Origin,
        list: &csv::IdList,
        batch_size: usize,
        plan: Option<&Plan>,
    ) -> Result<i64, Error> {
        if list.ids.is_empty() {
            return Err(Error::NoIds);
        }
        jobs::create(
            &mut self.client,
            &self.spec.database,
            origin,
            &list.ids,
            list.duplicates,
            batch_size,
            plan,
        )
        .await
    }

    /// [`Session::submit_planned`] with the request's id and deadline (an API request): a job
    /// with the same `external_id` is returned instead of a new one.
    pub async fn submit_request(
        &mut self,
        origin: &Origin,
        list: &csv::IdList,
        batch_size: usize,
        plan: Option<&Plan>,
        req: &jobs::RequestInfo,
    ) -> Result<jobs::Created, Error> {
        if list.ids.is_empty() {
            return Err(Error::NoIds);
        }
        jobs::create_with(
            &mut self.client,
            &self.spec.database,
            origin,
            &list.ids,
            list.duplicates,
            batch_size,
            plan,
            req,
        )
        .await
    }

    /// Runs (or resumes) a job as far as this worker can. Transient errors (deadlock,
    /// serialization failure, lock or statement timeout, lost connection) are retried with
    /// backoff, up to `[forget] attempts` in all; then the run ends `Interrupted` and the job
    /// stays as it is (resumable, every ID kept). Never returns `RunEnd::Transient`.
    pub async fn run(&mut self, job_id: i64, faults: Faults) -> Result<RunEnd, Error> {
        let attempts = self.target.settings.attempts.max(1);
        let mut last: Option<String> = None;
        for attempt in 1..=attempts {
            if let Some(msg) = &last {
                tracing::warn!(
                    job = job_id,
                    attempt,
                    "forget job: retrying after a transient error: {msg}"
                );
                tokio::time::sleep(backoff(attempt - 1)).await;
            }
            let msg = match self.attempt(job_id, faults, last.as_deref()).await {
                Ok(RunEnd::Transient(m)) => m,
                Err(e) if self.client.is_closed() => e.to_string(),
                other => return other,
            };
            last = Some(msg);
        }
        Ok(RunEnd::Interrupted(format!(
            "gave up after {attempts} attempt(s) that met transient errors (last: {}); the job keeps its IDs \
             and resumes at the next run",
            last.unwrap_or_default()
        )))
    }

    /// One attempt: reconnects when the connection was lost, records the previous attempt's
    /// transient error, runs the job.
    async fn attempt(
        &mut self,
        job_id: i64,
        faults: Faults,
        previous_error: Option<&str>,
    ) -> Result<RunEnd, Error> {
        if self.client.is_closed() {
            if let Err(e) = self.reconnect().await {
                return Ok(RunEnd::Transient(e.to_string()));
            }
        }
        if let Some(msg) = previous_error {
            self.note_retry(job_id, msg).await;
        }
        exec::run_job(&mut self.client, &self.spec, job_id, faults).await
    }

    /// Records a transient error in the job (best effort: the job's progress does not depend on it).
    async fn note_retry(&self, job_id: i64, msg: &str) {
        let _ = self
            .client
            .execute(
                "UPDATE pgredact.forget_jobs SET retries = retries + 1, last_retry_error = $2 WHERE id = $1",
                &[&job_id, &msg],
            )
            .await;
    }

    async fn reconnect(&mut self) -> Result<(), Error> {
        self.client = self.target.connect().await?;
        Ok(())
    }

    /// Resumes every unfinished job.
    pub async fn resume_all(&mut self, faults: Faults) -> Result<Vec<(i64, RunEnd)>, Error> {
        if self.client.is_closed() {
            self.reconnect().await?;
        }
        let mut out = Vec::new();
        for id in jobs::active(&self.client).await? {
            let end = self.run(id, faults).await?;
            out.push((id, end));
        }
        Ok(out)
    }

    /// Makes a failed or blocked job runnable again (see [`exec::retry`]); returns its new state.
    pub async fn retry(&mut self, job_id: i64) -> Result<String, RetryError> {
        exec::retry(&mut self.client, job_id).await
    }

    /// Cancels a queued, blocked or failed job (see [`exec::cancel`]).
    pub async fn cancel(
        &mut self,
        job_id: i64,
        by: &str,
        reason: Option<&str>,
    ) -> Result<exec::Cancelled, RetryError> {
        let done = exec::cancel(&mut self.client, job_id, by, reason).await?;
        tracing::info!(job = job_id, requester = %by, previous = %done.previous_state, "forget job cancelled");
        Ok(done)
    }

    pub async fn status(&self, job_id: i64) -> Result<Option<JobStatus>, Error> {
        jobs::status(&self.client, job_id).await
    }

    /// Removes IDs from the forget list and writes an audit record. Returns (removed, job id).
    pub async fn unforget(
        &mut self,
        origin: &Origin,
        list: &csv::IdList,
        reason: Option<&str>,
    ) -> Result<(i64, i64), Error> {
        let tx = self.client.transaction().await?;
        let removed: i64 = tx
            .query_one(
                "WITH d AS (DELETE FROM pgredact.forget_list WHERE subject_hash IN ( \
                   SELECT pg_catalog.decode(pgredact.hmac_hex(v), 'hex') FROM pg_catalog.unnest(CAST($1 AS pg_catalog.text[])) v) \
                   RETURNING 1) SELECT count(*) FROM d",
                &[&list.ids],
            )
            .await?
            .get(0);
        let summary = serde_json::json!({ "removed_from_forget_list": removed, "reason": reason });
        let id: i64 = tx
            .query_one(
                "INSERT INTO pgredact.forget_jobs (kind, database, requester, source, state, started_at, finished_at, \
                   ids_total, ids_duplicate, summary) \
                 VALUES ('unforget', $1, $2, $3, 'done', now(), now(), $4, $5, CAST($6 AS text)::jsonb) RETURNING id",
                &[
                    &self.spec.database,
                    &origin.requester,
                    &origin.source,
                    &(list.ids.len() as i32),
                    &(list.duplicates as i32),
                    &summary.to_string(),
                ],
            )
            .await?
            .get(0);
        tx.commit().await?;
        tracing::info!(job = id, removed, requester = %origin.requester, "unforget");
        Ok((removed, id))
    }

    /// Parses IDs from a CSV file's bytes for this database's subject types.
    pub fn parse_csv(&self, bytes: &[u8]) -> Result<csv::IdList, csv::Error> {
        csv::parse_csv(bytes, self.spec.id_kind, &self.spec.subject_names)
    }

    pub fn parse_ids(&self, text: &str) -> Result<csv::IdList, csv::Error> {
        csv::parse_id_list(text, self.spec.id_kind)
    }
}

/// Input of the key check (a keyed hash of a constant, stored once: never the key itself).
const KEY_CHECK: &str = "pgredact forget key check";

fn key_check_hex(key: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(KEY_CHECK.as_bytes());
            hex::encode(m.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// Installs the control schema when its DDL changed (storing the key, when given, either way).
async fn install_schema(client: &Client, hash_key: Option<&[u8]>) -> Result<(), Error> {
    // The schema is installed only when its DDL changed: every API request opens a session,
    // and each DDL makes every masked session re-read the catalog.
    let ddl = crate::control::ddl_fingerprint(jobs::SCHEMA_SQL);
    if crate::control::schema_state(client).await.as_deref() == Some(ddl.as_str()) {
        if let Some(key) = hash_key {
            crate::control::store_key(client, key)
                .await
                .map_err(Error::ControlSchema)?;
        }
    } else {
        // One transaction holding an advisory lock until commit: two instances starting at
        // once must not both try to create the schema (a session-level lock released before
        // the creating transaction commits lets the second one in too early).
        client
            .batch_execute("BEGIN; SELECT pg_catalog.pg_advisory_xact_lock(7320451)")
            .await?;
        let created = async {
            crate::control::ensure(client, hash_key)
                .await
                .map_err(Error::ControlSchema)?;
            jobs::ensure_schema(client).await?;
            crate::control::set_schema_state(client, &ddl).await?;
            Ok::<(), Error>(())
        }
        .await;
        let end = if created.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        client.batch_execute(end).await?;
        created?;
    }
    Ok(())
}

/// Fails unless the database has a hash key and it is still the forget list's key (recording
/// the key check on first use).
async fn check_stored_key(client: &Client) -> Result<(), Error> {
    let has_key: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pgredact.hash_key)", &[])
        .await?
        .get(0);
    if !has_key {
        return Err(Error::NoHashKey);
    }
    // The key in the database (used by the triggers) must still be the forget list's key.
    let current: String = client
        .query_one("SELECT pgredact.hmac_hex($1)", &[&KEY_CHECK])
        .await?
        .get(0);
    match stored_key_check(client).await? {
        Some(stored) if stored != current => return Err(Error::KeyChanged),
        Some(_) => {}
        None => {
            client
                .execute(
                    "INSERT INTO pgredact.forget_meta (id, key_check) VALUES (true, $1) ON CONFLICT (id) DO NOTHING",
                    &[&current],
                )
                .await?;
        }
    }
    Ok(())
}

async fn stored_key_check(client: &Client) -> Result<Option<String>, Error> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgredact.forget_meta') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client
        .query_opt("SELECT key_check FROM pgredact.forget_meta", &[])
        .await?
        .map(|r| r.get(0)))
}

/// For `pgredact check`: what is wrong with the suppression triggers of a policy's tables (see
/// [`suppress::audit`]). `None` when the policy has no subject table or the database cannot be
/// read (the forget plan check reports that).
pub async fn suppression_problems(cfg: &Config, policy: &DatabasePolicy) -> Option<Vec<String>> {
    if !policy.tables.values().any(|t| t.subject.is_some()) {
        return None;
    }
    let client = Target::from_config(cfg, &policy.database)
        .connect()
        .await
        .ok()?;
    let spec = plan::resolve(&client, policy).await.ok()?;
    match suppress::audit(&client, &spec).await {
        Ok(p) => Some(p),
        Err(e) => Some(vec![format!("cannot read the triggers: {e}")]),
    }
}

/// The policy for `database`, or the only one whose tables have a subject.
pub fn pick_policy(cfg: &Config, database: Option<&str>) -> Result<Arc<DatabasePolicy>, Error> {
    let set = load_dir(&cfg.policies_dir(), 0).map_err(Error::Policy)?;
    match database {
        Some(db) => set.get(db).ok_or_else(|| Error::NoPolicyFor {
            database: db.to_string(),
            dir: cfg.policies_dir(),
        }),
        None => {
            let mut with_subject: Vec<Arc<DatabasePolicy>> = set
                .by_database
                .values()
                .filter(|p| p.tables.values().any(|t| t.subject.is_some()))
                .cloned()
                .collect();
            match with_subject.len() {
                1 => Ok(with_subject.remove(0)),
                0 => Err(Error::NoSubjectTable(cfg.policies_dir())),
                _ => {
                    let mut names: Vec<String> =
                        with_subject.iter().map(|p| p.database.clone()).collect();
                    names.sort();
                    Err(Error::SeveralSubjectDatabases(names))
                }
            }
        }
    }
}

fn read_ids(
    session: &Session,
    csv_path: &Option<PathBuf>,
    ids: &Option<String>,
) -> Result<csv::IdList, Error> {
    match (csv_path, ids) {
        (Some(p), _) => {
            let bytes = std::fs::read(p).map_err(|source| Error::ReadFile {
                path: p.clone(),
                source,
            })?;
            session.parse_csv(&bytes).map_err(|source| Error::CsvFile {
                path: p.clone(),
                source,
            })
        }
        (None, Some(list)) => Ok(session.parse_ids(list)?),
        (None, None) => Err(Error::IdsNotGiven),
    }
}

fn default_requester() -> String {
    std::env::var("USER").unwrap_or_else(|_| "cli".to_string())
}

/// `pgredact forget`: plan, then (unless `--dry-run` or blocked) run the job to the end.
/// Returns the report to print; an error when blocked or failed.
pub async fn run_cli(cfg: &Config, args: ForgetArgs) -> Result<String, Error> {
    run_cli_with(cfg, args, Faults::default()).await
}

/// [`run_cli`] with fault injection (tests).
pub async fn run_cli_with(cfg: &Config, args: ForgetArgs, faults: Faults) -> Result<String, Error> {
    if let Some(path) = &args.verify_receipt {
        return verify_receipt_file(cfg, path);
    }
    let policy = pick_policy(cfg, args.database.as_deref())?;
    let target = Target::from_config(cfg, &policy.database);
    let key = cfg.hash_key();
    let mut session = Session::open(&target, policy, key.as_deref()).await?;
    if let Some(job) = args.retry {
        session
            .retry(job)
            .await
            .map_err(|source| Error::Retry { job, source })?;
        return run_to_end(&mut session, job, faults).await;
    }
    if let Some(job) = args.cancel {
        return cancel_cli(&mut session, job, &args).await;
    }
    if args.sweep {
        return sweep_cli(&mut session, &args).await;
    }
    if args.verify_audit {
        return verify_audit_cli(&session).await;
    }
    if args.resume {
        return resume_cli(&mut session, faults).await;
    }
    let list = read_ids(&session, &args.csv, &args.ids)?;
    if list.ids.is_empty() {
        return Err(Error::EmptyIds);
    }
    let plan = session.plan(&list.ids).await?;
    if args.dry_run {
        return Ok(format!("{}(dry run: nothing was changed)\n", plan.render()));
    }
    if plan.has_blockers() {
        return Err(Error::Blocked(Box::new(plan)));
    }
    let origin = Origin {
        requester: args.requester.unwrap_or_else(default_requester),
        source: "cli".to_string(),
    };
    let job = session
        .submit_planned(&origin, &list, args.batch_size, Some(&plan))
        .await?;
    run_to_end(&mut session, job, faults).await
}

/// `pgredact forget --cancel JOB`.
async fn cancel_cli(session: &mut Session, job: i64, args: &ForgetArgs) -> Result<String, Error> {
    let by = args.requester.clone().unwrap_or_else(default_requester);
    let reason = args.reason.as_deref().filter(|r| !r.trim().is_empty());
    let done = session
        .cancel(job, &by, reason)
        .await
        .map_err(|source| Error::Cancel { job, source })?;
    let status = session.status(job).await?.ok_or(Error::JobVanished(job))?;
    Ok(format!(
        "{}  cancelled (was {}): {} customer ID(s) and their keyed hashes removed; none of them \
         is on the forget list through this job\n",
        status.render(),
        done.previous_state,
        done.ids_removed
    ))
}

/// `pgredact forget --sweep`.
async fn sweep_cli(session: &mut Session, args: &ForgetArgs) -> Result<String, Error> {
    let tables = exec::sweep(&mut session.client, &session.spec).await?;
    let listed: i64 = session
        .client
        .query_one("SELECT pg_catalog.count(*) FROM pgredact.forget_list", &[])
        .await?
        .get(0);
    let mut out = format!(
        "sweep of database {:?}: the forget list ({listed} customer(s)) re-applied to every subject table\n",
        session.spec.database
    );
    for t in &tables {
        out.push_str(&format!("  {}: {} row(s) changed\n", t.table, t.changed));
    }
    let left: Vec<String> = tables
        .iter()
        .filter(|t| t.left > 0)
        .map(|t| format!("{}: {}", t.table, t.left))
        .collect();
    if !left.is_empty() {
        return Err(Error::SweepUnverified { report: out, left });
    }
    out.push_str("  verification: no row of a forgotten customer holds PII\n");
    let record = serde_json::json!({
        "requester": args.requester.clone().unwrap_or_else(default_requester),
        "forget_list": listed,
        "rows_changed": tables.iter().map(|t| (t.table.clone(), t.changed)).collect::<std::collections::BTreeMap<_, _>>(),
    });
    jobs::audit_append(&session.client, "sweep", &record).await?;
    Ok(out)
}

/// `pgredact forget --verify-audit`.
async fn verify_audit_cli(session: &Session) -> Result<String, Error> {
    let check = jobs::audit_verify(&session.client).await?;
    match check.broken {
        None => Ok(format!(
            "forget audit trail of database {:?}: {} record(s), chain intact; head {}\n",
            session.spec.database, check.records, check.head
        )),
        Some(why) => Err(Error::AuditBroken {
            database: session.spec.database.clone(),
            why,
            records: check.records,
        }),
    }
}

/// `pgredact forget --resume`.
async fn resume_cli(session: &mut Session, faults: Faults) -> Result<String, Error> {
    let ends = session.resume_all(faults).await?;
    if ends.is_empty() {
        return Ok("no unfinished forget jobs\n".to_string());
    }
    let mut out = String::new();
    for (id, end) in ends {
        if let Some(st) = session.status(id).await? {
            out.push_str(&st.render());
        }
        if let RunEnd::Interrupted(message) = end {
            return Err(Error::Interrupted {
                report: out,
                message,
            });
        }
    }
    Ok(out)
}

/// `pgredact forget --verify-receipt FILE`.
fn verify_receipt_file(cfg: &Config, path: &std::path::Path) -> Result<String, Error> {
    let var = cfg.admin.clone().unwrap_or_default().receipt_key_env;
    let key = match std::env::var(&var).ok().filter(|k| !k.is_empty()) {
        Some(k) => k,
        None => return Err(Error::NoReceiptKey(var)),
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let r = crate::admin::receipt::verify(key.as_bytes(), &text).map_err(|source| {
        Error::InvalidReceipt {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(format!(
        "{}: valid receipt: job {} on database {}, PII removed at {}, verification ok: {}\n",
        path.display(),
        r["job_id"],
        r["database"],
        r["pii_removed_at"],
        r["verification"]["ok"]
    ))
}

/// Runs a job and renders its report; an error unless it ended done.
async fn run_to_end(session: &mut Session, job: i64, faults: Faults) -> Result<String, Error> {
    let end = session.run(job, faults).await;
    let status = session.status(job).await?.ok_or(Error::JobVanished(job))?;
    let report = status.render();
    match end {
        Err(e) => Err(Error::JobFailed {
            report,
            source: Box::new(e),
        }),
        Ok(RunEnd::Interrupted(message)) | Ok(RunEnd::Transient(message)) => {
            Err(Error::JobInterrupted {
                report,
                message,
                job,
            })
        }
        Ok(RunEnd::Finished) => match status.state.as_str() {
            jobs::DONE => Ok(report),
            _ => Err(Error::JobNotDone { report }),
        },
    }
}

/// `pgredact unforget`: lifts suppression for the IDs; audited in `pgredact.forget_jobs`.
pub async fn run_unforget_cli(cfg: &Config, args: UnforgetArgs) -> Result<String, Error> {
    if args.requester.trim().is_empty() {
        return Err(Error::RequesterRequired);
    }
    let policy = pick_policy(cfg, args.database.as_deref())?;
    let target = Target::from_config(cfg, &policy.database);
    let key = cfg.hash_key();
    let mut session = Session::open(&target, policy, key.as_deref()).await?;
    let list = read_ids(&session, &args.csv, &args.ids)?;
    let origin = Origin {
        requester: args.requester.clone(),
        source: "cli".to_string(),
    };
    let (removed, id) = session
        .unforget(&origin, &list, args.reason.as_deref())
        .await?;
    Ok(format!(
        "unforget (audit record {id}, requested by {}): {removed} of {} ID(s) removed from the forget list; \
         their future writes keep their PII again. Data already anonymized stays anonymized.\n",
        args.requester,
        list.ids.len()
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        let ms = |n| super::backoff(n).as_millis() as u64;
        assert!((200..=250).contains(&ms(1)), "{}", ms(1));
        assert!((400..=500).contains(&ms(2)), "{}", ms(2));
        assert!((10_000..=12_500).contains(&ms(7)), "{}", ms(7));
        assert!((10_000..=12_500).contains(&ms(60)), "{}", ms(60));
    }
}
