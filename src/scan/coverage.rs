//! Coverage by the policy: which findings a policy already masks.

use super::*;

pub(super) fn rule_matches(segs: &[PathSeg], keys: &[PathKey]) -> bool {
    match segs.split_first() {
        None => keys.is_empty(),
        Some((PathSeg::AnyDepth, rest)) => (0..=keys.len()).any(|i| rule_matches(rest, &keys[i..])),
        Some((PathSeg::AnyKey, rest)) => !keys.is_empty() && rule_matches(rest, &keys[1..]),
        Some((PathSeg::Key(k), rest)) => {
            matches!(keys.first(), Some(PathKey::Key(x)) if x == k)
                && rule_matches(rest, &keys[1..])
        }
    }
}

pub(super) fn strictness(m: &Mask) -> u8 {
    match m {
        Mask::Null => 6,
        Mask::Redact => 5,
        Mask::Constant(_) => 4,
        Mask::Hash => 3,
        Mask::Email => 2,
        _ => 1,
    }
}

/// The mask a JSON mask gives the node at `keys` and what gave it (the rule's path or
/// `default`); `None` when it is kept. Mirrors the policy semantics: a node takes the mask of
/// the deepest rule matching it or an ancestor (the strictest when several match one node),
/// else the default.
pub fn json_effective<'a>(j: &'a JsonMask, keys: &[PathKey]) -> Option<(&'a Mask, String)> {
    let mut eff: Option<(&Mask, String)> = j.default.as_deref().map(|m| (m, "default".into()));
    for n in 0..=keys.len() {
        let matched: Vec<_> = j
            .rules
            .iter()
            .filter(|r| rule_matches(&r.segments, &keys[..n]))
            .collect();
        if matched.is_empty() {
            continue;
        }
        eff = matched
            .iter()
            .filter_map(|r| r.mask.as_deref().map(|m| (m, r.path.clone())))
            .max_by_key(|(m, _)| strictness(m));
    }
    eff
}

/// The policy entry for a relation: its own, or its nearest ancestor's (partitions and
/// inheritance children are protected by their parent's entry).
pub fn table_policy<'a>(
    pol: Option<&'a DatabasePolicy>,
    cat: &Catalog,
    oid: u32,
) -> Option<&'a policy::TablePolicy> {
    let pol = pol?;
    let mut queue = vec![oid];
    let mut seen = HashSet::new();
    while let Some(o) = queue.pop() {
        if !seen.insert(o) {
            continue;
        }
        if let Some(r) = cat.relations.get(&o) {
            if let Some(t) = pol.table(&r.schema, &r.name) {
                return Some(t);
            }
        }
        queue.extend(cat.parents.get(&o).into_iter().flatten());
    }
    None
}

/// What [`covered_by`] says of a column its table's `privacy_by_default` masks.
pub const BY_DEFAULT: &str = "masked by privacy_by_default";

/// How the policy covers a column or a JSON path of it: `email`, `json $.billing.name = hash`,
/// [`BY_DEFAULT`].
pub fn covered_by(
    tp: Option<&policy::TablePolicy>,
    column: &str,
    path: Option<&[PathKey]>,
) -> Option<String> {
    let tp = tp?;
    if tp.masked_by_default(column) {
        return Some(BY_DEFAULT.into());
    }
    let cp = tp.columns.get(column)?;
    match (&cp.mask, path) {
        (Mask::Json(j), Some(keys)) => {
            json_effective(j, keys).map(|(m, by)| format!("json {by} = {}", m.kind()))
        }
        (m, _) => Some(m.kind().to_string()),
    }
}

/// `check`: columns whose name says PII (in a type that can hold it) that no policy entry
/// covers, as `schema.table.column looks like ...` lines.
pub fn name_warnings(pol: &DatabasePolicy, cat: &Catalog) -> Vec<String> {
    let mut out = Vec::new();
    let mut rels: Vec<_> = cat
        .relations
        .values()
        .filter(|r| matches!(r.kind, 'r' | 'p' | 'm' | 'f') && !system_schema(&r.schema))
        .collect();
    rels.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    for r in rels {
        let tp = table_policy(Some(pol), cat, r.oid);
        for c in &r.columns {
            let Some(d) = name_hint(&c.name) else {
                continue;
            };
            if !type_can_hold(d, &c.ty) || covered_by(tp, &c.name, None).is_some() {
                continue;
            }
            out.push(format!(
                "{}.{}.{} looks like {} (by its name) and no policy entry masks it; `pgredact scan` checks its values",
                r.schema,
                r.name,
                c.name,
                d.describe()
            ));
        }
    }
    out
}

/// Schemas scan and check leave alone: PostgreSQL's and pgredact's own.
pub(super) fn system_schema(s: &str) -> bool {
    matches!(
        s,
        "pg_catalog" | "information_schema" | "pgredact" | "pgredact_admin" | "pgredact_mask"
    ) || s.starts_with("pg_toast")
        || s.starts_with("pg_temp_")
        || s.starts_with("pgredact_masked")
}
