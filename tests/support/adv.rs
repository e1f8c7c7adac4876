//! Shared fixture for the adversarial, usability and campaign suites: canary PII rows, objects
//! that try to hide policy tables (views, partitions, children, foreign tables, functions,
//! operators, casts, rules, triggers), a statically masked twin database, and the two oracles
//! (no canary in any byte the client sees; same answer as the twin, or a refusal).

use super::wire;
use super::{rows, Env, HASH_KEY};
use pgredact::pgcluster::{demo_schema_sql, Auth, ClusterOptions};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

pub const C_FIRST: &str = "Zqcanaryfirst";
pub const C_LAST: &str = "Zqcanarylast";
pub const C_EMAIL: &str = "zq.canary.77@leak-test.example";
pub const C_PHONE: &str = "+99 5550 1234 77";
pub const C_ADDR: &str = "77 Canarystrasse";
pub const C_BIRTH: &str = "1977-07-07";
pub const C_IP: &str = "10.77.77.77";
pub const C_UA: &str = "Zqcanaryagent/7.7";
pub const C_SHIP: &str = "77 Canaryweg, Zq-7777";
pub const C_HIST_EMAIL: &str = "zq.oldcanary.77@leak-test.example";
pub const C_HIST_PHONE: &str = "+99 5550 9876 77";
pub const C_HIST_ADDR: &str = "77 Oldcanaryallee";
pub const C_VIP_EMAIL: &str = "zq.vipcanary.77@leak-test.example";
pub const C_PART: &str = "Zqpartcontact 77";
pub const C_EU: &str = "Zqeucontact 77";
pub const C_CHILD: &str = "Zqchildsecret 77";
pub const C_LONG: &str = "Zqlongsecret 77";

/// A 63-byte table name (PostgreSQL truncates longer identifiers to 63 bytes).
pub const LONG_TABLE: &str = "zq_long_table_name_padded_to_exactly_sixty_three_bytes_xxxxxxxx";
/// A 63-byte PII column name of that table.
pub const LONG_COLUMN: &str = "zq_long_column_name_padded_to_exactly_sixty_three_bytes_yyyyyyy";

/// Every canary value (the full strings).
pub fn canary_values() -> Vec<&'static str> {
    vec![
        C_FIRST,
        C_LAST,
        C_EMAIL,
        C_PHONE,
        C_ADDR,
        C_BIRTH,
        C_IP,
        C_UA,
        C_SHIP,
        C_HIST_EMAIL,
        C_HIST_PHONE,
        C_HIST_ADDR,
        C_VIP_EMAIL,
        C_PART,
        C_EU,
        C_CHILD,
        C_LONG,
        HASH_KEY,
    ]
}

/// Distinctive fragments that only raw canaries contain (masks never produce them).
pub const FRAGMENTS: &[&str] = &[
    "canaryfirst",
    "canarylast",
    "zq.canary",
    "zq.oldcanary",
    "zq.vipcanary",
    "canarystrasse",
    "canaryweg",
    "oldcanaryallee",
    "5550 1234",
    "5550 9876",
    "55501234",
    "zqcanaryagent",
    "zqpartcontact",
    "zqeucontact",
    "zqchildsecret",
    "zqlongsecret",
    "07/07/1977",
    "07.07.1977",
    "07-07-1977",
    "test-hash-key",
];

/// The demo policy with the mask kinds fake, noise and bucket where they fit the demo's columns: `bucket` on
/// the birth date (instead of `year`), `fake` on the history's e-mails (instead of `email`) and
/// `noise` on the time of each change, plus the attack tables.
pub fn policy_text() -> String {
    let demo = pgredact::demo::EXAMPLE_POLICY
        .replacen(
            "columns.birth_date = \"year\"",
            "columns.birth_date = { mask = \"bucket\", interval = \"10 years\" }",
            1,
        )
        .replacen(
            "[tables.\"public.customer_history\"]\nsubject = \"customer_id\"\ncolumns.email = \"email\"",
            "[tables.\"public.customer_history\"]\nsubject = \"customer_id\"\ncolumns.email = { mask = \"fake\", kind = \"email\" }\ncolumns.changed_at = { mask = \"noise\", interval = \"3 days\" }",
            1,
        );
    assert!(
        demo.contains("interval = \"10 years\"") && demo.contains("interval = \"3 days\""),
        "the demo policy changed: update policy_text"
    );
    format!(
        "{}\n[tables.\"public.zq_parted\"]\nsubject = \"id\"\ncolumns.contact = \"redact\"\n\n[tables.\"public.zq_contacts_eu\"]\nsubject = \"id\"\ncolumns.contact = \"redact\"\n\n[tables.\"public.zq_child\"]\nsubject = \"id\"\ncolumns.secret = \"null\"\n\n[tables.\"public.{LONG_TABLE}\"]\nsubject = \"id\"\ncolumns.{LONG_COLUMN} = \"redact\"\n",
        demo
    )
}

