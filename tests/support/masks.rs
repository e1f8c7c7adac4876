//! An independent reference implementation of the mask kinds (README, "Mask kinds"), used to
//! build the statically masked twin database the oracles compare with. It is deliberately not
//! the product's implementation (`pgredact_admin.mask_expr`, inside PostgreSQL): the twin checks
//! that one.

use hmac::{Hmac, Mac};
use pgredact::policy::{
    quote_literal, Bucket, ColType, FakeKind, JsonMask, Mask, PathSeg, Span, Unit,
};
use serde_json::Value;

/// The SQL expression that masks column `col` (quoted) of type `ty`, run by a superuser on the
/// twin (the HMAC key is read from the twin's `pgredact.hash_key`).
pub fn mask_sql(mask: &Mask, col: &str, ty: &ColType) -> String {
    let t = &ty.sql;
    let guard =
        |expr: String| format!("CASE WHEN {col} IS NULL THEN NULL ELSE CAST({expr} AS {t}) END");
    let text = format!("CAST({col} AS text)");
    match mask {
        Mask::Null => format!("CAST(NULL AS {t})"),
        Mask::Redact => match (ty.category, ty.base.as_str()) {
            ('S', _) => guard("'****'".into()),
            ('N', _) => guard("0".into()),
            (_, "date") => guard("'1900-01-01'".into()),
            (_, "timestamp") | (_, "timestamptz") => guard("'1900-01-01 00:00'".into()),
            _ => format!("CAST(NULL AS {t})"),
        },
        Mask::Constant(v) => guard(quote_literal(v)),
        Mask::Email => guard(format!(
            "CASE WHEN position('@' IN {text}) > 0 THEN left({text}, 1) || '***@' || regexp_replace({text}, '^[^@]*@', '') ELSE '****' END"
        )),
        Mask::Partial {
            keep_first,
            keep_last,
            padding,
        } => {
            let p = quote_literal(padding);
            guard(format!(
                "CASE WHEN char_length({text}) <= {} THEN {p} ELSE left({text}, {keep_first}) || {p} || right({text}, {keep_last}) END",
                keep_first + keep_last
            ))
        }
        Mask::Hash => guard(format!(
            "(SELECT left(encode(sha256(k.opad || sha256(k.ipad || convert_to({text}, 'UTF8'))), 'hex'), 16) FROM pgredact.hash_key k)"
        )),
        Mask::Year if ty.base == "date" => guard(format!(
            "date_trunc('year', CAST({col} AS timestamp))"
        )),
        Mask::Year => guard(format!("date_trunc('year', {col})")),
        // Masked row by row in Rust: see `mask_json`, `fake` and `noise_*`.
        Mask::Json(_) | Mask::Fake(_) | Mask::Noise(_) => col.to_string(),
        Mask::Bucket(b) => guard(bucket_sql(b, col, ty)),
    }
}

/// Mask `bucket` in SQL written from the README, with other constructs than the product's
/// (`mod` instead of `floor`, `date_trunc` minus the remainder instead of `make_timestamp`,
/// epoch arithmetic instead of `date_bin`).
fn bucket_sql(b: &Bucket, col: &str, ty: &ColType) -> String {
    match b {
        Bucket::Step(step) => {
            if matches!(ty.base.as_str(), "float4" | "float8") {
                return format!("floor({col}::float8 / {step}::float8) * {step}::float8");
            }
            // x - ((x mod s) + s) mod s: the multiple of s at or below x.
            let x = format!("{col}::numeric");
            let v = format!(
                "({x} - mod(mod({x}, {step}::numeric) + {step}::numeric, {step}::numeric))"
            );
            match ty.base.as_str() {
                "int2" => format!("greatest({v}, -32768)"),
                "int4" => format!("greatest({v}, -2147483648)"),
                "int8" => format!("greatest({v}, -9223372036854775808)"),
                _ => v,
            }
        }
        Bucket::Interval(sp) => {
            let t = match ty.base.as_str() {
                "date" => format!("{col}::timestamp"),
                "timestamptz" => format!("({col} AT TIME ZONE 'UTC')"),
                _ => col.to_string(),
            };
            let n = sp.n;
            let lower = match sp.unit {
                Unit::Year => format!(
                    "date_trunc('year', {t}) - make_interval(years => ((extract(year FROM {t})::int % {n}) + {n}) % {n})"
                ),
                Unit::Month => format!(
                    "date_trunc('month', {t}) - make_interval(months => (extract(month FROM {t})::int - 1) % {n})"
                ),
                _ => {
                    let secs = sp.seconds().unwrap_or(1);
                    format!(
                        "timestamp '2000-01-03' + make_interval(secs => floor(extract(epoch FROM {t} - timestamp '2000-01-03') / {secs}) * {secs})"
                    )
                }
            };
            let back = match ty.base.as_str() {
                "date" => format!("({lower})::date"),
                "timestamptz" => format!("(({lower}) AT TIME ZONE 'UTC')"),
                _ => lower,
            };
            format!("CASE WHEN isfinite({col}) THEN {back} ELSE {col} END")
        }
    }
}

