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

/// A masking view the database built (`pgredact_admin.masking_views`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskingView {
    pub schema: String,
    pub name: String,
    /// The view of the relation's own rows (`FROM ONLY`), when it has descendants.
    pub only: Option<String>,
    /// The policy fingerprint it was built from; None when the build failed.
    pub fingerprint: Option<String>,
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
    /// function name -> (schema, built-in) for each schema that defines a function of that name.
    /// Built-in means every overload there shipped with PostgreSQL (oid below 16384).
    pub functions: HashMap<String, Vec<(String, bool)>>,
    /// Operators implemented by user code: name -> type categories of their left argument
    /// ('_' for prefix operators).
    pub user_operators: HashMap<String, HashSet<char>>,
    /// Return type categories of every function name (for guessing operand types).
    pub function_categories: HashMap<String, HashSet<char>>,
    /// Type categories of every column name in user schemas (for guessing operand types).
    pub column_categories: HashMap<String, HashSet<char>>,
    /// Types (lower-case name, unqualified) that run user code written in a procedural language
    /// when cast to: targets of such casts, domains whose constraints call such functions.
    pub risky_types: HashSet<String>,
    /// Views/matviews whose definition calls a function that is not built in, or a built-in that
    /// runs SQL given as text: oid -> the function.
    pub view_functions: HashMap<u32, String>,
    /// Relations whose column defaults call user code, or with a column of a risky type.
    pub risky_writes: HashMap<u32, String>,
    /// Protected relation oid -> its masking view.
    pub masking_views: HashMap<u32, MaskingView>,
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

    /// Adds a built-in function (used by tests and fixtures).
    pub fn add_function(&mut self, schema: &str, name: &str) {
        self.add_function_entry(schema, name, true);
    }

    pub fn add_function_entry(&mut self, schema: &str, name: &str, builtin: bool) {
        let v = self.functions.entry(name.to_string()).or_default();
        match v.iter_mut().find(|(s, _)| s == schema) {
            Some(e) => e.1 &= builtin,
            None => v.push((schema.to_string(), builtin)),
        }
    }

    /// Loads the snapshot, one round trip per catalog query. Types are written as `format_type`
    /// prints them on a control connection (search_path = pg_catalog): qualified outside it.
    pub async fn load(client: &Client) -> Result<Catalog, tokio_postgres::Error> {
        let mut cat = Catalog::default();
        cat.load_relations(client).await?;
        cat.load_links(client).await?;
        cat.load_user_code(client).await?;
        cat.load_masking_views(client).await?;
        cat.derive_risks();
        Ok(cat)
    }

    /// Relations and their columns (types as `format_type` prints them).
    async fn load_relations(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let cat = self;
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
        Ok(())
    }

    /// Inheritance, the relations each view reads, and the functions by schema.
    async fn load_links(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let cat = self;
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
                "SELECT n.nspname::text, p.proname::text, pg_catalog.bool_and(p.oid < 16384), \
                        pg_catalog.string_agg(DISTINCT t.typcategory::text, '') \
                 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 LEFT JOIN pg_catalog.pg_type t ON t.oid = p.prorettype \
                 WHERE n.nspname NOT IN ('pgredact', 'pgredact_admin', 'pgredact_mask') \
                 GROUP BY 1, 2",
                &[],
            )
            .await?
        {
            let (s, f, b): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
            let cats: Option<String> = r.get(3);
            cat.function_categories
                .entry(f.clone())
                .or_default()
                .extend(cats.unwrap_or_default().chars());
            cat.add_function_entry(&s, &f, b);
        }
        Ok(())
    }

    /// "User code": functions that are not built in and not written in C (C functions come
    /// from extensions; procedural-language functions can run any query), and what calls them:
    /// casts, operators, views, column defaults.
    // Long: four catalog queries, most of it their SQL text.
    async fn load_user_code(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let cat = self;
        const USER_CODE: &str = "(SELECT p.oid FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
             WHERE p.oid >= 16384 AND l.lanname NOT IN ('internal', 'c'))";
        for r in client
            .query(
                &format!(
                    "SELECT DISTINCT o.oprname::text, COALESCE(t.typcategory::text, '_') \
                     FROM pg_catalog.pg_operator o LEFT JOIN pg_catalog.pg_type t ON t.oid = o.oprleft \
                     WHERE o.oprcode::pg_catalog.oid IN {USER_CODE}"
                ),
                &[],
            )
            .await?
        {
            let (name, c): (String, String) = (r.get(0), r.get(1));
            cat.user_operators
                .entry(name)
                .or_default()
                .insert(c.chars().next().unwrap_or('_'));
        }
        for r in client
            .query(
                &format!(
                    "SELECT t.typname::text FROM pg_catalog.pg_cast c \
                       JOIN pg_catalog.pg_type t ON t.oid = c.casttarget \
                     WHERE c.castfunc IN {USER_CODE} \
                     UNION \
                     SELECT t.typname::text FROM pg_catalog.pg_constraint k \
                       JOIN pg_catalog.pg_type t ON t.oid = k.contypid \
                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass \
                        AND d.objid = k.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                     WHERE d.refobjid IN {USER_CODE}"
                ),
                &[],
            )
            .await?
        {
            let t: String = r.get(0);
            cat.risky_types.insert(t.to_lowercase());
        }
        for r in client
            .query(
                "SELECT DISTINCT r.ev_class::int8, n.nspname::text || '.' || p.proname::text \
                 FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d \
                   ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
                  AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                 JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 WHERE (p.oid >= 16384 OR p.proname = ANY($1::text[])) \
                   AND NOT (n.nspname = 'pgredact_mask' AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles o \
                            WHERE o.oid = p.proowner AND o.rolsuper))",
                &[&crate::rewrite::rules::DENIED_FUNCTIONS],
            )
            .await?
        {
            let (v, f): (i64, String) = (r.get(0), r.get(1));
            cat.view_functions.insert(v as u32, f);
        }
        // (The masking views call the JSON maskers in pgredact_mask, which a superuser installed.)
        // Built-in functions are pinned and have no pg_depend entries: find views calling a
        // denied built-in (query_to_xml, ...) from their definition text.
        for r in client
            .query(
                "SELECT c.oid::int8, pg_catalog.pg_get_viewdef(c.oid) FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
                &[],
            )
            .await?
        {
            let (v, def): (i64, Option<String>) = (r.get(0), r.get(1));
            let def = def.unwrap_or_default().to_lowercase();
            let hit = def
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .find(|w| crate::rewrite::rules::DENIED_FUNCTIONS.contains(w));
            if let Some(f) = hit {
                cat.view_functions.entry(v as u32).or_insert_with(|| f.to_string());
            }
        }
        for r in client
            .query(
                &format!(
                    "SELECT a.adrelid::int8, 'the default of a column calls ' || p.proname::text \
                     FROM pg_catalog.pg_attrdef a JOIN pg_catalog.pg_depend d \
                       ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = a.oid \
                      AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                     JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid \
                     WHERE d.refobjid IN {USER_CODE}"
                ),
                &[],
            )
            .await?
        {
            let (rel, why): (i64, String) = (r.get(0), r.get(1));
            cat.risky_writes.insert(rel as u32, why);
        }
        Ok(())
    }

    /// The masking views pgredact_admin built (when it is installed).
    async fn load_masking_views(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let cat = self;
        let installed: bool = client
            .query_one(
                "SELECT pg_catalog.to_regclass('pgredact_admin.masking_views') IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        if installed {
            for r in client
                .query(
                    "SELECT relid::int8, view_schema::text, view_name::text, only_view::text, fingerprint \
                     FROM pgredact_admin.masking_views",
                    &[],
                )
                .await?
            {
                let oid: i64 = r.get(0);
                cat.masking_views.insert(
                    oid as u32,
                    MaskingView {
                        schema: r.get(1),
                        name: r.get(2),
                        only: r.get(3),
                        fingerprint: r.get(4),
                    },
                );
            }
        }
        Ok(())
    }

    /// What follows from the rest: the type categories seen under each column name, and the
    /// relations with a column of a risky type (a domain whose CHECK runs user code).
    fn derive_risks(&mut self) {
        let cat = self;
        for rel in cat.relations.values() {
            for c in &rel.columns {
                cat.column_categories
                    .entry(c.name.clone())
                    .or_default()
                    .insert(c.ty.category);
            }
        }
        // Columns of a risky type (a domain whose CHECK runs user code).
        let mut risky_cols = Vec::new();
        for rel in cat.relations.values() {
            if let Some(c) = rel.columns.iter().find(|c| {
                cat.risky_types.contains(&c.ty.base.to_lowercase())
                    || cat.risky_types.contains(&c.ty.sql.to_lowercase())
            }) {
                risky_cols.push((
                    rel.oid,
                    format!(
                        "column {} has type {}, which runs user code",
                        c.name, c.ty.sql
                    ),
                ));
            }
        }
        for (oid, why) in risky_cols {
            cat.risky_writes.entry(oid).or_insert(why);
        }
    }
}
