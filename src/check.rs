//! `pgredact check`: validates the config and every policy file, and, when PostgreSQL is
//! reachable, each policy against the live schema (tables, columns, mask/type fit).

use crate::catalog::Catalog;
use crate::config::Config;
use crate::policy::{self, mask_fits, DatabasePolicy};

/// The report: its lines, and whether any is an error.
#[derive(Default)]
struct Report {
    out: Vec<String>,
    failed: bool,
}

impl Report {
    fn line(&mut self, l: String) {
        self.out.push(l);
    }

    fn error(&mut self, l: String) {
        self.out.push(format!("error: {l}"));
        self.failed = true;
    }

    fn warning(&mut self, l: String) {
        self.out.push(format!("warning: {l}"));
    }
}

/// Returns the report lines and whether any is an error.
pub async fn run(cfg: &Config) -> (Vec<String>, bool) {
    let mut r = Report::default();
    let set = match policy::load_dir(&cfg.policies_dir(), 1) {
        Ok(s) => s,
        Err(e) => return (vec![format!("error: {e}")], true),
    };
    if set.by_database.is_empty() {
        r.warning(format!(
            "no policy files in {}: every masked role will be refused",
            cfg.policies_dir().display()
        ));
    }
    let mut dbs: Vec<_> = set.by_database.values().cloned().collect();
    dbs.sort_by(|a, b| a.database.cmp(&b.database));
    for p in dbs {
        check_policy(cfg, &p, &mut r).await;
    }
    (r.out, r.failed)
}

/// One policy file: on its own, then against its database when PostgreSQL is reachable.
async fn check_policy(cfg: &Config, p: &DatabasePolicy, r: &mut Report) {
    let file = p.file.display().to_string();
    r.line(format!(
        "{file}: database {:?}, {} tables, unmasked roles {:?}",
        p.database,
        p.tables.len(),
        p.unmasked_roles
    ));
    if p.uses_hash() && cfg.hash_key().is_none() {
        r.error(format!(
            "{file}: uses the hash mask but ${} is not set",
            cfg.secrets.hash_key_env
        ));
    }
    let shared = crate::proxy::Shared::new(cfg.clone(), Default::default());
    let client = match shared.control_connect(&p.database).await {
        Ok(c) => c,
        Err(e) => {
            r.warning(format!("{file}: not checked against the live schema: {e}"));
            return;
        }
    };
    let cat = match Catalog::load(&client).await {
        Ok(c) => c,
        Err(e) => {
            r.error(format!("{file}: reading the catalog: {e}"));
            return;
        }
    };
    check_ddl_watch(cfg, &client, p, r).await;
    check_wall(cfg, &client, p, r).await;
    check_tables(p, &cat, r);
    // Likely PII the policy does not list (by column name and type; `pgredact scan`
    // samples values). A warning: the policy may leave a column out on purpose.
    for w in crate::scan::name_warnings(p, &cat) {
        r.warning(format!("{file}: {w}"));
    }
    check_forget(cfg, p, r).await;
    if !r.failed {
        r.line(format!("{file}: ok against the live schema"));
    }
}

/// The DDL watch (event trigger): missing, disabled, or not ALWAYS.
async fn check_ddl_watch(
    cfg: &Config,
    client: &tokio_postgres::Client,
    p: &DatabasePolicy,
    r: &mut Report,
) {
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
        Some("O") | Some("R") => r.warning(format!(
            "database {:?}: event trigger {} is not enabled ALWAYS (sessions with session_replication_role = replica would not report their DDL); run the output of `pgredact setup-sql` as a superuser",
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
                r.error(format!("{what}; until then masked statements are refused"));
            } else {
                r.warning(format!(
                    "{what}; until then DDL is seen only every {} s",
                    cfg.catalog_refresh_secs
                ));
            }
        }
    }
}

