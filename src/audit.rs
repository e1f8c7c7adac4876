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

// ---------- fingerprints ----------

const RECURSION_LIMIT: usize = 200;
const STACK: usize = 64 * 1024 * 1024;

fn is_literal(v: &Value) -> bool {
    !matches!(v, Value::Boolean(_) | Value::Null | Value::Placeholder(_))
}

fn placeholder() -> Value {
    Value::Placeholder("?".into())
}

/// The statement as sqlparser reads it, re-rendered with every literal (strings of every quoting,
/// numbers, typed strings such as `DATE '...'`) replaced by `?`, comments dropped and whitespace
/// normalized. None when it does not parse (nothing of it is logged then).
pub fn fingerprint(sql: &str) -> Option<String> {
    let mut stmts = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .ok()?;
    struct Lits;
    impl VisitorMut for Lits {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            match e {
                Expr::Value(v) if is_literal(&v.value) => v.value = placeholder(),
                Expr::TypedString(t) => t.value.value = placeholder(),
                _ => {}
            }
            ControlFlow::Continue(())
        }
        fn post_visit_value(&mut self, v: &mut sqlparser::ast::ValueWithSpan) -> ControlFlow<()> {
            if is_literal(&v.value) {
                v.value = placeholder();
            }
            ControlFlow::Continue(())
        }
    }
    let _ = stmts.visit(&mut Lits);
    let text = stmts
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    // Literals outside expressions (options of COPY, SET ... TO, COMMENT ...) that no visitor
    // reached: replaced token by token. Text that does not tokenize is not logged.
    let toks = Tokenizer::new(&PostgreSqlDialect {}, &text)
        .tokenize()
        .ok()?;
    if !toks.iter().any(is_literal_token) {
        return Some(text);
    }
    Some(
        toks.into_iter()
            .map(|t| {
                if is_literal_token(&t) {
                    "?".to_string()
                } else {
                    t.to_string()
                }
            })
            .collect(),
    )
}

fn is_literal_token(t: &Token) -> bool {
    literal_text(t).is_some()
}

/// The text of a literal token.
fn literal_text(t: &Token) -> Option<&str> {
    Some(match t {
        Token::Number(s, _)
        | Token::SingleQuotedString(s)
        | Token::TripleSingleQuotedString(s)
        | Token::TripleDoubleQuotedString(s)
        | Token::SingleQuotedByteStringLiteral(s)
        | Token::DoubleQuotedByteStringLiteral(s)
        | Token::TripleSingleQuotedByteStringLiteral(s)
        | Token::TripleDoubleQuotedByteStringLiteral(s)
        | Token::SingleQuotedRawStringLiteral(s)
        | Token::DoubleQuotedRawStringLiteral(s)
        | Token::TripleSingleQuotedRawStringLiteral(s)
        | Token::TripleDoubleQuotedRawStringLiteral(s)
        | Token::NationalStringLiteral(s)
        | Token::EscapedStringLiteral(s)
        | Token::UnicodeStringLiteral(s)
        | Token::HexStringLiteral(s) => s,
        Token::DollarQuotedString(d) => &d.value,
        Token::QuoteDelimitedStringLiteral(d) | Token::NationalQuoteDelimitedStringLiteral(d) => {
            &d.value
        }
        _ => return None,
    })
}

// ---------- refusals ----------

/// A refusal as the log shows it: its kind always, its message only when it cannot quote data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedRefusal {
    pub kind: &'static str,
    /// pgredact's message, or null when it was withheld.
    pub reason: Option<String>,
}

/// The kind of a refusal, from pgredact's own wording.
pub fn refusal_kind(msg: &str) -> &'static str {
    const KINDS: &[(&str, &str)] = &[
        ("could not parse", "unparsable"),
        ("no longer parses", "unparsable"),
        ("does not read back identically", "unparsable"),
        ("statement refused:", "unanalysable"),
        ("Unicode-escaped", "unicode_escape"),
        ("client_encoding", "session_settings"),
        ("decided before a change", "stale_prepared"),
        ("FunctionCall protocol", "function_call"),
        ("search_path", "search_path"),
        ("cannot change its identity", "identity"),
        ("masked sessions are refused", "wall"),
        ("does not know", "catalog"),
        ("EXPLAIN", "explain"),
        ("COPY", "copy"),
        ("function ", "function"),
        ("operator", "operator"),
        ("casting to", "cast"),
        ("settings that cannot affect masking", "setting"),
        ("RESET ALL", "setting"),
        ("DISCARD ALL", "setting"),
        ("SET ", "setting"),
        ("in a write statement", "pii_write"),
        ("writing", "pii_write"),
        ("writes every column", "pii_write"),
        ("RETURNING", "pii_write"),
        ("reading", "pii_read"),
        ("not accessible", "pii_read"),
        ("pgredact only lets through", "statement_kind"),
    ];
    KINDS
        .iter()
        .find(|(k, _)| msg.contains(k))
        .map_or("other", |(_, v)| v)
}

