//! Customer IDs from a CSV file, a `--ids` list or a JSON array: parsed, validated against the
//! subject column types and put in canonical text form (the form `CAST(subject AS text)` gives,
//! which is what the forget list hashes).
//!
//! CSV rules: one ID a line; `\n` or `\r\n`; blank lines ignored; an optional header line (the
//! first non-blank line, when it is a column name such as `customer_id`); an ID may be wrapped in
//! double quotes (`""` inside is a quote). A line with more than one field, an unbalanced quote,
//! control characters, invalid UTF-8, or an ID the subject column cannot hold rejects the whole
//! file, with its line number.

use std::collections::HashSet;

/// Longest ID accepted (bytes).
pub const MAX_ID_LEN: usize = 512;

/// Why IDs were rejected (the whole input: nothing of it is used). The position says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A line of a CSV body (1-based, blank lines counted).
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: LineError },
    /// An item of a `--ids` list (1-based).
    #[error("--ids item {item}: {reason}")]
    ListItem { item: usize, reason: IdError },
    /// An element of a JSON `customer_ids` array (0-based).
    #[error("customer_ids[{index}]: {reason}")]
    JsonItem { index: usize, reason: IdError },
}

/// Why a CSV line does not hold one valid ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("unbalanced double quote")]
    UnbalancedQuote,
    #[error("stray double quote")]
    StrayQuote,
    #[error("more than one field (one ID a line)")]
    SeveralFields,
    #[error(transparent)]
    Id(#[from] IdError),
}

/// Why one ID is not valid for the subject columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("empty ID")]
    Empty,
    #[error("ID longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("ID contains a control character")]
    ControlCharacter,
    /// `shown`: a short rendering of the value ([`show`]).
    #[error("{shown} is not {}", kind.describe())]
    NotOfKind { shown: String, kind: IdKind },
}

/// Subject columns that no one ID can satisfy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subject columns mix integer and uuid types")]
pub struct KindConflict;

/// What the subject columns can hold, from their types (the strictest wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// Integer subject columns; the value must fit the narrowest (`min`..=`max`).
    Int {
        min: i64,
        max: i64,
    },
    Uuid,
    Text,
    /// Text where some subject column is case-insensitive (`citext`): IDs are compared, hashed
    /// and suppressed in lower case, in every subject table.
    CiText,
}

impl IdKind {
    /// The kind for one subject column type (`pg_type.typname` of the base type).
    pub fn for_type(typname: &str) -> Option<IdKind> {
        Some(match typname {
            "int2" => IdKind::Int {
                min: i16::MIN as i64,
                max: i16::MAX as i64,
            },
            "int4" => IdKind::Int {
                min: i32::MIN as i64,
                max: i32::MAX as i64,
            },
            "int8" => IdKind::Int {
                min: i64::MIN,
                max: i64::MAX,
            },
            "uuid" => IdKind::Uuid,
            "text" | "varchar" | "bpchar" | "name" => IdKind::Text,
            "citext" => IdKind::CiText,
            _ => return None,
        })
    }

    /// The kind that satisfies both (IDs must be valid for every subject column).
    pub fn combine(self, other: IdKind) -> Result<IdKind, KindConflict> {
        use IdKind::*;
        match (self, other) {
            (Int { min: a, max: b }, Int { min: c, max: d }) => Ok(Int {
                min: a.max(c),
                max: b.min(d),
            }),
            (Int { .. }, Text | CiText) | (Text | CiText, Int { .. }) => {
                Ok(self.strictest_int(other))
            }
            (Uuid, Uuid) | (Uuid, Text | CiText) | (Text | CiText, Uuid) => Ok(Uuid),
            (Text, Text) => Ok(Text),
            (CiText, Text | CiText) | (Text, CiText) => Ok(CiText),
            (Int { .. }, Uuid) | (Uuid, Int { .. }) => Err(KindConflict),
        }
    }

    fn strictest_int(self, other: IdKind) -> IdKind {
        if matches!(self, IdKind::Int { .. }) {
            self
        } else {
            other
        }
    }

    fn describe(self) -> String {
        match self {
            IdKind::Int { min, max } => format!("an integer between {min} and {max}"),
            IdKind::Uuid => "a UUID".to_string(),
            IdKind::Text => "a non-empty text ID".to_string(),
            IdKind::CiText => "a non-empty text ID (case-insensitive)".to_string(),
        }
    }
}

/// Validates one ID and returns its canonical text form.
pub fn canonical_id(raw: &str, kind: IdKind) -> Result<String, IdError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if s.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter);
    }
    let not_of_kind = || IdError::NotOfKind {
        shown: show(s),
        kind,
    };
    match kind {
        IdKind::Int { min, max } => {
            let digits = s.strip_prefix('+').unwrap_or(s);
            match digits.parse::<i64>() {
                Ok(v) if v >= min && v <= max => Ok(v.to_string()),
                _ => Err(not_of_kind()),
            }
        }
        IdKind::Uuid => {
            let hex: String = s
                .trim_start_matches('{')
                .trim_end_matches('}')
                .chars()
                .filter(|c| *c != '-')
                .collect();
            if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(not_of_kind());
            }
            let h = hex.to_ascii_lowercase();
            Ok(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
        IdKind::Text => Ok(s.to_string()),
        // The same folding as PostgreSQL's lower() for the IDs that matter (e-mails, codes);
        // the SQL side folds with lower() as well (TableSpec::id_text_sql).
        IdKind::CiText => Ok(s.to_lowercase()),
    }
}

