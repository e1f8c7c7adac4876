//! The server half of a masked session: relays PostgreSQL's messages to the client, swapping
//! the sentinel's error for the refusal and scrubbing what could echo raw values, and waits for
//! the reasons pgredact ends a session (drain, idle timeout, deadline). One method per backend
//! message that needs more than a copy.

use super::state::SessionState;
use super::SENTINEL;
use crate::proxy::lifecycle::{until, Lifecycle, Stop};
use crate::rewrite::REFUSAL_SQLSTATE;
use crate::sync::lock;
use crate::wire::backend::{ErrorFields, ParameterStatus, ReadyForQuery};
use crate::wire::{FrameError, FrameReader};
use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::time::Instant;

/// The server half (see the module's documentation).
pub(crate) struct ServerHalf {
    pub(crate) state: Arc<Mutex<SessionState>>,
    /// The session's audit log, when `[audit]` is configured.
    pub(crate) audit: Option<crate::audit::SessionAudit>,
    /// Rows returned since the audit log last counted them (DataRow, CopyData).
    rows: u64,
    out: BytesMut,
}

/// What the server half waits for.
enum Next {
    Frame(Bytes),
    Eof,
    Stop(Stop),
}

impl ServerHalf {
    pub(crate) fn new(
        state: Arc<Mutex<SessionState>>,
        audit: Option<crate::audit::SessionAudit>,
    ) -> ServerHalf {
        ServerHalf {
            state,
            audit,
            rows: 0,
            out: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Relays the server's messages to the client until the server closes (None) or pgredact
    /// ends the session (the reason).
    pub(crate) async fn run<SR: AsyncRead + Unpin, CW: AsyncWrite + Unpin>(
        &mut self,
        mut srd: FrameReader<SR>,
        cwr: &mut BufWriter<CW>,
        life: &Lifecycle,
        wake: &tokio::sync::Notify,
    ) -> Result<Option<Stop>, FrameError> {
        loop {
            let f = match srd.try_frame()? {
                Some(f) => f,
                None => {
                    cwr.flush().await?;
                    match self.next_or_stop(&mut srd, life, wake).await? {
                        Next::Frame(f) => f,
                        Next::Eof => return Ok(None),
                        Next::Stop(s) => return Ok(Some(s)),
                    }
                }
            };
            self.on_message(f, cwr).await?;
        }
    }

    /// Waits for the server's next frame, or for a reason to end the session: the deadline;
    /// the drain or the idle timeout while the session is idle. The close is decided under the
    /// session's lock (`closing`), so no client message slips through after it.
    async fn next_or_stop<R: AsyncRead + Unpin>(
        &self,
        srd: &mut FrameReader<R>,
        life: &Lifecycle,
        wake: &tokio::sync::Notify,
    ) -> Result<Next, FrameError> {
        loop {
            let idle_since = {
                let p = lock(&self.state);
                p.idle().then_some(p.last_event)
            };
            let limit = life.settings.idle_timeout(true);
            let timer = idle_since.zip(limit).map(|(t, d)| t + d);
            let stop = tokio::select! {
                biased;
                _ = life.halted() => {
                    lock(&self.state).closing = true;
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
            let mut p = lock(&self.state);
            if p.idle() && stop.due(limit, p.last_event) {
                p.closing = true;
                return Ok(Next::Stop(stop));
            }
        }
    }

    /// Relays server message `f` to the client (or drops it).
    pub(crate) async fn on_message<W: AsyncWrite + Unpin>(
        &mut self,
        f: Bytes,
        cwr: &mut W,
    ) -> Result<(), FrameError> {
        match f[0] {
            b'E' | b'N' => {
                self.on_error_or_notice(&f)?;
                cwr.write_all(&self.out).await?;
            }
            b'D' | b'd' => {
                self.rows += 1;
                cwr.write_all(&f).await?;
            }
            b'2' if self.audit.is_some() => {
                // BindComplete: the rows that follow are the next bound statement's.
                if let Some(u) = lock(&self.state).units.front_mut() {
                    u.audit.rows(std::mem::take(&mut self.rows));
                    u.audit.bind_complete();
                }
                cwr.write_all(&f).await?;
            }
            b'Z' => {
                let log = self.on_ready(&f);
                // Waits while the audit writer's queue is full (records are never dropped).
                if let (Some(a), false) = (&self.audit, log.is_empty()) {
                    a.statements(log).await;
                }
                cwr.write_all(&f).await?;
            }
            b'S' => {
                self.on_parameter_status(&f);
                cwr.write_all(&f).await?;
            }
            // NotificationResponse: payloads from other sessions are not masked; dropped.
            b'A' => {}
            _ => cwr.write_all(&f).await?,
        }
        Ok(())
    }

    /// ErrorResponse / NoticeResponse, re-encoded into `self.out`: the sentinel's error becomes
    /// the refusal waiting in the unit; anything else is scrubbed.
    fn on_error_or_notice(&mut self, f: &Bytes) -> Result<(), FrameError> {
        let mut e = ErrorFields::decode(f)?;
        let error = f[0] == b'E';
        let (rewritten, refusal) = {
            let mut p = lock(&self.state);
            let mut front = p.units.front_mut();
            if let (true, Some(u)) = (error, front.as_mut()) {
                u.errored = true;
            }
            let rewritten = front.as_ref().is_some_and(|u| u.rewritten);
            let sentinel = error && e.get(b'M').is_some_and(|m| m.contains(SENTINEL));
            let refusal = if sentinel {
                front.and_then(|u| u.refusals.pop_front())
            } else {
                None
            };
            (rewritten, refusal)
        };
        if let Some(r) = refusal {
            e = ErrorFields::new("ERROR", REFUSAL_SQLSTATE, &r.message)
                .with(b'H', r.hint.as_deref());
        } else {
            scrub(&mut e, rewritten);
        }
        self.out.clear();
        e.encode(f[0], &mut self.out);
        Ok(())
    }

    /// ReadyForQuery: the front unit is answered; its effects apply. Returns its audit records.
    fn on_ready(&mut self, f: &Bytes) -> Vec<crate::audit::Stmt> {
        let mut log = Vec::new();
        let mut p = lock(&self.state);
        if let Some(mut u) = p.units.pop_front() {
            u.audit.rows(std::mem::take(&mut self.rows));
            log = u.audit.take();
            p.finish(u);
        }
        if let Ok(z) = ReadyForQuery::decode(f) {
            p.tx_status = z.status;
        }
        p.last_event = Instant::now();
        log
    }

    /// ParameterStatus: the rewriter's reading of SQL depends on client_encoding and
    /// standard_conforming_strings. One that does not decode (PostgreSQL sends none) is relayed;
    /// if it names one of the two, the session's SQL reading is no longer trusted (fail closed).
    fn on_parameter_status(&mut self, f: &Bytes) {
        let unsafe_now = match ParameterStatus::decode(f) {
            Ok(ParameterStatus { name, value }) => {
                let v = value.to_ascii_lowercase();
                match name.as_str() {
                    "client_encoding" => v != "utf8",
                    "standard_conforming_strings" => v != "on",
                    _ => false,
                }
            }
            Err(_) => {
                let body = f.get(5..).unwrap_or(&[]);
                body.starts_with(b"client_encoding\0")
                    || body.starts_with(b"standard_conforming_strings\0")
            }
        };
        if unsafe_now {
            lock(&self.state).reading_safe = false;
        }
    }
}

/// Removes from an error or notice what could point into text the client never sent or echo
/// raw values:
/// - positions into a rewritten statement;
/// - the DETAIL of data-exception and integrity errors ("Key (...)=(...)", "Failing row contains");
/// - the message, detail and hint of anything raised inside a function or trigger (it has a
///   CONTEXT, or is a RAISE: class P0), since user code may put any column value there.
pub(crate) fn scrub(e: &mut ErrorFields, rewritten: bool) {
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