/// Canaries and attack objects, run as superuser in `app` and in `twin`.
pub fn fixture_sql() -> String {
    format!(
        r#"
SET client_min_messages = warning;
DO $r$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'legacy') THEN CREATE ROLE legacy LOGIN PASSWORD 'legacy'; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'zq_temp_reader') THEN CREATE ROLE zq_temp_reader LOGIN PASSWORD 'zq_temp_reader'; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'zq_unmasked') THEN CREATE ROLE zq_unmasked LOGIN PASSWORD 'zq_unmasked'; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'zq_unmasked_legacy') THEN CREATE ROLE zq_unmasked_legacy LOGIN PASSWORD 'zq_unmasked_legacy'; END IF;
END $r$;
ALTER ROLE legacy SET standard_conforming_strings = off;
ALTER ROLE zq_unmasked_legacy SET standard_conforming_strings = off;
GRANT pii_readers TO zq_unmasked_legacy;
-- zq_temp_reader: raw access through pii_readers only, otherwise a support user.
GRANT pii_readers, support TO zq_temp_reader;
-- zq_unmasked: what the poison controls run as (sees raw data and every session's query).
GRANT pii_readers, pg_read_all_stats TO zq_unmasked;
-- A misconfiguration `pgredact setup-sql` removes: a masked role reading every query text.
GRANT pg_read_all_stats TO support;

INSERT INTO public.customers (customer_id, first_name, last_name, email, phone, address, city, country, birth_date, tier, segment, lifetime_value, created_at, updated_at) VALUES
 (777777, '{C_FIRST}', '{C_LAST}', '{C_EMAIL}', '{C_PHONE}', '{C_ADDR}', 'Lisbon', 'Portugal', '{C_BIRTH}', 'standard', 'zqseg1', 77.77, '2020-07-07 07:07:07+00', '2020-07-08 07:07:07+00'),
 (777778, '{C_FIRST}', '{C_LAST}', '{C_EMAIL}', '{C_PHONE}', '{C_ADDR}', 'Lisbon', 'Portugal', '{C_BIRTH}', 'silver', 'zqseg2', 78.78, '2020-07-07 08:07:07+00', '2020-07-08 08:07:07+00');
INSERT INTO public.customer_events (customer_id, event_type, ip_address, user_agent, payload, occurred_at)
 SELECT 777777, 'login', '{C_IP}', '{C_UA}', '{{}}', timestamptz '2023-07-07 00:00+00' + i * interval '1 minute' FROM generate_series(1, 3) i;
INSERT INTO public.customer_events (customer_id, event_type, ip_address, user_agent, payload, occurred_at) VALUES
 (777777, 'purchase', '{C_IP}', '{C_UA}', '{{"total": 77.7, "currency": "EUR", "to": "{C_EMAIL}", "billing": {{"name": "{C_FIRST} {C_LAST}", "address": "{C_ADDR}"}}, "callback_phone": "{C_PHONE}", "items": [{{"sku": "SKU-7", "contact": {{"phone": "{C_HIST_PHONE}"}}}}, {{"sku": "SKU-8", "phone": null}}], "a/b~c": 1}}', '2023-07-07 07:07+00'),
 (777777, 'login', '{C_IP}', '{C_UA}', '{{"method": "password", "username": "{C_EMAIL}", "success": true}}', '2023-07-07 07:08+00');
INSERT INTO public.orders (customer_id, amount, status, shipping_address, ordered_at) VALUES
 (777777, 77.77, 'paid', '{C_SHIP}', '2023-07-07 07:00+00'), (777778, 12.50, 'shipped', '{C_SHIP}', '2023-07-08 07:00+00');
INSERT INTO public.customer_history (customer_id, changed_at, email, phone, address)
 SELECT 777777, timestamptz '2021-01-01 00:00+00' + i * interval '1 hour', '{C_HIST_EMAIL}', '{C_HIST_PHONE}', '{C_HIST_ADDR}' FROM generate_series(1, 500) i;
CREATE STATISTICS public.zq_hist_stats (mcv) ON email, address FROM public.customer_history;

CREATE TABLE public.vip_customers (vip_since date) INHERITS (public.customers);
INSERT INTO public.vip_customers (customer_id, first_name, last_name, email, phone, address, birth_date, tier, vip_since)
 VALUES (777790, '{C_FIRST}', '{C_LAST}', '{C_VIP_EMAIL}', '{C_PHONE}', '{C_ADDR}', '{C_BIRTH}', 'platinum', '2020-01-01');
CREATE TABLE public.vvip_customers () INHERITS (public.vip_customers);
INSERT INTO public.vvip_customers (customer_id, first_name, last_name, email, phone, address, birth_date, tier, vip_since)
 VALUES (777791, '{C_FIRST}', '{C_LAST}', '{C_VIP_EMAIL}', '{C_PHONE}', '{C_ADDR}', '{C_BIRTH}', 'platinum', '2021-01-01');
ALTER TABLE public.customers ADD CONSTRAINT zq_tier_chk CHECK (tier <> 'zq-forbidden');
CREATE UNIQUE INDEX zq_seg_email ON public.customers (segment, email) WHERE customer_id BETWEEN 777777 AND 777778;

CREATE TABLE public.zq_parted (id bigint, region text, contact text, note text) PARTITION BY LIST (region);
CREATE TABLE public.zq_parted_a PARTITION OF public.zq_parted FOR VALUES IN ('a');
CREATE TABLE public.zq_parted_b PARTITION OF public.zq_parted FOR VALUES IN ('b') PARTITION BY RANGE (id);
CREATE TABLE public.zq_parted_b1 PARTITION OF public.zq_parted_b FOR VALUES FROM (0) TO (1000000);
CREATE TABLE public.zq_parted_def PARTITION OF public.zq_parted DEFAULT;
INSERT INTO public.zq_parted VALUES (1, 'a', '{C_PART} a', 'n1'), (2, 'b', '{C_PART} b', 'n2'), (3, 'z', '{C_PART} z', 'n3');
CREATE TABLE public.zq_late (id bigint, region text, contact text, note text);
INSERT INTO public.zq_late VALUES (4, 'late', '{C_PART} late', 'n4');
CREATE TABLE public.zq_late_child (id bigint, secret text, extra text);
INSERT INTO public.zq_late_child VALUES (5, '{C_CHILD} late', 'x');

CREATE TABLE public.zq_contacts (id bigint, region text, contact text) PARTITION BY LIST (region);
CREATE TABLE public.zq_contacts_eu PARTITION OF public.zq_contacts FOR VALUES IN ('eu');
CREATE TABLE public.zq_contacts_us PARTITION OF public.zq_contacts FOR VALUES IN ('us');
INSERT INTO public.zq_contacts VALUES (1, 'eu', '{C_EU}'), (2, 'us', 'public us contact');

CREATE TABLE public.zq_base (id bigint, secret text);
CREATE TABLE public.zq_child (extra text) INHERITS (public.zq_base);
INSERT INTO public.zq_child VALUES (1, '{C_CHILD}', 'x');

CREATE TABLE public.{LONG_TABLE} (id bigint, {LONG_COLUMN} text, note text);
INSERT INTO public.{LONG_TABLE} VALUES (1, '{C_LONG}', 'n');

CREATE FUNCTION public.zq_get_email(id bigint) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
  AS $f$ SELECT email::text FROM public.customers WHERE customer_id = id $f$;
CREATE FUNCTION public.zq_emails() RETURNS TABLE(customer_id bigint, email text) LANGUAGE sql STABLE
  AS $f$ SELECT customer_id, email::text FROM public.customers WHERE customer_id >= 777777 $f$;
CREATE FUNCTION public.zq_notice_email(id bigint) RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER
  AS $f$ DECLARE e text; BEGIN SELECT email INTO e FROM public.customers WHERE customer_id = id; RAISE NOTICE 'zq notice %', e; RETURN true; END $f$;
CREATE FUNCTION pg_catalog.zq_pc_email(id bigint) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
  AS $f$ SELECT email::text FROM public.customers WHERE customer_id = id $f$;
CREATE PROCEDURE public.zq_proc() LANGUAGE plpgsql SECURITY DEFINER
  AS $f$ DECLARE e text; BEGIN SELECT email INTO e FROM public.customers WHERE customer_id = 777777; RAISE NOTICE 'zq proc %', e; END $f$;
CREATE FUNCTION public.zq_op_email(a bigint, b text) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
  AS $f$ SELECT email::text FROM public.customers WHERE customer_id = a $f$;
CREATE OPERATOR public.~~ (LEFTARG = bigint, RIGHTARG = text, FUNCTION = public.zq_op_email);
CREATE OPERATOR public.### (LEFTARG = bigint, RIGHTARG = text, FUNCTION = public.zq_op_email);
CREATE TYPE public.zq_contact AS (email text);
CREATE FUNCTION public.zq_contact_of(id bigint) RETURNS public.zq_contact LANGUAGE sql STABLE SECURITY DEFINER
  AS $f$ SELECT ROW(email)::public.zq_contact FROM public.customers WHERE customer_id = id $f$;
CREATE CAST (bigint AS public.zq_contact) WITH FUNCTION public.zq_contact_of(bigint);
CREATE DOMAIN public.zq_checked AS bigint CHECK (public.zq_notice_email(VALUE));
CREATE FUNCTION public.zq_audit() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN
  IF NEW.tier = 'zq-notice' THEN RAISE NOTICE 'audit: % changed', NEW.email; END IF;
  IF NEW.tier = 'zq-raise' THEN RAISE EXCEPTION 'audit refused for %', NEW.email USING DETAIL = NEW.phone, HINT = NEW.address; END IF;
  RETURN NEW; END $f$;
CREATE TRIGGER zq_audit BEFORE UPDATE ON public.customers FOR EACH ROW EXECUTE FUNCTION public.zq_audit();

CREATE TABLE public.zq_scratch (id serial, note text);
CREATE TABLE public.zq_ruled (note text);
CREATE RULE zq_rule AS ON INSERT TO public.zq_ruled DO INSTEAD SELECT email FROM public.customers WHERE customer_id = 777777;
CREATE TABLE public.zq_defaults (id int, e text DEFAULT public.zq_get_email(777777));

CREATE VIEW public.zq_v_direct AS SELECT customer_id, email FROM public.customers;
CREATE VIEW public.zq_v_nested AS SELECT * FROM public.zq_v_direct;
CREATE VIEW public.zq_v_func AS SELECT * FROM public.zq_emails();
CREATE VIEW public.zq_v_xml AS SELECT query_to_xml('select email from public.customers where customer_id = 777777', true, false, '') AS x;
CREATE VIEW public.zq_v_secdef AS SELECT public.zq_get_email(777777) AS e;
CREATE VIEW public.zq_v_barrier WITH (security_barrier) AS SELECT customer_id, email FROM public.customers;
CREATE MATERIALIZED VIEW public.zq_mv_direct AS SELECT customer_id, email FROM public.customers WHERE customer_id >= 777777;
CREATE MATERIALIZED VIEW public.zq_mv_func AS SELECT * FROM public.zq_emails();

CREATE EXTENSION IF NOT EXISTS dblink;
CREATE EXTENSION IF NOT EXISTS tablefunc;
CREATE EXTENSION IF NOT EXISTS xml2;
CREATE EXTENSION IF NOT EXISTS postgres_fdw;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE SERVER zq_loop FOREIGN DATA WRAPPER postgres_fdw;
CREATE USER MAPPING FOR PUBLIC SERVER zq_loop OPTIONS (user 'dba', password_required 'false');
CREATE FOREIGN TABLE public.zq_ft_customers (customer_id bigint, email varchar(255)) SERVER zq_loop OPTIONS (schema_name 'public', table_name 'customers');
CREATE TABLE public.zq_fbase (customer_id bigint, email varchar(255));
CREATE FOREIGN TABLE public.zq_ft_child (customer_id bigint, email varchar(255)) INHERITS (public.zq_fbase) SERVER zq_loop OPTIONS (schema_name 'public', table_name 'customers');

SELECT lo_from_bytea(77777, convert_to('{C_EMAIL}', 'UTF8'));
GRANT SELECT ON LARGE OBJECT 77777 TO support;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO support, solutions, legacy;
GRANT ALL ON ALL TABLES IN SCHEMA public TO pii_readers;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO pii_readers;
GRANT SELECT ON LARGE OBJECT 77777 TO pii_readers;
GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO solutions;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO solutions;
ANALYZE public.customers, public.customer_events, public.orders, public.customer_history, public.zq_parted, public.zq_contacts, public.zq_base, public.zq_child;
"#
    )
}

