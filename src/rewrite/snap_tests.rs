//! Snapshot of the rewriter's decisions over a fixed corpus (insta): every pass, rewritten text
//! and refusal (kind, message, hint) is in `snapshots/`, so a change of any of them shows up as
//! a reviewable diff (`cargo insta review`, or `INSTA_UPDATE=always cargo test` and `git diff`).

use super::tests::run;
use super::*;

/// Statements of a support session over the fixture schema: reads, writes, COPY, settings,
/// catalog reads, and the refusals a user meets.
const CORPUS: &[&str] = &[
    // Reads of tables with PII are rewritten onto the masking views.
    "SELECT * FROM customers",
    "SELECT customer_id, email FROM customers WHERE tier = 'gold' ORDER BY customer_id LIMIT 5",
    "SELECT c.email, o.amount FROM customers c JOIN orders o USING (customer_id)",
    "SELECT count(*) FROM ONLY customers",
    "SELECT * FROM public.customers AS \"C\"",
    "WITH gold AS (SELECT * FROM customers WHERE tier = 'gold') SELECT email FROM gold",
    "SELECT email FROM customers UNION SELECT 'x'",
    "SELECT (SELECT max(email) FROM customers) AS m",
    "SELECT * FROM customer_events e WHERE e.customer_id IN (SELECT customer_id FROM customers)",
    "SELECT ip_address FROM customer_events_2024",
    "TABLE customers",
    "SELECT tier, count(*) FROM customers GROUP BY tier",
    "SELECT * FROM customers TABLESAMPLE BERNOULLI (10)",
    // No PII: passed byte for byte.
    "SELECT 1",
    "SELECT order_id, amount FROM orders WHERE amount > 10",
    "SELECT now(), current_user",
    // Writes.
    "UPDATE customers SET tier = 'gold' WHERE customer_id = 1",
    "UPDATE customers SET email = 'x@example.com' WHERE customer_id = 1",
    "UPDATE customers SET tier = 'gold' WHERE email = 'a@example.com'",
    "UPDATE customers SET tier = 'gold' WHERE customer_id = 1 RETURNING *",
    "UPDATE customers SET tier = 'gold' WHERE customer_id = 1 RETURNING customer_id, tier",
    "INSERT INTO customers (customer_id, tier) VALUES (99, 'standard')",
    "INSERT INTO customers (customer_id, email) VALUES (99, 'x@example.com')",
    "INSERT INTO orders (customer_id) SELECT customer_id FROM customers",
    "DELETE FROM customers WHERE customer_id = 1",
    "DELETE FROM orders WHERE customer_id IN (SELECT customer_id FROM customers WHERE tier = 'x')",
    // COPY.
    "COPY customers TO STDOUT",
    "COPY (SELECT email FROM customers) TO STDOUT WITH (FORMAT csv)",
    "COPY customers FROM STDIN",
    "COPY orders TO STDOUT",
    // Settings and session.
    "SET search_path = public",
    "SET enable_seqscan = off",
    "SET application_name = 'psql'",
    "RESET ALL",
    "SHOW search_path",
    // Catalog, functions, system columns.
    "SELECT * FROM pg_stats WHERE tablename = 'customers'",
    "SELECT ctid, email FROM customers",
    "SELECT query_to_xml('select * from customers', true, true, '')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT * FROM customers c WHERE c.email ~ '^a'",
    "EXPLAIN SELECT * FROM customers",
    "PREPARE q AS SELECT email FROM customers WHERE customer_id = $1",
    "CREATE TABLE stolen AS SELECT * FROM customers",
    "CREATE VIEW v AS SELECT email FROM customers",
    "DO $$ BEGIN PERFORM 1; END $$",
    "SELECT * FROM customers; SELECT 1",
    "SELEC * FROM customers",
];

fn describe(sql: &str) -> String {
    let decision = match run(sql).decision {
        Decision::Pass => "pass".to_string(),
        Decision::Rewrite(text) => format!("rewrite: {text}"),
        Decision::Refuse(r) => {
            let mut s = format!("refuse [{}]: {}", r.kind.label(), r.message);
            if let Some(h) = r.hint {
                s.push_str(&format!("\n   hint: {h}"));
            }
            s
        }
    };
    format!("{sql}\n=> {decision}")
}

#[test]
fn decisions_over_the_corpus() {
    let all: Vec<String> = CORPUS.iter().map(|sql| describe(sql)).collect();
    insta::assert_snapshot!(all.join("\n\n"));
}
