//! One client session: startup (SSL/GSS answers, cancel routing, startup packet checks, role
//! lookup, authentication relayed to PostgreSQL), then the relay.
//!
//! Unmasked sessions are relayed as raw bytes in both directions, never parsed.
//! Masked sessions are relayed frame by frame: Query and Parse go through the rewriter; a refused
//! statement is replaced by a sentinel that makes PostgreSQL fail it in order (so transaction
//! state and pipelining stay exact) and the server's error is swapped for the refusal.

use super::lifecycle::{until, within, Lifecycle, Stop, HALT_GRACE, SHUTTING_DOWN};
use super::peers;
use super::state::{lock, DbState, Shared};
use crate::rewrite::search_path::PathChange;
use crate::rewrite::{Decision, Refusal, RefusalKind, REFUSAL_SQLSTATE};
use crate::tls::{ClientStream, ServerStream, SplitStream};
use crate::wire::backend::{
    send_fatal, Authentication, AuthenticationSasl, BackendKeyData, DataRow, ErrorFields,
    ParameterStatus, ReadyForQuery,
};
use crate::wire::frame::{read_startup, MessageTracker};
use crate::wire::frontend::{Bind, Close, Parse, Query, Terminate};
use crate::wire::startup::{Startup, StartupError};
use crate::wire::{FrameError, FrameReader};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

/// The statement text sent in place of a refused one. It fails in PostgreSQL's parser with a
/// syntax error naming this word, which the server-side relay recognizes and replaces.
const SENTINEL: &str = "pgredact_refused_statement_5f2c9a";

/// Terminate, sent to PostgreSQL when pgredact ends a session at a message boundary.
const TERMINATE: [u8; 5] = Terminate::BYTES;

/// Why the startup phase ended before the session was established.
#[derive(Clone, Copy)]
enum Interrupted {
    /// `login_timeout_secs` (the value) passed.
    LoginTimeout(u64),
    /// The drain started.
    Shutdown,
}

impl Interrupted {
    async fn tell<W: AsyncWrite + Unpin>(self, w: &mut W) {
        match self {
            Interrupted::LoginTimeout(secs) => {
                tracing::info!(
                    "closing a client that did not complete startup and authentication within {secs} s"
                );
                send_fatal(
                    w,
                    "08P01",
                    &format!("pgredact: startup and authentication did not complete within {secs} s (login_timeout_secs)"),
                    None,
                )
                .await
            }
            Interrupted::Shutdown => send_fatal(w, "57P01", SHUTTING_DOWN, None).await,
        }
    }
}

/// Runs one step of the startup phase within the login deadline (with its value in seconds),
/// and only until the drain starts.
async fn bounded<F: std::future::Future>(
    shared: &Shared,
    login: Option<(Instant, u64)>,
    f: F,
) -> Result<F::Output, Interrupted> {
    tokio::select! {
        biased;
        r = f => Ok(r),
        _ = shared.life.draining() => Err(Interrupted::Shutdown),
        _ = until(login.map(|l| l.0)) => Err(Interrupted::LoginTimeout(login.map_or(0, |l| l.1))),
    }
}

/// A session refused during startup: the FATAL error the client gets.
struct Fatal {
    code: &'static str,
    message: String,
    hint: Option<&'static str>,
}

impl Fatal {
    fn new(code: &'static str, message: String) -> Fatal {
        Fatal {
            code,
            message,
            hint: None,
        }
    }

    async fn send<W: AsyncWrite + Unpin>(&self, w: &mut W) {
        send_fatal(w, self.code, &self.message, self.hint).await
    }
}

/// One client connection, from accept to close. `admitted` is false for a connection beyond
/// `max_client_conn`: it is answered 53300 after its startup packet (a cancel request is still
/// served).
pub async fn handle(shared: Arc<Shared>, tcp: TcpStream, admitted: bool) {
    // One span per client connection: every line logged for it carries these fields.
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let e = tracing::field::Empty;
    let span = tracing::info_span!("session", %peer, user = e, database = e, masked = e);
    handle_in_span(shared, tcp, admitted).instrument(span).await
}

async fn handle_in_span(shared: Arc<Shared>, tcp: TcpStream, admitted: bool) {
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().ok();
    let login = shared
        .life
        .settings
        .login_timeout()
        .map(|d| (Instant::now() + d, d.as_secs()));
    let sh = &*shared;
    let mut client = ClientStream::Plain(tcp);
    // Startup phase: at most one SSLRequest/GSSENCRequest before the StartupMessage.
    let mut negotiations = 0;
    let (pkt, params) = loop {
        let pkt = match bounded(sh, login, read_startup(&mut client)).await {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                send_fatal(&mut client, "08P01", &format!("pgredact: {e}"), None).await;
                return;
            }
            Err(i) => {
                i.tell(&mut client).await;
                return;
            }
        };
        // A StartupMessage whose parameters cannot be read is refused after the TLS and
        // connection-limit checks, as a readable one would be.
        let code = match Startup::decode(&pkt) {
            Ok(Startup::Ssl) if negotiations < 2 && shared.tls.is_some() && !client.is_tls() => {
                negotiations += 1;
                if client.write_all(b"S").await.is_err() {
                    return;
                }
                let (Some(acceptor), ClientStream::Plain(tcp)) = (shared.tls.as_ref(), client)
                else {
                    return;
                };
                client = match bounded(sh, login, acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => ClientStream::Tls(Box::new(t)),
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake failed: {e}");
                        return;
                    }
                    // In the middle of a handshake nothing can be said to the client.
                    Err(_) => return,
                };
                continue;
            }
            Ok(Startup::Ssl | Startup::GssEnc) if negotiations < 2 => {
                negotiations += 1;
                if client.write_all(b"N").await.is_err() {
                    return;
                }
                continue;
            }
            Ok(Startup::Cancel {
                pid,
                key,
                from_peer,
            }) => {
                cancel_request(&shared, pid, key, from_peer).await;
                return;
            }
            Ok(Startup::Startup { .. }) | Err(StartupError::Params(_))
                if shared.cfg.tls.as_ref().is_some_and(|t| t.require) && !client.is_tls() =>
            {
                send_fatal(
                    &mut client,
                    "28000",
                    "pgredact: this server requires TLS; connect with sslmode=require (or verify-full)",
                    None,
                )
                .await;
                return;
            }
            Ok(Startup::Startup { params }) => break (pkt, Ok(params)),
            Err(StartupError::Params(e)) => break (pkt, Err(e)),
            Err(StartupError::Malformed(e)) => {
                send_fatal(&mut client, "08P01", &format!("pgredact: {e}"), None).await;
                return;
            }
            Ok(other) => other.code(),
            Err(StartupError::Unsupported(code)) => code,
        };
        send_fatal(
            &mut client,
            "08P01",
            &format!("pgredact: unsupported frontend protocol or request code {code}"),
            None,
        )
        .await;
        return;
    };
    if !admitted {
        send_fatal(
            &mut client,
            "53300",
            &format!(
                "pgredact: too many connections to pgredact (max_client_conn = {})",
                shared.life.settings.max_client_conn()
            ),
            None,
        )
        .await;
        return;
    }
    let params = match params {
        Ok(p) => p,
        Err(e) => {
            send_fatal(&mut client, "08P01", &format!("pgredact: {e}"), None).await;
            return;
        }
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user) = get("user") else {
        send_fatal(
            &mut client,
            "28000",
            "pgredact: no user name in the startup packet",
            None,
        )
        .await;
        return;
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let span = tracing::Span::current();
    span.record("user", user.as_str());
    span.record("database", database.as_str());
    // Until PostgreSQL has authenticated the client, the client's own connection is the only
    // one opened for it: control connections, catalog loads and the role lookup come after.
    let by = shared.connect_deadline();
    let server = match bounded(sh, login, shared.upstream_connect(by)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!("{e}");
            send_fatal(&mut client, "08006", &format!("pgredact: {e}"), None).await;
            return;
        }
        Err(i) => {
            i.tell(&mut client).await;
            return;
        }
    };
    let mut sreader = FrameReader::new(server);
    let mut creader = FrameReader::new(client);
    let auth = bounded(sh, login, async {
        // The startup packet goes as the client sent it. The server's first answer is part of
        // connecting (connect_timeout_secs); the client's answers are not.
        write_raw(&mut sreader, &pkt).await.map_err(|_| None)?;
        if within(by, sreader.wait_frame()).await.is_err() {
            let e = shared.no_answer();
            crate::metrics::upstream_error("session");
            tracing::warn!("{e}");
            return Err(Some(Fatal::new("08006", format!("pgredact: {e}"))));
        }
        match authenticate(&shared, &database, &user, &mut creader, &mut sreader).await {
            Ok(Some(k)) => Ok(k),
            _ => Err(None),
        }
    })
    .await;
    let keys = match auth {
        Ok(Ok(k)) => k,
        Ok(Err(None)) => return,
        Ok(Err(Some(f))) => {
            f.send(creader.get_mut()).await;
            return;
        }
        Err(i) => {
            i.tell(creader.get_mut()).await;
            return;
        }
    };
    let guard = CancelGuard {
        shared: shared.clone(),
        key: keys.client_key,
    };
    let (db, unmasked, search_path) = match bounded(
        sh,
        login,
        admit(&shared, &database, &user, &params, &mut sreader),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(f)) => {
            f.send(creader.get_mut()).await;
            let _ = write_raw(&mut sreader, &TERMINATE).await;
            return;
        }
        Err(i) => {
            i.tell(creader.get_mut()).await;
            let _ = write_raw(&mut sreader, &TERMINATE).await;
            return;
        }
    };
    tracing::Span::current().record("masked", !unmasked);
    let _counted = crate::metrics::session_started(!unmasked);
    tracing::info!(user = %user, database = %database, masked = !unmasked, tls = creader.get_mut().is_tls(), "session started");
    let (cstream, cbuf) = creader.into_parts();
    let (sstream, sbuf) = sreader.into_parts();
    let s = Established {
        shared: shared.clone(),
        db,
        user,
        client_key: keys.client_key,
        search_path,
        peer,
    };
    let r = keys.ready;
    match (cstream, sstream) {
        (ClientStream::Plain(c), ServerStream::Plain(s2)) => {
            relay(s, unmasked, c, cbuf, s2, sbuf, r).await
        }
        (ClientStream::Plain(c), ServerStream::Tls(s2)) => {
            relay(s, unmasked, c, cbuf, *s2, sbuf, r).await
        }
        (ClientStream::Tls(c), ServerStream::Plain(s2)) => {
            relay(s, unmasked, *c, cbuf, s2, sbuf, r).await
        }
        (ClientStream::Tls(c), ServerStream::Tls(s2)) => {
            relay(s, unmasked, *c, cbuf, *s2, sbuf, r).await
        }
    }
    drop(guard);
}

