//! The admin API for privacy teams: hardening (token before body, limits,
//! HTTPS), request ids and deadlines, job lists and customer status, receipts, callbacks and
//! the audit chain. Against real PostgreSQL clusters where the data matters.

// Helpers shared by tests added step by step.
#![allow(dead_code)]

mod support;

use pgredact::config::Config;
use std::path::Path;
use support::http::{
    bearer, get, http, http_on, post_as, post_json, read_resp, request, wait_job, REMOVE_PII,
};
use support::tls::sh;
use support::{default_demo_cluster, rt, write_policy, ConfigEnv, DEMO_DB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HASH_KEY_ENV: &str = "PGREDACT_TEST_API_HASH_KEY";
const HASH_KEY: &str = "test-api-key-0123456789";
const TOKEN_ENV: &str = "PGREDACT_TEST_API_ADMIN_TOKEN";
const TOKEN: &str = "api-admin-token";
const RECEIPT_KEY_ENV: &str = "PGREDACT_TEST_API_RECEIPT_KEY";
const RECEIPT_KEY: &str = "receipt-key-for-tests";
const CALLBACK_KEY_ENV: &str = "PGREDACT_TEST_API_CALLBACK_KEY";
const CALLBACK_KEY: &str = "callback-key-for-tests";

const POLICY: &str = r#"
database = "app"
unmasked_roles = ["dba"]

[tables."public.customers"]
subject = "customer_id"
columns.first_name = "null"
columns.last_name = "null"
columns.email = "email"

[tables."public.orders"]
subject = "customer_id"
columns.shipping_address = "redact"
"#;

const SETUP: &str = r#"
ALTER TABLE public.customers OWNER TO pgredact;
ALTER TABLE public.orders OWNER TO pgredact;
"#;

fn set_env() {
    std::env::set_var(HASH_KEY_ENV, HASH_KEY);
    std::env::set_var(TOKEN_ENV, TOKEN);
    std::env::set_var(RECEIPT_KEY_ENV, RECEIPT_KEY);
    std::env::set_var(CALLBACK_KEY_ENV, CALLBACK_KEY);
}

/// A config in `dir` for PostgreSQL on `port`, with more `[admin]` settings and more TOML.
fn config(dir: &Path, port: u16, admin_extra: &str, extra: &str) -> Config {
    set_env();
    write_policy(dir, POLICY);
    let toml = format!(
        "listen = \"127.0.0.1:0\"\npolicies = \"policies\"\n\n[upstream]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"pgredact\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"{TOKEN_ENV}\"\nreceipt_key_env = \"{RECEIPT_KEY_ENV}\"\n{admin_extra}\n\n[secrets]\nhash_key_env = \"{HASH_KEY_ENV}\"\n{extra}"
    );
    let path = dir.join("pgredact.toml");
    std::fs::write(&path, toml).expect("write config");
    Config::load(&path).expect("config loads")
}

fn demo_env(admin_extra: &str) -> ConfigEnv {
    let cluster = default_demo_cluster();
    cluster.superuser_psql(DEMO_DB, SETUP).expect("demo setup");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), cluster.port, admin_extra, "");
    ConfigEnv {
        cluster,
        cfg,
        _dir: dir,
    }
}

/// Starts the admin API (HTTPS when the config has `[tls]`), with its worker when `worker`.
async fn start(cfg: &Config, worker: bool) -> std::net::SocketAddr {
    let state = pgredact::admin::AdminState::from_config(cfg).expect("admin state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    if worker {
        pgredact::admin::spawn_worker(state.clone());
    }
    tokio::spawn(async move { pgredact::admin::serve(listener, state).await });
    addr
}

#[test]
fn unauthenticated_requests_are_refused_before_their_body_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No PostgreSQL is needed: nothing here gets past the guard or reaches the database.
    let cfg = config(dir.path(), 1, "", "");
    rt().block_on(async {
        let addr = start(&cfg, false).await;
        // A request announcing 20 MB of body (under the 32 MiB limit) sends 1 KB and stops
        // writing. A server that read the body first would see it cut short (400); the guard
        // answers 401 from the headers alone.
        let cut_short = |auth: Option<String>| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut h = vec![("Content-Type", "application/json")];
            if let Some(a) = &auth {
                h.push(("Authorization", a.as_str()));
            }
            s.write_all(request("POST", REMOVE_PII, &h, 20_000_000).as_bytes())
                .await
                .expect("write head");
            s.write_all(&[b' '; 1024]).await.expect("write some body");
            s.shutdown().await.expect("half-close");
            read_resp(&mut s).await
        };
        let r = cut_short(None).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.header("www-authenticate").as_deref(), Some("bearer"));
        assert!(r.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("bearer token"));
        let r = cut_short(Some("Bearer wrong".to_string())).await;
        assert_eq!(r.status, 401, "{}", r.body);
        // The same request with the token gets past the guard and fails reading the body:
        // the test tells the two orders apart.
        let r = cut_short(Some(bearer(TOKEN))).await;
        assert_eq!(r.status, 400, "{}", r.body);
        // Oversize bodies are still refused (413), after the token.
        let big = " ".repeat(pgredact::admin::MAX_BODY_BYTES + 1);
        let r = post_json(addr, TOKEN, REMOVE_PII, &big).await;
        assert_eq!(r.status, 413, "{}", r.body);
        // /healthz needs no token.
        assert_eq!(http(addr, "GET", "/healthz", &[], b"").await.status, 200);
    });
}

