//! Masks as data: the kinds, their options, and which column types each fits.

/// How one PII column is masked for masked sessions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mask {
    Null,
    Redact,
    Constant(String),
    Email,
    Partial {
        keep_first: u32,
        keep_last: u32,
        padding: String,
    },
    Hash,
    Year,
    /// A json or jsonb column masked per key path (see [`JsonMask`]).
    Json(JsonMask),
    /// A realistic fake value from the `fake` crate's lists, chosen by the keyed hash of the
    /// raw value (same input, same fake, in every table).
    Fake(FakeKind),
    /// Numbers, dates and timestamps moved by a keyed, per-row offset.
    Noise(Noise),
    /// Numbers, dates and timestamps generalised to the lower bound of their bucket.
    Bucket(Bucket),
}

/// The flavours of mask `fake`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeKind {
    Name,
    FirstName,
    LastName,
    Email,
    Phone,
    StreetAddress,
    City,
}

impl FakeKind {
    pub const ALL: [FakeKind; 7] = [
        FakeKind::Name,
        FakeKind::FirstName,
        FakeKind::LastName,
        FakeKind::Email,
        FakeKind::Phone,
        FakeKind::StreetAddress,
        FakeKind::City,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FakeKind::Name => "name",
            FakeKind::FirstName => "first_name",
            FakeKind::LastName => "last_name",
            FakeKind::Email => "email",
            FakeKind::Phone => "phone",
            FakeKind::StreetAddress => "street_address",
            FakeKind::City => "city",
        }
    }

    pub(super) fn parse(s: &str) -> Option<FakeKind> {
        FakeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The word lists mask `fake` draws from, by name, as the `fake` crate ships them (its `EN`
/// locale, the lists faker.js and Faker share; order and repeats kept, so the n-th entry is
/// the same everywhere). `pgredact setup-sql` copies them into `pgredact_mask.fake_words`.
pub fn fake_lists() -> Vec<(&'static str, &'static [&'static str])> {
    use fake::locales::{Data, EN};
    vec![
        ("first_name", EN::NAME_FIRST_NAME),
        ("last_name", EN::NAME_LAST_NAME),
        ("street_suffix", EN::ADDRESS_STREET_SUFFIX),
        ("city_prefix", EN::ADDRESS_CITY_PREFIX),
        ("city_suffix", EN::ADDRESS_CITY_SUFFIX),
        ("phone_format", EN::PHONE_CELL_NUMBER_FORMATS),
    ]
}

/// A length of time as policies write it: `30 days`, `1 year`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub n: u32,
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }
    /// Seconds in one unit; None for months and years (their length varies).
    fn seconds(self) -> Option<u64> {
        match self {
            Unit::Second => Some(1),
            Unit::Minute => Some(60),
            Unit::Hour => Some(3600),
            Unit::Day => Some(86_400),
            Unit::Week => Some(604_800),
            Unit::Month | Unit::Year => None,
        }
    }
}

impl Span {
    /// Parses `<count> <unit>`: a whole count from 1 to 1,000,000 and second(s), minute(s),
    /// hour(s), day(s), week(s), month(s) or year(s).
    pub fn parse(s: &str) -> Result<Span, String> {
        let bad = || {
            format!(
                "interval {s:?} must be a whole count and a unit, e.g. \"30 days\" (units: seconds, minutes, hours, days, weeks, months, years)"
            )
        };
        let mut it = s.split_whitespace();
        let (Some(n), Some(u), None) = (it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        let n: u32 = n.parse().map_err(|_| bad())?;
        if !(1..=1_000_000).contains(&n) {
            return Err(format!(
                "interval {s:?}: the count must be between 1 and 1000000"
            ));
        }
        let unit = match u.to_ascii_lowercase().as_str() {
            "second" | "seconds" | "sec" | "secs" => Unit::Second,
            "minute" | "minutes" | "min" | "mins" => Unit::Minute,
            "hour" | "hours" => Unit::Hour,
            "day" | "days" => Unit::Day,
            "week" | "weeks" => Unit::Week,
            "month" | "months" => Unit::Month,
            "year" | "years" => Unit::Year,
            _ => return Err(bad()),
        };
        Ok(Span { n, unit })
    }

    /// Length in seconds; None for months and years.
    pub fn seconds(&self) -> Option<u64> {
        self.unit.seconds().map(|s| s * u64::from(self.n))
    }

    /// As written back: `30 days`, `1 year`.
    pub fn text(&self) -> String {
        format!(
            "{} {}{}",
            self.n,
            self.unit.as_str(),
            if self.n == 1 { "" } else { "s" }
        )
    }
}

/// How mask `noise` moves a value. `per_row`: the offset also depends on the row's primary
/// key (`per_row = true`), not only on the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Noise {
    /// Numbers: up to ± `ppm` parts per million of the value (`ratio = 0.1` is 100000).
    Ratio { ppm: u32, per_row: bool },
    /// Dates and timestamps: up to ± this length (days, hours, minutes, seconds or weeks).
    Interval { span: Span, per_row: bool },
}

impl Noise {
    pub fn per_row(&self) -> bool {
        match self {
            Noise::Ratio { per_row, .. } | Noise::Interval { per_row, .. } => *per_row,
        }
    }
}

/// How mask `bucket` generalises a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Numbers: `floor(x / step) * step`; the step as a plain decimal (`10`, `0.5`).
    Step(String),
    /// Dates and timestamps: the start of the calendar bucket (years, months) or of the
    /// fixed-length bucket counted from Monday 2000-01-03 00:00 UTC (weeks, days, hours...).
    Interval(Span),
}

