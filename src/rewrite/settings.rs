//! SET, RESET and `set_config`: which settings a masked session may change.

use super::names::name_parts;
use super::refusal::{Refusal, RefusalKind};
use super::rules;
use super::State;
use sqlparser::ast::{
    DiscardObject, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Reset, ResetStatement,
    Set,
};

/// `set_config('<name>', value, is_local)` with a literal name that `SET` may change in a masked
/// session: the same change as `SET`, which drivers and GUI clients make this way (asyncpg's
/// `set_config('jit', 'off', false)` around its type introspection, pgAdmin's
/// `set_config('bytea_output', 'hex', false)`). The value may be any expression: it is checked
/// and masked like any other. search_path, identity, encoding and planner settings stay refused.
pub(super) fn set_config_of_allowed_setting(f: &sqlparser::ast::Function) -> bool {
    let Some(parts) = name_parts(&f.name) else {
        return false;
    };
    let is_set_config = match parts.as_slice() {
        [n] => n == "set_config",
        [s, n] => s == "pg_catalog" && n == "set_config",
        _ => false,
    };
    let FunctionArguments::List(l) = &f.args else {
        return false;
    };
    is_set_config
        && l.args.len() == 3
        && matches!(
            &l.args[0],
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))
                if matches!(&v.value, sqlparser::ast::Value::SingleQuotedString(n) if rules::setting_allowed(n))
        )
}

impl State<'_> {
    pub(super) fn set(&mut self, set: &Set) -> Result<(), Refusal> {
        match set {
            Set::SetRole { .. } => Err(identity_refusal("SET ROLE")),
            Set::SetSessionAuthorization(_) => Err(identity_refusal("SET SESSION AUTHORIZATION")),
            Set::SingleAssignment {
                variable, values, ..
            } => self.set_one(&variable.to_string(), values),
            Set::ParenthesizedAssignments { variables, values } => {
                for v in variables {
                    self.set_one(&v.to_string(), values)?;
                }
                Ok(())
            }
            Set::MultipleAssignments { assignments } => {
                for a in assignments {
                    self.set_one(&a.name.to_string(), std::slice::from_ref(&a.value))?;
                }
                Ok(())
            }
            Set::SetTimeZone { .. } | Set::SetTransaction { .. } => Ok(()),
            Set::SetNames { charset_name, .. } => {
                let v = charset_name
                    .to_string()
                    .trim_matches('\'')
                    .to_ascii_lowercase();
                if rules::pinned_setting("client_encoding")
                    .is_some_and(|ok| ok.contains(&v.as_str()))
                {
                    Ok(())
                } else {
                    Err(Refusal::new(
                        RefusalKind::Setting,
                        "masked sessions must use client_encoding UTF8",
                    ))
                }
            }
            _ => Err(Refusal::new(
                RefusalKind::StatementKind,
                format!("{set} is not allowed for masked roles"),
            )),
        }
    }

    pub(super) fn set_one(&mut self, var: &str, values: &[Expr]) -> Result<(), Refusal> {
        let name = var.to_ascii_lowercase();
        if name == "role" || name == "session_authorization" {
            return Err(identity_refusal("SET ROLE"));
        }
        if let Some(allowed) = rules::pinned_setting(&name) {
            let ok = values.len() == 1 && {
                let v = values[0].to_string();
                let v = v.trim_matches('\'').to_ascii_lowercase();
                allowed.contains(&v.as_str())
            };
            return if ok {
                Ok(())
            } else {
                Err(Refusal::new(RefusalKind::Setting, format!(
                    "SET {name} to that value is not allowed for masked roles: the masking reads SQL with {name} = {}",
                    allowed[0]
                )))
            };
        }
        if !rules::setting_allowed(&name) {
            return Err(setting_refusal(&name, "SET"));
        }
        for v in values {
            self.check(v, None)?;
        }
        Ok(())
    }
}

pub(super) fn identity_refusal(what: &str) -> Refusal {
    Refusal::new(
        RefusalKind::Identity,
        format!(
            "{what} is not allowed for masked roles: a masked session cannot change its identity"
        ),
    )
}

pub(super) fn setting_refusal(name: &str, verb: &str) -> Refusal {
    Refusal::new(RefusalKind::Setting, format!(
        "{verb} {name} is not allowed for masked roles: only settings that cannot affect masking may be changed"
    ))
}

/// `RESET`: of a setting `SET` may change; `RESET ALL` and `RESET search_path` while the search
/// path is the session's first (every other setting the masking depends on was checked at
/// startup, and `RESET` returns to the startup values). After a change of the search path, they
/// are analysed as that change (`search_path::search_path_change`) when sent alone.
pub(super) fn reset(r: &ResetStatement, path_at_start: bool) -> Result<(), Refusal> {
    match &r.reset {
        Reset::ALL if path_at_start => Ok(()),
        Reset::ALL => Err(path_reset_refusal("RESET ALL")),
        Reset::SessionAuthorization => Err(identity_refusal("RESET SESSION AUTHORIZATION")),
        Reset::ConfigurationParameter(p) => {
            let n = p.to_string().to_ascii_lowercase();
            if n == "search_path" {
                return if path_at_start {
                    Ok(())
                } else {
                    Err(path_reset_refusal("RESET search_path"))
                };
            }
            if !rules::setting_allowed(&n) {
                return Err(setting_refusal(&n, "RESET"));
            }
            Ok(())
        }
    }
}

/// `DISCARD`: `DISCARD ALL` (what connection pools send) under the same rule as `RESET ALL`.
pub(super) fn discard(object_type: &DiscardObject, path_at_start: bool) -> Result<(), Refusal> {
    if object_type.to_string().eq_ignore_ascii_case("ALL") && !path_at_start {
        return Err(path_reset_refusal("DISCARD ALL"));
    }
    Ok(())
}

fn path_reset_refusal(what: &str) -> Refusal {
    Refusal::new(
        RefusalKind::Setting,
        format!("{what} together with other statements, or inside a transaction block, is not allowed for masked roles after the session changed its search_path: it would change the path pgredact resolves names with"),
    )
    .hint(format!("send {what} alone, outside a transaction block"))
}
