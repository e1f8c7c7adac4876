//! The relay of an unmasked session: raw bytes both ways, never parsed, following only message
//! boundaries (to know when the session is idle) and re-checking the role's exemption under
//! proxy enforcement.

use super::lifecycle::{until, Stop, HALT_GRACE};
use super::session::Established;
use crate::sync::lock;
use crate::tls::SplitStream;
use crate::wire::backend::ErrorFields;
use crate::wire::frame::MessageTracker;
use crate::wire::frontend::Terminate;
use bytes::BytesMut;
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// What the unmasked relay knows of a session from the message boundaries it follows in both
/// directions (it parses nothing else): enough to tell an idle session from a busy one.
pub(crate) struct Activity {
    /// ReadyForQuery answers the client's messages ask for (Query, Sync, FunctionCall), and
    /// those the server sent.
    pub(crate) asked: u64,
    pub(crate) answered: u64,
    /// Extended-protocol messages sent since the last Sync.
    pub(crate) unsynced: bool,
    /// The transaction status of the last ReadyForQuery.
    pub(crate) tx_status: u8,
    /// The bytes relayed so far end inside a message.
    pub(crate) client_mid: bool,
    pub(crate) server_mid: bool,
    /// A stream could not be followed: the session counts as busy from then on.
    pub(crate) lost: bool,
    /// The client's last message or the last ReadyForQuery, whichever came later.
    pub(crate) last_event: Instant,
}

impl Activity {
    pub(crate) fn in_flight(&self) -> bool {
        self.lost || self.asked > self.answered || self.unsynced || self.client_mid
    }

    pub(crate) fn idle(&self) -> bool {
        !self.in_flight() && !self.server_mid && self.tx_status == b'I'
    }
}

/// How the server-to-client half of the unmasked relay ended.
pub(crate) enum Down {
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
pub(crate) async fn unmasked_relay<C: SplitStream, S: SplitStream>(
    s: &Established,
    c: C,
    srv: S,
    early: BytesMut,
    tx_status: u8,
    sbuf: &[u8],
) {
    let (mut crd, mut cwr) = c.split_owned();
    let (mut srd, mut swr) = srv.split_owned();
    let mut strack = MessageTracker::default();
    let r = Relay::new(s, tx_status);
    if !sbuf.is_empty() {
        let mut a = lock(&r.act);
        strack.feed(sbuf, |tag, first| server_message(&mut a, tag, first));
        a.server_mid = !strack.at_boundary();
    }
    // Every reading from now on asks whether this role is still exempt.
    let _tracked = r.proxy_enforced.then(|| s.db.track_unmasked(&s.user));
    let why = {
        let upward = r.upward(&mut crd, &mut swr, early);
        let downward = r.downward(&mut srd, &mut cwr, &mut strack);
        tokio::pin!(downward);
        // Server bytes are forwarded until the server closes; a session ended by pgredact is
        // closed on the server side first, so the client gets every complete reply before the
        // FATAL.
        let why = tokio::select! {
            e = upward => e,
            _ = r.watch() => Ended::Revoked,
            d = &mut downward => match d {
                Down::Eof => Ended::Normally,
                Down::Stop(stop, whole) => Ended::Stopped(stop, whole),
            },
            _ = s.shared.life.halted_long_ago() => Ended::Stopped(Stop::Shutdown, false),
        };
        if let Ended::Revoked | Ended::Unverifiable(_) = why {
            // Close the server's side (no more client bytes); it finishes what it was sending.
            let _ = swr.shutdown().await;
            let _ = (&mut downward).await;
        }
        why
    };
    r.finish(why, cwr, swr).await
}

/// An unmasked session's relay: what both directions share.
struct Relay<'a> {
    s: &'a Established,
    act: Mutex<Activity>,
    /// Told when the session may have become idle (for the server half's wait).
    wake: tokio::sync::Notify,
    /// Under database enforcement the exemption is a PostgreSQL privilege: a revoked
    /// membership counts from the next statement with no help from pgredact, and the relay is a
    /// plain copy. Under proxy enforcement pgredact re-checks it, per statement and
    /// periodically.
    proxy_enforced: bool,
    per_statement: bool,
}

