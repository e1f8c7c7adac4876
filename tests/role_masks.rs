//! Per-role masks: `[roles.<role>]` gives the members of a role their own mask
//! for a PII column; everyone else masked keeps the table's mask. Checked through pgredact and
//! straight to PostgreSQL (the masking views pick the mask by the reading role's membership),
//! with the values compared to the independent twin implementation in support/masks.rs.
mod support;

use pgredact::pgcluster::{Auth, ClusterOptions};
use pgredact::policy::{ColType, Mask};
use support::masks::mask_sql;
use support::*;

const ROLES: &str = r#"
[roles.solutions]
"public.customers".email = "hash"
"public.customers".first_name = "hash"

[roles.analysts]
"public.customers".email = "null"
"public.customers".first_name = { mask = "partial", keep_first = 2, padding = "~" }
"#;

const EXTRA: &str = "
CREATE ROLE analysts;
CREATE ROLE solutions_jr LOGIN PASSWORD 'solutions_jr' IN ROLE solutions;
CREATE ROLE analyst LOGIN PASSWORD 'analyst' IN ROLE analysts;
-- A member of both: the role listed first in the policy (solutions) decides.
CREATE ROLE both_teams LOGIN PASSWORD 'both_teams' IN ROLE analysts, solutions;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO analysts;
GRANT USAGE ON SCHEMA public TO analysts, solutions_jr, both_teams;
DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO analysts, solutions_jr, both_teams', current_database()); END $$;
";

/// The demo policy without its own `[roles.solutions]` section.
fn demo_policy_without_roles() -> &'static str {
    let p = pgredact::demo::EXAMPLE_POLICY;
    &p[..p.find("\n# Per-role masks").unwrap_or(p.len())]
}

fn text_type(sql: &str) -> ColType {
    ColType {
        sql: sql.into(),
        base: if sql == "text" { "text" } else { "varchar" }.into(),
        category: 'S',
    }
}

/// The masked (customer_id, email, first_name) of customers 1-30, as the twin computes them with
/// `email_mask` and `first_name_mask`, read by the superuser (`hash` in Rust, with the test key).
async fn twin(
    su: &tokio_postgres::Client,
    email_mask: &Mask,
    first_name_mask: &Mask,
) -> Vec<String> {
    let col = |m: &Mask, c: &str, ty: &str| match m {
        Mask::Hash => c.to_string(),
        m => mask_sql(m, c, &text_type(ty)),
    };
    let sql = format!(
        "SELECT customer_id::text, {}, {} FROM public.customers WHERE customer_id <= 30 ORDER BY customers.customer_id",
        col(email_mask, "email", "character varying(255)"),
        col(first_name_mask, "first_name", "text"),
    );
    let hash = |m: &Mask, v: Option<&str>| match (m, v) {
        (_, None) => "NULL".to_string(),
        (Mask::Hash, Some(v)) => pgredact::policy::hash_pseudonym(HASH_KEY.as_bytes(), v),
        (_, Some(v)) => v.to_string(),
    };
    su.query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}",
                r.get::<_, String>(0),
                hash(email_mask, r.get(1)),
                hash(first_name_mask, r.get(2))
            )
        })
        .collect()
}

const READ: &str =
    "SELECT customer_id, email, first_name FROM customers WHERE customer_id <= 30 ORDER BY 1";

async fn connect_direct(env: &Env, user: &str) -> tokio_postgres::Client {
    env.cluster
        .connect(user, Some(user), DB)
        .await
        .unwrap_or_else(|e| panic!("direct connect {user}: {e}"))
}

