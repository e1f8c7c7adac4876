//! The masked relay in process, without a database: the client half's decision per message,
//! the server half's per message, and whole sessions over in-memory duplex streams with a
//! scripted PostgreSQL on the other end. Decisions come from the real rewriter over the
//! rewriter's fixture catalog, or from a scripted override.

use super::client::ClientHalf;
use super::decide::{Decide, SessionPath};
use super::server::ServerHalf;
use super::state::{Prep, SessionState, StmtEffect, Unit};
use super::{MaskedSession, SENTINEL};
use crate::proxy::lifecycle::Lifecycle;
use crate::rewrite::{self, Decision, Protections, Refusal, RefusalKind, SessionCtx};
use crate::sync::lock;
use crate::wire::backend::{ErrorFields, ParameterStatus, ReadyForQuery};
use crate::wire::frontend::{Bind, Parse, Query, Terminate};
use crate::wire::FrameReader;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncWriteExt, BufWriter};

/// Decides with the rewriter over the fixture catalog, unless a decision is scripted for the
/// statement's text.
struct TestDecider {
    prot: Protections,
    scripted: Mutex<HashMap<String, Decision>>,
}

impl TestDecider {
    fn new() -> TestDecider {
        TestDecider {
            prot: rewrite::tests::fixture(),
            scripted: Mutex::new(HashMap::new()),
        }
    }
}

impl Decide for TestDecider {
    async fn decide(&self, sql: &str, _t0: Instant, path: &SessionPath) -> Arc<Decision> {
        if let Some(d) = lock(&self.scripted).get(sql) {
            return Arc::new(d.clone());
        }
        let ctx = SessionCtx {
            prot: &self.prot,
            search_path: &path.schemas,
            path_at_start: path.at_start(),
        };
        Arc::new(rewrite::rewrite(sql, &ctx).decision)
    }

    fn audit_resolve(&self, _path: &SessionPath) -> crate::audit::Resolve {
        unreachable!("these sessions have no audit log")
    }
}

fn client_half() -> ClientHalf<TestDecider> {
    ClientHalf {
        state: Arc::new(Mutex::new(SessionState::default())),
        decider: TestDecider::new(),
        path: SessionPath::new(rewrite::tests::path(), "support".into()),
        auditing: false,
    }
}

fn query(sql: &str) -> Bytes {
    let mut b = BytesMut::new();
    Query::put(&mut b, sql);
    b.freeze()
}

fn parse(name: &str, sql: &str) -> Bytes {
    let mut b = BytesMut::new();
    Parse {
        name: name.into(),
        query: sql.into(),
        param_types: Vec::new(),
    }
    .encode(&mut b);
    b.freeze()
}

fn bind(statement: &str) -> Bytes {
    // Bind: portal "", statement, no parameter formats, no parameters, no result formats.
    let mut body = vec![0u8];
    body.extend_from_slice(statement.as_bytes());
    body.push(0);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut b = BytesMut::new();
    b.extend_from_slice(b"B");
    b.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    b.extend_from_slice(&body);
    let f = b.freeze();
    assert_eq!(Bind::decode(&f).unwrap().statement, statement);
    f
}

fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.extend_from_slice(&[tag]);
    b.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    b.extend_from_slice(body);
    b.freeze()
}

fn ready(status: u8) -> Bytes {
    let mut b = BytesMut::new();
    ReadyForQuery { status }.encode(&mut b);
    b.freeze()
}

fn error(fields: &[(u8, &str)]) -> Bytes {
    let mut b = BytesMut::new();
    ErrorFields(fields.iter().map(|(f, v)| (*f, v.to_string())).collect()).encode(b'E', &mut b);
    b.freeze()
}

/// What the client half sends PostgreSQL for one message.
async fn sent(c: &mut ClientHalf<TestDecider>, f: &Bytes) -> Bytes {
    let mut out = BytesMut::new();
    c.on_message(f, Instant::now(), &mut out)
        .await
        .expect("a well-formed message");
    out.freeze()
}