/// After PostgreSQL has authenticated the client, before it gets its first ReadyForQuery: the
/// database's state (control connection, catalog) and the role lookup; for a masked role, the
/// checks that refuse the session and its setup on its own connection. Returns the database,
/// whether the role is unmasked, and a masked session's search path.
async fn admit(
    shared: &Arc<Shared>,
    database: &str,
    user: &str,
    params: &[(String, String)],
    server: &mut FrameReader<ServerStream>,
) -> Result<(Arc<DbState>, bool, Vec<String>), Fatal> {
    let db = shared
        .db(database)
        .await
        .map_err(|e| Fatal::new("08006", format!("pgredact: {e}")))?;
    let unmasked = db
        .is_unmasked(shared, user)
        .await
        .map_err(|e| Fatal::new("08006", format!("pgredact: {e}")))?;
    if unmasked {
        return Ok((db, true, Vec::new()));
    }
    let snap = db.snapshot();
    if snap.policy.is_none() {
        return Err(Fatal {
            code: REFUSAL_SQLSTATE,
            message: format!(
                "pgredact: database {database:?} has no masking policy, so masked roles such as {user:?} may not connect"
            ),
            hint: Some("a DBA must add a policy file for this database"),
        });
    }
    check_masked_startup(params)
        .map_err(|m| Fatal::new(REFUSAL_SQLSTATE, format!("pgredact: {m}")))?;
    // Refused after authentication, so only a role of the database learns why (it could read
    // the same grants in pg_catalog).
    if let Some(why) = &snap.wall_refusal {
        return Err(Fatal {
            code: REFUSAL_SQLSTATE,
            message: format!("pgredact: masked sessions are refused: {why}"),
            hint: Some("`pgredact check` lists every violation; a policy may opt out with enforcement = \"proxy\", which is weaker (direct connections read raw data)"),
        });
    }
    let path = session_setup(server).await.map_err(|e| {
        Fatal::new(
            "08006",
            format!("pgredact: could not set up the masked session: {e}"),
        )
    })?;
    Ok((db, false, path))
}

/// An established session, as its relay sees it.
struct Established {
    shared: Arc<Shared>,
    db: Arc<DbState>,
    user: String,
    /// The key the client cancels with (pgredact's own, mapped to the backend's).
    client_key: (i32, i32),
    /// A masked session's search path (empty for unmasked ones).
    search_path: Vec<String>,
    /// The client's address (for the audit log).
    peer: Option<std::net::SocketAddr>,
}

impl Established {
    /// Cancels the statement the session's backend runs (as the client's CancelRequest would).
    async fn cancel_statement(&self) {
        cancel(&self.shared, self.client_key.0, self.client_key.1).await;
    }
}

/// The session after authentication, over a plain or TLS client stream.
async fn relay<C: SplitStream, S: SplitStream>(
    s: Established,
    unmasked: bool,
    mut c: C,
    cbuf: BytesMut,
    srv: S,
    sbuf: BytesMut,
    ready: Bytes,
) {
    if unmasked {
        // Raw relay, both directions. Flush what the startup readers had buffered first.
        if c.write_all(&ready).await.is_err() {
            return;
        }
        if !sbuf.is_empty() && c.write_all(&sbuf).await.is_err() {
            return;
        }
        let tx_status = ReadyForQuery::decode(&ready).map_or(b'I', |z| z.status);
        unmasked_relay(&s, c, srv, cbuf, tx_status, &sbuf).await;
    } else {
        // The audit log of masked sessions: a record at start and at end, one per statement.
        let audit = s
            .shared
            .audit
            .get()
            .map(|a| a.session(&s.user, &s.db.name, s.peer.map(|p| p.to_string())));
        if let Some(a) = &audit {
            a.start().await;
        }
        masked_session(s, c, cbuf, srv, sbuf, ready, audit.clone()).await;
        if let Some(a) = &audit {
            a.end().await;
        }
    }
}

/// What the unmasked relay knows of a session from the message boundaries it follows in both
/// directions (it parses nothing else): enough to tell an idle session from a busy one.
struct Activity {
    /// ReadyForQuery answers the client's messages ask for (Query, Sync, FunctionCall), and
    /// those the server sent.
    asked: u64,
    answered: u64,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// The transaction status of the last ReadyForQuery.
    tx_status: u8,
    /// The bytes relayed so far end inside a message.
    client_mid: bool,
    server_mid: bool,
    /// A stream could not be followed: the session counts as busy from then on.
    lost: bool,
    /// The client's last message or the last ReadyForQuery, whichever came later.
    last_event: Instant,
}

impl Activity {
    fn in_flight(&self) -> bool {
        self.lost || self.asked > self.answered || self.unsynced || self.client_mid
    }

    fn idle(&self) -> bool {
        !self.in_flight() && !self.server_mid && self.tx_status == b'I'
    }
}

/// How the server-to-client half of the unmasked relay ended.
enum Down {
    Eof,
    /// pgredact ends the session; true when the client's stream is at a message boundary (so a
    /// FATAL error can follow).
    Stop(Stop, bool),
}

