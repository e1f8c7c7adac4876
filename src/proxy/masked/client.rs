//! The client half of a masked session: reads the client's messages, decides each statement,
//! and sends PostgreSQL the statement, its rewrite, or the sentinel. One method per frontend
//! message that needs more than a copy.

use super::decide::{path_change, Decide, SessionPath};
use super::state::{Prep, SessionState, StmtEffect, Unit};
use super::SENTINEL;
use crate::rewrite::search_path::PathChange;
use crate::rewrite::{Decision, PreparedEffect, Refusal, RefusalKind};
use crate::sync::lock;
use crate::wire::frontend::{Bind, Close, Parse, Query, Terminate};
use crate::wire::{FrameError, FrameReader};
use bytes::{Bytes, BytesMut};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};

/// The client half (see the module's documentation).
pub(crate) struct ClientHalf<D> {
    pub(crate) state: Arc<Mutex<SessionState>>,
    pub(crate) decider: D,
    pub(crate) path: SessionPath,
    /// The session has an audit log.
    pub(crate) auditing: bool,
}

/// How the client half learns that the session changed state.
pub(crate) struct Wakes {
    /// Told when the session may have become idle (for the server half's wait).
    pub(crate) idle: Arc<tokio::sync::Notify>,
    /// Resolves when pgredact ends the session.
    pub(crate) stop: tokio::sync::oneshot::Receiver<()>,
}

