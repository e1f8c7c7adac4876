//! The start of a client connection, before a startup packet is accepted: SSL and GSSAPI
//! negotiation, cancel requests, the TLS requirement, and the login deadline and drain that
//! bound every step until the session is established.

use super::cancel::cancel_request;
use super::error::ClientError;
use super::lifecycle::{until, SHUTTING_DOWN};
use super::shared::Shared;
use crate::tls::ClientStream;
use crate::wire::backend::send_fatal;
use crate::wire::frame::read_startup;
use crate::wire::startup::{Startup, StartupError};
use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why the startup phase ended before the session was established.
#[derive(Clone, Copy)]
pub(crate) enum Interrupted {
    /// `login_timeout_secs` (the value) passed.
    LoginTimeout(u64),
    /// The drain started.
    Shutdown,
}

impl Interrupted {
    pub(crate) async fn tell<W: AsyncWrite + Unpin>(self, w: &mut W) {
        match self {
            Interrupted::LoginTimeout(secs) => {
                tracing::info!(
                    "closing a client that did not complete startup and authentication within {secs} s"
                );
                ClientError::new(
                    "08P01",
                    format!("startup and authentication did not complete within {secs} s (login_timeout_secs)"),
                )
                .send(w)
                .await
            }
            Interrupted::Shutdown => send_fatal(w, "57P01", SHUTTING_DOWN, None).await,
        }
    }
}

/// Runs one step of the startup phase within the login deadline (with its value in seconds),
/// and only until the drain starts.
pub(crate) async fn bounded<F: std::future::Future>(
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

/// How the handshake ended.
pub(crate) enum Handshake {
    /// A StartupMessage: the client's stream (TLS when negotiated), the packet as sent, and its
    /// parameters (or why they cannot be read: refused after the connection-limit check, as a
    /// readable packet would be).
    Startup {
        client: ClientStream,
        packet: Bytes,
        params: Result<Vec<(String, String)>, crate::wire::FrameError>,
    },
    /// Nothing more to do: a cancel request was served, or the client left or was refused
    /// (and told why).
    Done,
}

/// Reads a new connection's startup packets until its StartupMessage: answers at most two
/// SSLRequest/GSSENCRequest (TLS when `[tls]` is configured, 'N' otherwise), serves a
/// CancelRequest, and refuses a plain connection when `[tls] require` is set.
pub(crate) async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    login: Option<(Instant, u64)>,
) -> Handshake {
    let mut client = ClientStream::Plain(tcp);
    // Startup phase: at most one SSLRequest/GSSENCRequest before the StartupMessage.
    let mut negotiations = 0;
    loop {
        let pkt = match bounded(shared, login, read_startup(&mut client)).await {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => return Handshake::Done,
            Ok(Err(e)) => {
                ClientError::new("08P01", e).send(&mut client).await;
                return Handshake::Done;
            }
            Err(i) => {
                i.tell(&mut client).await;
                return Handshake::Done;
            }
        };
        // A StartupMessage whose parameters cannot be read is refused after the TLS and
        // connection-limit checks, as a readable one would be.
        let code = match Startup::decode(&pkt) {
            Ok(Startup::Ssl) if negotiations < 2 && shared.tls.is_some() && !client.is_tls() => {
                negotiations += 1;
                match start_tls(shared, client, login).await {
                    Some(tls) => client = tls,
                    None => return Handshake::Done,
                }
                continue;
            }
            Ok(Startup::Ssl | Startup::GssEnc) if negotiations < 2 => {
                negotiations += 1;
                if client.write_all(b"N").await.is_err() {
                    return Handshake::Done;
                }
                continue;
            }
            Ok(Startup::Cancel {
                pid,
                key,
                from_peer,
            }) => {
                cancel_request(shared, pid, key, from_peer).await;
                return Handshake::Done;
            }
            Ok(Startup::Startup { .. }) | Err(StartupError::Params(_))
                if shared.cfg.tls.as_ref().is_some_and(|t| t.require) && !client.is_tls() =>
            {
                let msg = "this server requires TLS; connect with sslmode=require (or verify-full)";
                ClientError::new("28000", msg).send(&mut client).await;
                return Handshake::Done;
            }
            Ok(Startup::Startup { params }) => return startup(client, pkt, Ok(params)),
            Err(StartupError::Params(e)) => return startup(client, pkt, Err(e)),
            Err(StartupError::Malformed(e)) => {
                ClientError::new("08P01", e).send(&mut client).await;
                return Handshake::Done;
            }
            Ok(other) => other.code(),
            Err(StartupError::Unsupported(code)) => code,
        };
        let msg = format!("unsupported frontend protocol or request code {code}");
        ClientError::new("08P01", msg).send(&mut client).await;
        return Handshake::Done;
    }
}

fn startup(
    client: ClientStream,
    packet: Bytes,
    params: Result<Vec<(String, String)>, crate::wire::FrameError>,
) -> Handshake {
    Handshake::Startup {
        client,
        packet,
        params,
    }
}

/// Accepts an SSLRequest ('S') and runs the TLS handshake (None: it failed, or the client
/// left; in the middle of a handshake nothing can be said to the client).
async fn start_tls(
    shared: &Shared,
    client: ClientStream,
    login: Option<(Instant, u64)>,
) -> Option<ClientStream> {
    let (Some(acceptor), ClientStream::Plain(mut tcp)) = (shared.tls.as_ref(), client) else {
        return None;
    };
    tcp.write_all(b"S").await.ok()?;
    match bounded(shared, login, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => Some(ClientStream::Tls(Box::new(t))),
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake failed: {e}");
            None
        }
        Err(_) => None,
    }
}