/// The relay of an unmasked session: raw bytes both ways. Membership can be revoked while the
/// session is open: with per-statement freshness, bytes from the client are forwarded only after
/// a role reading taken after they arrived shows the role still exempt (re-checked when roles or
/// memberships changed); a periodic re-check also ends idle sessions.
///
/// The relay follows message boundaries (type and length, not contents) in both directions, to
/// know when the session is idle: the drain closes idle sessions at once, the idle timeout closes
/// those idle that long, and the deadline closes the rest between two server messages.
async fn unmasked_relay<C: SplitStream, S: SplitStream>(
    s: &Established,
    c: C,
    srv: S,
    early: BytesMut,
    tx_status: u8,
    sbuf: &[u8],
) {
    use tokio::io::AsyncReadExt;
    let (shared, db, user) = (&s.shared, &s.db, s.user.as_str());
    let life = &shared.life;
    let (mut crd, mut cwr) = c.split_owned();
    let (mut srd, mut swr) = srv.split_owned();
    let mut strack = MessageTracker::default();
    let act = Mutex::new(Activity {
        asked: 0,
        answered: 0,
        unsynced: false,
        tx_status,
        client_mid: false,
        server_mid: false,
        lost: false,
        last_event: Instant::now(),
    });
    if !sbuf.is_empty() {
        let mut a = lock(&act);
        strack.feed(sbuf, |tag, first| server_message(&mut a, tag, first));
        a.server_mid = !strack.at_boundary();
    }
    let wake = tokio::sync::Notify::new();
    // Under database enforcement the exemption is a PostgreSQL privilege: a revoked membership
    // counts from the next statement with no help from pgredact, and the relay is a plain copy.
    // Under proxy enforcement pgredact re-checks it, per statement and periodically.
    let proxy_enforced = db
        .snapshot()
        .policy
        .as_deref()
        .is_some_and(|p| p.enforcement == crate::policy::Enforcement::Proxy);
    let period = std::time::Duration::from_secs(shared.cfg.membership_recheck_secs.max(1));
    let watch = async {
        if !proxy_enforced {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(period).await;
            if let Ok(false) = db.is_unmasked(shared, user).await {
                return;
            }
        }
    };
    let per_statement = shared.cfg.per_statement_membership && proxy_enforced;
    // Every reading from now on asks whether this role is still exempt.
    let _tracked = proxy_enforced.then(|| db.track_unmasked(user));
    let why = {
        let upward = async {
            let mut ctrack = MessageTracker::default();
            let mut buf = vec![0u8; 64 * 1024];
            // Bytes the client sent along with its authentication (a pipelined first statement)
            // go through the same gate as everything after them.
            let mut early = Some(early).filter(|b| !b.is_empty());
            loop {
                let n = match early.take() {
                    Some(b) => {
                        buf.resize(buf.len().max(b.len()), 0);
                        buf[..b.len()].copy_from_slice(&b);
                        b.len()
                    }
                    None => match crd.read(&mut buf).await {
                        Ok(0) | Err(_) => return Ended::Normally,
                        Ok(n) => n,
                    },
                };
                {
                    let mut a = lock(&act);
                    ctrack.feed(&buf[..n], |tag, _| client_message(&mut a, tag));
                    a.client_mid = !ctrack.at_boundary();
                    a.lost |= ctrack.lost();
                    a.last_event = Instant::now();
                }
                if per_statement {
                    // Forward these bytes only after a reading sent after they arrived says the
                    // role is still exempt.
                    let t0 = std::time::Instant::now();
                    let f = match db.freshness_since(shared, t0).await {
                        Ok(f) => f,
                        Err(e) => return Ended::Unverifiable(e),
                    };
                    let still = if f.asked.iter().any(|u| u == user) {
                        f.exempt.iter().any(|u| u == user)
                    } else {
                        match db.is_unmasked(shared, user).await {
                            Ok(b) => b,
                            Err(e) => return Ended::Unverifiable(e),
                        }
                    };
                    if !still {
                        return Ended::Revoked;
                    }
                }
                if swr.write_all(&buf[..n]).await.is_err() {
                    return Ended::Normally;
                }
                if lock(&act).idle() {
                    wake.notify_one();
                }
            }
        };
        let downward = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let idle_since = {
                    let a = lock(&act);
                    a.idle().then_some(a.last_event)
                };
                let limit = life.settings.idle_timeout(false);
                let timer = idle_since.zip(limit).map(|(t, d)| t + d);
                let stop = tokio::select! {
                    biased;
                    _ = life.halted() => {
                        // Finish the server's current message, so the FATAL error follows a whole one.
                        let whole = tokio::time::timeout(HALT_GRACE, async {
                            while !strack.at_boundary() {
                                let n = match srd.read(&mut buf).await {
                                    Ok(0) | Err(_) => return false,
                                    Ok(n) => n,
                                };
                                let k = strack.feed_to_boundary(&buf[..n], |_, _| {});
                                if strack.lost() || cwr.write_all(&buf[..k]).await.is_err() {
                                    return false;
                                }
                            }
                            true
                        })
                        .await
                        .unwrap_or(false);
                        return Down::Stop(Stop::Shutdown, whole);
                    }
                    _ = life.draining(), if idle_since.is_some() => Stop::Shutdown,
                    _ = until(timer), if timer.is_some() => Stop::Idle {
                        masked: false,
                        secs: limit.map_or(0, |d| d.as_secs()),
                    },
                    r = srd.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return Down::Eof,
                        Ok(n) => {
                            {
                                let mut a = lock(&act);
                                strack.feed(&buf[..n], |tag, first| server_message(&mut a, tag, first));
                                a.server_mid = !strack.at_boundary();
                                a.lost |= strack.lost();
                            }
                            if cwr.write_all(&buf[..n]).await.is_err() {
                                return Down::Eof;
                            }
                            continue;
                        }
                    },
                    _ = wake.notified() => continue,
                };
                // Decided with the session's state as it is now: both halves run in this task,
                // so no client message can be forwarded between this check and the close.
                let a = lock(&act);
                let due = match (stop, limit) {
                    (Stop::Idle { .. }, Some(d)) => Instant::now() >= a.last_event + d,
                    (Stop::Idle { .. }, None) => false,
                    (Stop::Shutdown, _) => true,
                };
                if a.idle() && due {
                    return Down::Stop(stop, true);
                }
            }
        };
        tokio::pin!(downward);
        // Server bytes are forwarded until the server closes; a session ended by pgredact is
        // closed on the server side first, so the client gets every complete reply before the
        // FATAL.
        let why = tokio::select! {
            e = upward => e,
            _ = watch => Ended::Revoked,
            d = &mut downward => match d {
                Down::Eof => Ended::Normally,
                Down::Stop(stop, whole) => Ended::Stopped(stop, whole),
            },
            _ = life.halted_long_ago() => Ended::Stopped(Stop::Shutdown, false),
        };
        match why {
            Ended::Normally => return,
            Ended::Stopped(..) => {}
            Ended::Revoked | Ended::Unverifiable(_) => {
                // Close the server's side (no more client bytes); it finishes what it was sending.
                let _ = swr.shutdown().await;
                let _ = (&mut downward).await;
            }
        }
        why
    };
    let (stop, whole) = match why {
        Ended::Stopped(stop, whole) => (stop, whole),
        Ended::Revoked | Ended::Unverifiable(_) => {
            let (code, msg) = match why {
                Ended::Unverifiable(e) => {
                    tracing::warn!(user = %user, "ending an unmasked session: {e}");
                    (
                        "08006",
                        format!("pgredact: the role's exemption from masking could not be re-checked: {e}"),
                    )
                }
                _ => {
                    tracing::info!(user = %user, "membership in an unmasked role was revoked: ending the session");
                    (
                        "57P01",
                        "pgredact: this role is no longer exempt from masking; reconnect"
                            .to_string(),
                    )
                }
            };
            let mut out = BytesMut::new();
            ErrorFields::new("FATAL", code, &msg).encode(b'E', &mut out);
            let _ = cwr.write_all(&out).await;
            let _ = cwr.shutdown().await;
            return;
        }
        Ended::Normally => return,
    };
    let (in_flight, client_mid) = {
        let a = lock(&act);
        (a.in_flight(), a.client_mid)
    };
    if stop == Stop::Shutdown && in_flight {
        s.cancel_statement().await;
    }
    let (code, msg) = stop.error();
    tracing::info!(user = %user, masked = false, "closing the session: {msg}");
    if whole {
        let mut out = BytesMut::new();
        ErrorFields::new("FATAL", code, &msg).encode(b'E', &mut out);
        let _ = cwr.write_all(&out).await;
    }
    let _ = cwr.shutdown().await;
    if !client_mid {
        let _ = swr.write_all(&TERMINATE).await;
    }
    let _ = swr.shutdown().await;
}

/// A message the unmasked relay forwarded to the server.
fn client_message(a: &mut Activity, tag: u8) {
    match tag {
        b'Q' | b'F' => a.asked += 1,
        b'S' => {
            a.asked += 1;
            a.unsynced = false;
        }
        b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => a.unsynced = true,
        _ => {}
    }
}

/// A message the unmasked relay forwarded to the client.
fn server_message(a: &mut Activity, tag: u8, first: Option<u8>) {
    if tag == b'Z' {
        a.answered += 1;
        if let Some(s) = first {
            a.tx_status = s;
        }
        a.last_event = Instant::now();
        // More answers than questions: the stream is not what the relay thinks it is.
        if a.answered > a.asked {
            a.lost = true;
        }
    }
}