/// The wall: what PostgreSQL itself must enforce (see crate::wall), and the instances.
async fn check_wall(
    cfg: &Config,
    client: &tokio_postgres::Client,
    p: &DatabasePolicy,
    r: &mut Report,
) {
    let database_enforced = p.enforcement == crate::policy::Enforcement::Database;
    match crate::wall::installed_version(client).await {
        Some(crate::wall::VERSION) => {}
        other => {
            let what = match other {
                Some(v) => format!(
                    "pgredact_admin is version {v}, this pgredact needs {}",
                    crate::wall::VERSION
                ),
                None => {
                    "pgredact_admin (masking views, privilege enforcement) is not installed".into()
                }
            };
            r.error(format!(
                "database {:?}: {what}; a superuser must run the output of `pgredact setup-sql`",
                p.database
            ));
        }
    }
    instances_report(client, p, &mut r.out).await;
    let findings = match crate::wall::findings(client, p, &cfg.upstream.user).await {
        Ok(f) => f,
        Err(e) => {
            return r.error(format!(
                "database {:?}: the privilege check failed: {}",
                p.database,
                crate::tls::error_chain(&e)
            ));
        }
    };
    let mut violations = 0;
    for f in &findings {
        match f.severity.as_str() {
            "violation" if database_enforced => {
                violations += 1;
                r.error(format!("database {:?}: {}", p.database, f.describe()));
            }
            "violation" | "warning" => {
                r.warning(format!("database {:?}: {}", p.database, f.describe()))
            }
            _ => {}
        }
    }
    if violations > 0 {
        r.error(format!(
            "database {:?}: {violations} privilege violation(s): masked roles could read or write PII without pgredact, so pgredact refuses masked sessions; `pgredact setup-sql` prints the statements that fix them",
            p.database
        ));
    } else if !database_enforced {
        r.warning(format!(
            "{}: enforcement = \"proxy\": PostgreSQL does not enforce the masks, so a masked role connecting straight to PostgreSQL reads raw data",
            p.file.display()
        ));
    }
}

/// Each policy table against the catalog: it exists, its subject and columns exist, each mask
/// fits its column's type; what `privacy_by_default` masks.
fn check_tables(p: &DatabasePolicy, cat: &Catalog, r: &mut Report) {
    let file = p.file.display();
    for t in p.tables.values() {
        let Some(rel) = cat.lookup(&t.schema, &t.name) else {
            r.error(format!(
                "{file}:{}: table {} does not exist in database {:?}",
                t.line,
                t.qualified(),
                p.database
            ));
            continue;
        };
        let has = |c: &str| rel.columns.iter().any(|x| x.name == c);
        if let Some(s) = t.subject.as_deref().filter(|s| !has(s)) {
            r.error(format!(
                "{file}:{}: subject column {s} does not exist in {}",
                t.line,
                t.qualified()
            ));
        }
        for (col, cp) in &t.columns {
            let Some(c) = rel.columns.iter().find(|c| &c.name == col) else {
                r.error(format!(
                    "{file}:{}: column {col} does not exist in {}",
                    cp.line,
                    t.qualified()
                ));
                continue;
            };
            if let Err(e) = mask_fits(&cp.mask, &c.ty) {
                r.error(format!("{file}:{}: {}.{col}: {e}", cp.line, t.qualified()));
            }
            for rm in &cp.by_role {
                if let Err(e) = mask_fits(&rm.mask, &c.ty) {
                    r.error(format!(
                        "{file}:{}: roles.{}: {}.{col}: {e}",
                        rm.line,
                        rm.role,
                        t.qualified()
                    ));
                }
            }
        }
        if t.privacy_by_default {
            let masked = t.default_masked(rel.columns.iter().map(|c| c.name.as_str()));
            r.line(format!(
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
        for c in t.public.iter().filter(|c| !has(c)) {
            r.warning(format!(
                "{file}:{}: public column {c} does not exist in {}",
                t.line,
                t.qualified()
            ));
        }
    }
}

/// Right to be forgotten: what would block a forget job on this schema, and the suppression
/// triggers (missing, disabled, not ALWAYS, or outrun by a later-named trigger).
async fn check_forget(cfg: &Config, p: &DatabasePolicy, r: &mut Report) {
    let file = p.file.display();
    if p.tables.values().any(|t| t.subject.is_some()) {
        let target = crate::forget::Target::from_config(cfg, &p.database);
        let plan = match target.connect().await {
            Ok(fc) => crate::forget::plan::resolve(&fc, p)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match plan {
            Ok(spec) => {
                for b in &spec.static_blockers {
                    r.warning(format!("{file}: forget jobs would be refused: {b}"));
                }
                for w in &spec.warnings {
                    r.warning(format!("{file}: forget: {w}"));
                }
            }
            Err(e) => r.warning(format!("{file}: forget plan not checked: {e}")),
        }
    }
    if let Some(problems) = crate::forget::suppression_problems(cfg, p).await {
        for line in problems {
            r.error(format!("{file}: forget suppression: {line}"));
        }
    }
}

/// The pgredact instances serving the database (`pgredact.instances`), and those whose policy
/// is not this file's: a rolling policy change in progress, or an instance left behind.
async fn instances_report(
    client: &tokio_postgres::Client,
    p: &DatabasePolicy,
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
