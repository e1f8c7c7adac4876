//! Tallies of the detectors over a sample, and the thresholds that make findings.

use super::*;

/// How a column's sampled values are read (columns of other types are not sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Text: whole-value detectors, and free-text search when the whole value matches none.
    Text,
    /// json/jsonb: walked by key path; each string is read as `Text`.
    Json,
    /// date/timestamp, sampled only when the name says birth.
    Date,
    /// inet/cidr.
    Inet,
    /// int8/numeric: card numbers (and phone numbers when the name says phone).
    BigNum,
    /// Arrays as text: free-text search only.
    Array,
}

/// How a column of this type is sampled, if at all.
pub fn value_kind(ty: &ColType, hint: Option<Detector>) -> Option<ValueKind> {
    match ty.base.as_str() {
        "json" | "jsonb" => Some(ValueKind::Json),
        "inet" | "cidr" => Some(ValueKind::Inet),
        "date" | "timestamp" | "timestamptz" => {
            (hint == Some(Detector::BirthDate)).then_some(ValueKind::Date)
        }
        "int8" | "numeric" => Some(ValueKind::BigNum),
        _ if ty.category == 'S' => Some(ValueKind::Text),
        _ if ty.category == 'A' => Some(ValueKind::Array),
        _ => None,
    }
}

pub(super) fn hash64(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Distinct values remembered per tally (enough for every threshold).
pub(super) const MAX_DISTINCT: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Hit {
    pub(super) count: usize,
    pub(super) distinct: HashSet<u64>,
    pub(super) example: Option<String>,
}

/// Counts of one column (or one JSON path of a column) over a sample.
#[derive(Debug, Default)]
pub struct Tally {
    pub(super) values: usize,
    pub(super) distinct: HashSet<u64>,
    /// (detector, found inside free text) -> hits.
    pub(super) hits: BTreeMap<(Detector, bool), Hit>,
}

/// One detector's verdict on one tally.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub detector: Detector,
    /// Found inside free text rather than as the whole value.
    pub free_text: bool,
    /// Only the name says so (nothing was sampled).
    pub by_name: bool,
    pub matched: usize,
    pub sampled: usize,
    pub example: Option<String>,
}

impl Tally {
    fn hit(&mut self, d: Detector, free_text: bool, v: &str) {
        let h = self.hits.entry((d, free_text)).or_default();
        h.count += 1;
        if h.distinct.len() < MAX_DISTINCT {
            h.distinct.insert(hash64(v));
        }
        if h.example.is_none() {
            h.example = Some(masked_example(d, v));
        }
    }

    /// Counts one non-null value.
    pub fn observe(&mut self, kind: ValueKind, v: &str, hint: Option<Detector>) {
        self.values += 1;
        if self.distinct.len() < MAX_DISTINCT {
            self.distinct.insert(hash64(v));
        }
        match kind {
            ValueKind::Text => {
                let ds = value_detectors(v);
                for d in &ds {
                    self.hit(*d, false, v);
                }
                if hint == Some(Detector::BirthDate) && is_birth_date_value(v) {
                    self.hit(Detector::BirthDate, false, v);
                }
                if hint == Some(Detector::Phone) && ds.is_empty() && bare_phone_digits(v) {
                    self.hit(Detector::Phone, false, v);
                }
                if ds.is_empty() {
                    self.embedded(v);
                }
            }
            ValueKind::Array => self.embedded(v),
            ValueKind::Json => {}
            ValueKind::Date => {
                if is_birth_date_value(v) {
                    self.hit(Detector::BirthDate, false, v);
                }
            }
            ValueKind::Inet => {
                if is_ip(v) {
                    self.hit(Detector::IpAddress, false, v);
                }
            }
            ValueKind::BigNum => {
                if is_card(v) {
                    self.hit(Detector::CardNumber, false, v);
                } else if hint == Some(Detector::Phone) && bare_phone_digits(v) {
                    self.hit(Detector::Phone, false, v);
                }
            }
        }
    }

    fn embedded(&mut self, v: &str) {
        let mut seen = HashSet::new();
        for (d, tok) in embedded(v) {
            if seen.insert(d) {
                self.hit(d, true, &tok);
            } else if let Some(h) = self.hits.get_mut(&(d, true)) {
                if h.distinct.len() < MAX_DISTINCT {
                    h.distinct.insert(hash64(&tok));
                }
            }
        }
    }