fn refusal(r: &str) -> Refusal {
    Refusal {
        kind: RefusalKind::PiiRead,
        message: r.into(),
        hint: Some("a hint".into()),
    }
}

// ---------- the client half ----------

#[tokio::test]
async fn statements_go_as_sent_rewritten_or_as_the_sentinel() {
    let mut c = client_half();
    let pass = query("SELECT count(*) FROM orders");
    assert_eq!(sent(&mut c, &pass).await, pass);
    let masked = sent(&mut c, &query("SELECT tier FROM customers")).await;
    let masked = Query::decode(&masked).unwrap().sql;
    assert!(
        masked.contains("\"pgredact_masked\".\"customers\""),
        "{masked}"
    );
    let refused = sent(
        &mut c,
        &query("UPDATE customers SET email = 'x' WHERE customer_id = 1"),
    )
    .await;
    assert_eq!(Query::decode(&refused).unwrap().sql, SENTINEL);
    let st = lock(&c.state);
    // One unit per Query; only the second was rewritten; the third holds its refusal.
    assert_eq!(st.units.len(), 3);
    assert!(st.units.iter().all(|u| u.closed));
    assert_eq!(
        st.units.iter().map(|u| u.rewritten).collect::<Vec<_>>(),
        [false, true, false]
    );
    assert_eq!(st.units[2].refusals[0].kind, RefusalKind::PiiWrite);
}

#[tokio::test]
async fn a_refused_parse_keeps_its_name_and_is_not_remembered() {
    let mut c = client_half();
    let out = sent(&mut c, &parse("s1", "UPDATE customers SET email = $1")).await;
    let p = Parse::decode(&out).unwrap();
    assert_eq!((p.name.as_str(), p.query.as_str()), ("s1", SENTINEL));
    let st = lock(&c.state);
    assert!(
        !st.units[0].closed,
        "Parse does not end its unit; Sync does"
    );
    assert!(st.candidates("s1").is_empty());
}

#[tokio::test]
async fn a_prepared_statement_decided_differently_now_is_not_bound() {
    let mut c = client_half();
    let sql = "SELECT count(*) FROM orders";
    assert_eq!(sent(&mut c, &parse("s1", sql)).await, parse("s1", sql));
    // Bound while the decision holds: as sent.
    assert_eq!(sent(&mut c, &bind("s1")).await, bind("s1"));
    // The schema changed: the same text is now decided differently.
    lock(&c.decider.scripted).insert(sql.into(), Decision::Refuse(refusal("now refused")));
    let out = sent(&mut c, &bind("s1")).await;
    let p = Parse::decode(&out).expect("a failing Parse stands in for the Bind");
    assert_eq!(p.query, SENTINEL);
    let st = lock(&c.state);
    let r = &st.units[0].refusals[0];
    assert_eq!(r.kind, RefusalKind::StalePrepared);
    assert!(
        r.message.contains("\"s1\"") && r.message.contains("now refused"),
        "{}",
        r.message
    );
}

#[tokio::test]
async fn execute_of_a_stale_prepare_is_refused_but_prepare_and_execute_in_one_text_is_not() {
    let mut c = client_half();
    let prep = "PREPARE p1 AS SELECT count(*) FROM orders";
    assert_eq!(sent(&mut c, &query(prep)).await, query(prep));
    // The unit ends without error: the statement now exists.
    {
        let mut st = lock(&c.state);
        let u = st.units.pop_front().expect("the PREPARE's unit");
        st.finish(u);
    }
    let both = "PREPARE p2 AS SELECT count(*) FROM orders; EXECUTE p2";
    assert_eq!(sent(&mut c, &query(both)).await, query(both));
    lock(&c.decider.scripted).insert(prep.into(), Decision::Pass);
    assert_eq!(
        sent(&mut c, &query("EXECUTE p1")).await,
        query("EXECUTE p1")
    );
    lock(&c.decider.scripted).insert(prep.into(), Decision::Refuse(refusal("changed")));
    let out = sent(&mut c, &query("EXECUTE p1")).await;
    assert_eq!(Query::decode(&out).unwrap().sql, SENTINEL);
}