#[test]
fn bursts_are_refused_with_429_and_503_and_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        dir.path(),
        1,
        "max_concurrent_requests = 1\nrequests_per_minute = 1\nrequest_burst = 3",
        "",
    );
    rt().block_on(async {
        let addr = start(&cfg, false).await;
        // A request that holds the only slot: its handler waits for a body that is not sent yet.
        let a = bearer(TOKEN);
        let send_stuck = || async {
            let mut stuck = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stuck
                .write_all(
                    request(
                        "POST",
                        REMOVE_PII,
                        &[
                            ("Authorization", a.as_str()),
                            ("Content-Type", "application/json"),
                        ],
                        2,
                    )
                    .as_bytes(),
                )
                .await
                .expect("write head");
            stuck
        };
        let mut stuck = send_stuck().await;
        // Until the stuck request holds the slot, probes without a token are answered 401 or,
        // once their own bucket is empty, 429; then 503. Each probe holds the slot for a moment
        // too: a stuck request that arrives then is answered 503 at once, and is sent again.
        let busy = loop {
            let r = http(addr, "GET", "/v1/jobs/x", &[], b"").await;
            match r.status {
                503 => break r,
                401 | 429 => {
                    let mut b = [0u8; 1];
                    match stuck.try_read(&mut b) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        _ => stuck = send_stuck().await,
                    }
                    tokio::task::yield_now().await
                }
                other => panic!("unexpected {other}: {}", r.body),
            }
        };
        assert_eq!(busy.header("retry-after").as_deref(), Some("1"));
        assert!(busy.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("too many requests"));
        // The stuck request ends (its body is not JSON: 400); the slot is free again.
        stuck.write_all(b"{]").await.expect("write body");
        let r = read_resp(&mut stuck).await;
        assert_eq!(r.status, 400, "{}", r.body);
        // It spent one of the token's 3; two more pass the guard (400: "x" is no job id), the
        // next one is refused with the wait until the next token (1 a minute).
        for _ in 0..2 {
            let r = get(addr, TOKEN, "/v1/jobs/x").await;
            assert_eq!(r.status, 400, "{}", r.body);
        }
        let r = get(addr, TOKEN, "/v1/jobs/x").await;
        assert_eq!(r.status, 429, "{}", r.body);
        let wait: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After seconds");
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(r.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("rate limit"));
        // Unlimited routes stay open.
        assert_eq!(http(addr, "GET", "/healthz", &[], b"").await.status, 200);
    });
}

/// A test CA (ca.crt) and a certificate for localhost it signed (cert.pem, key.pem) in `dir`.
fn make_cert(dir: &Path) {
    sh(
        dir,
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=pgredact-test-ca \
          -keyout ca.key -out ca.crt \
        && openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out cert.csr \
        && printf 'subjectAltName=DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > ext.cnf \
        && openssl x509 -req -in cert.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
          -extfile ext.cnf -out cert.pem",
    );
}

fn tls_connector(cert: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).expect("cert") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

#[test]
fn https_with_the_tls_certificate_and_plain_http_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_cert(dir.path());
    let cfg = config(
        dir.path(),
        1,
        "",
        "\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n",
    );
    rt().block_on(async {
        let addr = start(&cfg, false).await;
        let connector = tls_connector(&dir.path().join("ca.crt"));
        let https = |path: &'static str, token: bool| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let tls = connector.connect(name, tcp).await.expect("TLS handshake");
                let a = bearer(TOKEN);
                let h: Vec<(&str, &str)> = if token {
                    vec![("Authorization", a.as_str())]
                } else {
                    vec![]
                };
                http_on(tls, "GET", path, &h, b"").await
            }
        };
        assert_eq!(https("/healthz", false).await.status, 200);
        assert_eq!(https("/v1/jobs/x", false).await.status, 401);
        let r = https("/v1/jobs/x", true).await;
        assert_eq!(r.status, 400, "{}", r.body);
        // Plain HTTP on the same port gets no HTTP answer: the handshake fails, the connection
        // is closed.
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(request("GET", "/healthz", &[], 0).as_bytes())
            .await
            .expect("write");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        assert!(
            !got.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        // HTTPS still works after that.
        assert_eq!(https("/healthz", false).await.status, 200);
    });
}

