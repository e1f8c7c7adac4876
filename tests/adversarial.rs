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

#[derive(Debug, PartialEq)]
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

/// The protocols a known failure fails over: the twin oracle (tokio-postgres through the
/// proxy), or the canary oracle straight against PostgreSQL.
const TWIN: &[&str] = &["simple", "extended"];
const DIRECT: &[&str] = &["direct-simple", "direct-extended"];

/// Known failures: (case id, the protocols it fails over, what happens).
type LegacyKnown = &'static [(&'static str, &'static [&'static str], &'static str)];

/// Cases that still leak or disagree with the twin on main: their trials over these protocols are
/// ignored (`cargo test --test adversarial -- --ignored` runs them).
const KNOWN_FAILING: LegacyKnown = &[
    // dynamic SQL and indirection
    // relations that hide a policy table
    ("relations-036", &["simple"], "BY DESIGN, no leak: after CREATE TEMP TABLE customers, PostgreSQL would read pg_temp.customers but the proxy always substitutes the masked public.customers (over-masking, never under-masking)"),
    // error and notice channels
    // write-side oracles
    // lexical games
    ("lexical-004", TWIN, "TEST ARTIFACT, no leak: app.public.customers names the current database on app (masked rows) but a foreign one on the twin, where PostgreSQL raises 0A000"),
    ("lexical-005", TWIN, "TWIN MISMATCH (no leak): same with \"app\".\"public\".\"customers\""),
    // oracle-style
    // specials
];

/// Cases that show a canary when run straight against PostgreSQL as the masked role, because
/// PostgreSQL has no privilege that could stop them: their direct trials are ignored.
const DIRECT_KNOWN: LegacyKnown = &[
    ("errors-015", DIRECT, "PostgreSQL cannot stop it: the DBA's own trigger zq_audit runs for every writer and RAISEs a PII column in a NOTICE (pgredact scrubs that message; `pgredact check` warns about user triggers on protected tables)"),
    ("errors-016", DIRECT, "PostgreSQL cannot stop it: the same trigger RAISEs PII in an ERROR's message, DETAIL and HINT"),
    ("catalog-015", DIRECT, "TEST ARTIFACT, no leak: pg_stat_statements shows a role only the statements it ran itself; the canary literals are in earlier attack statements support sent"),
    ("catalog-016", DIRECT, "TEST ARTIFACT, no leak: same view, schema-qualified"),
    ("catalog-017", DIRECT, "TEST ARTIFACT, no leak: same, through the function"),
];

