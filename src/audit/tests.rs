use super::*;

fn fp(s: &str) -> String {
    fingerprint(s).unwrap_or_else(|| panic!("does not parse: {s}"))
}

#[test]
fn fingerprints_replace_every_literal() {
    let cases = [
        (
            "SELECT * FROM customers WHERE email = 'someone@example.com'",
            "someone@example.com",
        ),
        ("SELECT * FROM customers WHERE customer_id = 4242", "4242"),
        ("SELECT * FROM customers WHERE email = E'so\\'me@x.com'", "me@x.com"),
        ("SELECT * FROM customers WHERE email = $$dollar@x.com$$", "dollar@x.com"),
        ("SELECT * FROM customers WHERE email = $t$tag@x.com$t$", "tag@x.com"),
        (
            "SELECT * FROM customers WHERE email IN ('a1@x.com', 'b2@x.com') AND customer_id IN (17, 19)",
            "@x.com",
        ),
        ("SELECT * FROM customers WHERE birth_date = DATE '1999-01-01'", "1999"),
        ("SELECT * FROM customers LIMIT 31337 OFFSET 2718", "31337"),
        ("SELECT 1.5e3, -77, x'DEADBEEF' FROM customers", "DEADBEEF"),
        ("SET application_name = 'someone@example.com'", "someone"),
        ("SELECT ARRAY['alice@x.com'] /* bob@x.com */ -- carol@x.com", "@x.com"),
        ("PREPARE p AS SELECT * FROM customers WHERE email = 'p@x.com'; EXECUTE p('q@x.com')", "@x.com"),
        ("SELECT interval '3 days', 'abc'::text", "days"),
    ];
    for (sql, secret) in cases {
        let f = fp(sql);
        assert!(!f.contains(secret), "{sql} -> {f}");
        assert!(f.contains('?'), "{sql} -> {f}");
    }
    assert_eq!(
        fp("select *  from customers where email = 'x@y.z' and tier=$1"),
        "SELECT * FROM customers WHERE email = ? AND tier = $1"
    );
    assert_eq!(
        fp("SELECT * FROM t WHERE id IN (1, 2, 3) AND ok = true AND z IS NULL"),
        "SELECT * FROM t WHERE id IN (?, ?, ?) AND ok = true AND z IS NULL"
    );
    assert_eq!(fingerprint("SELEC email FROM 'x@y.z"), None);
}

#[test]
fn refusal_messages_with_literals_are_withheld() {
    let r = |m: &str| Refusal {
        kind: crate::rewrite::RefusalKind::Other,
        message: m.into(),
        hint: None,
    };
    let l = log_refusal(
        &r("pgredact: writing column email of public.customers, which holds PII (policy public.customers), is not allowed for masked roles"),
        Some("UPDATE customers SET email = 'x@y.z' WHERE customer_id = 1"),
    );
    assert_eq!(l.kind, "pii_write");
    assert!(l.reason.is_some());
    let l = log_refusal(
        &r("pgredact: statement refused for a masked role: pgredact could not parse it, so it cannot prove it safe (Expected: end of statement, found: 'x@y.z')"),
        Some("SELEC 'x@y.z'"),
    );
    assert_eq!((l.kind, l.reason), ("unparsable", None));
    // A message that happens to quote a literal of the statement is withheld.
    let l = log_refusal(
        &r("pgredact: reading secretvalue is not allowed for masked roles: x"),
        Some("SELECT * FROM secretvalue WHERE a = 'secretvalue'"),
    );
    assert_eq!((l.kind, l.reason), ("pii_read", None));
}

#[test]
fn rfc3339_round_trips() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
    assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
    assert_eq!(
        parse_rfc3339("2024-02-29T23:59:59.123Z"),
        Some(1_709_251_199)
    );
    assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
}

fn info() -> Arc<SessionInfo> {
    Arc::new(SessionInfo {
        id: "00000000000000aa".into(),
        role: "support".into(),
        client: Some("127.0.0.1:5000".into()),
        database: "app".into(),
    })
}

fn cfg(path: &Path, max_bytes: u64) -> AuditConfig {
    AuditConfig {
        path: path.to_path_buf(),
        max_bytes,
        max_age_secs: None,
        fsync_interval_ms: 1000,
        queue: 16,
    }
}

