//! The wall: PostgreSQL itself enforces the masks. Masked roles connecting straight
//! to PostgreSQL are denied every PII column of every protected relation (partitions and
//! inheritance children included) and read masked values through the masking views; DDL that
//! makes a relation protected, or grants PII, is locked down in its own transaction; no function
//! computes a pseudonym of a value of the caller's choosing.

mod support;

use pgredact::pgcluster::ClusterOptions;
use support::*;

const EXTRA: &str = "
CREATE TABLE public.contacts (id bigint, region text, email text, note text) PARTITION BY LIST (region);
CREATE TABLE public.contacts_eu PARTITION OF public.contacts FOR VALUES IN ('eu');
CREATE TABLE public.contacts_us PARTITION OF public.contacts FOR VALUES IN ('us');
INSERT INTO public.contacts VALUES (1, 'eu', 'anna@eu.example', 'n1'), (2, 'us', 'bob@us.example', 'n2');
CREATE TABLE public.vip (since date) INHERITS (public.customers);
INSERT INTO public.vip (customer_id, email, phone, tier, since)
  VALUES (900001, 'vip.person@example.com', '+44 1234 99', 'platinum', '2020-01-01');
CREATE TABLE public.contacts_apac (id bigint, region text, email text, note text);
INSERT INTO public.contacts_apac VALUES (3, 'apac', 'chen@apac.example', 'n3');
GRANT SELECT ON ALL TABLES IN SCHEMA public TO support;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO solutions;
GRANT ALL ON ALL TABLES IN SCHEMA public TO pii_readers;
";

const TABLES: &str = "[tables.\"public.contacts\"]\nsubject = \"id\"\ncolumns.email = \"email\"\n";

/// (relation, its PII columns) for every relation the policy protects in this fixture.
fn protected() -> Vec<(&'static str, Vec<&'static str>)> {
    let customers = vec![
        "first_name",
        "last_name",
        "email",
        "phone",
        "address",
        "birth_date",
    ];
    vec![
        ("customers", customers.clone()),
        ("vip", customers),
        ("customer_events", vec!["ip_address", "user_agent"]),
        ("orders", vec!["shipping_address"]),
        ("customer_history", vec!["email", "phone", "address"]),
        ("contacts", vec!["email"]),
        ("contacts_eu", vec!["email"]),
        ("contacts_us", vec!["email"]),
    ]
}

