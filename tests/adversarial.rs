//! Adversarial suite: attacks on the masking through the real proxy in front of a real
//! PostgreSQL, with canary PII rows. Oracle 1: no canary reaches the client in any form, in any
//! byte (rows, errors, notices, notifications, COPY data). Oracle 2: for oracle-style queries the
//! answer equals the answer on a statically masked twin database, or is a 42501 refusal.
//! Every case runs over the simple and the extended protocol (tokio-postgres) and again over a raw
//! wire client that keeps every byte. Poison controls prove that both oracles fire without the
//! proxy.
//!
//! The cases, and their known failures with the reasons, are data: `tests/cases/adversarial.toml`
//! (its header describes the fields). The special sections below are code.
//!
//! A custom harness (libtest-mimic): one named trial per case and protocol, so
//! `cargo test --test adversarial relations-036` runs one case, and known failures are ignored
//! trials (`cargo test --test adversarial -- --ignored` runs them). Trial names:
//! `<case>::{simple,extended,raw-simple,raw-extended,direct-simple,direct-extended,poison}`,
//! `special::<section>`, `suite::cases` and `suite::totals` (the counts of the trials that ran).

mod support;

use libtest_mimic::{Arguments, Failed, Trial};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use support::adv::*;
use support::cases::Known;
use support::wire;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
enum Role {
    /// support (read-only, masked)
    #[serde(rename = "support")]
    S,
    /// solutions (writes non-PII, masked)
    #[serde(rename = "solutions")]
    L,
    /// legacy: masked, with `standard_conforming_strings = off` as its role default
    #[serde(rename = "legacy")]
    G,
}