/// Writes `n` statement records through a writer (as the writer task would).
fn write(path: &Path, max_bytes: u64, n: usize) {
    let mut w = Writer::open(&cfg(path, max_bytes), path.to_path_buf()).expect("open");
    for i in 0..n {
        let e = Event {
            session: info(),
            time: SystemTime::now(),
            kind: Kind::Statement(Stmt {
                message: "query",
                sql: Some(format!("SELECT * FROM customers WHERE email = 'u{i}@x.com'").into()),
                decision: Arc::new(Decision::Pass),
                resolve: None,
                rows: 1,
                time: SystemTime::now(),
            }),
        };
        w.record(&e);
        w.write_out();
    }
    w.sync();
}

fn all_files(path: &Path) -> Vec<PathBuf> {
    let mut v = rotated_files(path);
    v.push(path.to_path_buf());
    v
}

#[test]
fn chain_verifies_and_detects_edits_deletions_reorders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    write(&path, u64::MAX, 5);
    let files = vec![path.clone()];
    let ok = verify(&files).expect("valid chain");
    assert!(ok.contains("5 records"), "{ok}");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(!text.contains("@x.com"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains(GENESIS));
    let put = |ls: &[String]| std::fs::write(&path, ls.join("\n") + "\n").expect("write");
    let orig: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    // Edited line.
    let mut ed = orig.clone();
    ed[2] = ed[2].replace("\"rows\":1", "\"rows\":7");
    put(&ed);
    let e = verify(&files).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Broken {
                line: 4,
                why: Break::PrevMismatch,
                ..
            }
        ),
        "{e}"
    );
    let e = e.to_string();
    assert!(e.contains("audit.jsonl:4") && e.contains("prev"), "{e}");
    // Deleted line.
    let mut del = orig.clone();
    del.remove(1);
    put(&del);
    let e = verify(&files).unwrap_err().to_string();
    assert!(e.contains("audit.jsonl:2") && e.contains("seq"), "{e}");
    // Reordered lines.
    let mut re = orig.clone();
    re.swap(2, 3);
    put(&re);
    let e = verify(&files).unwrap_err().to_string();
    assert!(e.contains("audit.jsonl:3"), "{e}");
    // A cut-off last line.
    std::fs::write(&path, orig.join("\n")).expect("write");
    let e = verify(&files).unwrap_err().to_string();
    assert!(e.contains("incomplete"), "{e}");
    // Restored, then continued by a new writer (a restart): still one chain.
    put(&orig);
    write(&path, u64::MAX, 2);
    let ok = verify(&files).expect("continued chain");
    assert!(ok.contains("7 records"), "{ok}");
}

#[test]
fn rotation_keeps_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    write(&path, 600, 12);
    let files = all_files(&path);
    assert!(files.len() >= 3, "rotated: {files:?}");
    let ok = verify(&files).expect("valid across files");
    assert!(ok.contains("12 records"), "{ok}");
    // Each new file starts by naming the one before it.
    for w in files.windows(2) {
        let first = first_line(&w[1]).expect("first line");
        let rec: serde_json::Value = serde_json::from_slice(&first).expect("json");
        let name = w[0]
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert_eq!(rec["rotated_from"], serde_json::Value::String(name));
    }
    // Out of order or with a file left out, the chain breaks.
    let mut swapped = files.clone();
    swapped.swap(0, 1);
    assert!(verify(&swapped).is_err());
    let mut gap = files.clone();
    gap.remove(1);
    assert!(verify(&gap).is_err());
    // Without the oldest file, the chain is anchored at the first record given.
    let ok = verify(&files[1..]).expect("anchored");
    assert!(ok.contains("earlier files not given"), "{ok}");
    // Rotated by hand (as logrotate would) while pgredact is stopped: a restart chains to
    // the newest rotated file.
    let first: Head = serde_json::from_slice(&first_line(&path).expect("first")).expect("json");
    std::fs::rename(&path, rotated_name(&path, first.seq)).expect("mv");
    write(&path, u64::MAX, 1);
    let ok = verify(&all_files(&path)).expect("resumed from rotated");
    assert!(ok.contains("records"), "{ok}");
}
