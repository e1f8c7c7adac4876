//! Usability corpus: ordinary support and data-team queries must keep succeeding through the
//! proxy for masked roles, with masked values: each answer equals the answer on the statically
//! masked twin database (where the query is deterministic), over the simple and the extended
//! protocol; psql meta-commands and COPY exports work. Prints the number refused (target 0).
//!
//! The queries, the psql commands and the known failures with their reasons are data:
//! `tests/cases/usability.toml` (its header describes the fields).

mod support;

use libtest_mimic::{Arguments, Failed, Trial};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use support::adv::*;
use support::cases::Known;

#[derive(Clone, Copy, PartialEq, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum K {
    /// compare with the twin, rows as sets
    Twin,
    /// compare with the twin, rows in order
    Ordered,
    /// must succeed; answer not comparable (plans, clocks)
    Succeed,
}

/// The masked role that runs a query.
#[derive(Clone, Copy, PartialEq, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum User {
    /// read-only
    Support,
    /// writes non-PII; its queries run inside BEGIN/ROLLBACK
    Solutions,
}

impl User {
    fn name(self) -> &'static str {
        match self {
            User::Support => "support",
            User::Solutions => "solutions",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Q {
    id: String,
    #[serde(rename = "role")]
    user: User,
    #[serde(rename = "oracle")]
    kind: K,
    /// multi-statement strings: simple protocol only
    #[serde(default)]
    simple_only: bool,
    sql: String,
    /// Known failures: the trials over their protocols are ignored.
    #[serde(default)]
    known: Vec<Known>,
}

/// A psql meta-command or export, run by psql as `support`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Psql {
    id: String,
    command: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    case: Vec<Q>,
    psql: Vec<Psql>,
}

const CORPUS_PATH: &str = "tests/cases/usability.toml";
const CORPUS_TOML: &str = include_str!("cases/usability.toml");

/// The corpus of `tests/cases/usability.toml`, in file order, checked: ids `usability-NNN` and
/// `usability-psql-NN`, unique; known failures over "simple" or "extended"; SQL sendable.
fn corpus() -> Result<Corpus, String> {
    let c: Corpus = support::cases::parse(CORPUS_PATH, CORPUS_TOML)?;
    let mut seen = BTreeSet::new();
    for q in &c.case {
        let prefix = support::cases::check_id(CORPUS_PATH, &q.id, 3, &mut seen)?;
        if prefix != "usability" {
            return Err(format!(
                "{CORPUS_PATH}: query id {} is not usability-NNN",
                q.id
            ));
        }
        support::cases::check_known(CORPUS_PATH, &q.id, &q.known, &["simple", "extended"])?;
        let extended_known = q
            .known
            .iter()
            .flat_map(|k| &k.protocols)
            .any(|p| p == "extended");
        if q.simple_only && extended_known {
            return Err(format!(
                "{CORPUS_PATH}: query {}: a known failure over \"extended\", but it runs over the simple protocol only",
                q.id
            ));
        }
        support::cases::check_sql(CORPUS_PATH, &q.id, &q.sql)?;
    }
    for p in &c.psql {
        let prefix = support::cases::check_id(CORPUS_PATH, &p.id, 2, &mut seen)?;
        if prefix != "usability-psql" {
            return Err(format!(
                "{CORPUS_PATH}: psql id {} is not usability-psql-NN",
                p.id
            ));
        }
        support::cases::check_sql(CORPUS_PATH, &p.id, &p.command)?;
    }
    Ok(c)
}

/// What the trials that ran counted; `suite::totals` prints it (it runs last).
#[derive(Default)]
struct Totals {
    runs: usize,
    refused: usize,
    problems: usize,
}

type Kit = support::adv::Kit<Totals>;

/// A problem: (id, protocol, what, sql).
type Problem = (String, String, String, String);

/// Runs `f` on the shared runtime with the fixture; the trial fails with every problem `f`
/// records (each counted and printed as the old suite did).
fn check<F, Fut>(kit: &Kit, f: F) -> Result<(), Failed>
where
    F: FnOnce(Arc<Fixture>) -> Fut,
    Fut: Future<Output = Vec<Problem>>,
{
    let problems = kit.block_on(f);
    kit.totals().problems += problems.len();
    if problems.is_empty() {
        return Ok(());
    }
    let mut msg = String::new();
    for (id, proto, what, sql) in &problems {
        let line = format!("PROBLEM {id} [{proto}]: {what}\n    SQL: {sql}");
        println!("{line}");
        msg.push_str(&line);
        msg.push('\n');
    }
    Err(msg.into())
}

/// One trial `<id>::<protocol>`, ignored when known to fail (`why`: the reason is printed when
/// it runs, and in the failure).
fn trial<F, Fut>(kit: &Arc<Kit>, id: &str, protocol: &'static str, why: Option<&str>, f: F) -> Trial
where
    F: FnOnce(Arc<Kit>, Arc<Fixture>) -> Fut + Send + 'static,
    Fut: Future<Output = Vec<Problem>>,
{
    let why = why.map(str::to_string);
    let ignored = why.is_some();
    let kit = kit.clone();
    let name = format!("{id}::{protocol}");
    Trial::test(name.clone(), move || {
        if let Some(why) = &why {
            println!("KNOWN {name}: {why}");
        }
        let k2 = kit.clone();
        check(&kit, |fx| f(k2, fx)).map_err(|e| match why {
            Some(why) => format!("known failure ({why}):\n{}", e.message().unwrap_or("")).into(),
            None => e,
        })
    })
    .with_ignored_flag(ignored)
}

/// A custom harness (libtest-mimic): one trial per query and protocol
/// (`usability-001::simple`, `usability-001::extended`, `usability-params::extended`,
/// `usability-psql-00::psql`...), so `cargo test --test usability usability-047` runs one query;
/// known failures are ignored trials. `suite::corpus` checks the corpus, `suite::totals` prints
/// the counts of the trials that ran.
fn main() {
    let mut args = Arguments::from_args();
    // One at a time, in the old loop's order: the queries share one cluster, and `solutions`
    // writes (in rolled-back transactions) to the tables the others read.
    args.test_threads = Some(1);
    let Corpus {
        case,
        psql: commands,
    } = support::cases::or_exit(corpus());
    let corpus: Vec<Arc<Q>> = case.into_iter().map(Arc::new).collect();
    let commands: Vec<Arc<Psql>> = commands.into_iter().map(Arc::new).collect();
    let kit = Arc::new(Kit::new());
    let mut trials = vec![Trial::test("suite::corpus", {
        let n = corpus.len();
        move || {
            assert!(n >= 50, "at least 50 ordinary queries");
            Ok(())
        }
    })];
    for q in &corpus {
        for extended in [false, true] {
            if extended && q.simple_only {
                continue;
            }
            let proto = if extended { "extended" } else { "simple" };
            let q2 = q.clone();
            let why = support::cases::known_reason(&q.known, proto);
            trials.push(trial(&kit, &q.id, proto, why, move |kit, fx| {
                query(kit, fx, q2, proto, extended)
            }));
        }
    }
    trials.push(trial(&kit, "usability-params", "extended", None, params));
    for p in &commands {
        let p2 = p.clone();
        trials.push(trial(&kit, &p.id, "psql", None, move |kit, fx| {
            psql(kit, fx, p2)
        }));
    }
    trials.push(Trial::test("suite::totals", {
        let kit = kit.clone();
        let queries = corpus.len() + 1 + commands.len();
        move || {
            let t = kit.totals();
            println!(
                "usability: {queries} queries ({} runs incl. both protocols and psql), refused: {}, problems: {}",
                t.runs, t.refused, t.problems
            );
            Ok(())
        }
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    Kit::shut_down(kit);
    conclusion.exit();
}

/// One corpus query over one protocol, through the proxy and on the twin.
async fn query(
    kit: Arc<Kit>,
    fx: Arc<Fixture>,
    q: Arc<Q>,
    proto: &str,
    extended: bool,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let tx = q.user == User::Solutions;
    kit.totals().runs += 1;
    let (c, cap) = fx.proxy(q.user.name()).await.expect("connect");
    if tx {
        c.batch_execute("BEGIN").await.unwrap();
    }
    let a = if extended {
        run_extended(&c, &cap, &q.sql).await
    } else {
        run_simple(&c, &cap, &q.sql).await
    };
    if tx {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    let hits = fx.canaries.hits(&q.sql, &a.visible);
    if !hits.is_empty() {
        problems.push((
            q.id.clone(),
            proto.into(),
            format!("LEAK {hits:?}"),
            q.sql.clone(),
        ));
    }
    match &a.outcome {
        Outcome::Err { code, message } => {
            if a.outcome.is_refusal() {
                kit.totals().refused += 1;
            }
            problems.push((
                q.id.clone(),
                proto.into(),
                format!("FAILED {code}: {message}"),
                q.sql.clone(),
            ));
            return problems;
        }
        Outcome::Ok(_) => {}
    }
    if q.kind == K::Succeed {
        return problems;
    }
    let (t, tcap) = fx.twin_for(q.user.name()).await;
    if tx {
        t.batch_execute("BEGIN").await.unwrap();
    }
    let ta = if extended {
        run_extended(&t, &tcap, &q.sql).await
    } else {
        run_simple(&t, &tcap, &q.sql).await
    };
    if tx {
        let _ = t.batch_execute("ROLLBACK").await;
    }
    if normalized(&a.outcome, q.kind == K::Ordered) != normalized(&ta.outcome, q.kind == K::Ordered)
    {
        problems.push((
            q.id.clone(),
            proto.into(),
            format!(
                "DIFFERS from the masked twin: proxy={} twin={}",
                a.outcome.short(),
                ta.outcome.short()
            ),
            q.sql.clone(),
        ));
    }
    problems
}

/// A prepared statement with parameters (extended protocol, typed).
async fn params(kit: Arc<Kit>, fx: Arc<Fixture>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let (c, _) = fx.proxy("support").await.expect("connect");
    let (t, _) = fx.twin().await;
    let sql = "SELECT customer_id, email, phone, tier FROM customers WHERE customer_id = $1 OR city = $2 ORDER BY customer_id LIMIT 5";
    kit.totals().runs += 1;
    match c.prepare(sql).await {
        Err(e) => problems.push((
            "usability-params".into(),
            "extended".into(),
            format!("FAILED {e}"),
            sql.into(),
        )),
        Ok(st) => {
            let ts = t.prepare(sql).await.unwrap();
            for (id, city) in [(5i64, "Berlin"), (6, "Tokyo"), (7, "Nowhere")] {
                let a: Vec<(i64, Option<String>, Option<String>, String)> = c
                    .query(&st, &[&id, &city])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect();
                let b: Vec<(i64, Option<String>, Option<String>, String)> = t
                    .query(&ts, &[&id, &city])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect();
                if a != b {
                    problems.push((
                        "usability-params".into(),
                        "extended".into(),
                        format!("DIFFERS {a:?} vs {b:?}"),
                        sql.into(),
                    ));
                }
            }
        }
    }
    problems
}

/// psql: a meta-command or an export.
async fn psql(kit: Arc<Kit>, fx: Arc<Fixture>, p: Arc<Psql>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let (id, sql) = (p.id.clone(), p.command.as_str());
    kit.totals().runs += 1;
    let (ok, out, err) = tokio::task::block_in_place(|| fx.env.psql("support", sql));
    let hits = fx.canaries.hits(sql, &[out.clone(), err.clone()]);
    if !hits.is_empty() {
        problems.push((
            id.clone(),
            "psql".into(),
            format!("LEAK {hits:?}"),
            sql.to_string(),
        ));
    }
    if !ok {
        if err.contains("pgredact") {
            kit.totals().refused += 1;
        }
        problems.push((
            id.clone(),
            "psql".into(),
            format!("FAILED: {}", err.trim()),
            sql.to_string(),
        ));
        return problems;
    }
    if sql.starts_with("COPY (") || sql.starts_with("\\copy") {
        let (_, tout, _) = tokio::task::block_in_place(|| {
            support::psql_at(fx.env.cluster.port, "postgres", "twin", sql)
        });
        if out != tout {
            problems.push((
                id,
                "psql".into(),
                format!("DIFFERS from twin: {out:?} vs {tout:?}"),
                sql.to_string(),
            ));
        }
    }
    problems
}
