//! An independent reference implementation of the mask kinds (README, "Mask kinds"), used to
//! build the statically masked twin database the oracles compare with. It is deliberately not
//! the product's implementation (`pgredact_admin.mask_expr`, inside PostgreSQL): the twin checks
//! that one.

use pgredact::policy::{quote_literal, ColType, JsonMask, Mask, PathSeg};
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
        // Masked row by row in Rust: see `mask_json`.
        Mask::Json(_) => col.to_string(),
    }
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
        Some(Mask::Hash) => 3,
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
        (other, _) => panic!("mask {} does not apply inside JSON", other.kind()),
    }
}
