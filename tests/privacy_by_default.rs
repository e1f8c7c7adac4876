//! Privacy by default. A policy table with `privacy_by_default = true` masks
//! every column it lists neither as `public` nor under `columns` (mask `redact`), in PostgreSQL
//! itself (masking view, column privileges, at DDL time) and through pgredact.

mod support;

use support::*;

const EXTRA: &str = "
CREATE TABLE public.accounts (
    account_id bigint PRIMARY KEY,
    tier text NOT NULL,
    email text,
    notes text,
    score integer,
    opened date,
    vip boolean
);
INSERT INTO public.accounts VALUES
  (1, 'gold', 'anna.berg@example.com', 'call anna.berg@example.com after 5', 42, '2021-03-04', true),
  (2, 'silver', 'bob.stone@example.net', 'prefers bob.stone@example.net', 7, '2022-05-06', false);
GRANT SELECT ON public.accounts TO support;
GRANT SELECT, INSERT, UPDATE ON public.accounts TO solutions;
GRANT ALL ON public.accounts TO pii_readers;
GRANT SELECT, UPDATE, TRIGGER ON public.accounts TO pgredact;
";

const TABLES: &str = "[tables.\"public.accounts\"]\nsubject = \"account_id\"\nprivacy_by_default = true\npublic = [\"account_id\", \"tier\"]\ncolumns.email = \"email\"\n";