/// A short, safe rendering of a rejected value for error messages.
fn show(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

/// IDs ready to forget: canonical, deduplicated, in first-seen order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdList {
    pub ids: Vec<String>,
    /// How many input IDs repeated an earlier one.
    pub duplicates: usize,
}

impl IdList {
    fn push(&mut self, seen: &mut HashSet<String>, id: String) {
        if seen.insert(id.clone()) {
            self.ids.push(id);
        } else {
            self.duplicates += 1;
        }
    }
}

/// Names the first line may carry as a header (case-insensitive), besides the subject columns.
const HEADER_NAMES: &[&str] = &[
    "id",
    "ids",
    "customer_id",
    "customer_ids",
    "customer id",
    "customerid",
    "subject",
    "subject_id",
    "email",
];

fn looks_like_header(field: &str, kind: IdKind, subject_names: &[String]) -> bool {
    let f = field.trim().to_ascii_lowercase();
    if HEADER_NAMES.contains(&f.as_str())
        || subject_names.iter().any(|s| s.to_ascii_lowercase() == f)
    {
        return true;
    }
    // For integer and UUID subjects any name-like first line is a header.
    !matches!(kind, IdKind::Text | IdKind::CiText)
        && canonical_id(field, kind).is_err()
        && !f.is_empty()
        && f.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && f.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ' ' || c == '-')
}

/// Splits one CSV line into its single field, unquoting it. Errors name what is wrong.
fn single_field(line: &str) -> Result<String, LineError> {
    let t = line.trim();
    if let Some(rest) = t.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        loop {
            match chars.next() {
                None => return Err(LineError::UnbalancedQuote),
                Some('"') => {
                    let mut peek = chars.clone();
                    if peek.next() == Some('"') {
                        out.push('"');
                        chars = peek;
                    } else {
                        break;
                    }
                }
                Some(c) => out.push(c),
            }
        }
        let after: String = chars.collect();
        if !after.trim().is_empty() {
            return Err(LineError::SeveralFields);
        }
        Ok(out)
    } else {
        if t.contains('"') {
            return Err(LineError::StrayQuote);
        }
        if t.contains([',', ';', '\t']) {
            return Err(LineError::SeveralFields);
        }
        Ok(t.to_string())
    }
}

/// Parses a CSV file of IDs. Any malformed line rejects the whole file:
/// `line N: reason`.
pub fn parse_csv(bytes: &[u8], kind: IdKind, subject_names: &[String]) -> Result<IdList, Error> {
    let mut list = IdList::default();
    let mut seen = HashSet::new();
    let mut first = true;
    for item in csv_lines(bytes) {
        let (n, field) = item?;
        if first {
            first = false;
            if looks_like_header(&field, kind, subject_names) {
                continue;
            }
        }
        let id = canonical_id(&field, kind).map_err(|e| Error::Line {
            line: n,
            reason: e.into(),
        })?;
        list.push(&mut seen, id);
    }
    Ok(list)
}

/// The non-blank lines of a CSV body as (line number, single field), in order; BOM and CRLF
/// allowed. A line that is not UTF-8 or not one field is an error naming its line.
fn csv_lines(bytes: &[u8]) -> impl Iterator<Item = Result<(usize, String), Error>> + '_ {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    body.split(|b| *b == b'\n')
        .enumerate()
        .filter_map(|(i, raw)| {
            let n = i + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let line = match std::str::from_utf8(raw) {
                Ok(l) => l,
                Err(_) => {
                    return Some(Err(Error::Line {
                        line: n,
                        reason: LineError::NotUtf8,
                    }))
                }
            };
            if line.trim().is_empty() {
                return None;
            }
            Some(
                single_field(line)
                    .map(|f| (n, f))
                    .map_err(|reason| Error::Line { line: n, reason }),
            )
        })
}

/// Parses a comma-separated `--ids` list.
pub fn parse_id_list(text: &str, kind: IdKind) -> Result<IdList, Error> {
    let mut list = IdList::default();
    let mut seen = HashSet::new();
    for (i, part) in text.split(',').enumerate() {
        if part.trim().is_empty() {
            continue;
        }
        let id = canonical_id(part, kind).map_err(|reason| Error::ListItem {
            item: i + 1,
            reason,
        })?;
        list.push(&mut seen, id);
    }
    Ok(list)
}

/// One ID as it came in a JSON body (an integer or a string).
#[derive(Debug, Clone, PartialEq)]
pub enum RawId {
    Int(i64),
    Text(String),
}

