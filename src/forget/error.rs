//! What can go wrong in forget: [`Error`], one variant per cause. Its `Display` is the message
//! the CLI prints, the admin API answers and job records keep: PostgreSQL errors as one line
//! (message and SQLSTATE, never the DETAIL: see [`db_error`]).

use super::csv;
use super::exec::RetryError;
use super::plan::Plan;
use std::path::PathBuf;

/// A PostgreSQL error as one line: SQLSTATE and message only. The DETAIL (which may quote row
/// values, i.e. PII or raw IDs) is left out on purpose: these strings end up in job records.
pub fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// Why a forget operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control connection could not be opened.
    #[error(
        "connecting to {host}:{port} as {user} (database {database}): {}",
        db_error(source)
    )]
    Connect {
        host: String,
        port: u16,
        user: String,
        database: String,
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("{}", db_error(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A statement failed while doing `what`.
    #[error("{what}: {}", db_error(source))]
    DbDoing {
        what: String,
        source: tokio_postgres::Error,
    },
    #[error("creating the control schema pgredact: {}", control_reason(.0))]
    ControlSchema(crate::control::ControlError),
    #[error(
        "the hash key differs from the one the forget list was built with: every \
         forgotten customer's keyed hash would stop matching and suppression would silently stop. Restore \
         the previous key ([secrets] hash_key_env)"
    )]
    KeyChanged,
    #[error(
        "no hash key: set the environment variable named by [secrets] hash_key_env \
         (the forget list is keyed by hashes of IDs)"
    )]
    NoHashKey,
    /// The policy files do not load (their own `file:line: reason` message).
    #[error("{0}")]
    Policy(crate::policy::Error),
    #[error("no policy file for database {database:?} in {}", dir.display())]
    NoPolicyFor { database: String, dir: PathBuf },
    #[error("no policy in {} has a table with a `subject`: nothing to forget", .0.display())]
    NoSubjectTable(PathBuf),
    #[error("several databases have subject tables ({}): choose one with --database", .0.join(", "))]
    SeveralSubjectDatabases(Vec<String>),
    #[error(
        "database {0:?}: no policy table has a `subject` column, so there is nothing to forget"
    )]
    NothingToForget(String),
    #[error("{table}: {source}")]
    SubjectTypes {
        table: String,
        source: csv::KindConflict,
    },
    #[error("cannot install suppression triggers: {}", .0.join("; "))]
    SuppressionBlocked(Vec<String>),
    #[error("{0}: a forget value contains {tag}, which pgredact reserves", tag = super::suppress::TAG)]
    ReservedTag(String),
    /// Customer IDs that do not parse (nothing was changed).
    #[error(transparent)]
    Ids(#[from] csv::Error),
    #[error("{}: {source}; nothing was changed", path.display())]
    CsvFile { path: PathBuf, source: csv::Error },
    #[error("{}: cannot read: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("give the customer IDs with --csv PATH or --ids 1,2,3")]
    IdsNotGiven,
    #[error("no customer IDs given")]
    NoIds,
    #[error("no customer IDs given (the file or list is empty)")]
    EmptyIds,
    #[error("--requester is required: unforget is audited")]
    RequesterRequired,
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("job {0} does not exist")]
    NoSuchJob(i64),
    #[error("job {0} vanished")]
    JobVanished(i64),
    #[error(
        "batch {batch}: rows still hold PII after the update ({}); the batch was rolled back",
        left.join(", ")
    )]
    PiiLeft { batch: i32, left: Vec<String> },
    /// A test hook stopped the run (as if the process died).
    #[error("stopped by fault injection after {0} batch(es)")]
    FaultStop(usize),
    /// A test hook failed a batch before its commit.
    #[error("failed by fault injection inside batch {0}")]
    FaultInBatch(i32),
    /// Finalize waited too long for transactions older than the job's forget list.
    #[error(
        "{0} transaction(s) older than the job's forget list are still open; finalize waits for them \
         (see pg_stat_activity for long transactions)"
    )]
    OldTransactions(i64),
    /// Finalize waited too long for other jobs that own some of this job's IDs.
    #[error(
        "{0} of this job's IDs belong to other forget jobs still running; finalize verifies them once \
         those jobs have anonymized them"
    )]
    OtherJobsOwnIds(i64),
    #[error("cannot retry job {job}: {source}")]
    Retry { job: i64, source: RetryError },
    #[error("cannot cancel job {job}: {source}")]
    Cancel { job: i64, source: RetryError },
    /// `--sweep` left rows of forgotten customers with PII (`report` is what it did).
    #[error(
        "{report}  verification FAILED: rows of forgotten customers still hold PII ({})\n",
        left.join(", ")
    )]
    SweepUnverified { report: String, left: Vec<String> },
    #[error("forget audit trail of database {database:?}: BROKEN: {why} ({records} record(s))")]
    AuditBroken {
        database: String,
        why: String,
        records: i64,
    },
    /// `--resume` stopped (`report`: the jobs so far).
    #[error("{report}interrupted: {message}")]
    Interrupted { report: String, message: String },
    /// The plan has blockers: nothing was changed (the message is the rendered plan).
    #[error("{}", .0.render())]
    Blocked(Box<Plan>),
    #[error("{report}forget failed: {source}")]
    JobFailed { report: String, source: Box<Error> },
    #[error("{report}interrupted: {message}; run `pgredact forget --resume` to finish job {job}")]
    JobInterrupted {
        report: String,
        message: String,
        job: i64,
    },
    /// The job ended in a state other than done (the message is its report).
    #[error("{report}")]
    JobNotDone { report: String },
    #[error("set the environment variable {0} ([admin] receipt_key_env) to the receipt key")]
    NoReceiptKey(String),
    #[error("{}: INVALID: {source}", path.display())]
    InvalidReceipt {
        path: PathBuf,
        source: crate::admin::receipt::Error,
    },
}

impl Error {
    /// Worth another attempt: a PostgreSQL error with a transient SQLSTATE or a lost connection
    /// (see [`super::exec::is_transient`]), or a finalize wait that ran out.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(e) | Error::DbDoing { source: e, .. } => super::exec::is_transient(e),
            Error::OldTransactions(_) | Error::OtherJobsOwnIds(_) => true,
            _ => false,
        }
    }
}

fn control_reason(e: &crate::control::ControlError) -> String {
    match e {
        crate::control::ControlError::Db(d) => db_error(d),
        other => other.to_string(),
    }
}
