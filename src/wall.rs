//! The wall: what PostgreSQL itself enforces for masked roles (DESIGN.md, "Two walls").
//!
//! - Masked roles (every role that is not a superuser, the control role, or a member of the
//!   policy's `unmasked_roles`; PUBLIC included) hold no privilege on any PII column of a protected
//!   relation, and no way around that: views, rules, materialized views, foreign tables and
//!   SECURITY DEFINER routines that hand out PII, memberships that read past privileges, large
//!   objects. [`findings`] lists every breach with the statement that fixes it.
//! - Every protected relation has a masking view (`pgredact_masked.<name>` for `public`,
//!   `pgredact_masked_<schema>.<name>` otherwise), owned by the control role, projecting every
//!   column masked where the policy says, readable by the roles that may read the relation.
//!   pgredact substitutes it for the relation in masked sessions.
//! - A superuser installs `pgredact_admin` ([`superuser_setup_sql`]): the view builder, the
//!   enforcement function, and the DDL event triggers that keep both true in the transaction of
//!   every DDL (a new partition of a policy table is locked down and masked when it commits).
//!
//! pgredact publishes its policy as data ([`publish`]): the database's functions turn it into
//! SQL themselves, so nothing the control role writes runs with superuser rights.

use crate::policy::{quote_ident, DatabasePolicy};
use tokio_postgres::Client;

/// Version of the `pgredact_admin` functions this build expects (`pgredact_admin.wall_version()`).
pub const VERSION: i32 = 6;
/// The superuser-owned schema.
pub const ADMIN_SCHEMA: &str = "pgredact_admin";
/// The masking schema of relations in `public`; other schemas get `pgredact_masked_<schema>`.
pub const MASKED_SCHEMA: &str = "pgredact_masked";

const PROTECTED_SQL: &str = include_str!("wall_protected.sql");
const VIOLATIONS_TEMPLATE: &str = include_str!("wall_violations.sql");
const SETUP_TEMPLATE: &str = include_str!("wall_setup.sql");

/// Whether `schema` is one of pgredact's masking schemas.
pub fn is_masked_schema(schema: &str) -> bool {
    schema == MASKED_SCHEMA
        || schema
            .strip_prefix(MASKED_SCHEMA)
            .is_some_and(|r| r.starts_with('_'))
}

/// The query behind [`findings`] ($1 the policy spec, $2 the control role), with
/// `search_path = pg_catalog` assumed.
pub fn violations_sql() -> String {
    VIOLATIONS_TEMPLATE.replace("@PROTECTED@", strip_comments(PROTECTED_SQL).trim_end())
}

fn strip_comments(sql: &str) -> String {
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// SQL a superuser runs once per protected database, and again after an upgrade: the control
/// schema owned by the control role, `pgredact_admin` with the view builder and the enforcement
/// function, and the DDL event triggers (enabled ALWAYS).
pub fn superuser_setup_sql(ctl: &str) -> String {
    SETUP_TEMPLATE
        .replace("@CONTROL_OBJECTS@", crate::control::CONTROL_OBJECTS)
        .replace("@VIOLATIONS@", &violations_sql())
        .replace("@PROTECTED@", strip_comments(PROTECTED_SQL).trim_end())
        .replace("@VERSION@", &VERSION.to_string())
        .replace("@FAKE_DATA@", &fake_data_sql())
        .replace("@DDL_TRIGGER@", crate::control::DDL_TRIGGER)
        .replace("@CTL@", &quote_ident(ctl))
}

/// The statements that make `pgredact_mask.fake_lists`/`fake_words` hold exactly
/// [`crate::policy::fake_lists`] (mask `fake`), run inside one transaction by the setup SQL.
fn fake_data_sql() -> String {
    use crate::policy::quote_literal;
    let lists = crate::policy::fake_lists();
    let mut out = String::new();
    let names: Vec<String> = lists.iter().map(|(n, _)| quote_literal(n)).collect();
    out.push_str(&format!(
        "DELETE FROM pgredact_mask.fake_lists WHERE list NOT IN ({});\n",
        names.join(", ")
    ));
    for (name, words) in &lists {
        out.push_str(&format!(
            "INSERT INTO pgredact_mask.fake_lists (list, size) VALUES ({}, {}) ON CONFLICT (list) DO UPDATE SET size = EXCLUDED.size;\n",
            quote_literal(name),
            words.len()
        ));
        let rows: Vec<String> = words
            .iter()
            .enumerate()
            .map(|(i, w)| format!("({}, {i}, {})", quote_literal(name), quote_literal(w)))
            .collect();
        out.push_str(&format!(
            "INSERT INTO pgredact_mask.fake_words (list, n, word) VALUES\n{}\nON CONFLICT (list, n) DO UPDATE SET word = EXCLUDED.word;\n",
            rows.join(",\n")
        ));
    }
    out.push_str("DELETE FROM pgredact_mask.fake_words w WHERE NOT EXISTS (SELECT 1 FROM pgredact_mask.fake_lists l WHERE l.list = w.list AND w.n < l.size);");
    out
}

/// One row of [`findings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `violation`, `warning`, or `fix` (a statement that removes violations).
    pub severity: String,
    pub kind: String,
    pub role: Option<String>,
    pub object: Option<String>,
    pub column: Option<String>,
    pub privilege: Option<String>,
    pub how: Option<String>,
    pub fix: Option<String>,
    /// The fix is a grant change a superuser makes as the object's owner: the DDL trigger and
    /// `pgredact_admin.enforce()` apply it by themselves.
    pub auto: bool,
}

