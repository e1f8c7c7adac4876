//! What each relation means for a masked session, computed once per (policy, catalog) pair:
//! masked (read through its masking view, see `crate::wall`) or refused (with the reason).

use crate::catalog::{Catalog, MaskingView, Relation};
use crate::policy::{DatabasePolicy, Mask};
use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A relation whose PII columns are masked for masked sessions.
#[derive(Debug)]
pub struct MaskedRel {
    pub schema: String,
    pub name: String,
    /// The policy table whose masks apply (itself, or the ancestor a partition/child inherits from).
    pub policy_table: String,
    /// PII column -> mask, with the column's type.
    pub masks: BTreeMap<String, (Mask, crate::policy::ColType)>,
    /// PII column -> the masks of particular roles (`[roles.<role>]`), when it has any.
    pub role_masks: BTreeMap<String, Vec<crate::policy::RoleMask>>,
    /// All columns in order.
    pub columns: Vec<String>,
    /// The masking view that reads this relation (with its descendants), and the one that reads
    /// `ONLY` this relation (the same view when it has no descendants).
    pub view: ObjectName,
    pub only_view: ObjectName,
}

impl MaskedRel {
    pub fn is_pii(&self, col: &str) -> bool {
        self.masks.contains_key(col)
    }
}

fn quoted_name(schema: &str, name: &str) -> ObjectName {
    ObjectName(vec![
        ObjectNamePart::Identifier(Ident::with_quote('"', schema)),
        ObjectNamePart::Identifier(Ident::with_quote('"', name)),
    ])
}

#[derive(Debug, Clone)]
pub enum Protection {
    Mask(Arc<MaskedRel>),
    Refuse(String),
}

/// Everything the rewriter needs to know about one database for masked sessions.
#[derive(Debug, Default)]
pub struct Protections {
    pub by_oid: HashMap<u32, Protection>,
    /// Lower-case names of protected relations and of functions a masked session may not call,
    /// for the lexical cross-check of statements passed through verbatim.
    pub sensitive_words: HashSet<String>,
    /// `schema.name` of user-defined functions the policy allows.
    pub allowed_functions: HashSet<String>,
    pub catalog: Arc<Catalog>,
    /// The database these protections are for (catalog-qualified names must name it).
    pub database: String,
    /// Relations whose partitions or inheritance children are protected differently: reading
    /// them without ONLY would return the descendants' rows unmasked. oid -> reason.
    pub parent_hazard: HashMap<u32, String>,
    /// Non-fatal problems found while building (policy columns missing from the table, ...).
    pub warnings: Vec<String>,
    /// Some protected relation has no current masking view (it is refused until the database
    /// builds one: `crate::wall::publish`).
    pub views_stale: bool,
}

/// pg_catalog relations that hold data values, not schema.
pub const DENIED_CATALOG_RELATIONS: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stat_activity",
    "pg_largeobject",
    "pg_authid",
    "pg_shadow",
    "pg_user_mapping",
    "pg_user_mappings",
];

/// pg_catalog views that read a relation above but hand out none of its secrets: `pg_user`
/// reads `pg_shadow` and shows the constant `********` for the password (PostgreSQL grants it
/// to PUBLIC; pgAdmin reads it at connect). Exempt from the transitive rule for views.
pub const SAFE_CATALOG_VIEWS: &[&str] = &["pg_user"];

/// Relation names refused in any schema (extensions that expose query texts with literals).
pub const DENIED_ANY_SCHEMA_RELATIONS: &[&str] = &["pg_stat_statements", "pg_stat_statements_info"];

impl Protections {
    pub fn build(policy: &DatabasePolicy, catalog: Arc<Catalog>) -> Protections {
        Self::build_with_history(policy, catalog, &HashMap::new())
    }