impl Role {
    fn user(self) -> &'static str {
        match self {
            Role::S => "support",
            Role::L => "solutions",
            Role::G => "legacy",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
enum Or {
    /// canary oracle only
    #[serde(rename = "canary")]
    C,
    /// canary + twin, rows compared as sets
    #[serde(rename = "twin")]
    T,
    /// canary + twin, rows compared in order
    #[serde(rename = "ordered")]
    O,
    /// canary + twin on the first `rows=N` of an EXPLAIN ANALYZE
    #[serde(rename = "explain")]
    E,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
enum Poison {
    #[serde(rename = "none")]
    No,
    /// run directly (bypassing the proxy): the canary oracle must fire
    #[serde(rename = "canary")]
    Canary,
    /// run directly: the twin oracle must fire (answer differs from the twin)
    #[serde(rename = "twin")]
    Twin,
}

#[derive(Debug)]
struct Case {
    id: String,
    class: String,
    role: Role,
    or: Or,
    poison: Poison,
    sql: String,
    /// Known failures: the trials over their protocols are ignored.
    known: Vec<Known>,
}

impl Case {
    /// Why the trial `<id>::<protocol>` is known to fail, if it is (an ignored trial).
    fn known(&self, protocol: &str) -> Option<&str> {
        support::cases::known_reason(&self.known, protocol)
    }
}

const CASES_PATH: &str = "tests/cases/adversarial.toml";
const CASES_TOML: &str = include_str!("cases/adversarial.toml");

/// The trial protocols of a case (the suffixes of its trial names).
const PROTOCOLS: [&str; 7] = [
    "simple",
    "extended",
    "raw-simple",
    "raw-extended",
    "direct-simple",
    "direct-extended",
    "poison",
];

/// One `[[case]]` of the case file, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseEntry {
    id: String,
    role: Role,
    oracle: Or,
    poison: Poison,
    sql: String,
    /// Wrapped this many times in `SELECT * FROM (...) AS q`.
    #[serde(default)]
    nest: usize,
    #[serde(default)]
    known: Vec<Known>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    case: Vec<CaseEntry>,
}

/// The cases of `tests/cases/adversarial.toml`, in file order, checked: ids `<class>-NNN` and
/// unique, known failures over the suite's protocols, SQL sendable; the placeholders
/// `{LONG_TABLE}` and `{LONG_COLUMN}` replaced and `nest` applied.
fn cases() -> Result<Vec<Case>, String> {
    let file: CaseFile = support::cases::parse(CASES_PATH, CASES_TOML)?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(file.case.len());
    for e in file.case {
        let class = support::cases::check_id(CASES_PATH, &e.id, 3, &mut seen)?.to_string();
        support::cases::check_known(CASES_PATH, &e.id, &e.known, &PROTOCOLS)?;
        let poison_known = e
            .known
            .iter()
            .flat_map(|k| &k.protocols)
            .any(|p| p == "poison");
        if poison_known && e.poison == Poison::No {
            return Err(format!(
                "{CASES_PATH}: case {}: a known failure over \"poison\", but the case is no poison control",
                e.id
            ));
        }
        let mut sql = e
            .sql
            .replace("{LONG_TABLE}", LONG_TABLE)
            .replace("{LONG_COLUMN}", LONG_COLUMN);
        if sql.contains("{LONG_") {
            return Err(format!(
                "{CASES_PATH}: case {}: a placeholder other than {{LONG_TABLE}} and {{LONG_COLUMN}}",
                e.id
            ));
        }
        for _ in 0..e.nest {
            sql = format!("SELECT * FROM ({sql}) AS q");
        }
        support::cases::check_sql(CASES_PATH, &e.id, &sql)?;
        out.push(Case {
            id: e.id,
            class,
            role: e.role,
            or: e.oracle,
            poison: e.poison,
            sql,
            known: e.known,
        });
    }
    Ok(out)
}

#[derive(Debug)]
struct Failure {
    id: String,
    protocol: &'static str,
    what: String,
    sql: String,
}

fn is_tx(c: &Case) -> bool {
    c.role == Role::L
}

/// The first "rows=N" of an EXPLAIN ANALYZE (text or hex of text).
fn explain_rows(o: &Outcome) -> Outcome {
    match o {
        Outcome::Ok(parts) => {
            let first = parts
                .iter()
                .flat_map(|p| p.rows.iter())
                .next()
                .and_then(|r| r.first().cloned().flatten())
                .unwrap_or_default();
            let text = hex::decode(&first)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or(first);
            let rows = text
                .split("rows=")
                .nth(1)
                .map(|r| r.split(' ').next().unwrap_or("").to_string())
                .unwrap_or_default();
            Outcome::Ok(vec![Part {
                rows: vec![vec![Some(rows)]],
                count: None,
            }])
        }
        other => other.clone(),
    }
}

async fn run_tokio(
    c: &tokio_postgres::Client,
    cap: &Captured,
    sql: &str,
    extended: bool,
    tx: bool,
) -> Answer {
    if tx {
        let _ = c.batch_execute("BEGIN").await;
    }
    let a = if extended {
        run_extended(c, cap, sql).await
    } else {
        run_simple(c, cap, sql).await
    };
    if tx {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    a
}

fn compare(case: &Case, proxy: &Outcome, twin: &Outcome) -> bool {
    match case.or {
        Or::C => true,
        Or::T => twin_agrees(proxy, twin, false),
        Or::O => twin_agrees(proxy, twin, true),
        Or::E => proxy.is_refusal() || explain_rows(proxy) == explain_rows(twin),
    }
}

#[derive(Default)]
struct Stats {
    runs: usize,
    refused: usize,
    ok: usize,
}

/// What the trials that ran counted; `suite::totals` prints it (it runs last).
#[derive(Default)]
struct Totals {
    tokio: Stats,
    direct: Stats,
    direct_known: usize,
    poison_canary: usize,
    poison_twin: usize,
}

type Kit = support::adv::Kit<Totals>;

/// Runs `f` on the shared runtime with the fixture; the trial fails with every failure `f`
/// records.
fn check<F, Fut>(kit: &Kit, f: F) -> Result<(), Failed>
where
    F: FnOnce(Arc<Fixture>) -> Fut,
    Fut: Future<Output = Vec<Failure>>,
{
    verdict(&kit.block_on(f))
}

/// The trial's result: every failure printed (as the old suite's report did), then failed.
fn verdict(failures: &[Failure]) -> Result<(), Failed> {
    if failures.is_empty() {
        return Ok(());
    }
    let mut msg = String::new();
    for f in failures {
        let line = format!(
            "FAILURE {} [{}]: {}\n    SQL: {}",
            f.id, f.protocol, f.what, f.sql
        );
        println!("{line}");
        msg.push_str(&line);
        msg.push('\n');
    }
    Err(msg.into())
}

const PROXY_PROTOCOLS: [(&str, bool); 2] = [("simple", false), ("extended", true)];
const RAW_PROTOCOLS: [(&str, bool); 2] = [("raw-simple", false), ("raw-extended", true)];
const DIRECT_PROTOCOLS: [(&str, bool); 2] = [("direct-simple", false), ("direct-extended", true)];

fn main() {
    let mut args = Arguments::from_args();
    // One at a time, in the old loop's order: the cases share one cluster whose state they see
    // and change (pg_stat_statements and pg_stat_activity show earlier statements, `solutions`
    // writes in rolled-back transactions, `special::stale-catalog-and-roles` alters the catalog
    // and role memberships), so concurrent trials would change what the oracles see.
    args.test_threads = Some(1);
    let cases: Vec<Arc<Case>> = support::cases::or_exit(cases())
        .into_iter()
        .map(Arc::new)
        .collect();
    let kit = Arc::new(Kit::new());
    let mut trials = vec![Trial::test("suite::cases", {
        let cases = cases.clone();
        move || case_table(&cases)
    })];
    // Through the proxy: tokio-postgres, then every byte over a raw wire client.
    for case in &cases {
        for (protocol, extended) in PROXY_PROTOCOLS {
            trials.push(case_trial(&kit, case, protocol, move |kit, fx, case| {
                proxy_run(kit, fx, case, protocol, extended)
            }));
        }
        for (protocol, extended) in RAW_PROTOCOLS {
            trials.push(case_trial(&kit, case, protocol, move |_, fx, case| {
                raw_wire_run(fx, case, protocol, extended)
            }));
        }
    }
    // The same attacks straight against PostgreSQL, as the masked roles: PostgreSQL's own
    // privileges are the wall; an error is fine there, a canary is not.
    for case in &cases {
        for (protocol, extended) in DIRECT_PROTOCOLS {
            trials.push(case_trial(&kit, case, protocol, move |kit, fx, case| {
                direct_run(kit, fx, case, protocol, extended)
            }));
        }
    }
    // Poison controls: the same attacks without the proxy must trip the oracles.
    for case in cases.iter().filter(|c| c.poison != Poison::No) {
        trials.push(case_trial(&kit, case, "poison", poison_run));
    }
    trials.extend(special_trials(&kit));
    trials.push(Trial::test("suite::totals", {
        let kit = kit.clone();
        move || {
            print_totals(&kit.totals());
            Ok(())
        }
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    Kit::shut_down(kit);
    conclusion.exit();
}

/// The case table itself: its size and its poison controls (no fixture needed).
fn case_table(cases: &[Arc<Case>]) -> Result<(), Failed> {
    let mut per_class: BTreeMap<&str, usize> = BTreeMap::new();
    for c in cases {
        *per_class.entry(&c.class).or_default() += 1;
    }
    println!("adversarial cases: {} {per_class:?}", cases.len());
    assert!(cases.len() >= 150, "at least 150 cases");
    let canary = cases.iter().filter(|c| c.poison == Poison::Canary).count();
    let twin = cases.iter().filter(|c| c.poison == Poison::Twin).count();
    assert!(
        canary >= 20 && twin >= 10,
        "poison controls: {canary} canary, {twin} twin"
    );
    Ok(())
}

/// One trial `<case id>::<protocol>`, ignored when known to fail (the reason is printed when it
/// runs, and in the failure).
fn case_trial<F, Fut>(kit: &Arc<Kit>, case: &Arc<Case>, protocol: &str, f: F) -> Trial
where
    F: FnOnce(Arc<Kit>, Arc<Fixture>, Arc<Case>) -> Fut + Send + 'static,
    Fut: Future<Output = Vec<Failure>>,
{
    let why = case.known(protocol).map(str::to_string);
    let ignored = why.is_some();
    let (kit, case2) = (kit.clone(), case.clone());
    let name = format!("{}::{protocol}", case.id);
    let trial = Trial::test(name.clone(), move || {
        if let Some(why) = &why {
            println!("KNOWN FAILING {name}: {why}");
        }
        let k2 = kit.clone();
        check(&kit, |fx| f(k2, fx, case2)).map_err(|e| match why {
            Some(why) => format!("known failure ({why}):\n{}", e.message().unwrap_or("")).into(),
            None => e,
        })
    });
    trial.with_ignored_flag(ignored)
}

/// Over tokio-postgres through the proxy; against the twin too for oracle-style cases.
async fn proxy_run(
    kit: Arc<Kit>,
    fx: Arc<Fixture>,
    case: Arc<Case>,
    protocol: &'static str,
    extended: bool,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    let tx = is_tx(&case);
    kit.totals().tokio.runs += 1;
    let (client, cap) = match fx.proxy(case.role.user()).await {
        Ok(x) => x,
        Err(e) => {
            // A refused login is safe (no data); anything else is reported.
            if code_of(&e) != "42501" {
                fail(
                    &mut failures,
                    &case.id,
                    protocol,
                    format!("could not connect: {e}"),
                    &case.sql,
                );
            } else {
                kit.totals().tokio.refused += 1;
            }
            return failures;
        }
    };
    let a = run_tokio(&client, &cap, &case.sql, extended, tx).await;
    let hits = fx.canaries.hits(&case.sql, &a.visible);
    if !hits.is_empty() {
        let what = format!("LEAK {hits:?} in {}", a.outcome.short());
        fail(&mut failures, &case.id, protocol, what, &case.sql);
    }
    if a.outcome.is_refusal() {
        kit.totals().tokio.refused += 1;
    } else {
        kit.totals().tokio.ok += 1;
    }
    if case.or != Or::C {
        let (t, tcap) = fx.twin_for(case.role.user()).await;
        let ta = run_tokio(&t, &tcap, &case.sql, extended, tx).await;
        if !compare(&case, &a.outcome, &ta.outcome) {
            let what = format!(
                "TWIN MISMATCH proxy={} twin={}",
                a.outcome.short(),
                ta.outcome.short()
            );
            fail(&mut failures, &case.id, protocol, what, &case.sql);
        }
    }
    failures
}

/// Every byte, over a raw wire client through the proxy.
async fn raw_wire_run(
    fx: Arc<Fixture>,
    case: Arc<Case>,
    protocol: &'static str,
    extended: bool,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    match raw_run(
        fx.port(),
        case.role.user(),
        &case.sql,
        extended,
        is_tx(&case),
    )
    .await
    {
        Ok(msgs) => {
            let hits = fx.canaries.hits(&case.sql, &[wire::visible(&msgs)]);
            if !hits.is_empty() {
                let what = format!("LEAK {hits:?} (raw bytes)");
                fail(&mut failures, &case.id, protocol, what, &case.sql);
            }
        }
        Err(e) => {
            let hits = fx.canaries.hits(&case.sql, std::slice::from_ref(&e));
            if !hits.is_empty() {
                let what = format!("LEAK in login error {hits:?}");
                fail(&mut failures, &case.id, protocol, what, &case.sql);
            }
        }
    }
    failures
}

/// Straight to PostgreSQL as the masked role.
async fn direct_run(
    kit: Arc<Kit>,
    fx: Arc<Fixture>,
    case: Arc<Case>,
    protocol: &'static str,
    extended: bool,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    kit.totals().direct.runs += 1;
    let (d, dcap) = fx.direct(case.role.user(), "app").await;
    let a = run_tokio(&d, &dcap, &case.sql, extended, is_tx(&case)).await;
    let hits = fx.canaries.hits(&case.sql, &a.visible);
    if !hits.is_empty() {
        if case.known(protocol).is_some() {
            kit.totals().direct_known += 1;
        }
        let what = format!(
            "LEAK straight to PostgreSQL {hits:?} in {}",
            a.outcome.short()
        );
        fail(&mut failures, &case.id, protocol, what, &case.sql);
    }
    match a.outcome {
        Outcome::Ok(_) => kit.totals().direct.ok += 1,
        Outcome::Err { .. } => kit.totals().direct.refused += 1,
    }
    failures
}

/// Poison control: directly and unmasked, the case must trip its oracle.
async fn poison_run(kit: Arc<Kit>, fx: Arc<Fixture>, case: Arc<Case>) -> Vec<Failure> {
    let mut failures = Vec::new();
    let tx = is_tx(&case);
    let raw = if case.role == Role::G {
        RAW_LEGACY_ROLE
    } else {
        RAW_ROLE
    };
    let (d, dcap) = fx.direct(raw, "app").await;
    let a = run_tokio(&d, &dcap, &case.sql, false, tx).await;
    match case.poison {
        Poison::Canary => {
            let hits = fx.canaries.hits(&case.sql, &a.visible);
            if hits.is_empty() {
                let what = format!(
                    "poison control: the canary oracle must fire without the proxy: {}",
                    a.outcome.short()
                );
                fail(&mut failures, &case.id, "poison", what, &case.sql);
            }
            kit.totals().poison_canary += 1;
        }
        Poison::Twin => {
            let (t, tcap) = fx.twin_for(case.role.user()).await;
            let ta = run_tokio(&t, &tcap, &case.sql, false, tx).await;
            if compare(&case, &a.outcome, &ta.outcome) {
                let what = format!(
                    "poison control: the twin oracle must fire without the proxy: direct={} twin={}",
                    a.outcome.short(),
                    ta.outcome.short()
                );
                fail(&mut failures, &case.id, "poison", what, &case.sql);
            }
            kit.totals().poison_twin += 1;
        }
        Poison::No => {}
    }
    failures
}

fn print_totals(t: &Totals) {
    println!(
        "tokio runs: {} (answered {}, refused {})",
        t.tokio.runs, t.tokio.ok, t.tokio.refused
    );
    println!(
        "direct runs: {} (answered {}, denied {}), known exceptions {}",
        t.direct.runs, t.direct.ok, t.direct.refused, t.direct_known
    );
    println!(
        "poison controls: canary oracle fired {} times, twin oracle {} times",
        t.poison_canary, t.poison_twin
    );
}

/// The special sections, one trial each, in the old order (the last one changes the catalog).
fn special_trials(kit: &Arc<Kit>) -> Vec<Trial> {
    macro_rules! special {
        ($name:literal, $f:ident) => {{
            let kit = kit.clone();
            Trial::test(concat!("special::", $name), move || {
                check(&kit, |fx| async move {
                    let mut failures = Vec::new();
                    $f(&fx, &mut failures).await;
                    failures
                })
            })
        }};
    }
    vec![
        special!("pipelining", pipelining),
        special!("function-call", function_call),
        special!("activity-and-statements", activity_and_statements),
        special!("listen-notify", listen_notify),
        special!("copy", copy_variants),
        special!("startup", startup_games),
        special!("malformed-protocol", malformed_protocol),
        special!("stale-catalog-and-roles", stale_catalog_and_roles),
    ]
}

fn code_of(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

fn fail(failures: &mut Vec<Failure>, id: &str, protocol: &'static str, what: String, sql: &str) {
    failures.push(Failure {
        id: id.to_string(),
        protocol,
        what,
        sql: sql.to_string(),
    });
}

/// Checks `texts` for canaries and records a failure for `id` when one is found.
fn check_leak(
    fx: &Fixture,
    failures: &mut Vec<Failure>,
    id: &str,
    protocol: &'static str,
    sql: &str,
    texts: &[String],
) -> bool {
    let hits = fx.canaries.hits(sql, texts);
    if !hits.is_empty() {
        fail(failures, id, protocol, format!("LEAK {hits:?}"), sql);
        return true;
    }
    false
}

/// tokio-postgres pipelines concurrent queries on one connection; a raw client sends whole batches
/// in one write. Each statement's result must be what it is alone, and nothing may leak.
async fn pipelining(fx: &Fixture, failures: &mut Vec<Failure>) {
    let batch = [
        "SELECT email FROM customers WHERE customer_id = 777777",
        "SELECT query_to_xml('select email from customers where customer_id = 777777', true, false, '')",
        "SELECT phone FROM customers WHERE customer_id = 777777",
        "SELECT * FROM zq_v_direct WHERE customer_id = 777777",
        "SELECT count(*) FROM customers WHERE email LIKE 'zq.canary%'",
        "SET ROLE dba",
        "SELECT current_user",
        "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customer_history'",
        "SELECT address FROM customers WHERE customer_id = 777778",
        "SELECT zq_get_email(777777)",
        "SELECT email FROM customer_history WHERE customer_id = 777777 LIMIT 1",
        "SELECT current_user",
    ];
    // Sequential reference answers.
    let mut alone = Vec::new();
    for sql in batch {
        let (c, cap) = fx.proxy("support").await.expect("connect");
        alone.push(normalized(
            &run_extended(&c, &cap, sql).await.outcome,
            false,
        ));
    }
    let (c, cap) = fx.proxy("support").await.expect("connect");
    let c = Arc::new(c);
    for round in 0..3 {
        let mut handles = Vec::new();
        for sql in batch {
            let c = c.clone();
            let cap = cap.clone();
            handles.push(tokio::spawn(
                async move { run_extended(&c, &cap, sql).await },
            ));
        }
        for (i, h) in handles.into_iter().enumerate() {
            let a = h.await.expect("task");
            let id = format!("pipeline-tokio-{i:02}");
            check_leak(
                fx,
                failures,
                &id,
                "pipelined extended",
                batch[i],
                &a.visible,
            );
            if normalized(&a.outcome, false) != alone[i] {
                fail(
                    failures,
                    &id,
                    "pipelined extended",
                    format!(
                        "round {round}: pipelined answer {} differs from the answer alone {:?}",
                        a.outcome.short(),
                        alone[i]
                    ),
                    batch[i],
                );
            }
        }
    }
    // Raw batches: all statements in one write, one Sync each; then one Sync for all.
    let (mut w, _) = wire::Wire::connect(fx.port(), "support", "app", &[])
        .await
        .expect("raw");
    let mut bytes = Vec::new();
    for sql in batch {
        bytes.extend(wire::extended(sql));
    }
    let msgs = w.roundtrip(&bytes, batch.len()).await;
    check_leak(
        fx,
        failures,
        "pipeline-raw-syncs",
        "raw pipelined",
        "",
        &[wire::visible(&msgs)],
    );
    let mut bytes = Vec::new();
    for (i, sql) in batch.iter().enumerate() {
        bytes.extend(wire::parse(&format!("zq_s{i}"), sql));
        bytes.extend(wire::bind(&format!("zq_p{i}"), &format!("zq_s{i}")));
        bytes.extend(wire::execute(&format!("zq_p{i}"), 0));
    }
    bytes.extend(wire::sync());
    let msgs = w.roundtrip(&bytes, 1).await;
    check_leak(
        fx,
        failures,
        "pipeline-raw-one-sync",
        "raw pipelined",
        "",
        &[wire::visible(&msgs)],
    );
    // Simple queries back to back in one write.
    let mut bytes = Vec::new();
    for sql in batch {
        bytes.extend(wire::query(sql));
    }
    let msgs = w.roundtrip(&bytes, batch.len()).await;
    check_leak(
        fx,
        failures,
        "pipeline-raw-simple",
        "raw pipelined",
        "",
        &[wire::visible(&msgs)],
    );
    // A named statement whose Parse was refused cannot be bound later to something else.
    let mut bytes = wire::parse("zq_named", "SELECT zq_get_email(777777)");
    bytes.extend(wire::sync());
    bytes.extend(wire::bind("", "zq_named"));
    bytes.extend(wire::execute("", 0));
    bytes.extend(wire::sync());
    let msgs = w.roundtrip(&bytes, 2).await;
    check_leak(
        fx,
        failures,
        "pipeline-refused-named",
        "raw pipelined",
        "",
        &[wire::visible(&msgs)],
    );
    // SQL PREPARE names are shared with protocol-level Bind.
    let mut bytes =
        wire::query("PREPARE zq_sqlprep AS SELECT email FROM customers WHERE customer_id = 777777");
    bytes.extend(wire::bind("", "zq_sqlprep"));
    bytes.extend(wire::execute("", 0));
    bytes.extend(wire::sync());
    let msgs = w.roundtrip(&bytes, 2).await;
    check_leak(
        fx,
        failures,
        "pipeline-sql-prepare-bind",
        "raw pipelined",
        "",
        &[wire::visible(&msgs)],
    );
}

/// The FunctionCall ('F') message calls a function by OID, without any SQL text.
async fn function_call(fx: &Fixture, failures: &mut Vec<Failure>) {
    let (su, _) = fx.direct("postgres", "app").await;
    let targets = [
        (
            "query_to_xml(text,boolean,boolean,text)",
            vec![
                Some("select email from customers where customer_id = 777777"),
                Some("true"),
                Some("false"),
                Some(""),
            ],
        ),
        ("public.zq_get_email(bigint)", vec![Some("777777")]),
        ("pg_catalog.zq_pc_email(bigint)", vec![Some("777777")]),
        ("lo_get(oid)", vec![Some("77777")]),
        ("textout(text)", vec![Some("harmless")]),
    ];
    let mut poison = 0;
    for (sig, args) in &targets {
        let oid: u32 = su
            .query_one(&format!("SELECT '{sig}'::regprocedure::oid"), &[])
            .await
            .expect("oid")
            .get(0);
        let msg = wire::function_call(oid, args);
        let id = format!("functioncall {sig}");
        // Through the proxy.
        if let Ok((mut w, _)) = wire::Wire::connect(fx.port(), "support", "app", &[]).await {
            let msgs = w.roundtrip(&msg, 1).await;
            check_leak(
                fx,
                failures,
                &id,
                "FunctionCall",
                "",
                &[wire::visible(&msgs)],
            );
            // The session is either closed or still usable and masked.
            if !w.closed {
                let m2 = w
                    .roundtrip(
                        &wire::query("SELECT email FROM customers WHERE customer_id = 777777"),
                        1,
                    )
                    .await;
                check_leak(
                    fx,
                    failures,
                    &id,
                    "after FunctionCall",
                    "",
                    &[wire::visible(&m2)],
                );
            }
        }
        // Straight to PostgreSQL as support: the wall holds there too.
        let (mut w, _) = wire::Wire::connect(fx.env.cluster.port, "support", "app", &[])
            .await
            .expect("direct raw");
        let msgs = w.roundtrip(&msg, 1).await;
        check_leak(
            fx,
            failures,
            &id,
            "FunctionCall straight to PostgreSQL",
            "",
            &[wire::visible(&msgs)],
        );
        // Poison: directly and unmasked, the same message returns the canary.
        if *sig != "textout(text)" {
            let (mut w, _) = wire::Wire::connect(fx.env.cluster.port, RAW_ROLE, "app", &[])
                .await
                .expect("direct raw");
            let msgs = w.roundtrip(&msg, 1).await;
            let hits = fx.canaries.hits("", &[wire::visible(&msgs)]);
            assert!(
                !hits.is_empty(),
                "poison: FunctionCall {sig} directly must return the canary: {:?}",
                wire::first_error(&msgs)
            );
            poison += 1;
        }
    }
    println!(
        "FunctionCall cases: {} (poison fired {poison})",
        targets.len()
    );
}

/// Query texts of other sessions (pg_stat_activity, pg_stat_statements) hold literal values.
async fn activity_and_statements(fx: &Fixture, failures: &mut Vec<Failure>) {
    let (dba, _) = fx.direct("dba", "app").await;
    let dba = Arc::new(dba);
    let token = dba.cancel_token();
    let d2 = dba.clone();
    let bg = tokio::spawn(async move {
        let _ = d2
            .simple_query(&format!("SELECT pg_sleep(300), '{C_EMAIL}' AS zq_literal"))
            .await;
    });
    // Utility statements are kept verbatim by pg_stat_statements.
    let (dba2, _) = fx.direct("dba", "app").await;
    let _ = dba2
        .simple_query(&format!("SET application_name = '{C_HIST_EMAIL}'"))
        .await;
    // Wait until the sleeping query is visible.
    let (su, _) = fx.direct("postgres", "app").await;
    for _ in 0..100 {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%zq_literal%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let attacks = [
        "SELECT query FROM pg_stat_activity",
        "SELECT * FROM pg_catalog.pg_stat_activity",
        "TABLE pg_stat_activity",
        "SELECT q FROM (SELECT query AS q FROM \"pg_stat_activity\") x",
        "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
        "SELECT pg_catalog.pg_stat_get_backend_activity(b) FROM pg_catalog.pg_stat_get_backend_idset() b",
        "SELECT query FROM pg_stat_get_activity(NULL)",
        "SELECT query FROM pg_stat_statements",
        "SELECT * FROM public.pg_stat_statements WHERE query LIKE '%application_name%'",
        "SELECT query FROM pg_stat_statements(true)",
        "SELECT application_name FROM pg_stat_activity",
        "SELECT string_agg(query, ',') FROM pg_stat_activity",
    ];
    for (i, sql) in attacks.iter().enumerate() {
        let id = format!("activity-{i:02}");
        for extended in [false, true] {
            let (c, cap) = fx.proxy("support").await.expect("connect");
            let a = run_tokio(&c, &cap, sql, extended, false).await;
            check_leak(
                fx,
                failures,
                &id,
                if extended { "extended" } else { "simple" },
                sql,
                &a.visible,
            );
        }
    }
    // Poison: a member of pg_read_all_stats sees both directly.
    let (d, dcap) = fx.direct(RAW_ROLE, "app").await;
    for sql in [attacks[0], attacks[7]] {
        let a = run_simple(&d, &dcap, sql).await;
        assert!(
            !fx.canaries.hits(sql, &a.visible).is_empty(),
            "poison: {sql} directly must show the canary literal: {}",
            a.outcome.short()
        );
    }
    let _ = token.cancel_query(tokio_postgres::NoTls).await;
    let _ = bg.await;
    println!("activity/statements cases: {}", attacks.len());
}

/// LISTEN is the only way to receive notifications; payloads are not masked.
async fn listen_notify(fx: &Fixture, failures: &mut Vec<Failure>) {
    let attempts = [
        "LISTEN zqchan",
        "listen \"zqchan\"",
        "/* x */ LISTEN zqchan",
        "SELECT 1; LISTEN zqchan",
        "BEGIN; LISTEN zqchan; COMMIT",
    ];
    let (dba, _) = fx.direct("dba", "app").await;
    for (i, sql) in attempts.iter().enumerate() {
        for extended in [false, true] {
            let (c, cap) = fx.proxy("support").await.expect("connect");
            let _ = run_tokio(&c, &cap, sql, extended, false).await;
            dba.simple_query(&format!("NOTIFY zqchan, '{C_EMAIL}'"))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let _ = c.simple_query("SELECT 1").await;
            let seen: Vec<String> = cap.lock().unwrap().drain(..).collect();
            check_leak(
                fx,
                failures,
                &format!("listen-{i:02}"),
                if extended { "extended" } else { "simple" },
                "",
                &seen,
            );
        }
    }
    // Raw client: LISTEN then wait for the notification bytes.
    let (mut w, _) = wire::Wire::connect(fx.port(), "support", "app", &[])
        .await
        .expect("raw");
    let mut msgs = w.roundtrip(&wire::query("LISTEN zqchan"), 1).await;
    dba.simple_query(&format!("NOTIFY zqchan, '{C_EMAIL}'"))
        .await
        .unwrap();
    msgs.extend(w.roundtrip(&wire::query("SELECT pg_sleep(0.3)"), 1).await);
    msgs.extend(w.roundtrip(&wire::query("SELECT 1"), 1).await);
    check_leak(
        fx,
        failures,
        "listen-raw",
        "raw",
        "",
        &[wire::visible(&msgs)],
    );
    // Poison: directly, support receives the payload.
    let (d, dcap) = fx.direct("support", "app").await;
    d.simple_query("LISTEN zqchan").await.unwrap();
    dba.simple_query(&format!("NOTIFY zqchan, '{C_EMAIL}'"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = d.simple_query("SELECT 1").await;
    let seen: Vec<String> = dcap.lock().unwrap().drain(..).collect();
    assert!(
        !fx.canaries.hits("", &seen).is_empty(),
        "poison: a direct LISTEN must receive the canary payload: {seen:?}"
    );
    println!("LISTEN/NOTIFY cases: {}", attempts.len() + 1);
}

/// COPY over the simple and extended protocol (raw client) and psql.
async fn copy_variants(fx: &Fixture, failures: &mut Vec<Failure>) {
    let copies = [
        "COPY customers TO STDOUT",
        "COPY customers (email, phone) TO STDOUT",
        "COPY public.customers TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY \"customers\" TO STDOUT (FORMAT binary)",
        "COPY vip_customers TO STDOUT",
        "COPY customer_history (email, address) TO STDOUT",
        "COPY customer_events TO STDOUT",
        "COPY orders TO STDOUT",
        "COPY zq_parted_a TO STDOUT",
        "COPY zq_contacts_eu TO STDOUT",
        "COPY zq_child TO STDOUT",
        "COPY (SELECT * FROM customers WHERE customer_id >= 777777) TO STDOUT",
        "COPY (SELECT email, phone, address, birth_date FROM customers WHERE customer_id = 777777) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)",
        "COPY (SELECT * FROM zq_v_direct) TO STDOUT",
        "COPY (SELECT * FROM zq_contacts) TO STDOUT",
        "COPY (SELECT * FROM zq_base) TO STDOUT",
        "COPY (SELECT * FROM pg_stats) TO STDOUT",
        "COPY (SELECT zq_get_email(777777)) TO STDOUT",
        "COPY zq_mv_func TO STDOUT",
        "COPY customers TO PROGRAM 'cat'",
        "COPY customers TO '/tmp/zq_copy_out'",
        "COPY (SELECT email FROM customers WHERE customer_id = 777777) TO STDOUT WITH (FORMAT text, DELIMITER '|')",
        "COPY customers (customer_id, tier) FROM STDIN WHERE email LIKE 'zq%'",
    ];
    for (i, sql) in copies.iter().enumerate() {
        let id = format!("copy-{i:02}");
        for extended in [false, true] {
            let proto = if extended {
                "raw-extended"
            } else {
                "raw-simple"
            };
            match raw_run(fx.port(), "support", sql, extended, false).await {
                Ok(msgs) => {
                    check_leak(fx, failures, &id, proto, sql, &[wire::visible(&msgs)]);
                }
                Err(e) => fail(failures, &id, proto, format!("connect: {e}"), sql),
            }
        }
    }
    // psql (simple protocol), including \copy and \lo_export (FunctionCall).
    let psql_cases = [
        "COPY customers TO STDOUT".to_string(),
        "\\copy (SELECT * FROM customers WHERE customer_id >= 777777) TO STDOUT".to_string(),
        "\\copy customer_history TO STDOUT".to_string(),
        "\\lo_export 77777 /dev/stdout".to_string(),
        "SELECT email FROM customers WHERE customer_id = 777777 \\gset\n\\echo :email".to_string(),
        "\\d+ zq_v_direct".to_string(),
    ];
    for (i, sql) in psql_cases.iter().enumerate() {
        let id = format!("psql-{i:02}");
        let (_ok, out, err) = tokio::task::block_in_place(|| fx.env.psql("support", sql));
        check_leak(fx, failures, &id, "psql", sql, &[out, err]);
    }
    // COPY FROM of a non-PII column into a table with a trigger-free path is allowed; PII is not.
    let (c, cap) = fx.proxy("solutions").await.expect("connect");
    let a = run_simple(&c, &cap, "COPY customers (email) FROM STDIN").await;
    assert!(
        a.outcome.is_refusal(),
        "COPY into a PII column must be refused: {}",
        a.outcome.short()
    );
    // Straight to PostgreSQL, support meets the wall.
    let (mut w, _) = wire::Wire::connect(fx.env.cluster.port, "support", "app", &[])
        .await
        .expect("direct raw");
    let m = w
        .roundtrip(&wire::query("COPY vip_customers TO STDOUT"), 1)
        .await;
    check_leak(
        fx,
        failures,
        "copy-direct",
        "raw straight to PostgreSQL",
        "COPY vip_customers TO STDOUT",
        &[wire::visible(&m)],
    );
    // Poison: directly and unmasked, COPY customers TO STDOUT shows raw canaries.
    let (w, msgs) = {
        let (mut w, _) = wire::Wire::connect(fx.env.cluster.port, RAW_ROLE, "app", &[])
            .await
            .expect("direct raw");
        let m = w
            .roundtrip(&wire::query("COPY vip_customers TO STDOUT"), 1)
            .await;
        (w, m)
    };
    drop(w);
    assert!(
        !fx.canaries.hits("", &[wire::visible(&msgs)]).is_empty(),
        "poison: direct COPY must show canaries"
    );
    println!(
        "COPY cases: {} raw x2 + {} psql",
        copies.len(),
        psql_cases.len()
    );
}

/// Startup-packet settings that change how SQL is read or who the session is.
async fn startup_games(fx: &Fixture, failures: &mut Vec<Failure>) {
    let attack = "SELECT 'a\\'' , email FROM customers WHERE customer_id = 777777 --'";
    let games: Vec<Vec<(&str, &str)>> = vec![
        vec![("options", "-c standard_conforming_strings=off")],
        vec![("standard_conforming_strings", "off")],
        vec![("options", "--standard-conforming-strings=off")],
        vec![("options", "-c search_path=pg_temp")],
        vec![("options", "-c role=dba")],
        vec![("options", "-c session_authorization=dba")],
        vec![("options", "-c row_security=off")],
        vec![("client_encoding", "SJIS")],
        vec![("client_encoding", "LATIN1")],
        vec![("options", "-c client_encoding=BIG5")],
        vec![("options", "-c\\ standard_conforming_strings=off")],
        vec![("replication", "database")],
        vec![(
            "options",
            "-c default_transaction_read_only=on -c standard_conforming_strings=off",
        )],
    ];
    for (i, g) in games.iter().enumerate() {
        let id = format!("startup-{i:02}");
        match wire::Wire::connect(fx.port(), "support", "app", g).await {
            Err(e) => {
                check_leak(fx, failures, &id, "startup", "", &[e]);
            }
            Ok((mut w, start)) => {
                let mut msgs = start;
                msgs.extend(w.roundtrip(&wire::query(attack), 1).await);
                msgs.extend(w.roundtrip(&wire::extended(attack), 1).await);
                check_leak(fx, failures, &id, "startup", "", &[wire::visible(&msgs)]);
            }
        }
    }
    // A role whose default is standard_conforming_strings = off (ALTER ROLE ... SET), over raw.
    match wire::Wire::connect(fx.port(), "legacy", "app", &[]).await {
        Err(e) => {
            check_leak(fx, failures, "startup-legacy", "startup", "", &[e]);
        }
        Ok((mut w, start)) => {
            let mut msgs = start;
            msgs.extend(w.roundtrip(&wire::query(attack), 1).await);
            check_leak(
                fx,
                failures,
                "startup-legacy",
                "raw-simple",
                "",
                &[wire::visible(&msgs)],
            );
        }
    }
    // Poison: directly and unmasked, the attack string reads raw data under
    // standard_conforming_strings=off.
    let (mut w, _) = wire::Wire::connect(
        fx.env.cluster.port,
        RAW_ROLE,
        "app",
        &[("options", "-c standard_conforming_strings=off")],
    )
    .await
    .expect("direct raw");
    let msgs = w.roundtrip(&wire::query(attack), 1).await;
    assert!(
        !fx.canaries.hits("", &[wire::visible(&msgs)]).is_empty(),
        "poison: the backslash-quote attack must read raw data directly: {:?}",
        wire::first_error(&msgs)
    );
    println!("startup cases: {}", games.len() + 1);
}

/// Malformed and unusual messages: nothing leaks, the proxy rejects or relays sanely.
async fn malformed_protocol(fx: &Fixture, failures: &mut Vec<Failure>) {
    let secret = "SELECT email FROM public.customers WHERE customer_id = 777777";
    let mut games: Vec<(&str, Vec<u8>, usize)> = Vec::new();
    // Query without its NUL, followed by another Query.
    let mut m = wire::raw_frame(b'Q', b"SELECT 1");
    m.extend(wire::query(secret));
    games.push(("query-without-nul", m, 2));
    // Query with an embedded NUL: PostgreSQL reads up to the NUL.
    let mut body = b"SELECT 1".to_vec();
    body.push(0);
    body.extend_from_slice(secret.as_bytes());
    body.push(0);
    games.push(("query-embedded-nul", wire::raw_frame(b'Q', &body), 1));
    // NUL then a view read (the proxy must not analyse only the first part).
    let mut body = b"SELECT * FROM zq_v_direct WHERE customer_id = 777777".to_vec();
    body.push(0);
    body.extend_from_slice(b"SELECT 1");
    body.push(0);
    games.push(("query-nul-first-bad", wire::raw_frame(b'Q', &body), 1));
    // Parse with trailing garbage after the parameter count.
    let mut p = Vec::new();
    p.extend_from_slice(b"\0");
    p.extend_from_slice(b"SELECT * FROM zq_v_direct WHERE customer_id = 777777\0");
    p.extend_from_slice(&0i16.to_be_bytes());
    p.extend_from_slice(b"garbage");
    let mut m = wire::raw_frame(b'P', &p);
    m.extend(wire::bind("", ""));
    m.extend(wire::execute("", 0));
    m.extend(wire::sync());
    games.push(("parse-trailing-garbage", m, 1));
    // Parse declaring more parameter types than sent.
    let mut p = Vec::new();
    p.extend_from_slice(b"\0");
    p.extend_from_slice(b"SELECT zq_get_email(777777)\0");
    p.extend_from_slice(&5i16.to_be_bytes());
    let mut m = wire::raw_frame(b'P', &p);
    m.extend(wire::sync());
    games.push(("parse-short-types", m, 1));
    // An unknown message type, then a read.
    let mut m = wire::raw_frame(b'!', b"zz");
    m.extend(wire::query(
        "SELECT * FROM zq_v_direct WHERE customer_id = 777777",
    ));
    games.push(("unknown-type", m, 2));
    // CopyData / CopyDone outside COPY, then a read.
    let mut m = wire::raw_frame(b'd', b"777777\tzq\n");
    m.extend(wire::raw_frame(b'c', b""));
    m.extend(wire::query(
        "SELECT * FROM zq_v_direct WHERE customer_id = 777777",
    ));
    games.push(("copydata-outside-copy", m, 1));
    // A huge declared length.
    let mut m = vec![b'Q'];
    m.extend_from_slice(&0x7fff_fff0i32.to_be_bytes());
    m.extend_from_slice(secret.as_bytes());
    games.push(("huge-length", m, 1));
    // Execute of a portal bound in an earlier (refused) unit.
    let mut m = wire::parse("", "SELECT * FROM zq_v_direct WHERE customer_id = 777777");
    m.extend(wire::bind("zq_portal", ""));
    m.extend(wire::sync());
    m.extend(wire::execute("zq_portal", 0));
    m.extend(wire::sync());
    games.push(("execute-refused-portal", m, 2));
    for (name, bytes, n) in games {
        let id = format!("malformed-{name}");
        let (mut w, _) = match wire::Wire::connect(fx.port(), "support", "app", &[]).await {
            Ok(x) => x,
            Err(e) => {
                fail(failures, &id, "raw", format!("connect: {e}"), "");
                continue;
            }
        };
        let msgs = w.roundtrip(&bytes, n).await;
        check_leak(fx, failures, &id, "raw", "", &[wire::visible(&msgs)]);
    }
    // The proxy still serves new sessions.
    let (c, cap) = fx.proxy("support").await.expect("proxy still up");
    let a = run_simple(&c, &cap, "SELECT 1").await;
    assert_eq!(
        a.outcome,
        Outcome::Ok(vec![Part {
            rows: vec![vec![Some("1".into())]],
            count: Some(1)
        }])
    );
}

/// Objects that change after the proxy took its catalog snapshot, and role membership that is
/// revoked during a session.
async fn stale_catalog_and_roles(fx: &Fixture, failures: &mut Vec<Failure>) {
    let (su, _) = fx.direct("postgres", "app").await;
    // Warm the proxy's snapshot with the names involved.
    let (c, cap) = fx.proxy("support").await.expect("connect");
    let _ = run_simple(&c, &cap, "SELECT count(*) FROM zq_late").await;
    let _ = run_simple(&c, &cap, "SELECT count(*) FROM zq_late_child").await;
    // Statements prepared before the DDL (protocol-level and SQL-level) are re-planned by
    // PostgreSQL afterwards: they must be re-decided, not run as decided then.
    let (pc, pcap) = fx.proxy("support").await.expect("connect");
    let stale_stmt = pc
        .prepare("SELECT contact FROM zq_late")
        .await
        .expect("prepare before the DDL");
    let _ = run_simple(
        &pc,
        &pcap,
        "PREPARE zq_stale_ps AS SELECT contact FROM zq_late",
    )
    .await;
    // The two kinds share one namespace: a PREPAREd statement bound by the protocol, a Parsed
    // one run by EXECUTE.
    let (mut w, _) = wire::Wire::connect(fx.port(), "support", "app", &[])
        .await
        .expect("raw connect");
    let mut m = wire::query("PREPARE zq_cross_sql AS SELECT contact FROM zq_late");
    m.extend(wire::parse("zq_cross_proto", "SELECT contact FROM zq_late"));
    m.extend(wire::sync());
    let _ = w.roundtrip(&m, 2).await;
    // A PREPARE that PostgreSQL rejects, then the same name really prepared; and a statement
    // whose name is later "re-prepared" by a Parse that PostgreSQL rejects (the name exists).
    let mut m = wire::query("PREPARE zq_bogus AS SELECT zq_no_such_column FROM zq_late");
    m.extend(wire::parse("zq_bogus", "SELECT contact FROM zq_late"));
    m.extend(wire::sync());
    m.extend(wire::parse("zq_dup", "SELECT contact FROM zq_late"));
    m.extend(wire::sync());
    let _ = w.roundtrip(&m, 3).await;
    su.batch_execute(
        "ALTER TABLE public.zq_parted ATTACH PARTITION public.zq_late FOR VALUES IN ('late'); \
         ALTER TABLE public.zq_late_child INHERIT public.zq_child",
    )
    .await
    .expect("attach");
    for (id, sql) in [
        ("stale-attached-partition", "SELECT * FROM zq_late"),
        (
            "stale-attached-partition-count",
            "SELECT count(*) FROM zq_late WHERE contact LIKE 'Zqpart%'",
        ),
        ("stale-new-child", "SELECT * FROM zq_late_child"),
        ("stale-sql-prepared", "EXECUTE zq_stale_ps"),
    ] {
        for extended in [false, true] {
            let fresh = fx.proxy("support").await.expect("connect");
            let (c, cap) = if id == "stale-sql-prepared" {
                (&pc, &pcap)
            } else {
                (&fresh.0, &fresh.1)
            };
            let a = run_tokio(c, cap, sql, extended, false).await;
            let proto = if extended { "extended" } else { "simple" };
            check_leak(fx, failures, id, proto, sql, &a.visible);
            if id != "stale-sql-prepared" {
                // Straight to PostgreSQL: locked down in the DDL's own transaction.
                let (d, dcap) = fx.direct("support", "app").await;
                let a = run_tokio(&d, &dcap, sql, extended, false).await;
                check_leak(fx, failures, id, "straight to PostgreSQL", sql, &a.visible);
            }
            if id.ends_with("count") && !a.outcome.is_refusal() {
                let want = Outcome::Ok(vec![Part {
                    rows: vec![vec![Some(if extended {
                        hex::encode(0i64.to_be_bytes())
                    } else {
                        "0".into()
                    })]],
                    count: if extended { None } else { Some(1) },
                }]);
                if a.outcome != want {
                    fail(
                        failures,
                        id,
                        proto,
                        format!("TWIN MISMATCH: {} (masked twin: 0)", a.outcome.short()),
                        sql,
                    );
                }
            }
        }
    }
    let mut m = wire::parse("zq_dup", "SELECT 1");
    m.extend(wire::sync());
    m.extend(wire::bind("", "zq_dup"));
    m.extend(wire::execute("", 0));
    m.extend(wire::sync());
    m.extend(wire::bind("", "zq_bogus"));
    m.extend(wire::execute("", 0));
    m.extend(wire::sync());
    let msgs = w.roundtrip(&m, 3).await;
    check_leak(
        fx,
        failures,
        "stale-reprepared",
        "raw",
        "Parse/PREPARE of a name PostgreSQL rejected, then Bind",
        &[wire::visible(&msgs)],
    );
    let mut m = wire::bind("", "zq_cross_sql");
    m.extend(wire::execute("", 0));
    m.extend(wire::sync());
    m.extend(wire::query("EXECUTE zq_cross_proto"));
    let msgs = w.roundtrip(&m, 2).await;
    check_leak(
        fx,
        failures,
        "stale-cross-namespace",
        "raw",
        "Bind of a PREPAREd / EXECUTE of a Parsed statement",
        &[wire::visible(&msgs)],
    );
    // The protocol-level statement prepared before the DDL, bound and executed after it.
    let texts: Vec<String> = match pc.query(&stale_stmt, &[]).await {
        Ok(rows) => rows
            .iter()
            .map(|r| format!("{:?}", r.try_get::<_, Option<String>>(0)))
            .collect(),
        Err(e) => {
            if code_of(&e) != "42501" {
                fail(
                    failures,
                    "stale-protocol-prepared",
                    "extended",
                    format!("expected rows or a 42501 refusal, got {e}"),
                    "SELECT contact FROM zq_late",
                );
            }
            vec![e.to_string()]
        }
    };
    let mut texts = texts;
    texts.extend(pcap.lock().expect("captured").iter().cloned());
    check_leak(
        fx,
        failures,
        "stale-protocol-prepared",
        "extended",
        "SELECT contact FROM zq_late",
        &texts,
    );
    // Membership revoked mid-session: the role is no longer exempt.
    let (r, rcap) = fx.proxy("zq_temp_reader").await.expect("connect");
    let before = run_simple(&r, &rcap, "SELECT 1").await;
    assert!(matches!(before.outcome, Outcome::Ok(_)));
    su.batch_execute("REVOKE pii_readers FROM zq_temp_reader")
        .await
        .expect("revoke");
    // No pause: the very next statement must already be treated as the role is now.
    let sql = "SELECT email FROM customers WHERE customer_id = 777777";
    let a = run_simple(&r, &rcap, sql).await;
    if matches!(a.outcome, Outcome::Ok(_)) {
        fail(
            failures,
            "revoked-membership-open-session",
            "simple",
            format!("the session still answered: {}", a.outcome.short()),
            sql,
        );
    }
    check_leak(
        fx,
        failures,
        "revoked-membership-open-session",
        "simple",
        sql,
        &a.visible,
    );
    // A new session of that role is masked.
    let (r2, r2cap) = fx.proxy("zq_temp_reader").await.expect("connect");
    let a = run_simple(&r2, &r2cap, sql).await;
    check_leak(
        fx,
        failures,
        "revoked-membership-new-session",
        "simple",
        sql,
        &a.visible,
    );
    su.batch_execute("GRANT pii_readers TO zq_temp_reader; ALTER TABLE public.zq_late_child NO INHERIT public.zq_child; ALTER TABLE public.zq_parted DETACH PARTITION public.zq_late")
        .await
        .expect("restore");
}
