//! The per-exchange bookkeeping of a session (what the relay hands the log).

use super::*;

/// The statements of one request/response exchange (up to a ReadyForQuery), and where the rows
/// the server returns belong.
#[derive(Default)]
pub struct UnitLog {
    pub(super) entries: Vec<Stmt>,
    /// Statements parsed in this exchange, by name.
    pub(super) parsed: Vec<(String, usize)>,
    /// The entry each Bind sent is for, in order (BindComplete moves the row target).
    pub(super) binds: VecDeque<usize>,
    pub(super) target: Option<usize>,
}

impl UnitLog {
    pub(super) fn push(&mut self, s: Stmt) -> usize {
        self.entries.push(s);
        self.entries.len() - 1
    }

    /// A simple-protocol Query: the exchange's rows are its.
    pub fn query(&mut self, sql: &str, d: &Arc<Decision>, resolve: Option<Resolve>) {
        let i = self.push(stmt("query", Some(sql), d, resolve));
        self.target = Some(i);
    }

    pub fn parse(&mut self, name: &str, sql: &str, d: &Arc<Decision>, resolve: Option<Resolve>) {
        let i = self.push(stmt("parse", Some(sql), d, resolve));
        self.parsed.push((name.to_string(), i));
    }

    /// A Bind of statement `name`: rows after its BindComplete go to the Parse of this exchange,
    /// or to a new `bind` entry for a statement prepared earlier (`prepared`: its text and
    /// decision).
    pub fn bind(
        &mut self,
        name: &str,
        prepared: Option<(Arc<str>, Arc<Decision>)>,
        resolve: Option<Resolve>,
    ) {
        let i = match self.parsed.iter().rev().find(|(n, _)| n == name) {
            Some(&(_, i)) => i,
            None => {
                let (sql, d) = match prepared {
                    Some((s, d)) => (Some(s), d),
                    None => (None, Arc::new(Decision::Pass)),
                };
                self.push(Stmt {
                    message: "bind",
                    sql,
                    decision: d,
                    resolve,
                    rows: 0,
                    time: SystemTime::now(),
                })
            }
        };
        self.binds.push_back(i);
    }

    /// A message refused without a statement text (FunctionCall, a Bind that is refused).
    pub fn refused(&mut self, message: &'static str, sql: Option<Arc<str>>, r: &Refusal) {
        self.push(Stmt {
            message,
            sql,
            decision: Arc::new(Decision::Refuse(r.clone())),
            resolve: None,
            rows: 0,
            time: SystemTime::now(),
        });
    }

    /// The server's rows so far (DataRow, CopyData) belong to the current target.
    pub fn rows(&mut self, n: u64) {
        if let Some(e) = self.target.and_then(|t| self.entries.get_mut(t)) {
            e.rows += n;
        }
    }

    /// BindComplete: the rows that follow belong to the next bound statement.
    pub fn bind_complete(&mut self) {
        self.target = self.binds.pop_front();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn take(&mut self) -> Vec<Stmt> {
        std::mem::take(&mut self.entries)
    }
}

pub(super) fn stmt(
    message: &'static str,
    sql: Option<&str>,
    d: &Arc<Decision>,
    resolve: Option<Resolve>,
) -> Stmt {
    Stmt {
        message,
        sql: sql.map(Arc::from),
        decision: d.clone(),
        resolve,
        rows: 0,
        time: SystemTime::now(),
    }
}
