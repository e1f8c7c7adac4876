//! The `pgredact` binary: `check` against a live schema, and `serve` with policy hot reload
//! (a broken file is reported with file and line, and the last good policy stays in force).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;
use support::serve::Proc;
use support::*;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgredact")
}

/// Runs `pgredact <cmd> --config <cfg>` to completion.
fn pgredact_cmd(cmd: &str, cfg: &std::path::Path) -> std::process::Output {
    Command::new(bin())
        .args([cmd, "--config"])
        .arg(cfg)
        .output()
        .unwrap()
}

fn write_config(dir: &std::path::Path, listen: &str, upstream_port: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    let p = dir.join("pgredact.toml");
    std::fs::write(&p, config_text(listen, upstream_port)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_file_line_and_reason() {
    let env = start_default().await;
    let dir = env.dir.join("check");
    let cfg = write_config(&dir, "127.0.0.1:0", env.cluster.port);
    std::fs::write(
        dir.join("policies/app.toml"),
        pgredact::demo::EXAMPLE_POLICY,
    )
    .unwrap();
    let out = pgredact_cmd("check", &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok against the live schema"), "{stdout}");

    // The DDL watch: `setup-sql` prints what a superuser runs; `check` fails without it.
    let out = pgredact_cmd("setup-sql", &cfg);
    let setup = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success());
    assert!(
        setup.contains("CREATE SCHEMA IF NOT EXISTS pgredact AUTHORIZATION \"pgredact\"")
            && setup.contains("CREATE EVENT TRIGGER pgredact_ddl ON ddl_command_end")
            && setup.contains("ENABLE ALWAYS"),
        "{setup}"
    );
    let su = env.direct("postgres").await;
    su.batch_execute("DROP EVENT TRIGGER pgredact_ddl")
        .await
        .unwrap();
    let out = pgredact_cmd("check", &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("the DDL watch (event trigger pgredact_ddl) is missing"),
        "{stdout}"
    );
    let (ok, _, err) = psql_at(env.cluster.port, "postgres", "app", &setup);
    assert!(ok, "{err}");
    let out = pgredact_cmd("check", &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let bad = "database = \"app\"\nunmasked_roles = [\"dba\"]\n[tables.\"public.customers\"]\ncolumns.emial = \"email\"\ncolumns.lifetime_value = \"email\"\n[tables.\"public.nosuch\"]\ncolumns.x = \"null\"\n";
    std::fs::write(dir.join("policies/app.toml"), bad).unwrap();
    let out = pgredact_cmd("check", &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("app.toml:4: column emial does not exist"),
        "{stdout}"
    );
    assert!(
        stdout.contains("app.toml:5:") && stdout.contains("needs a text column"),
        "{stdout}"
    );
    assert!(
        stdout.contains("app.toml:6: table public.nosuch does not exist"),
        "{stdout}"
    );

    std::fs::write(
        dir.join("policies/app.toml"),
        "database = \"app\"\n[tables.\"public.customers\"]\ncolumns.email = \"emale\"\n",
    )
    .unwrap();
    let out = pgredact_cmd("check", &cfg);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        text.contains("app.toml:3:") && text.contains("unknown mask kind"),
        "{text}"
    );

    // What would block a forget job is reported too (here: the control role can read but not
    // update a subject table), as a warning: masking works regardless.
    env.direct("postgres")
        .await
        .batch_execute("CREATE TABLE public.loyalty (customer_id bigint, nickname text); GRANT SELECT ON public.loyalty TO pgredact")
        .await
        .unwrap();
    std::fs::write(
        dir.join("policies/app.toml"),
        "database = \"app\"\n[tables.\"public.loyalty\"]\nsubject = \"customer_id\"\ncolumns.nickname = \"null\"\n",
    )
    .unwrap();
    let out = pgredact_cmd("check", &cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("forget jobs would be refused")
            && stdout.contains("lacks SELECT or UPDATE on the table"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_hot_reloads_and_keeps_last_good_policy() {
    let env = start_default().await;
    let dir = env.dir.join("serve");
    let port = pgredact::pgcluster::free_port();
    let cfg = write_config(&dir, &format!("127.0.0.1:{port}"), env.cluster.port);
    let pol = dir.join("policies/app.toml");
    std::fs::write(&pol, pgredact::demo::EXAMPLE_POLICY).unwrap();
    let log = dir.join("serve.log");
    let mut child = Proc(
        Command::new(bin())
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("PGREDACT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let connstr = format!("host=127.0.0.1 port={port} user=support password=support dbname=app");
    let client = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            panic!(
                "pgredact serve exited: {st}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        match tokio_postgres::connect(&connstr, tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                break c;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let q = "SELECT email, city FROM customers WHERE customer_id = 1";
    let first = rows(&client, q).await.unwrap();
    assert!(first[0].contains("***@"), "{first:?}");
    let raw_city = first[0].split('|').nth(1).unwrap().to_string();
    assert_ne!(raw_city, "****");

    // A broken policy: reported with file and line; the last good one stays.
    std::fs::write(&pol, "database = \"app\"\nunmasked_roles = [\"dba\"]\n[tables.\"public.customers\"]\ncolumns.email = \"emale\"\n").unwrap();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("policy reload failed") {
            assert!(text.contains("app.toml:4:"), "{text}");
            break;
        }
        assert!(child.0.try_wait().unwrap().is_none(), "serve died: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        rows(&client, q).await.unwrap(),
        first,
        "last good policy still masks"
    );
    let fresh = tokio_postgres::connect(&connstr, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(fresh.1);
    assert_eq!(rows(&fresh.0, q).await.unwrap(), first, "new sessions too");

    // A fixed policy that also masks city: applied without a restart.
    let new_policy = pgredact::demo::EXAMPLE_POLICY.replace(
        "columns.birth_date = \"year\"",
        "columns.birth_date = \"year\"\ncolumns.city = \"redact\"",
    );
    std::fs::write(&pol, new_policy).unwrap();
    loop {
        let r = rows(&client, q).await.unwrap();
        if r[0].ends_with("|****") {
            break;
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(child.0.try_wait().unwrap().is_none(), "serve died: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