#[tokio::test]
async fn search_path_changes_only_outside_a_transaction_block() {
    let mut c = client_half();
    lock(&c.state).tx_status = b'T';
    let out = sent(&mut c, &query("SET search_path = public")).await;
    assert_eq!(Query::decode(&out).unwrap().sql, SENTINEL);
    assert_eq!(
        lock(&c.state).units[0].refusals[0].kind,
        RefusalKind::Setting
    );
    // Idle: it goes as sent, and the session's path follows.
    let mut c = client_half();
    let set = query("SET search_path = public, pg_catalog");
    assert_eq!(sent(&mut c, &set).await, set);
    assert_eq!(c.path.schemas, ["public", "pg_catalog"]);
    assert!(
        !c.path.at_start(),
        "a path set later is not the session's first"
    );
}

#[tokio::test]
async fn function_call_is_refused_and_an_unknown_message_ends_the_session() {
    let mut c = client_half();
    let out = sent(&mut c, &frame(b'F', &[0, 0, 0, 1])).await;
    assert_eq!(Query::decode(&out).unwrap().sql, SENTINEL);
    assert_eq!(
        lock(&c.state).units[0].refusals[0].kind,
        RefusalKind::Protocol
    );
    let mut out = BytesMut::new();
    let e = c
        .on_message(&frame(b'Z', b"I"), Instant::now(), &mut out)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unexpected message type 'Z'"), "{e}");
    assert!(out.is_empty(), "nothing of it goes to PostgreSQL");
}

#[tokio::test]
async fn once_the_encoding_changed_every_statement_is_refused() {
    let mut c = client_half();
    lock(&c.state).reading_safe = false;
    let out = sent(&mut c, &query("SELECT 1")).await;
    assert_eq!(Query::decode(&out).unwrap().sql, SENTINEL);
    let st = lock(&c.state);
    assert_eq!(st.units[0].refusals[0].kind, RefusalKind::Setting);
    assert!(st.units[0].refusals[0].message.contains("client_encoding"));
}

// ---------- the server half ----------

fn server_half() -> ServerHalf {
    ServerHalf::new(Arc::new(Mutex::new(SessionState::default())), None)
}

/// What the client gets for one server message.
async fn relayed(s: &mut ServerHalf, f: Bytes) -> Vec<u8> {
    let mut out = Vec::new();
    s.on_message(f, &mut out)
        .await
        .expect("a well-formed message");
    out
}

#[tokio::test]
async fn the_sentinels_error_becomes_the_refusal_in_order() {
    let mut s = server_half();
    {
        let mut st = lock(&s.state);
        st.open().refusals.push_back(refusal("first"));
        st.units[0].refusals.push_back(refusal("second"));
    }
    let syntax = |pos: &str| {
        error(&[
            (b'S', "ERROR"),
            (b'C', "42601"),
            (b'M', &format!("syntax error at or near \"{SENTINEL}\"")),
            (b'P', pos),
        ])
    };
    for (pos, want) in [("1", "first"), ("8", "second")] {
        let out = relayed(&mut s, syntax(pos)).await;
        let e = ErrorFields::decode(&out).unwrap();
        assert_eq!(e.get(b'C'), Some("42501"));
        assert_eq!(e.get(b'M'), Some(want));
        assert_eq!(e.get(b'H'), Some("a hint"));
        assert_eq!(e.get(b'P'), None);
    }
    assert!(lock(&s.state).units[0].errored);
}