/// The role poison controls run as directly: unmasked, so without pgredact and without the
/// database's wall the attacks must trip the oracles.
pub const RAW_ROLE: &str = "zq_unmasked";
/// The same, with `standard_conforming_strings = off` (for the attacks of role `legacy`).
pub const RAW_LEGACY_ROLE: &str = "zq_unmasked_legacy";

/// The whole fixture: the cluster with `app` behind the proxy, and the masked twin database.
pub struct Fixture {
    pub env: Env,
    pub canaries: Canaries,
}

pub async fn setup() -> Fixture {
    let env = super::start(
        &policy_text(),
        ClusterOptions {
            auth: Auth::Trust,
            log_statements: false,
            extra_conf: vec![(
                "shared_preload_libraries".into(),
                "pg_stat_statements".into(),
            )],
        },
        &fixture_sql(),
    )
    .await;
    let port = env.cluster.port;
    let app = env.cluster.superuser_connect("app").await.expect("app");
    app.batch_execute(&format!(
        "ALTER SERVER zq_loop OPTIONS (ADD host '127.0.0.1', ADD port '{port}', ADD dbname 'app')"
    ))
    .await
    .expect("fdw server");
    // One twin per mask profile: the table's masks, and each role's own (`[roles.<role>]`).
    build_twin(&env, None).await;
    for role in twin_roles() {
        build_twin(&env, Some(&role)).await;
    }
    // The twin's fixture granted the cluster-wide roles again: apply setup-sql once more, as a
    // DBA would after changing grants.
    let cfg = pgredact::config::Config::load(&env.dir.join("pgredact.toml")).expect("config");
    super::apply_setup_sql(&env.cluster, &cfg).await;
    let canaries = Canaries::build(&app).await;
    Fixture { env, canaries }
}