const ALL: &str = "SELECT account_id, tier, email, notes, score, opened, vip";
const MASKED: [&str; 2] = [
    "1|gold|a***@example.com|****|0|1900-01-01|NULL",
    "2|silver|b***@example.net|****|0|1900-01-01|NULL",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_columns_read_redacted_through_pgredact_and_straight_from_the_masking_view() {
    let env = start_extended(TABLES, EXTRA).await;
    // Through pgredact: public columns raw, listed ones by their mask, the rest redacted
    // (text ****, numbers 0, dates 1900-01-01, other types NULL).
    let p = env.proxy("support").await;
    assert_eq!(
        rows(&p, &format!("{ALL} FROM accounts ORDER BY account_id"))
            .await
            .unwrap(),
        MASKED
    );
    // Predicates see the masked value too.
    assert_eq!(
        rows(
            &p,
            "SELECT count(*) FROM accounts WHERE notes LIKE '%anna%' OR score = 42"
        )
        .await
        .unwrap(),
        vec!["0"]
    );
    // Straight to PostgreSQL: the masking view masks the same, the raw columns are denied,
    // the public ones readable.
    let sup = env.direct("support").await;
    assert_eq!(
        rows(
            &sup,
            &format!("{ALL} FROM pgredact_masked.accounts ORDER BY account_id")
        )
        .await
        .unwrap(),
        MASKED
    );
    for col in ["notes", "score", "opened", "vip", "email"] {
        let e = sup
            .simple_query(&format!("SELECT {col} FROM public.accounts"))
            .await
            .expect_err(col);
        assert_eq!(code(&e), "42501", "{col}: {e}");
    }
    assert_eq!(
        rows(
            &sup,
            "SELECT account_id, tier FROM public.accounts ORDER BY 1"
        )
        .await
        .unwrap(),
        vec!["1|gold", "2|silver"]
    );
    // Unmasked roles read raw data.
    let dba = env.proxy("dba").await;
    assert_eq!(
        rows(
            &dba,
            "SELECT notes, score FROM accounts WHERE account_id = 1"
        )
        .await
        .unwrap(),
        vec!["call anna.berg@example.com after 5|42"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_later_is_masked_at_once_directly_and_through_pgredact() {
    let env = start_extended(TABLES, EXTRA).await;
    let su = env.direct("postgres").await;
    let sup = env.direct("support").await;
    let sol = env.direct("solutions").await;
    let proxy = env.proxy("support").await;
    // Warm pgredact's catalog before the DDL.
    assert_eq!(
        rows(&proxy, "SELECT notes FROM accounts WHERE account_id = 1")
            .await
            .unwrap(),
        vec!["****"]
    );
    // A superuser adds a column straight to PostgreSQL, with no pgredact involved.
    su.batch_execute(
        "ALTER TABLE public.accounts ADD COLUMN ssn text DEFAULT '078-05-1120';
         ALTER TABLE public.accounts ADD COLUMN credit integer DEFAULT 900",
    )
    .await
    .unwrap();
    // Directly, as the DDL committed: no masked role holds a privilege on it (support's and
    // solutions' converted table-level grants do not reach it), and the masking view redacts it.
    for (role, col, privilege) in [
        ("support", "ssn", "SELECT"),
        ("solutions", "ssn", "SELECT"),
        ("solutions", "ssn", "UPDATE"),
        ("solutions", "credit", "INSERT"),
        ("public", "credit", "SELECT"),
    ] {
        let r = rows(
            &su,
            &format!(
                "SELECT has_column_privilege('{role}', 'public.accounts', '{col}', '{privilege}')"
            ),
        )
        .await
        .unwrap();
        assert_eq!(r, vec!["f"], "{role} {privilege} {col}");
    }
    let e = sup
        .simple_query("SELECT ssn FROM public.accounts")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    let e = sol
        .simple_query("SELECT credit FROM public.accounts")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501", "{e}");
    assert_eq!(
        rows(
            &sup,
            "SELECT ssn, credit FROM pgredact_masked.accounts WHERE account_id = 1"
        )
        .await
        .unwrap(),
        vec!["****|0"]
    );
    // Through pgredact: masked, or refused while its catalog catches up; never raw.
    masked_or_refused(
        &proxy,
        "SELECT ssn FROM accounts WHERE account_id = 1",
        &["****"],
    )
    .await;
    env.refresh_catalog().await;
    assert_eq!(
        rows(
            &proxy,
            "SELECT account_id, tier, ssn, credit FROM accounts WHERE account_id = 1"
        )
        .await
        .unwrap(),
        vec!["1|gold|****|0"]
    );
    let w = env.proxy("solutions").await;
    assert_refused(
        w.simple_query("UPDATE accounts SET ssn = 'x' WHERE account_id = 1")
            .await,
        "column ssn of public.accounts",
        "writing the added column through pgredact",
    );
    // A public column renamed to a name the policy does not declare: masked, and its column
    // grants withdrawn, as the DDL commits.
    su.batch_execute("ALTER TABLE public.accounts RENAME COLUMN tier TO level")
        .await
        .unwrap();
    assert_eq!(
        rows(
            &su,
            "SELECT has_column_privilege('support', 'public.accounts', 'level', 'SELECT')"
        )
        .await
        .unwrap(),
        vec!["f"]
    );
    assert_eq!(
        rows(
            &sup,
            "SELECT account_id, level FROM pgredact_masked.accounts WHERE account_id = 1"
        )
        .await
        .unwrap(),
        vec!["1|****"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_unlisted_columns_are_refused_through_pgredact_and_denied_directly() {
    let env = start_extended(TABLES, EXTRA).await;
    let p = env.proxy("solutions").await;
    let sol = env.direct("solutions").await;
    for (sql, col) in [
        (
            "UPDATE accounts SET notes = 'x' WHERE account_id = 1",
            "notes",
        ),
        (
            "UPDATE accounts SET score = 1 WHERE account_id = 1",
            "score",
        ),
        (
            "INSERT INTO accounts (account_id, tier, opened) VALUES (3, 'gold', '2020-01-01')",
            "opened",
        ),
    ] {
        assert_refused(
            p.simple_query(sql).await,
            &format!("column {col} of public.accounts, which holds PII"),
            sql,
        );
        let e = sol.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&e), "42501", "{sql} directly: {e}");
    }
    // Public columns are written as before, both ways.
    p.simple_query("UPDATE accounts SET tier = 'bronze' WHERE account_id = 2")
        .await
        .expect("public column through pgredact");
    sol.simple_query("INSERT INTO public.accounts (account_id, tier) VALUES (4, 'gold')")
        .await
        .expect("public columns directly");
    let dba = env.direct("dba").await;
    assert_eq!(
        rows(
            &dba,
            "SELECT account_id, tier, notes, score FROM public.accounts ORDER BY 1"
        )
        .await
        .unwrap(),
        vec![
            "1|gold|call anna.berg@example.com after 5|42",
            "2|bronze|prefers bob.stone@example.net|7",
            "4|gold|NULL|NULL"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_scan_report_the_columns_masked_by_default() {
    let env = start_extended(TABLES, EXTRA).await;
    let lines = env.check_passes().await;
    let file = env.dir.join("policies/app.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text
        .lines()
        .position(|l| l == "[tables.\"public.accounts\"]")
        .unwrap()
        + 1;
    let want = format!(
        "{}:{line}: public.accounts: privacy_by_default masks notes, score, opened, vip with redact (listed neither as public nor under columns)",
        file.display()
    );
    assert!(lines.contains(&want), "{want}\n{lines:#?}");
    // Tables without the mode get no such line.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("privacy_by_default"))
            .count(),
        1,
        "{lines:#?}"
    );
    // scan: e-mails in `notes` are covered by the mode; those in `email` by its own mask.
    let args = pgredact::scan::ScanArgs {
        database: Some(DB.into()),
        sample: 1000,
        propose: false,
        fail_on_unlisted: false,
        format: pgredact::scan::Format::Json,
        table_timeout_secs: 0,
    };
    let (report, _) = pgredact::scan::scan(&env.config(), &args).await.unwrap();
    let of = |col: &str| {
        report
            .findings
            .iter()
            .filter(|f| f.table == "public.accounts" && f.column == col)
            .map(|f| f.covered_by.clone())
            .collect::<Vec<_>>()
    };
    let notes = of("notes");
    assert!(!notes.is_empty(), "{:#?}", report.findings);
    assert!(
        notes
            .iter()
            .all(|c| c.as_deref() == Some("masked by privacy_by_default")),
        "{notes:?}"
    );
    let email = of("email");
    assert!(
        !email.is_empty() && email.iter().all(|c| c.as_deref() == Some("email")),
        "{email:?}"
    );
    assert!(report.text().contains("masked by privacy_by_default"));
}
