//! `pgredact check`: validates the config and every policy file, and, when PostgreSQL is
//! reachable, each policy against the live schema (tables, columns, mask/type fit).

use crate::catalog::Catalog;
use crate::config::Config;
use crate::policy::{self, mask_fits};

/// Returns the report lines and whether any is an error.
pub async fn run(cfg: &Config) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut failed = false;
    let set = match policy::load_dir(&cfg.policies_dir(), 1) {
        Ok(s) => s,
        Err(e) => return (vec![format!("error: {e}")], true),
    };
    if set.by_database.is_empty() {
        out.push(format!(
            "warning: no policy files in {}: every masked role will be refused",
            cfg.policies_dir().display()
        ));
    }
    let mut dbs: Vec<_> = set.by_database.values().cloned().collect();
    dbs.sort_by(|a, b| a.database.cmp(&b.database));
    for p in dbs {
        let file = p.file.display().to_string();
        out.push(format!(
            "{file}: database {:?}, {} tables, unmasked roles {:?}",
            p.database,
            p.tables.len(),
            p.unmasked_roles
        ));
        if p.uses_hash() && cfg.hash_key().is_none() {
            out.push(format!(
                "error: {file}: uses the hash mask but ${} is not set",
                cfg.secrets.hash_key_env
            ));
            failed = true;
        }
        let shared = crate::proxy::Shared::new(cfg.clone(), Default::default());
        let client = match shared.control_connect(&p.database).await {
            Ok(c) => c,
            Err(e) => {
                out.push(format!(
                    "warning: {file}: not checked against the live schema: {e}"
                ));
                continue;
            }
        };
        let cat = match Catalog::load(&client).await {
            Ok(c) => c,
            Err(e) => {
                out.push(format!("error: {file}: reading the catalog: {e}"));
                failed = true;
                continue;
            }
        };
        let watch = client
            .query_opt(
                "SELECT evtenabled::text FROM pg_catalog.pg_event_trigger WHERE evtname = $1",
                &[&crate::control::DDL_TRIGGER],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, String>(0));
        match watch.as_deref() {
            Some("A") => {}
            Some("O") | Some("R") => out.push(format!(
                "warning: database {:?}: event trigger {} is not enabled ALWAYS (sessions with session_replication_role = replica would not report their DDL); run the output of `pgredact setup-sql` as a superuser",
                p.database,
                crate::control::DDL_TRIGGER
            )),
            _ => {
                let what = format!(
                    "database {:?}: the DDL watch (event trigger {}) is missing or disabled; a superuser must run the output of `pgredact setup-sql` in it",
                    p.database,
                    crate::control::DDL_TRIGGER
                );
                if cfg.per_statement_freshness {
                    out.push(format!("error: {what}; until then masked statements are refused"));
                    failed = true;
                } else {
                    out.push(format!(
                        "warning: {what}; until then DDL is seen only every {} s",
                        cfg.catalog_refresh_secs
                    ));
                }
            }
        }
        // The wall: what PostgreSQL itself must enforce (see crate::wall).
        let database_enforced = p.enforcement == crate::policy::Enforcement::Database;
        match crate::wall::installed_version(&client).await {
            Some(crate::wall::VERSION) => {}
            other => {
                let what = match other {
                    Some(v) => format!(
                        "pgredact_admin is version {v}, this pgredact needs {}",
                        crate::wall::VERSION
                    ),
                    None => {
                        "pgredact_admin (masking views, privilege enforcement) is not installed"
                            .into()
                    }
                };
                out.push(format!(
                    "error: database {:?}: {what}; a superuser must run the output of `pgredact setup-sql`",
                    p.database
                ));
                failed = true;
            }
        }
        instances_report(&client, &p, &mut out).await;
        match crate::wall::findings(&client, &p, &cfg.upstream.user).await {
            Ok(findings) => {
                let mut violations = 0;
                for f in &findings {
                    match f.severity.as_str() {
                        "violation" if database_enforced => {
                            violations += 1;
                            out.push(format!(
                                "error: database {:?}: {}",
                                p.database,
                                f.describe()
                            ));
                        }
                        "violation" | "warning" => out.push(format!(
                            "warning: database {:?}: {}",
                            p.database,
                            f.describe()
                        )),
                        _ => {}
                    }
                }
                if violations > 0 {
                    failed = true;
                    out.push(format!(
                        "error: database {:?}: {violations} privilege violation(s): masked roles could read or write PII without pgredact, so pgredact refuses masked sessions; `pgredact setup-sql` prints the statements that fix them",
                        p.database
                    ));
                } else if !database_enforced {
                    out.push(format!(
                        "warning: {file}: enforcement = \"proxy\": PostgreSQL does not enforce the masks, so a masked role connecting straight to PostgreSQL reads raw data"
                    ));
                }
            }
            Err(e) => {
                out.push(format!(
                    "error: database {:?}: the privilege check failed: {}",
                    p.database,
                    crate::tls::error_chain(&e)
                ));
                failed = true;
            }
        }
        for t in p.tables.values() {
            let Some(rel) = cat.lookup(&t.schema, &t.name) else {
                out.push(format!(
                    "error: {file}:{}: table {} does not exist in database {:?}",
                    t.line,
                    t.qualified(),
                    p.database
                ));
                failed = true;
                continue;
            };
            if let Some(s) = &t.subject {
                if !rel.columns.iter().any(|c| &c.name == s) {
                    out.push(format!(
                        "error: {file}:{}: subject column {s} does not exist in {}",
                        t.line,
                        t.qualified()
                    ));
                    failed = true;
                }
            }
            for (col, cp) in &t.columns {
                match rel.columns.iter().find(|c| &c.name == col) {
                    None => {
                        out.push(format!(
                            "error: {file}:{}: column {col} does not exist in {}",
                            cp.line,
                            t.qualified()
                        ));
                        failed = true;
                    }
                    Some(c) => {
                        if let Err(e) = mask_fits(&cp.mask, &c.ty) {
                            out.push(format!(
                                "error: {file}:{}: {}.{col}: {e}",
                                cp.line,
                                t.qualified()
                            ));
                            failed = true;
                        }
                        for rm in &cp.by_role {
                            if let Err(e) = mask_fits(&rm.mask, &c.ty) {
                                out.push(format!(
                                    "error: {file}:{}: roles.{}: {}.{col}: {e}",
                                    rm.line,
                                    rm.role,
                                    t.qualified()
                                ));
                                failed = true;
                            }
                        }
                    }
                }
            }
            if t.privacy_by_default {
                let masked = t.default_masked(rel.columns.iter().map(|c| c.name.as_str()));
                out.push(format!(
                    "{file}:{}: {}: privacy_by_default masks {} with redact (listed neither as public nor under columns)",
                    t.line,
                    t.qualified(),
                    if masked.is_empty() {
                        "no column".to_string()
                    } else {
                        masked.join(", ")
                    }
                ));
            }
            for c in &t.public {
                if !rel.columns.iter().any(|x| &x.name == c) {
                    out.push(format!(
                        "warning: {file}:{}: public column {c} does not exist in {}",
                        t.line,
                        t.qualified()
                    ));
                }
            }
        }
        // Likely PII the policy does not list (by column name and type; `pgredact scan`
        // samples values). A warning: the policy may leave a column out on purpose.
        for w in crate::scan::name_warnings(&p, &cat) {
            out.push(format!("warning: {file}: {w}"));
        }
        // Right to be forgotten: what would block a forget job on this schema.
        if p.tables.values().any(|t| t.subject.is_some()) {
            let target = crate::forget::Target::from_config(cfg, &p.database);
            match target.connect().await {
                Ok(fc) => match crate::forget::plan::resolve(&fc, &p).await {
                    Ok(spec) => {
                        for b in &spec.static_blockers {
                            out.push(format!(
                                "warning: {file}: forget jobs would be refused: {b}"
                            ));
                        }
                        for w in &spec.warnings {
                            out.push(format!("warning: {file}: forget: {w}"));
                        }
                    }
                    Err(e) => out.push(format!("warning: {file}: forget plan not checked: {e}")),
                },
                Err(e) => out.push(format!("warning: {file}: forget plan not checked: {e}")),
            }
        }
        // Suppression triggers: missing, disabled, not ALWAYS, or outrun by a later-named trigger.
        if let Some(problems) = crate::forget::suppression_problems(cfg, &p).await {
            for line in problems {
                out.push(format!("error: {file}: forget suppression: {line}"));
                failed = true;
            }
        }
        if !failed {
            out.push(format!("{file}: ok against the live schema"));
        }
    }
    (out, failed)
}