/// HMAC-SHA256 with the `hmac` crate (the product computes it in SQL with sha256 and pads).
pub fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// Word i of a keyed hash: bytes 4i..4i+3, big-endian.
fn word(mac: &[u8; 32], i: usize) -> u64 {
    u64::from(u32::from_be_bytes([
        mac[4 * i],
        mac[4 * i + 1],
        mac[4 * i + 2],
        mac[4 * i + 3],
    ]))
}

fn pick(list: &[&'static str], mac: &[u8; 32], i: usize) -> &'static str {
    list[(word(mac, i) % list.len() as u64) as usize]
}

/// Mask `fake` (README, "Mask kinds"): the `fake` crate's EN lists, read here straight from
/// the crate, indexed by HMAC(key, "fake" || value).
pub fn fake(kind: FakeKind, key: &[u8], value: &str) -> String {
    use fake::locales::{Data, EN};
    let mac = hmac(key, format!("fake{value}").as_bytes());
    let ascii = |s: &str| -> String {
        s.to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_lowercase())
            .collect()
    };
    match kind {
        FakeKind::FirstName => pick(EN::NAME_FIRST_NAME, &mac, 0).to_string(),
        FakeKind::LastName => pick(EN::NAME_LAST_NAME, &mac, 0).to_string(),
        FakeKind::Name => format!(
            "{} {}",
            pick(EN::NAME_FIRST_NAME, &mac, 0),
            pick(EN::NAME_LAST_NAME, &mac, 1)
        ),
        FakeKind::Email => format!(
            "{}.{}{}@example.{}",
            ascii(pick(EN::NAME_FIRST_NAME, &mac, 0)),
            ascii(pick(EN::NAME_LAST_NAME, &mac, 1)),
            word(&mac, 2) % 100,
            ["com", "net", "org"][(word(&mac, 3) % 3) as usize]
        ),
        FakeKind::Phone => {
            let mut b = 4;
            pick(EN::PHONE_CELL_NUMBER_FORMATS, &mac, 0)
                .chars()
                .map(|c| match c {
                    '#' | '^' => {
                        let d = if c == '#' {
                            mac[b] % 10
                        } else {
                            1 + mac[b] % 9
                        };
                        b += 1;
                        char::from(b'0' + d)
                    }
                    c => c,
                })
                .collect()
        }
        FakeKind::StreetAddress => format!(
            "{} {} {}",
            1 + word(&mac, 0) % 9999,
            pick(EN::NAME_LAST_NAME, &mac, 1),
            pick(EN::ADDRESS_STREET_SUFFIX, &mac, 2)
        ),
        FakeKind::City => format!(
            "{}{}{}",
            if word(&mac, 2).is_multiple_of(4) {
                format!("{} ", pick(EN::ADDRESS_CITY_PREFIX, &mac, 3))
            } else {
                String::new()
            },
            pick(EN::NAME_LAST_NAME, &mac, 0),
            pick(EN::ADDRESS_CITY_SUFFIX, &mac, 1)
        ),
    }
}

/// The keyed hash of mask `noise`: HMAC(key, "noise" || sha256(pk column 1) || ... || value),
/// each part in its binary (send) form, text as UTF-8.
pub fn noise_mac(key: &[u8], row_key: &[Vec<u8>], value: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut msg = b"noise".to_vec();
    for part in row_key {
        msg.extend_from_slice(&sha2::Sha256::digest(part));
    }
    msg.extend_from_slice(value);
    hmac(key, &msg)
}

/// The signed offset: 1 + floor(u * max(m, 1) / 2^56), u = the first 7 bytes; negative when
/// the low bit of byte 7 is set.
pub fn noise_offset(mac: &[u8; 32], m: u128) -> i128 {
    let mut u = 0u128;
    for b in &mac[..7] {
        u = (u << 8) | u128::from(*b);
    }
    let d = 1 + ((u * m.max(1)) >> 56) as i128;
    if mac[7] & 1 == 1 {
        -d
    } else {
        d
    }
}

/// Mask `noise` with a ratio on a number held as `units` (the value times 10^scale), bounded
/// by [lo, hi] in units when the type bounds it. Zero stays zero.
pub fn noise_units(units: i128, mac: &[u8; 32], ppm: u32, bounds: Option<(i128, i128)>) -> i128 {
    if units == 0 {
        return 0;
    }
    let m = (units.unsigned_abs() * u128::from(ppm)) / 1_000_000;
    let d = noise_offset(mac, m);
    match bounds {
        Some((lo, hi)) if !(lo..=hi).contains(&(units + d)) => units - d,
        _ => units + d,
    }
}

/// Mask `noise` with a ratio on a float (`maxabs`: the type's largest finite value).
pub fn noise_float(x: f64, mac: &[u8; 32], ppm: u32, maxabs: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let mut u = 0u128;
    for b in &mac[..7] {
        u = (u << 8) | u128::from(*b);
    }
    let mut k = i64::from(ppm) * (1 + ((u * 1000) >> 56) as i64);
    if mac[7] & 1 == 1 || x.abs() > maxabs / 2.0 {
        k = -k;
    }
    x * (1.0 + (k as f64) / 1e9)
}

/// Mask `noise` with an interval: the offset in days (dates) or seconds (timestamps).
pub fn noise_span(sp: &Span, mac: &[u8; 32], date: bool) -> i128 {
    let secs = u128::from(sp.seconds().expect("noise intervals have a fixed length"));
    noise_offset(mac, if date { secs / 86_400 } else { secs })
}

/// The reference implementation of mask `json` (README, "JSON path masks"), written from the
/// documentation independently of `pgredact_admin.mask_json`: paths are matched segment by
/// segment here, by regular expression there.
pub fn mask_json(mask: &JsonMask, doc: &Value, key: &[u8]) -> Value {
    walk(mask, doc, key, &mut Vec::new(), mask.default.as_deref())
}

fn walk<'m>(
    mask: &'m JsonMask,
    v: &Value,
    key: &[u8],
    path: &mut Vec<String>,
    inherited: Option<&'m Mask>,
) -> Value {
    // The strictest matching rule (first on ties) replaces the mask in force.
    let mut cur = inherited;
    let mut best: Option<(u8, Option<&Mask>)> = None;
    for r in &mask.rules {
        if matches(&r.segments, path) {
            let m = r.mask.as_deref();
            let rank = strictness(m);
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, m));
            }
        }
    }
    if let Some((_, m)) = best {
        cur = m;
    }
    match v {
        Value::Object(_) | Value::Array(_) if matches!(cur, Some(Mask::Null)) => Value::Null,
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    path.push(k.clone());
                    let out = walk(mask, x, key, path, cur);
                    path.pop();
                    (k.clone(), out)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| walk(mask, x, key, path, cur)).collect()),
        scalar => leaf(cur, scalar, key),
    }
}

