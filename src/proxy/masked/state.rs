//! What a masked session knows between its two halves: the request/response units in flight,
//! the prepared statements that exist, the transaction status, and whether its SQL may still be
//! read (one struct, behind one lock that is never held across I/O).

use crate::rewrite::{Decision, Refusal};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

/// One request/response unit: everything up to a Query, Sync or FunctionCall, answered by one
/// ReadyForQuery.
#[derive(Default)]
pub(crate) struct Unit {
    pub(crate) rewritten: bool,
    pub(crate) refusals: VecDeque<Refusal>,
    pub(crate) closed: bool,
    /// What the unit's messages do to prepared statements, applied when its ReadyForQuery
    /// arrives: exactly when the unit had no error, conservatively otherwise.
    pub(crate) effects: Vec<StmtEffect>,
    pub(crate) errored: bool,
    /// The unit's statements for the audit log, and the rows returned for each.
    pub(crate) audit: crate::audit::UnitLog,
}

/// A change to the session's prepared statements (PostgreSQL has one namespace for PREPARE
/// and Parse).
pub(crate) enum StmtEffect {
    Create(String, Prep),
    Remove(String),
    RemoveAll,
}

/// The state both halves of a masked session read and change (under one lock, never held
/// across I/O).
pub(crate) struct SessionState {
    pub(crate) units: VecDeque<Unit>,
    /// The transaction status of the last ReadyForQuery (`I`, `T` or `E`).
    pub(crate) tx_status: u8,
    /// Prepared statements known to exist, by name: every text the statement may have been
    /// prepared from (one, unless a unit failed part-way and it is unknown which one holds).
    pub(crate) statements: HashMap<String, Vec<Prep>>,
    /// A client message is being decided and forwarded.
    pub(crate) busy_client: bool,
    /// pgredact ends the session: no further client message is forwarded.
    pub(crate) closing: bool,
    /// The client's last message or the last ReadyForQuery, whichever came later.
    pub(crate) last_event: Instant,
    /// The session's SQL is read as the rewriter reads it (client_encoding UTF8 and
    /// standard_conforming_strings on, as PostgreSQL last reported them).
    pub(crate) reading_safe: bool,
    /// Why the client's stream broke the protocol, for the error the client gets.
    pub(crate) protocol_error: Option<String>,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            units: VecDeque::new(),
            tx_status: b'I',
            statements: HashMap::new(),
            busy_client: false,
            closing: false,
            last_event: Instant::now(),
            reading_safe: true,
            protocol_error: None,
        }
    }
}

impl SessionState {
    /// Something was sent that PostgreSQL has not answered with ReadyForQuery yet.
    pub(crate) fn in_flight(&self) -> bool {
        !self.units.is_empty() || self.busy_client
    }

    /// Outside a transaction block, with nothing in flight.
    pub(crate) fn idle(&self) -> bool {
        !self.in_flight() && self.tx_status == b'I'
    }

    /// Applies a finished unit's effects. Without an error every message ran, so creations
    /// replace and removals remove; after an error it is unknown which ran, so creations are
    /// added as further candidates and removals are ignored (PostgreSQL may still have them).
    pub(crate) fn finish(&mut self, unit: Unit) {
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
    pub(crate) fn candidates(&self, name: &str) -> Vec<Prep> {
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

    /// The unit the next client message belongs to (a new one after a Query, Sync or
    /// FunctionCall closed the last).
    pub(crate) fn open(&mut self) -> &mut Unit {
        if self.units.back().is_none_or(|u| u.closed) {
            self.units.push_back(Unit::default());
        }
        // Just ensured a back element exists.
        let n = self.units.len() - 1;
        &mut self.units[n]
    }
}

/// A prepared statement as decided when it was prepared.
#[derive(Clone)]
pub(crate) struct Prep {
    /// The client's text (for SQL-level ones, the whole Query that prepared it).
    pub(crate) sql: Arc<str>,
    pub(crate) decision: Arc<Decision>,
}