/// The pgredact instances serving the database (`pgredact.instances`), and those whose policy
/// is not this file's: a rolling policy change in progress, or an instance left behind.
async fn instances_report(
    client: &tokio_postgres::Client,
    p: &crate::policy::DatabasePolicy,
    out: &mut Vec<String>,
) {
    let Ok(live) = crate::proxy::peers::live(client).await else {
        return;
    };
    let fp = p.fingerprint();
    let published = client
        .query_opt(
            "SELECT spec OPERATOR(pg_catalog.->>) 'fingerprint' FROM pgredact.policy WHERE id",
            &[],
        )
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get::<_, Option<String>>(0));
    let names: Vec<String> = live
        .iter()
        .map(|i| {
            format!(
                "{} (peer {}, version {}, policy {}, seen {} s ago)",
                i.name,
                i.peer_id.map_or("-".into(), |n| n.to_string()),
                i.version,
                i.fingerprint.as_deref().unwrap_or("none"),
                i.age_secs
            )
        })
        .collect();
    out.push(format!(
        "database {:?}: this policy's fingerprint is {fp}; {} live pgredact instance(s): {}",
        p.database,
        live.len(),
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    ));
    for i in &live {
        if i.fingerprint.as_deref() != Some(fp.as_str()) {
            out.push(format!(
                "warning: database {:?}: instance {} runs another policy (fingerprint {}) than {} ({fp}): masked reads of the tables whose masks differ are refused on one side until every instance runs the same policy",
                p.database,
                i.name,
                i.fingerprint.as_deref().unwrap_or("none"),
                p.file.display()
            ));
        }
    }
    if let Some(pfp) = published.filter(|f| *f != fp) {
        out.push(format!(
            "warning: database {:?}: the masking views were built from another policy (fingerprint {pfp}) than {} ({fp})",
            p.database,
            p.file.display()
        ));
    }
}