/// Every (role, relation, column, privilege) PostgreSQL would allow a masked role on a PII column.
async fn pii_privileges(su: &tokio_postgres::Client, rels: &[(&str, Vec<&str>)]) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, cols) in rels {
        for col in cols {
            let r = su
                .query(
                    "SELECT r || ' ' || p FROM unnest(ARRAY['support', 'solutions', 'legacy_x', 'public']) r, \
                     unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) p \
                     WHERE (r = 'public' OR EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)) \
                       AND has_column_privilege(r, $1::text::regclass, $2::text, p)",
                    &[&format!("public.{rel}"), col],
                )
                .await
                .expect("privilege query");
            for row in r {
                out.push(format!("{rel}.{col}: {}", row.get::<_, String>(0)));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_roles_straight_to_postgresql_are_denied_pii_and_read_the_masking_views() {
    let env = start_extended(TABLES, EXTRA).await;
    let su = env.direct("postgres").await;
    // No masked role (PUBLIC included) holds any privilege on a PII column.
    assert_eq!(
        pii_privileges(&su, &protected()).await,
        Vec::<String>::new()
    );
    let sup = env.direct("support").await;
    for (rel, cols) in protected() {
        for col in &cols {
            let e = sup
                .simple_query(&format!("SELECT {col} FROM public.{rel} LIMIT 1"))
                .await
                .expect_err(&format!("{rel}.{col} must be denied"));
            assert_eq!(code(&e), "42501", "{rel}.{col}: {e}");
        }
        // Whole rows need every column.
        let e = sup
            .simple_query(&format!("SELECT * FROM public.{rel} LIMIT 1"))
            .await
            .unwrap_err();
        assert_eq!(code(&e), "42501", "{rel}: {e}");
        // The masking view: every column, readable.
        let n = rows(&sup, &format!("SELECT count(*) FROM pgredact_masked.{rel}"))
            .await
            .unwrap_or_else(|e| panic!("view of {rel}: {e}"));
        assert_ne!(n, vec!["0"], "{rel}");
    }
    // Exact masked values straight from PostgreSQL, partitions and children included.
    assert_eq!(
        rows(&sup, "SELECT email, phone, tier FROM pgredact_masked.vip")
            .await
            .unwrap(),
        vec!["v***@example.com|****99|platinum"]
    );
    assert_eq!(
        rows(
            &sup,
            "SELECT id, email, note FROM pgredact_masked.contacts ORDER BY id"
        )
        .await
        .unwrap(),
        vec!["1|a***@eu.example|n1", "2|b***@us.example|n2"]
    );
    assert_eq!(
        rows(&sup, "SELECT email FROM pgredact_masked.contacts_eu")
            .await
            .unwrap(),
        vec!["a***@eu.example"]
    );
    // Reading the parent without ONLY reads the child through the same masks; ONLY has its own view.
    let only = rows(
        &su,
        "SELECT only_view FROM pgredact_admin.masking_views WHERE relid = 'public.customers'::regclass",
    )
    .await
    .unwrap();
    let n = rows(
        &sup,
        &format!(
            "SELECT count(*) FROM pgredact_masked.\"{}\" WHERE customer_id = 900001",
            only[0]
        ),
    )
    .await
    .unwrap();
    assert_eq!(n, vec!["0"], "the child's row is not in ONLY customers");
    // Non-PII columns stay readable directly, and non-PII writes work.
    assert_eq!(
        rows(
            &sup,
            "SELECT tier FROM public.customers WHERE customer_id = 1"
        )
        .await
        .unwrap(),
        vec!["silver"]
    );
    let sol = env.direct("solutions").await;
    sol.simple_query("UPDATE public.contacts SET note = 'x' WHERE id = 1")
        .await
        .expect("non-PII write");
    assert_eq!(
        code(
            &sol.simple_query("UPDATE public.contacts SET email = 'x' WHERE id = 1")
                .await
                .unwrap_err()
        ),
        "42501"
    );
    // DBAs read raw data.
    let dba = env.direct("dba").await;
    assert_eq!(
        rows(&dba, "SELECT email FROM public.contacts_eu")
            .await
            .unwrap(),
        vec!["anna@eu.example"]
    );
    // A masked user's temp tables named like types cannot break the masks: the views' types
    // were resolved when they were built.
    let p = env.proxy("support").await;
    p.batch_execute("CREATE TEMP TABLE date (x int); CREATE TEMP TABLE text (x int); CREATE TEMP TABLE inet (x int)")
        .await
        .unwrap();
    assert_eq!(
        rows(
            &p,
            "SELECT birth_date, email, first_name FROM customers WHERE customer_id = 1"
        )
        .await
        .unwrap(),
        vec!["1999-01-01|d***@example.com|D***"]
    );
    // pgredact check passes on this database.
    env.check_passes().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_that_protects_or_grants_is_locked_down_in_its_own_transaction() {
    let env = start_extended(TABLES, EXTRA).await;
    let su = env.direct("postgres").await;
    let sup = env.direct("support").await;
    let proxy = env.proxy("support").await;
    // Before: an ordinary table, read raw by support through pgredact and directly.
    assert_eq!(
        rows(&sup, "SELECT email FROM public.contacts_apac")
            .await
            .unwrap(),
        vec!["chen@apac.example"]
    );
    assert_eq!(
        rows(&proxy, "SELECT email FROM contacts_apac")
            .await
            .unwrap(),
        vec!["chen@apac.example"]
    );
    // Attached as a partition of a policy table: denied at once, directly...
    su.batch_execute(
        "ALTER TABLE public.contacts ATTACH PARTITION public.contacts_apac FOR VALUES IN ('apac')",
    )
    .await
    .unwrap();
    let e = sup
        .simple_query("SELECT email FROM public.contacts_apac")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    assert_eq!(
        rows(&sup, "SELECT email FROM pgredact_masked.contacts_apac")
            .await
            .unwrap(),
        vec!["c***@apac.example"]
    );
    // ... and through pgredact: masked, or denied while its catalog catches up; never raw.
    masked_or_refused(
        &proxy,
        "SELECT email FROM contacts_apac",
        &["c***@apac.example"],
    )
    .await;
    env.refresh_catalog().await;
    assert_eq!(
        rows(&proxy, "SELECT email FROM contacts_apac")
            .await
            .unwrap(),
        vec!["c***@apac.example"]
    );
    // A new partition, then a table-level grant on it: the grant is narrowed as it commits.
    su.batch_execute(
        "CREATE TABLE public.contacts_emea PARTITION OF public.contacts FOR VALUES IN ('emea');
         INSERT INTO public.contacts VALUES (4, 'emea', 'dora@emea.example', 'n4');
         GRANT SELECT ON public.contacts_emea TO support;",
    )
    .await
    .unwrap();
    assert_eq!(
        code(
            &sup.simple_query("SELECT email FROM public.contacts_emea")
                .await
                .unwrap_err()
        ),
        "42501"
    );
    assert_eq!(
        rows(&sup, "SELECT id, note FROM public.contacts_emea")
            .await
            .unwrap(),
        vec!["4|n4"]
    );
    assert_eq!(
        rows(&sup, "SELECT email FROM pgredact_masked.contacts_emea")
            .await
            .unwrap(),
        vec!["d***@emea.example"]
    );
    // A table-level grant on a policy table, in a transaction: narrowed at commit.
    su.batch_execute("BEGIN; GRANT SELECT, UPDATE ON public.customers TO solutions; COMMIT;")
        .await
        .unwrap();
    assert_eq!(
        pii_privileges(&su, &protected()).await,
        Vec::<String>::new()
    );
    // A view that hands out PII with its owner's rights, granted to a masked role.
    su.batch_execute(
        "CREATE VIEW public.all_emails AS SELECT customer_id, email FROM public.customers;
         GRANT SELECT ON public.all_emails TO support;",
    )
    .await
    .unwrap();
    assert_eq!(
        code(
            &sup.simple_query("SELECT email FROM public.all_emails")
                .await
                .unwrap_err()
        ),
        "42501"
    );
    // A SECURITY DEFINER function of a role that reads raw data: EXECUTE goes from PUBLIC to the
    // unmasked roles.
    su.batch_execute(
        "CREATE FUNCTION public.email_of(id bigint) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER
           AS $f$ SELECT email::text FROM public.customers WHERE customer_id = id $f$;",
    )
    .await
    .unwrap();
    assert_eq!(
        code(
            &sup.simple_query("SELECT public.email_of(1)")
                .await
                .unwrap_err()
        ),
        "42501"
    );
    let dba = env.direct("dba").await;
    assert!(rows(&dba, "SELECT public.email_of(1)").await.unwrap()[0].ends_with("@example.com"));
    // A column added to a policy table is not PII: the masking view gains it, and support's
    // table-level grant (turned into column grants) reaches it, directly too.
    su.batch_execute("ALTER TABLE public.customers ADD COLUMN loyalty integer DEFAULT 7")
        .await
        .unwrap();
    assert_eq!(
        rows(
            &sup,
            "SELECT loyalty FROM pgredact_masked.customers WHERE customer_id = 1"
        )
        .await
        .unwrap(),
        vec!["7"]
    );
    assert_eq!(
        rows(
            &sup,
            "SELECT loyalty FROM public.customers WHERE customer_id = 1"
        )
        .await
        .unwrap(),
        vec!["7"]
    );
    // A column type change on a policy table is not blocked by its masking view.
    su.batch_execute("ALTER TABLE public.customers ALTER COLUMN tier TYPE varchar(40)")
        .await
        .expect("the masking view is rebuilt around the change");
    assert_eq!(
        rows(
            &sup,
            "SELECT tier FROM pgredact_masked.customers WHERE customer_id = 1"
        )
        .await
        .unwrap(),
        vec!["silver"]
    );
    assert_eq!(
        pii_privileges(&su, &protected()).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_function_computes_a_pseudonym_of_a_chosen_value() {
    let env = start_default().await;
    // pgredact's own schemas: nothing a masked role may execute.
    let su = env.direct("postgres").await;
    let callable = rows(
        &su,
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname LIKE 'pgredact%' AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype) \
           AND (has_function_privilege('support', p.oid, 'EXECUTE') OR has_function_privilege('solutions', p.oid, 'EXECUTE')) \
         ORDER BY 1",
    )
    .await
    .unwrap();
    // Only the maskers the masking views call as the reading role: the JSON ones take the key
    // as an argument, `fake` and `noise` the keyed hash the view computed; a masked role can read
    // neither the key nor compute the hash without it. `member_of` (per-role masks) only tells
    // whether the reader is a member of a role, which pg_roles and pg_has_role tell anyway.
    assert_eq!(
        callable,
        vec![
            "pgredact_mask.fake(text,bytea)",
            "pgredact_mask.fake_ascii(text)",
            "pgredact_mask.fake_fill(text,bytea,integer)",
            "pgredact_mask.fake_pick(text,bytea,integer)",
            "pgredact_mask.mac_int(bytea,integer,integer)",
            "pgredact_mask.mask_json(jsonb,jsonb,bytea,bytea)",
            "pgredact_mask.mask_json_leaf(jsonb,jsonb,bytea,bytea)",
            "pgredact_mask.mask_json_walk(jsonb,jsonb,bytea,bytea,text,jsonb)",
            "pgredact_mask.member_of(name)",
            "pgredact_mask.noise_date(date,bytea,bigint)",
            "pgredact_mask.noise_float(double precision,bytea,bigint,double precision)",
            "pgredact_mask.noise_num(numeric,bytea,bigint,numeric,numeric,numeric)",
            "pgredact_mask.noise_offset(bytea,numeric)",
            "pgredact_mask.noise_ts(timestamp without time zone,bytea,bigint)",
            "pgredact_mask.noise_tstz(timestamp with time zone,bytea,bigint)",
        ]
    );
    let usage = rows(
        &su,
        "SELECT has_schema_privilege('support', 'pgredact_admin', 'USAGE') OR has_schema_privilege('solutions', 'pgredact_admin', 'USAGE')",
    )
    .await
    .unwrap();
    assert_eq!(usage, vec!["f"]);
    // Without the key there is no pseudonym.
    let no_key = rows(
        &su,
        "SELECT pgredact_mask.mask_json('{\"a\": \"Walker\"}', '{\"rules\": [], \"default\": {\"kind\": \"hash\"}}', NULL, NULL)::text",
    )
    .await
    .unwrap();
    assert_eq!(no_key, vec!["{\"a\": null}"]);
    let sup = env.direct("support").await;
    for sql in [
        "SELECT pgredact.mask_hash('Walker')",
        "SELECT pgredact.hmac_hex('Walker')",
        "SELECT * FROM pgredact.hash_key",
        "SELECT pgredact_admin.mask_expr('x', 'text'::regtype, -1, '{\"kind\": \"hash\"}')",
        "SELECT * FROM pgredact_admin.masking_views",
    ] {
        let e = sup.simple_query(sql).await.expect_err(sql);
        assert!(
            ["42501", "42883", "3F000"].contains(&code(&e).as_str()),
            "{sql}: {e}"
        );
    }
    // The only pseudonyms are those of stored values: a masked role cannot store a chosen one.
    let sol = env.direct("solutions").await;
    let e = sol
        .simple_query("INSERT INTO customers (customer_id, last_name) VALUES (990001, 'Walker')")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    let e = sol
        .simple_query("UPDATE customers SET last_name = 'Walker' WHERE customer_id = 1")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    // Through pgredact, the same calls are refused with an explanation.
    let p = env.proxy("support").await;
    assert_refused(
        p.simple_query("SELECT pgredact.mask_hash('Walker')").await,
        "pgredact",
        "mask_hash through pgredact",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_fails_the_check_refuses_masked_sessions_until_setup_sql_runs() {
    // Table-level grants pgredact would narrow by itself, and a membership it never touches:
    // pg_read_all_data reads every column past any grant.
    let extra = format!("{EXTRA}\nGRANT pg_read_all_data TO support;");
    let env = start_with(
        &example_policy_with(TABLES),
        ClusterOptions::default(),
        &extra,
        false,
    )
    .await;
    let cfg = env.config();
    // setup-sql prints what fixes it, only narrowing.
    let sql = pgredact::wall::setup_sql(&cfg, Some(DB)).await.unwrap();
    assert!(
        sql.contains("REVOKE SELECT ON public.customers FROM support; GRANT SELECT (customer_id, city, country, tier, segment, lifetime_value, created_at, updated_at) ON public.customers TO support;"),
        "{sql}"
    );
    assert!(
        sql.contains("REVOKE pg_read_all_data FROM support;"),
        "{sql}"
    );
    assert!(!sql.contains("GRANT ALL"), "never widens");
    // Masked sessions: refused after authentication, naming violations. Unmasked: fine.
    let e = env.try_proxy("support", DB).await.map(|_| ()).unwrap_err();
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert_eq!(code(&e), "42501", "{e}");
    assert!(msg.contains("fails the privilege check"), "{msg}");
    assert!(msg.contains("support holds SELECT on public."), "{msg}");
    assert!(msg.contains("pg_read_all_data"), "{msg}");
    let dba = env.proxy("dba").await;
    assert_eq!(rows(&dba, "SELECT 1").await.unwrap(), vec!["1"]);
    // check lists every violation and fails.
    let (lines, failed) = pgredact::check::run(&cfg).await;
    assert!(failed);
    assert!(
        lines.iter().any(
            |l| l.contains("error: database \"app\": support holds MEMBER on pg_read_all_data")
        ),
        "{lines:#?}"
    );
    // Once a superuser ran it, masked sessions work and check passes.
    apply_setup_sql(&env.cluster, &cfg).await;
    let db = env.shared.db("app").await.unwrap();
    db.periodic_refresh(&env.shared).await.unwrap();
    let s = env.proxy("support").await;
    assert!(
        rows(&s, "SELECT email FROM customers WHERE customer_id = 1")
            .await
            .unwrap()[0]
            .contains("***@")
    );
    env.check_passes().await;
}