fn strictness(m: Option<&Mask>) -> u8 {
    match m {
        None => 0,
        Some(Mask::Partial { .. }) => 1,
        Some(Mask::Email) => 2,
        Some(Mask::Hash) | Some(Mask::Fake(_)) => 3,
        Some(Mask::Constant(_)) => 4,
        Some(Mask::Redact) => 5,
        Some(_) => 6,
    }
}

fn matches(segs: &[PathSeg], path: &[String]) -> bool {
    match segs.split_first() {
        None => path.is_empty(),
        Some((PathSeg::AnyDepth, rest)) => (0..=path.len()).any(|i| matches(rest, &path[i..])),
        Some((s, rest)) => match path.split_first() {
            None => false,
            Some((p, ps)) => {
                (matches!(s, PathSeg::AnyKey) || matches!(s, PathSeg::Key(k) if k == p))
                    && matches(rest, ps)
            }
        },
    }
}

fn leaf(m: Option<&Mask>, v: &Value, key: &[u8]) -> Value {
    let Some(m) = m else { return v.clone() };
    if v.is_null() {
        return Value::Null;
    }
    let text = match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match (m, text) {
        (Mask::Null, _) => Value::Null,
        (Mask::Redact, _) => match v {
            Value::String(_) => Value::String("****".into()),
            Value::Number(_) => Value::from(0),
            _ => Value::Bool(false),
        },
        (Mask::Constant(c), _) => Value::String(c.clone()),
        (_, None) => Value::Bool(false),
        (Mask::Email, Some(t)) => Value::String(match t.find('@') {
            Some(at) => format!(
                "{}***@{}",
                t.chars().next().map(String::from).unwrap_or_default(),
                &t[at + 1..]
            ),
            None => "****".into(),
        }),
        (
            Mask::Partial {
                keep_first,
                keep_last,
                padding,
            },
            Some(t),
        ) => {
            let chars: Vec<char> = t.chars().collect();
            let (f, l) = (*keep_first as usize, *keep_last as usize);
            Value::String(if chars.len() <= f + l {
                padding.clone()
            } else {
                let head: String = chars[..f].iter().collect();
                let tail: String = chars[chars.len() - l..].iter().collect();
                format!("{head}{padding}{tail}")
            })
        }
        (Mask::Hash, Some(t)) => Value::String(pgredact::policy::hash_pseudonym(key, &t)),
        (Mask::Fake(k), Some(t)) => Value::String(fake(*k, key, &t)),
        (other, _) => panic!("mask {} does not apply inside JSON", other.kind()),
    }
}
