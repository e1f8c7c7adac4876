//! The audit trail of masked sessions: an append-only JSON-lines file, one record per session
//! start and end and one per statement decided for a masked session, each chained to the one
//! before it by SHA-256 (`prev`), so that an edited, deleted or reordered line is detected by
//! `pgredact audit verify`.
//!
//! What a record never holds: the statement's text (only its fingerprint, every literal replaced
//! by `?`; `null` when it does not parse), refusal messages that could quote the statement's
//! literals (then only the refusal's kind), result values. Unmasked sessions are not audited.
//!
//! Writing: sessions hand finished records (with the raw text, in memory only) to a bounded
//! channel; one writer on tokio's blocking pool fingerprints them, resolves their tables, chains
//! and appends them. When the channel is full, sessions wait at the end of a statement (records
//! are never dropped). Every batch is written to the OS at once (a crash of pgredact loses
//! nothing already decided and answered); `fdatasync` runs at most every `fsync_interval_ms`
//! (and before every rotation and at shutdown), so a crash of the machine may lose that much.

mod fingerprint;
mod handle;
mod record;
mod refusal;
#[cfg(test)]
mod tests;
mod unit;
mod verify;
mod writer;

pub use fingerprint::*;
pub use handle::*;
pub use record::*;
pub use refusal::*;
pub use unit::*;
pub use verify::*;
pub use writer::*;

use crate::proxy::database::Snapshot;
use crate::rewrite::{Decision, Refusal, SessionCtx};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlparser::ast::{Expr, Value, VisitMut, VisitorMut};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// Why the audit log could not be opened (to continue its chain), or a chain does not verify.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("audit log {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Reading the end of an existing file failed.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: the last line is incomplete (a write was cut short); move the file aside and check it with `pgredact audit verify`",
        .0.display()
    )]
    IncompleteLastLine(PathBuf),
    #[error("{}: the last record does not parse: {source}", path.display())]
    LastRecord {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no files given")]
    NoFiles,
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The chain breaks first at this line (1-based) of this file.
    #[error("{}:{line}: {why}", file.display())]
    Broken {
        file: PathBuf,
        line: usize,
        why: Break,
    },
}

/// How a chain of audit records breaks at one line.
#[derive(Debug, thiserror::Error)]
pub enum Break {
    #[error("incomplete line (no newline at the end)")]
    IncompleteLine,
    #[error("not a valid audit record: {0}")]
    NotARecord(#[source] serde_json::Error),
    #[error("the first record (seq 0) must have prev {GENESIS}")]
    FirstPrev,
    #[error(
        "seq {seq} follows seq {prev} (expected {}): a record is missing, repeated or out of order",
        prev + 1
    )]
    Seq { seq: u64, prev: u64 },
    #[error(
        "prev does not match the SHA-256 of the previous line: that line or this one was changed"
    )]
    PrevMismatch,
    #[error("the first record of a file after the first has no rotated_from")]
    NoRotatedFrom,
    #[error("rotated_from on a record that does not start a file")]
    StrayRotatedFrom,
}

/// `[audit]` in pgredact.toml.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The current file (relative to the configuration file). Rotated files sit next to it.
    pub path: PathBuf,
    /// Rotate once the current file holds this many bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotate once the current file's first record is this old (checked when a record is
    /// written).
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// Longest time between a record written and its `fdatasync` (0: after every batch).
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Records waiting for the writer before sessions wait.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_fsync_interval_ms() -> u64 {
    1000
}
fn default_queue() -> usize {
    8192
}

/// The `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