    /// `build`, plus relations that were protected under a name the policy still lists but are
    /// no longer reached by it (renamed, moved to another schema, detached or un-inherited):
    /// oid -> the policy table they were protected as. They are refused, not read raw.
    /// (Long: its numbered passes must run in this order, each reading what the previous added.)
    pub fn build_with_history(
        policy: &DatabasePolicy,
        catalog: Arc<Catalog>,
        formerly: &HashMap<u32, String>,
    ) -> Protections {
        let mut by_oid: HashMap<u32, Protection> = HashMap::new();
        let mut warnings = Vec::new();
        let mut views_stale = false;
        let children = children_of(&catalog);
        // 1. Policy tables and their descendants (partitions, inheritance children).
        walk_policy(policy, &catalog, |tp, root, r| {
            // A descendant with its own policy entry keeps its own masks.
            let own = policy.table(&r.schema, &r.name).is_some();
            if r.oid == root || !own {
                let has_children = children.contains_key(&r.oid);
                let p = match masked_rel(r, tp, &catalog, has_children, &mut warnings) {
                    Ok(m) => Protection::Mask(Arc::new(m)),
                    Err(why) => {
                        views_stale = true;
                        Protection::Refuse(format!("{}.{} {why}", r.schema, r.name))
                    }
                };
                by_oid.insert(r.oid, p);
            }
        });
        // 2a. Relations that left the policy's reach without the policy saying so.
        for (oid, was) in formerly {
            if by_oid.contains_key(oid) {
                continue;
            }
            if let Some(r) = catalog.relations.get(oid) {
                by_oid.insert(
                    *oid,
                    Protection::Refuse(format!(
                        "{}.{} was protected as {was} and has since been renamed, moved or detached; masked roles may not read it until the policy names it",
                        r.schema, r.name
                    )),
                );
            }
        }
        // 2. Catalog relations that hold data values, the control schema, foreign tables.
        for r in catalog.relations.values() {
            if by_oid.contains_key(&r.oid) {
                continue;
            }
            let reason = if r.schema == "pg_catalog"
                && DENIED_CATALOG_RELATIONS.contains(&r.name.as_str())
            {
                Some(format!(
                    "{}.{} holds data values (statistics, query texts or secrets), not just schema",
                    r.schema, r.name
                ))
            } else if DENIED_ANY_SCHEMA_RELATIONS.contains(&r.name.as_str()) {
                Some(format!(
                    "{}.{} holds query texts with literal values",
                    r.schema, r.name
                ))
            } else if r.schema == crate::control::SCHEMA || r.schema == crate::wall::ADMIN_SCHEMA {
                Some(format!(
                    "{}.{} is pgredact's own control data",
                    r.schema, r.name
                ))
            } else if let Some(f) = catalog.view_functions.get(&r.oid) {
                Some(format!(
                    "{}.{} calls function {f}, which may read PII",
                    r.schema, r.name
                ))
            } else if r.kind == 'f' {
                Some(format!(
                    "{}.{} is a foreign table: pgredact cannot see or mask the remote data",
                    r.schema, r.name
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                by_oid.insert(r.oid, Protection::Refuse(reason));
            }
        }
        // 3. Views and materialized views reading any protected relation (transitively).
        loop {
            let mut added = false;
            for (view, deps) in &catalog.view_deps {
                if by_oid.contains_key(view) {
                    continue;
                }
                let Some(v) = catalog.relations.get(view) else {
                    continue;
                };
                // pgredact's masking views read protected relations by design.
                if crate::wall::is_masked_schema(&v.schema)
                    || v.schema == "pg_catalog" && SAFE_CATALOG_VIEWS.contains(&v.name.as_str())
                {
                    continue;
                }
                if let Some(src) = deps.iter().find(|d| by_oid.contains_key(d)) {
                    let src_name = catalog
                        .relations
                        .get(src)
                        .map(|s| format!("{}.{}", s.schema, s.name))
                        .unwrap_or_else(|| "a protected relation".into());
                    let what = if v.kind == 'm' {
                        "materialized view"
                    } else {
                        "view"
                    };
                    by_oid.insert(
                        *view,
                        Protection::Refuse(format!(
                            "{what} {}.{} reads {src_name}, which holds PII; query the table instead so pgredact can mask it",
                            v.schema, v.name
                        )),
                    );
                    added = true;
                }
            }
            if !added {
                break;
            }
        }
        // 4. Parents of protected descendants.
        let mut parent_hazard = HashMap::new();
        for r in catalog.relations.values() {
            let Some(_) = children.get(&r.oid) else {
                continue;
            };
            let own = by_oid.get(&r.oid);
            let mut stack: Vec<u32> = children.get(&r.oid).cloned().unwrap_or_default();
            let mut seen = HashSet::new();
            while let Some(d) = stack.pop() {
                if !seen.insert(d) {
                    continue;
                }
                let Some(dr) = catalog.relations.get(&d) else {
                    continue;
                };
                let hazard = match (by_oid.get(&d), own) {
                    (None, _) => None,
                    (Some(Protection::Refuse(why)), _) => Some(why.clone()),
                    (Some(Protection::Mask(dm)), Some(Protection::Mask(pm))) => dm
                        .masks
                        .iter()
                        .find(|(c, (m, _))| {
                            r.columns.iter().any(|rc| &rc.name == *c)
                                && (pm.masks.get(*c).map(|(pmk, _)| pmk) != Some(m)
                                    || role_masks_of(pm, c) != role_masks_of(dm, c))
                        })
                        .map(|(c, _)| {
                            format!(
                                "its descendant {}.{} masks column {c} differently",
                                dr.schema, dr.name
                            )
                        }),
                    (Some(Protection::Mask(dm)), _) => dm
                        .masks
                        .keys()
                        .find(|c| r.columns.iter().any(|rc| &rc.name == *c))
                        .map(|c| {
                            format!("its descendant {}.{} masks column {c}", dr.schema, dr.name)
                        }),
                };
                if let Some(h) = hazard {
                    parent_hazard.insert(
                        r.oid,
                        format!(
                            "{}.{} includes rows of protected partitions or children ({h}); query them directly, use ONLY, or add the parent to the policy",
                            r.schema, r.name
                        ),
                    );
                    break;
                }
                if let Some(cs) = children.get(&d) {
                    stack.extend(cs.iter().copied());
                }
            }
        }
        let mut sensitive_words: HashSet<String> = HashSet::new();
        for oid in by_oid.keys().chain(parent_hazard.keys()) {
            if let Some(r) = catalog.relations.get(oid) {
                sensitive_words.insert(r.name.to_lowercase());
            }
        }
        for f in super::rules::DENIED_FUNCTIONS {
            sensitive_words.insert((*f).to_string());
        }
        for (name, entries) in &catalog.functions {
            if entries.iter().any(|(_, builtin)| !builtin) {
                sensitive_words.insert(name.to_lowercase());
            }
        }
        sensitive_words.insert(crate::control::SCHEMA.to_string());
        sensitive_words.insert(crate::wall::ADMIN_SCHEMA.to_string());
        Protections {
            by_oid,
            database: policy.database.clone(),
            parent_hazard,
            sensitive_words,
            allowed_functions: policy.allowed_functions.iter().cloned().collect(),
            catalog,
            warnings,
            views_stale,
        }
    }

    pub fn get(&self, rel: &Relation) -> Option<&Protection> {
        self.by_oid.get(&rel.oid)
    }
}

/// parent oid -> the oids of its partitions and inheritance children.
fn children_of(catalog: &Catalog) -> HashMap<u32, Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (c, ps) in &catalog.parents {
        for p in ps {
            children.entry(*p).or_default().push(*c);
        }
    }
    children
}

/// Calls `f(policy table, its oid, relation)` for every policy table and each of its
/// descendants (partitions, inheritance children), each relation once per policy table.
fn walk_policy<'c>(
    policy: &DatabasePolicy,
    catalog: &'c Catalog,
    mut f: impl FnMut(&crate::policy::TablePolicy, u32, &'c crate::catalog::Relation),
) {
    let children = children_of(catalog);
    for tp in policy.tables.values() {
        let Some(rel) = catalog.lookup(&tp.schema, &tp.name) else {
            continue;
        };
        let mut stack = vec![rel.oid];
        let mut seen = HashSet::new();
        while let Some(oid) = stack.pop() {
            if !seen.insert(oid) {
                continue;
            }
            if let Some(r) = catalog.relations.get(&oid) {
                f(tp, rel.oid, r);
            }
            if let Some(cs) = children.get(&oid) {
                stack.extend(cs.iter().copied());
            }
        }
    }
}

/// The relations a policy protects by name or descent: oid -> the policy table (`schema.name`)
/// whose entry covers it first.
pub fn policy_relations(policy: &DatabasePolicy, catalog: &Catalog) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    walk_policy(policy, catalog, |tp, _, r| {
        out.entry(r.oid).or_insert_with(|| tp.qualified());
    });
    out
}