/// The refusal for the log. Its message names relations, columns, functions and settings; it is
/// withheld when it could quote the statement: parser and tokenizer errors, displays of a whole
/// statement or name, and any message that contains one of the statement's literals (or a quote
/// character) or when the statement does not tokenize.
pub fn log_refusal(r: &Refusal, sql: Option<&str>) -> LoggedRefusal {
    let kind = refusal_kind(&r.message);
    let m = &r.message;
    let unsafe_template = matches!(kind, "unparsable" | "unanalysable" | "other")
        && !m.contains("in a position pgredact does not analyse")
        || m.contains("unsupported relation name")
        || m.contains("unsupported function name")
        || m.contains("(now: ")
        || m.contains('\'')
        || m.contains('$')
        || kind == "setting";
    let quotes = match sql {
        None => false,
        Some(sql) => match Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() {
            Err(_) => true,
            Ok(toks) => toks
                .iter()
                .filter_map(literal_text)
                .any(|l| contains_literal(m, l)),
        },
    };
    LoggedRefusal {
        kind,
        reason: (!unsafe_template && !quotes).then(|| m.clone()),
    }
}

/// Whether `msg` shows literal `lit`: as a substring (3 characters or more), else as a word.
fn contains_literal(msg: &str, lit: &str) -> bool {
    if lit.is_empty() {
        return false;
    }
    if lit.chars().count() >= 3 {
        return msg.contains(lit);
    }
    msg.split(|c: char| !c.is_alphanumeric())
        .any(|w| w.eq_ignore_ascii_case(lit))
}

// ---------- records ----------

/// Who a masked session is.
#[derive(Debug)]
pub struct SessionInfo {
    pub id: String,
    pub role: String,
    pub client: Option<String>,
    pub database: String,
}

/// What the statement's tables are resolved against.
pub struct Resolve {
    pub snapshot: Arc<Snapshot>,
    pub search_path: Arc<[String]>,
}

/// One statement decided for a masked session.
pub struct Stmt {
    /// `query` (simple protocol), `parse`, `bind` (a statement prepared in an earlier
    /// exchange, executed), `function_call`.
    pub message: &'static str,
    pub sql: Option<Arc<str>>,
    pub decision: Arc<Decision>,
    pub resolve: Option<Resolve>,
    pub rows: u64,
    pub time: SystemTime,
}

enum Kind {
    Start,
    End,
    Statement(Stmt),
}

struct Event {
    session: Arc<SessionInfo>,
    kind: Kind,
    time: SystemTime,
}

enum Cmd {
    Event(Box<Event>),
    Flush(oneshot::Sender<()>),
    /// Time passed: sync what is due.
    Tick,
}