/// Masks inside a json/jsonb document. Every node has a path: the object keys from the root
/// (arrays are traversed, their elements share the array's path). A node matched by a rule takes
/// that rule's mask for itself and everything under it, until a deeper rule matches; the root
/// starts with `default`. When several rules match one node, the strictest wins. `None` is keep.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonMask {
    pub rules: Vec<JsonRule>,
    pub default: Option<Box<Mask>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonRule {
    /// As written in the policy, e.g. `$.billing.name` or `$.**.phone`.
    pub path: String,
    pub segments: Vec<PathSeg>,
    /// `None` keeps the value.
    pub mask: Option<Box<Mask>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSeg {
    /// One object key.
    Key(String),
    /// `*`: any one key.
    AnyKey,
    /// `**`: any number of keys, none included.
    AnyDepth,
}

impl JsonRule {
    /// A PostgreSQL regular expression (ARE) matching the node paths this rule selects. Node
    /// paths are written as `/key` per level, keys escaped as in JSON Pointer (`~0`, `~1`).
    pub fn regex(&self) -> String {
        let mut re = String::from("^");
        for s in &self.segments {
            match s {
                PathSeg::Key(k) => {
                    re.push('/');
                    re.push_str(&are_escape(&k.replace('~', "~0").replace('/', "~1")));
                }
                PathSeg::AnyKey => re.push_str("/[^/]*"),
                PathSeg::AnyDepth => re.push_str("(/[^/]*)*"),
            }
        }
        re.push('$');
        re
    }
}

/// `s` as a literal in a PostgreSQL regular expression (ARE): every character other than a
/// letter, digit or `_` is escaped.
fn are_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if !(c.is_alphanumeric() || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl JsonRule {
    /// Text that the document's `jsonb::text` form must contain for this rule to select
    /// anything: its last key as jsonb writes keys (`"key": `). None when the last segment is a
    /// wildcard, or the key has characters whose escaping could differ.
    pub fn needle(&self) -> Option<String> {
        match self.segments.last() {
            Some(PathSeg::Key(k)) if !k.chars().any(|c| c.is_control()) => {
                serde_json::to_string(k).ok().map(|q| format!("{q}: "))
            }
            _ => None,
        }
    }

    /// The path as a PostgreSQL text[] literal for `#>` and `jsonb_set`, when it has no
    /// wildcard (an array on the way makes `#>` return NULL, and the caller falls back to the
    /// full walk).
    pub fn keys_literal(&self) -> Option<String> {
        let mut out = Vec::new();
        for s in &self.segments {
            match s {
                PathSeg::Key(k) => out.push(format!(
                    "\"{}\"",
                    k.replace('\\', "\\\\").replace('"', "\\\"")
                )),
                _ => return None,
            }
        }
        if out.is_empty() {
            return None;
        }
        Some(format!("{{{}}}", out.join(",")))
    }
}

/// Strictness of a mask inside JSON (higher is stricter); `None` is keep.
fn json_strictness(m: &Option<Box<Mask>>) -> u8 {
    match m.as_deref() {
        Some(Mask::Null) => 6,
        Some(Mask::Redact) => 5,
        Some(Mask::Constant(_)) => 4,
        Some(Mask::Hash) | Some(Mask::Fake(_)) => 3,
        Some(Mask::Email) => 2,
        Some(Mask::Partial { .. }) => 1,
        _ => 0,
    }
}

/// Parses a JSON path as policies write it: `$`, then `.key`, `."quoted key"`, `['key']`,
/// `.*` (any key), `.**` (any depth) and `[*]` (array elements; arrays are traversed anyway).
pub fn parse_json_path(path: &str) -> Result<Vec<PathSeg>, String> {
    let mut rest = path
        .strip_prefix('$')
        .ok_or_else(|| format!("JSON path {path:?} must start with `$`"))?;
    let mut out = Vec::new();
    let quoted = |s: &str, q: char| -> Result<(String, usize), String> {
        let mut key = String::new();
        let mut it = s.char_indices().skip(1);
        while let Some((i, c)) = it.next() {
            if c == '\\' {
                match it.next() {
                    Some((_, e)) => key.push(e),
                    None => break,
                }
            } else if c == q {
                return Ok((key, i + 1));
            } else {
                key.push(c);
            }
        }
        Err(format!("JSON path {path:?}: unterminated quote"))
    };
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix(".**") {
            out.push(PathSeg::AnyDepth);
            rest = r;
        } else if let Some(r) = rest.strip_prefix(".*") {
            out.push(PathSeg::AnyKey);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("[*]") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('.') {
            if r.starts_with('"') {
                let (k, n) = quoted(r, '"')?;
                out.push(PathSeg::Key(k));
                rest = &r[n..];
            } else {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                let k = &r[..end];
                if k.is_empty() || k.contains(['"', '\'', ']', ' ']) {
                    return Err(format!(
                        "JSON path {path:?}: expected a key after `.` (quote keys with special characters: .\"my key\")"
                    ));
                }
                out.push(PathSeg::Key(k.to_string()));
                rest = &r[end..];
            }
        } else if let Some(r) = rest.strip_prefix('[') {
            if r.starts_with('\'') || r.starts_with('"') {
                let q = if r.starts_with('"') { '"' } else { '\'' };
                let (k, n) = quoted(r, q)?;
                let after = &r[n..];
                rest = after
                    .strip_prefix(']')
                    .ok_or_else(|| format!("JSON path {path:?}: expected `]`"))?;
                out.push(PathSeg::Key(k));
            } else {
                return Err(format!(
                    "JSON path {path:?}: array positions are not supported; arrays are traversed, so leave them out or write [*]"
                ));
            }
        } else {
            return Err(format!(
                "JSON path {path:?}: unexpected {:?}",
                rest.chars().next().unwrap_or(' ')
            ));
        }
    }
    Ok(out)
}

impl Mask {
    /// The mask as data for `pgredact_admin.mask_expr`.
    pub fn spec(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Mask::Constant(v) => json!({"kind": "constant", "value": v}),
            Mask::Partial {
                keep_first,
                keep_last,
                padding,
            } => {
                json!({"kind": "partial", "keep_first": keep_first, "keep_last": keep_last, "padding": padding})
            }
            Mask::Json(j) => {
                use serde_json::Value;
                let leaf = |m: &Option<Box<Mask>>| match m {
                    Some(m) => m.spec(),
                    None => json!({"kind": "keep"}),
                };
                // Strictest first: the database takes the first rule that matches a node.
                let mut rules: Vec<&JsonRule> = j.rules.iter().collect();
                rules.sort_by_key(|r| std::cmp::Reverse(json_strictness(&r.mask)));
                let uses_key = self.uses_key();
                // A document whose text holds none of the rules' last keys is left as it is
                // (only when nothing else is masked by default and every rule ends in a key).
                let needles: Option<Vec<String>> = if j.default.is_none() {
                    j.rules.iter().map(|r| r.needle()).collect()
                } else {
                    None
                };
                let prefilter = needles.filter(|n| !n.is_empty()).map(|n| {
                    n.iter()
                        .map(|x| are_escape(x))
                        .collect::<Vec<_>>()
                        .join("|")
                });
                json!({
                    "kind": "json",
                    "default": leaf(&j.default),
                    "prefilter": prefilter,
                    "uses_key": uses_key,
                    "rules": rules
                        .iter()
                        .map(|r| {
                            let mut o = json!({"path": r.path, "re": r.regex(), "mask": leaf(&r.mask)});
                            if let Some(n) = r.needle() {
                                o["needle"] = Value::String(n);
                            }
                            if let Some(k) = r.keys_literal() {
                                o["keys"] = Value::String(k);
                            }
                            o
                        })
                        .collect::<Vec<_>>(),
                })
            }
            Mask::Fake(k) => json!({"kind": "fake", "flavour": k.as_str(), "uses_key": true}),
            Mask::Noise(Noise::Ratio { ppm, per_row }) => {
                json!({"kind": "noise", "ppm": ppm, "per_row": per_row, "uses_key": true})
            }
            Mask::Noise(Noise::Interval { span, per_row }) => json!({
                "kind": "noise",
                "interval": span.text(),
                "seconds": span.seconds().unwrap_or(0),
                "per_row": per_row,
                "uses_key": true
            }),
            Mask::Bucket(Bucket::Step(st)) => json!({"kind": "bucket", "step": st}),
            Mask::Bucket(Bucket::Interval(sp)) => json!({
                "kind": "bucket",
                "interval": sp.text(),
                "unit": sp.unit.as_str(),
                "n": sp.n,
                "seconds": sp.seconds()
            }),
            other => json!({"kind": other.kind()}),
        }
    }

    /// Whether the mask needs the HMAC key.
    pub fn uses_key(&self) -> bool {
        match self {
            Mask::Hash | Mask::Fake(_) | Mask::Noise(_) => true,
            Mask::Json(j) => {
                j.default.as_deref().is_some_and(Mask::uses_key)
                    || j.rules
                        .iter()
                        .any(|r| r.mask.as_deref().is_some_and(Mask::uses_key))
            }
            _ => false,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Mask::Null => "null",
            Mask::Redact => "redact",
            Mask::Constant(_) => "constant",
            Mask::Email => "email",
            Mask::Partial { .. } => "partial",
            Mask::Hash => "hash",
            Mask::Year => "year",
            Mask::Json(_) => "json",
            Mask::Fake(_) => "fake",
            Mask::Noise(_) => "noise",
            Mask::Bucket(_) => "bucket",
        }
    }
}

/// Type facts the mask SQL needs: `format_type` text and pg_type category of the base type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColType {
    /// `format_type(atttypid, atttypmod)`, e.g. `character varying(255)`.
    pub sql: String,
    /// Base type name (domains resolved), e.g. `varchar`, `date`, `timestamptz`.
    pub base: String,
    /// `pg_type.typcategory` of the base type: S string, N numeric, D date/time, ...
    pub category: char,
}

