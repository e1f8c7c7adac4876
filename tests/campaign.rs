//! Generated-SQL campaign: a seeded, reproducible generator of query shapes over the
//! fixture schema (projections of PII columns and expressions over them, predicates on PII and
//! non-PII columns, joins, subqueries, aggregates, CTEs, set operations, ORDER BY/LIMIT). Every
//! statement is executed through the proxy as `support` and directly on the statically masked
//! twin: the answers must be equal (or a 42501 refusal) and no canary may reach the client.
//! Poison control: a sample run directly against `app` (unmasked) must trip the twin oracle.
//!
//! Seed: `PGREDACT_CAMPAIGN_SEED` (default below); size: `PGREDACT_CAMPAIGN_N` (default 2500).

mod support;

use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::Arc;
use support::adv::*;

/// Statement indexes (for the default seed) still failing on main: their trials are ignored
/// (`cargo test --test campaign -- --ignored` runs them).
const KNOWN_FAILING: &[(usize, &str)] = &[];

const DEFAULT_SEED: u64 = 0x5eed_cafe_f00d_0003;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Int,
    Text,
    Date,
    Ts,
    Num,
    Inet,
}

struct Col {
    name: &'static str,
    ty: Ty,
    pii: bool,
}

struct Table {
    name: &'static str,
    alias: &'static str,
    key: &'static str,
    cols: Vec<Col>,
}

fn schema() -> Vec<Table> {
    use Ty::*;
    let c = |name, ty, pii| Col { name, ty, pii };
    vec![
        Table {
            name: "customers",
            alias: "c",
            key: "customer_id",
            cols: vec![
                c("customer_id", Int, false),
                c("first_name", Text, true),
                c("last_name", Text, true),
                c("email", Text, true),
                c("phone", Text, true),
                c("address", Text, true),
                c("city", Text, false),
                c("country", Text, false),
                c("birth_date", Date, true),
                c("tier", Text, false),
                c("segment", Text, false),
                c("lifetime_value", Num, false),
                c("created_at", Ts, false),
            ],
        },
        Table {
            name: "orders",
            alias: "o",
            key: "order_id",
            cols: vec![
                c("order_id", Int, false),
                c("customer_id", Int, false),
                c("amount", Num, false),
                c("status", Text, false),
                c("shipping_address", Text, true),
                c("ordered_at", Ts, false),
            ],
        },
        Table {
            name: "customer_events",
            alias: "e",
            key: "event_id",
            cols: vec![
                c("event_id", Int, false),
                c("customer_id", Int, false),
                c("event_type", Text, false),
                c("ip_address", Inet, true),
                c("user_agent", Text, true),
                c("occurred_at", Ts, false),
            ],
        },
        Table {
            name: "customer_history",
            alias: "h",
            key: "history_id",
            cols: vec![
                c("history_id", Int, false),
                c("customer_id", Int, false),
                c("changed_at", Ts, false),
                c("email", Text, true),
                c("phone", Text, true),
                c("address", Text, true),
            ],
        },
    ]
}

struct Gen<'a> {
    r: Rng,
    s: &'a [Table],
}

