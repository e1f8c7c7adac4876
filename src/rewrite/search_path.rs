//! Changing the search path in a masked session, as an analysed operation: pgredact must resolve
//! names exactly as PostgreSQL will, so it recognizes the statements that set `search_path` for
//! the session (`SET [SESSION] search_path ...`, and `SELECT pg_catalog.set_config('search_path',
//! '...', false)` as pg_dump sends it), works out the new path itself, and uses it for the
//! statements that follow. Every other way of changing it stays refused.

use super::parse::RECURSION_LIMIT;
use super::{Refusal, RefusalKind};
use sqlparser::ast::{
    ContextModifier, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Reset, SelectItem, Set,
    SetExpr, Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// How one statement changes the session's search path.
#[derive(Debug, Clone, PartialEq)]
pub enum PathChange {
    /// To these schemas, as listed (`$user` not yet replaced).
    Set(Vec<String>),
    /// Back to the path the session started with: `RESET ALL`, `RESET search_path`, `SET
    /// search_path TO DEFAULT`, `DISCARD ALL` (RESET returns to the startup values).
    Reset,
}

/// How `sql` changes the search path, when it is one statement that changes it for the
/// session; None for any other statement.
/// (Long: one match over every statement form that can set search_path, read side by side.)
pub fn search_path_change(sql: &str) -> Option<Result<PathChange, Refusal>> {
    // Cheap filter: nearly every statement is not one of these.
    let starts = |w: &str| {
        sql.trim_start()
            .get(..w.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(w))
    };
    if !(starts("reset")
        || starts("discard")
        || sql
            .as_bytes()
            .windows(11)
            .any(|w| w.eq_ignore_ascii_case(b"search_path")))
    {
        return None;
    }
    let stmts = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .ok()?;
    let [stmt] = stmts.as_slice() else {
        return None;
    };
    match stmt {
        Statement::Reset(r) => match &r.reset {
            Reset::ALL => Some(Ok(PathChange::Reset)),
            Reset::ConfigurationParameter(p)
                if p.to_string().eq_ignore_ascii_case("search_path") =>
            {
                Some(Ok(PathChange::Reset))
            }
            _ => None,
        },
        Statement::Discard { object_type }
            if object_type.to_string().eq_ignore_ascii_case("ALL") =>
        {
            Some(Ok(PathChange::Reset))
        }
        Statement::Set(Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        }) if variable.to_string().eq_ignore_ascii_case("search_path") => {
            if matches!(scope, Some(ContextModifier::Local)) {
                return Some(Err(local_refusal()));
            }
            let default = |v: &Expr| matches!(v, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"));
            // SET search_path TO DEFAULT: the startup value, as RESET.
            if let [v] = values.as_slice() {
                if default(v) {
                    return Some(Ok(PathChange::Reset));
                }
            }
            let mut out = Vec::new();
            for v in values {
                match v {
                    // DEFAULT within a list: PostgreSQL refuses it too.
                    v if default(v) => return Some(Err(value_refusal())),
                    // An identifier is one schema, folded as PostgreSQL folds names.
                    Expr::Identifier(i) => out.push(super::names::fold(i)),
                    // A string is one schema, exactly as written (search_path quotes list items).
                    Expr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) => out.push(s.clone()),
                        _ => return Some(Err(value_refusal())),
                    },
                    _ => return Some(Err(value_refusal())),
                }
            }
            Some(Ok(PathChange::Set(out)))
        }
        Statement::Query(q) => {
            let SetExpr::Select(s) = &*q.body else {
                return None;
            };
            let [SelectItem::UnnamedExpr(Expr::Function(f))] = s.projection.as_slice() else {
                return None;
            };
            let name = f.name.to_string().to_ascii_lowercase();
            if name != "set_config" && name != "pg_catalog.set_config" {
                return None;
            }
            let plain = s.from.is_empty()
                && s.selection.is_none()
                && q.with.is_none()
                && q.order_by.is_none()
                && q.limit_clause.is_none();
            let FunctionArguments::List(l) = &f.args else {
                return None;
            };
            let args: Vec<Option<&Value>> = l
                .args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => Some(&v.value),
                    _ => None,
                })
                .collect();
            match args.as_slice() {
                [Some(Value::SingleQuotedString(n)), Some(Value::SingleQuotedString(v)), Some(Value::Boolean(local))]
                    if n.eq_ignore_ascii_case("search_path") && plain =>
                {
                    if *local {
                        return Some(Err(local_refusal()));
                    }
                    Some(split_list(v).map(PathChange::Set).ok_or_else(value_refusal))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// pg_dump's `SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name =
/// 'restrict_nonsystem_relation_kind'` (a setting that only restricts, in servers that have it):
/// rewritten in place to keep every kind but `view`, because a masked session reads every
/// protected table through a view. Returns whether `s` was that statement. Any other use of
/// set_config stays refused.
pub fn restrict_relkind_without_views(s: &mut Statement) -> bool {
    let Statement::Query(q) = s else {
        return false;
    };
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return false;
    }
    let SetExpr::Select(sel) = &mut *q.body else {
        return false;
    };
    let where_restrict = matches!(&sel.selection, Some(Expr::BinaryOp { left, op: sqlparser::ast::BinaryOperator::Eq, right })
        if matches!(&**left, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("name"))
        && matches!(&**right, Expr::Value(v) if matches!(&v.value, Value::SingleQuotedString(n) if n == "restrict_nonsystem_relation_kind")));
    // The WHERE clause first: it fails fast, without allocating, for every other query.
    if !where_restrict {
        return false;
    }
    let from_settings = matches!(sel.from.as_slice(), [t] if t.joins.is_empty()
        && matches!(&t.relation, sqlparser::ast::TableFactor::Table { name, alias: None, args: None, .. }
            if matches!(name.to_string().to_ascii_lowercase().as_str(), "pg_settings" | "pg_catalog.pg_settings")));
    if !from_settings
        || sel.group_by != sqlparser::ast::GroupByExpr::Expressions(vec![], vec![])
        || sel.having.is_some()
        || sel.distinct.is_some()
    {
        return false;
    }
    let [SelectItem::UnnamedExpr(Expr::Function(f))] = sel.projection.as_mut_slice() else {
        return false;
    };
    if !matches!(
        f.name.to_string().to_ascii_lowercase().as_str(),
        "set_config" | "pg_catalog.set_config"
    ) || f.filter.is_some()
        || f.over.is_some()
    {
        return false;
    }
    let FunctionArguments::List(l) = &mut f.args else {
        return false;
    };
    if !l.clauses.is_empty() || l.duplicate_treatment.is_some() {
        return false;
    }
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(n))), FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))), FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(local)))] =
        l.args.as_mut_slice()
    else {
        return false;
    };
    if n.quote_style.is_some()
        || !n.value.eq_ignore_ascii_case("name")
        || local.value != Value::Boolean(false)
    {
        return false;
    }
    let Value::SingleQuotedString(kinds) = &v.value else {
        return false;
    };
    let kept: Vec<&str> = kinds
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.eq_ignore_ascii_case("view"))
        .collect();
    v.value = Value::SingleQuotedString(kept.join(", "));
    true
}

