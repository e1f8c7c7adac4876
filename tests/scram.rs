//! SCRAM through pgredact with TLS on both legs: pgredact completes SCRAM on each leg with the
//! role's verifier, so libpq's defaults (channel_binding=prefer) and channel_binding=require work;
//! md5 and trust are relayed; without a readable verifier SCRAM is relayed, and no password or
//! verifier reaches pgredact's log.

mod support;

use pgredact::pgcluster::{Auth, ClusterOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::serve::Proc;
use support::tls::sh;
use support::*;

/// Passwords distinctive enough to search the log for.
const SUPPORT_PW: &str = "Sc-support-7fQ2xL9v";
const DBA_PW: &str = "Sc-dba-3mK8pW1zR";
const MD5_PW: &str = "Sc-md5-9tR4nB6cW";

const ROLES_SQL: &str = "
ALTER ROLE support PASSWORD 'Sc-support-7fQ2xL9v';
ALTER ROLE dba PASSWORD 'Sc-dba-3mK8pW1zR';
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN PASSWORD 'Sc-md5-9tR4nB6cW' IN ROLE support;
RESET password_encryption;
CREATE ROLE trustuser LOGIN IN ROLE support;
GRANT CONNECT ON DATABASE app TO md5user, trustuser;
";

/// md5 and trust entries before the cluster's scram-sha-256 line.
const HBA: &str = "local all all trust
host app md5user 127.0.0.1/32 md5
host app trustuser 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
";

/// psql with `conn` and `password`, plus extra environment; returns (ok, stdout, stderr).
fn psql(conn: &str, password: &str, sql: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let bin = pgredact::pgcluster::Cluster::bin_dir()
        .map(|d| d.join("psql"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("psql"));
    let mut cmd = Command::new(bin);
    for v in [
        "PGSSLMODE",
        "PGCHANNELBINDING",
        "PGSERVICE",
        "PGSSLROOTCERT",
    ] {
        cmd.env_remove(v);
    }
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(conn)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "30")
        .arg("-c")
        .arg(sql);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const Q: &str = "SELECT email FROM customers WHERE customer_id = 1";

fn masked(out: &str) -> bool {
    out.contains("***@")
}

fn raw(out: &str) -> bool {
    out.contains('@') && !out.contains("***")
}

/// A tokio-postgres session over TLS to `host:port` with pgredact's rustls settings (the CA's
/// certificate, `tls-server-end-point` binding to the server's certificate), with
/// `channel_binding` (libpq's `prefer`, `require` or `disable`).
async fn tls_client(
    dir: &Path,
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    channel_binding: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let cfg = pgredact::config::Config::parse(
        &format!(
            "[upstream]\nhost = \"{host}\"\nuser = \"x\"\nsslmode = \"verify-full\"\nca = \"ca.crt\"\n"
        ),
        &dir.join("client.toml"),
    )
    .expect("client TLS settings");
    let tls = cfg.upstream_tls.expect("TLS");
    let c: tokio_postgres::Config = format!(
        "host={host} port={port} user={user} password={password} dbname=app \
         sslmode=require channel_binding={channel_binding}"
    )
    .parse()
    .expect("config");
    let client = pgredact::tls::pg_connect(c, Some(&tls)).await?;
    Ok(client)
}

async fn plain_client(
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user={user} password={password} dbname=app"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_with_tls_on_both_legs_and_channel_binding() {
    let env = start(
        pgredact::demo::EXAMPLE_POLICY,
        ClusterOptions {
            auth: Auth::Scram,
            ..Default::default()
        },
        ROLES_SQL,
    )
    .await;
    let dir = env.dir.join("scram");
    write_policy(&dir, pgredact::demo::EXAMPLE_POLICY);
    // One CA; PostgreSQL's certificate signed with SHA-512 and pgredact's with SHA-384, so the
    // channel-binding hash follows each certificate's signature algorithm (RFC 5929).
    sh(
        &dir,
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=pgredact-test-ca \
           -keyout ca.key -out ca.crt 2>/dev/null \
         && openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout pg.key -out pg.csr 2>/dev/null \
         && printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > pg.cnf \
         && openssl x509 -req -sha512 -in pg.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
           -extfile pg.cnf -out pg.crt 2>/dev/null \
         && openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout px.key -out px.csr 2>/dev/null \
         && printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > px.cnf \
         && openssl x509 -req -sha384 -in px.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
           -extfile px.cnf -out px.crt 2>/dev/null",
    );
    // The rules for md5 and trust are read at the same reload as ssl.
    env.cluster.write_data_file("pg_hba.conf", HBA).unwrap();
    env.enable_server_tls(&dir).await;
    let su = env.direct("postgres").await;

    // pgredact serve with TLS on both legs, as its own process, logging everything.
    let port = pgredact::pgcluster::free_port();
    let cfg_path = dir.join("pgredact.toml");
    std::fs::write(
        &cfg_path,
        config_text(&format!("127.0.0.1:{port}"), env.cluster.port).replace(
            "[upstream]\n",
            "[tls]\ncert = \"px.crt\"\nkey = \"px.key\"\n[upstream]\nsslmode = \"verify-full\"\nca = \"ca.crt\"\n",
        ),
    )
    .unwrap();
    let log = dir.join("serve.log");
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_pgredact"))
            .args(["serve", "--config"])
            .arg(&cfg_path)
            .env("PGREDACT_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            panic!(
                "pgredact serve exited: {st}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let ca = dir.join("ca.crt");
    let conn = |user: &str, extra: &str| {
        format!(
            "host=localhost port={port} dbname=app user={user} sslrootcert={} {extra}",
            ca.display()
        )
    };
    let run = |user: &str, pw: &str, extra: &str, envs: &[(&str, &str)]| {
        let c = conn(user, extra);
        tokio::task::block_in_place(|| psql(&c, pw, Q, envs))
    };

    // libpq's defaults over TLS (PGSSLMODE=require, channel_binding=prefer): binds to
    // pgredact's certificate; pgredact binds to PostgreSQL's.
    let (ok, out, err) = run("support", SUPPORT_PW, "", &[("PGSSLMODE", "require")]);
    assert!(ok && masked(&out), "{out}{err}\n{}", log_text());
    let (ok, out, err) = run("dba", DBA_PW, "sslmode=verify-full", &[]);
    assert!(ok && raw(&out), "{out}{err}");
    // channel_binding=require: masked and unmasked roles.
    for (user, pw, check) in [
        ("support", SUPPORT_PW, masked as fn(&str) -> bool),
        ("dba", DBA_PW, raw),
    ] {
        let (ok, out, err) = run(user, pw, "sslmode=verify-full channel_binding=require", &[]);
        assert!(ok && check(&out), "{user}: {out}{err}\n{}", log_text());
    }
    let l = log_text();
    assert!(
        l.lines().any(|x| x.contains("SCRAM completed at pgredact")
            && x.matches("tls-server-end-point").count() == 2),
        "bound on both legs:\n{l}"
    );
    // A wrong password is refused by PostgreSQL itself (28P01), through psql and a driver.
    let (ok, _, err) = run(
        "support",
        "wrong-password",
        "sslmode=require channel_binding=require",
        &[],
    );
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    let Err(e) = tls_client(
        &dir,
        "localhost",
        port,
        "support",
        "wrong-password",
        "require",
    )
    .await
    else {
        panic!("wrong password refused");
    };
    assert_eq!(code(&e), "28P01", "{e}");
    assert!(
        env.cluster
            .read_log()
            .contains("password authentication failed for user \"support\""),
        "PostgreSQL saw and logged the failed login"
    );
    // tokio-postgres with pgredact's own TLS settings: bound (as pgredact's control
    // connections bind to PostgreSQL: channel_binding=require straight to PostgreSQL works),
    // and without binding (gs2 "n"); then over plaintext.
    tls_client(
        &dir,
        "127.0.0.1",
        env.cluster.port,
        "support",
        SUPPORT_PW,
        "require",
    )
    .await
    .expect("pgredact's upstream TLS settings bind to PostgreSQL's certificate");
    for cb in ["require", "disable"] {
        let c = tls_client(&dir, "localhost", port, "support", SUPPORT_PW, cb)
            .await
            .unwrap_or_else(|e| panic!("tokio-postgres over TLS, channel_binding={cb}: {e}"));
        assert!(masked(&rows(&c, Q).await.unwrap()[0]));
    }
    let c = plain_client(port, "dba", DBA_PW)
        .await
        .expect("tokio-postgres over plaintext");
    assert!(raw(&rows(&c, Q).await.unwrap()[0]));
    let Err(e) = plain_client(port, "dba", "nope").await else {
        panic!("refused");
    };
    assert_eq!(code(&e), "28P01");
    // md5 and trust are relayed as before.
    let (ok, out, err) = run("md5user", MD5_PW, "sslmode=require", &[]);
    assert!(ok && masked(&out), "md5: {out}{err}");
    let (ok, _, err) = run("md5user", "wrong", "sslmode=require", &[]);
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    let (ok, out, err) = run("trustuser", "", "sslmode=require", &[]);
    assert!(ok && masked(&out), "trust: {out}{err}");
    // A superuser's verifier is never handed out: its SCRAM is relayed, which with TLS on both
    // legs needs channel_binding=disable.
    let su_pw = pgredact::pgcluster::SUPERUSER_PASSWORD;
    let (ok, _, err) = run("postgres", su_pw, "sslmode=require", &[]);
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    let (ok, out, err) = run(
        "postgres",
        su_pw,
        "sslmode=require channel_binding=disable",
        &[],
    );
    assert!(ok && raw(&out), "{out}{err}");

    // Client leg TLS, PostgreSQL leg plaintext: channel_binding=require works too.
    let cfg = pgredact::config::Config::parse(
        &format!(
            "{}[tls]\ncert = \"px.crt\"\nkey = \"px.key\"\n",
            config_text("127.0.0.1:0", env.cluster.port)
        ),
        &cfg_path,
    )
    .unwrap();
    let (listener, shared) = pgredact::proxy::bind(cfg).await.expect("bind");
    let plain_up = listener.local_addr().unwrap().port();
    tokio::spawn(pgredact::proxy::run(listener, shared));
    let c = format!(
        "host=localhost port={plain_up} dbname=app user=support sslmode=verify-full sslrootcert={} channel_binding=require",
        ca.display()
    );
    let (ok, out, err) = tokio::task::block_in_place(|| psql(&c, SUPPORT_PW, Q, &[]));
    assert!(ok && masked(&out), "{out}{err}");
    // Roles without a verifier pgredact may use are offered the same mechanisms (the offer does
    // not tell which roles exist): a superuser binding to pgredact's channel is refused like a
    // wrong password, and gets in with channel_binding=disable (relayed, PostgreSQL decides).
    let c = format!(
        "host=localhost port={plain_up} dbname=app user=postgres sslmode=verify-full sslrootcert={}",
        ca.display()
    );
    let (ok, _, err) = tokio::task::block_in_place(|| psql(&c, su_pw, Q, &[]));
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    let c = format!("{c} channel_binding=disable");
    let (ok, out, err) = tokio::task::block_in_place(|| psql(&c, su_pw, Q, &[]));
    assert!(ok && raw(&out), "{out}{err}");
    let (ok, _, err) = run(
        "nosuchrole",
        "x",
        "sslmode=require channel_binding=require",
        &[],
    );
    assert!(
        !ok && err.contains("password authentication failed for user \"nosuchrole\""),
        "{err}"
    );
    // No TLS anywhere (the in-process proxy of `start`): SCRAM is completed at pgredact too.
    let c = plain_client(env.addr.port(), "support", SUPPORT_PW)
        .await
        .expect("plaintext both legs");
    assert!(masked(&rows(&c, Q).await.unwrap()[0]));
    let Err(e) = plain_client(env.addr.port(), "support", "nope").await else {
        panic!("refused");
    };
    assert_eq!(code(&e), "28P01");

    // Without pgredact_admin.auth_verifier (setup-sql not re-run), SCRAM is relayed: fine
    // without TLS on both legs; with it, libpq's "y" cannot be relayed and the client is told.
    su.batch_execute("DROP FUNCTION pgredact_admin.auth_verifier(name)")
        .await
        .unwrap();
    let (ok, _, err) = run("support", SUPPORT_PW, "sslmode=require", &[]);
    assert!(!ok && err.contains("setup-sql"), "{err}");
    let (ok, out, err) = run(
        "support",
        SUPPORT_PW,
        "sslmode=require channel_binding=disable",
        &[],
    );
    assert!(ok && masked(&out), "{out}{err}");
    let c = tls_client(&dir, "localhost", port, "dba", DBA_PW, "disable")
        .await
        .expect("gs2 \"n\" is relayed");
    assert!(raw(&rows(&c, Q).await.unwrap()[0]));
    let c = plain_client(env.addr.port(), "support", SUPPORT_PW)
        .await
        .expect("relayed without TLS");
    assert!(masked(&rows(&c, Q).await.unwrap()[0]));
    let (ok, _, err) = tokio::task::block_in_place(|| {
        psql(
            &format!(
                "host=localhost port={plain_up} dbname=app user=support sslmode=verify-full sslrootcert={}",
                ca.display()
            ),
            SUPPORT_PW,
            Q,
            &[],
        )
    });
    assert!(ok, "client TLS, upstream plaintext, relayed: {err}");
    assert!(log_text().contains("cannot read SCRAM verifiers"));

    // Nothing secret in the log (at trace level): no password, no verifier nor any part of one.
    let verifiers: Vec<String> = su
        .query(
            "SELECT rolpassword FROM pg_authid WHERE rolname IN ('support', 'dba', 'md5user', 'postgres')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(verifiers.len(), 4);
    drop(child);
    let l = log_text();
    assert!(l.len() > 1000, "the log was captured: {l}");
    for secret in [SUPPORT_PW, DBA_PW, MD5_PW, "wrong-password"] {
        assert!(!l.contains(secret), "the log contains a password");
    }
    for v in &verifiers {
        assert!(!l.contains(v.as_str()), "the log contains a verifier");
        for part in v.split(['$', ':']).filter(|p| p.len() >= 16) {
            assert!(!l.contains(part), "the log contains part of a verifier");
        }
    }
    assert!(!l.contains("SCRAM-SHA-256$"));
}