/// Validates IDs from a JSON array.
pub fn from_raw(raw: &[RawId], kind: IdKind) -> Result<IdList, Error> {
    let mut list = IdList::default();
    let mut seen = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let s = match r {
            RawId::Int(v) => v.to_string(),
            RawId::Text(s) => s.clone(),
        };
        let id = canonical_id(&s, kind).map_err(|reason| Error::JsonItem { index: i, reason })?;
        list.push(&mut seen, id);
    }
    Ok(list)
}

/// Raw (unvalidated) fields of a CSV body, for counting before validation. Same line rules
/// as [`parse_csv`] except that the header is dropped only when it is not a plausible ID.
pub fn csv_fields(bytes: &[u8]) -> Result<Vec<(usize, String)>, Error> {
    csv_lines(bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INT: IdKind = IdKind::Int {
        min: i64::MIN,
        max: i64::MAX,
    };

    #[test]
    fn csv_with_header_blank_lines_and_crlf() {
        let l = parse_csv(b"customer_id\r\n1\r\n\r\n 2 \n\"3\"\n2\n", INT, &[]).unwrap();
        assert_eq!(l.ids, vec!["1", "2", "3"]);
        assert_eq!(l.duplicates, 1);
        let l = parse_csv(b"7\n8\n", INT, &[]).unwrap();
        assert_eq!(l.ids, vec!["7", "8"]);
    }

    #[test]
    fn malformed_lines_name_their_number() {
        let csv_err = |bytes: &[u8]| parse_csv(bytes, INT, &[]).unwrap_err().to_string();
        let e = parse_csv(b"customer_id\n1\n2\nx3\n4\n", INT, &[]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Line {
                    line: 4,
                    reason: LineError::Id(IdError::NotOfKind { .. })
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "line 4: \"x3\" is not an integer between -9223372036854775808 and 9223372036854775807"
        );
        let e = csv_err(b"1\n2,3\n");
        assert!(
            e.starts_with("line 2:") && e.contains("one ID a line"),
            "{e}"
        );
        let e = csv_err(b"1\n\"2\n");
        assert!(e.starts_with("line 2:") && e.contains("quote"), "{e}");
        let e = csv_err(b"1\n\xff\n");
        assert!(e.starts_with("line 2:") && e.contains("UTF-8"), "{e}");
        let e = csv_err(b"1\n99999999999999999999\n");
        assert!(e.starts_with("line 2:"), "{e}");
    }

    #[test]
    fn int_range_and_canonical_forms() {
        let i4 = IdKind::for_type("int4").unwrap();
        assert!(canonical_id("2147483648", i4).is_err());
        assert_eq!(canonical_id("+007", i4).unwrap(), "7");
        assert_eq!(
            canonical_id("{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}", IdKind::Uuid).unwrap(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(canonical_id(" a@b.c ", IdKind::Text).unwrap(), "a@b.c");
        assert_eq!(canonical_id(" A@B.c ", IdKind::Text).unwrap(), "A@B.c");
        assert_eq!(canonical_id(" A@B.c ", IdKind::CiText).unwrap(), "a@b.c");
        let ci = IdKind::for_type("citext").unwrap();
        assert_eq!(ci, IdKind::CiText);
        assert_eq!(IdKind::Text.combine(ci).unwrap(), IdKind::CiText);
        assert_eq!(ci.combine(IdKind::Uuid).unwrap(), IdKind::Uuid);
        assert_eq!(ci.combine(i4).unwrap(), i4);
        assert!(canonical_id("a\u{7}b", IdKind::Text).is_err());
        assert_eq!(IdKind::for_type("int8").unwrap().combine(i4).unwrap(), i4);
    }

    #[test]
    fn text_ids_keep_header_detection_narrow() {
        let subj = vec!["email_id".to_string()];
        let l = parse_csv(b"email_id\na@x.io\nb@x.io\n", IdKind::Text, &subj).unwrap();
        assert_eq!(l.ids, vec!["a@x.io", "b@x.io"]);
        let l = parse_csv(b"a@x.io\nb@x.io\n", IdKind::Text, &subj).unwrap();
        assert_eq!(l.ids.len(), 2);
        let l = parse_csv(b"\"x\"\"y\"\n", IdKind::Text, &subj).unwrap();
        assert_eq!(l.ids, vec!["x\"y"]);
    }

    #[test]
    fn id_lists_and_json() {
        assert_eq!(
            parse_id_list("1, 2,,3", INT).unwrap().ids,
            vec!["1", "2", "3"]
        );
        assert!(parse_id_list("1,a", INT)
            .unwrap_err()
            .to_string()
            .contains("item 2"));
        let l = from_raw(&[RawId::Int(5), RawId::Text("6".into())], INT).unwrap();
        assert_eq!(l.ids, vec!["5", "6"]);
        assert!(from_raw(&[RawId::Text("x".into())], INT)
            .unwrap_err()
            .to_string()
            .contains("customer_ids[0]"));
    }
}