/// Why a mask cannot apply to a column type (reported by `check`).
pub fn mask_fits(mask: &Mask, ty: &ColType) -> Result<(), String> {
    let text_like = ty.category == 'S';
    match mask {
        Mask::Null | Mask::Redact | Mask::Constant(_) => Ok(()),
        Mask::Email | Mask::Partial { .. } | Mask::Hash if !text_like => Err(format!(
            "mask \"{}\" needs a text column, not {}",
            mask.kind(),
            ty.sql
        )),
        Mask::Json(_) if !matches!(ty.base.as_str(), "json" | "jsonb") => Err(format!(
            "mask \"json\" needs a json or jsonb column, not {}",
            ty.sql
        )),
        Mask::Year if !matches!(ty.base.as_str(), "date" | "timestamp" | "timestamptz") => {
            Err(format!(
                "mask \"year\" needs a date or timestamp column, not {}",
                ty.sql
            ))
        }
        Mask::Fake(k) if !text_like => Err(format!(
            "mask \"fake\" (kind {}) needs a text column, not {}",
            k.as_str(),
            ty.sql
        )),
        Mask::Noise(Noise::Ratio { .. }) if !is_number(ty) => Err(format!(
            "mask \"noise\" with `ratio` needs a number column (smallint, integer, bigint, numeric, real, double precision), not {}{}",
            ty.sql,
            if is_datetime(ty) { " (use `interval` for dates and timestamps)" } else { "" }
        )),
        Mask::Noise(Noise::Interval { span: sp, .. }) => {
            if !is_datetime(ty) {
                return Err(format!(
                    "mask \"noise\" with `interval` needs a date or timestamp column, not {}{}",
                    ty.sql,
                    if is_number(ty) { " (use `ratio` for numbers)" } else { "" }
                ));
            }
            if ty.base == "date" && sp.seconds().is_some_and(|s| s % 86_400 != 0) {
                return Err(format!(
                    "mask \"noise\": interval {:?} is not a whole number of days, as a date column needs",
                    sp.text()
                ));
            }
            Ok(())
        }
        Mask::Bucket(Bucket::Step(st)) => {
            if !is_number(ty) {
                return Err(format!(
                    "mask \"bucket\" with `step` needs a number column, not {}{}",
                    ty.sql,
                    if is_datetime(ty) { " (use `interval` for dates and timestamps)" } else { "" }
                ));
            }
            if matches!(ty.base.as_str(), "int2" | "int4" | "int8") && st.contains('.') {
                return Err(format!(
                    "mask \"bucket\": step {st} is not a whole number, as an integer column ({}) needs",
                    ty.sql
                ));
            }
            Ok(())
        }
        Mask::Bucket(Bucket::Interval(sp)) => {
            if !is_datetime(ty) {
                return Err(format!(
                    "mask \"bucket\" with `interval` needs a date or timestamp column, not {}{}",
                    ty.sql,
                    if is_number(ty) { " (use `step` for numbers)" } else { "" }
                ));
            }
            if ty.base == "date" && sp.seconds().is_some_and(|s| s % 86_400 != 0) {
                return Err(format!(
                    "mask \"bucket\": interval {:?} is not a whole number of days, as a date column needs",
                    sp.text()
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The number types masks `noise` and `bucket` take.
fn is_number(ty: &ColType) -> bool {
    matches!(
        ty.base.as_str(),
        "int2" | "int4" | "int8" | "numeric" | "float4" | "float8"
    )
}

/// The date and time types masks `noise` and `bucket` take.
fn is_datetime(ty: &ColType) -> bool {
    matches!(ty.base.as_str(), "date" | "timestamp" | "timestamptz")
}