/// The search path PostgreSQL uses after such a change, as `current_schemas(true)` lists it:
/// `pg_catalog` first unless listed, `$user` as the session user.
pub fn effective_path(listed: &[String], user: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if !listed.iter().any(|s| s == "pg_catalog") {
        out.push("pg_catalog".into());
    }
    for s in listed {
        let s = if s == "$user" { user } else { s.as_str() };
        // pg_temp is searched through the session's own temporary schema, which pgredact never
        // resolves names in (a temporary table named like a protected one is over-masked).
        if s != "pg_temp" && !out.iter().any(|x| x == s) {
            out.push(s.to_string());
        }
    }
    out
}

/// Splits a list setting's text the way PostgreSQL does (SplitIdentifierString): comma-separated
/// names, each unquoted (folded to lower case) or double-quoted (`""` for a quote).
fn split_list(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return if out.is_empty() && text.trim().is_empty() {
                Some(out)
            } else {
                None
            };
        }
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    '"' => break,
                    c => name.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                name.push(c.to_ascii_lowercase());
                chars.next();
            }
            if name.is_empty() {
                return None;
            }
        }
        out.push(name);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

fn local_refusal() -> Refusal {
    Refusal::new(RefusalKind::Setting,
        "a transaction-local search_path (SET LOCAL, set_config(..., true)) is not supported for masked roles",
    )
    .hint("set it for the session, outside a transaction block")
}