impl Gen<'_> {
    fn col<'t>(&mut self, t: &'t Table, pii_bias: usize) -> &'t Col {
        if self.r.chance(pii_bias) {
            let pii: Vec<&Col> = t.cols.iter().filter(|c| c.pii).collect();
            if !pii.is_empty() {
                return pii[self.r.below(pii.len())];
            }
        }
        self.r.pick(&t.cols)
    }

    /// An expression over a column (qualified by `q`).
    fn expr(&mut self, q: &str, c: &Col) -> String {
        let x = format!("{q}.{}", c.name);
        let t = format!("{x}::text");
        match (c.ty, self.r.below(10)) {
            (_, 0..=2) => x,
            (Ty::Text, 3) => format!("upper({x})"),
            (Ty::Text, 4) => format!("length({x})"),
            (Ty::Text, 5) => format!("left({x}, 3)"),
            (Ty::Text, 6) => format!("reverse({x})"),
            (Ty::Text, 7) => format!("md5({x})"),
            (Ty::Text, 8) => format!("CASE WHEN {x} LIKE 'z%' THEN 1 ELSE 0 END"),
            (Ty::Date, 3 | 4) => format!("extract(year FROM {x})"),
            (Ty::Date, 5) => format!("to_char({x}, 'DD/MM/YYYY')"),
            (Ty::Inet, 3 | 4) => format!("host({x})"),
            (Ty::Num, 3) => format!("round({x})"),
            (Ty::Int, 3) => format!("{x} % 7"),
            (_, 9) => format!("coalesce({t}, 'none')"),
            _ => format!("substr({t}, 2, 5)"),
        }
    }

    /// A predicate on a column of `t`.
    fn pred(&mut self, q: &str, t: &Table) -> String {
        let c = self.col(t, 60);
        let x = format!("{q}.{}", c.name);
        match c.ty {
            Ty::Text => match self.r.below(9) {
                0 => format!("{x} LIKE 'zq%'"),
                1 => format!("{x} LIKE '%a%'"),
                2 => format!(
                    "{x} = '{}'",
                    self.r.pick(&[
                        C_EMAIL,
                        C_FIRST,
                        C_PHONE,
                        C_ADDR,
                        C_HIST_EMAIL,
                        C_SHIP,
                        C_UA,
                        "gold",
                        "Berlin"
                    ])
                ),
                3 => format!("{x} IS NULL"),
                4 => format!("length({x}) > {}", self.r.below(25)),
                5 => format!("{x} ILIKE '%CANARY%'"),
                6 => format!("{x} < 'm'"),
                7 => format!("position('@' in {x}) > 0"),
                _ => format!("{x} ~ '^[A-Z]'"),
            },
            Ty::Date => match self.r.below(3) {
                0 => format!("{x} = '{C_BIRTH}'"),
                1 => format!("{x} < '1970-06-15'"),
                _ => format!("extract(month FROM {x}) = 7"),
            },
            Ty::Inet => match self.r.below(3) {
                0 => format!("{x} = '{C_IP}'"),
                1 => format!("{x} IS NOT NULL"),
                _ => format!("{x} << '10.0.0.0/8'"),
            },
            Ty::Int => format!("{x} % {} = 0", 2 + self.r.below(5)),
            Ty::Num => format!("{x} > {}", self.r.below(500)),
            Ty::Ts => format!("{x} > '2022-06-01'"),
        }
    }

    /// A key range that keeps results small (sometimes the canary range).
    fn range(&mut self, q: &str) -> String {
        if self.r.chance(35) {
            format!("{q}.customer_id BETWEEN 777770 AND 777800")
        } else {
            let a = 1 + self.r.below(9950);
            format!(
                "{q}.customer_id BETWEEN {a} AND {}",
                a + 1 + self.r.below(40)
            )
        }
    }

    fn where_(&mut self, q: &str, t: &Table) -> String {
        let mut w = vec![self.range(q)];
        for _ in 0..self.r.below(3) {
            let p = self.pred(q, t);
            w.push(if self.r.chance(20) {
                format!("NOT ({p})")
            } else {
                p
            });
        }
        let joiner = if self.r.chance(25) { " OR " } else { " AND " };
        let first = w.remove(0);
        if w.is_empty() {
            first
        } else {
            format!("{first} AND ({})", w.join(joiner))
        }
    }

    fn projection(&mut self, q: &str, t: &Table, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let c = self.col(t, 70);
                format!("{} AS p{i}", self.expr(q, c))
            })
            .collect()
    }

    /// Returns (sql, ordered).
    fn statement(&mut self) -> (String, bool) {
        let s = self.s;
        let t = self.r.pick(s);
        let q = t.alias;
        match self.r.below(9) {
            // plain select, maybe ordered by key with LIMIT
            0 | 1 => {
                let n = 1 + self.r.below(4);
                let proj = self.projection(q, t, n).join(", ");
                let w = self.where_(q, t);
                if self.r.chance(40) {
                    (
                        format!(
                            "SELECT {proj} FROM {} {q} WHERE {w} ORDER BY {q}.{} LIMIT {}",
                            t.name,
                            t.key,
                            1 + self.r.below(20)
                        ),
                        true,
                    )
                } else {
                    (
                        format!("SELECT {proj} FROM {} {q} WHERE {w}", t.name),
                        false,
                    )
                }
            }
            // join with customers
            2 => {
                let t2 = &s[0];
                let a = if t.name == "customers" { "c2" } else { "c" };
                let n1 = 1 + self.r.below(2);
                let mut proj = self.projection(q, t, n1);
                proj.extend(
                    {
                        let n2 = 1 + self.r.below(2);
                        self.projection(a, t2, n2)
                    }
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| p.replace(" AS p", &format!(" AS j{i}_"))),
                );
                let w = self.where_(q, t);
                let kind = self.r.pick(&["JOIN", "LEFT JOIN"]);
                let extra = if self.r.chance(50) {
                    format!(" AND {}", self.pred(a, t2))
                } else {
                    String::new()
                };
                (
                    format!("SELECT {} FROM {} {q} {kind} customers {a} ON {a}.customer_id = {q}.customer_id{extra} WHERE {w}", proj.join(", "), t.name),
                    false,
                )
            }
            // aggregate
            3 => {
                let g = self.col(t, 60);
                let ge = self.expr(q, g);
                let v = self.col(t, 60);
                let ve = self.expr(q, v);
                let agg = match self.r.below(5) {
                    0 => format!("count(DISTINCT {ve})"),
                    1 => format!("min({ve})"),
                    2 => format!("max({ve})"),
                    3 => format!("string_agg(({ve})::text, ',' ORDER BY ({ve})::text)"),
                    _ => "count(*)".to_string(),
                };
                let having = if self.r.chance(30) {
                    " HAVING count(*) > 1".to_string()
                } else {
                    String::new()
                };
                let w = if self.r.chance(30) {
                    self.pred(q, t)
                } else {
                    self.where_(q, t)
                };
                (format!("SELECT {ge} AS g, {agg} AS a, count(*) AS n FROM {} {q} WHERE {w} GROUP BY 1{having}", t.name), false)
            }
            // IN / EXISTS subquery over another table
            4 => {
                let t2 = self.r.pick(s);
                let q2 = if t2.alias == q { "s2" } else { t2.alias };
                let n3 = 1 + self.r.below(3);
                let proj = self.projection(q, t, n3).join(", ");
                let sub_pred = self.pred(q2, t2);
                let range = self.range(q);
                if self.r.chance(50) {
                    (format!("SELECT {proj} FROM {} {q} WHERE {range} AND {q}.customer_id IN (SELECT {q2}.customer_id FROM {} {q2} WHERE {sub_pred})", t.name, t2.name), false)
                } else {
                    (format!("SELECT {proj} FROM {} {q} WHERE {range} AND EXISTS (SELECT 1 FROM {} {q2} WHERE {q2}.customer_id = {q}.customer_id AND {sub_pred})", t.name, t2.name), false)
                }
            }
            // CTE
            5 => {
                let w = self.where_(q, t);
                let inner = self.projection(q, t, 2).join(", ");
                let mat = if self.r.chance(50) {
                    "MATERIALIZED "
                } else {
                    ""
                };
                let outer = match self.r.below(3) {
                    0 => "SELECT * FROM x".to_string(),
                    1 => "SELECT count(*), count(DISTINCT p0), min(p1::text) FROM x".to_string(),
                    _ => "SELECT p1, count(*) FROM x GROUP BY p1".to_string(),
                };
                (
                    format!(
                        "WITH x AS {mat}(SELECT {inner} FROM {} {q} WHERE {w}) {outer}",
                        t.name
                    ),
                    false,
                )
            }
            // set operation on a text expression
            6 => {
                let t2 = self.r.pick(s);
                let c1 = self.col(t, 80);
                let c2 = self.col(t2, 80);
                let e1 = self.expr(q, c1);
                let e2 = self.expr(t2.alias, c2);
                let w1 = self.where_(q, t);
                let w2 = self.where_(t2.alias, t2);
                let op = self.r.pick(&["UNION", "UNION ALL", "INTERSECT", "EXCEPT"]);
                (format!("SELECT ({e1})::text AS v FROM {} {q} WHERE {w1} {op} SELECT ({e2})::text FROM {} {} WHERE {w2}", t.name, t2.name, t2.alias), false)
            }
            // scalar subquery and window function
            7 => {
                let c = self.col(t, 70);
                let e = self.expr(q, c);
                let w = self.where_(q, t);
                let sub = format!("(SELECT max(cc.email) FROM customers cc WHERE cc.customer_id = {q}.customer_id)");
                (
                    format!("SELECT {q}.{k}, {e} AS v, {sub} AS m, rank() OVER (ORDER BY ({e})::text, {q}.{k}) AS r FROM {} {q} WHERE {w}", t.name, k = t.key),
                    false,
                )
            }
            // counting oracle over the whole table
            _ => {
                let p = self.pred(q, t);
                let p2 = if self.r.chance(40) {
                    format!(" OR {}", self.pred(q, t))
                } else {
                    String::new()
                };
                (
                    format!("SELECT count(*) FROM {} {q} WHERE {p}{p2}", t.name),
                    false,
                )
            }
        }
    }
}