enum Ended {
    Normally,
    Revoked,
    Unverifiable(String),
    /// pgredact ends the session (true: at a message boundary of the server's stream).
    Stopped(Stop, bool),
}

struct Keys {
    client_key: (i32, i32),
    /// The ReadyForQuery that ends startup, held back until the session is ready.
    ready: Bytes,
}

struct CancelGuard {
    shared: Arc<Shared>,
    key: (i32, i32),
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.shared.cancels.lock() {
            m.remove(&self.key);
        }
    }
}

/// A cancel request from a client (or forwarded by a peer): served here when the key is this
/// instance's, forwarded once to the peer whose id the key carries otherwise (`peers`).
async fn cancel_request(shared: &Shared, pid: i32, key: i32, from_peer: bool) {
    let own = shared.identity.peer_id;
    let owner = peers::peer_of(pid);
    if own == 0 || from_peer || owner == own {
        let outcome = if cancel(shared, pid, key).await {
            "local"
        } else {
            "unknown"
        };
        crate::metrics::cancel_request(outcome);
        return;
    }
    let Some(addr) = shared.peer_addrs.get(&owner) else {
        tracing::warn!("a cancel request names peer {owner}, which [peering.peers] does not list");
        crate::metrics::cancel_request("unroutable");
        return;
    };
    let packet = Startup::Cancel {
        pid,
        key,
        from_peer: true,
    }
    .to_bytes();
    let timeout = shared
        .life
        .settings
        .connect_timeout()
        .unwrap_or(std::time::Duration::from_secs(10));
    match peers::send_packet(addr, &packet, timeout).await {
        Ok(()) => crate::metrics::cancel_request("forwarded"),
        Err(e) => {
            tracing::warn!("forwarding a cancel request to peer {owner} failed: {e}");
            crate::metrics::cancel_request("unroutable");
        }
    }
}

/// Sends the cancel request for the session that holds client key (pid, key) to its backend;
/// false when no session here holds that key.
async fn cancel(shared: &Shared, pid: i32, key: i32) -> bool {
    let target = shared
        .cancels
        .lock()
        .ok()
        .and_then(|m| m.get(&(pid, key)).copied());
    let Some((upid, ukey)) = target else {
        return false;
    };
    let addr = shared.upstream_addr();
    if let Ok(Ok(mut s)) = within(shared.connect_deadline(), TcpStream::connect(addr)).await {
        let p = Startup::Cancel {
            pid: upid,
            key: ukey,
            from_peer: false,
        }
        .to_bytes();
        let _ = s.write_all(&p).await;
        let _ = s.shutdown().await;
    }
    true
}

/// Startup parameters a masked session may set: anything that could change identity,
/// search_path or how SQL is read is refused.
fn check_masked_startup(params: &[(String, String)]) -> Result<(), String> {
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" | "application_name" | "fallback_application_name" => {}
            "client_encoding" => {
                // asyncpg sends 'utf-8', quotes included; PostgreSQL accepts that spelling.
                let v = v.trim().trim_matches('\'').to_ascii_lowercase();
                if !["utf8", "unicode", "utf-8"].contains(&v.as_str()) {
                    return Err(format!(
                        "masked sessions must use client_encoding UTF8, not {v}"
                    ));
                }
            }
            "replication" => {
                return Err("replication connections are not allowed for masked roles".into())
            }
            "options" => {
                for opt in parse_options(v) {
                    let (name, value) = opt?;
                    check_startup_setting(&name, &value)?;
                }
            }
            k if k.starts_with("_pq_.") => {}
            other => check_startup_setting(other, v)?,
        }
    }
    Ok(())
}

fn check_startup_setting(name: &str, value: &str) -> Result<(), String> {
    let n = name.to_ascii_lowercase().replace('-', "_");
    // A search path set at startup (JDBC's currentSchema) is read back with the session's
    // current_schemas(true) before the client gets control, so names resolve as PostgreSQL does.
    if n == "search_path" {
        return Ok(());
    }
    if let Some(allowed) = crate::rewrite::rules::pinned_setting(&n) {
        let v = value.trim().trim_matches('\'').to_ascii_lowercase();
        if allowed.contains(&v.as_str()) {
            return Ok(());
        }
    } else if crate::rewrite::rules::setting_allowed(&n) {
        return Ok(());
    }
    Err(format!(
        "the startup setting {name}={value} is not allowed for masked roles"
    ))
}

/// Splits a libpq `options` string into `-c name=value` / `--name=value` pairs.
fn parse_options(s: &str) -> Vec<Result<(String, String), String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut esc = false;
    for ch in s.chars() {
        if esc {
            cur.push(ch);
            esc = false;
        } else if ch == '\\' {
            esc = true;
        } else if ch.is_whitespace() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(ch);
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let kv = if w == "-c" {
            it.next()
        } else if let Some(r) = w.strip_prefix("--") {
            Some(r.to_string())
        } else if let Some(r) = w.strip_prefix("-c") {
            Some(r.to_string())
        } else {
            out.push(Err(format!(
                "startup option {w:?} is not allowed for masked roles"
            )));
            continue;
        };
        match kv.as_deref().and_then(|kv| kv.split_once('=')) {
            Some((k, v)) => out.push(Ok((k.to_string(), v.to_string()))),
            None => out.push(Err("malformed startup option".into())),
        }
    }
    out
}

/// Relays authentication until PostgreSQL says ReadyForQuery (SASL is completed by
/// `scram::authenticate_sasl`, at pgredact when it can read the role's verifier). Replaces the
/// backend key with a proxy-issued one. Returns None when the session ended (auth failure,
/// disconnect).
async fn authenticate(
    shared: &Arc<Shared>,
    database: &str,
    user: &str,
    client: &mut FrameReader<ClientStream>,
    server: &mut FrameReader<ServerStream>,
) -> Result<Option<Keys>, FrameError> {
    let mut client_key = (0, 0);
    loop {
        let Some(f) = server.next().await? else {
            return Ok(None);
        };
        match f[0] {
            b'R' => {
                let code = Authentication::decode(&f)?.code;
                if code == AuthenticationSasl::CODE {
                    if !super::scram::authenticate_sasl(shared, database, user, client, server, &f)
                        .await?
                    {
                        return Ok(None);
                    }
                    continue;
                }
                write_raw(client, &f).await?;
                // 3 cleartext, 5 md5, 11 SASL continue (relayed SASL): the client answers.
                if matches!(code, 3 | 5 | 11) {
                    let Some(resp) = client.next().await? else {
                        return Ok(None);
                    };
                    if resp[0] != b'p' {
                        return Err(FrameError::Protocol("expected a password message".into()));
                    }
                    write_raw(server, &resp).await?;
                } else if code != 0 && code != 12 {
                    // GSS/SSPI and others are not relayed.
                    send_error(
                        client,
                        "28000",
                        "pgredact: this authentication method is not supported through pgredact",
                    )
                    .await;
                    return Ok(None);
                }
            }
            b'K' => {
                let upstream = BackendKeyData::decode(&f)?;
                client_key = new_cancel_key(shared, (upstream.pid, upstream.key));
                let mut out = BytesMut::with_capacity(13);
                BackendKeyData {
                    pid: client_key.0,
                    key: client_key.1,
                }
                .encode(&mut out);
                write_raw(client, &out).await?;
            }
            b'Z' => {
                return Ok(Some(Keys {
                    client_key,
                    ready: f,
                }))
            }
            b'E' => {
                write_raw(client, &f).await?;
                return Ok(None);
            }
            _ => write_raw(client, &f).await?,
        }
    }
}

fn new_cancel_key(shared: &Shared, upstream: (i32, i32)) -> (i32, i32) {
    let Ok(mut m) = shared.cancels.lock() else {
        return upstream;
    };
    loop {
        let k: (i32, i32) = (
            peers::encode_pid(shared.identity.peer_id, rand::random()),
            rand::random(),
        );
        if let std::collections::hash_map::Entry::Vacant(e) = m.entry(k) {
            e.insert(upstream);
            return k;
        }
    }
}

async fn write_raw<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    r: &mut FrameReader<S>,
    b: &[u8],
) -> Result<(), FrameError> {
    r.get_mut().write_all(b).await.map_err(FrameError::Io)
}