/// The roles the policy gives masks of their own: each gets its own twin, `twin_<role>`.
pub fn twin_roles() -> Vec<String> {
    let policy =
        pgredact::policy::parse_policy(&policy_text(), std::path::Path::new("policies/app.toml"))
            .expect("policy parses");
    let mut roles: Vec<String> = policy
        .tables
        .values()
        .flat_map(|t| t.columns.values())
        .flat_map(|c| c.by_role.iter().map(|r| r.role.clone()))
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

/// The twin database whose masks `user` reads (the fixture's roles are direct, so a role with
/// masks of its own is one of them).
pub fn twin_db(user: &str) -> String {
    if twin_roles().iter().any(|r| r == user) {
        format!("twin_{user}")
    } else {
        "twin".into()
    }
}

/// Builds database `twin` (or `twin_<role>`): the same schema, data and fixture, then every
/// policy column replaced by its mask (computed with the reference implementation in
/// `masks.rs`), as superuser; with `role`, that role's own masks where it has them.
async fn build_twin(env: &Env, role: Option<&str>) {
    let port = env.cluster.port;
    let fixture = fixture_sql();
    let c = &env.cluster;
    let db = role.map_or("twin".to_string(), |r| format!("twin_{r}"));
    // psql blocks: keep the runtime's other worker free for the proxy.
    tokio::task::block_in_place(|| {
        c.create_database(&db).expect("create twin");
        c.superuser_psql(&db, &demo_schema_sql())
            .expect("twin schema");
        c.superuser_psql(&db, &fixture).expect("twin fixture");
    });
    let t = c.superuser_connect(&db).await.expect("twin connect");
    t.batch_execute(&format!(
        "ALTER SERVER zq_loop OPTIONS (ADD host '127.0.0.1', ADD port '{port}', ADD dbname '{db}')"
    ))
    .await
    .expect("twin fdw");
    pgredact::control::ensure(&t, Some(HASH_KEY.as_bytes()))
        .await
        .expect("twin control schema");
    let policy =
        pgredact::policy::parse_policy(&policy_text(), std::path::Path::new("policies/app.toml"))
            .expect("policy parses");
    // The mask `role` reads for each column.
    let mask_of = |cp: &pgredact::policy::ColumnPolicy| -> pgredact::policy::Mask {
        role.and_then(|r| cp.by_role.iter().find(|m| m.role == r))
            .map_or_else(|| cp.mask.clone(), |m| m.mask.clone())
    };
    for tp in policy.tables.values() {
        let mut sets = Vec::new();
        for (col, cp) in &tp.columns {
            let row = t
                .query_one(
                    "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod), bt.typname::text, bt.typcategory::text \
                     FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid \
                     JOIN pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END \
                     WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped",
                    &[&format!("{}.{}", tp.schema, tp.name), col],
                )
                .await
                .unwrap_or_else(|e| panic!("type of {}.{col}: {e}", tp.name));
            let ty = pgredact::policy::ColType {
                sql: row.get(0),
                base: row.get(1),
                category: row.get::<_, String>(2).chars().next().unwrap_or('X'),
            };
            let q = pgredact::policy::quote_ident(col);
            sets.push(format!(
                "{q} = {}",
                super::masks::mask_sql(&mask_of(cp), &q, &ty)
            ));
        }
        let sql = format!(
            "UPDATE {}.{} SET {}",
            pgredact::policy::quote_ident(&tp.schema),
            pgredact::policy::quote_ident(&tp.name),
            sets.join(", ")
        );
        t.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("masking twin {sql}: {e:?}"));
        // JSON path masks, row by row with the reference implementation.
        for (col, cp) in &tp.columns {
            let pgredact::policy::Mask::Json(jm) = mask_of(cp) else {
                continue;
            };
            let rel = format!(
                "{}.{}",
                pgredact::policy::quote_ident(&tp.schema),
                pgredact::policy::quote_ident(&tp.name)
            );
            let q = pgredact::policy::quote_ident(col);
            let rows = t
                .query(
                    &format!("SELECT ctid::text, {q}::text FROM {rel} WHERE {q} IS NOT NULL"),
                    &[],
                )
                .await
                .expect("twin json rows");
            let (mut ids, mut vals) = (Vec::new(), Vec::new());
            for r in rows {
                let doc: serde_json::Value =
                    serde_json::from_str(r.get::<_, &str>(1)).expect("stored json parses");
                ids.push(r.get::<_, String>(0));
                vals.push(super::masks::mask_json(&jm, &doc, HASH_KEY.as_bytes()).to_string());
            }
            t.execute(
                &format!(
                    "UPDATE {rel} AS t SET {q} = CAST(x.v AS pg_catalog.jsonb) FROM unnest($1::text[], $2::text[]) AS x(id, v) WHERE t.ctid = x.id::tid"
                ),
                &[&ids, &vals],
            )
            .await
            .expect("twin json update");
        }
    }
    for tp in policy.tables.values() {
        for (col, cp) in &tp.columns {
            twin_fake_noise(&t, tp, col, &mask_of(cp)).await;
        }
    }
    t.batch_execute(
        "REFRESH MATERIALIZED VIEW public.zq_mv_direct; REFRESH MATERIALIZED VIEW public.zq_mv_func; \
         SELECT lo_unlink(77777); SELECT lo_from_bytea(77777, convert_to('z***@leak-test.example', 'UTF8')); \
         GRANT SELECT ON LARGE OBJECT 77777 TO support; \
         ANALYZE public.customers, public.customer_events, public.orders, public.customer_history;",
    )
    .await
    .expect("twin finish");
    // Self-check: no canary is left in the twin's policy columns (a `hash` pseudonym may contain
    // the digits of a canary phone number).
    let left = rows(
        &t,
        "SELECT customer_id || ' ' || coalesce(email, '-') || ' ' || coalesce(first_name, '-') || ' ' || coalesce(phone, '-') || ' ' || coalesce(address, '-') \
         FROM customers WHERE email LIKE 'zq.%' OR first_name = 'Zqcanaryfirst' OR (phone LIKE '%5550%' AND phone !~ '^[0-9a-f]{16}$') OR address LIKE '%anary%'",
    )
    .await
    .unwrap();
    assert!(left.is_empty(), "twin {db} must be masked: {left:?}");
}

