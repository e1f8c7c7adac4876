//! `pgredact scan`: samples every table the control role can read and reports the columns and
//! JSON paths whose names or values look like PII, and whether the policy already covers them.
//! `--propose` prints the policy with one entry added per unlisted finding.
//!
//! The detectors are pure functions of one value (or one column name) and are unit-tested below;
//! [`Tally`] counts them over a sample and [`Tally::findings`] applies the thresholds. Sampled
//! values never leave this module: a finding carries counts and a masked example only.
//!
//! Files: `detect` (the detectors), `example` (masked examples), `tally` (counting over a
//! sample), `coverage` (what the policy covers), `sample` (sampling a database and the report),
//! `propose` (`--propose`), `command` (the CLI).

mod command;
mod coverage;
mod detect;
mod example;
mod propose;
mod sample;
mod tally;
#[cfg(test)]
mod tests;

pub use command::*;
pub use coverage::*;
pub use detect::*;
pub use example::*;
pub use propose::*;
pub use sample::*;
pub use tally::*;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::policy::{self, ColType, DatabasePolicy, JsonMask, Mask, PathSeg};
use regex::Regex;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::LazyLock;

/// Why a scan could not run, a table was not sampled, or `--propose` could not add to the policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy files do not load (their own `file:line: reason` message).
    #[error("{0}")]
    Policy(crate::policy::Error),
    #[error("no policy files: name the database to scan with --database")]
    NoPolicyFiles,
    #[error("policies for several databases ({}): name one with --database", .0.join(", "))]
    SeveralDatabases(Vec<String>),
    /// The control connection could not be opened (the proxy's own message).
    #[error("{0}")]
    Connect(crate::proxy::Error),
    #[error("reading the catalog: {}", crate::tls::error_chain(.0))]
    Catalog(#[source] tokio_postgres::Error),
    #[error("listing tables: {}", crate::tls::error_chain(.0))]
    ListTables(#[source] tokio_postgres::Error),
    /// A table was not sampled (reported in the scan's `skipped`).
    #[error("not in the catalog snapshot (dropped meanwhile?)")]
    NotInCatalog,
    #[error("{}", pg_reason(.0))]
    Sample(#[source] tokio_postgres::Error),
    #[error("the current policy does not parse: {0}")]
    PolicyToml(#[source] toml_edit::TomlError),
    #[error("`tables` in the current policy is not a table")]
    TablesNotATable,
    #[error("tables.{0:?} in the current policy is not a table")]
    TableNotATable(String),
    #[error("tables.{0:?}.columns is not a table")]
    ColumnsNotATable(String),
    #[error("tables.{table:?}.columns.{column} is not a json mask")]
    NotAJsonMask { table: String, column: String },
    #[error("tables.{table:?}.columns.{column}.paths is not a table")]
    PathsNotATable { table: String, column: String },
    /// The proposed file fails the policy parser: a bug.
    #[error("pgredact produced an invalid policy (a bug; please report it): {reason}\n{text}")]
    InvalidProposal { reason: String, text: String },
}
