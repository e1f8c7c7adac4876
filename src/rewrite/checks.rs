//! Expression checks: functions, operators, casts, and reads of PII in writes.

use super::names::{fold, name_parts};
use super::refusal::{Refusal, RefusalKind};
use super::rules;
use super::settings::set_config_of_allowed_setting;
use super::write::Target;
use super::State;
use sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, Select, SelectItem, SelectItemQualifiedWildcardKind, Statement, TableFactor, Visit,
    Visitor,
};
use std::collections::HashSet;
use std::ops::ControlFlow;

impl State<'_> {
    pub(super) fn check<V: Visit + ?Sized>(
        &mut self,
        node: &V,
        target: Option<&Target>,
    ) -> Result<(), Refusal> {
        match node.visit(&mut Checker { st: self, target }) {
            ControlFlow::Break(r) => Err(r),
            ControlFlow::Continue(()) => Ok(()),
        }
    }

    pub(super) fn check_function(&mut self, name: &ObjectName) -> Result<(), Refusal> {
        self.check_function_with(name, false)
    }

    /// `check_function`; with `settable`, `set_config` passes the list of denied functions (its
    /// setting was checked: `set_config_of_allowed_setting`), and still has to resolve to the
    /// built-in one.
    /// (Long: one match over the name's forms keeps the order of the refusals visible.)
    pub(super) fn check_function_with(
        &mut self,
        name: &ObjectName,
        settable: bool,
    ) -> Result<(), Refusal> {
        let parts = name_parts(name).ok_or_else(|| {
            Refusal::new(
                RefusalKind::Function,
                format!("unsupported function name {name}"),
            )
        })?;
        let cat = &self.ctx.prot.catalog;
        let (schema, fname) = match parts.as_slice() {
            [f] => (None, f.as_str()),
            [s, f] => (Some(s.as_str()), f.as_str()),
            _ => {
                return Err(Refusal::new(
                    RefusalKind::Function,
                    format!("unsupported function name {name}"),
                ))
            }
        };
        let denied = || {
            Refusal::new(RefusalKind::Function, format!(
                "function {fname} is not allowed for masked roles: it can run SQL given as text, read relations by name, files, large objects or settings, bypassing masking"
            ))
        };
        let user_defined = |s: &str| {
            Refusal::new(RefusalKind::Function, format!(
                "function {s}.{fname} is not allowed for masked roles: user-defined functions may read PII internally"
            ))
            .hint("a DBA can allow it by name in the policy's allowed_functions")
        };
        let allowed = |s: &str| {
            self.ctx
                .prot
                .allowed_functions
                .contains(&format!("{s}.{fname}"))
        };
        match schema {
            Some(s) if s == crate::control::SCHEMA || s == crate::wall::ADMIN_SCHEMA => {
                Err(Refusal::new(
                    RefusalKind::CatalogObject,
                    format!("schema {s} belongs to pgredact and is not accessible to masked roles"),
                ))
            }
            Some(s) => {
                if rules::is_system_schema(s)
                    && rules::DENIED_FUNCTIONS.contains(&fname)
                    && !settable
                {
                    return Err(denied());
                }
                match cat
                    .functions
                    .get(fname)
                    .and_then(|v| v.iter().find(|(x, _)| x == s))
                {
                    Some((_, true)) => Ok(()),
                    Some(_) if allowed(s) => Ok(()),
                    Some(_) => Err(user_defined(s)),
                    None => {
                        self.unknown = true;
                        Err(Refusal::new(RefusalKind::Function, format!(
                            "function {s}.{fname} is not known to pgredact, so it cannot prove it safe"
                        )))
                    }
                }
            }
            None => {
                if rules::KEYWORD_FUNCTIONS.contains(&fname) {
                    return Ok(());
                }
                if rules::DENIED_FUNCTIONS.contains(&fname) && !settable {
                    return Err(denied());
                }
                let Some(entries) = cat.functions.get(fname) else {
                    self.unknown = true;
                    return Err(Refusal::new(
                        RefusalKind::Function,
                        format!(
                            "function {fname} is not known to pgredact, so it cannot prove it safe"
                        ),
                    ));
                };
                // Overload resolution may pick any schema on the path: every candidate must be
                // built in or allowed.
                for s in self.ctx.search_path {
                    if let Some((_, builtin)) = entries.iter().find(|(x, _)| x == s) {
                        if !builtin && !allowed(s) {
                            return Err(user_defined(s));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// The operators an expression invokes (explicitly or through syntax such as LIKE, IN,
/// BETWEEN, CASE x WHEN) and its left operand.
pub(super) fn operators_of(e: &Expr) -> (Vec<String>, Option<&Expr>) {
    let v = |ops: &[&str]| ops.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match e {
        Expr::BinaryOp { left, op, .. } => (vec![op.to_string()], Some(&**left)),
        Expr::UnaryOp { op, .. } => (vec![op.to_string()], None),
        Expr::Like { expr, .. } => (v(&["~~", "!~~"]), Some(&**expr)),
        Expr::ILike { expr, .. } => (v(&["~~*", "!~~*"]), Some(&**expr)),
        Expr::SimilarTo { expr, .. } | Expr::RLike { expr, .. } => {
            (v(&["~", "!~", "~*", "!~*"]), Some(&**expr))
        }
        Expr::In { expr, .. } => (v(&["=", "<>"]), Some(&**expr)),
        Expr::IsDistinctFrom(l, _) | Expr::IsNotDistinctFrom(l, _) => (v(&["=", "<>"]), Some(&**l)),
        Expr::Between { expr, .. } => (v(&[">=", "<=", ">", "<"]), Some(&**expr)),
        Expr::Case {
            operand: Some(o), ..
        } => (v(&["="]), Some(&**o)),
        Expr::AnyOp {
            left, compare_op, ..
        }
        | Expr::AllOp {
            left, compare_op, ..
        } => (vec![compare_op.to_string()], Some(&**left)),
        Expr::Function(f) => {
            let n = f.name.to_string().to_ascii_lowercase();
            match n.rsplit('.').next().unwrap_or("") {
                "nullif" => (v(&["="]), None),
                "greatest" | "least" => (v(&["<", ">"]), None),
                _ => (vec![], None),
            }
        }
        _ => (vec![], None),
    }
}

/// Type categories an operand may have, when that can be told from its form; None if unknown.
pub(super) fn guess_categories(cat: &crate::catalog::Catalog, e: &Expr) -> Option<HashSet<char>> {
    use sqlparser::ast::Value;
    let one = |c: char| Some(HashSet::from([c]));
    match e {
        Expr::Nested(x) => guess_categories(cat, x),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(_)
            | Value::DollarQuotedString(_)
            | Value::EscapedStringLiteral(_) => one('S'),
            Value::Number(..) => one('N'),
            Value::Boolean(_) => one('B'),
            _ => None,
        },
        Expr::Cast { data_type, .. } => {
            let t = data_type.to_string().to_lowercase();
            if t.starts_with("text")
                || t.starts_with("varchar")
                || t.starts_with("character")
                || t.starts_with("char")
            {
                one('S')
            } else if [
                "int", "bigint", "smallint", "integer", "numeric", "decimal", "real", "double",
            ]
            .iter()
            .any(|p| t.starts_with(p))
            {
                one('N')
            } else {
                None
            }
        }
        Expr::Identifier(i) => cat.column_categories.get(&fold(i)).cloned(),
        Expr::CompoundIdentifier(ids) => ids
            .last()
            .and_then(|i| cat.column_categories.get(&fold(i)).cloned()),
        Expr::Function(f) => {
            let n = f.name.to_string().to_ascii_lowercase();
            let n = n
                .rsplit('.')
                .next()
                .unwrap_or("")
                .trim_matches('"')
                .to_string();
            cat.function_categories
                .get(&n)
                .filter(|c| !c.is_empty())
                .cloned()
        }
        _ => None,
    }
}

/// The risky type a cast names, if any.
pub(super) fn risky_type(
    cat: &crate::catalog::Catalog,
    dt: &sqlparser::ast::DataType,
) -> Option<String> {
    if cat.risky_types.is_empty() {
        return None;
    }
    let t = dt.to_string().to_lowercase();
    let base = t
        .split('(')
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches("[]")
        .trim();
    let last = base.rsplit('.').next().unwrap_or("").trim_matches('"');
    cat.risky_types.contains(last).then(|| last.to_string())
}

/// Whether `s` may read a PII column: an identifier named like a PII column or like a masked
/// FROM item (a whole-row reference), or any `*` other than `count(*)`. Errs towards yes.
pub(super) fn reads_pii(s: &Statement, names: &HashSet<String>) -> bool {
    /// Breaks at the first node that may read a PII column.
    struct PiiReadFinder<'x>(&'x HashSet<String>);
    impl Visitor for PiiReadFinder<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let hit = match e {
                Expr::Identifier(i) => self.0.contains(&i.value.to_lowercase()),
                // The qualifiers name FROM items; the last part is the column.
                Expr::CompoundIdentifier(ids) => ids
                    .last()
                    .is_some_and(|i| self.0.contains(&i.value.to_lowercase())),
                Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => true,
                Expr::Function(f) => matches!(&f.args, FunctionArguments::List(l)
                    if l.args.iter().any(|a| matches!(a,
                        FunctionArg::Unnamed(FunctionArgExpr::QualifiedWildcard(_))
                        | FunctionArg::Named { arg: FunctionArgExpr::QualifiedWildcard(_), .. }))),
                _ => false,
            };
            if hit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn pre_visit_select(&mut self, sel: &Select) -> ControlFlow<()> {
            if sel.projection.iter().any(|i| {
                matches!(
                    i,
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                )
            }) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    !names.is_empty() && s.visit(&mut PiiReadFinder(names)).is_break()
}

/// Checks every expression, select list and table function of a statement; breaks with the
/// first refusal. With a write target, also refuses reads of its PII columns.
pub(super) struct Checker<'x, 'y, 't> {
    st: &'x mut State<'y>,
    target: Option<&'t Target>,
}

/// A check's result as a visitor's answer.
fn flow(r: Result<(), Refusal>) -> ControlFlow<Refusal> {
    match r {
        Ok(()) => ControlFlow::Continue(()),
        Err(r) => ControlFlow::Break(r),
    }
}

/// `name.*` of the write target reads every column of it, PII included.
fn whole_row_refusal(name: &str, t: &Target) -> Refusal {
    Refusal::new(
        RefusalKind::PiiRead,
        format!(
            "{name}.* reads every column of {}.{}, including PII, in a write statement",
            t.rel.schema, t.rel.name
        ),
    )
}

impl Checker<'_, '_, '_> {
    fn pii_read(&self, col: &str) -> Refusal {
        let t = self
            .target
            .map(|t| format!("{}.{}", t.rel.schema, t.rel.name))
            .unwrap_or_default();
        Refusal::new(RefusalKind::PiiRead, format!(
            "reading PII column {col} of {t} in a write statement is not allowed for masked roles: it would reveal PII through row counts or copies"
        ))
    }

    /// `t.*` of the write target (as a column or a function argument) reads its PII columns.
    fn target_wildcard(&self, t: &Target, n: &ObjectName) -> Result<(), Refusal> {
        let last = name_parts(n)
            .and_then(|p| p.last().cloned())
            .unwrap_or_default();
        if self.target_names().contains(&last) {
            return Err(whole_row_refusal(&last, t));
        }
        Ok(())
    }

    fn target_names(&self) -> Vec<String> {
        match self.target {
            Some(t) => {
                let mut v = t.names.clone();
                if t.excluded {
                    v.push("excluded".into());
                }
                v
            }
            None => vec![],
        }
    }

    /// Operators with a user-defined variant the expression may invoke.
    fn user_operators(&self, e: &Expr) -> Result<(), Refusal> {
        let cat = &self.st.ctx.prot.catalog;
        if cat.user_operators.is_empty() {
            return Ok(());
        }
        let (names, left) = operators_of(e);
        for op in names {
            let Some(cats) = cat.user_operators.get(&op) else {
                continue;
            };
            // The user-defined variant can be chosen only if the left operand may have one of
            // its argument types (unknown operand types count as "may").
            let may = match left.map(|l| guess_categories(cat, l)) {
                Some(Some(lc)) => lc.iter().any(|c| cats.contains(c)),
                _ => true,
            };
            if may {
                return Err(Refusal::new(RefusalKind::Function, format!(
                    "this expression uses operator {op}, which has a user-defined variant that may read PII; not allowed for masked roles"
                )));
            }
        }
        Ok(())
    }

    /// Every check of one expression node.
    fn expr(&mut self, e: &Expr) -> Result<(), Refusal> {
        self.user_operators(e)?;
        match e {
            Expr::Function(f) => self.function_call(f)?,
            Expr::Cast { data_type, .. }
            | Expr::TypedString(sqlparser::ast::TypedString { data_type, .. }) => {
                if let Some(t) = risky_type(&self.st.ctx.prot.catalog, data_type) {
                    return Err(Refusal::new(RefusalKind::Function, format!(
                        "casting to {t} is not allowed for masked roles: the cast or the type's constraints run user code that may read PII"
                    )));
                }
            }
            Expr::QualifiedWildcard(n, _) => {
                if let Some(t) = self.target {
                    self.target_wildcard(t, n)?;
                }
            }
            Expr::BinaryOp {
                op: BinaryOperator::PGCustomBinaryOperator(parts),
                ..
            } if !(parts.len() == 2 && parts[0].eq_ignore_ascii_case("pg_catalog")) => {
                return Err(Refusal::new(RefusalKind::Function, format!(
                    "OPERATOR({}) outside pg_catalog may run user code; not allowed for masked roles",
                    parts.join(".")
                )));
            }
            Expr::Identifier(id) => self.target_identifier(id)?,
            Expr::CompoundIdentifier(ids) => self.target_compound_identifier(ids)?,
            _ => {}
        }
        Ok(())
    }

    /// The function itself, and `t.*` of the write target among its arguments.
    fn function_call(&mut self, f: &Function) -> Result<(), Refusal> {
        self.st
            .check_function_with(&f.name, set_config_of_allowed_setting(f))?;
        let (Some(t), FunctionArguments::List(l)) = (self.target, &f.args) else {
            return Ok(());
        };
        for a in &l.args {
            let ae = match a {
                FunctionArg::Unnamed(x) => x,
                FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } => arg,
            };
            match ae {
                FunctionArgExpr::QualifiedWildcard(n) => self.target_wildcard(t, n)?,
                FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                    // count(*) and friends: no column values.
                }
                FunctionArgExpr::Expr(_) => {}
            }
        }
        Ok(())
    }

    /// In a write: a PII column of the target, or the target's whole row.
    fn target_identifier(&self, id: &Ident) -> Result<(), Refusal> {
        let Some(t) = self.target else {
            return Ok(());
        };
        let f = fold(id);
        if t.rel.is_pii(&f) {
            return Err(self.pii_read(&f));
        }
        if self.target_names().contains(&f) {
            return Err(Refusal::new(RefusalKind::PiiRead, format!(
                "the whole-row reference {f} reads every column of {}.{}, including PII, in a write statement",
                t.rel.schema, t.rel.name
            )));
        }
        Ok(())
    }

    /// In a write: `t.col` naming a PII column of the target, or `t` alone (its whole row).
    fn target_compound_identifier(&self, ids: &[Ident]) -> Result<(), Refusal> {
        let Some(t) = self.target else {
            return Ok(());
        };
        let names = self.target_names();
        let parts: Vec<String> = ids.iter().map(fold).collect();
        for w in parts.windows(2) {
            if names.contains(&w[0]) && t.rel.is_pii(&w[1]) {
                return Err(self.pii_read(&w[1]));
            }
        }
        if parts.len() == 1 && names.contains(&parts[0]) {
            return Err(self.pii_read("*"));
        }
        Ok(())
    }

    /// In a write: `t.*` of the target in a select list.
    fn select(&self, s: &Select) -> Result<(), Refusal> {
        let Some(t) = self.target else {
            return Ok(());
        };
        let names = self.target_names();
        for it in &s.projection {
            if let SelectItem::QualifiedWildcard(
                SelectItemQualifiedWildcardKind::ObjectName(n),
                _,
            ) = it
            {
                let last = name_parts(n)
                    .and_then(|p| p.last().cloned())
                    .unwrap_or_default();
                if names.contains(&last) {
                    return Err(whole_row_refusal(&last, t));
                }
            }
        }
        Ok(())
    }

    /// Table functions in FROM.
    fn table_factor(&mut self, tf: &TableFactor) -> Result<(), Refusal> {
        if let TableFactor::Function { name, .. } = tf {
            self.st.check_function(name)?;
        }
        if let TableFactor::Table {
            name,
            args: Some(_),
            ..
        } = tf
        {
            self.st.check_function(name)?;
        }
        Ok(())
    }
}

impl Visitor for Checker<'_, '_, '_> {
    type Break = Refusal;

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<Refusal> {
        flow(self.expr(e))
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<Refusal> {
        flow(self.select(s))
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<Refusal> {
        flow(self.table_factor(tf))
    }
}