impl Finding {
    /// One line for `check`, logs and refusals.
    pub fn describe(&self) -> String {
        let who = match self.role.as_deref() {
            Some("public") => "PUBLIC".to_string(),
            Some(r) => r.to_string(),
            None => String::new(),
        };
        let what = match (&self.object, &self.column) {
            (Some(o), Some(c)) => format!("{o}.{c}"),
            (Some(o), None) => o.clone(),
            _ => String::new(),
        };
        let how = self.how.as_deref().unwrap_or("");
        match (who.is_empty(), self.privilege.as_deref()) {
            (false, Some(p)) => format!("{who} holds {p} on {what} ({how})"),
            (false, None) => format!("{who}: {what}: {how}"),
            (true, _) => format!("{what} {how}"),
        }
    }
}

/// Everything that breaks the wall for `policy`, with the fixes, read as the control role.
pub async fn findings(
    client: &Client,
    policy: &DatabasePolicy,
    ctl: &str,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let spec = policy.spec();
    let rows = client.query(&violations_sql(), &[&spec, &ctl]).await?;
    Ok(rows
        .iter()
        .map(|r| Finding {
            severity: r.get(0),
            kind: r.get(1),
            role: r.get(2),
            object: r.get(3),
            column: r.get(4),
            privilege: r.get(5),
            how: r.get(6),
            fix: r.get(7),
            auto: r.get(8),
        })
        .collect())
}

/// The statements that fix `findings`, each once, in order, as SQL text with comments.
pub fn fix_script(findings: &[Finding]) -> String {
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    for f in findings {
        let Some(fix) = f.fix.as_deref() else {
            continue;
        };
        if !seen.insert(fix.to_string()) {
            continue;
        }
        if f.severity == "fix" && !fix.contains(" -- ") && !fix.starts_with("--") {
            let why = match f.kind.as_str() {
                "table grant" => "a table-level grant covers its PII columns",
                "column grant" => "a grant on a PII column",
                _ => "breaks the wall",
            };
            out.push_str(&format!("{fix} -- {why}\n"));
        } else if f.severity == "violation" && !fix.starts_with("--") {
            out.push_str(&format!(
                "{fix} -- {}\n",
                f.how.as_deref().unwrap_or("breaks the wall")
            ));
        } else {
            out.push_str(fix);
            out.push('\n');
        }
    }
    out
}

