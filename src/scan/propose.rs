//! `--propose`: the policy with one entry added per unlisted finding.

use super::*;

/// Suggested masks, from the least to the most strict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Suggest {
    Partial,
    Email,
    Hash,
    Year,
    Redact,
    Null,
}

impl Suggest {
    fn mask(self) -> Mask {
        match self {
            Suggest::Partial => Mask::Partial {
                keep_first: 0,
                keep_last: 2,
                padding: "****".into(),
            },
            Suggest::Email => Mask::Email,
            Suggest::Hash => Mask::Hash,
            Suggest::Year => Mask::Year,
            Suggest::Redact => Mask::Redact,
            Suggest::Null => Mask::Null,
        }
    }
    fn value(self) -> toml_edit::Value {
        match self {
            Suggest::Partial => {
                let mut t = toml_edit::InlineTable::new();
                t.insert("mask", "partial".into());
                t.insert("keep_last", 2i64.into());
                toml_edit::Value::InlineTable(t)
            }
            other => other.mask().kind().into(),
        }
    }
}

/// The mask `--propose` suggests for a finding: e-mail → `email`; phone → `partial` keeping
/// the last two digits; names → `hash` (`redact` without a hash key); birth dates → `year` on
/// date columns; addresses and PII inside free text → `redact`; card numbers, IBANs, national
/// identity numbers and IP addresses → `null`. A mask the column type cannot take becomes
/// `null`.
pub(super) fn suggest(f: &Finding, hash_ok: bool) -> Suggest {
    let s = if f.evidence == "free_text" {
        Suggest::Redact
    } else {
        match f.detector {
            Detector::Email => Suggest::Email,
            Detector::Phone => Suggest::Partial,
            Detector::PersonName if hash_ok => Suggest::Hash,
            Detector::PersonName | Detector::StreetAddress => Suggest::Redact,
            Detector::BirthDate if f.path.is_none() => Suggest::Year,
            _ => Suggest::Null,
        }
    };
    match &f.ty {
        Some(ty) if policy::mask_fits(&s.mask(), ty).is_err() => Suggest::Null,
        None if s == Suggest::Year => Suggest::Null,
        _ => s,
    }
}

pub(super) fn add_comment(d: &mut toml_edit::Decor, note: &str) {
    let prefix = d
        .prefix()
        .and_then(|p| p.as_str())
        .unwrap_or("")
        .to_string();
    d.set_prefix(format!("{prefix}{note}"));
}

pub(super) fn comment(f: &Finding) -> String {
    let at = match &f.path {
        Some(p) => format!("{} {p}", f.column),
        None => f.column.clone(),
    };
    format!("# pgredact scan: {at}: {}, {}\n", f.what(), f.share_text())
}

/// A complete policy file: `original` (the current file's text, comments kept) plus one entry
/// per unlisted finding, each with a comment naming the detector and the share matched.
/// Checked by the policy parser before it is returned.
pub fn propose(
    original: Option<&str>,
    database: &str,
    findings: &[Finding],
    hash_ok: bool,
) -> Result<String, Error> {
    use toml_edit::{DocumentMut, Item, Table};
    let base = match original {
        Some(t) => t.to_string(),
        None => format!(
            "# Masking policy for database {database:?}, proposed by `pgredact scan --propose`.\n# Members of unmasked_roles see raw data; every other role is masked.\ndatabase = {}\nunmasked_roles = []\n",
            toml_edit::Value::from(database)
        ),
    };
    let mut doc: DocumentMut = base.parse().map_err(Error::PolicyToml)?;
    let by_col = uncovered_by_column(findings);
    if by_col.is_empty() {
        return Ok(base);
    }
    if !doc.contains_key("tables") {
        let mut t = Table::new();
        t.set_implicit(true);
        doc.insert("tables", Item::Table(t));
    }
    let tables = doc
        .get_mut("tables")
        .and_then(Item::as_table_like_mut)
        .ok_or(Error::TablesNotATable)?;
    for ((schema, name), cols) in by_col {
        let key = proposed_table_key(tables, &schema, &name);
        let table = tables
            .get_mut(&key)
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| Error::TableNotATable(key.clone()))?;
        if !table.contains_key("columns") {
            table.insert("columns", Item::Table(Table::new()));
        }
        let columns_inline = table.get("columns").is_some_and(Item::is_inline_table);
        let columns = table
            .get_mut("columns")
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| Error::ColumnsNotATable(key.clone()))?;
        for (col, fs) in cols {
            let note = propose_column(columns, &key, &col, &fs, hash_ok)?;
            if !note.is_empty() && !columns_inline {
                if let Some(mut k) = columns.key_mut(&col) {
                    add_comment(k.leaf_decor_mut(), &note);
                }
            }
        }
    }
    let out = doc.to_string();
    if let Err(reason) = policy::parse_policy(&out, std::path::Path::new("proposed policy")) {
        return Err(Error::InvalidProposal {
            reason: reason.to_string(),
            text: out,
        });
    }
    Ok(out)
}