/// Why statement `i` is known to fail, if it is (an ignored trial).
fn known(i: usize) -> Option<&'static str> {
    KNOWN_FAILING
        .iter()
        .find(|(k, _)| *k == i)
        .map(|(_, why)| *why)
}

/// One session through the proxy as `support`, one on the twin: every statement runs on these
/// two, in order, as in one session of the old loop.
struct Sessions {
    proxy: (tokio_postgres::Client, Captured),
    twin: (tokio_postgres::Client, Captured),
}

/// The campaign's shared state: the two sessions (opened by the first statement) and the counts
/// `suite::totals` prints (it runs last).
#[derive(Default)]
struct State {
    sessions: Option<Arc<Sessions>>,
    executed: usize,
    refused: usize,
    leaks: usize,
    mismatches: usize,
    errors_equal: usize,
    poison_sample: usize,
    poison_mismatch: usize,
    poison_canary: usize,
}

type Kit = support::adv::Kit<State>;

async fn sessions(kit: &Kit, fx: &Fixture) -> Arc<Sessions> {
    if let Some(s) = &kit.totals().sessions {
        return s.clone();
    }
    let s = Arc::new(Sessions {
        proxy: fx.proxy("support").await.expect("proxy"),
        twin: fx.twin().await,
    });
    kit.totals().sessions = Some(s.clone());
    s
}