impl<'a> Relay<'a> {
    fn new(s: &'a Established, tx_status: u8) -> Relay<'a> {
        let proxy_enforced =
            s.db.snapshot()
                .policy
                .as_deref()
                .is_some_and(|p| p.enforcement == crate::policy::Enforcement::Proxy);
        Relay {
            s,
            act: Mutex::new(Activity {
                asked: 0,
                answered: 0,
                unsynced: false,
                tx_status,
                client_mid: false,
                server_mid: false,
                lost: false,
                last_event: Instant::now(),
            }),
            wake: tokio::sync::Notify::new(),
            proxy_enforced,
            per_statement: s.shared.cfg.per_statement_membership && proxy_enforced,
        }
    }

    /// The periodic re-check of the exemption (proxy enforcement): resolves when it is gone.
    async fn watch(&self) {
        if !self.proxy_enforced {
            return std::future::pending().await;
        }
        let (shared, db) = (&self.s.shared, &self.s.db);
        let period = std::time::Duration::from_secs(shared.cfg.membership_recheck_secs.max(1));
        loop {
            tokio::time::sleep(period).await;
            if let Ok(false) = db.is_unmasked(shared, &self.s.user).await {
                return;
            }
        }
    }

    /// Client to server, until the client leaves or the exemption is gone (or cannot be
    /// checked). `early`: bytes the client sent along with its authentication (a pipelined
    /// first statement), which go through the same gate as everything after them.
    async fn upward<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        crd: &mut R,
        swr: &mut W,
        early: BytesMut,
    ) -> Ended {
        let mut ctrack = MessageTracker::default();
        let mut buf = vec![0u8; 64 * 1024];
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
                let mut a = lock(&self.act);
                ctrack.feed(&buf[..n], |tag, _| client_message(&mut a, tag));
                a.client_mid = !ctrack.at_boundary();
                a.lost |= ctrack.lost();
                a.last_event = Instant::now();
            }
            if self.per_statement {
                if let Err(e) = self.still_exempt().await {
                    return e;
                }
            }
            if swr.write_all(&buf[..n]).await.is_err() {
                return Ended::Normally;
            }
            if lock(&self.act).idle() {
                self.wake.notify_one();
            }
        }
    }

    /// Whether a reading sent after now says the role is still exempt (the bytes that just
    /// arrived are forwarded only then).
    async fn still_exempt(&self) -> Result<(), Ended> {
        let (shared, db, user) = (&self.s.shared, &self.s.db, self.s.user.as_str());
        let t0 = std::time::Instant::now();
        let f = db
            .freshness_since(shared, t0)
            .await
            .map_err(Ended::Unverifiable)?;
        let still = if f.asked.iter().any(|u| u == user) {
            f.exempt.iter().any(|u| u == user)
        } else {
            db.is_unmasked(shared, user)
                .await
                .map_err(Ended::Unverifiable)?
        };
        if still {
            Ok(())
        } else {
            Err(Ended::Revoked)
        }
    }

    /// Server to client, until the server closes or pgredact ends the session (the drain or
    /// the idle timeout while the session is idle, the deadline at once).
    async fn downward<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        srd: &mut R,
        cwr: &mut W,
        strack: &mut MessageTracker,
    ) -> Down {
        let life = &self.s.shared.life;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let idle_since = {
                let a = lock(&self.act);
                a.idle().then_some(a.last_event)
            };
            let limit = life.settings.idle_timeout(false);
            let timer = idle_since.zip(limit).map(|(t, d)| t + d);
            let stop = tokio::select! {
                biased;
                _ = life.halted() => {
                    // Finish the server's current message, so the FATAL error follows a whole one.
                    let whole = tokio::time::timeout(HALT_GRACE, finish_message(srd, cwr, strack))
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
                            let mut a = lock(&self.act);
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
                _ = self.wake.notified() => continue,
            };
            // Decided with the session's state as it is now: both halves run in this task, so
            // no client message can be forwarded between this check and the close.
            let a = lock(&self.act);
            if a.idle() && stop.due(limit, a.last_event) {
                return Down::Stop(stop, true);
            }
        }
    }

    /// Ends the session as `why` says: the client is told why when pgredact ended it.
    async fn finish<CW: AsyncWrite + Unpin, SW: AsyncWrite + Unpin>(
        &self,
        why: Ended,
        mut cwr: CW,
        mut swr: SW,
    ) {
        let user = self.s.user.as_str();
        let (stop, whole) = match why {
            Ended::Normally => return,
            Ended::Stopped(stop, whole) => (stop, whole),
            Ended::Unverifiable(e) => {
                tracing::warn!(user = %user, "ending an unmasked session: {e}");
                let msg = format!(
                    "pgredact: the role's exemption from masking could not be re-checked: {e}"
                );
                return fatal_and_close(&mut cwr, "08006", &msg).await;
            }
            Ended::Revoked => {
                tracing::info!(user = %user, "membership in an unmasked role was revoked: ending the session");
                let msg = "pgredact: this role is no longer exempt from masking; reconnect";
                return fatal_and_close(&mut cwr, "57P01", msg).await;
            }
        };
        let (in_flight, client_mid) = {
            let a = lock(&self.act);
            (a.in_flight(), a.client_mid)
        };
        if stop == Stop::Shutdown && in_flight {
            self.s.cancel_statement().await;
        }
        let (code, msg) = stop.error();
        tracing::info!(user = %user, masked = false, "closing the session: {msg}");
        if whole {
            fatal(&mut cwr, code, &msg).await;
        }
        let _ = cwr.shutdown().await;
        if !client_mid {
            let _ = swr.write_all(&Terminate::BYTES).await;
        }
        let _ = swr.shutdown().await;
    }
}

/// Relays the rest of the server's current message: true when it ended whole.
async fn finish_message<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    srd: &mut R,
    cwr: &mut W,
    strack: &mut MessageTracker,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
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
}

async fn fatal<W: AsyncWrite + Unpin>(w: &mut W, code: &str, msg: &str) {
    let mut out = BytesMut::new();
    ErrorFields::new("FATAL", code, msg).encode(b'E', &mut out);
    let _ = w.write_all(&out).await;
}

async fn fatal_and_close<W: AsyncWrite + Unpin>(w: &mut W, code: &str, msg: &str) {
    fatal(w, code, msg).await;
    let _ = w.shutdown().await;
}

/// A message the unmasked relay forwarded to the server.
pub(crate) fn client_message(a: &mut Activity, tag: u8) {
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
pub(crate) fn server_message(a: &mut Activity, tag: u8, first: Option<u8>) {
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

pub(crate) enum Ended {
    Normally,
    Revoked,
    Unverifiable(super::error::Error),
    /// pgredact ends the session (true: at a message boundary of the server's stream).
    Stopped(Stop, bool),
}