/// A line of the log (field order is the order on disk).
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    time: String,
    event: &'static str,
    session: &'a str,
    role: &'a str,
    client: Option<&'a str>,
    database: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<LoggedRefusal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tables: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotated_from: Option<String>,
    prev: &'a str,
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Seconds since the epoch of a time `rfc3339` wrote.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0, 4)?, n(5, 7)?, n(8, 10)?);
    let (h, mi, se) = (n(11, 13)?, n(14, 16)?, n(17, 19)?);
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if mo > 2 { mo - 3 } else { mo + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

// ---------- the per-exchange bookkeeping of a session ----------

/// The statements of one request/response exchange (up to a ReadyForQuery), and where the rows
/// the server returns belong.
#[derive(Default)]
pub struct UnitLog {
    entries: Vec<Stmt>,
    /// Statements parsed in this exchange, by name.
    parsed: Vec<(String, usize)>,
    /// The entry each Bind sent is for, in order (BindComplete moves the row target).
    binds: VecDeque<usize>,
    target: Option<usize>,
}

impl UnitLog {
    fn push(&mut self, s: Stmt) -> usize {
        self.entries.push(s);
        self.entries.len() - 1
    }

    /// A simple-protocol Query: the exchange's rows are its.
    pub fn query(&mut self, sql: &str, d: &Arc<Decision>, resolve: Option<Resolve>) {
        let i = self.push(stmt("query", Some(sql), d, resolve));
        self.target = Some(i);
    }

    pub fn parse(&mut self, name: &str, sql: &str, d: &Arc<Decision>, resolve: Option<Resolve>) {
        let i = self.push(stmt("parse", Some(sql), d, resolve));
        self.parsed.push((name.to_string(), i));
    }

    /// A Bind of statement `name`: rows after its BindComplete go to the Parse of this exchange,
    /// or to a new `bind` entry for a statement prepared earlier (`prepared`: its text and
    /// decision).
    pub fn bind(
        &mut self,
        name: &str,
        prepared: Option<(Arc<str>, Arc<Decision>)>,
        resolve: Option<Resolve>,
    ) {
        let i = match self.parsed.iter().rev().find(|(n, _)| n == name) {
            Some(&(_, i)) => i,
            None => {
                let (sql, d) = match prepared {
                    Some((s, d)) => (Some(s), d),
                    None => (None, Arc::new(Decision::Pass)),
                };
                self.push(Stmt {
                    message: "bind",
                    sql,
                    decision: d,
                    resolve,
                    rows: 0,
                    time: SystemTime::now(),
                })
            }
        };
        self.binds.push_back(i);
    }

    /// A message refused without a statement text (FunctionCall, a Bind that is refused).
    pub fn refused(&mut self, message: &'static str, sql: Option<Arc<str>>, r: &Refusal) {
        self.push(Stmt {
            message,
            sql,
            decision: Arc::new(Decision::Refuse(r.clone())),
            resolve: None,
            rows: 0,
            time: SystemTime::now(),
        });
    }

    /// The server's rows so far (DataRow, CopyData) belong to the current target.
    pub fn rows(&mut self, n: u64) {
        if let Some(e) = self.target.and_then(|t| self.entries.get_mut(t)) {
            e.rows += n;
        }
    }

    /// BindComplete: the rows that follow belong to the next bound statement.
    pub fn bind_complete(&mut self) {
        self.target = self.binds.pop_front();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn take(&mut self) -> Vec<Stmt> {
        std::mem::take(&mut self.entries)
    }
}

fn stmt(
    message: &'static str,
    sql: Option<&str>,
    d: &Arc<Decision>,
    resolve: Option<Resolve>,
) -> Stmt {
    Stmt {
        message,
        sql: sql.map(Arc::from),
        decision: d.clone(),
        resolve,
        rows: 0,
        time: SystemTime::now(),
    }
}

// ---------- the handle sessions hold ----------

/// The audit log, as sessions see it (cheap to clone).
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Cmd>,
}

/// One masked session's view of the log.
#[derive(Clone)]
pub struct SessionAudit {
    audit: Audit,
    pub info: Arc<SessionInfo>,
}

impl Audit {
    /// A masked session's handle, with a fresh session id.
    pub fn session(&self, role: &str, database: &str, client: Option<String>) -> SessionAudit {
        SessionAudit {
            audit: self.clone(),
            info: Arc::new(SessionInfo {
                id: format!("{:016x}", rand::random::<u64>()),
                role: role.to_string(),
                client,
                database: database.to_string(),
            }),
        }
    }

    async fn send(&self, e: Event) {
        if self.tx.send(Cmd::Event(Box::new(e))).await.is_err() {
            tracing::error!("the audit writer has stopped: a record was not written");
        }
    }

    /// Waits until every record sent before this call is written and synced.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl SessionAudit {
    async fn event(&self, kind: Kind) {
        self.audit
            .send(Event {
                session: self.info.clone(),
                kind,
                time: SystemTime::now(),
            })
            .await
    }

    pub async fn start(&self) {
        self.event(Kind::Start).await
    }

    pub async fn end(&self) {
        self.event(Kind::End).await
    }

    /// The statements of a finished exchange (waits while the writer's queue is full).
    pub async fn statements(&self, stmts: Vec<Stmt>) {
        for s in stmts {
            self.event(Kind::Statement(s)).await
        }
    }
}

// ---------- the writer ----------

/// What the writer derives from a statement's text (cached per snapshot, search path and text).
struct Derived {
    fingerprint: Option<String>,
    tables: Vec<String>,
}

const DERIVED_CACHE: usize = 10_000;

/// A statement's text as the writer caches what it derives: snapshot epoch, search path, text.
type DerivedKey = (u64, Arc<[String]>, Arc<str>);

struct Writer {
    path: PathBuf,
    file: File,
    /// Bytes of the current file already handed to the OS.
    committed: u64,
    /// Records of the current batch, not yet written.
    buf: Vec<u8>,
    /// Seq of the current file's first record (names it when rotated), and its time.
    first: Option<(u64, u64)>,
    seq: u64,
    prev: String,
    rotated_from: Option<String>,
    max_bytes: u64,
    max_age: Option<u64>,
    unsynced: bool,
    cache: HashMap<DerivedKey, Arc<Derived>>,
}

/// The name a rotated file gets: the current path plus the seq of its first record, padded so
/// that names sort in order.
pub fn rotated_name(path: &Path, first_seq: u64) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{first_seq:012}"));
    PathBuf::from(s)
}