#[tokio::test]
async fn errors_are_scrubbed_of_values_positions_and_user_code() {
    let mut s = server_half();
    lock(&s.state).open().rewritten = true;
    let dup = error(&[
        (b'S', "ERROR"),
        (b'C', "23505"),
        (b'M', "duplicate key value violates unique constraint"),
        (b'D', "Key (email)=(jane@example.com) already exists."),
        (b'P', "12"),
    ]);
    let e = ErrorFields::decode(&relayed(&mut s, dup).await).unwrap();
    assert_eq!(e.get(b'D'), None, "the value in the DETAIL");
    assert_eq!(e.get(b'P'), None, "a position in the rewritten text");
    assert!(e.get(b'M').unwrap().starts_with("duplicate key"));
    let raised = error(&[
        (b'S', "ERROR"),
        (b'C', "P0001"),
        (b'M', "jane@example.com"),
        (b'W', "PL/pgSQL function f() line 1 at RAISE"),
    ]);
    let e = ErrorFields::decode(&relayed(&mut s, raised).await).unwrap();
    assert!(
        e.get(b'M').unwrap().contains("was hidden"),
        "{:?}",
        e.get(b'M')
    );
    assert_eq!(e.get(b'W'), None);
}

#[tokio::test]
async fn encoding_changes_make_reading_unsafe_and_notifications_are_dropped() {
    let mut s = server_half();
    let status = |name: &str, value: &str| {
        let mut b = BytesMut::new();
        ParameterStatus {
            name: name.into(),
            value: value.into(),
        }
        .encode(&mut b);
        b.freeze()
    };
    for (name, value, safe) in [
        ("application_name", "x", true),
        ("client_encoding", "UTF8", true),
        ("standard_conforming_strings", "on", true),
        ("client_encoding", "LATIN1", false),
    ] {
        lock(&s.state).reading_safe = true;
        let f = status(name, value);
        assert_eq!(relayed(&mut s, f.clone()).await, f, "relayed as sent");
        assert_eq!(lock(&s.state).reading_safe, safe, "{name}={value}");
    }
    // One that does not decode (no value terminator) but names a setting the rewriter depends on.
    lock(&s.state).reading_safe = true;
    relayed(&mut s, frame(b'S', b"standard_conforming_strings\0off")).await;
    assert!(!lock(&s.state).reading_safe);
    let notify = frame(b'A', b"\0\0\0\x01chan\0jane@example.com\0");
    assert!(relayed(&mut s, notify).await.is_empty());
}

#[tokio::test]
async fn ready_for_query_applies_a_units_effects_exactly_or_conservatively() {
    let prep = |sql: &str| Prep {
        sql: sql.into(),
        decision: Arc::new(Decision::Pass),
    };
    let mut s = server_half();
    {
        let mut st = lock(&s.state);
        st.statements.insert("old".into(), vec![prep("SELECT 1")]);
        let u = st.open();
        u.effects
            .push(StmtEffect::Create("a".into(), prep("SELECT 2")));
        u.effects.push(StmtEffect::Remove("old".into()));
        u.closed = true;
        // A second unit that fails: its creation is only a candidate, its removal is ignored.
        st.units.push_back(Unit {
            closed: true,
            effects: vec![
                StmtEffect::Create("a".into(), prep("SELECT 3")),
                StmtEffect::RemoveAll,
            ],
            ..Unit::default()
        });
    }
    relayed(&mut s, ready(b'T')).await;
    {
        let st = lock(&s.state);
        assert_eq!(st.tx_status, b'T');
        assert!(!st.statements.contains_key("old"));
        assert_eq!(
            st.candidates("a").len(),
            2,
            "the second unit's creation is in flight"
        );
    }
    relayed(
        &mut s,
        error(&[(b'S', "ERROR"), (b'C', "42P01"), (b'M', "x")]),
    )
    .await;
    relayed(&mut s, ready(b'I')).await;
    let st = lock(&s.state);
    let texts: Vec<_> = st
        .candidates("a")
        .iter()
        .map(|p| p.sql.to_string())
        .collect();
    assert_eq!(texts, ["SELECT 2", "SELECT 3"]);
    assert!(st.idle());
}

// ---------- whole sessions over duplex streams ----------

fn lifecycle() -> Lifecycle {
    let cfg = crate::config::Config::parse(
        "[upstream]\nuser = \"pgredact\"\n",
        std::path::Path::new("/tmp/pgredact.toml"),
    )
    .unwrap();
    Lifecycle::new(&cfg)
}

