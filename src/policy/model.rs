//! A loaded policy: per database, the unmasked roles and the tables with their PII columns.

use super::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPolicy {
    pub mask: Mask,
    /// Value written by `forget` instead of NULL (SQL literal text, cast to the column type).
    pub forget: Option<String>,
    /// 1-based line in the policy file (for `check` reports).
    pub line: usize,
    /// Per-role masks (`[roles.<role>]`), in the order the roles first appear in the file: a
    /// member of the first role listed here gets its mask; everyone else masked gets `mask`.
    pub by_role: Vec<RoleMask>,
}

/// A role's own mask for one PII column.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleMask {
    pub role: String,
    pub mask: Mask,
    /// 1-based line in the policy file.
    pub line: usize,
}

impl ColumnPolicy {
    /// The column's masks as data for `pgredact_admin.mask_expr`: the default mask, with the
    /// per-role ones under `by_role` (the database picks by membership of the reading role).
    pub fn spec(&self) -> serde_json::Value {
        let mut s = self.mask.spec();
        if !self.by_role.is_empty() {
            s["by_role"] = serde_json::Value::Array(
                self.by_role
                    .iter()
                    .map(|r| serde_json::json!({"role": r.role, "mask": r.mask.spec()}))
                    .collect(),
            );
            if self.uses_key() {
                s["uses_key"] = serde_json::Value::Bool(true);
            }
        }
        s
    }

    /// Whether any of the column's masks needs the HMAC key.
    pub fn uses_key(&self) -> bool {
        self.mask.uses_key() || self.by_role.iter().any(|r| r.mask.uses_key())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TablePolicy {
    pub schema: String,
    pub name: String,
    pub subject: Option<String>,
    /// PII columns, by exact (catalog) column name.
    pub columns: BTreeMap<String, ColumnPolicy>,
    /// `privacy_by_default = true`: every column neither in `columns` nor in `public` is PII,
    /// masked with `redact` (a column added later is masked until a DBA declares it).
    pub privacy_by_default: bool,
    /// Columns declared not PII (`public = [...]`), for `privacy_by_default`.
    pub public: BTreeSet<String>,
    pub line: usize,
}

impl TablePolicy {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// This table's part of [`DatabasePolicy::spec`] (schema, name, column masks), without its
    /// fingerprint. `privacy_by_default` and `public` only when used, so other tables keep the
    /// fingerprints they had before those keys existed.
    fn spec_body(&self) -> serde_json::Value {
        let cols: serde_json::Map<String, serde_json::Value> = self
            .columns
            .iter()
            .map(|(c, cp)| (c.clone(), cp.spec()))
            .collect();
        let mut v = serde_json::json!({"schema": self.schema, "name": self.name, "columns": cols});
        if self.privacy_by_default {
            v["privacy_by_default"] = serde_json::Value::Bool(true);
        }
        if !self.public.is_empty() {
            v["public"] = serde_json::json!(self.public);
        }
        v
    }

    /// Whether `privacy_by_default` masks `column` (a column of this table or of one of its
    /// partitions or children): neither listed under `columns` nor as `public`.
    pub fn masked_by_default(&self, column: &str) -> bool {
        self.privacy_by_default
            && !self.columns.contains_key(column)
            && !self.public.contains(column)
    }

    /// The columns of a relation (its own, in order) that `privacy_by_default` masks.
    pub fn default_masked<'a>(&self, columns: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        columns
            .into_iter()
            .filter(|c| self.masked_by_default(c))
            .map(str::to_string)
            .collect()
    }

    /// `columns` plus, with `privacy_by_default`, every other column of `all` not listed as
    /// `public`, masked with `redact` (its `line` the table's). The same expansion the database
    /// makes (`pmasks` in wall_protected.sql).
    pub fn effective_columns<'a>(
        &self,
        all: impl IntoIterator<Item = &'a str>,
    ) -> BTreeMap<String, ColumnPolicy> {
        let mut out = self.columns.clone();
        for c in self.default_masked(all) {
            out.insert(
                c,
                ColumnPolicy {
                    mask: Mask::Redact,
                    forget: None,
                    line: self.line,
                    by_role: Vec::new(),
                },
            );
        }
        out
    }

    /// The fingerprint of this table's masks: stored with its masking views, so a view is known
    /// current exactly when the masks it was built from are this policy's. Two policies that
    /// differ elsewhere (another table, the unmasked roles) share it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.spec_body().to_string())
    }
}

/// Who enforces the masks for this database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enforcement {
    /// PostgreSQL itself: masked roles hold no privilege on PII columns and read masking views;
    /// pgredact makes that transparent (the default).
    #[default]
    Database,
    /// pgredact alone (weaker): masked roles keep their privileges, so a direct connection to
    /// PostgreSQL reads raw data; pgredact re-checks the catalog and memberships per statement.
    Proxy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatabasePolicy {
    pub file: PathBuf,
    pub database: String,
    pub enforcement: Enforcement,
    pub unmasked_roles: Vec<String>,
    /// User-defined functions a masked session may call (`schema.name`).
    pub allowed_functions: Vec<String>,
    /// Keyed by (schema, table).
    pub tables: BTreeMap<(String, String), TablePolicy>,
}

impl DatabasePolicy {
    pub fn table(&self, schema: &str, name: &str) -> Option<&TablePolicy> {
        self.tables.get(&(schema.to_string(), name.to_string()))
    }
    pub fn uses_hash(&self) -> bool {
        self.tables
            .values()
            .flat_map(|t| t.columns.values())
            .any(|c| c.uses_key())
    }

    /// The policy as the database's own functions read it (`pgredact.policy`): unmasked roles
    /// and, per table, each PII column's mask kind and options, plus a fingerprint of all that.
    /// Data only: the masking SQL is written by `pgredact_admin.mask_expr` inside PostgreSQL.
    pub fn spec(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let tables: Vec<Value> = self
            .tables
            .values()
            .map(|t| {
                let mut v = t.spec_body();
                v["fingerprint"] = Value::String(t.fingerprint());
                v
            })
            .collect();
        let mut spec = json!({
            "database": self.database,
            "enforcement": match self.enforcement {
                Enforcement::Database => "database",
                Enforcement::Proxy => "proxy",
            },
            "unmasked_roles": self.unmasked_roles,
            "tables": tables,
        });
        let fp = fingerprint(&spec.to_string());
        spec["fingerprint"] = Value::String(fp);
        spec
    }

    /// The fingerprint stored with the spec (and with every masking view built from it).
    pub fn fingerprint(&self) -> String {
        self.spec()["fingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub(super) fn fingerprint(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..12])
}

/// All loaded policies, by database name. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub by_database: HashMap<String, Arc<DatabasePolicy>>,
    /// Bumped on every successful (re)load; part of the rewrite cache key.
    pub version: u64,
}

impl PolicySet {
    pub fn get(&self, database: &str) -> Option<Arc<DatabasePolicy>> {
        self.by_database.get(database).cloned()
    }
}