/// The findings no policy entry covers, by (schema, table), then column.
#[allow(clippy::type_complexity)]
pub(super) fn uncovered_by_column(
    findings: &[Finding],
) -> BTreeMap<(String, String), BTreeMap<String, Vec<&Finding>>> {
    let mut by_col: BTreeMap<(String, String), BTreeMap<String, Vec<&Finding>>> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.covered_by.is_none()) {
        let (schema, name) = f.table.split_once('.').unwrap_or(("public", &f.table));
        by_col
            .entry((schema.to_string(), name.to_string()))
            .or_default()
            .entry(f.column.clone())
            .or_default()
            .push(f);
    }
    by_col
}

/// The key of table `schema.name` under `[tables]`: its existing entry's, else that of a new
/// entry (with an empty `columns` table) added for it.
pub(super) fn proposed_table_key(
    tables: &mut dyn toml_edit::TableLike,
    schema: &str,
    name: &str,
) -> String {
    use toml_edit::{Item, Table};
    let existing = tables
        .iter()
        .map(|(k, _)| k.to_string())
        .find(|k| policy::split_qualified(k).ok() == Some((schema.to_string(), name.to_string())));
    if let Some(k) = existing {
        return k;
    }
    let simple = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    let part = |s: &str| {
        if simple(s) {
            s.to_string()
        } else {
            policy::quote_ident(s)
        }
    };
    let k = format!("{}.{}", part(schema), part(name));
    let mut t = Table::new();
    let mut columns = Table::new();
    columns.set_dotted(true);
    // An explicit [table] header: the policy parser needs one (toml's spans do not
    // cover tables that exist only through their sub-tables).
    t.decor_mut().set_prefix(format!(
        "\n# pgredact scan: {schema}.{name} had no policy entry\n"
    ));
    t.insert("columns", Item::Table(columns));
    tables.insert(&k, Item::Table(t));
    k
}

/// Adds the mask suggested for column `col` of table `key` from its findings `fs`; returns
/// the comment lines still to be put on the column's entry.
pub(super) fn propose_column(
    columns: &mut dyn toml_edit::TableLike,
    key: &str,
    col: &str,
    fs: &[&Finding],
    hash_ok: bool,
) -> Result<String, Error> {
    use toml_edit::Item;
    let whole: Vec<&&Finding> = fs.iter().filter(|f| f.path.is_none()).collect();
    let json: Vec<&&Finding> = fs.iter().filter(|f| f.path.is_some()).collect();
    let mut note = String::new();
    if !whole.is_empty() {
        let s = whole
            .iter()
            .map(|f| suggest(f, hash_ok))
            .max()
            .unwrap_or(Suggest::Null);
        for f in &whole {
            note.push_str(&comment(f));
        }
        columns.insert(col, Item::Value(s.value()));
    } else if !json.is_empty() {
        // path -> strictest suggestion
        let mut paths: BTreeMap<String, Suggest> = BTreeMap::new();
        for f in &json {
            note.push_str(&comment(f));
            if let Some(p) = &f.path {
                let s = suggest(f, hash_ok);
                let e = paths.entry(p.clone()).or_insert(s);
                *e = (*e).max(s);
            }
        }
        match columns.get_mut(col) {
            Some(item) => add_json_paths(item, key, col, &paths, &mut note)?,
            None => {
                let mut p = toml_edit::InlineTable::new();
                for (path, s) in &paths {
                    p.insert(path, s.value());
                }
                let mut m = toml_edit::InlineTable::new();
                m.insert("mask", "json".into());
                m.insert("default", "keep".into());
                m.insert("paths", toml_edit::Value::InlineTable(p));
                columns.insert(col, Item::Value(toml_edit::Value::InlineTable(m)));
            }
        }
    }
    Ok(note)
}

/// Adds the `paths` an existing json mask `item` (column `col` of table `key`) misses; on a
/// `[table]` entry, moves the comment lines `note` onto its `paths` key.
pub(super) fn add_json_paths(
    item: &mut toml_edit::Item,
    key: &str,
    col: &str,
    paths: &BTreeMap<String, Suggest>,
    note: &mut String,
) -> Result<(), Error> {
    use toml_edit::Item;
    let entry_is_table = item.is_table();
    let entry = item
        .as_table_like_mut()
        .ok_or_else(|| Error::NotAJsonMask {
            table: key.to_string(),
            column: col.to_string(),
        })?;
    if !entry.contains_key("paths") {
        entry.insert(
            "paths",
            Item::Value(toml_edit::Value::InlineTable(Default::default())),
        );
    }
    let p = entry
        .get_mut("paths")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| Error::PathsNotATable {
            table: key.to_string(),
            column: col.to_string(),
        })?;
    for (path, s) in paths {
        p.insert(path, Item::Value(s.value()));
    }
    // Only a [table] may carry comments, not an inline one.
    if entry_is_table {
        if let Some(mut k) = entry.key_mut("paths") {
            add_comment(k.leaf_decor_mut(), note);
            note.clear();
        }
    }
    Ok(())
}