/// Whether `pgredact_admin` is installed, and its version.
pub async fn installed_version(client: &Client) -> Option<i32> {
    client
        .query_opt(
            "SELECT pgredact_admin.wall_version() WHERE pg_catalog.to_regnamespace('pgredact_admin') IS NOT NULL",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Writes the policy spec to `pgredact.policy` (when it changed) and runs
/// `pgredact_admin.enforce()`, which applies the automatic fixes and (re)builds the masking views.
/// Returns what enforce did. Needs `setup-sql` to have been run.
pub async fn publish(client: &Client, policy: &DatabasePolicy) -> Result<Vec<String>, String> {
    let spec = policy.spec();
    client
        .execute(
            "INSERT INTO pgredact.policy (id, spec) VALUES (true, $1) \
             ON CONFLICT (id) DO UPDATE SET spec = EXCLUDED.spec, written_at = pg_catalog.now() \
             WHERE pgredact.policy.spec IS DISTINCT FROM EXCLUDED.spec",
            &[&spec],
        )
        .await
        .map_err(|e| {
            format!(
                "writing pgredact.policy failed: {}",
                crate::tls::error_chain(&e)
            )
        })?;
    match installed_version(client).await {
        Some(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "pgredact_admin is version {v}, this pgredact needs version {VERSION}: a superuser must run the output of `pgredact setup-sql`"
            ))
        }
        None => {
            return Err(
                "pgredact_admin is not installed: a superuser must run the output of `pgredact setup-sql`"
                    .into(),
            )
        }
    }
    let rows = client
        .query("SELECT * FROM pgredact_admin.enforce()", &[])
        .await
        .map_err(|e| {
            format!(
                "pgredact_admin.enforce() failed: {}",
                crate::tls::error_chain(&e)
            )
        })?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The whole `pgredact setup-sql` output for `database` (the only policy's database when None):
/// the superuser part, the policy as data, the statements that fix what breaks the wall today
/// (computed on the live database when it is reachable), and a final `enforce()` that builds the
/// masking views.
pub async fn setup_sql(
    cfg: &crate::config::Config,
    database: Option<&str>,
) -> Result<String, String> {
    let set = crate::policy::load_dir(&cfg.policies_dir(), 1).map_err(|e| e.to_string())?;
    let policy = match database {
        Some(d) => set
            .get(d)
            .ok_or_else(|| format!("no policy file names database {d:?}"))?,
        None => {
            let mut all: Vec<_> = set.by_database.values().cloned().collect();
            match all.len() {
                1 => all.remove(0),
                0 => {
                    return Err(format!(
                        "no policy files in {}",
                        cfg.policies_dir().display()
                    ))
                }
                _ => {
                    let mut names: Vec<_> = all.iter().map(|p| p.database.clone()).collect();
                    names.sort();
                    return Err(format!(
                        "several databases have policies ({}): choose one with --database",
                        names.join(", ")
                    ));
                }
            }
        }
    };
    let ctl = &cfg.upstream.user;
    let mut out = format!(
        "-- pgredact setup-sql for database {:?} (policy {}), run by a superuser:\n--   pgredact setup-sql --config ... | psql -v ON_ERROR_STOP=1 -U postgres -d {}\n\n",
        policy.database,
        policy.file.display(),
        quote_ident(&policy.database)
    );
    out.push_str(&superuser_setup_sql(ctl));
    out.push_str(&format!(
        "\n-- The policy, as data the functions above read.\nSET ROLE {};\nINSERT INTO pgredact.policy (id, spec) VALUES (true, {}) ON CONFLICT (id) DO UPDATE SET spec = EXCLUDED.spec, written_at = pg_catalog.now();\nRESET ROLE;\n",
        quote_ident(ctl),
        crate::policy::quote_literal(&policy.spec().to_string())
    ));
    let shared = crate::proxy::Shared::new(cfg.clone(), Default::default());
    if policy.enforcement == crate::policy::Enforcement::Proxy {
        out.push_str("\n-- enforcement = \"proxy\": privileges are left as they are (a masked role connecting straight\n-- to PostgreSQL reads raw data); `pgredact check` lists what database enforcement would change.\n");
    } else {
        match shared.control_connect(&policy.database).await {
        Ok(client) => match findings(&client, &policy, ctl).await {
            Ok(f) => {
                let script = fix_script(&f);
                if script.is_empty() {
                    out.push_str("\n-- Privileges: nothing breaks the wall today.\n");
                } else {
                    out.push_str("\n-- Privileges: what breaks the wall today, and the statements that fix it.\n");
                    out.push_str("-- Only narrowing: a REVOKE, or a table-level grant replaced by the same grant on the\n");
                    out.push_str("-- columns without PII; what PUBLIC loses goes to the unmasked roles and the control role.\n");
                    out.push_str(&script);
                }
                let warnings: Vec<_> = f.iter().filter(|x| x.severity == "warning").collect();
                if !warnings.is_empty() {
                    out.push_str("\n-- Warnings (nothing to run; see `pgredact check`):\n");
                    for w in warnings {
                        out.push_str(&format!("--   {}\n", w.describe()));
                    }
                }
            }
            Err(e) => out.push_str(&format!(
                "\n-- The privilege check could not run ({}): run `pgredact check` after this script.\n",
                crate::tls::error_chain(&e)
            )),
        },
        Err(e) => out.push_str(&format!(
            "\n-- Database not reachable ({e}): the privilege fixes were not computed; enforce() below\n-- applies the automatic ones. Run `pgredact check` after this script.\n"
        )),
    }
    }
    out.push_str("\n-- Build the masking views (and apply the automatic fixes).\nSELECT * FROM pgredact_admin.enforce();\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_schemas() {
        assert!(is_masked_schema("pgredact_masked"));
        assert!(is_masked_schema("pgredact_masked_crm"));
        assert!(!is_masked_schema("pgredact_maskedx"));
        assert!(!is_masked_schema("public"));
    }

    #[test]
    fn setup_sql_is_complete() {
        let s = superuser_setup_sql("ctl\"x");
        for p in [
            "@CTL@",
            "@PROTECTED@",
            "@VIOLATIONS@",
            "@VERSION@",
            "@DDL_TRIGGER@",
            "@CONTROL_OBJECTS@",
            "@FAKE_DATA@",
        ] {
            assert!(!s.contains(p), "{p} is filled");
        }
        assert!(s.contains("AUTHORIZATION \"ctl\"\"x\""));
        assert!(s.contains("CREATE EVENT TRIGGER pgredact_ddl ON ddl_command_end"));
        assert!(!violations_sql().contains("@PROTECTED@"));
        // The violations query is embedded in a dollar-quoted string.
        assert!(!violations_sql().contains("$violations$"));
    }
}
