//! The records: one statement of a session, with what it read.

use super::*;

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

pub(super) enum Kind {
    Start,
    End,
    Statement(Stmt),
}

pub(super) struct Event {
    pub(super) session: Arc<SessionInfo>,
    pub(super) kind: Kind,
    pub(super) time: SystemTime,
}

pub(super) enum Cmd {
    Event(Box<Event>),
    Flush(oneshot::Sender<()>),
    /// Time passed: sync what is due.
    Tick,
}

/// A line of the log (field order is the order on disk).
#[derive(Serialize)]
pub(super) struct Line<'a> {
    pub(super) seq: u64,
    pub(super) time: String,
    pub(super) event: &'static str,
    pub(super) session: &'a str,
    pub(super) role: &'a str,
    pub(super) client: Option<&'a str>,
    pub(super) database: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) message: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) fingerprint: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) decision: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) refusal: Option<LoggedRefusal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tables: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) rotated_from: Option<String>,
    pub(super) prev: &'a str,
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
pub(super) fn parse_rfc3339(s: &str) -> Option<u64> {
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

pub(super) fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}
