//! An independent reference implementation of the mask kinds (README, "Mask kinds"), used to
//! build the statically masked twin database the oracles compare with. It is deliberately not
//! the product's implementation (`pgredact_admin.mask_expr`, inside PostgreSQL): the twin checks
//! that one.

use pgredact::policy::{quote_literal, ColType, Mask};

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
    }
}