/// A session between an in-memory client and an in-memory PostgreSQL: returns the test's ends
/// of both (client side, server side) and the relay's task.
fn session() -> (
    FrameReader<tokio::io::DuplexStream>,
    FrameReader<tokio::io::DuplexStream>,
    tokio::task::JoinHandle<()>,
) {
    let (client, proxy_client) = tokio::io::duplex(64 * 1024);
    let (proxy_server, server) = tokio::io::duplex(64 * 1024);
    let (crd, cwr) = tokio::io::split(proxy_client);
    let (srd, swr) = tokio::io::split(proxy_server);
    let path = SessionPath::new(rewrite::tests::path(), "support".into());
    let task = tokio::spawn(async move {
        let life = lifecycle();
        let mut cwr = BufWriter::new(cwr);
        MaskedSession::new(TestDecider::new(), path, None)
            .run(
                FrameReader::new(crd),
                swr,
                FrameReader::new(srd),
                &mut cwr,
                &life,
                "support",
                async {},
            )
            .await
    });
    (FrameReader::new(client), FrameReader::new(server), task)
}

#[tokio::test]
async fn a_pipelined_refusal_keeps_its_place_between_the_servers_answers() {
    let (mut client, mut server, task) = session();
    let ok = query("SELECT count(*) FROM orders WHERE customer_id = 1");
    let bad = query("UPDATE customers SET email = 'x' WHERE customer_id = 1");
    let mut both = BytesMut::new();
    both.extend_from_slice(&ok);
    both.extend_from_slice(&bad);
    client.get_mut().write_all(&both).await.unwrap();
    // PostgreSQL gets the first as sent and the sentinel in place of the second.
    assert_eq!(server.next().await.unwrap().unwrap(), ok);
    let second = server.next().await.unwrap().unwrap();
    assert_eq!(Query::decode(&second).unwrap().sql, SENTINEL);
    let complete = frame(b'C', b"SELECT 1\0");
    let mut answers = BytesMut::new();
    for f in [
        complete.clone(),
        ready(b'I'),
        error(&[
            (b'S', "ERROR"),
            (b'C', "42601"),
            (b'M', &format!("syntax error at or near \"{SENTINEL}\"")),
        ]),
        ready(b'I'),
    ] {
        answers.extend_from_slice(&f);
    }
    server.get_mut().write_all(&answers).await.unwrap();
    assert_eq!(client.next().await.unwrap().unwrap(), complete);
    assert_eq!(client.next().await.unwrap().unwrap(), ready(b'I'));
    let e = ErrorFields::decode(&client.next().await.unwrap().unwrap()).unwrap();
    assert_eq!(e.get(b'C'), Some("42501"));
    assert!(
        e.get(b'M').unwrap().contains("writing column email"),
        "{e:?}"
    );
    assert_eq!(client.next().await.unwrap().unwrap(), ready(b'I'));
    // The client leaves; the relay ends when PostgreSQL closes.
    drop(client);
    assert!(
        server.next().await.unwrap().is_none(),
        "closed, without a Terminate"
    );
    drop(server);
    task.await.unwrap();
}

#[tokio::test]
async fn a_protocol_error_ends_only_the_session_with_08p01() {
    let (mut client, mut server, task) = session();
    client
        .get_mut()
        .write_all(&frame(b'Z', b"I"))
        .await
        .unwrap();
    // PostgreSQL is told goodbye, then closes.
    assert_eq!(
        server.next().await.unwrap().unwrap().as_ref(),
        Terminate::BYTES
    );
    drop(server);
    let e = ErrorFields::decode(&client.next().await.unwrap().unwrap()).unwrap();
    assert_eq!((e.get(b'S'), e.get(b'C')), (Some("FATAL"), Some("08P01")));
    assert!(
        e.get(b'M').unwrap().contains("unexpected message type"),
        "{e:?}"
    );
    task.await.unwrap();
}
