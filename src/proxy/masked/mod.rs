//! The relay of a masked session, frame by frame.
//!
//! - The client half (`client`) decides each Query, Parse and Bind (`decide`, the rewriter on
//!   the database's current snapshot) and sends on the statement, its rewrite, or a sentinel
//!   that makes PostgreSQL fail it in order, so transaction state and pipelining stay exact.
//! - The server half (`server`) swaps the sentinel's error for the refusal, scrubs what could
//!   echo raw values, and ends the session for the drain, the idle timeout and the deadline.
//! - Both read and change one [`SessionState`] (`state`): the units in flight and their
//!   refusals, the prepared statements, the transaction status.
//!
//! The halves run concurrently: a client that pipelines without reading must not stop the
//! server's answers (PostgreSQL would block writing them, and the relay writing to it).

mod client;
mod decide;
mod server;
mod state;
#[cfg(test)]
mod tests;

use crate::proxy::lifecycle::{Lifecycle, Stop, HALT_GRACE};
use crate::proxy::session::Established;
use crate::sync::lock;
use crate::tls::SplitStream;
use crate::wire::backend::ErrorFields;
use crate::wire::FrameReader;
use bytes::{Bytes, BytesMut};
use client::{ClientHalf, Wakes};
use decide::{DbDecider, Decide, SessionPath};
use server::ServerHalf;
use state::SessionState;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tracing::Instrument;

/// The statement text sent in place of a refused one. It fails in PostgreSQL's parser with a
/// syntax error naming this word, which the server half recognizes and replaces.
pub(crate) const SENTINEL: &str = "pgredact_refused_statement_5f2c9a";

/// An established masked session, over a plain or TLS client stream: `ready` (the
/// ReadyForQuery that ends startup) goes to the client first, then the relay runs.
pub(crate) async fn relay<C: SplitStream, S: SplitStream>(
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
    let mut cwr = BufWriter::with_capacity(64 * 1024, cwr);
    if cwr.write_all(&ready).await.is_err() || cwr.flush().await.is_err() {
        return;
    }
    let decider = DbDecider {
        shared: s.shared.clone(),
        db: s.db.clone(),
    };
    let path = SessionPath::new(std::mem::take(&mut s.search_path), s.user.clone());
    MaskedSession::new(decider, path, audit)
        .run(
            FrameReader::with_buffer(crd, cbuf),
            swr,
            FrameReader::with_buffer(srd, sbuf),
            &mut cwr,
            &s.shared.life,
            &s.user,
            s.cancel_statement(),
        )
        .await
}

/// A masked session: its two halves and the state they share.
pub(crate) struct MaskedSession<D> {
    state: Arc<Mutex<SessionState>>,
    client: ClientHalf<D>,
    server: ServerHalf,
}

impl<D: Decide + 'static> MaskedSession<D> {
    pub(crate) fn new(
        decider: D,
        path: SessionPath,
        audit: Option<crate::audit::SessionAudit>,
    ) -> MaskedSession<D> {
        let state = Arc::new(Mutex::new(SessionState::default()));
        MaskedSession {
            client: ClientHalf {
                state: state.clone(),
                decider,
                path,
                auditing: audit.is_some(),
            },
            server: ServerHalf::new(state.clone(), audit),
            state,
        }
    }

    /// Relays until the server closes, the client breaks the protocol (told with a FATAL
    /// 08P01), or pgredact ends the session (the drain, the idle timeout, the deadline: told
    /// with the reason; `cancel` runs first when a statement is still in flight at shutdown).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run<CR, SW, SR, CW>(
        self,
        crd: FrameReader<CR>,
        swr: SW,
        srd: FrameReader<SR>,
        cwr: &mut BufWriter<CW>,
        life: &Lifecycle,
        user: &str,
        cancel: impl Future<Output = ()>,
    ) where
        CR: AsyncRead + Unpin + Send + 'static,
        SW: AsyncWrite + Unpin + Send + 'static,
        SR: AsyncRead + Unpin,
        CW: AsyncWrite + Unpin,
    {
        let MaskedSession {
            state,
            client,
            mut server,
        } = self;
        let wake = Arc::new(tokio::sync::Notify::new());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let wakes = Wakes {
            idle: wake.clone(),
            stop: stop_rx,
        };
        let mut up = tokio::spawn(client.run(crd, swr, wakes).in_current_span());
        let stop = tokio::select! {
            down = server.run(srd, cwr, life, &wake) => match down {
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
            let err = lock(&state).protocol_error.take();
            if let Some(msg) = err {
                let msg = format!("pgredact: {msg}");
                write_fatal(cwr, "08P01", &msg).await;
            }
            return;
        };
        // pgredact ends the session. A statement still running at the deadline is cancelled,
        // so its backend does not run on after the proxy is gone.
        let in_flight = lock(&state).in_flight();
        if stop == Stop::Shutdown && in_flight {
            cancel.await;
        }
        let (code, msg) = stop.error();
        tracing::info!(user = %user, masked = true, "closing the session: {msg}");
        if whole {
            write_fatal(cwr, code, &msg).await;
        }
        let _ = cwr.shutdown().await;
        // The client half says goodbye to the server (Terminate) and ends.
        let _ = stop_tx.send(());
        if tokio::time::timeout(HALT_GRACE, &mut up).await.is_err() {
            up.abort();
        }
    }
}

async fn write_fatal<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, code: &str, msg: &str) {
    let mut out = BytesMut::new();
    ErrorFields::new("FATAL", code, msg).encode(b'E', &mut out);
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
}