/// A custom harness (libtest-mimic): one trial per generated statement, `stmt-NNNN::simple` or
/// `stmt-NNNN::extended` (odd statements run over the extended protocol), so
/// `cargo test --test campaign stmt-0042` runs one; known failures are ignored trials.
/// `suite::generator` checks the generator is reproducible, `poison::sample` that the oracles
/// fire without masking, `suite::totals` prints the counts of the trials that ran.
fn main() {
    let mut args = Arguments::from_args();
    // One at a time, in order: every statement runs in the same two sessions, as in the old loop.
    args.test_threads = Some(1);
    let seed = std::env::var("PGREDACT_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SEED);
    let n: usize = std::env::var("PGREDACT_CAMPAIGN_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500);
    let s = schema();
    let mut g = Gen {
        r: Rng(seed | 1),
        s: &s,
    };
    let stmts: Arc<Vec<(String, bool)>> = Arc::new((0..n).map(|_| g.statement()).collect());
    let kit = Arc::new(Kit::new());
    let mut trials = vec![Trial::test("suite::generator", {
        let stmts = stmts.clone();
        move || {
            // Reproducible: the same seed gives the same statements.
            let s = schema();
            let mut g2 = Gen {
                r: Rng(seed | 1),
                s: &s,
            };
            assert_eq!(g2.statement(), stmts[0]);
            Ok(())
        }
    })];
    for i in 0..stmts.len() {
        let extended = i % 2 == 1;
        let proto = if extended { "extended" } else { "simple" };
        let why = known(i);
        let (kit, stmts) = (kit.clone(), stmts.clone());
        trials.push(
            Trial::test(format!("stmt-{i:04}::{proto}"), move || {
                if let Some(why) = why {
                    println!("KNOWN #{i}: {why}");
                }
                let (sql, ordered) = &stmts[i];
                let failures = kit.block_on(|fx| statement(&kit, fx, i, sql, *ordered, extended));
                if failures.is_empty() {
                    return Ok(());
                }
                for f in &failures {
                    println!("{f}");
                }
                Err(failures.join("\n").into())
            })
            .with_ignored_flag(why.is_some()),
        );
    }
    trials.push(Trial::test("poison::sample", {
        let (kit, stmts) = (kit.clone(), stmts.clone());
        move || kit.block_on(|fx| poison(&kit, fx, &stmts))
    }));
    trials.push(Trial::test("suite::totals", {
        let kit = kit.clone();
        move || {
            let t = kit.totals();
            println!(
                "campaign seed={seed:#x}: generated {}, executed {} (x2: proxy and twin), refused {}, equal errors {}, leaks {}, twin mismatches {}; poison sample {}: twin oracle fired {}, canary oracle fired {}",
                stmts.len(), t.executed, t.refused, t.errors_equal, t.leaks, t.mismatches, t.poison_sample, t.poison_mismatch, t.poison_canary
            );
            Ok(())
        }
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    Kit::shut_down(kit);
    conclusion.exit();
}

/// Statement `i` through the proxy and on the twin: equal answers (or a 42501 refusal), no
/// canary.
async fn statement(
    kit: &Kit,
    fx: Arc<Fixture>,
    i: usize,
    sql: &str,
    ordered: bool,
    extended: bool,
) -> Vec<String> {
    let s = sessions(kit, &fx).await;
    let ((p, pcap), (t, tcap)) = (&s.proxy, &s.twin);
    let a = if extended {
        run_extended(p, pcap, sql).await
    } else {
        run_simple(p, pcap, sql).await
    };
    let b = if extended {
        run_extended(t, tcap, sql).await
    } else {
        run_simple(t, tcap, sql).await
    };
    let mut failures = Vec::new();
    let mut k = kit.totals();
    k.executed += 1;
    let hits = fx.canaries.hits(sql, &a.visible);
    if !hits.is_empty() {
        k.leaks += 1;
        failures.push(format!("#{i} LEAK {hits:?}\n    {sql}"));
    }
    if a.outcome.is_refusal() {
        k.refused += 1;
    } else if !twin_agrees(&a.outcome, &b.outcome, ordered) {
        k.mismatches += 1;
        failures.push(format!(
            "#{i} TWIN MISMATCH ({}) proxy={} twin={}\n    {sql}",
            if extended { "extended" } else { "simple" },
            a.outcome.short(),
            b.outcome.short()
        ));
    } else if matches!(a.outcome, Outcome::Err { .. }) {
        k.errors_equal += 1;
    }
    failures
}

/// Poison control: the same generator's statements directly on `app`, unmasked, must trip both
/// oracles.
async fn poison(kit: &Kit, fx: Arc<Fixture>, stmts: &[(String, bool)]) -> Result<(), Failed> {
    let s = sessions(kit, &fx).await;
    let (t, tcap) = &s.twin;
    let (d, dcap) = fx.direct(RAW_ROLE, "app").await;
    let mut poison_mismatch = 0;
    let mut poison_canary = 0;
    let sample = 400.min(stmts.len());
    for (sql, ordered) in stmts.iter().take(sample) {
        let a = run_simple(&d, &dcap, sql).await;
        let b = run_simple(t, tcap, sql).await;
        if !twin_agrees(&a.outcome, &b.outcome, *ordered) {
            poison_mismatch += 1;
        }
        if !fx.canaries.hits(sql, &a.visible).is_empty() {
            poison_canary += 1;
        }
    }
    let mut k = kit.totals();
    k.poison_sample = sample;
    k.poison_mismatch = poison_mismatch;
    k.poison_canary = poison_canary;
    assert!(
        poison_mismatch > 0 && poison_canary > 0,
        "poison control: without masking the oracles must fire"
    );
    Ok(())
}