    /// The detectors that pass their thresholds (see [`Detector::threshold`]). Inside free
    /// text, a detector needs two values and two distinct matches (a constant such as the
    /// company's own support address in every row is not a customer's). With no value
    /// sampled, a name that says PII is a finding of its own.
    pub fn findings(&self, hint: Option<Detector>) -> Vec<Found> {
        let mut out = Vec::new();
        let total_distinct = self.distinct.len().max(1);
        for ((d, free), h) in &self.hits {
            if *free {
                continue;
            }
            let hinted = hint == Some(*d);
            if *d == Detector::BirthDate && !hinted {
                continue;
            }
            let (share, min_distinct) = d.threshold(hinted);
            // Variety is asked of samples of mostly distinct values only as much as they have
            // (a three-row table); a sample repeating a few values must show it in full.
            let min_distinct = if total_distinct * 2 > self.values {
                min_distinct.min(total_distinct)
            } else {
                min_distinct
            };
            if h.count as f64 >= share * self.values as f64 && h.distinct.len() >= min_distinct {
                out.push(Found {
                    detector: *d,
                    free_text: false,
                    by_name: false,
                    matched: h.count,
                    sampled: self.values,
                    example: h.example.clone(),
                });
            }
        }
        for ((d, free), h) in &self.hits {
            if *free
                && h.count >= 2
                && h.distinct.len() >= 2
                && !out.iter().any(|f| f.detector == *d)
            {
                out.push(Found {
                    detector: *d,
                    free_text: true,
                    by_name: false,
                    matched: h.count,
                    sampled: self.values,
                    example: h.example.clone(),
                });
            }
        }
        if self.values == 0 {
            if let Some(d) = hint {
                out.push(Found {
                    detector: d,
                    free_text: false,
                    by_name: true,
                    matched: 0,
                    sampled: 0,
                    example: None,
                });
            }
        }
        out
    }
}

/// 8 to 15 digits and nothing else but spaces and dashes (a phone number stored without `+`,
/// counted only where the name says phone).
pub(super) fn bare_phone_digits(v: &str) -> bool {
    let v = v.trim();
    let n = v.chars().filter(char::is_ascii_digit).count();
    (8..=15).contains(&n)
        && v.chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
}

/// One key of a concrete JSON path; `Any` stands for a key that is itself data (digits, a
/// date, an e-mail address...): such keys are never printed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKey {
    Key(String),
    Any,
}

pub(super) fn path_key(k: &str) -> PathKey {
    let data_like = k.len() > 64
        || !k.chars().any(char::is_alphabetic)
        || !value_detectors(k).is_empty()
        || k.chars().filter(char::is_ascii_digit).count() >= 6;
    if data_like {
        PathKey::Any
    } else {
        PathKey::Key(k.to_string())
    }
}

/// The path in policy syntax: `$.billing.name`, `$."odd key"`, `$.*.phone`.
pub fn format_path(keys: &[PathKey]) -> String {
    let mut s = String::from("$");
    for k in keys {
        match k {
            PathKey::Any => s.push_str(".*"),
            PathKey::Key(k)
                if !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                s.push('.');
                s.push_str(k);
            }
            PathKey::Key(k) => {
                s.push_str(".\"");
                for c in k.chars() {
                    if c == '"' || c == '\\' {
                        s.push('\\');
                    }
                    s.push(c);
                }
                s.push('"');
            }
        }
    }
    s
}

/// Most distinct paths kept per JSON column (documents keyed by data stop adding paths).
pub(super) const MAX_PATHS: usize = 2000;

/// Tallies every scalar of a JSON document at its path (array elements share the array's
/// path, as in policies).
pub fn walk_json(
    v: &serde_json::Value,
    path: &mut Vec<PathKey>,
    out: &mut BTreeMap<Vec<PathKey>, Tally>,
) {
    use serde_json::Value;
    if path.len() > 32 {
        return;
    }
    let mut leaf = |kind: ValueKind, s: &str, path: &Vec<PathKey>| {
        if !out.contains_key(path) && out.len() >= MAX_PATHS {
            return;
        }
        let hint = match path.last() {
            Some(PathKey::Key(k)) => name_hint(k),
            _ => None,
        };
        out.entry(path.clone()).or_default().observe(kind, s, hint);
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                path.push(path_key(k));
                walk_json(x, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for x in a {
                walk_json(x, path, out);
            }
        }
        Value::String(s) => leaf(ValueKind::Text, s, path),
        Value::Number(n) => {
            let s = n.to_string();
            if s.chars().all(|c| c.is_ascii_digit()) {
                leaf(ValueKind::BigNum, &s, path);
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}