fn value_refusal() -> Refusal {
    Refusal::new(
        RefusalKind::Setting,
        "this search_path value is not supported for masked roles; list schema names",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(sql: &str) -> Vec<String> {
        match search_path_change(sql) {
            Some(Ok(PathChange::Set(v))) => v,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn recognizes_the_session_forms() {
        assert_eq!(
            listed("SELECT pg_catalog.set_config('search_path', '', false);"),
            Vec::<String>::new()
        );
        assert_eq!(
            listed("select set_config('search_path', 'CRM, \"Odd\"\"Name\", public', false)"),
            vec!["crm", "Odd\"Name", "public"]
        );
        assert_eq!(
            listed("SET search_path = public, \"$user\""),
            vec!["public", "$user"]
        );
        assert_eq!(
            listed("SET SESSION search_path TO 'My Schema', pg_catalog"),
            vec!["My Schema", "pg_catalog"]
        );
        assert!(search_path_change("SELECT 1").is_none());
        assert!(search_path_change(
            "SELECT set_config('search_path', 'x', false), email FROM customers"
        )
        .is_none());
        assert!(search_path_change("SET search_path = a; SELECT 1").is_none());
        assert!(matches!(
            search_path_change("SET LOCAL search_path = a"),
            Some(Err(_))
        ));
        for reset in [
            "SET search_path TO DEFAULT",
            "RESET ALL",
            " reset search_path;",
            "DISCARD ALL",
        ] {
            assert_eq!(
                search_path_change(reset),
                Some(Ok(PathChange::Reset)),
                "{reset}"
            );
        }
        assert!(search_path_change("RESET work_mem").is_none());
        assert!(search_path_change("DISCARD PLANS").is_none());
        assert!(search_path_change("RESET ALL; SELECT 1").is_none());
        assert!(matches!(
            search_path_change("SET search_path TO a, DEFAULT"),
            Some(Err(_))
        ));
        assert_eq!(listed("SET search_path TO \"default\""), vec!["default"]);
        assert!(matches!(
            search_path_change("SELECT set_config('search_path', 'a', true)"),
            Some(Err(_))
        ));
        assert!(matches!(
            search_path_change("SELECT set_config('search_path', 'a b', false)"),
            Some(Err(_))
        ));
    }

    #[test]
    fn effective_path_is_what_current_schemas_lists() {
        assert_eq!(effective_path(&[], "u"), vec!["pg_catalog"]);
        assert_eq!(
            effective_path(&["$user".into(), "public".into()], "support"),
            vec!["pg_catalog", "support", "public"]
        );
        assert_eq!(
            effective_path(
                &["public".into(), "pg_catalog".into(), "pg_temp".into()],
                "u"
            ),
            vec!["public", "pg_catalog"]
        );
    }

    #[test]
    fn pg_dump_restrict_setting_keeps_every_kind_but_view() {
        let rewrite = |sql: &str| {
            let mut st = sqlparser::parser::Parser::parse_sql(
                &sqlparser::dialect::PostgreSqlDialect {},
                sql,
            )
            .unwrap()
            .remove(0);
            restrict_relkind_without_views(&mut st).then(|| st.to_string())
        };
        assert_eq!(
            rewrite("SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'").as_deref(),
            Some("SELECT set_config(name, 'foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'")
        );
        for other in [
            "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'",
            "SELECT set_config('role', 'dba', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
            "SELECT set_config(name, 'view', true) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
            "SELECT set_config(name, 'view', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind' OR true",
            "SELECT set_config(name, 'view', false) FROM pg_settings s WHERE name = 'restrict_nonsystem_relation_kind'",
            "SELECT set_config(name, 'view', false), 1 FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
        ] {
            assert_eq!(rewrite(other), None, "{other}");
        }
    }
}