/// A column's per-role masks as (role, mask), in order (their policy lines aside).
fn role_masks_of<'r>(rel: &'r MaskedRel, col: &str) -> Vec<(&'r str, &'r Mask)> {
    rel.role_masks
        .get(col)
        .map(|v| v.iter().map(|r| (r.role.as_str(), &r.mask)).collect())
        .unwrap_or_default()
}

fn masked_rel(
    r: &Relation,
    tp: &crate::policy::TablePolicy,
    catalog: &Catalog,
    has_children: bool,
    warnings: &mut Vec<String>,
) -> Result<MaskedRel, String> {
    let mut masks = BTreeMap::new();
    let mut role_masks = BTreeMap::new();
    for (col, cp) in &tp.columns {
        match r.columns.iter().find(|c| &c.name == col) {
            Some(c) => {
                masks.insert(col.clone(), (cp.mask.clone(), c.ty.clone()));
                if !cp.by_role.is_empty() {
                    role_masks.insert(col.clone(), cp.by_role.clone());
                }
            }
            None => warnings.push(format!(
                "policy {}: column {col} not found in {}.{}",
                tp.qualified(),
                r.schema,
                r.name
            )),
        }
    }
    // privacy_by_default: the relation's own columns that the policy lists neither as PII nor
    // as public are PII, masked with redact (as `pmasks` in wall_protected.sql).
    for c in &r.columns {
        if tp.masked_by_default(&c.name) {
            masks.insert(c.name.clone(), (Mask::Redact, c.ty.clone()));
        }
    }
    let columns: Vec<String> = r.columns.iter().map(|c| c.name.clone()).collect();
    if columns.is_empty() {
        return Err("has no columns pgredact can see".into());
    }
    let Some(mv) = catalog.masking_views.get(&r.oid) else {
        return Err("has no masking view yet (a superuser must have run the output of `pgredact setup-sql`; pgredact then builds it)".into());
    };
    if mv.fingerprint.as_deref() != Some(tp.fingerprint().as_str()) {
        return Err(match mv.fingerprint {
            None => "has no masking view: the database could not build it (see the server log)".into(),
            Some(_) => "has a masking view built from other masks than this pgredact's policy gives it (the policy changed and the view is being rebuilt, or another pgredact instance published a different policy: `pgredact check` shows the instances)".into(),
        });
    }
    let current = |name: &str| {
        catalog
            .lookup(&mv.schema, name)
            .is_some_and(|v| v.kind == 'v' && v.columns == r.columns)
    };
    if !current(&mv.name) {
        return Err(
            "has a masking view that does not match its columns; pgredact is rebuilding it".into(),
        );
    }
    let view = quoted_name(&mv.schema, &mv.name);
    let only_view =
        match (&mv.only, has_children) {
            (_, false) => view.clone(),
            (Some(o), true) if current(o) => quoted_name(&mv.schema, o),
            _ => return Err(
                "has descendants but no masking view of its own rows; pgredact is rebuilding it"
                    .into(),
            ),
        };
    Ok(MaskedRel {
        schema: r.schema.clone(),
        name: r.name.clone(),
        policy_table: tp.qualified(),
        masks,
        role_masks,
        columns,
        view,
        only_view,
    })
}