/// Masks `fake` and `noise` on the twin, row by row with the reference implementation
/// (`masks.rs`): values read in binary (the bytes the keyed hash covers), results written back.
pub async fn twin_fake_noise(
    t: &Client,
    tp: &pgredact::policy::TablePolicy,
    col: &str,
    mask: &pgredact::policy::Mask,
) {
    use pgredact::policy::{quote_ident, Mask, Noise};
    if !matches!(mask, Mask::Fake(_) | Mask::Noise(_)) {
        return;
    }
    let rel = format!("{}.{}", quote_ident(&tp.schema), quote_ident(&tp.name));
    let q = quote_ident(col);
    let row = t
        .query_one(
            "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod), a.atttypmod FROM pg_attribute a \
             WHERE a.attrelid = $1::text::regclass AND a.attname = $2",
            &[&rel, &col],
        )
        .await
        .expect("column type");
    let (sql_type, typmod): (String, i32) = (row.get(0), row.get(1));
    // The policy table's primary key columns, in key order (mask noise with per_row only).
    let per_row = matches!(mask, Mask::Noise(n) if n.per_row());
    let pk: Vec<String> = t
        .query(
            "SELECT a.attname::text FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o), pg_attribute a \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary AND a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o",
            &[&rel],
        )
        .await
        .expect("primary key")
        .iter()
        .map(|r| r.get(0))
        .filter(|_| per_row)
        .collect();
    let pk_sel: String = pk.iter().map(|c| format!(", {}", quote_ident(c))).collect();
    let rows = t
        .query(
            &format!("SELECT tableoid::regclass::text, ctid::text, {q}::text, {q}{pk_sel} FROM {rel} WHERE {q} IS NOT NULL"),
            &[],
        )
        .await
        .expect("twin rows");
    let key = HASH_KEY.as_bytes();
    let (mut rels, mut ids, mut vals) = (Vec::new(), Vec::new(), Vec::new());
    let mut value_expr = "CAST(x.v AS {T})".to_string();
    for r in rows {
        let text: String = r.get(2);
        let Raw(bin) = r.get(3);
        let row_key: Vec<Vec<u8>> = (0..pk.len()).map(|i| r.get::<_, Raw>(4 + i).0).collect();
        let out = match mask {
            Mask::Fake(k) => super::masks::fake(*k, key, &text),
            Mask::Noise(n) => {
                let mac = super::masks::noise_mac(key, &row_key, &bin);
                match (n, sql_type.as_str()) {
                    (Noise::Interval { span: sp, .. }, ty) => {
                        // Days (dates) or microseconds (timestamps) from 2000-01-01;
                        // infinity and -infinity stay as they are.
                        let base = if ty == "date" {
                            "DATE '2000-01-01' + CAST(x.v AS int4)"
                        } else if ty.contains("with time zone") {
                            "TIMESTAMPTZ '2000-01-01 00:00:00+00' + CAST(x.v AS int8) * INTERVAL '1 microsecond'"
                        } else {
                            "TIMESTAMP '2000-01-01 00:00:00' + CAST(x.v AS int8) * INTERVAL '1 microsecond'"
                        };
                        value_expr = format!(
                            "CASE x.v WHEN 'max' THEN CAST('infinity' AS {{T}}) WHEN 'min' THEN CAST('-infinity' AS {{T}}) ELSE {base} END"
                        );
                        let (v, max, min, scale) = if ty == "date" {
                            let d = i32::from_be_bytes(bin[..4].try_into().unwrap());
                            (i128::from(d), i128::from(i32::MAX), i128::from(i32::MIN), 1)
                        } else {
                            let us = i64::from_be_bytes(bin[..8].try_into().unwrap());
                            (
                                i128::from(us),
                                i128::from(i64::MAX),
                                i128::from(i64::MIN),
                                1_000_000,
                            )
                        };
                        if v == max {
                            "max".to_string()
                        } else if v == min {
                            "min".to_string()
                        } else {
                            (v + super::masks::noise_span(sp, &mac, ty == "date") * scale)
                                .to_string()
                        }
                    }
                    (Noise::Ratio { ppm, .. }, "double precision") => {
                        let x = f64::from_be_bytes(bin[..8].try_into().unwrap());
                        format!("{:?}", super::masks::noise_float(x, &mac, *ppm, f64::MAX))
                    }
                    (Noise::Ratio { ppm, .. }, "real") => {
                        let x = f32::from_be_bytes(bin[..4].try_into().unwrap());
                        let y = super::masks::noise_float(
                            f64::from(x),
                            &mac,
                            *ppm,
                            f64::from(f32::MAX),
                        );
                        format!("{:?}", y as f32)
                    }
                    (Noise::Ratio { ppm, .. }, ty) => {
                        // Integers and numeric: in units of the column's scale.
                        let (scale, bounds) = match ty {
                            "smallint" => (0, Some((i128::from(i16::MIN), i128::from(i16::MAX)))),
                            "integer" => (0, Some((i128::from(i32::MIN), i128::from(i32::MAX)))),
                            "bigint" => (0, Some((i128::from(i64::MIN), i128::from(i64::MAX)))),
                            _ if typmod >= 4 => {
                                let p = ((typmod - 4) >> 16) & 0xffff;
                                let s = (typmod - 4) & 0xffff;
                                let hi = 10i128.pow(p as u32) - 1;
                                (s as u32, Some((-hi, hi)))
                            }
                            _ => (
                                text.split_once('.').map_or(0, |(_, f)| f.len() as u32),
                                None,
                            ),
                        };
                        let (neg, digits) = match text.strip_prefix('-') {
                            Some(d) => (true, d),
                            None => (false, text.as_str()),
                        };
                        let (i, f) = digits.split_once('.').unwrap_or((digits, ""));
                        let f = format!("{f:0<width$}", width = scale as usize);
                        let mut units: i128 = format!("{i}{f}").parse().expect("number");
                        if neg {
                            units = -units;
                        }
                        let out = super::masks::noise_units(units, &mac, *ppm, bounds);
                        let sign = if out < 0 { "-" } else { "" };
                        let a = out.unsigned_abs();
                        if scale == 0 {
                            format!("{sign}{a}")
                        } else {
                            let p = 10u128.pow(scale);
                            format!("{sign}{}.{:0width$}", a / p, a % p, width = scale as usize)
                        }
                    }
                }
            }
            _ => unreachable!(),
        };
        rels.push(r.get::<_, String>(0));
        ids.push(r.get::<_, String>(1));
        vals.push(out);
    }
    let value_expr = value_expr.replace("{T}", &sql_type);
    t.execute(
        &format!(
            "UPDATE {rel} AS t SET {q} = {value_expr} FROM unnest($1::text[], $2::text[], $3::text[]) AS x(rel, id, v) \
             WHERE t.tableoid = x.rel::regclass AND t.ctid = x.id::tid"
        ),
        &[&rels, &ids, &vals],
    )
    .await
    .expect("twin fake/noise update");
}

