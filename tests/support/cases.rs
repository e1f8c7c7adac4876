//! The case tables of the data-driven suites (`tests/cases/*.toml`, read by
//! `tests/adversarial.rs` and `tests/usability.rs`): parsing and the checks every table shares.
//! A table that does not parse or check stops the suite before any trial runs, with the file and
//! the reason ([`or_exit`]).

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeSet;

/// A known failure of a case: its trials over `protocols` are ignored trials, and `reason`
/// (whether anything leaks, and why it fails) is printed when they run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Known {
    pub protocols: Vec<String>,
    pub reason: String,
}

/// Parses `text`, the contents of the case file `path` (named in the error).
pub fn parse<T: DeserializeOwned>(path: &str, text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| format!("{path}: {e}"))
}

/// The value, or: the message on stderr and the test binary exits with status 1. For a case file
/// that does not parse or check: no trial can be built from it, and a filtered run must not pass
/// with no trial.
pub fn or_exit<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| {
        eprintln!("error: malformed case file {e}");
        std::process::exit(1)
    })
}

/// Checks that `id` is `<prefix>-<digits>` (`digits` of them) with `prefix` made of lowercase
/// letters and dashes, and that no earlier case of the file (in `seen`) has it. Returns the
/// prefix.
pub fn check_id<'a>(
    path: &str,
    id: &'a str,
    digits: usize,
    seen: &mut BTreeSet<String>,
) -> Result<&'a str, String> {
    let well_formed = id.rsplit_once('-').filter(|(prefix, n)| {
        !prefix.is_empty()
            && prefix.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
            && n.len() == digits
            && n.bytes().all(|b| b.is_ascii_digit())
    });
    let Some((prefix, _)) = well_formed else {
        return Err(format!(
            "{path}: case id {id:?} is not `<lowercase letters>-<{digits} digits>`"
        ));
    };
    if !seen.insert(id.to_string()) {
        return Err(format!("{path}: case id {id} appears twice"));
    }
    Ok(prefix)
}

/// Checks the known failures of case `id`: each names at least one protocol, only protocols of
/// `protocols` (the suite's trial suffixes), and gives a reason.
pub fn check_known(
    path: &str,
    id: &str,
    known: &[Known],
    protocols: &[&str],
) -> Result<(), String> {
    for k in known {
        if k.protocols.is_empty() {
            return Err(format!(
                "{path}: case {id}: a known failure names no protocol"
            ));
        }
        if let Some(p) = k
            .protocols
            .iter()
            .find(|p| !protocols.contains(&p.as_str()))
        {
            return Err(format!(
                "{path}: case {id}: known failure over {p:?}, which is not one of {protocols:?}"
            ));
        }
        if k.reason.trim().is_empty() {
            return Err(format!(
                "{path}: case {id}: a known failure gives no reason"
            ));
        }
    }
    Ok(())
}

/// Why the trial `<id>::<protocol>` is known to fail, if it is.
pub fn known_reason<'a>(known: &'a [Known], protocol: &str) -> Option<&'a str> {
    known
        .iter()
        .find(|k| k.protocols.iter().any(|p| p == protocol))
        .map(|k| k.reason.as_str())
}

/// Checks that `sql` (of case `id`) can be sent as a Query or Parse message: not empty, no NUL
/// (PostgreSQL reads a query string up to its NUL; games with NULs are raw frames in the special
/// sections).
pub fn check_sql(path: &str, id: &str, sql: &str) -> Result<(), String> {
    if sql.trim().is_empty() {
        return Err(format!("{path}: case {id}: empty SQL"));
    }
    if sql.contains('\0') {
        return Err(format!("{path}: case {id}: the SQL holds a NUL character"));
    }
    Ok(())
}
