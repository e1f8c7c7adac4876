//! A snapshot of the live schema of one database, read through the control-plane connection:
//! relations (with columns and exact types), inheritance, view dependencies, functions and
//! user-defined operators. Pure data once loaded; the rewriter reads it, never the database.

use crate::policy::ColType;
use std::collections::{HashMap, HashSet};
use tokio_postgres::Client;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColType,
}

#[derive(Debug, Clone)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// pg_class.relkind: r table, p partitioned table, v view, m matview, f foreign table.
    pub kind: char,
    /// Columns in attnum order (empty for pg_catalog/information_schema relations).
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub relations: HashMap<u32, Relation>,
    /// (schema, name) -> oid
    pub by_name: HashMap<(String, String), u32>,
    /// child oid -> parent oids (pg_inherits: partitions and inheritance children).
    pub parents: HashMap<u32, Vec<u32>>,
    /// view/matview oid -> oids of the relations its definition reads.
    pub view_deps: HashMap<u32, Vec<u32>>,
    /// function name -> schemas that define a function of that name.
    pub functions: HashMap<String, Vec<String>>,
    /// Names of operators defined outside pg_catalog.
    pub user_operators: HashSet<String>,
}

impl Catalog {
    pub fn lookup(&self, schema: &str, name: &str) -> Option<&Relation> {
        self.by_name
            .get(&(schema.to_string(), name.to_string()))
            .and_then(|oid| self.relations.get(oid))
    }

    /// Resolves an unqualified relation name along a search path.
    pub fn resolve(&self, search_path: &[String], name: &str) -> Option<&Relation> {
        search_path.iter().find_map(|s| self.lookup(s, name))
    }

    /// Adds a relation (used by tests and fixtures).
    pub fn add_relation(&mut self, rel: Relation) {
        self.by_name
            .insert((rel.schema.clone(), rel.name.clone()), rel.oid);
        self.relations.insert(rel.oid, rel);
    }

    pub fn add_function(&mut self, schema: &str, name: &str) {
        let v = self.functions.entry(name.to_string()).or_default();
        if !v.iter().any(|s| s == schema) {
            v.push(schema.to_string());
        }
    }

    /// Loads the snapshot. Four catalog queries, one round trip each.
    pub async fn load(client: &Client) -> Result<Catalog, tokio_postgres::Error> {
        let mut cat = Catalog::default();
        let rels = client
            .query(
                "SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r','p','v','m','f') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'",
                &[],
            )
            .await?;
        for r in rels {
            let oid: i64 = r.get(0);
            let kind: String = r.get(3);
            cat.add_relation(Relation {
                oid: oid as u32,
                schema: r.get(1),
                name: r.get(2),
                kind: kind.chars().next().unwrap_or('r'),
                columns: Vec::new(),
            });
        }
        let cols = client
            .query(
                "SELECT a.attrelid::int8, a.attname::text, \
                        pg_catalog.format_type(a.atttypid, a.atttypmod), bt.typname::text, bt.typcategory::text \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
                 WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f') \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
                 ORDER BY a.attrelid, a.attnum",
                &[],
            )
            .await?;
        for r in cols {
            let oid: i64 = r.get(0);
            let cat_s: String = r.get(4);
            if let Some(rel) = cat.relations.get_mut(&(oid as u32)) {
                rel.columns.push(Column {
                    name: r.get(1),
                    ty: ColType {
                        sql: r.get(2),
                        base: r.get(3),
                        category: cat_s.chars().next().unwrap_or('X'),
                    },
                });
            }
        }
        for r in client
            .query(
                "SELECT inhrelid::int8, inhparent::int8 FROM pg_catalog.pg_inherits",
                &[],
            )
            .await?
        {
            let (c, p): (i64, i64) = (r.get(0), r.get(1));
            cat.parents.entry(c as u32).or_default().push(p as u32);
        }
        for r in client
            .query(
                "SELECT DISTINCT r.ev_class::int8, d.refobjid::int8 \
                 FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d \
                   ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
                  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                 WHERE d.refobjid <> r.ev_class",
                &[],
            )
            .await?
        {
            let (v, t): (i64, i64) = (r.get(0), r.get(1));
            cat.view_deps.entry(v as u32).or_default().push(t as u32);
        }
        for r in client
            .query(
                "SELECT DISTINCT n.nspname::text, p.proname::text FROM pg_catalog.pg_proc p \
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace",
                &[],
            )
            .await?
        {
            let (s, f): (String, String) = (r.get(0), r.get(1));
            cat.add_function(&s, &f);
        }
        for r in client
            .query(
                "SELECT DISTINCT o.oprname::text FROM pg_catalog.pg_operator o \
                 JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
                 WHERE n.nspname <> 'pg_catalog'",
                &[],
            )
            .await?
        {
            cat.user_operators.insert(r.get(0));
        }
        Ok(cat)
    }
}