impl Fixture {
    pub fn port(&self) -> u16 {
        self.env.addr.port()
    }

    /// A tokio-postgres client through the proxy that records notices and notifications.
    pub async fn proxy(&self, user: &str) -> Result<(Client, Captured), tokio_postgres::Error> {
        connect_capture(&self.env.proxy_connstr(user, "app")).await
    }

    /// A direct (bypassing) client as `user` on `db`.
    pub async fn direct(&self, user: &str, db: &str) -> (Client, Captured) {
        let cs = format!(
            "host=127.0.0.1 port={} user={user} password={} dbname={db}",
            self.env.cluster.port,
            if user == "postgres" { "postgres" } else { user }
        );
        connect_capture(&cs).await.expect("direct connect")
    }

    pub async fn twin(&self) -> (Client, Captured) {
        self.direct("postgres", "twin").await
    }

    /// The twin with the masks `user` reads (see [`twin_db`]).
    pub async fn twin_for(&self, user: &str) -> (Client, Captured) {
        self.direct("postgres", &twin_db(user)).await
    }
}

pub type Captured = Arc<Mutex<Vec<String>>>;

/// Connects and drives the connection, recording every notice and notification as text.
pub async fn connect_capture(connstr: &str) -> Result<(Client, Captured), tokio_postgres::Error> {
    let (client, mut conn) = tokio_postgres::connect(connstr, NoTls).await?;
    let cap: Captured = Arc::new(Mutex::new(Vec::new()));
    let c2 = cap.clone();
    tokio::spawn(async move {
        loop {
            let m = std::future::poll_fn(|cx| conn.poll_message(cx)).await;
            match m {
                Some(Ok(AsyncMessage::Notice(n))) => {
                    c2.lock().unwrap().push(db_error_text(&n));
                }
                Some(Ok(AsyncMessage::Notification(n))) => {
                    c2.lock()
                        .unwrap()
                        .push(format!("NOTIFY {} {}", n.channel(), n.payload()));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
    });
    Ok((client, cap))
}

pub fn db_error_text(d: &tokio_postgres::error::DbError) -> String {
    let mut s = format!("{} {} {}", d.severity(), d.code().code(), d.message());
    for f in [
        d.detail(),
        d.hint(),
        d.where_(),
        d.schema(),
        d.table(),
        d.column(),
        d.datatype(),
        d.constraint(),
        d.routine(),
        d.file(),
    ]
    .into_iter()
    .flatten()
    {
        s.push_str(" | ");
        s.push_str(f);
    }
    s
}

/// Raw bytes of any column value (binary format in the extended protocol).
pub struct Raw(pub Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// One statement's result: rows (cells as text or hex of binary) and the affected-row count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub rows: Vec<Vec<Option<String>>>,
    pub count: Option<u64>,
}

/// What a client got for one SQL string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(Vec<Part>),
    Err { code: String, message: String },
}

impl Outcome {
    pub fn is_refusal(&self) -> bool {
        matches!(self, Outcome::Err { code, .. } if code == "42501")
    }
    pub fn is_pgredact_refusal(&self) -> bool {
        matches!(self, Outcome::Err { code, message } if code == "42501" && message.contains("pgredact"))
    }
    pub fn short(&self) -> String {
        let s = format!("{self:?}");
        if s.len() > 400 {
            format!("{}...", &s[..400])
        } else {
            s
        }
    }
}

/// The answer plus every string the client could see.
pub struct Answer {
    pub outcome: Outcome,
    pub visible: Vec<String>,
}

fn err_outcome(e: &tokio_postgres::Error, visible: &mut Vec<String>) -> Outcome {
    match e.as_db_error() {
        Some(d) => {
            visible.push(db_error_text(d));
            Outcome::Err {
                code: d.code().code().to_string(),
                message: d.message().to_string(),
            }
        }
        None => {
            visible.push(e.to_string());
            Outcome::Err {
                code: "client".into(),
                message: e.to_string(),
            }
        }
    }
}

/// Simple protocol.
pub async fn run_simple(c: &Client, cap: &Captured, sql: &str) -> Answer {
    let mut visible = Vec::new();
    let outcome = match c.simple_query(sql).await {
        Ok(msgs) => {
            let mut parts = Vec::new();
            let mut cur = Part {
                rows: vec![],
                count: None,
            };
            for m in msgs {
                match m {
                    SimpleQueryMessage::Row(r) => {
                        let row: Vec<Option<String>> =
                            (0..r.len()).map(|i| r.get(i).map(String::from)).collect();
                        for v in row.iter().flatten() {
                            visible.push(v.clone());
                        }
                        cur.rows.push(row);
                    }
                    SimpleQueryMessage::CommandComplete(n) => {
                        cur.count = Some(n);
                        parts.push(std::mem::replace(
                            &mut cur,
                            Part {
                                rows: vec![],
                                count: None,
                            },
                        ));
                    }
                    _ => {}
                }
            }
            Outcome::Ok(parts)
        }
        Err(e) => err_outcome(&e, &mut visible),
    };
    visible.extend(cap.lock().unwrap().drain(..));
    Answer { outcome, visible }
}

/// Extended protocol: Parse/Describe, then Bind/Execute (binary results).
pub async fn run_extended(c: &Client, cap: &Captured, sql: &str) -> Answer {
    let mut visible = Vec::new();
    let outcome = match c.prepare(sql).await {
        Err(e) => err_outcome(&e, &mut visible),
        Ok(st) if st.columns().is_empty() => match c.execute(&st, &[]).await {
            Ok(n) => Outcome::Ok(vec![Part {
                rows: vec![],
                count: Some(n),
            }]),
            Err(e) => err_outcome(&e, &mut visible),
        },
        Ok(st) => match c.query(&st, &[]).await {
            Ok(rows) => {
                let mut out = Vec::new();
                for r in &rows {
                    let mut row = Vec::new();
                    for i in 0..r.len() {
                        let v: Option<Raw> = match r.try_get(i) {
                            Ok(v) => v,
                            Err(e) => {
                                visible.push(e.to_string());
                                None
                            }
                        };
                        row.push(v.map(|Raw(b)| {
                            visible.push(String::from_utf8_lossy(&b).into_owned());
                            hex::encode(&b)
                        }));
                    }
                    out.push(row);
                }
                Outcome::Ok(vec![Part {
                    rows: out,
                    count: None,
                }])
            }
            Err(e) => err_outcome(&e, &mut visible),
        },
    };
    visible.extend(cap.lock().unwrap().drain(..));
    Answer { outcome, visible }
}

/// Sorts rows of every part (for order-insensitive comparison).
pub fn normalized(o: &Outcome, ordered: bool) -> Outcome {
    match o {
        Outcome::Ok(parts) if !ordered => Outcome::Ok(
            parts
                .iter()
                .map(|p| {
                    let mut rows = p.rows.clone();
                    rows.sort();
                    Part {
                        rows,
                        count: p.count,
                    }
                })
                .collect(),
        ),
        Outcome::Err { code, .. } => Outcome::Err {
            code: code.clone(),
            message: String::new(),
        },
        other => other.clone(),
    }
}

/// Twin oracle: equal answers, or the proxy refused (42501).
pub fn twin_agrees(proxy: &Outcome, twin: &Outcome, ordered: bool) -> bool {
    proxy.is_refusal() || normalized(proxy, ordered) == normalized(twin, ordered)
}

/// Every encoding of every canary the oracle looks for.
pub struct Canaries {
    /// (label, needle): needles are lower-case unless `case_sensitive`.
    pub needles: Vec<(String, String, bool)>,
}

impl Canaries {
    pub async fn build(db: &Client) -> Canaries {
        use base64_like::encode as b64;
        let mut needles: Vec<(String, String, bool)> = Vec::new();
        for v in canary_values() {
            let lower = v.to_lowercase();
            needles.push((format!("verbatim/casefold {v}"), lower.clone(), false));
            needles.push((
                format!("reversed {v}"),
                lower.chars().rev().collect(),
                false,
            ));
            needles.push((format!("hex {v}"), hex::encode(v.as_bytes()), false));
            needles.push((
                format!("hex lower {v}"),
                hex::encode(lower.as_bytes()),
                false,
            ));
            needles.push((
                format!("hex upper {v}"),
                hex::encode(v.to_uppercase().as_bytes()),
                false,
            ));
            needles.push((format!("base64 {v}"), b64(v.as_bytes()), true));
            needles.push((
                format!("sha256 {v}"),
                hex::encode(Sha256::digest(v.as_bytes())),
                false,
            ));
            let md5: String = db
                .query_one("SELECT md5($1)", &[&v])
                .await
                .expect("md5")
                .get(0);
            needles.push((format!("md5 {v}"), md5, false));
        }
        for f in FRAGMENTS {
            needles.push((format!("fragment {f}"), f.to_string(), false));
        }
        let row = db
            .query_one(
                "SELECT extract(epoch FROM date '1977-07-07')::bigint::text, to_char(date '1977-07-07', 'J'), \
                 ('10.77.77.77'::inet - '0.0.0.0'::inet)::text",
                &[],
            )
            .await
            .expect("derived canaries");
        for i in 0..3 {
            let v: String = row.get(i);
            needles.push((format!("derived {v}"), v, false));
        }
        Canaries { needles }
    }

    /// Labels of the canary forms found in `texts`, ignoring needles the SQL itself contains.
    pub fn hits(&self, sql: &str, texts: &[String]) -> Vec<String> {
        let sql_l = sql.to_lowercase();
        let joined: String = texts.join("\n");
        let flat: String = joined
            .chars()
            .filter(|c| *c != '\n' && *c != '\r')
            .collect();
        let lower = joined.to_lowercase();
        let flat_lower = flat.to_lowercase();
        let mut out = Vec::new();
        for (label, needle, cs) in &self.needles {
            if sql_l.contains(&needle.to_lowercase()) {
                continue;
            }
            let found = if *cs {
                flat.contains(needle.as_str())
            } else {
                lower.contains(needle.as_str()) || flat_lower.contains(needle.as_str())
            };
            if found {
                out.push(label.clone());
            }
        }
        out
    }
}

/// Minimal standard base64 (no dependency).
pub mod base64_like {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(b: &[u8]) -> String {
        let mut s = String::new();
        for ch in b.chunks(3) {
            let n = (ch[0] as u32) << 16
                | (*ch.get(1).unwrap_or(&0) as u32) << 8
                | *ch.get(2).unwrap_or(&0) as u32;
            s.push(A[(n >> 18) as usize & 63] as char);
            s.push(A[(n >> 12) as usize & 63] as char);
            if ch.len() > 1 {
                s.push(A[(n >> 6) as usize & 63] as char);
            }
            if ch.len() > 2 {
                s.push(A[n as usize & 63] as char);
            }
        }
        s
    }
}

/// Runs `sql` over a raw connection (simple, or extended when `extended`), inside BEGIN/ROLLBACK
/// when `tx`; returns every message received (startup included).
pub async fn raw_run(
    port: u16,
    user: &str,
    sql: &str,
    extended: bool,
    tx: bool,
) -> Result<Vec<wire::Msg>, String> {
    let (mut w, mut msgs) = wire::Wire::connect(port, user, "app", &[]).await?;
    if tx {
        msgs.extend(w.roundtrip(&wire::query("BEGIN"), 1).await);
    }
    let bytes = if extended {
        wire::extended(sql)
    } else {
        wire::query(sql)
    };
    msgs.extend(w.roundtrip(&bytes, 1).await);
    if tx {
        msgs.extend(w.roundtrip(&wire::query("ROLLBACK"), 1).await);
    }
    Ok(msgs)
}

/// What the trials of a libtest-mimic suite share (tests/adversarial.rs, tests/usability.rs): one
/// tokio runtime, the fixture (built on it at most once per process, by the first trial that
/// needs it) and the suite's counts `T`. The suites force `test_threads` to 1, so the trials run
/// one at a time, in order, on the main thread, each `block_on` the runtime: the cases share one
/// cluster whose state they see and change.
pub struct Kit<T> {
    rt: tokio::runtime::Runtime,
    fx: Mutex<Option<Arc<Fixture>>>,
    totals: Mutex<T>,
}

impl<T: Default> Kit<T> {
    /// A multi-thread runtime with 2 workers, as `#[tokio::test(flavor = "multi_thread",
    /// worker_threads = 2)]` had (`block_in_place` needs one).
    pub fn new() -> Kit<T> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Kit {
            rt,
            fx: Mutex::new(None),
            totals: Mutex::new(T::default()),
        }
    }

    /// The fixture, built on first use. A panic while building poisons the lock, and every later
    /// trial then fails at once instead of building it again.
    pub fn fixture(&self) -> Arc<Fixture> {
        let mut fx = self
            .fx
            .lock()
            .expect("the fixture could not be built (see the first failed trial)");
        fx.get_or_insert_with(|| Arc::new(self.rt.block_on(setup())))
            .clone()
    }

    pub fn totals(&self) -> std::sync::MutexGuard<'_, T> {
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the fixture on the shared runtime.
    pub fn block_on<F, Fut>(&self, f: F) -> Fut::Output
    where
        F: FnOnce(Arc<Fixture>) -> Fut,
        Fut: std::future::Future,
    {
        let fx = self.fixture();
        self.rt.block_on(f(fx))
    }

    /// Stops the proxy and the cluster (the fixture lives in the kit, not in a test function),
    /// once every trial is done with it.
    pub fn shut_down(kit: Arc<Kit<T>>) {
        if let Ok(kit) = Arc::try_unwrap(kit) {
            let fx = kit.fx.lock().unwrap_or_else(|e| e.into_inner()).take();
            kit.rt.block_on(async move { drop(fx) });
        }
    }
}
