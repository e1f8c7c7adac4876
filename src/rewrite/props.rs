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

/// Columns of the fixture's `customers` table.
const CUSTOMER_COLUMNS: &[&str] = &[
    "customer_id",
    "first_name",
    "email",
    "phone",
    "birth_date",
    "tier",
];

/// Tables of the fixture schema the generated SQL reads, with their columns.
const TABLES: &[(&str, &[&str])] = &[
    ("customers", CUSTOMER_COLUMNS),
    ("public.customers", CUSTOMER_COLUMNS),
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

/// Generated SQL as a small tree, so that proptest shrinks a failing statement to a minimal one
/// (fewer clauses, shallower subqueries, the first table and column). Column choices are
/// [`Index`]es, valid whatever table they land on.
mod gen {
    use super::TABLES;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// Subqueries nest at most this deep.
    const MAX_DEPTH: u32 = 3;

    #[derive(Debug, Clone)]
    pub(super) enum Expr {
        Col(Index),
        Upper(Index),
        Length(Index),
        Coalesce(Index),
        Md5(Index),
        CountStar,
        CountOf(Box<From>),
    }

    #[derive(Debug, Clone)]
    pub(super) enum From {
        Table(usize),
        Sub(Box<Select>),
    }

    #[derive(Debug, Clone)]
    pub(super) struct Select {
        table: usize,
        item: Expr,
        join: Option<(usize, Index, Index)>,
        filter: Option<Expr>,
        union: Option<From>,
        cte: bool,
    }

    #[derive(Debug, Clone)]
    pub(super) enum Statement {
        Select(Select),
        Update(Select),
        Copy(Select),
        Insert(Select),
        Delete(Select),
    }

    fn expr(depth: u32) -> BoxedStrategy<Expr> {
        let leaves = prop_oneof![
            3 => any::<Index>().prop_map(Expr::Col),
            1 => any::<Index>().prop_map(Expr::Upper),
            1 => any::<Index>().prop_map(Expr::Length),
            1 => any::<Index>().prop_map(Expr::Coalesce),
            1 => any::<Index>().prop_map(Expr::Md5),
            1 => Just(Expr::CountStar),
        ];
        if depth >= MAX_DEPTH {
            return leaves.boxed();
        }
        prop_oneof![
            8 => leaves,
            1 => from(depth + 1).prop_map(|f| Expr::CountOf(Box::new(f))),
        ]
        .boxed()
    }

    fn from(depth: u32) -> BoxedStrategy<From> {
        let table = (0..TABLES.len()).prop_map(From::Table);
        if depth >= MAX_DEPTH {
            return table.boxed();
        }
        prop_oneof![3 => table, 1 => select(depth + 1).prop_map(|s| From::Sub(Box::new(s)))].boxed()
    }

    pub(super) fn select(depth: u32) -> BoxedStrategy<Select> {
        let union = if depth < 2 {
            proptest::option::of(from(depth + 1)).boxed()
        } else {
            Just(None).boxed()
        };
        let cte = if depth == 0 {
            any::<bool>().boxed()
        } else {
            Just(false).boxed()
        };
        (
            0..TABLES.len(),
            expr(depth),
            proptest::option::of((0..TABLES.len(), any::<Index>(), any::<Index>())),
            proptest::option::of(expr(depth)),
            union,
            cte,
        )
            .prop_map(|(table, item, join, filter, union, cte)| Select {
                table,
                item,
                join,
                filter,
                union,
                cte,
            })
            .boxed()
    }

    pub(super) fn statement() -> BoxedStrategy<Statement> {
        prop_oneof![
            4 => select(0).prop_map(Statement::Select),
            1 => select(1).prop_map(Statement::Update),
            1 => select(1).prop_map(Statement::Copy),
            1 => select(1).prop_map(Statement::Insert),
            1 => select(1).prop_map(Statement::Delete),
        ]
        .boxed()
    }

    fn col(cols: &[&str], i: &Index) -> String {
        cols[i.index(cols.len())].to_string()
    }

    impl Expr {
        fn sql(&self, alias: &str, cols: &[&str], depth: u32) -> String {
            let c = |i: &Index| format!("{alias}.{}", col(cols, i));
            match self {
                Expr::Col(i) => c(i),
                Expr::Upper(i) => format!("upper(CAST({} AS text))", c(i)),
                Expr::Length(i) => format!("length(CAST({} AS text))", c(i)),
                Expr::Coalesce(i) => format!("coalesce(CAST({} AS text), 'x')", c(i)),
                Expr::Md5(i) => format!("md5(CAST({} AS text))", c(i)),
                Expr::CountStar => "count(*)".into(),
                Expr::CountOf(f) => format!("(SELECT count(*) FROM {})", f.sql(depth + 1)),
            }
        }
    }

    impl From {
        fn sql(&self, depth: u32) -> String {
            match self {
                From::Table(t) => TABLES[*t].0.to_string(),
                From::Sub(s) => format!("({}) AS sub{depth}", s.sql(depth + 1)),
            }
        }
    }

    impl Select {
        pub(super) fn sql(&self, depth: u32) -> String {
            let (t, cols) = TABLES[self.table];
            let a = format!("t{depth}");
            let mut s = format!("SELECT {} FROM {t} {a}", self.item.sql(&a, cols, depth));
            if let Some((t2, ca, cb)) = &self.join {
                let (t2, cols2) = TABLES[*t2];
                let b = format!("u{depth}");
                s.push_str(&format!(
                    " JOIN {t2} {b} ON CAST({a}.{} AS text) = CAST({b}.{} AS text)",
                    col(cols, ca),
                    col(cols2, cb)
                ));
            }
            if let Some(e) = &self.filter {
                s.push_str(&format!(
                    " WHERE CAST({} AS text) LIKE 'a%'",
                    e.sql(&a, cols, depth)
                ));
            }
            if let Some(f) = &self.union {
                s.push_str(&format!(" UNION ALL SELECT 'x' FROM {}", f.sql(depth + 1)));
            }
            if self.cte {
                s = format!("WITH w AS ({s}) SELECT * FROM w");
            }
            s
        }
    }

    impl Statement {
        pub(super) fn sql(&self) -> String {
            match self {
                Statement::Select(s) => s.sql(0),
                Statement::Update(s) => format!(
                    "UPDATE customers SET tier = 'x' WHERE customer_id IN ({})",
                    s.sql(1)
                ),
                Statement::Copy(s) => format!("COPY ({}) TO STDOUT", s.sql(1)),
                Statement::Insert(s) => format!("INSERT INTO orders (customer_id) {}", s.sql(1)),
                Statement::Delete(s) => {
                    format!("DELETE FROM orders WHERE EXISTS ({})", s.sql(1))
                }
            }
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
    fn generated_queries_read_every_masked_table_through_its_view(st in gen::statement()) {
        let sql = st.sql();
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
