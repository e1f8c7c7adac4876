//! Property tests of the rewriter: it never panics; what it accepts re-parses; and in every
//! accepted statement each masked table is read through its masking view (the one reference
//! left may be the target of an approved write).

use super::names::name_parts;
use super::tests::{fixture, path};
use super::*;
use proptest::prelude::*;
use sqlparser::ast::{ObjectName, Statement, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// Small deterministic generator of SQL over the fixture schema.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[(self.next() % v.len() as u64) as usize]
    }
    fn chance(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
    fn table(&mut self) -> (&'static str, &'static [&'static str]) {
        const T: &[(&str, &[&str])] = &[
            (
                "customers",
                &[
                    "customer_id",
                    "first_name",
                    "email",
                    "phone",
                    "birth_date",
                    "tier",
                ],
            ),
            (
                "public.customers",
                &[
                    "customer_id",
                    "first_name",
                    "email",
                    "phone",
                    "birth_date",
                    "tier",
                ],
            ),
            ("ONLY customers", &["customer_id", "email", "tier"]),
            ("\"customers\"", &["customer_id", "email", "tier"]),
            ("orders", &["order_id", "customer_id", "amount"]),
            (
                "customer_events",
                &["event_id", "customer_id", "ip_address"],
            ),
            (
                "customer_events_2024",
                &["event_id", "customer_id", "ip_address"],
            ),
            ("crm.\"Contacts\"", &["id", "\"Email\""]),
        ];
        T[(self.next() % T.len() as u64) as usize]
    }
    fn expr(&mut self, alias: &str, cols: &[&str], depth: u32) -> String {
        let c = format!("{alias}.{}", self.pick(cols));
        match self.next() % 9 {
            0 => format!("upper(CAST({c} AS text))"),
            1 => format!("length(CAST({c} AS text))"),
            2 => format!("coalesce(CAST({c} AS text), 'x')"),
            3 if depth < 3 => format!("(SELECT count(*) FROM {})", self.from(depth + 1)),
            4 => format!("md5(CAST({c} AS text))"),
            5 => "count(*)".into(),
            _ => c,
        }
    }
    fn from(&mut self, depth: u32) -> String {
        let (t, _) = self.table();
        if depth < 3 && self.chance(4) {
            return format!("({}) AS sub{depth}", self.select(depth + 1));
        }
        t.to_string()
    }
    fn select(&mut self, depth: u32) -> String {
        let (t, cols) = self.table();
        let a = format!("t{depth}");
        let mut s = format!("SELECT {} FROM {t} {a}", self.expr(&a, cols, depth));
        if self.chance(2) {
            let (t2, cols2) = self.table();
            let b = format!("u{depth}");
            s.push_str(&format!(
                " JOIN {t2} {b} ON CAST({a}.{} AS text) = CAST({b}.{} AS text)",
                self.pick(cols),
                self.pick(cols2)
            ));
        }
        if self.chance(2) {
            let e = self.expr(&a, cols, depth);
            s.push_str(&format!(" WHERE CAST({e} AS text) LIKE 'a%'"));
        }
        if depth < 2 && self.chance(3) {
            s.push_str(&format!(
                " UNION ALL SELECT 'x' FROM {}",
                self.from(depth + 1)
            ));
        }
        if depth == 0 && self.chance(3) {
            s = format!("WITH w AS ({s}) SELECT * FROM w");
        }
        s
    }
    fn statement(&mut self) -> String {
        match self.next() % 6 {
            0 => format!(
                "UPDATE customers SET tier = 'x' WHERE customer_id IN ({})",
                self.select(1)
            ),
            1 => format!("COPY ({}) TO STDOUT", self.select(1)),
            2 => format!("INSERT INTO orders (customer_id) {}", self.select(1)),
            3 => format!("DELETE FROM orders WHERE EXISTS ({})", self.select(1)),
            _ => self.select(0),
        }
    }
}

/// Counts references to masked relations themselves (not their masking views).
pub(super) fn unmasked_refs(stmt: &Statement, p: &Protections, sp: &[String]) -> usize {
    struct UnmaskedRefCounter<'a> {
        p: &'a Protections,
        sp: &'a [String],
        bad: usize,
    }
    impl Visitor for UnmaskedRefCounter<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            let parts = name_parts(r).unwrap_or_default();
            let rel = match parts.as_slice() {
                [t] => self.p.catalog.resolve(self.sp, t),
                [s, t] | [_, s, t] => self.p.catalog.lookup(s, t),
                _ => None,
            };
            if let Some(rel) = rel {
                if matches!(self.p.get(rel), Some(Protection::Mask(_))) {
                    self.bad += 1;
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = UnmaskedRefCounter { p, sp, bad: 0 };
    let _ = stmt.visit(&mut v);
    v.bad
}

fn reparse(sql: &str) -> Vec<Statement> {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .unwrap_or_else(|e| panic!("accepted text does not re-parse: {e}\n{sql}"))
}

fn check_invariants(sql: &str) -> Decision {
    let p = fixture();
    let sp = path();
    let out = rewrite(
        sql,
        &SessionCtx {
            prot: &p,
            search_path: &sp,
            path_at_start: true,
        },
    );
    let text = match &out.decision {
        Decision::Pass => sql.to_string(),
        Decision::Rewrite(s) => s.clone(),
        Decision::Refuse(_) => return out.decision,
    };
    for st in reparse(&text) {
        let is_masked_write = matches!(
            st,
            Statement::Update(_) | Statement::Insert(_) | Statement::Delete(_)
        );
        let bad = unmasked_refs(&st, &p, &sp);
        // An approved write target is the one allowed direct reference.
        let allowed = usize::from(is_masked_write);
        assert!(
            bad <= allowed,
            "masked table referenced instead of its masking view:\n{sql}\n=>\n{text}"
        );
        if !is_masked_write {
            assert_eq!(bad, 0, "{sql}\n=>\n{text}");
        }
    }
    out.decision
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_text(s in ".{0,200}") {
        let _ = check_invariants(&s);
    }

    #[test]
    fn never_panics_on_sql_token_soup(tokens in proptest::collection::vec(prop_oneof![
        Just("SELECT"), Just("FROM"), Just("customers"), Just("email"), Just("("), Just(")"),
        Just("WHERE"), Just("="), Just("'x'"), Just("$$"), Just("U&\"a\""), Just(";"), Just("/*"),
        Just("*/"), Just("--"), Just("E'\\''"), Just(","), Just("*"), Just("c"), Just("AS"),
        Just("UPDATE"), Just("SET"), Just("tier"), Just("JOIN"), Just("ON"), Just("ONLY"),
        Just("WITH"), Just("UNION"), Just("TABLE"), Just("COPY"), Just("TO"), Just("STDOUT"),
        Just("$1"), Just("query_to_xml"), Just("pg_stats"), Just("\n"), Just("public."),
    ], 0..30)) {
        let _ = check_invariants(&tokens.join(" "));
    }

    #[test]
    fn generated_queries_read_every_masked_table_through_its_view(seed in 1u64..u64::MAX) {
        let mut g = Gen(seed);
        let sql = g.statement();
        let d = check_invariants(&sql);
        // Generated SQL only uses allowed constructs: it must not be refused.
        prop_assert!(!matches!(d, Decision::Refuse(_)), "{} => {:?}", sql, d);
    }
}

#[test]
fn the_invariant_checker_can_fire() {
    let p = fixture();
    let sp = path();
    let raw = reparse("SELECT * FROM customers c JOIN orders o USING (customer_id) WHERE EXISTS (SELECT 1 FROM ONLY customer_events_2024)");
    assert_eq!(unmasked_refs(&raw[0], &p, &sp), 2);
    let Decision::Rewrite(t) = rewrite("SELECT * FROM customers c JOIN orders o USING (customer_id) WHERE EXISTS (SELECT 1 FROM ONLY customer_events_2024)", &SessionCtx { prot: &p, search_path: &sp, path_at_start: true  }).decision else {
        panic!("expected a rewrite");
    };
    assert_eq!(unmasked_refs(&reparse(&t)[0], &p, &sp), 0);
}
