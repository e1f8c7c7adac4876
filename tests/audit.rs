//! The audit trail end to end: a real proxy with `[audit]` (a tiny `max_bytes`, so it rotates),
//! real clients, and the real `pgredact audit verify`.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const EMAIL: &str = "someone@example.com";

fn records(files: &[PathBuf]) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut recs = Vec::new();
    for f in files {
        let t = match std::fs::read_to_string(f) {
            Ok(t) => t,
            // Renamed by a rotation since it was listed (only while sessions still write).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", f.display()),
        };
        for l in t.lines() {
            recs.push(serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")));
        }
        text.push_str(&t);
    }
    (text, recs)
}

/// The rotated files, then the current one (which a rotation renames away until the next record
/// is written).
fn all_files(path: &Path) -> Vec<PathBuf> {
    let mut v = pgredact::audit::rotated_files(path);
    if path.exists() {
        v.push(path.to_path_buf());
    }
    v
}

fn verify(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgredact"))
        .args(["audit", "verify"])
        .args(files)
        .output()
        .expect("run pgredact audit verify");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_sessions_are_audited_without_pii() {
    let env = start_default().await;
    let path = env.dir.join("audit/audit.jsonl");
    std::fs::create_dir_all(env.dir.join("audit")).expect("mkdir");
    let text = format!(
        "{}[audit]\npath = \"audit/audit.jsonl\"\nmax_bytes = 2000\nfsync_interval_ms = 0\n",
        config_text("127.0.0.1:0", env.cluster.port)
    );
    let cfg = pgredact::config::Config::parse(&text, &env.dir.join("pgredact.toml"))
        .expect("config with [audit]");
    let (listener, shared) = pgredact::proxy::bind(cfg).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(pgredact::proxy::run(listener, shared.clone()));
    let connect = |user: &'static str| async move {
        let conn = format!(
            "host=127.0.0.1 port={port} dbname=app user={user} password={}",
            password(user)
        );
        let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {user}: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        c
    };

    let support = connect("support").await;
    // A lookup by e-mail, simple and extended protocol.
    rows(
        &support,
        &format!("SELECT * FROM customers WHERE email = '{EMAIL}'"),
    )
    .await
    .expect("lookup by e-mail");
    support
        .query(
            &format!("SELECT customer_id FROM customers WHERE email = E'{EMAIL}' OR email = $1"),
            &[&EMAIL],
        )
        .await
        .expect("extended lookup");
    // Known row counts: 7 rows (simple), 3 rows (prepared, then bound in a later exchange).
    let seven = rows(
        &support,
        "SELECT customer_id FROM customers WHERE customer_id <= 7",
    )
    .await
    .expect("seven rows");
    assert_eq!(seven.len(), 7);
    let three = support
        .query(
            "SELECT customer_id, email FROM customers WHERE customer_id <= $1",
            &[&3i64],
        )
        .await
        .expect("three rows");
    assert_eq!(three.len(), 3);
    // A refusal that names the column, and one of a statement that does not parse.
    assert_refused(
        support
            .simple_query(&format!(
                "UPDATE customers SET email = '{EMAIL}' WHERE customer_id = 1"
            ))
            .await,
        "email",
        "PII write",
    );
    assert!(support
        .simple_query(&format!("SELEC '{EMAIL}'"))
        .await
        .is_err());
    // Enough statements to rotate a 2000-byte log several times.
    for i in 0..20 {
        rows(
            &support,
            &format!("SELECT tier FROM customers WHERE customer_id = {}", 100 + i),
        )
        .await
        .expect("filler");
    }

    // An unmasked session: never audited.
    let dba = connect("dba").await;
    rows(
        &dba,
        &format!("SELECT email FROM customers WHERE email = '{EMAIL}' OR customer_id = 424242"),
    )
    .await
    .expect("dba query");

    drop(support);
    drop(dba);
    let audit = shared.audit.get().expect("audit configured").clone();
    // Session ends are recorded when the sessions notice their clients left.
    let mut ended = false;
    for _ in 0..600 {
        audit.flush().await;
        let (_, recs) = records(&all_files(&path));
        if recs.iter().any(|r| r["event"] == "session_end") {
            ended = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ended, "no session_end record");

    let files = all_files(&path);
    let (text, recs) = records(&files);
    assert!(files.len() >= 3, "the log rotated: {files:?}");
    assert!(
        !text.contains(EMAIL),
        "the e-mail is in the audit log:\n{text}"
    );
    assert!(!text.contains("someone"), "{text}");
    assert!(!text.contains("424242"), "the dba's statement was logged");
    assert!(
        recs.iter().all(|r| r["role"] == "support"),
        "only the masked role's session is audited"
    );
    let starts = recs
        .iter()
        .filter(|r| r["event"] == "session_start")
        .count();
    assert_eq!(starts, 1, "one masked session");
    for r in &recs {
        assert_eq!(r["database"], "app");
        assert!(r["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")));
        assert_eq!(r["session"], recs[0]["session"]);
    }
    let stmt = |fp: &str| {
        recs.iter()
            .filter(|r| r["fingerprint"] == fp)
            .cloned()
            .collect::<Vec<_>>()
    };
    let lookup = stmt("SELECT * FROM customers WHERE email = ?");
    assert_eq!(lookup.len(), 1, "{recs:#?}");
    assert_eq!(lookup[0]["decision"], "rewrite");
    assert_eq!(lookup[0]["tables"], serde_json::json!(["public.customers"]));
    let seven = stmt("SELECT customer_id FROM customers WHERE customer_id <= ?");
    assert_eq!(seven.len(), 1, "{recs:#?}");
    assert_eq!(seven[0]["rows"], 7);
    assert_eq!(seven[0]["message"], "query");
    let three = stmt("SELECT customer_id, email FROM customers WHERE customer_id <= $1");
    let bound: Vec<_> = three.iter().filter(|r| r["message"] == "bind").collect();
    assert_eq!(bound.len(), 1, "{three:#?}");
    assert_eq!(bound[0]["rows"], 3);
    let refused: Vec<_> = recs.iter().filter(|r| r["decision"] == "refuse").collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    let write = refused
        .iter()
        .find(|r| r["fingerprint"] == "UPDATE customers SET email = ? WHERE customer_id = ?")
        .expect("the refused write is logged");
    assert_eq!(write["refusal"]["kind"], "pii_write");
    let reason = write["refusal"]["reason"].as_str().expect("its reason");
    assert!(
        reason.contains("column email of public.customers"),
        "{reason}"
    );
    let unparsable = refused
        .iter()
        .find(|r| r["fingerprint"].is_null())
        .expect("the unparsable statement is logged");
    assert_eq!(unparsable["refusal"]["kind"], "unparsable");
    assert!(unparsable["refusal"]["reason"].is_null());

    // The chain verifies across the rotated files, and breaks when one line is edited.
    let (ok, out) = verify(&files);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{} records", recs.len())), "{out}");
    let victim = &files[1];
    let t = std::fs::read_to_string(victim).expect("read");
    let edited = t.replacen("\"role\":\"support\"", "\"role\":\"someone\"", 1);
    assert_ne!(t, edited);
    std::fs::write(victim, edited).expect("edit");
    let (ok, out) = verify(&files);
    assert!(!ok, "an edited line verifies: {out}");
    assert!(
        out.contains(&format!("{}:2", victim.display())),
        "names the line after the edited one: {out}"
    );
}