/// Adds, for tests and benchmarks, the masking views the database would build for `policy`
/// (as `pgredact_admin.sync()` names them), so `Protections::build` finds them current.
#[doc(hidden)]
pub fn fixture_masking_views(catalog: &mut Catalog, policy: &DatabasePolicy) {
    let children = children_of(catalog);
    let mut next = 1_000_000 + catalog.relations.len() as u32 * 10;
    let mut add = Vec::new();
    walk_policy(policy, catalog, |tp, _, r| {
        // A descendant with its own policy entry gets its own masks (and their fingerprint).
        let own = policy.table(&r.schema, &r.name).unwrap_or(tp);
        add.push((r.clone(), own.fingerprint()))
    });
    for (r, fp) in add {
        let schema = if r.schema == "public" {
            crate::wall::MASKED_SCHEMA.to_string()
        } else {
            format!("{}_{}", crate::wall::MASKED_SCHEMA, r.schema)
        };
        let only = children
            .contains_key(&r.oid)
            .then(|| format!("pgredact$only_{}", r.oid));
        for name in std::iter::once(r.name.clone()).chain(only.clone()) {
            next += 1;
            catalog.add_relation(Relation {
                oid: next,
                schema: schema.clone(),
                name,
                kind: 'v',
                columns: r.columns.clone(),
            });
            catalog.view_deps.insert(next, vec![r.oid]);
        }
        catalog.masking_views.insert(
            r.oid,
            MaskingView {
                schema,
                name: r.name.clone(),
                only,
                fingerprint: Some(fp.clone()),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Column;
    use crate::policy::{parse_policy, ColType};

    fn col(name: &str, sql: &str, base: &str, category: char) -> Column {
        Column {
            name: name.into(),
            ty: ColType {
                sql: sql.into(),
                base: base.into(),
                category,
            },
        }
    }

    #[test]
    fn privacy_by_default_masks_unlisted_columns_of_the_table_and_its_children() {
        let mut c = Catalog::default();
        let base = vec![
            col("id", "bigint", "int8", 'N'),
            col("tier", "text", "text", 'S'),
            col("email", "text", "text", 'S'),
            col("notes", "text", "text", 'S'),
        ];
        let mut part = base.clone();
        part.push(col("extra", "boolean", "bool", 'B'));
        for (oid, name, kind, columns) in
            [(1, "accounts", 'r', base), (2, "accounts_vip", 'r', part)]
        {
            c.add_relation(Relation {
                oid,
                schema: "public".into(),
                name: name.into(),
                kind,
                columns,
            });
        }
        c.parents.insert(2, vec![1]);
        let pol = parse_policy(
            "database = \"app\"\n[tables.\"public.accounts\"]\nprivacy_by_default = true\npublic = [\"id\", \"tier\"]\ncolumns.email = \"email\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        fixture_masking_views(&mut c, &pol);
        let p = Protections::build(&pol, Arc::new(c));
        let masks = |oid| match p.by_oid.get(&oid) {
            Some(Protection::Mask(m)) => m
                .masks
                .iter()
                .map(|(c, (m, _))| format!("{c}={}", m.kind()))
                .collect::<Vec<_>>(),
            other => panic!("{oid}: {other:?}"),
        };
        assert_eq!(masks(1), ["email=email", "notes=redact"]);
        // An inheritance child's own columns count: one it adds is masked too.
        assert_eq!(masks(2), ["email=email", "extra=redact", "notes=redact"]);
        assert!(p.parent_hazard.is_empty(), "{:?}", p.parent_hazard);
    }
}