fn legacy_cases() -> Vec<Case> {
    use Or::*;
    use Poison::*;
    use Role::*;
    let lt = LONG_TABLE;
    let lc = LONG_COLUMN;
    let mut nested = "SELECT email FROM customers WHERE customer_id = 777777".to_string();
    for _ in 0..60 {
        nested = format!("SELECT * FROM ({nested}) AS q");
    }
    let raw: Vec<(&str, Role, Or, Poison, String)> = vec![
        // ---------- dynamic SQL and indirection ----------
        ("dynamic", S, C, Canary, "SELECT query_to_xml('select email from customers where customer_id = 777777', true, false, '')".into()),
        ("dynamic", S, C, Canary, "SELECT pg_catalog.query_to_xml('select * from public.customers where customer_id=777777', true, false, '')".into()),
        ("dynamic", S, C, Canary, "SELECT query_to_xml_and_xmlschema('select email from customers where customer_id = 777777', true, false, '')".into()),
        ("dynamic", S, C, Canary, "SELECT table_to_xml('public.vip_customers'::regclass, true, false, '')".into()),
        ("dynamic", S, C, No, "SELECT schema_to_xml('public', true, false, '')".into()),
        ("dynamic", S, C, No, "SELECT database_to_xml(true, false, '')".into()),
        ("dynamic", S, C, Canary, "SELECT * FROM ts_stat('select to_tsvector(''simple'', first_name) from customers where customer_id = 777777')".into()),
        ("dynamic", S, C, Canary, "SELECT ts_rewrite('a'::tsquery, 'select ''a''::tsquery, plainto_tsquery(''simple'', first_name) from customers where customer_id = 777777')".into()),
        ("dynamic", S, C, No, "SELECT * FROM dblink('dbname=app user=dba', 'select email from customers where customer_id = 777777') AS t(e text)".into()),
        ("dynamic", S, C, No, "SELECT dblink_connect('zq', 'dbname=app user=dba')".into()),
        ("dynamic", S, C, Canary, "SELECT dblink_build_sql_insert('customers', '1', 1, '{777777}', '{777777}')".into()),
        ("dynamic", S, C, Canary, "SELECT public.dblink_build_sql_update('customers', '1', 1, '{777777}', '{777777}')".into()),
        ("dynamic", S, C, Canary, "SELECT * FROM crosstab('select email::text, 1::text, 1::text from customers where customer_id = 777777') AS t(e text, v text)".into()),
        ("dynamic", S, C, Canary, "SELECT * FROM xpath_table('customer_id', '''<a>''||email||''</a>''', 'customers', '/a', 'customer_id = 777777') AS t(id text, e text)".into()),
        ("dynamic", S, C, Canary, "DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM customers WHERE customer_id = 777777); END $$".into()),
        ("dynamic", S, C, Canary, "DO LANGUAGE plpgsql $x$ BEGIN RAISE NOTICE '%', (SELECT phone FROM customers WHERE customer_id = 777777); END $x$".into()),
        ("dynamic", S, C, Canary, "CREATE FUNCTION pg_temp.zq_f() RETURNS text LANGUAGE sql AS $$ SELECT email FROM customers WHERE customer_id = 777777 $$; SELECT pg_temp.zq_f()".into()),
        ("dynamic", S, C, Canary, "CREATE PROCEDURE pg_temp.zq_p() LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE '%', (SELECT email FROM customers WHERE customer_id = 777777); END $$; CALL pg_temp.zq_p()".into()),
        ("dynamic", S, C, Canary, "CALL public.zq_proc()".into()),
        ("dynamic", S, T, No, "PREPARE zq_p1 AS SELECT email FROM customers WHERE customer_id = 777777; EXECUTE zq_p1".into()),
        ("dynamic", S, T, No, "PREPARE zq_p2(bigint) AS SELECT * FROM customers WHERE customer_id = $1; EXECUTE zq_p2(777777)".into()),
        ("dynamic", S, T, Twin, "PREPARE zq_p3(text) AS SELECT count(*) FROM customers WHERE email = $1; EXECUTE zq_p3('zq.canary.77@leak-test.example')".into()),
        ("dynamic", L, T, Twin, "PREPARE zq_p4 AS UPDATE customers SET tier = tier WHERE email LIKE 'zq.canary%'; EXECUTE zq_p4".into()),
        ("dynamic", S, T, No, "BEGIN; DECLARE zq_c CURSOR FOR SELECT * FROM customers WHERE customer_id >= 777777; FETCH ALL FROM zq_c; COMMIT".into()),
        ("dynamic", S, T, No, "BEGIN; DECLARE zq_c CURSOR WITH HOLD FOR SELECT email, phone FROM customers WHERE customer_id = 777777; COMMIT; FETCH ALL zq_c".into()),
        ("dynamic", S, C, No, "BEGIN; DECLARE zq_c CURSOR FOR SELECT email FROM customers WHERE customer_id = 777777; SELECT cursor_to_xml('zq_c', 10, true, false, ''); COMMIT".into()),
        ("dynamic", S, C, Canary, "SELECT public.zq_get_email(777777)".into()),
        ("dynamic", S, C, Canary, "SELECT zq_get_email(777777)".into()),
        ("dynamic", S, C, Canary, "SELECT * FROM zq_emails()".into()),
        ("dynamic", S, C, Canary, "SELECT \"zq_get_email\"(777777)".into()),
        ("dynamic", S, C, Canary, "SELECT zq_get_email(id => 777777)".into()),
        ("dynamic", S, C, Canary, "SELECT zq_pc_email(777777)".into()),
        ("dynamic", S, C, Canary, "SELECT pg_catalog.zq_pc_email(777777)".into()),
        ("dynamic", S, C, Canary, "SELECT count(*) FROM customers WHERE zq_notice_email(customer_id) AND customer_id = 777777".into()),
        ("dynamic", S, C, No, "SELECT customer_id FROM customers WHERE customer_id >= 777777 ORDER BY zq_get_email(customer_id) LIMIT 1".into()),
        ("dynamic", S, C, No, "SELECT app.public.zq_get_email(777777)".into()),
        ("dynamic", S, C, Canary, "SELECT 777777::bigint LIKE 'x'".into()),
        ("dynamic", S, C, Canary, "SELECT (777777::bigint LIKE 'x') AS e FROM customers WHERE customer_id = 1".into()),
        ("dynamic", S, C, Canary, "SELECT 777777::bigint ### 'x'".into()),
        ("dynamic", S, C, Canary, "SELECT 777777::bigint OPERATOR(public.###) 'x'".into()),
        ("dynamic", S, C, Canary, "SELECT (777777::bigint::zq_contact).email".into()),
        ("dynamic", S, C, Canary, "SELECT CAST(777777::bigint AS zq_contact)".into()),
        ("dynamic", S, C, Canary, "SELECT 777777::bigint::zq_checked".into()),
        ("dynamic", S, T, No, "SELECT (NULL::customers).email".into()),
        ("dynamic", S, C, Canary, "SELECT * FROM ROWS FROM (zq_emails())".into()),
        // ---------- relations that hide a policy table ----------
        ("relations", S, C, Canary, "SELECT * FROM zq_v_direct WHERE customer_id = 777777".into()),
        ("relations", S, C, Canary, "SELECT * FROM zq_v_nested WHERE customer_id = 777777".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_v_func".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_v_xml".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_v_secdef".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_v_barrier WHERE customer_id = 777777".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_mv_direct".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_mv_func".into()),
        ("relations", S, T, Canary, "SELECT * FROM public.zq_v_direct v JOIN orders o USING (customer_id) WHERE customer_id = 777777".into()),
        ("relations", S, T, Canary, "SELECT * FROM vip_customers".into()),
        ("relations", S, T, Canary, "SELECT * FROM vvip_customers".into()),
        ("relations", S, O, Canary, "SELECT email FROM customers WHERE customer_id >= 777777 ORDER BY customer_id".into()),
        ("relations", S, T, No, "SELECT count(*) FROM ONLY customers WHERE customer_id >= 777777".into()),
        ("relations", S, T, Canary, "SELECT * FROM ONLY vip_customers".into()),
        ("relations", S, T, Canary, "SELECT * FROM customers* WHERE customer_id >= 777777".into()),
        ("relations", S, T, Canary, "SELECT * FROM ONLY (customers) WHERE customer_id >= 777777".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_parted".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_parted_a".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_parted_b".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_parted_b1".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_parted_def".into()),
        ("relations", S, T, No, "SELECT * FROM ONLY zq_parted".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_contacts".into()),
        ("relations", S, T, Canary, "SELECT contact FROM zq_contacts WHERE region = 'eu'".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_contacts_eu".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_base".into()),
        ("relations", S, T, Canary, "SELECT secret FROM zq_base WHERE id = 1".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_child".into()),
        ("relations", S, C, Canary, "SELECT * FROM zq_ft_customers WHERE customer_id = 777777".into()),
        ("relations", S, T, Canary, "SELECT * FROM zq_fbase WHERE customer_id = 777777".into()),
        ("relations", S, T, Canary, format!("SELECT * FROM {lt}")),
        ("relations", S, T, Canary, format!("SELECT * FROM {lt}_and_more")),
        ("relations", S, T, Canary, format!("SELECT * FROM \"{lt}_quoted_extra\"")),
        ("relations", S, T, Canary, format!("SELECT {lc}zz FROM {lt}")),
        ("relations", S, C, No, "SELECT tableoid::regclass, * FROM customers WHERE customer_id >= 777790".into()),
        ("relations", S, T, No, "CREATE TEMP TABLE customers AS SELECT 1::bigint AS customer_id, 'zq-temp'::text AS email; SELECT * FROM customers".into()),
        ("relations", S, T, No, "CREATE TEMP TABLE zq_t AS SELECT * FROM customers WHERE customer_id >= 777777; SELECT * FROM zq_t".into()),
        ("relations", S, T, No, "SELECT * INTO TEMP zq_t2 FROM customers WHERE customer_id >= 777777; SELECT * FROM zq_t2".into()),
        ("relations", S, C, No, "CREATE TEMP TABLE zq_t3 (LIKE customers INCLUDING ALL)".into()),
        ("relations", S, C, No, "CREATE TEMP TABLE zq_t4 () INHERITS (customers); SELECT * FROM zq_t4".into()),
        ("relations", S, C, Canary, "CREATE TEMP TABLE zq_t5 (x text DEFAULT zq_get_email(777777)); INSERT INTO zq_t5 DEFAULT VALUES; SELECT * FROM zq_t5".into()),
        ("relations", S, C, Canary, "CREATE TEMP TABLE zq_t6 (x bigint CHECK (zq_notice_email(x))); INSERT INTO zq_t6 VALUES (777777)".into()),
        ("relations", S, C, Canary, "CREATE TEMP TABLE zq_t7 (x zq_checked); INSERT INTO zq_t7 VALUES (777777)".into()),
        ("relations", S, C, No, "SET search_path = pg_temp, public".into()),
        ("relations", S, C, No, "SET search_path TO DEFAULT".into()),
        ("relations", S, C, No, "SET SCHEMA 'pg_catalog'".into()),
        ("relations", S, C, No, "SELECT set_config('search_path', 'pg_temp', false)".into()),
        ("relations", S, C, No, "BEGIN; SET LOCAL search_path = public; COMMIT".into()),
        ("relations", S, C, No, "RESET search_path".into()),
        // ---------- catalog and statistics ----------
        ("catalog", S, C, Canary, "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customer_history' AND attname = 'email'".into()),
        ("catalog", S, C, No, "SELECT histogram_bounds::text FROM pg_catalog.pg_stats WHERE tablename = 'customers' AND attname = 'email'".into()),
        ("catalog", S, C, Canary, "SELECT * FROM pg_stats WHERE tablename = 'customer_history'".into()),
        ("catalog", S, C, Canary, "TABLE pg_stats".into()),
        ("catalog", S, C, Canary, "SELECT s.* FROM (SELECT * FROM \"pg_stats\") s WHERE tablename = 'customer_history'".into()),
        ("catalog", S, C, Canary, "WITH s AS (SELECT * FROM pg_catalog . pg_stats) SELECT * FROM s WHERE tablename = 'customer_history'".into()),
        ("catalog", S, C, Canary, "SELECT * FROM PG_STATS WHERE tablename = 'customer_history'".into()),
        ("catalog", S, C, Canary, "SELECT * FROM app.pg_catalog.pg_stats WHERE tablename = 'customer_history'".into()),
        ("catalog", S, C, Canary, "SELECT most_common_vals FROM pg_stats WHERE tablename = 'customer_history' AND attname = 'address' UNION ALL SELECT NULL".into()),
        ("catalog", S, C, No, "SELECT most_common_vals::text FROM pg_stats_ext WHERE tablename = 'customer_history'".into()),
        ("catalog", S, C, No, "SELECT * FROM pg_stats_ext_exprs".into()),
        ("catalog", S, C, No, "SELECT * FROM pg_statistic".into()),
        ("catalog", S, C, No, "SELECT stavalues1::text FROM pg_catalog.pg_statistic".into()),
        ("catalog", S, C, No, "SELECT * FROM pg_mcv_list_items((SELECT stxdmcv FROM pg_statistic_ext_data LIMIT 1))".into()),
        ("catalog", S, C, No, "SELECT query FROM pg_stat_statements".into()),
        ("catalog", S, C, No, "SELECT * FROM public.pg_stat_statements".into()),
        ("catalog", S, C, No, "SELECT * FROM pg_stat_statements(true)".into()),
        ("catalog", S, C, No, "SELECT query FROM pg_stat_activity".into()),
        ("catalog", S, C, No, "SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s".into()),
        ("catalog", S, C, No, "SELECT * FROM pg_stat_get_activity(NULL)".into()),
        ("catalog", S, C, No, "SELECT * FROM pgredact.hash_key".into()),
        ("catalog", S, C, No, "SELECT encode(ipad, 'hex') FROM \"pgredact\".\"hash_key\"".into()),
        ("catalog", S, C, No, "SELECT pgredact.mask_hash('Zqcanarylast')".into()),
        ("catalog", S, C, No, "SELECT prosrc FROM pg_proc WHERE proname IN ('mask_hash', 'hmac_hex')".into()),
        ("catalog", S, C, Canary, "SELECT convert_from(lo_get(77777), 'UTF8')".into()),
        ("catalog", S, C, Canary, "SELECT lo_get(77777)".into()),
        ("catalog", S, C, Canary, "SELECT loread(lo_open(77777, 262144), 1000)".into()),
        ("catalog", S, C, No, "SELECT * FROM pg_largeobject".into()),
        ("catalog", S, C, No, "SELECT pg_read_file('postgresql.conf')".into()),
        ("catalog", S, T, No, "SELECT viewname, definition FROM pg_views WHERE viewname LIKE 'zq%'".into()),
        ("catalog", S, C, No, "SELECT * FROM pg_prepared_statements".into()),
        ("catalog", S, C, No, "SELECT * FROM pg_user_mappings".into()),
        ("catalog", S, C, No, "SELECT umoptions FROM pg_user_mapping".into()),
        // ---------- error and notice channels ----------
        ("errors", S, T, No, "SELECT email::int FROM customers WHERE customer_id = 777777".into()),
        ("errors", S, T, No, "SELECT phone::numeric FROM customers WHERE customer_id = 777777".into()),
        ("errors", S, T, No, "SELECT address::int FROM customers WHERE customer_id = 777777".into()),
        ("errors", S, T, No, "SELECT 1/0 FROM customers WHERE customer_id = 777777 AND email LIKE 'z***%'".into()),
        ("errors", S, T, Twin, "SELECT CASE WHEN email LIKE 'zq.canary%' THEN 1/(customer_id - 777777) ELSE 0 END FROM customers WHERE customer_id = 777777".into()),
        ("errors", S, T, No, "SELECT (SELECT email FROM customers WHERE customer_id >= 777777)".into()),
        ("errors", S, T, No, "SELECT to_date(email, 'YYYY') FROM customers WHERE customer_id = 777777".into()),
        ("errors", S, T, No, "SELECT user_agent::inet FROM customer_events WHERE customer_id = 777777".into()),
        ("errors", S, T, No, "SELECT jsonb_build_object('e', email)::text::int FROM customers WHERE customer_id = 777777".into()),
        ("errors", S, T, No, "SELECT xmlparse(document email) FROM customers WHERE customer_id = 777777".into()),
        ("errors", S, T, No, "SELECT first_name::date FROM customers WHERE customer_id = 777777".into()),
        ("errors", L, T, Canary, "UPDATE customers SET tier = 'zq-forbidden' WHERE customer_id = 777777".into()),
        ("errors", L, T, Canary, "UPDATE customers SET segment = 'zqseg1' WHERE customer_id = 777778".into()),
        ("errors", L, T, No, "INSERT INTO customers (customer_id, tier) VALUES (777777, 'x')".into()),
        ("errors", L, T, Canary, "UPDATE customers SET tier = 'zq-notice' WHERE customer_id = 777777".into()),
        ("errors", L, T, Canary, "UPDATE customers SET tier = 'zq-raise' WHERE customer_id = 777777".into()),
        ("errors", L, T, Canary, "INSERT INTO zq_ruled (note) VALUES ('x')".into()),
        ("errors", L, T, Canary, "INSERT INTO zq_defaults (id) VALUES (1) RETURNING e".into()),
        ("errors", L, T, No, "INSERT INTO orders (customer_id, amount, status) VALUES (999999999, 1, 'x')".into()),
        ("errors", L, T, Canary, "UPDATE customers SET tier = 'zq-forbidden' WHERE customer_id = 777790".into()),
        // ---------- write-side oracles ----------
        ("write", L, T, Twin, "UPDATE customers SET tier = tier WHERE email LIKE 'zq.canary%'".into()),
        ("write", L, T, Twin, "UPDATE customers SET tier = tier WHERE customer_id IN (SELECT customer_id FROM customers WHERE email = 'zq.canary.77@leak-test.example')".into()),
        ("write", L, T, Twin, "UPDATE customers c SET tier = c.tier WHERE c::text LIKE '%zq.canary%'".into()),
        ("write", L, T, Twin, "UPDATE customers c SET tier = c.tier WHERE (c.*)::text LIKE '%zq.canary%'".into()),
        ("write", L, T, Twin, "UPDATE customers c SET tier = c.tier WHERE row_to_json(c)::text LIKE '%zq.canary%'".into()),
        ("write", L, T, Canary, "UPDATE customers SET tier = tier WHERE customer_id = 777777 RETURNING email".into()),
        ("write", L, T, Canary, "UPDATE customers SET tier = tier WHERE customer_id = 777777 RETURNING *".into()),
        ("write", L, T, Canary, "UPDATE customers c SET tier = c.tier WHERE customer_id = 777777 RETURNING c".into()),
        ("write", L, T, Canary, "UPDATE customers c SET tier = c.tier WHERE customer_id = 777777 RETURNING to_jsonb(c)".into()),
        ("write", L, T, Canary, "UPDATE customers SET tier = tier WHERE customer_id = 777777 RETURNING (SELECT email FROM customers WHERE customer_id = 777777)".into()),
        ("write", L, T, Canary, "UPDATE customers SET tier = email WHERE customer_id = 777777 RETURNING tier".into()),
        ("write", L, T, Canary, "UPDATE customers SET tier = c2.email FROM customers c2 WHERE c2.customer_id = customers.customer_id AND customers.customer_id = 777777 RETURNING customers.tier".into()),
        ("write", L, T, Canary, "UPDATE customers AS c SET tier = customers.email FROM customers WHERE customers.customer_id = c.customer_id AND c.customer_id = 777777 RETURNING c.tier".into()),
        ("write", L, T, Canary, "UPDATE customers SET (tier, segment) = (SELECT email, phone FROM customers c2 WHERE c2.customer_id = 777777) WHERE customer_id = 777777 RETURNING tier, segment".into()),
        ("write", L, T, Twin, "UPDATE customers SET tier = tier WHERE customer_id = 777777 AND pg_catalog.texteq(email, 'zq.canary.77@leak-test.example')".into()),
        ("write", L, T, Twin, "UPDATE customers c SET tier = tier WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id AND c.email LIKE 'zq%')".into()),
        ("write", L, T, Twin, "UPDATE customers SET tier = tier WHERE \"email\" LIKE 'zq%'".into()),
        ("write", L, T, Twin, "UPDATE ONLY customers SET tier = tier WHERE email LIKE 'zq%'".into()),
        ("write", L, T, Twin, "UPDATE customers SET tier = tier WHERE (customers).email LIKE 'zq%'".into()),
        ("write", L, T, Twin, "DELETE FROM customer_history WHERE email LIKE 'zq.oldcanary%'".into()),
        ("write", L, T, Canary, "DELETE FROM customer_history h WHERE h.customer_id = 777777 AND h.history_id % 100 = 1 RETURNING *".into()),
        ("write", L, T, Canary, "DELETE FROM customer_history WHERE customer_id = 777777 AND history_id % 100 = 2 RETURNING email, phone, address".into()),
        ("write", L, T, Twin, "DELETE FROM orders o USING customers c WHERE c.customer_id = o.customer_id AND c.email = 'zq.canary.77@leak-test.example'".into()),
        ("write", L, T, Twin, "WITH u AS (UPDATE customers SET tier = tier WHERE email LIKE 'zq.canary%' RETURNING customer_id) SELECT count(*) FROM u".into()),
        ("write", L, T, Twin, "WITH d AS (DELETE FROM customer_history WHERE email LIKE 'zq.oldcanary%' RETURNING 1) SELECT count(*) FROM d".into()),
        ("write", L, T, Canary, "WITH u AS (UPDATE customers SET tier = tier WHERE customer_id = 777777 RETURNING *) SELECT * FROM u".into()),
        ("write", L, T, Canary, "INSERT INTO zq_scratch (note) SELECT email FROM customers WHERE customer_id >= 777777 RETURNING note".into()),
        ("write", L, T, Canary, "INSERT INTO zq_scratch (note) VALUES ('x') RETURNING (SELECT email FROM customers WHERE customer_id = 777777)".into()),
        ("write", L, T, Canary, "WITH i AS (INSERT INTO zq_scratch (note) SELECT phone FROM customers WHERE customer_id = 777777 RETURNING note) SELECT * FROM i".into()),
        ("write", L, T, Twin, "INSERT INTO customers (customer_id, tier) VALUES (777777, 'gold') ON CONFLICT (customer_id) DO UPDATE SET tier = EXCLUDED.tier WHERE customers.email LIKE 'zq%' RETURNING tier".into()),
        ("write", L, T, Canary, "INSERT INTO customers (customer_id, tier) VALUES (777777, 'gold') ON CONFLICT (customer_id) DO UPDATE SET tier = customers.email RETURNING tier".into()),
        ("write", L, T, Canary, "INSERT INTO customers (customer_id, tier) VALUES (777777, 'gold') ON CONFLICT (customer_id) DO UPDATE SET tier = 'x' RETURNING *".into()),
        ("write", L, T, Canary, "INSERT INTO customers (customer_id, tier) VALUES (777777, 'gold') ON CONFLICT (customer_id) DO UPDATE SET tier = (SELECT email FROM customers c2 WHERE c2.customer_id = 777777) RETURNING tier".into()),
        ("write", L, T, No, "INSERT INTO customers (customer_id, tier) VALUES (777777, 'gold') ON CONFLICT (customer_id) DO UPDATE SET segment = EXCLUDED.email RETURNING segment".into()),
        ("write", L, T, No, "INSERT INTO customers (customer_id, tier) VALUES (777777, 'gold') ON CONFLICT ON CONSTRAINT customers_pkey DO NOTHING".into()),
        ("write", S, T, Canary, "CREATE TEMP TABLE zq_ctas AS SELECT email, phone, address, birth_date FROM customers WHERE customer_id >= 777777; SELECT * FROM zq_ctas".into()),
        ("write", S, T, Canary, "SELECT email, phone INTO TEMP zq_into FROM customer_history WHERE customer_id = 777777 AND history_id % 200 = 0; SELECT * FROM zq_into".into()),
        ("write", S, C, No, "CREATE TEMP TABLE zq_ctas2 AS TABLE customers".into()),
        ("write", L, T, No, "MERGE INTO zq_scratch s USING customers c ON s.id = c.customer_id WHEN NOT MATCHED AND c.customer_id = 777777 THEN INSERT (note) VALUES (c.email)".into()),
        ("write", L, T, Twin, "MERGE INTO customers c USING (SELECT 777777 AS id) s ON c.customer_id = s.id WHEN MATCHED AND c.email LIKE 'zq%' THEN UPDATE SET tier = 'x'".into()),
        ("write", L, T, Twin, "UPDATE zq_parted SET note = note WHERE contact LIKE 'Zqpart%'".into()),
        ("write", L, T, Twin, "UPDATE zq_contacts SET region = region WHERE contact LIKE 'Zqeu%'".into()),
        ("write", L, T, Twin, "UPDATE zq_base SET id = id WHERE secret LIKE 'Zqchild%'".into()),
        ("write", L, T, Twin, format!("UPDATE {lt} SET note = note WHERE {lc}x LIKE 'Zqlong%'")),
        ("write", L, T, Twin, "UPDATE vip_customers SET tier = tier WHERE email LIKE 'zq.vip%'".into()),
        // ---------- session and protocol games ----------
        ("session", S, C, No, "SET ROLE dba".into()),
        ("session", S, C, No, "SET SESSION AUTHORIZATION dba".into()),
        ("session", S, C, No, "SELECT set_config('role', 'dba', false)".into()),
        ("session", S, C, No, "RESET ALL".into()),
        ("session", S, C, No, "DISCARD ALL".into()),
        ("session", S, C, No, "SET row_security = off".into()),
        ("session", S, C, No, "SET standard_conforming_strings = off".into()),
        ("session", S, C, No, "SET SESSION standard_conforming_strings TO 'off'".into()),
        ("session", S, C, No, "SET client_encoding = 'SJIS'".into()),
        ("session", S, C, No, "SET NAMES 'LATIN1'".into()),
        ("session", S, T, Canary, "SELECT 1; SELECT email FROM customers WHERE customer_id = 777777".into()),
        ("session", S, C, No, "SELECT email FROM customers WHERE customer_id = 777777; SET ROLE dba".into()),
        ("session", S, C, No, "BEGIN; SET LOCAL ROLE dba; COMMIT".into()),
        ("session", S, C, No, "EXPLAIN SELECT * FROM customers WHERE customer_id = 777777".into()),
        ("session", S, C, No, "EXPLAIN (VERBOSE, COSTS OFF) SELECT last_name, email FROM customers WHERE customer_id = 777777".into()),
        ("session", S, E, Twin, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT * FROM customer_history WHERE email = 'zq.oldcanary.77@leak-test.example'".into()),
        ("session", S, E, Twin, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT * FROM customers WHERE email LIKE 'zq.canary%'".into()),
        ("session", L, C, No, "EXPLAIN ANALYZE UPDATE customers SET tier = tier WHERE email LIKE 'zq%'".into()),
        ("session", S, C, No, "EXPLAIN ANALYZE SELECT count(DISTINCT email) FROM customers".into()),
        ("session", S, C, No, "EXPLAIN (COSTS) SELECT DISTINCT first_name FROM customers".into()),
        ("session", S, C, No, "SET enable_indexonlyscan = on".into()),
        ("session", L, C, No, "UPDATE customers SET tier = tier WHERE customer_id = 777777 RETURNING ctid".into()),
        ("session", S, C, No, "LISTEN zqchan".into()),
        ("session", S, T, No, "UNLISTEN *".into()),
        ("session", S, T, No, "NOTIFY zqchan, 'hello'".into()),
        ("session", S, T, No, "SELECT pg_notify('zqchan', (SELECT email FROM customers WHERE customer_id = 777777))".into()),
        ("session", S, T, No, "SHOW search_path".into()),
        ("session", S, T, No, "SELECT current_setting('standard_conforming_strings')".into()),
        // ---------- lexical games ----------
        ("lexical", S, T, Canary, "SELECT email FROM \"customers\" WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT email FROM \"public\".\"customers\" WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT EMAIL FROM PUBLIC.CUSTOMERS WHERE CUSTOMER_ID = 777777".into()),
        ("lexical", S, T, Canary, "SELECT email FROM app.public.customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT email FROM \"app\".\"public\".\"customers\" WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT email FROM public . customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT email FROM public/**/./**/customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT email FROM U&\"customers\" WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT email FROM U&\"\\0063ustomers\" WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT email FROM U&\"!0063ustomers\" UESCAPE '!' WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT U&'\\0041', email FROM customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT email FROM customers -- comment\nWHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT/**/email/**/FROM/**/customers/**/WHERE/**/customer_id=777777".into()),
        ("lexical", S, T, Canary, "SELECT 1 /* /* */, ' */ , email FROM customers WHERE customer_id = 777777 --'".into()),
        ("lexical", S, T, Canary, "SELECT /* nested /* inner */ still comment */ email FROM customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT $$x$$, email FROM customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT $a$ $$ ' $a$, email FROM customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT 1 AS x$$, (SELECT email FROM customers WHERE customer_id = 777777) AS y --$$".into()),
        ("lexical", S, T, Canary, "SELECT E'\\'', email FROM customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, No, "SELECT E'a\\' , (SELECT email FROM customers WHERE customer_id = 777777) --'".into()),
        ("lexical", S, T, No, "SELECT 'a\\'' , email FROM customers WHERE customer_id = 777777 --'".into()),
        ("lexical", S, T, Canary, "SELECT 'a'\n'b', email FROM customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT \"email\" FROM customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT c.\"email\" FROM customers c WHERE c.customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT em FROM customers c(id, fn, ln, em) WHERE id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT * FROM customers AS \"select\" WHERE \"select\".customer_id = 777777".into()),
        ("lexical", S, T, No, "SELECT email FROM customers WHERE customer_id = 777777 /* unterminated".into()),
        ("lexical", S, T, Canary, "SELECT email FROM customers WHERE customer_id = 777777;;".into()),
        ("lexical", S, T, Canary, ";SELECT email FROM customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, No, "SELECT email FROM customers WHERE customer_id = 0x0BDE31".into()),
        ("lexical", S, T, No, "SELECT email FROM customers WHERE customer_id = 777_777".into()),
        ("lexical", S, T, Canary, "SELECT\temail\nFROM\rcustomers\x0cWHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT email FROM customers WHERE customer_id = 777777 AND 'zq' = $$zq$$".into()),
        ("lexical", S, T, Canary, nested),
        ("lexical", S, T, Canary, "SELECT (customers).email FROM customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT customers FROM customers WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT c FROM customers c WHERE c.customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT row_to_json(c) FROM customers c WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT to_jsonb(c.*) FROM customers c WHERE customer_id = 777777".into()),
        ("lexical", S, T, Canary, "SELECT json_agg(h) FROM customer_history h WHERE customer_id = 777777 AND history_id % 100 = 1".into()),
        // ---------- parser differentials ----------
        ("parser", S, T, Canary, "SELECT * FROM customers c, LATERAL (SELECT c.email, c.phone) x WHERE c.customer_id = 777777".into()),
        ("parser", S, T, No, "SELECT * FROM customers NATURAL JOIN customer_history WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "SELECT * FROM (customers c JOIN orders o USING (customer_id)) WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "SELECT ARRAY(SELECT email FROM customers WHERE customer_id >= 777777 ORDER BY 1)".into()),
        ("parser", S, T, Canary, "VALUES ((SELECT email FROM customers WHERE customer_id = 777777))".into()),
        ("parser", S, T, Canary, "SELECT email FROM customers WHERE customer_id = 777777 UNION ALL SELECT email FROM customer_history WHERE customer_id = 777777 AND history_id % 250 = 0".into()),
        ("parser", S, T, Canary, "WITH RECURSIVE r(n, e) AS (SELECT 1, (SELECT email FROM customers WHERE customer_id = 777777) UNION ALL SELECT n + 1, e FROM r WHERE n < 3) SELECT * FROM r".into()),
        ("parser", S, C, No, "WITH customers AS (SELECT 1) SELECT * FROM customers".into()),
        ("parser", S, T, Canary, "WITH x AS MATERIALIZED (SELECT * FROM customers WHERE customer_id >= 777777) SELECT email, phone FROM x".into()),
        ("parser", S, T, No, "SELECT * FROM customers WHERE customer_id = 777777 FOR UPDATE".into()),
        ("parser", S, T, No, "SELECT * FROM customers WHERE customer_id = 777777 FOR NO KEY UPDATE".into()),
        ("parser", S, T, Canary, "SELECT * FROM customers TABLESAMPLE SYSTEM (100) WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "TABLE vip_customers".into()),
        ("parser", S, T, Canary, "SELECT email FROM customers WHERE customer_id BETWEEN SYMMETRIC 777778 AND 777777".into()),
        ("parser", S, T, No, "SELECT count(*) FROM customers WHERE customer_id >= 777777 GROUP BY DISTINCT email".into()),
        ("parser", S, T, Canary, "SELECT xmlelement(name e, email) FROM customers WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "SELECT xmlforest(email, phone) FROM customers WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "SELECT format('%s %s', email, phone) FROM customers WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "SELECT string_agg(email, ',') FROM customers WHERE customer_id >= 777777".into()),
        ("parser", S, T, Canary, "SELECT reverse(email), upper(phone), md5(email), encode(convert_to(email, 'UTF8'), 'base64'), encode(sha256(convert_to(first_name, 'UTF8')), 'hex') FROM customers WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "SELECT first_name, last_name FROM customers WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "SELECT birth_date, extract(epoch from birth_date), to_char(birth_date, 'DD/MM/YYYY J') FROM customers WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "SELECT host(ip_address), user_agent FROM customer_events WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "SELECT shipping_address FROM orders WHERE customer_id = 777777".into()),
        ("parser", S, T, Canary, "SELECT * FROM customers WHERE customer_id = 777777 WINDOW w AS (ORDER BY email)".into()),
        ("parser", S, T, Canary, "SELECT email COLLATE \"C\" FROM customers WHERE customer_id = 777777".into()),
        // ---------- JSON documents masked per path ----------
        ("json", S, T, Canary, "SELECT payload FROM customer_events WHERE customer_id = 777777".into()),
        ("json", S, T, Canary, "SELECT payload->>'to', payload#>>'{billing,name}', payload->'billing'->>'address', payload->>'callback_phone' FROM customer_events WHERE customer_id = 777777 AND event_type = 'purchase'".into()),
        ("json", S, T, Canary, "SELECT payload->>'username' FROM customer_events WHERE customer_id = 777777 AND payload ? 'username'".into()),
        ("json", S, T, Twin, "SELECT count(*) FROM customer_events WHERE payload->>'to' LIKE 'zq.canary%'".into()),
        ("json", S, T, Twin, "SELECT count(*) FROM customer_events WHERE payload @> '{\"username\": \"zq.canary.77@leak-test.example\"}'".into()),
        ("json", S, T, Twin, "SELECT count(*) FROM customer_events WHERE payload::text LIKE '%5550 9876%'".into()),
        ("json", S, T, Canary, "SELECT jsonb_path_query(payload, 'strict $.**') FROM customer_events WHERE customer_id = 777777".into()),
        ("json", S, T, Canary, "SELECT e.key, e.value FROM customer_events, jsonb_each_text(payload) e WHERE customer_id = 777777".into()),
        ("json", S, T, Canary, "SELECT payload->'items', payload->'a/b~c' FROM customer_events WHERE customer_id = 777777 AND event_type = 'purchase'".into()),
        ("json", S, T, No, "SELECT count(*) FROM customer_events e JOIN customers c ON c.last_name = split_part(e.payload#>>'{billing,name}', ' ', 2)".into()),
        ("json", S, T, No, "SELECT payload->>'path', count(*) FROM customer_events WHERE event_type = 'page_view' GROUP BY 1".into()),
        ("json", L, C, No, "UPDATE customer_events SET payload = '{}' WHERE customer_id = 777777".into()),
        // ---------- oracle-style (counts, existence, ordering) ----------
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE email = 'zq.canary.77@leak-test.example'".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE email LIKE 'zq.c%'".into()),
        ("oracle", S, T, Twin, "SELECT EXISTS (SELECT 1 FROM customers WHERE phone LIKE '%5550 1234%')".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE first_name = 'Zqcanaryfirst'".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE birth_date = '1977-07-07' AND customer_id >= 777777".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customer_events WHERE ip_address = '10.77.77.77'".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customer_events WHERE user_agent LIKE 'Zqcanary%'".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM orders WHERE shipping_address LIKE '%Canaryweg%'".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customer_history WHERE address = '77 Oldcanaryallee'".into()),
        ("oracle", S, O, No, "SELECT customer_id FROM customers WHERE customer_id >= 777777 ORDER BY email DESC, customer_id".into()),
        ("oracle", S, T, No, "SELECT customer_id, rank() OVER (ORDER BY phone, customer_id) FROM customers WHERE customer_id >= 777777".into()),
        ("oracle", S, T, Canary, "SELECT min(email), max(address), min(birth_date) FROM customers WHERE customer_id >= 777777".into()),
        ("oracle", S, T, Canary, "SELECT email, count(*) FROM customer_history WHERE customer_id = 777777 GROUP BY email HAVING count(*) > 1".into()),
        ("oracle", S, O, Canary, "SELECT DISTINCT ON (email) email, customer_id FROM customers WHERE customer_id >= 777777 ORDER BY email, customer_id".into()),
        ("oracle", S, T, No, "SELECT count(*) FROM customers a JOIN customer_history h ON a.email = h.email".into()),
        ("oracle", S, T, No, "SELECT count(DISTINCT last_name) FROM customers".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE customer_id = 777777 AND length(email) = 30".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE customer_id = 777777 AND position('canary' in email) > 0".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM zq_parted_a WHERE contact LIKE 'Zqpart%'".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM zq_contacts WHERE contact LIKE 'Zqeu%'".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM zq_base WHERE secret IS NOT NULL".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE email ~ '^zq\\.canary'".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE email SIMILAR TO 'zq.canary%'".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE email ILIKE 'ZQ.CANARY%'".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE to_tsvector('simple', address) @@ to_tsquery('simple', 'canarystrasse')".into()),
        ("oracle", S, T, Twin, "SELECT octet_length(email), octet_length(phone) FROM customers WHERE customer_id = 777777".into()),
        ("oracle", S, T, Twin, "SELECT count(*) FROM customers WHERE email >= 'zq' AND email < 'zr'".into()),
        // ---------- a masked role whose default is standard_conforming_strings = off ----------
        ("session", G, C, Canary, "SELECT 'a\\'' , email FROM customers WHERE customer_id = 777777 --'".into()),
        ("session", G, C, Canary, "SELECT 'x\\'' , (SELECT phone FROM public.customers WHERE customer_id = 777777) --'".into()),
        ("session", G, C, Canary, "SELECT email FROM customers WHERE customer_id = 777777".into()),
    ];
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    raw.into_iter()
        .map(|(class, role, or, poison, sql)| {
            let k = n.entry(class).or_default();
            *k += 1;
            let id = format!("{class}-{:03}", *k);
            let known = KNOWN_FAILING
                .iter()
                .chain(DIRECT_KNOWN)
                .filter(|(k, _, _)| *k == id)
                .map(|(_, protocols, why)| Known {
                    protocols: protocols.iter().map(|p| p.to_string()).collect(),
                    reason: why.to_string(),
                })
                .collect();
            Case {
                id,
                class: class.to_string(),
                role,
                or,
                poison,
                sql,
                known,
            }
        })
        .collect()
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
    let cases = support::cases::or_exit(cases());
    let legacy = legacy_cases();
    let cases: Vec<Arc<Case>> = cases.into_iter().map(Arc::new).collect();
    let kit = Arc::new(Kit::new());
    let mut trials = vec![
        Trial::test("suite::cases", {
            let cases = cases.clone();
            move || case_table(&cases)
        }),
        Trial::test("suite::legacy-table", {
            let cases = cases.clone();
            move || {
                // One-off: the case file gives exactly the cases of the old Rust table.
                assert_eq!(cases.len(), legacy.len(), "number of cases");
                for (new, old) in cases.iter().zip(&legacy) {
                    assert_eq!(**new, *old, "case {}", old.id);
                    assert_eq!(new.sql.as_bytes(), old.sql.as_bytes(), "{}", old.id);
                }
                println!("{} cases identical to the old table", cases.len());
                Ok(())
            }
        }),
    ];
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