/// The last line of a file (without its newline), or None for an empty file. A file that does
/// not end with a newline ends with a damaged record: an error.
fn last_line(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let read = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(read)?;
    let len = f.metadata().map_err(read)?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    loop {
        let step = pos.min(64 * 1024);
        pos -= step;
        let mut chunk = vec![0u8; step as usize];
        f.seek(SeekFrom::Start(pos))
            .and_then(|_| f.read_exact(&mut chunk))
            .map_err(read)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        if tail.last() != Some(&b'\n') {
            return Err(Error::IncompleteLastLine(path.to_path_buf()));
        }
        let body = &tail[..tail.len() - 1];
        if let Some(i) = body.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(body[i + 1..].to_vec()));
        }
        if pos == 0 {
            return Ok(Some(body.to_vec()));
        }
    }
}

fn first_line(path: &Path) -> Option<Vec<u8>> {
    use std::io::BufRead;
    let f = File::open(path).ok()?;
    let mut line = Vec::new();
    std::io::BufReader::new(f)
        .read_until(b'\n', &mut line)
        .ok()?;
    line.pop().filter(|&c| c == b'\n')?;
    Some(line)
}

#[derive(Deserialize)]
struct Head {
    seq: u64,
    time: Option<String>,
}

fn head(line: &[u8], path: &Path) -> Result<Head, Error> {
    serde_json::from_slice(line).map_err(|source| Error::LastRecord {
        path: path.to_path_buf(),
        source,
    })
}