impl<D: Decide> ClientHalf<D> {
    /// Relays the client's messages until it leaves, breaks the protocol (recorded in the
    /// state for the client's error), or pgredact ends the session.
    pub(crate) async fn run<CR: AsyncRead + Unpin, SW: AsyncWrite + Unpin>(
        mut self,
        mut crd: FrameReader<CR>,
        swr: SW,
        mut wakes: Wakes,
    ) {
        let mut swr = BufWriter::with_capacity(64 * 1024, swr);
        let mut out = BytesMut::with_capacity(8 * 1024);
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut wakes.stop => None,
                r = crd.next() => Some(r),
            };
            let f = match next {
                Some(Ok(Some(f))) => f,
                // The client left without Terminate: close PostgreSQL's side, which ends the
                // backend as the client's own close would (dropping a TLS write half would not).
                Some(Ok(None)) => {
                    let _ = swr.shutdown().await;
                    return;
                }
                Some(Err(e)) => {
                    self.protocol_error(e);
                    break;
                }
                // pgredact ends the session (the client has its FATAL error).
                None => break,
            };
            if !self.begin_message() {
                // Ended while idle: this message arrived too late to be forwarded.
                break;
            }
            out.clear();
            if let Err(e) = self.on_message(&f, crd.filled_at(), &mut out).await {
                self.protocol_error(e);
                break;
            }
            if swr.write_all(&out).await.is_err() {
                return;
            }
            if f[0] == b'X' {
                let _ = swr.flush().await;
                return;
            }
            // Flush when the client has nothing more buffered (keeps pipelined batches
            // together).
            if !crd.has_frame() && swr.flush().await.is_err() {
                return;
            }
            if self.end_message() {
                wakes.idle.notify_one();
            }
        }
        // Leaving (or told to leave): say goodbye to the server.
        let _ = swr.write_all(&Terminate::BYTES).await;
        let _ = swr.flush().await;
    }

    /// Records a protocol error of the client: it ends only this session, and the client is
    /// told why.
    fn protocol_error(&self, e: FrameError) {
        tracing::info!("closing masked session: {e}");
        lock(&self.state).protocol_error = Some(e.to_string());
    }

    /// A client message arrived: marks the session busy, unless pgredact is ending it (false).
    pub(crate) fn begin_message(&self) -> bool {
        let mut p = lock(&self.state);
        p.busy_client = !p.closing;
        p.last_event = tokio::time::Instant::now();
        !p.closing
    }

    /// The message was forwarded: true when the session is now idle.
    pub(crate) fn end_message(&self) -> bool {
        let mut p = lock(&self.state);
        p.busy_client = false;
        p.idle()
    }

    /// What PostgreSQL gets for client message `f` (which arrived by `t0`), appended to `out`.
    /// An error is a protocol error of the client.
    pub(crate) async fn on_message(
        &mut self,
        f: &Bytes,
        t0: Instant,
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        match f[0] {
            b'Q' => self.on_query(f, t0, out).await?,
            b'P' => self.on_parse(f, t0, out).await?,
            b'B' => self.on_bind(f, t0, out).await?,
            b'F' => self.on_function_call(out),
            b'S' => {
                lock(&self.state).open().closed = true;
                out.extend_from_slice(f);
            }
            b'C' => {
                let mut p = lock(&self.state);
                let unit = p.open();
                if let Ok(Close::Statement { name, .. }) = Close::decode(f) {
                    unit.effects.push(StmtEffect::Remove(name));
                }
                out.extend_from_slice(f);
            }
            b'E' | b'D' | b'H' => {
                lock(&self.state).open();
                out.extend_from_slice(f);
            }
            b'd' | b'c' | b'f' | b'X' | b'p' => out.extend_from_slice(f),
            other => {
                return Err(FrameError::Protocol(format!(
                    "unexpected message type {:?} from a masked session",
                    other as char
                )))
            }
        }
        Ok(())
    }

    /// The decision for `sql`: refused outright once the session's SQL can no longer be read
    /// as the rewriter reads it.
    async fn decide(&self, sql: &str, t0: Instant) -> Arc<Decision> {
        if !lock(&self.state).reading_safe {
            return Arc::new(Decision::Refuse(Refusal {
                kind: RefusalKind::Setting,
                message: "pgredact: this session's client_encoding or standard_conforming_strings changed; masked sessions require UTF8 and on".into(),
                hint: None,
            }));
        }
        self.decider.decide(sql, t0, &self.path).await
    }

    fn audit_resolve(&self) -> Option<crate::audit::Resolve> {
        self.auditing
            .then(|| self.decider.audit_resolve(&self.path))
    }

    /// Query: a change of search path is analysed here; anything else goes to the rewriter.
    async fn on_query(
        &mut self,
        f: &Bytes,
        t0: Instant,
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let Query { sql } = Query::decode(f)?;
        match path_change(&sql, &self.path) {
            Some(change) => self.on_path_change(f, sql, change, out),
            None => self.on_statement(f, sql, t0, out).await,
        }
        Ok(())
    }

    /// A Query that changes the session's search path.
    fn on_path_change(
        &mut self,
        f: &Bytes,
        sql: String,
        change: Result<PathChange, Refusal>,
        out: &mut BytesMut,
    ) {
        let audit_res = self.audit_resolve();
        let mut p = lock(&self.state);
        // Outside a transaction block and with nothing in flight, the change takes effect
        // exactly when this statement runs (it cannot fail there).
        let idle = p.units.is_empty() && p.tx_status == b'I';
        let unit = p.open();
        match change {
            Ok(c) if idle => {
                if self.auditing {
                    unit.audit.query(&sql, &Arc::new(Decision::Pass), audit_res);
                }
                match c {
                    PathChange::Set(listed) => self.path.set(
                        crate::rewrite::search_path::effective_path(&listed, &self.path.user),
                    ),
                    PathChange::Reset => self.path.reset(),
                }
                // DISCARD ALL also drops the prepared statements.
                for e in crate::rewrite::prepared_effects(&sql) {
                    if e == PreparedEffect::Deallocate(None) {
                        unit.effects.push(StmtEffect::RemoveAll);
                    }
                }
                out.extend_from_slice(f);
            }
            Ok(_) => {
                let r = Refusal {
                    kind: RefusalKind::Setting,
                    message: "pgredact: masked sessions change search_path only outside a transaction block, with no statement in flight".into(),
                    hint: Some("set it before BEGIN, and wait for the previous statement's answer".into()),
                };
                refuse_query(unit, &sql, r, self.auditing, out);
            }
            Err(r) => refuse_query(unit, &sql, r, self.auditing, out),
        }
        unit.closed = true;
    }

    /// A Query for the rewriter.
    async fn on_statement(&mut self, f: &Bytes, sql: String, t0: Instant, out: &mut BytesMut) {
        let d = self.decide(&sql, t0).await;
        let (d, effects) = self.statement_effects(&sql, d, t0, true).await;
        let audit_res = self.audit_resolve();
        crate::metrics::statement(&d);
        let mut p = lock(&self.state);
        let unit = p.open();
        unit.effects.extend(effects);
        if self.auditing {
            unit.audit.query(&sql, &d, audit_res);
        }
        match &*d {
            Decision::Pass => out.extend_from_slice(f),
            Decision::Rewrite(s) => {
                unit.rewritten = true;
                Query::put(out, s);
            }
            Decision::Refuse(r) => {
                unit.refusals.push_back(r.clone());
                Query::put(out, SENTINEL);
            }
        }
        unit.closed = true;
    }

    /// Parse: decided like a Query; what it was decided as is kept, to check again at each Bind.
    async fn on_parse(
        &mut self,
        f: &Bytes,
        t0: Instant,
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let mut pm = Parse::decode(f)?;
        let d = self.decide(&pm.query, t0).await;
        // The statement's own SQL-level effects happen only when it is executed: creations are
        // recorded now (more candidates is safe), removals never.
        let (d, mut effects) = self.statement_effects(&pm.query, d, t0, false).await;
        crate::metrics::statement(&d);
        if !matches!(*d, Decision::Refuse(_)) {
            effects.push(StmtEffect::Create(
                pm.name.clone(),
                Prep {
                    sql: pm.query.as_str().into(),
                    decision: d.clone(),
                },
            ));
        }
        let audit_res = self.audit_resolve();
        let mut p = lock(&self.state);
        let unit = p.open();
        unit.effects.extend(effects);
        if self.auditing {
            unit.audit.parse(&pm.name, &pm.query, &d, audit_res);
        }
        match &*d {
            Decision::Pass => out.extend_from_slice(f),
            Decision::Rewrite(s) => {
                unit.rewritten = true;
                pm.query = s.clone();
                pm.encode(out);
            }
            Decision::Refuse(r) => {
                unit.refusals.push_back(r.clone());
                pm.query = SENTINEL.to_string();
                pm.encode(out);
            }
        }
        Ok(())
    }

    /// Bind: PostgreSQL re-plans a prepared statement after a schema change, from the text
    /// decided back then; it is bound only while that text is still what the statement would be
    /// decided as now.
    async fn on_bind(
        &mut self,
        f: &Bytes,
        t0: Instant,
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let Bind {
            statement: name, ..
        } = Bind::decode(f)?;
        let refusal = self.check_statement(&name, t0, true).await.err();
        if let Some(r) = &refusal {
            crate::metrics::refused(r);
        }
        let audit_res = self.audit_resolve();
        let mut p = lock(&self.state);
        let prepared = if self.auditing {
            p.candidates(&name)
                .into_iter()
                .next()
                .map(|c| (c.sql, c.decision))
        } else {
            None
        };
        let unit = p.open();
        if self.auditing {
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
                .encode(out);
            }
            None => out.extend_from_slice(f),
        }
        Ok(())
    }

    /// FunctionCall: refused; a failing Query stands in so the reply order holds.
    fn on_function_call(&mut self, out: &mut BytesMut) {
        let mut p = lock(&self.state);
        let unit = p.open();
        let r = Refusal {
            kind: RefusalKind::Protocol,
            message: "pgredact: the FunctionCall protocol message is not allowed for masked roles"
                .into(),
            hint: None,
        };
        if self.auditing {
            unit.audit.refused("function_call", None, &r);
        }
        crate::metrics::refused(&r);
        unit.refusals.push_back(r);
        unit.closed = true;
        Query::put(out, SENTINEL);
    }

    /// What a statement's text does to prepared statements: an EXECUTE of one whose decision
    /// no longer holds refuses the statement; PREPARE / DEALLOCATE become effects for its unit
    /// (removals only when `with_removals`: the text runs as sent). Returns the decision to use.
    async fn statement_effects(
        &self,
        sql: &str,
        d: Arc<Decision>,
        t0: Instant,
        with_removals: bool,
    ) -> (Arc<Decision>, Vec<StmtEffect>) {
        if matches!(*d, Decision::Refuse(_)) {
            return (d, Vec::new());
        }
        let parsed = crate::rewrite::prepared_effects(sql);
        let mut fresh: HashSet<String> = HashSet::new();
        let mut effects = Vec::new();
        for e in parsed {
            match e {
                PreparedEffect::Prepare(n) => {
                    fresh.insert(n.clone());
                    effects.push(StmtEffect::Create(
                        n,
                        Prep {
                            sql: sql.into(),
                            decision: d.clone(),
                        },
                    ));
                }
                // A statement PREPAREd earlier in this same text was decided just now.
                PreparedEffect::Execute(n) if !fresh.contains(&n) => {
                    if let Err(r) = self.check_statement(&n, t0, false).await {
                        return (Arc::new(Decision::Refuse(r)), Vec::new());
                    }
                }
                PreparedEffect::Execute(_) => {}
                PreparedEffect::Deallocate(Some(n)) if with_removals => {
                    effects.push(StmtEffect::Remove(n))
                }
                PreparedEffect::Deallocate(None) if with_removals => {
                    effects.push(StmtEffect::RemoveAll)
                }
                PreparedEffect::Deallocate(_) => {}
            }
        }
        (d, effects)
    }

    /// Checks that prepared statement `name` would be decided now as it was when prepared
    /// (every text it may hold; with `nested`, also the statements its text EXECUTEs). Unknown
    /// names pass: PostgreSQL has no such statement.
    async fn check_statement(&self, name: &str, t0: Instant, nested: bool) -> Result<(), Refusal> {
        let candidates = lock(&self.state).candidates(name);
        for c in candidates {
            let now = self.decide(&c.sql, t0).await;
            if *now != *c.decision {
                return Err(stale_refusal(name, now.as_ref()));
            }
            if nested {
                for e in crate::rewrite::prepared_effects(&c.sql) {
                    if let PreparedEffect::Execute(n) = e {
                        Box::pin(self.check_statement(&n, t0, false)).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A Query refused by pgredact itself: the refusal waits in its unit for the sentinel's error.
fn refuse_query(unit: &mut Unit, sql: &str, r: Refusal, auditing: bool, out: &mut BytesMut) {
    if auditing {
        unit.audit.refused("query", Some(sql.into()), &r);
    }
    crate::metrics::refused(&r);
    unit.refusals.push_back(r);
    Query::put(out, SENTINEL);
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
