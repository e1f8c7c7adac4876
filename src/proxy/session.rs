//! One client connection from accept to close: the handshake, then PostgreSQL's
//! authentication (relayed), the admission checks, and the relay (raw for unmasked roles,
//! frame by frame for masked ones). Each step lives in its own module; this one orders them.

use super::admit::admit;
use super::auth::{authenticate, write_raw, Keys};
use super::cancel::{cancel, CancelGuard};
use super::database::DbState;
use super::error::ClientError;
use super::handshake::{bounded, handshake, Handshake};
use super::lifecycle::within;
use super::masked;
use super::shared::Shared;
use super::unmasked::unmasked_relay;
use crate::tls::{ClientStream, ServerStream, SplitStream};
use crate::wire::backend::ReadyForQuery;
use crate::wire::frontend::Terminate;
use crate::wire::FrameReader;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

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

pub(crate) async fn handle_in_span(shared: Arc<Shared>, tcp: TcpStream, admitted: bool) {
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().ok();
    let login = shared
        .life
        .settings
        .login_timeout()
        .map(|d| (Instant::now() + d, d.as_secs()));
    let Handshake::Startup {
        mut client,
        packet,
        params,
    } = handshake(&shared, tcp, login).await
    else {
        return;
    };
    let Some(who) = identify(&shared, &mut client, admitted, params).await else {
        return;
    };
    let (user, database, params) = (who.user, who.database, who.params);
    let span = tracing::Span::current();
    span.record("user", user.as_str());
    span.record("database", database.as_str());
    let Some((mut creader, mut sreader, keys)) =
        connect_and_authenticate(&shared, login, client, &packet, &user, &database).await
    else {
        return;
    };
    let guard = CancelGuard {
        shared: shared.clone(),
        key: keys.client_key,
    };
    let (db, unmasked, search_path) = match bounded(
        &shared,
        login,
        admit(&shared, &database, &user, &params, &mut sreader),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(f)) => {
            f.send(creader.get_mut()).await;
            let _ = write_raw(&mut sreader, &Terminate::BYTES).await;
            return;
        }
        Err(i) => {
            i.tell(creader.get_mut()).await;
            let _ = write_raw(&mut sreader, &Terminate::BYTES).await;
            return;
        }
    };
    tracing::Span::current().record("masked", !unmasked);
    let _counted = crate::metrics::session_started(!unmasked);
    tracing::info!(user = %user, database = %database, masked = !unmasked, tls = creader.get_mut().is_tls(), "session started");
    let s = Established {
        shared: shared.clone(),
        db,
        user,
        client_key: keys.client_key,
        search_path,
        peer,
    };
    relay_streams(s, unmasked, creader, sreader, keys.ready).await;
    drop(guard);
}

/// Who a StartupMessage says is connecting.
struct Who {
    user: String,
    /// The database named, or the user's name when none is.
    database: String,
    params: Vec<(String, String)>,
}

/// The connection-limit check, then the startup parameters: who is connecting (None: the
/// client was refused, and told why).
async fn identify(
    shared: &Shared,
    client: &mut ClientStream,
    admitted: bool,
    params: Result<Vec<(String, String)>, crate::wire::FrameError>,
) -> Option<Who> {
    if !admitted {
        let msg = format!(
            "too many connections to pgredact (max_client_conn = {})",
            shared.life.settings.max_client_conn()
        );
        ClientError::new("53300", msg).send(client).await;
        return None;
    }
    let params = match params {
        Ok(p) => p,
        Err(e) => {
            ClientError::new("08P01", e).send(client).await;
            return None;
        }
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user) = get("user") else {
        ClientError::new("28000", "no user name in the startup packet")
            .send(client)
            .await;
        return None;
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Some(Who {
        user,
        database,
        params,
    })
}

/// Opens the session's connection to PostgreSQL, sends it the client's startup packet, and
/// relays authentication until PostgreSQL's first ReadyForQuery (None: the session ended, the
/// client told why where it can be). Until PostgreSQL has authenticated the client, the
/// client's own connection is the only one opened for it: control connections, catalog loads
/// and the role lookup come after.
async fn connect_and_authenticate(
    shared: &Arc<Shared>,
    login: Option<(Instant, u64)>,
    mut client: ClientStream,
    packet: &[u8],
    user: &str,
    database: &str,
) -> Option<(FrameReader<ClientStream>, FrameReader<ServerStream>, Keys)> {
    let by = shared.connect_deadline();
    let server = match bounded(shared, login, shared.upstream_connect(by)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!("{e}");
            ClientError::new("08006", e).send(&mut client).await;
            return None;
        }
        Err(i) => {
            i.tell(&mut client).await;
            return None;
        }
    };
    let mut sreader = FrameReader::new(server);
    let mut creader = FrameReader::new(client);
    let auth = bounded(shared, login, async {
        // The startup packet goes as the client sent it. The server's first answer is part of
        // connecting (connect_timeout_secs); the client's answers are not.
        write_raw(&mut sreader, packet).await.map_err(|_| None)?;
        if within(by, sreader.wait_frame()).await.is_err() {
            let e = shared.no_answer();
            crate::metrics::upstream_error("session");
            tracing::warn!("{e}");
            return Err(Some(ClientError::new("08006", e)));
        }
        match authenticate(shared, database, user, &mut creader, &mut sreader).await {
            Ok(Some(k)) => Ok(k),
            _ => Err(None),
        }
    })
    .await;
    match auth {
        Ok(Ok(k)) => Some((creader, sreader, k)),
        Ok(Err(None)) => None,
        Ok(Err(Some(f))) => {
            f.send(creader.get_mut()).await;
            None
        }
        Err(i) => {
            i.tell(creader.get_mut()).await;
            None
        }
    }
}

/// The relay over the concrete streams (plain or TLS on each side), with what the startup
/// readers had buffered.
async fn relay_streams(
    s: Established,
    unmasked: bool,
    creader: FrameReader<ClientStream>,
    sreader: FrameReader<ServerStream>,
    ready: Bytes,
) {
    let (cstream, cbuf) = creader.into_parts();
    let (sstream, sbuf) = sreader.into_parts();
    let r = ready;
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
}

/// An established session, as its relay sees it.
pub(crate) struct Established {
    pub(crate) shared: Arc<Shared>,
    pub(crate) db: Arc<DbState>,
    pub(crate) user: String,
    /// The key the client cancels with (pgredact's own, mapped to the backend's).
    pub(crate) client_key: (i32, i32),
    /// A masked session's search path (empty for unmasked ones).
    pub(crate) search_path: Vec<String>,
    /// The client's address (for the audit log).
    pub(crate) peer: Option<std::net::SocketAddr>,
}

impl Established {
    /// Cancels the statement the session's backend runs (as the client's CancelRequest would).
    pub(crate) async fn cancel_statement(&self) {
        cancel(&self.shared, self.client_key.0, self.client_key.1).await;
    }
}

/// The session after authentication, over a plain or TLS client stream.
pub(crate) async fn relay<C: SplitStream, S: SplitStream>(
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
        masked::relay(s, c, cbuf, srv, sbuf, ready, audit.clone()).await;
        if let Some(a) = &audit {
            a.end().await;
        }
    }
}