/// The rotated files of `path`, oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix(&name)
                        .and_then(|r| r.strip_prefix('.'))
                        .is_some_and(|r| r.len() == 12 && r.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Writer {
    /// Opens the current file, continuing the chain of what is already there (the current file,
    /// else the newest rotated file).
    fn open(cfg: &AuditConfig, path: PathBuf) -> Result<Writer, Error> {
        let open = |source| Error::Open {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(open)?;
        let committed = file.metadata().map_err(open)?.len();
        let mut w = Writer {
            path: path.clone(),
            file,
            committed,
            buf: Vec::new(),
            first: None,
            seq: 0,
            prev: GENESIS.to_string(),
            rotated_from: None,
            max_bytes: cfg.max_bytes.max(1),
            max_age: cfg.max_age_secs,
            unsynced: false,
            cache: HashMap::new(),
        };
        if let Some(last) = last_line(&path)? {
            w.seq = head(&last, &path)?.seq + 1;
            w.prev = sha256_hex(&last);
            let h = first_line(&path).and_then(|l| serde_json::from_slice::<Head>(&l).ok());
            w.first = h.map(|h| {
                let t = h.time.as_deref().and_then(parse_rfc3339);
                (h.seq, t.unwrap_or_else(now_secs))
            });
        } else if let Some(r) = rotated_files(&path).last() {
            if let Some(last) = last_line(r)? {
                w.seq = head(&last, r)?.seq + 1;
                w.prev = sha256_hex(&last);
                w.rotated_from = r.file_name().map(|n| n.to_string_lossy().into_owned());
            }
        }
        Ok(w)
    }

    fn derived(&mut self, s: &Stmt) -> Arc<Derived> {
        let Some(sql) = &s.sql else {
            return Arc::new(Derived {
                fingerprint: None,
                tables: Vec::new(),
            });
        };
        let key = s
            .resolve
            .as_ref()
            .map(|r| (r.snapshot.epoch, r.search_path.clone()));
        let key = key.map(|(e, p)| (e, p, sql.clone()));
        if let Some(d) = key.as_ref().and_then(|k| self.cache.get(k)) {
            return d.clone();
        }
        let d = stacker::grow(STACK, || Derived {
            fingerprint: fingerprint(sql),
            tables: s
                .resolve
                .as_ref()
                .map(|r| {
                    crate::rewrite::rewrite(
                        sql,
                        &SessionCtx {
                            prot: &r.snapshot.prot,
                            search_path: &r.search_path,
                            path_at_start: true,
                        },
                    )
                    .relations
                })
                .unwrap_or_default(),
        });
        let d = Arc::new(d);
        if let Some(k) = key {
            if self.cache.len() >= DERIVED_CACHE {
                self.cache.clear();
            }
            self.cache.insert(k, d.clone());
        }
        d
    }

    /// Appends one record to the batch, rotating first when the current file is full or old.
    fn record(&mut self, e: &Event) {
        let (mut message, mut fingerprint, mut decision, mut refusal, mut tables, mut rows) =
            (None, None, None, None, None, None);
        let (event, time) = match &e.kind {
            Kind::Start => ("session_start", e.time),
            Kind::End => ("session_end", e.time),
            Kind::Statement(s) => {
                let d = self.derived(s);
                message = Some(s.message);
                fingerprint = Some(d.fingerprint.clone());
                decision = Some(match &*s.decision {
                    Decision::Pass => "pass",
                    Decision::Rewrite(_) => "rewrite",
                    Decision::Refuse(_) => "refuse",
                });
                if let Decision::Refuse(r) = &*s.decision {
                    refusal = Some(log_refusal(r, s.sql.as_deref()));
                }
                tables = Some(d.tables.clone());
                rows = Some(s.rows);
                ("statement", s.time)
            }
        };
        let now = now_secs();
        if self.committed + self.buf.len() as u64 > 0 {
            let full = self.committed + self.buf.len() as u64 >= self.max_bytes;
            let old = self
                .max_age
                .zip(self.first)
                .is_some_and(|(age, (_, t))| now.saturating_sub(t) >= age);
            if full || old {
                self.rotate();
            }
        }
        let info = &e.session;
        let prev = std::mem::take(&mut self.prev);
        let line = Line {
            seq: self.seq,
            time: rfc3339(time),
            event,
            session: &info.id,
            role: &info.role,
            client: info.client.as_deref(),
            database: &info.database,
            message,
            fingerprint,
            decision,
            refusal,
            tables,
            rows,
            rotated_from: self.rotated_from.take(),
            prev: &prev,
        };
        let bytes = match serde_json::to_vec(&line) {
            Ok(b) => b,
            Err(err) => {
                // Serializing plain strings and numbers cannot fail; keep the chain as it was.
                tracing::error!("audit record could not be serialized: {err}");
                self.prev = prev;
                return;
            }
        };
        self.prev = sha256_hex(&bytes);
        if self.first.is_none() {
            self.first = Some((self.seq, now));
        }
        self.seq += 1;
        self.buf.extend_from_slice(&bytes);
        self.buf.push(b'\n');
    }

    /// Hands the batch to the OS. A failed write is undone (the file is cut back to its last
    /// whole record) and retried every second: records are never dropped, and sessions wait
    /// once the queue is full.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut warned = false;
        loop {
            match self.file.write_all(&self.buf) {
                Ok(()) => break,
                Err(e) => {
                    if !warned {
                        tracing::error!(
                            "writing the audit log {} failed, retrying every second (masked sessions wait once its queue is full): {e}",
                            self.path.display()
                        );
                        warned = true;
                    }
                    let _ = self.file.set_len(self.committed);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        self.committed += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced = true;
    }

    fn sync(&mut self) {
        self.write_out();
        if self.unsynced {
            if let Err(e) = self.file.sync_data() {
                tracing::error!("fdatasync of the audit log failed: {e}");
            }
            self.unsynced = false;
        }
    }

    /// Renames the current file to `<path>.<first seq>` and continues the chain in a new one.
    fn rotate(&mut self) {
        self.sync();
        let first = self.first.map_or(self.seq, |f| f.0);
        let to = rotated_name(&self.path, first);
        if to.exists() {
            tracing::error!(
                "cannot rotate the audit log: {} exists; writing on in {}",
                to.display(),
                self.path.display()
            );
            return;
        }
        if let Err(e) = std::fs::rename(&self.path, &to) {
            tracing::error!(
                "cannot rotate the audit log {}: {e}; writing on in it",
                self.path.display()
            );
            return;
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                self.file = f;
                self.committed = 0;
                self.first = None;
                self.rotated_from = to.file_name().map(|n| n.to_string_lossy().into_owned());
                if let Some(dir) = self.path.parent() {
                    // The rename and the new file survive a crash.
                    if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    }) {
                        let _ = d.sync_all();
                    }
                }
            }
            Err(e) => {
                // Keep writing to the renamed file (still open): the chain stays whole.
                tracing::error!(
                    "cannot create a new audit log {}: {e}; writing on in {}",
                    self.path.display(),
                    to.display()
                );
                self.path = to;
            }
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens the log (continuing its chain) and starts the writer. Must run inside a tokio runtime.
pub fn start(cfg: &AuditConfig, base_dir: &Path) -> Result<Audit, Error> {
    let path = base_dir.join(&cfg.path);
    let mut w = Writer::open(cfg, path)?;
    let (tx, mut rx) = mpsc::channel::<Cmd>(cfg.queue.max(1));
    let interval = Duration::from_millis(cfg.fsync_interval_ms);
    if !interval.is_zero() {
        // Wakes the writer so unsynced records get their fdatasync within about `interval`
        // even when no more come. A weak sender: it does not keep the writer alive.
        let weak = tx.downgrade();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((interval / 2).max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(tx) = weak.upgrade() else { break };
                if tx.send(Cmd::Tick).await.is_err() {
                    break;
                }
            }
        });
    }
    // The writer: blocking file I/O on tokio's blocking pool, never on a runtime worker. It ends
    // when every sender is gone (the runtime drops the sessions and the shared state).
    tokio::task::spawn_blocking(move || {
        let mut last_sync = Instant::now();
        while let Some(first) = rx.blocking_recv() {
            let mut flushes = Vec::new();
            let mut next = Some(first);
            let mut n = 0;
            while let Some(c) = next.take() {
                match c {
                    Cmd::Event(e) => w.record(&e),
                    Cmd::Flush(t) => flushes.push(t),
                    Cmd::Tick => {}
                }
                n += 1;
                if n < 4096 {
                    next = rx.try_recv().ok();
                }
            }
            w.write_out();
            if !flushes.is_empty() || (w.unsynced && last_sync.elapsed() >= interval) {
                w.sync();
                last_sync = Instant::now();
            }
            for t in flushes {
                let _ = t.send(());
            }
        }
        w.sync();
    });
    Ok(Audit { tx })
}

// ---------- verification ----------

#[derive(Deserialize)]
struct Checked {
    seq: u64,
    prev: String,
    #[serde(default)]
    rotated_from: Option<String>,
}

/// The whole content of one audit log file.
fn read_whole(path: &Path) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| Error::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// Checks that record `rec` (line `li` of file `fi`) follows `last` (sequence number and hash
/// of the record before it; None for the first record read), and that only the first line of
/// a later file names the file it was rotated from.
fn check_link(
    rec: &Checked,
    last: Option<&(u64, String)>,
    li: usize,
    fi: usize,
) -> Result<(), Break> {
    match last {
        None => {
            if rec.seq == 0 && rec.prev != GENESIS {
                return Err(Break::FirstPrev);
            }
        }
        Some((seq, hash)) => {
            if rec.seq != seq + 1 {
                return Err(Break::Seq {
                    seq: rec.seq,
                    prev: *seq,
                });
            }
            if &rec.prev != hash {
                return Err(Break::PrevMismatch);
            }
        }
    }
    if li == 0 && fi > 0 && last.is_some() && rec.rotated_from.is_none() {
        return Err(Break::NoRotatedFrom);
    }
    if li > 0 && rec.rotated_from.is_some() {
        return Err(Break::StrayRotatedFrom);
    }
    Ok(())
}

/// Checks the chain across `files` (oldest first): every line parses, `seq` goes up by one,
/// `prev` is the SHA-256 of the line before, the first record of every file after the first says
/// `rotated_from`. Returns a summary, or where and why the chain breaks first.
pub fn verify(files: &[PathBuf]) -> Result<String, Error> {
    if files.is_empty() {
        return Err(Error::NoFiles);
    }
    let mut last: Option<(u64, String)> = None;
    let mut start: Option<(u64, String)> = None;
    let mut count = 0u64;
    for (fi, path) in files.iter().enumerate() {
        let bytes = read_whole(path)?;
        if bytes.is_empty() {
            continue;
        }
        let whole = bytes.last() == Some(&b'\n');
        let body = if whole {
            &bytes[..bytes.len() - 1]
        } else {
            &bytes[..]
        };
        let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        for (li, line) in lines.iter().enumerate() {
            let broken = |why| Error::Broken {
                file: path.clone(),
                line: li + 1,
                why,
            };
            if !whole && li + 1 == lines.len() {
                return Err(broken(Break::IncompleteLine));
            }
            let rec: Checked =
                serde_json::from_slice(line).map_err(|e| broken(Break::NotARecord(e)))?;
            check_link(&rec, last.as_ref(), li, fi).map_err(broken)?;
            if last.is_none() {
                start = Some((rec.seq, rec.prev.clone()));
            }
            last = Some((rec.seq, sha256_hex(line)));
            count += 1;
        }
    }
    let Some((from, anchor)) = start else {
        return Ok(format!("ok: {} file(s), no records", files.len()));
    };
    let (to, hash) = last.unwrap_or_default();
    let anchored = if from == 0 {
        "from the first record".to_string()
    } else {
        format!("from seq {from}, which chains to an earlier record with hash {anchor} (earlier files not given)")
    };
    Ok(format!(
        "ok: {count} records in {} file(s), seq {from}..{to}, {anchored}; last record's hash {hash}",
        files.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(s: &str) -> String {
        fingerprint(s).unwrap_or_else(|| panic!("does not parse: {s}"))
    }

    #[test]
    fn fingerprints_replace_every_literal() {
        let cases = [
            (
                "SELECT * FROM customers WHERE email = 'someone@example.com'",
                "someone@example.com",
            ),
            ("SELECT * FROM customers WHERE customer_id = 4242", "4242"),
            ("SELECT * FROM customers WHERE email = E'so\\'me@x.com'", "me@x.com"),
            ("SELECT * FROM customers WHERE email = $$dollar@x.com$$", "dollar@x.com"),
            ("SELECT * FROM customers WHERE email = $t$tag@x.com$t$", "tag@x.com"),
            (
                "SELECT * FROM customers WHERE email IN ('a1@x.com', 'b2@x.com') AND customer_id IN (17, 19)",
                "@x.com",
            ),
            ("SELECT * FROM customers WHERE birth_date = DATE '1999-01-01'", "1999"),
            ("SELECT * FROM customers LIMIT 31337 OFFSET 2718", "31337"),
            ("SELECT 1.5e3, -77, x'DEADBEEF' FROM customers", "DEADBEEF"),
            ("SET application_name = 'someone@example.com'", "someone"),
            ("SELECT ARRAY['alice@x.com'] /* bob@x.com */ -- carol@x.com", "@x.com"),
            ("PREPARE p AS SELECT * FROM customers WHERE email = 'p@x.com'; EXECUTE p('q@x.com')", "@x.com"),
            ("SELECT interval '3 days', 'abc'::text", "days"),
        ];
        for (sql, secret) in cases {
            let f = fp(sql);
            assert!(!f.contains(secret), "{sql} -> {f}");
            assert!(f.contains('?'), "{sql} -> {f}");
        }
        assert_eq!(
            fp("select *  from customers where email = 'x@y.z' and tier=$1"),
            "SELECT * FROM customers WHERE email = ? AND tier = $1"
        );
        assert_eq!(
            fp("SELECT * FROM t WHERE id IN (1, 2, 3) AND ok = true AND z IS NULL"),
            "SELECT * FROM t WHERE id IN (?, ?, ?) AND ok = true AND z IS NULL"
        );
        assert_eq!(fingerprint("SELEC email FROM 'x@y.z"), None);
    }

    #[test]
    fn refusal_messages_with_literals_are_withheld() {
        let r = |m: &str| Refusal {
            kind: crate::rewrite::RefusalKind::Other,
            message: m.into(),
            hint: None,
        };
        let l = log_refusal(
            &r("pgredact: writing column email of public.customers, which holds PII (policy public.customers), is not allowed for masked roles"),
            Some("UPDATE customers SET email = 'x@y.z' WHERE customer_id = 1"),
        );
        assert_eq!(l.kind, "pii_write");
        assert!(l.reason.is_some());
        let l = log_refusal(
            &r("pgredact: statement refused for a masked role: pgredact could not parse it, so it cannot prove it safe (Expected: end of statement, found: 'x@y.z')"),
            Some("SELEC 'x@y.z'"),
        );
        assert_eq!((l.kind, l.reason), ("unparsable", None));
        // A message that happens to quote a literal of the statement is withheld.
        let l = log_refusal(
            &r("pgredact: reading secretvalue is not allowed for masked roles: x"),
            Some("SELECT * FROM secretvalue WHERE a = 'secretvalue'"),
        );
        assert_eq!((l.kind, l.reason), ("pii_read", None));
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.123Z"),
            Some(1_709_251_199)
        );
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    fn info() -> Arc<SessionInfo> {
        Arc::new(SessionInfo {
            id: "00000000000000aa".into(),
            role: "support".into(),
            client: Some("127.0.0.1:5000".into()),
            database: "app".into(),
        })
    }

    fn cfg(path: &Path, max_bytes: u64) -> AuditConfig {
        AuditConfig {
            path: path.to_path_buf(),
            max_bytes,
            max_age_secs: None,
            fsync_interval_ms: 1000,
            queue: 16,
        }
    }

    /// Writes `n` statement records through a writer (as the writer task would).
    fn write(path: &Path, max_bytes: u64, n: usize) {
        let mut w = Writer::open(&cfg(path, max_bytes), path.to_path_buf()).expect("open");
        for i in 0..n {
            let e = Event {
                session: info(),
                time: SystemTime::now(),
                kind: Kind::Statement(Stmt {
                    message: "query",
                    sql: Some(format!("SELECT * FROM customers WHERE email = 'u{i}@x.com'").into()),
                    decision: Arc::new(Decision::Pass),
                    resolve: None,
                    rows: 1,
                    time: SystemTime::now(),
                }),
            };
            w.record(&e);
            w.write_out();
        }
        w.sync();
    }

    fn all_files(path: &Path) -> Vec<PathBuf> {
        let mut v = rotated_files(path);
        v.push(path.to_path_buf());
        v
    }

    #[test]
    fn chain_verifies_and_detects_edits_deletions_reorders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write(&path, u64::MAX, 5);
        let files = vec![path.clone()];
        let ok = verify(&files).expect("valid chain");
        assert!(ok.contains("5 records"), "{ok}");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("@x.com"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains(GENESIS));
        let put = |ls: &[String]| std::fs::write(&path, ls.join("\n") + "\n").expect("write");
        let orig: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        // Edited line.
        let mut ed = orig.clone();
        ed[2] = ed[2].replace("\"rows\":1", "\"rows\":7");
        put(&ed);
        let e = verify(&files).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Broken {
                    line: 4,
                    why: Break::PrevMismatch,
                    ..
                }
            ),
            "{e}"
        );
        let e = e.to_string();
        assert!(e.contains("audit.jsonl:4") && e.contains("prev"), "{e}");
        // Deleted line.
        let mut del = orig.clone();
        del.remove(1);
        put(&del);
        let e = verify(&files).unwrap_err().to_string();
        assert!(e.contains("audit.jsonl:2") && e.contains("seq"), "{e}");
        // Reordered lines.
        let mut re = orig.clone();
        re.swap(2, 3);
        put(&re);
        let e = verify(&files).unwrap_err().to_string();
        assert!(e.contains("audit.jsonl:3"), "{e}");
        // A cut-off last line.
        std::fs::write(&path, orig.join("\n")).expect("write");
        let e = verify(&files).unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
        // Restored, then continued by a new writer (a restart): still one chain.
        put(&orig);
        write(&path, u64::MAX, 2);
        let ok = verify(&files).expect("continued chain");
        assert!(ok.contains("7 records"), "{ok}");
    }

    #[test]
    fn rotation_keeps_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        write(&path, 600, 12);
        let files = all_files(&path);
        assert!(files.len() >= 3, "rotated: {files:?}");
        let ok = verify(&files).expect("valid across files");
        assert!(ok.contains("12 records"), "{ok}");
        // Each new file starts by naming the one before it.
        for w in files.windows(2) {
            let first = first_line(&w[1]).expect("first line");
            let rec: serde_json::Value = serde_json::from_slice(&first).expect("json");
            let name = w[0]
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            assert_eq!(rec["rotated_from"], serde_json::Value::String(name));
        }
        // Out of order or with a file left out, the chain breaks.
        let mut swapped = files.clone();
        swapped.swap(0, 1);
        assert!(verify(&swapped).is_err());
        let mut gap = files.clone();
        gap.remove(1);
        assert!(verify(&gap).is_err());
        // Without the oldest file, the chain is anchored at the first record given.
        let ok = verify(&files[1..]).expect("anchored");
        assert!(ok.contains("earlier files not given"), "{ok}");
        // Rotated by hand (as logrotate would) while pgredact is stopped: a restart chains to
        // the newest rotated file.
        let first: Head = serde_json::from_slice(&first_line(&path).expect("first")).expect("json");
        std::fs::rename(&path, rotated_name(&path, first.seq)).expect("mv");
        write(&path, u64::MAX, 1);
        let ok = verify(&all_files(&path)).expect("resumed from rotated");
        assert!(ok.contains("records"), "{ok}");
    }
}