async fn connect_proxy(env: &Env, user: &str) -> tokio_postgres::Client {
    let conn = format!(
        "host=127.0.0.1 port={} user={user} password={user} dbname={DB}",
        env.addr.port()
    );
    let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {user}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reads_its_own_mask_through_pgredact_and_directly() {
    let policy = format!("{}{ROLES}", demo_policy_without_roles());
    let env = start(
        &policy,
        ClusterOptions {
            auth: Auth::Scram,
            ..Default::default()
        },
        EXTRA,
    )
    .await;
    let su = env.direct("postgres").await;
    let default_email = Mask::Email;
    let default_first = Mask::Partial {
        keep_first: 1,
        keep_last: 0,
        padding: "***".into(),
    };
    let want_default = twin(&su, &default_email, &default_first).await;
    let want_solutions = twin(&su, &Mask::Hash, &Mask::Hash).await;
    let want_analysts = twin(
        &su,
        &Mask::Null,
        &Mask::Partial {
            keep_first: 2,
            keep_last: 0,
            padding: "~".into(),
        },
    )
    .await;
    assert_eq!(want_default.len(), 30);
    assert_ne!(want_default, want_solutions);
    assert_ne!(want_default, want_analysts);

    for (user, want) in [
        ("support", &want_default),
        ("solutions", &want_solutions),
        ("solutions_jr", &want_solutions),
        ("analyst", &want_analysts),
        ("both_teams", &want_solutions),
    ] {
        let via = connect_proxy(&env, user).await;
        assert_eq!(
            &rows(&via, READ).await.unwrap(),
            want,
            "{user} through pgredact"
        );
        let direct = connect_direct(&env, user).await;
        let direct_read = READ.replace("FROM customers", "FROM pgredact_masked.customers");
        assert_eq!(
            &rows(&direct, &direct_read).await.unwrap(),
            want,
            "{user} straight to PostgreSQL"
        );
        // Joins on a pseudonym work within a role's view of the data.
        if user == "solutions" {
            let n = rows(
                &via,
                "SELECT count(*) FROM customers a JOIN customers b ON a.email = b.email WHERE a.customer_id <= 30",
            )
            .await
            .unwrap();
            assert_eq!(n, vec!["30"]);
        }
    }
    // A superuser reading the view gets the table's masks, and SET ROLE picks the role's.
    let direct_read = READ.replace("FROM customers", "FROM pgredact_masked.customers");
    assert_eq!(
        &rows(&su, &direct_read).await.unwrap(),
        &want_default,
        "superuser"
    );
    su.batch_execute("SET ROLE solutions_jr").await.unwrap();
    assert_eq!(
        &rows(&su, &direct_read).await.unwrap(),
        &want_solutions,
        "SET ROLE solutions_jr"
    );
    su.batch_execute("RESET ROLE").await.unwrap();
    // The DBA still reads raw data.
    let dba = env.proxy("dba").await;
    let raw = rows(&dba, READ).await.unwrap();
    assert_ne!(raw, want_default);
    assert!(raw[0].contains('@'), "{raw:?}");

    // The masking view keeps the column types (typmod included) with the per-role CASE.
    let types = rows(
        &su,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'pgredact_masked.customers'::regclass AND attname IN ('email', 'first_name') ORDER BY attname",
    )
    .await
    .unwrap();
    assert_eq!(types, vec!["character varying(255)", "text"]);

    // Writes: a role's mask does not change what is PII. solutions still may not write or
    // filter on the column, and still may write non-PII ones.
    let sol = connect_proxy(&env, "solutions").await;
    assert_refused(
        sol.simple_query("UPDATE customers SET email = 'x@example.com' WHERE customer_id = 1")
            .await,
        "email",
        "PII write as solutions",
    );
    sol.simple_query("UPDATE customers SET tier = tier WHERE customer_id = 1")
        .await
        .unwrap();
}

#[test]
fn role_masks_are_checked_when_the_policy_loads() {
    let base = demo_policy_without_roles();
    let parse = |extra: &str| {
        pgredact::policy::parse_policy(
            &format!("{base}\n{extra}"),
            std::path::Path::new("policies/app.toml"),
        )
    };
    let load = |extra: &str| parse(extra).map_err(|e| e.to_string());
    // The line of the role entry: the base ends with a newline, then `format!` adds one and
    // the snippet starts with one, then the header, then the entry.
    let lines = base.matches('\n').count() + 4;
    // A column the table does not list as PII.
    let snippet = "\n[roles.solutions]\n\"public.customers\".tier = \"hash\"\n";
    match parse(snippet).unwrap_err() {
        pgredact::policy::Error::At { path, line, .. } => {
            assert_eq!((path.to_str(), line), (Some("policies/app.toml"), lines))
        }
        other => panic!("not a file:line error: {other}"),
    }
    let e = load(snippet).unwrap_err();
    assert!(e.starts_with(&format!("policies/app.toml:{lines}:")), "{e}");
    assert!(e.contains("not a PII column"), "{e}");
    // A table without an entry.
    let e = load("\n[roles.solutions]\n\"public.nope\".x = \"hash\"\n").unwrap_err();
    assert!(e.contains("no entry under [tables]"), "{e}");
    // An unmasked role.
    let e = load("\n[roles.pii_readers]\n\"public.customers\".email = \"hash\"\n").unwrap_err();
    assert!(e.contains("unmasked_roles"), "{e}");
    // forget stays the table's.
    let e = load(
        "\n[roles.solutions]\n\"public.customers\".email = { mask = \"hash\", forget = \"'x'\" }\n",
    )
    .unwrap_err();
    assert!(e.contains("forget"), "{e}");
    // An unknown mask.
    let e = load("\n[roles.solutions]\n\"public.customers\".email = \"sparkle\"\n").unwrap_err();
    assert!(e.starts_with(&format!("policies/app.toml:{lines}:")), "{e}");

    // Order: roles in the order they first appear; the table's fingerprint covers them.
    let p = load(ROLES).unwrap();
    let t = p.table("public", "customers").unwrap();
    let roles: Vec<&str> = t.columns["email"]
        .by_role
        .iter()
        .map(|r| r.role.as_str())
        .collect();
    assert_eq!(roles, vec!["solutions", "analysts"]);
    let plain = load("").unwrap();
    assert_ne!(
        plain.table("public", "customers").unwrap().fingerprint(),
        t.fingerprint()
    );
    let swapped = load(&ROLES.replace("email = \"hash\"", "email = \"redact\"")).unwrap();
    assert_ne!(
        swapped.table("public", "customers").unwrap().fingerprint(),
        t.fingerprint()
    );
}