#[test]
fn external_ids_are_idempotent_and_deadlines_are_kept_and_judged() {
    let env = demo_env("");
    rt().block_on(async {
        let addr = start(&env.cfg, true).await;
        let r = post_json(
            addr,
            TOKEN,
            REMOVE_PII,
            r#"{"customer_ids":[1,2],"external_id":"req-1"}"#,
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let first = r.json();
        let id = first["job_id"].as_i64().expect("job_id");
        assert_eq!(first["external_id"], "req-1");
        assert_eq!(first["regulation"], "gdpr");
        assert!(first["deadline"].as_str().is_some(), "{first}");
        // GDPR: 30 days from receipt.
        assert_eq!(
            env.sql(&format!("SELECT deadline - created_at FROM pgredact.forget_jobs WHERE id = {id}")),
            "30 days"
        );
        // The same request again (the IDs in another order, one repeated): the same job, 200.
        let r = post_json(
            addr,
            TOKEN,
            REMOVE_PII,
            r#"{"customer_ids":["2",1,2],"external_id":"req-1"}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["job_id"], id);
        assert_eq!(r.json()["existing"], true);
        // The same request id with other IDs: 409, nothing created.
        let r = post_json(
            addr,
            TOKEN,
            REMOVE_PII,
            r#"{"customer_ids":[1,3],"external_id":"req-1"}"#,
        )
        .await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(r.json()["error"].as_str().unwrap_or("").contains(&format!("job {id}")));
        assert_eq!(
            env.sql("SELECT count(*) FROM pgredact.forget_jobs WHERE external_id = 'req-1'"),
            "1"
        );
        // CCPA: 45 days; the fields as query parameters of a CSV request.
        let r = post_as(
            addr,
            TOKEN,
            "/v1/customers/remove-pii?external_id=req-2&regulation=ccpa",
            "text/csv",
            "customer_id\n4\n5\n",
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let ccpa = r.json()["job_id"].as_i64().expect("job_id");
        assert_eq!(
            env.sql(&format!("SELECT deadline - created_at FROM pgredact.forget_jobs WHERE id = {ccpa}")),
            "45 days"
        );
        // A deadline already past when the request arrives: recorded, and judged missed.
        let r = post_json(
            addr,
            TOKEN,
            REMOVE_PII,
            r#"{"customer_ids":[6],"external_id":"req-late","regulation":"lgpd","deadline":"2001-02-03"}"#,
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let late = r.json()["job_id"].as_i64().expect("job_id");
        // Bad deadlines and regulations: 400, nothing created.
        for (body, why) in [
            (r#"{"customer_ids":[7],"deadline":"2025-02-30"}"#, "deadline"),
            (r#"{"customer_ids":[7],"deadline":"2025-06-30T10:00:00"}"#, "offset"),
            (r#"{"customer_ids":[7],"regulation":"lgpd"}"#, "no default deadline"),
            (r#"{"customer_ids":[7],"external_id":""}"#, "external_id"),
            (r#"{"customer_ids":[7],"external_id":5}"#, "must be a string"),
        ] {
            let r = post_json(addr, TOKEN, REMOVE_PII, body).await;
            assert_eq!(r.status, 400, "{body}: {}", r.body);
            assert!(r.json()["error"].as_str().unwrap_or("").contains(why), "{body}: {}", r.body);
        }
        let done = wait_job(addr, TOKEN, id).await;
        assert_eq!(done["state"], "done", "{done}");
        assert_eq!(done["external_id"], "req-1");
        assert_eq!(done["deadline_met"], true, "{done}");
        let done = wait_job(addr, TOKEN, late).await;
        assert_eq!(done["state"], "done", "{done}");
        assert_eq!(done["deadline"], "2001-02-03T23:59:59.999Z", "{done}");
        assert_eq!(done["deadline_met"], false, "{done}");
        assert_eq!(done["regulation"], "lgpd");
        assert_eq!(wait_job(addr, TOKEN, ccpa).await["deadline_met"], true);
        assert_eq!(
            env.sql("SELECT count(*) FROM pgredact.forget_jobs WHERE external_id IS NULL"),
            "0"
        );
    });
}

#[test]
fn jobs_are_listed_with_filters_and_customer_status_comes_from_the_keyed_hash() {
    let env = demo_env("");
    rt().block_on(async {
        let addr = start(&env.cfg, true).await;
        let empty = get(addr, TOKEN, "/v1/jobs").await;
        assert_eq!(empty.status, 200, "{}", empty.body);
        let mut ids = Vec::new();
        for (ext, cid) in [("list-a", 10), ("list-b", 11), ("list-c", 12)] {
            let r = post_json(
                addr,
                TOKEN,
                REMOVE_PII,
                &format!(r#"{{"customer_ids":[{cid}],"external_id":"{ext}"}}"#),
            )
            .await;
            assert_eq!(r.status, 202, "{}", r.body);
            let id = r.json()["job_id"].as_i64().expect("job_id");
            assert_eq!(wait_job(addr, TOKEN, id).await["state"], "done");
            ids.push(id);
        }
        let all = get(addr, TOKEN, "/v1/jobs").await.json();
        let got: Vec<i64> = all["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["job_id"].as_i64().expect("id"))
            .collect();
        assert_eq!(got, vec![ids[2], ids[1], ids[0]], "newest first: {all}");
        assert_eq!(all["jobs"][0]["external_id"], "list-c");
        assert_eq!(all["jobs"][0]["deadline_met"], true);
        assert!(all["next_cursor"].is_null(), "{all}");
        // Pages.
        let p1 = get(addr, TOKEN, "/v1/jobs?limit=2").await.json();
        assert_eq!(p1["jobs"].as_array().map(Vec::len), Some(2));
        let cursor = p1["next_cursor"].as_i64().expect("next_cursor");
        let p2 = get(addr, TOKEN, &format!("/v1/jobs?limit=2&cursor={cursor}"))
            .await
            .json();
        assert_eq!(p2["jobs"].as_array().map(Vec::len), Some(1));
        assert_eq!(p2["jobs"][0]["job_id"], ids[0]);
        assert!(p2["next_cursor"].is_null());
        // Filters.
        let b = get(addr, TOKEN, "/v1/jobs?external_id=list-b").await.json();
        assert_eq!(b["jobs"].as_array().map(Vec::len), Some(1));
        assert_eq!(b["jobs"][0]["job_id"], ids[1]);
        let n = |v: serde_json::Value| v["jobs"].as_array().map(Vec::len).unwrap_or(99);
        assert_eq!(
            n(get(addr, TOKEN, "/v1/jobs?state=failed,blocked")
                .await
                .json()),
            0
        );
        assert_eq!(
            n(get(addr, TOKEN, "/v1/jobs?state=done&kind=forget")
                .await
                .json()),
            3
        );
        assert_eq!(
            n(get(addr, TOKEN, "/v1/jobs?since=2000-01-01").await.json()),
            3
        );
        assert_eq!(
            n(get(addr, TOKEN, "/v1/jobs?until=2000-01-01T00:00:00Z")
                .await
                .json()),
            0
        );
        for bad in [
            "/v1/jobs?state=bogus",
            "/v1/jobs?limit=1001",
            "/v1/jobs?limit=0",
            "/v1/jobs?since=yesterday",
            "/v1/jobs?kind=x",
        ] {
            assert_eq!(get(addr, TOKEN, bad).await.status, 400, "{bad}");
        }
        // One customer's status, from the keyed hash on the forget list.
        let s = get(addr, TOKEN, "/v1/customers/11/status").await;
        assert_eq!(s.status, 200, "{}", s.body);
        let s = s.json();
        assert_eq!(s["forgotten"], true, "{s}");
        assert_eq!(s["job_id"], ids[1]);
        assert_eq!(s["external_id"], "list-b");
        assert!(s["forgotten_at"].as_str().is_some(), "{s}");
        let s = get(addr, TOKEN, "/v1/customers/999/status").await.json();
        assert_eq!(
            s,
            serde_json::json!({ "forgotten": false, "state": "not_forgotten" })
        );
        // A malformed ID: 400, and the answer does not repeat it.
        let r = get(addr, TOKEN, "/v1/customers/not-an-id%40example.com/status").await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(!r.body.contains("example.com"), "{}", r.body);
        assert_eq!(
            http(addr, "GET", "/v1/customers/11/status", &[], b"")
                .await
                .status,
            401
        );
    });
}

#[test]
fn receipts_are_signed_and_verified_per_job_and_per_customer() {
    let env = demo_env("");
    rt().block_on(async {
        let addr = start(&env.cfg, true).await;
        let r = post_json(
            addr,
            TOKEN,
            REMOVE_PII,
            r#"{"customer_ids":[20,21],"external_id":"rc-1","regulation":"ccpa"}"#,
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.json()["job_id"].as_i64().expect("job_id");
        assert_eq!(wait_job(addr, TOKEN, id).await["state"], "done");
        let r = get(addr, TOKEN, &format!("/v1/jobs/{id}/receipt")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let doc = r.json();
        let sig = doc["signature"].as_str().expect("signature").to_string();
        assert_eq!(r.header("x-pgredact-signature"), Some(sig.clone()));
        let rc = &doc["receipt"];
        assert_eq!(rc["type"], "pgredact.erasure_receipt");
        assert_eq!(rc["job_id"], id);
        assert_eq!(rc["external_id"], "rc-1");
        assert_eq!(rc["regulation"], "ccpa");
        assert_eq!(rc["deadline_met"], true);
        assert_eq!(rc["customers"]["requested"], 2);
        assert_eq!(rc["rows_changed_per_table"]["public.customers"], 2, "{rc}");
        assert!(
            rc["rows_changed_per_table"].get("public.orders").is_some(),
            "{rc}"
        );
        assert_eq!(rc["verification"]["ok"], true, "{rc}");
        assert!(rc["pii_removed_at"].as_str().is_some(), "{rc}");
        // The verifier: the key in the environment, the file as saved.
        let verified = pgredact::admin::receipt::verify(RECEIPT_KEY.as_bytes(), &r.body)
            .expect("valid receipt");
        assert_eq!(&verified, rc);
        let file = env._dir.path().join("receipt.json");
        std::fs::write(&file, &r.body).expect("write receipt");
        let args = pgredact::forget::ForgetArgs {
            verify_receipt: Some(file.clone()),
            ..Default::default()
        };
        let out = pgredact::forget::run_cli(&env.cfg, args.clone())
            .await
            .expect("verifies");
        assert!(out.contains("valid receipt"), "{out}");
        // Edited: refused, by the function and by the CLI.
        let edited = r.body.replace("\"requested\":2", "\"requested\":3");
        assert_ne!(edited, r.body);
        assert!(pgredact::admin::receipt::verify(RECEIPT_KEY.as_bytes(), &edited).is_err());
        std::fs::write(&file, &edited).expect("write receipt");
        let e = pgredact::forget::run_cli(&env.cfg, args).await.unwrap_err();
        assert!(
            matches!(
                e,
                pgredact::forget::Error::InvalidReceipt {
                    source: pgredact::admin::receipt::Error::Mismatch,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains("INVALID") && e.contains("signature mismatch"),
            "{e}"
        );
        // Per customer: the same job, with the customer's keyed hash and list time.
        let r = get(addr, TOKEN, "/v1/customers/21/receipt").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let c = pgredact::admin::receipt::verify(RECEIPT_KEY.as_bytes(), &r.body).expect("valid");
        assert_eq!(c["kind"], "customer");
        assert_eq!(c["job_id"], id);
        let hash = env.sql(&format!(
            "SELECT encode(subject_hash, 'hex') FROM pgredact.forget_list WHERE job_id = {id} \
                 AND subject_hash = decode(pgredact.hmac_hex('21'), 'hex')"
        ));
        assert_eq!(c["subject"]["keyed_hash"], hash.as_str());
        assert_eq!(
            get(addr, TOKEN, "/v1/customers/999/receipt").await.status,
            404
        );
        assert_eq!(
            get(addr, TOKEN, "/v1/jobs/999999/receipt").await.status,
            404
        );
    });
}

#[test]
fn a_queued_customer_reads_pending_from_the_keyed_hash_then_forgotten() {
    let env = demo_env("");
    rt().block_on(async {
        // No worker: the job stays queued (its customers are not on the forget list yet).
        let addr = start(&env.cfg, false).await;
        let r = post_json(
            addr,
            TOKEN,
            REMOVE_PII,
            r#"{"customer_ids":[31, 32],"external_id":"queued-1"}"#,
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let job = r.json()["job_id"].as_i64().expect("job id");
        assert_eq!(
            env.sql("SELECT count(*) FROM pgredact.forget_list"),
            "0"
        );
        // The answer comes from the keyed hashes: the stored raw IDs are overwritten here, and
        // 31 still reads pending while an ID only in the raw list does not.
        env.sql(
            "UPDATE pgredact.forget_batches SET ids = ARRAY['4242'] WHERE job_id = (SELECT max(id) FROM pgredact.forget_jobs)",
        );
        let s = get(addr, TOKEN, "/v1/customers/31/status").await;
        assert_eq!(s.status, 200, "{}", s.body);
        let s = s.json();
        assert_eq!(s["state"], "pending", "{s}");
        assert_eq!(s["forgotten"], false, "{s}");
        assert_eq!(s["job_id"], job, "{s}");
        assert_eq!(s["job_state"], "queued", "{s}");
        assert_eq!(s["external_id"], "queued-1", "{s}");
        let s = get(addr, TOKEN, "/v1/customers/4242/status").await.json();
        assert_eq!(s["state"], "not_forgotten", "{s}");
        // The raw IDs back, and a worker runs the job: forgotten.
        env.sql(
            "UPDATE pgredact.forget_batches SET ids = ARRAY['31', '32'] WHERE job_id = (SELECT max(id) FROM pgredact.forget_jobs)",
        );
        let state = pgredact::admin::AdminState::from_config(&env.cfg).expect("admin state");
        pgredact::admin::spawn_worker(state);
        let done = wait_job(addr, TOKEN, job).await;
        assert_eq!(done["state"], "done", "{done}");
        let s = get(addr, TOKEN, "/v1/customers/32/status").await.json();
        assert_eq!(s["state"], "forgotten", "{s}");
        assert_eq!(s["forgotten"], true, "{s}");
        assert_eq!(s["job_state"], "done", "{s}");
        // Done jobs keep neither raw IDs nor their hashes.
        assert_eq!(
            env.sql("SELECT count(*) FROM pgredact.forget_batches WHERE ids IS NOT NULL OR id_hashes IS NOT NULL"),
            "0"
        );
    });
}

/// One request the hook server received: head (lower-cased) and body.
struct Hook {
    head: String,
    body: Vec<u8>,
}

impl Hook {
    fn header(&self, name: &str) -> Option<String> {
        let name = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .find(|l| l.starts_with(&name))
            .map(|l| l[name.len()..].trim().to_string())
    }
}

/// A real HTTP server for callbacks: answers the given statuses in turn (the last one from
/// then on) and sends every request it got on the channel.
async fn hook_server(
    statuses: Vec<u16>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Hook>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind hook server");
    let addr = listener.local_addr().expect("hook addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0usize;
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body_start) = loop {
                let Ok(k) = s.read(&mut chunk).await else {
                    break (String::new(), 0);
                };
                if k == 0 {
                    break (String::new(), 0);
                }
                buf.extend_from_slice(&chunk[..k]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break (
                        String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase(),
                        p + 4,
                    );
                }
            };
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < body_start + len {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            let body = buf[body_start.min(buf.len())..].to_vec();
            let status = statuses.get(n).or(statuses.last()).copied().unwrap_or(200);
            n += 1;
            let answer =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = s.write_all(answer.as_bytes()).await;
            let _ = s.shutdown().await;
            let _ = tx.send(Hook { head, body });
        }
    });
    (addr, rx)
}

/// Checks a Stripe-style signature header (`t=<unix>,v1=<hex>` over `t.body`) with the test
/// key, independently of pgredact's code.
fn check_signature(hook: &Hook) {
    use hmac::{Hmac, Mac};
    let sig = hook
        .header("x-pgredact-signature")
        .expect("signature header");
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_string()),
            Some(("v1", x)) => v1 = Some(x.to_string()),
            _ => {}
        }
    }
    let (t, v1) = (t.expect("t="), v1.expect("v1="));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(CALLBACK_KEY.as_bytes()).expect("key");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&hook.body);
    assert_eq!(hex::encode(mac.finalize().into_bytes()), v1, "{sig}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let t: i64 = t.parse().expect("t is a number");
    assert!((now - t).abs() < 600, "t={t} now={now}");
    // The receiver-side helper agrees, and refuses another key.
    assert!(
        pgredact::admin::callback::verify(CALLBACK_KEY.as_bytes(), &sig, &hook.body, now, 600)
            .is_ok()
    );
    assert!(pgredact::admin::callback::verify(b"wrong-key", &sig, &hook.body, now, 600).is_err());
}

/// Polls SQL until it answers `want`.
async fn wait_sql(env: &ConfigEnv, q: &str, want: &str) {
    loop {
        if env.sql(q) == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[test]
fn completion_callbacks_are_signed_retried_across_a_restart_and_recorded() {
    let env = demo_env("callback_key_env = \"PGREDACT_TEST_API_CALLBACK_KEY\"");
    rt().block_on(async {
        let (hook_addr, mut hooks) = hook_server(vec![500, 200]).await;
        // The API without a worker: workers are started (and one stopped) below.
        let addr = start(&env.cfg, false).await;
        // Only http(s) URLs, without credentials; nothing is created for a refused one.
        for bad in [
            "ftp://127.0.0.1/x",
            "file:///etc/passwd",
            "http://user:pw@127.0.0.1/",
            "not a url",
        ] {
            let body = serde_json::json!({"customer_ids": [51], "callback_url": bad}).to_string();
            let r = post_json(addr, TOKEN, REMOVE_PII, &body).await;
            assert_eq!(r.status, 400, "{bad}: {}", r.body);
            assert!(r.body.contains("callback_url"), "{}", r.body);
        }

        let url = format!("http://{hook_addr}/hooks/pgredact?source=test");
        let body = serde_json::json!({
            "customer_ids": [51, 52], "external_id": "cb-1", "callback_url": url,
        })
        .to_string();
        let r = post_json(addr, TOKEN, REMOVE_PII, &body).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let job = r.json()["job_id"].as_i64().expect("job id");
        assert_eq!(r.json()["callback_url"], url.as_str());
        // The refused requests created nothing.
        assert_eq!(env.sql("SELECT count(*) FROM pgredact.forget_jobs"), "1");

        // First worker: runs the job, delivers once, gets a 500.
        let state = pgredact::admin::AdminState::from_config(&env.cfg).expect("admin state");
        let first = pgredact::admin::spawn_worker(state);
        let h1 = hooks.recv().await.expect("first delivery");
        assert!(
            h1.head.starts_with("post /hooks/pgredact?source=test http/1.1"),
            "{}",
            h1.head
        );
        assert_eq!(h1.header("content-type").as_deref(), Some("application/json"));
        assert_eq!(h1.header("x-pgredact-delivery-attempt").as_deref(), Some("1"));
        check_signature(&h1);
        let n1: serde_json::Value = serde_json::from_slice(&h1.body).expect("JSON notice");
        assert_eq!(n1["type"], "pgredact.forget_job.finished");
        assert_eq!(n1["job_id"], job);
        assert_eq!(n1["external_id"], "cb-1");
        assert_eq!(n1["state"], "done");
        assert_eq!(n1["outcome"], "done");
        assert_eq!(n1["counts"]["requested"], 2);
        assert_eq!(n1["counts"]["anonymized_by_this_job"], 2);
        assert_eq!(n1["verification_ok"], true);
        assert!(n1["finished_at"].as_str().is_some(), "{n1}");
        // The failure is recorded on the job row, with the next attempt.
        wait_sql(
            &env,
            &format!("SELECT callback_last_error IS NOT NULL FROM pgredact.forget_jobs WHERE id = {job}"),
            "t",
        )
        .await;
        assert_eq!(
            env.sql(&format!(
                "SELECT callback_attempts, callback_last_error, callback_delivered_at IS NULL, callback_next_at > now() \
                 FROM pgredact.forget_jobs WHERE id = {job}"
            )),
            "1|answered HTTP 500|t|t"
        );
        // A restart: the worker goes, a new server state and worker take up the retry from
        // the job row.
        first.abort();
        let _ = first.await;
        let state = pgredact::admin::AdminState::from_config(&env.cfg).expect("admin state");
        pgredact::admin::spawn_worker(state);
        let h2 = hooks.recv().await.expect("second delivery");
        assert_eq!(h2.header("x-pgredact-delivery-attempt").as_deref(), Some("2"));
        check_signature(&h2);
        let n2: serde_json::Value = serde_json::from_slice(&h2.body).expect("JSON notice");
        assert_eq!(n2, n1, "the same notice, signed anew");
        wait_sql(
            &env,
            &format!("SELECT callback_delivered_at IS NOT NULL FROM pgredact.forget_jobs WHERE id = {job}"),
            "t",
        )
        .await;
        assert_eq!(
            env.sql(&format!(
                "SELECT callback_attempts, callback_last_error IS NULL, callback_next_at IS NULL \
                 FROM pgredact.forget_jobs WHERE id = {job}"
            )),
            "2|t|t"
        );
        // The job status shows the delivery.
        let st = get(addr, TOKEN, &format!("/v1/jobs/{job}")).await.json();
        assert_eq!(st["callback"]["attempts"], 2, "{st}");
        assert!(st["callback"]["delivered_at"].as_str().is_some(), "{st}");
        assert!(st["callback"]["last_error"].is_null(), "{st}");
        // Delivered means done: no third request.
        assert!(hooks.try_recv().is_err());
    });
}

/// Live connections of the admin API to the test database (the pooled ones are named
/// `pgredact-admin`; forget sessions of earlier versions `pgredact-forget`), and how many of
/// them started after `since` (a timestamptz literal; all of them without).
fn api_connections(env: &ConfigEnv, since: Option<&str>) -> (usize, usize) {
    let since = since.map_or("'infinity'".to_string(), |t| format!("'{t}'"));
    let out = env.sql(
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE backend_start > {since}::timestamptz) FROM pg_stat_activity \
             WHERE datname = 'app' AND application_name IN ('pgredact-admin', 'pgredact-forget')"
        ),
    );
    let (n, newer) = out.split_once('|').expect("two counts");
    (n.parse().expect("count"), newer.parse().expect("count"))
}

#[test]
fn api_requests_share_a_few_pooled_connections_per_database() {
    let env = demo_env("request_burst = 1000");
    rt().block_on(async {
        // No worker: every connection counted is the API's.
        let addr = start(&env.cfg, false).await;
        let r = post_json(addr, TOKEN, REMOVE_PII, r#"{"customer_ids":[61, 62]}"#).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let job = r.json()["job_id"].as_i64().expect("job id");
        // A burst of concurrent requests: the pool grows to at most its size.
        let burst: Vec<_> = (0..12)
            .map(|_| tokio::spawn(async move { get(addr, TOKEN, "/v1/jobs").await.status }))
            .collect();
        for b in burst {
            assert_eq!(b.await.expect("request task"), 200);
        }
        let t0 = env.sql("SELECT now()");
        // Many requests of every kind afterwards: no new connection.
        for i in 0..30 {
            let r = match i % 5 {
                0 => get(addr, TOKEN, &format!("/v1/jobs/{job}")).await,
                1 => get(addr, TOKEN, "/v1/jobs?state=queued").await,
                2 => get(addr, TOKEN, "/v1/customers/61/status").await,
                3 => get(addr, TOKEN, "/v1/customers/4242/status").await,
                _ => {
                    post_json(
                        addr,
                        TOKEN,
                        REMOVE_PII,
                        &format!("{{\"customer_ids\":[{}]}}", 100 + i),
                    )
                    .await
                }
            };
            assert!(r.status == 200 || r.status == 202, "{i}: {} {}", r.status, r.body);
        }
        let (n, newer) = api_connections(&env, Some(&t0));
        assert!(
            (1..=pgredact::admin::pool::PER_DATABASE).contains(&n),
            "{n} live API connections"
        );
        assert_eq!(newer, 0, "connections opened after the warm-up");
        // Connections the server ends are replaced, and requests keep being answered.
        env.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgredact-admin'",
        );
        wait_sql(
            &env,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgredact-admin'",
            "0",
        )
        .await;
        for _ in 0..5 {
            let r = get(addr, TOKEN, &format!("/v1/jobs/{job}")).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let (n, _) = api_connections(&env, None);
        assert_eq!(n, 1, "sequential requests after the reconnect share one connection");
    });
}

#[test]
fn jobs_are_cancelled_through_the_api_with_a_signed_cancelled_callback() {
    let env = demo_env("callback_key_env = \"PGREDACT_TEST_API_CALLBACK_KEY\"");
    rt().block_on(async {
        let (hook_addr, mut hooks) = hook_server(vec![200]).await;
        // No worker yet: the job stays queued.
        let addr = start(&env.cfg, false).await;
        let before = env.sql(
            "SELECT md5(string_agg(c::text, '|' ORDER BY customer_id)) FROM public.customers c",
        );
        let url = format!("http://{hook_addr}/hooks/cancel");
        let body = serde_json::json!({
            "customer_ids": [61, 62], "external_id": "cancel-1", "callback_url": url,
        })
        .to_string();
        let r = post_json(addr, TOKEN, REMOVE_PII, &body).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let job = r.json()["job_id"].as_i64().expect("job id");
        let s = get(addr, TOKEN, "/v1/customers/61/status").await.json();
        assert_eq!(s["state"], "pending", "{s}");

        // The token is needed, and an unknown job is 404.
        let path = format!("/v1/jobs/{job}/cancel");
        assert_eq!(http(addr, "POST", &path, &[], b"").await.status, 401);
        let r = post_json(addr, TOKEN, "/v1/jobs/999/cancel", "").await;
        assert_eq!(r.status, 404, "{}", r.body);

        let r = post_json(
            addr,
            TOKEN,
            &path,
            r#"{"requester":"dpo@example.com","reason":"request withdrawn"}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let c = r.json();
        assert_eq!(c["state"], "cancelled", "{c}");
        assert_eq!(c["previous_state"], "queued", "{c}");
        assert_eq!(c["ids_removed"], 2, "{c}");
        assert_eq!(c["cancellation"]["by"], "dpo@example.com", "{c}");
        assert_eq!(c["cancellation"]["reason"], "request withdrawn", "{c}");
        assert!(c["cancellation"]["at"].as_str().is_some(), "{c}");
        let st = get(addr, TOKEN, &format!("/v1/jobs/{job}")).await.json();
        assert_eq!(st["state"], "cancelled", "{st}");
        // Its IDs and keyed hashes are gone: the customer reads not forgotten, and no job is
        // named (nothing left links the customer to the cancelled job).
        assert_eq!(
            env.sql(&format!("SELECT count(*) FROM pgredact.forget_batches WHERE job_id = {job} AND (ids IS NOT NULL OR id_hashes IS NOT NULL)")),
            "0"
        );
        let s = get(addr, TOKEN, "/v1/customers/61/status").await.json();
        assert_eq!(
            s,
            serde_json::json!({"forgotten": false, "state": "not_forgotten"}),
            "{s}"
        );
        // A second cancel is a conflict.
        let r = post_json(addr, TOKEN, &path, "").await;
        assert_eq!(r.status, 409, "{}", r.body);

        // A worker: delivers the callback with outcome cancelled, never runs the job.
        let state = pgredact::admin::AdminState::from_config(&env.cfg).expect("admin state");
        pgredact::admin::spawn_worker(state);
        let h = hooks.recv().await.expect("callback");
        assert!(h.head.starts_with("post /hooks/cancel http/1.1"), "{}", h.head);
        check_signature(&h);
        let n: serde_json::Value = serde_json::from_slice(&h.body).expect("JSON notice");
        assert_eq!(n["type"], "pgredact.forget_job.finished");
        assert_eq!(n["job_id"], job);
        assert_eq!(n["external_id"], "cancel-1");
        assert_eq!(n["state"], "cancelled");
        assert_eq!(n["outcome"], "cancelled");
        wait_sql(
            &env,
            &format!("SELECT callback_delivered_at IS NOT NULL FROM pgredact.forget_jobs WHERE id = {job}"),
            "t",
        )
        .await;

        // A done job: 409, pointing to unforget.
        let r = post_json(addr, TOKEN, REMOVE_PII, r#"{"customer_ids":[63]}"#).await;
        assert_eq!(r.status, 202, "{}", r.body);
        let done = r.json()["job_id"].as_i64().expect("job id");
        assert_eq!(wait_job(addr, TOKEN, done).await["state"], "done");
        let r = post_json(addr, TOKEN, &format!("/v1/jobs/{done}/cancel"), "").await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(r.body.contains("unforget"), "{}", r.body);

        // The cancelled job never ran: its customers' rows are as before (63's changed).
        assert_eq!(
            env.sql(&format!("SELECT state, started_at IS NULL FROM pgredact.forget_jobs WHERE id = {job}")),
            "cancelled|t"
        );
        assert_eq!(
            env.sql("SELECT count(*) FROM public.customers WHERE customer_id IN (61, 62) AND first_name IS NOT NULL"),
            "2"
        );
        assert_ne!(
            env.sql("SELECT md5(string_agg(c::text, '|' ORDER BY customer_id)) FROM public.customers c"),
            before
        );
        assert_eq!(
            env.sql("SELECT count(*) FROM pgredact.forget_list"),
            "1"
        );
        // The audit trail has the cancel record and verifies.
        assert_eq!(
            env.sql(&format!("SELECT record->>'cancelled_by', record->>'reason' FROM pgredact.forget_audit WHERE operation = 'cancel' AND job_id = {job}")),
            "dpo@example.com|request withdrawn"
        );
        let ok = pgredact::forget::run_cli(
            &env.cfg,
            pgredact::forget::ForgetArgs {
                verify_audit: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.contains("chain intact"), "{ok}");
        // No more callbacks than the one.
        assert!(hooks.try_recv().is_err());
    });
}