async fn send_error<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    r: &mut FrameReader<S>,
    code: &str,
    msg: &str,
) {
    let mut out = BytesMut::new();
    ErrorFields::new("FATAL", code, msg).encode(b'E', &mut out);
    let _ = write_raw(r, &out).await;
}

// ---------- masked relay ----------

/// One request/response unit: everything up to a Query, Sync or FunctionCall, answered by one
/// ReadyForQuery.
#[derive(Default)]
struct Unit {
    rewritten: bool,
    refusals: VecDeque<Refusal>,
    closed: bool,
    /// What the unit's messages do to prepared statements, applied when its ReadyForQuery
    /// arrives: exactly when the unit had no error, conservatively otherwise.
    effects: Vec<StmtEffect>,
    errored: bool,
    /// The unit's statements for the audit log, and the rows returned for each.
    audit: crate::audit::UnitLog,
}

/// A change to the session's prepared statements (PostgreSQL has one namespace for PREPARE
/// and Parse).
enum StmtEffect {
    Create(String, Prep),
    Remove(String),
    RemoveAll,
}

struct Pending {
    units: VecDeque<Unit>,
    /// The transaction status of the last ReadyForQuery (`I`, `T` or `E`).
    tx_status: u8,
    /// Prepared statements known to exist, by name: every text the statement may have been
    /// prepared from (one, unless a unit failed part-way and it is unknown which one holds).
    statements: HashMap<String, Vec<Prep>>,
    /// A client message is being decided and forwarded.
    busy_client: bool,
    /// pgredact ends the session: no further client message is forwarded.
    closing: bool,
    /// The client's last message or the last ReadyForQuery, whichever came later.
    last_event: Instant,
    /// The session's audit log, when `[audit]` is configured.
    audit: Option<crate::audit::SessionAudit>,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            units: VecDeque::new(),
            tx_status: b'I',
            statements: HashMap::new(),
            busy_client: false,
            closing: false,
            last_event: Instant::now(),
            audit: None,
        }
    }
}

impl Pending {
    /// Something was sent that PostgreSQL has not answered with ReadyForQuery yet.
    fn in_flight(&self) -> bool {
        !self.units.is_empty() || self.busy_client
    }

    /// Outside a transaction block, with nothing in flight.
    fn idle(&self) -> bool {
        !self.in_flight() && self.tx_status == b'I'
    }

    /// Applies a finished unit's effects. Without an error every message ran, so creations
    /// replace and removals remove; after an error it is unknown which ran, so creations are
    /// added as further candidates and removals are ignored (PostgreSQL may still have them).
    fn finish(&mut self, unit: Unit) {
        for e in unit.effects {
            match (e, unit.errored) {
                (StmtEffect::Create(n, p), false) => {
                    self.statements.insert(n, vec![p]);
                }
                (StmtEffect::Create(n, p), true) => self.statements.entry(n).or_default().push(p),
                (StmtEffect::Remove(n), false) => {
                    self.statements.remove(&n);
                }
                (StmtEffect::RemoveAll, false) => self.statements.clear(),
                (_, true) => {}
            }
        }
    }

    /// Every text statement `name` may currently hold, including creations still in flight.
    fn candidates(&self, name: &str) -> Vec<Prep> {
        let mut v: Vec<Prep> = self.statements.get(name).cloned().unwrap_or_default();
        for u in &self.units {
            for e in &u.effects {
                if let StmtEffect::Create(n, p) = e {
                    if n == name {
                        v.push(p.clone());
                    }
                }
            }
        }
        v
    }

    fn open(&mut self) -> &mut Unit {
        if self.units.back().is_none_or(|u| u.closed) {
            self.units.push_back(Unit::default());
        }
        // Just ensured a back element exists.
        let n = self.units.len() - 1;
        &mut self.units[n]
    }
}

async fn masked_session<C: SplitStream, S: SplitStream>(
    mut s: Established,
    cstream: C,
    cbuf: BytesMut,
    sstream: S,
    sbuf: BytesMut,
    ready: Bytes,
    audit: Option<crate::audit::SessionAudit>,
) {
    let (crd, cwr) = cstream.split_owned();
    let (srd, swr) = sstream.split_owned();
    let srd = FrameReader::with_buffer(srd, sbuf);
    let mut cwr = BufWriter::with_capacity(64 * 1024, cwr);
    if cwr.write_all(&ready).await.is_err() || cwr.flush().await.is_err() {
        return;
    }
    let shared = s.shared.clone();
    let life = &shared.life;
    let pending = Arc::new(Mutex::new(Pending {
        audit,
        ..Pending::default()
    }));
    let reading_safe = Arc::new(AtomicBool::new(true));
    let protocol_error = Arc::new(Mutex::new(None::<String>));
    let wake = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let c2s = client_to_server(
        shared.clone(),
        s.db.clone(),
        FrameReader::with_buffer(crd, cbuf),
        swr,
        pending.clone(),
        reading_safe.clone(),
        SessionPath::new(std::mem::take(&mut s.search_path), s.user.clone()),
        protocol_error.clone(),
        Wakes {
            idle: wake.clone(),
            stop: stop_rx,
        },
    );
    let mut up = tokio::spawn(c2s.in_current_span());
    let stop = tokio::select! {
        down = server_to_client(srd, &mut cwr, pending.clone(), reading_safe, life, &wake) => match down {
            Ok(stop) => stop.map(|s| (s, true)),
            Err(e) => {
                tracing::debug!("server side ended: {e}");
                None
            }
        },
        // A client that does not read holds the relay in a write: it is dropped.
        _ = life.halted_long_ago() => Some((Stop::Shutdown, false)),
    };
    let Some((stop, whole)) = stop else {
        up.abort();
        // A client protocol error ends only this session, with an ErrorResponse saying why.
        let err = lock(&protocol_error).take();
        if let Some(msg) = err {
            let mut out = BytesMut::new();
            ErrorFields::new("FATAL", "08P01", &format!("pgredact: {msg}")).encode(b'E', &mut out);
            let _ = cwr.write_all(&out).await;
            let _ = cwr.flush().await;
        }
        return;
    };
    // pgredact ends the session. A statement still running at the deadline is cancelled, so
    // its backend does not run on after the proxy is gone.
    let in_flight = lock(&pending).in_flight();
    if stop == Stop::Shutdown && in_flight {
        s.cancel_statement().await;
    }
    let (code, msg) = stop.error();
    tracing::info!(user = %s.user, masked = true, "closing the session: {msg}");
    if whole {
        let mut out = BytesMut::new();
        ErrorFields::new("FATAL", code, &msg).encode(b'E', &mut out);
        let _ = cwr.write_all(&out).await;
        let _ = cwr.flush().await;
    }
    let _ = cwr.shutdown().await;
    // The client-side task says goodbye to the server (Terminate) and ends.
    let _ = stop_tx.send(());
    if tokio::time::timeout(HALT_GRACE, &mut up).await.is_err() {
        up.abort();
    }
}

/// Before a masked session's client gets control, on the session's own connection: reads the
/// search path that names resolve with. (Nothing else is set for the session: the masking views
/// themselves keep the planner off the raw columns, see `mask_expr` in wall_setup.sql, so
/// `RESET ALL` has nothing of pgredact's to undo.)
async fn session_setup<S: AsyncRead + AsyncWrite + Unpin>(
    srv: &mut FrameReader<S>,
) -> Result<Vec<String>, String> {
    let mut q = BytesMut::new();
    Query::put(
        &mut q,
        "SELECT pg_catalog.unnest(pg_catalog.current_schemas(true))::pg_catalog.text",
    );
    srv.get_mut()
        .write_all(&q)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut err = None;
    loop {
        let f = srv
            .next()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("connection closed")?;
        match f[0] {
            b'D' => {
                // One column: a schema name.
                if let Ok(row) = DataRow::decode(&f) {
                    if let Some(Some(v)) = row.columns.first() {
                        out.push(String::from_utf8_lossy(v).into_owned());
                    }
                }
            }
            b'E' => {
                err = ErrorFields::decode(&f)
                    .ok()
                    .and_then(|e| e.get(b'M').map(String::from))
            }
            b'Z' => break,
            _ => {}
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// How the client-side task of a masked session learns that the session changed state.
struct Wakes {
    /// Told when the session may have become idle (for the server-side half's wait).
    idle: Arc<tokio::sync::Notify>,
    /// Resolves when pgredact ends the session.
    stop: tokio::sync::oneshot::Receiver<()>,
}

#[allow(clippy::too_many_arguments)]
async fn client_to_server<CR: tokio::io::AsyncRead + Unpin, SW: tokio::io::AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    db: Arc<DbState>,
    mut crd: FrameReader<CR>,
    swr: SW,
    pending: Arc<Mutex<Pending>>,
    reading_safe: Arc<AtomicBool>,
    path: SessionPath,
    protocol_error: Arc<Mutex<Option<String>>>,
    mut wakes: Wakes,
) {
    let mut swr = BufWriter::with_capacity(64 * 1024, swr);
    let mut out = BytesMut::with_capacity(8 * 1024);
    let mut cx = DecideCtx {
        shared: &shared,
        db: &db,
        path,
        reading_safe: &reading_safe,
    };
    let auditing = lock(&pending).audit.is_some();
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut wakes.stop => None,
            r = crd.next() => Some(r),
        };
        let f = match next {
            Some(Ok(Some(f))) => f,
            Some(Ok(None)) => break,
            Some(Err(e)) => {
                // Protocol error: record it for the client, then tell the server we are leaving.
                tracing::info!("closing masked session: {e}");
                *lock(&protocol_error) = Some(e.to_string());
                let _ = swr.write_all(&TERMINATE).await;
                let _ = swr.flush().await;
                break;
            }
            // pgredact ends the session (the client has its FATAL error).
            None => {
                let _ = swr.write_all(&TERMINATE).await;
                let _ = swr.flush().await;
                break;
            }
        };
        let closing = {
            let mut p = lock(&pending);
            p.busy_client = !p.closing;
            p.last_event = Instant::now();
            p.closing
        };
        if closing {
            // Ended while idle: this message arrived too late to be forwarded.
            let _ = swr.write_all(&TERMINATE).await;
            let _ = swr.flush().await;
            break;
        }
        out.clear();
        let tag = f[0];
        let res: Result<(), FrameError> = match tag {
            b'Q' => match Query::decode(&f).map(|Query { sql }| {
                let change = path_change(&sql, &cx.path);
                (sql, change)
            }) {
                Ok((sql, Some(change))) => {
                    // The session's search path changes: analysed here, not refused.
                    let mut p = lock(&pending);
                    // Outside a transaction block and with nothing in flight, the change takes
                    // effect exactly when this statement runs (it cannot fail there).
                    let idle = p.units.is_empty() && p.tx_status == b'I';
                    let unit = p.open();
                    let audit_res = auditing.then(|| cx.audit_resolve());
                    match change {
                        Ok(c) if idle => {
                            if auditing {
                                unit.audit.query(&sql, &Arc::new(Decision::Pass), audit_res);
                            }
                            match c {
                                PathChange::Set(listed) => {
                                    cx.path.set(crate::rewrite::search_path::effective_path(
                                        &listed,
                                        &cx.path.user,
                                    ))
                                }
                                PathChange::Reset => cx.path.reset(),
                            }
                            // DISCARD ALL also drops the prepared statements.
                            for e in crate::rewrite::prepared_effects(&sql) {
                                if e == crate::rewrite::PreparedEffect::Deallocate(None) {
                                    unit.effects.push(StmtEffect::RemoveAll);
                                }
                            }
                            out.extend_from_slice(&f);
                        }
                        Ok(_) => {
                            let r = Refusal {
                                kind: RefusalKind::Setting,
                                message: "pgredact: masked sessions change search_path only outside a transaction block, with no statement in flight".into(),
                                hint: Some("set it before BEGIN, and wait for the previous statement's answer".into()),
                            };
                            if auditing {
                                unit.audit.refused("query", Some(sql.as_str().into()), &r);
                            }
                            crate::metrics::refused(&r);
                            unit.refusals.push_back(r);
                            Query::put(&mut out, SENTINEL);
                        }
                        Err(r) => {
                            if auditing {
                                unit.audit.refused("query", Some(sql.as_str().into()), &r);
                            }
                            crate::metrics::refused(&r);
                            unit.refusals.push_back(r);
                            Query::put(&mut out, SENTINEL);
                        }
                    }
                    unit.closed = true;
                    Ok(())
                }
                Ok((sql, None)) => {
                    let t0 = crd.filled_at();
                    let d = cx.decide(&sql, t0).await;
                    let (d, effects) = statement_effects(&pending, &sql, d, &cx, t0, true).await;
                    let audit_res = auditing.then(|| cx.audit_resolve());
                    crate::metrics::statement(&d);
                    let mut p = lock(&pending);
                    let unit = p.open();
                    unit.effects.extend(effects);
                    if auditing {
                        unit.audit.query(&sql, &d, audit_res);
                    }
                    match &*d {
                        Decision::Pass => out.extend_from_slice(&f),
                        Decision::Rewrite(s) => {
                            unit.rewritten = true;
                            Query::put(&mut out, s);
                        }
                        Decision::Refuse(r) => {
                            unit.refusals.push_back(r.clone());
                            Query::put(&mut out, SENTINEL);
                        }
                    }
                    unit.closed = true;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            b'P' => match Parse::decode(&f) {
                Ok(mut pm) => {
                    let t0 = crd.filled_at();
                    let d = cx.decide(&pm.query, t0).await;
                    // The statement's own SQL-level effects happen only when it is executed:
                    // creations are recorded now (more candidates is safe), removals never.
                    let (d, mut effects) =
                        statement_effects(&pending, &pm.query, d, &cx, t0, false).await;
                    crate::metrics::statement(&d);
                    // Remember what this statement was decided as, to check it again whenever
                    // it is bound.
                    if !matches!(*d, Decision::Refuse(_)) {
                        effects.push(StmtEffect::Create(
                            pm.name.clone(),
                            Prep {
                                sql: pm.query.as_str().into(),
                                decision: d.clone(),
                            },
                        ));
                    }
                    let audit_res = auditing.then(|| cx.audit_resolve());
                    let mut p = lock(&pending);
                    let unit = p.open();
                    unit.effects.extend(effects);
                    if auditing {
                        unit.audit.parse(&pm.name, &pm.query, &d, audit_res);
                    }
                    match &*d {
                        Decision::Pass => out.extend_from_slice(&f),
                        Decision::Rewrite(s) => {
                            unit.rewritten = true;
                            pm.query = s.clone();
                            pm.encode(&mut out);
                        }
                        Decision::Refuse(r) => {
                            unit.refusals.push_back(r.clone());
                            pm.query = SENTINEL.to_string();
                            pm.encode(&mut out);
                        }
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
            b'F' => {
                // FunctionCall: refused; a failing Query stands in so the reply order holds.
                let mut p = lock(&pending);
                let unit = p.open();
                let r = Refusal {
                    kind: RefusalKind::Protocol,
                    message: "pgredact: the FunctionCall protocol message is not allowed for masked roles".into(),
                    hint: None,
                };
                if auditing {
                    unit.audit.refused("function_call", None, &r);
                }
                crate::metrics::refused(&r);
                unit.refusals.push_back(r);
                unit.closed = true;
                Query::put(&mut out, SENTINEL);
                Ok(())
            }
            b'S' => {
                let mut p = lock(&pending);
                p.open().closed = true;
                out.extend_from_slice(&f);
                Ok(())
            }
            b'B' => {
                // PostgreSQL re-plans a prepared statement after a schema change, from the text
                // decided back then: bind it only while that text is still what the statement
                // would be decided as now.
                let t0 = crd.filled_at();
                let mut refusal = None;
                match Bind::decode(&f) {
                    Ok(Bind {
                        statement: name, ..
                    }) => {
                        if let Err(r) = check_statement(&pending, &name, &cx, t0, true).await {
                            crate::metrics::refused(&r);
                            refusal = Some(r);
                        }
                        let audit_res = auditing.then(|| cx.audit_resolve());
                        let mut p = lock(&pending);
                        let prepared = if auditing {
                            p.candidates(&name)
                                .into_iter()
                                .next()
                                .map(|c| (c.sql, c.decision))
                        } else {
                            None
                        };
                        let unit = p.open();
                        if auditing {
                            match &refusal {
                                Some(r) => unit.audit.refused("bind", prepared.map(|p| p.0), r),
                                None => unit.audit.bind(&name, prepared, audit_res),
                            }
                        }
                        match refusal {
                            Some(r) => {
                                unit.refusals.push_back(r);
                                Parse {
                                    name: String::new(),
                                    query: SENTINEL.to_string(),
                                    param_types: Vec::new(),
                                }
                                .encode(&mut out);
                            }
                            None => out.extend_from_slice(&f),
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            b'C' => {
                let mut p = lock(&pending);
                let unit = p.open();
                if let Ok(Close::Statement { name, .. }) = Close::decode(&f) {
                    unit.effects.push(StmtEffect::Remove(name));
                }
                out.extend_from_slice(&f);
                Ok(())
            }
            b'E' | b'D' | b'H' => {
                lock(&pending).open();
                out.extend_from_slice(&f);
                Ok(())
            }
            b'd' | b'c' | b'f' | b'X' | b'p' => {
                out.extend_from_slice(&f);
                Ok(())
            }
            other => Err(FrameError::Protocol(format!(
                "unexpected message type {:?} from a masked session",
                other as char
            ))),
        };
        if let Err(e) = res {
            tracing::info!("closing masked session: {e}");
            *lock(&protocol_error) = Some(e.to_string());
            let _ = swr.write_all(&TERMINATE).await;
            let _ = swr.flush().await;
            break;
        }
        if swr.write_all(&out).await.is_err() {
            break;
        }
        if tag == b'X' {
            let _ = swr.flush().await;
            break;
        }
        // Flush when the client has nothing more buffered (keeps pipelined batches together).
        if !crd.has_frame() && swr.flush().await.is_err() {
            break;
        }
        let idle = {
            let mut p = lock(&pending);
            p.busy_client = false;
            p.idle()
        };
        if idle {
            wakes.idle.notify_one();
        }
    }
}

/// A prepared statement as decided when it was prepared.
#[derive(Clone)]
struct Prep {
    /// The client's text (for SQL-level ones, the whole Query that prepared it).
    sql: Arc<str>,
    decision: Arc<Decision>,
}

fn stale_refusal(name: &str, now: &Decision) -> Refusal {
    let why = match now {
        Decision::Refuse(r) => format!(" (now: {})", r.message),
        _ => String::new(),
    };
    Refusal {
        kind: RefusalKind::StalePrepared,
        message: format!(
            "pgredact: prepared statement {name:?} was decided before a change to the schema, the policies or this session, and would now be masked differently{why}"
        ),
        hint: Some("prepare it again (DEALLOCATE it, or Close it, first)".into()),
    }
}

/// Checks that prepared statement `name` would be decided now as it was when prepared (every
/// text it may hold; with `nested`, also the statements its text EXECUTEs). Unknown names pass:
/// PostgreSQL has no such statement.
async fn check_statement(
    pending: &Mutex<Pending>,
    name: &str,
    cx: &DecideCtx<'_>,
    t0: std::time::Instant,
    nested: bool,
) -> Result<(), Refusal> {
    let candidates = lock(pending).candidates(name);
    for c in candidates {
        let now = cx.decide(&c.sql, t0).await;
        if *now != *c.decision {
            return Err(stale_refusal(name, now.as_ref()));
        }
        if nested {
            for e in crate::rewrite::prepared_effects(&c.sql) {
                if let crate::rewrite::PreparedEffect::Execute(n) = e {
                    Box::pin(check_statement(pending, &n, cx, t0, false)).await?;
                }
            }
        }
    }
    Ok(())
}

/// What a statement's text does to prepared statements: an EXECUTE of one whose decision no
/// longer holds refuses the statement; PREPARE / DEALLOCATE become effects for its unit
/// (removals only when `with_removals`: the text runs as sent). Returns the decision to use.
async fn statement_effects(
    pending: &Mutex<Pending>,
    sql: &str,
    d: Arc<Decision>,
    cx: &DecideCtx<'_>,
    t0: std::time::Instant,
    with_removals: bool,
) -> (Arc<Decision>, Vec<StmtEffect>) {
    if matches!(*d, Decision::Refuse(_)) {
        return (d, Vec::new());
    }
    let parsed = crate::rewrite::prepared_effects(sql);
    if parsed.is_empty() {
        return (d, Vec::new());
    }
    use crate::rewrite::PreparedEffect as E;
    let mut fresh: HashSet<String> = HashSet::new();
    let mut effects = Vec::new();
    for e in parsed {
        match e {
            E::Prepare(n) => {
                fresh.insert(n.clone());
                effects.push(StmtEffect::Create(
                    n,
                    Prep {
                        sql: sql.into(),
                        decision: d.clone(),
                    },
                ));
            }
            E::Execute(n) => {
                // A statement PREPAREd earlier in this same text was decided just now.
                if !fresh.contains(&n) {
                    if let Err(r) = check_statement(pending, &n, cx, t0, false).await {
                        return (Arc::new(Decision::Refuse(r)), Vec::new());
                    }
                }
            }
            E::Deallocate(Some(n)) if with_removals => effects.push(StmtEffect::Remove(n)),
            E::Deallocate(None) if with_removals => effects.push(StmtEffect::RemoveAll),
            E::Deallocate(_) => {}
        }
    }
    (d, effects)
}

/// How `sql` changes the session's search path (see [`search_path_change`]), except a return to
/// the path the session started with while it is still on it: nothing changes, and the rewriter
/// decides the statement (`RESET ALL` and `DISCARD ALL` pass then, also within other statements
/// or a transaction block).
///
/// [`search_path_change`]: crate::rewrite::search_path::search_path_change
fn path_change(sql: &str, path: &SessionPath) -> Option<Result<PathChange, Refusal>> {
    let set = sql
        .trim_start()
        .get(..3)
        .is_some_and(|w| w.eq_ignore_ascii_case("set"));
    match crate::rewrite::search_path::search_path_change(sql) {
        // RESET ALL, RESET search_path, DISCARD ALL (a SET of search_path stays analysed here).
        Some(Ok(PathChange::Reset)) if path.at_start() && !set => None,
        other => other,
    }
}

/// The session's search path as `current_schemas(true)` lists it, and its id in the rewrite
/// cache's key.
struct SessionPath {
    schemas: Vec<String>,
    /// The path the session started with: what `RESET ALL`, `DISCARD ALL`, `RESET search_path`
    /// and `SET search_path TO DEFAULT` return to.
    initial: Vec<String>,
    /// `schemas` is `initial` (kept with the path: every statement's decision asks).
    at_start: bool,
    id: u64,
    /// The session user (`$user` in a search path).
    user: String,
}

impl SessionPath {
    fn new(schemas: Vec<String>, user: String) -> SessionPath {
        let mut p = SessionPath {
            schemas: Vec::new(),
            initial: schemas.clone(),
            at_start: true,
            id: 0,
            user,
        };
        p.set(schemas);
        p
    }

    fn set(&mut self, schemas: Vec<String>) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        schemas.hash(&mut h);
        // Decisions differ between a path that is the session's first and the same path set
        // later (RESET ALL passes only for the first).
        self.at_start = schemas == self.initial;
        self.at_start.hash(&mut h);
        self.id = h.finish();
        self.schemas = schemas;
    }

    fn at_start(&self) -> bool {
        self.at_start
    }

    fn reset(&mut self) {
        self.set(self.initial.clone());
    }
}

/// What deciding a statement of this session needs.
struct DecideCtx<'a> {
    shared: &'a Arc<Shared>,
    db: &'a Arc<DbState>,
    path: SessionPath,
    reading_safe: &'a AtomicBool,
}

impl DecideCtx<'_> {
    /// What the audit log resolves this session's statements against.
    fn audit_resolve(&self) -> crate::audit::Resolve {
        crate::audit::Resolve {
            snapshot: self.db.snapshot(),
            search_path: self.path.schemas.as_slice().into(),
        }
    }

    async fn decide(&self, sql: &str, t0: std::time::Instant) -> Arc<Decision> {
        decide(self.shared, self.db, sql, t0, &self.path, self.reading_safe).await
    }
}

async fn decide(
    shared: &Arc<Shared>,
    db: &Arc<DbState>,
    sql: &str,
    t0: std::time::Instant,
    path: &SessionPath,
    reading_safe: &AtomicBool,
) -> Arc<Decision> {
    if !reading_safe.load(Ordering::Relaxed) {
        return Arc::new(Decision::Refuse(Refusal {
            kind: RefusalKind::Setting,
            message: "pgredact: this session's client_encoding or standard_conforming_strings changed; masked sessions require UTF8 and on".into(),
            hint: None,
        }));
    }
    // The statement arrived by `t0`: decide it on a snapshot that includes every DDL committed
    // before then, or refuse.
    let snap = match db.current_snapshot(shared, t0).await {
        Ok(s) => s,
        Err(e) => {
            return Arc::new(Decision::Refuse(Refusal {
                kind: RefusalKind::CatalogUnavailable,
                message: format!("pgredact: {e}"),
                hint: None,
            }))
        }
    };
    if let Some(why) = &snap.wall_refusal {
        return Arc::new(Decision::Refuse(Refusal {
            kind: RefusalKind::WallBroken,
            message: format!("pgredact: {why}"),
            hint: None,
        }));
    }
    let (d, unknown) = snap.decide(sql, path.id, &path.schemas, path.at_start());
    if !unknown {
        return d;
    }
    // A name the snapshot does not know: decide again on a catalog read after this statement
    // arrived (a relation created a moment ago may be a view over PII). Fail closed otherwise.
    match db.refresh_since(shared, t0).await {
        Ok(()) => {
            db.snapshot()
                .decide(sql, path.id, &path.schemas, path.at_start())
                .0
        }
        Err(e) => Arc::new(Decision::Refuse(Refusal {
            kind: RefusalKind::CatalogUnavailable,
            message: format!("pgredact: the statement names an object pgredact does not know and the catalog could not be re-read: {e}"),
            hint: None,
        })),
    }
}

/// What the server-side half of a masked session waits for.
enum Next {
    Frame(Bytes),
    Eof,
    Stop(Stop),
}

/// Waits for the server's next frame, or for a reason to end the session: the deadline; the
/// drain or the idle timeout while the session is idle. The close is decided under the
/// session's lock (`closing`), so no client message slips through after it.
async fn next_or_stop<R: AsyncRead + Unpin>(
    srd: &mut FrameReader<R>,
    pending: &Mutex<Pending>,
    life: &Lifecycle,
    wake: &tokio::sync::Notify,
) -> Result<Next, FrameError> {
    loop {
        let idle_since = {
            let p = lock(pending);
            p.idle().then_some(p.last_event)
        };
        let limit = life.settings.idle_timeout(true);
        let timer = idle_since.zip(limit).map(|(t, d)| t + d);
        let stop = tokio::select! {
            biased;
            _ = life.halted() => {
                lock(pending).closing = true;
                return Ok(Next::Stop(Stop::Shutdown));
            }
            _ = life.draining(), if idle_since.is_some() => Stop::Shutdown,
            _ = until(timer), if timer.is_some() => Stop::Idle {
                masked: true,
                secs: limit.map_or(0, |d| d.as_secs()),
            },
            r = srd.next() => return Ok(r?.map_or(Next::Eof, Next::Frame)),
            _ = wake.notified() => continue,
        };
        let mut p = lock(pending);
        let due = match (stop, limit) {
            (Stop::Idle { .. }, Some(d)) => Instant::now() >= p.last_event + d,
            (Stop::Idle { .. }, None) => false,
            (Stop::Shutdown, _) => true,
        };
        if p.idle() && due {
            p.closing = true;
            return Ok(Next::Stop(stop));
        }
    }
}

/// Relays the server's frames to the client until the server closes (None) or pgredact ends
/// the session (the reason).
async fn server_to_client<SR: tokio::io::AsyncRead + Unpin, CW: tokio::io::AsyncWrite + Unpin>(
    mut srd: FrameReader<SR>,
    cwr: &mut BufWriter<CW>,
    pending: Arc<Mutex<Pending>>,
    reading_safe: Arc<AtomicBool>,
    life: &Lifecycle,
    wake: &tokio::sync::Notify,
) -> Result<Option<Stop>, FrameError> {
    let mut out = BytesMut::with_capacity(8 * 1024);
    // Rows returned since the audit log last counted them (DataRow, CopyData).
    let mut rows: u64 = 0;
    let audit = lock(&pending).audit.clone();
    loop {
        let f = match srd.try_frame()? {
            Some(f) => f,
            None => {
                cwr.flush().await?;
                match next_or_stop(&mut srd, &pending, life, wake).await? {
                    Next::Frame(f) => f,
                    Next::Eof => return Ok(None),
                    Next::Stop(s) => return Ok(Some(s)),
                }
            }
        };
        match f[0] {
            b'E' | b'N' => {
                let mut e = ErrorFields::decode(&f)?;
                let rewritten;
                let mut refusal = None;
                {
                    let mut p = lock(&pending);
                    let mut front = p.units.front_mut();
                    if f[0] == b'E' {
                        if let Some(u) = front.as_mut() {
                            u.errored = true;
                        }
                    }
                    rewritten = front.as_ref().is_some_and(|u| u.rewritten);
                    if f[0] == b'E' && e.get(b'M').is_some_and(|m| m.contains(SENTINEL)) {
                        refusal = front.and_then(|u| u.refusals.pop_front());
                    }
                }
                if let Some(r) = refusal {
                    e = ErrorFields::new("ERROR", REFUSAL_SQLSTATE, &r.message)
                        .with(b'H', r.hint.as_deref());
                } else {
                    scrub(&mut e, rewritten);
                }
                out.clear();
                e.encode(f[0], &mut out);
                cwr.write_all(&out).await?;
            }
            b'D' | b'd' => {
                rows += 1;
                cwr.write_all(&f).await?;
            }
            b'2' if audit.is_some() => {
                // BindComplete: the rows that follow are the next bound statement's.
                if let Some(u) = lock(&pending).units.front_mut() {
                    u.audit.rows(std::mem::take(&mut rows));
                    u.audit.bind_complete();
                }
                cwr.write_all(&f).await?;
            }
            b'Z' => {
                let mut log = Vec::new();
                {
                    let mut p = lock(&pending);
                    if let Some(mut u) = p.units.pop_front() {
                        u.audit.rows(std::mem::take(&mut rows));
                        log = u.audit.take();
                        p.finish(u);
                    }
                    if let Ok(z) = ReadyForQuery::decode(&f) {
                        p.tx_status = z.status;
                    }
                    p.last_event = Instant::now();
                }
                // Waits while the audit writer's queue is full (records are never dropped).
                if let (Some(a), false) = (&audit, log.is_empty()) {
                    a.statements(log).await;
                }
                cwr.write_all(&f).await?;
            }
            b'S' => {
                // ParameterStatus: the rewriter's reading of SQL depends on these two.
                // One that does not decode (PostgreSQL sends none) is relayed; if it names
                // one of the two, the session's SQL reading is no longer trusted (fail closed).
                match ParameterStatus::decode(&f) {
                    Ok(ParameterStatus { name, value }) => {
                        let v = value.to_ascii_lowercase();
                        match name.as_str() {
                            "client_encoding" if v != "utf8" => {
                                reading_safe.store(false, Ordering::Relaxed)
                            }
                            "standard_conforming_strings" if v != "on" => {
                                reading_safe.store(false, Ordering::Relaxed)
                            }
                            _ => {}
                        }
                    }
                    Err(_) => {
                        let body = f.get(5..).unwrap_or(&[]);
                        if body.starts_with(b"client_encoding\0")
                            || body.starts_with(b"standard_conforming_strings\0")
                        {
                            reading_safe.store(false, Ordering::Relaxed)
                        }
                    }
                }
                cwr.write_all(&f).await?;
            }
            b'A' => {
                // NotificationResponse: payloads from other sessions are not masked; dropped.
            }
            _ => cwr.write_all(&f).await?,
        }
    }
}

/// Removes from an error or notice what could point into text the client never sent or echo
/// raw values:
/// - positions into a rewritten statement;
/// - the DETAIL of data-exception and integrity errors ("Key (...)=(...)", "Failing row contains");
/// - the message, detail and hint of anything raised inside a function or trigger (it has a
///   CONTEXT, or is a RAISE: class P0), since user code may put any column value there.
fn scrub(e: &mut ErrorFields, rewritten: bool) {
    let code = e.get(b'C').unwrap_or("").to_string();
    let from_user_code = code.starts_with("P0") || e.get(b'W').is_some();
    e.0.retain(|(f, _)| {
        let position = matches!(f, b'P' | b'p' | b'q');
        let value_detail = matches!(f, b'D') && (code.starts_with("22") || code.starts_with("23"));
        let user_text = from_user_code && matches!(f, b'D' | b'H' | b'W');
        !(value_detail || user_text || position && rewritten)
    });
    if from_user_code {
        for (f, v) in e.0.iter_mut() {
            if *f == b'M' {
                *v = "pgredact: a message raised inside a function or trigger was hidden from this masked session (it may contain PII)".into();
            }
        }
    }
}
