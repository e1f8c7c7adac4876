//! The handles sessions hold: the log and one session's view of it.

use super::*;

/// The audit log, as sessions see it (cheap to clone).
#[derive(Clone)]
pub struct Audit {
    pub(super) tx: mpsc::Sender<Cmd>,
}

/// One masked session's view of the log.
#[derive(Clone)]
pub struct SessionAudit {
    pub(super) audit: Audit,
    pub info: Arc<SessionInfo>,
}

impl Audit {
    /// A masked session's handle, with a fresh session id.
    pub fn session(&self, role: &str, database: &str, client: Option<String>) -> SessionAudit {
        SessionAudit {
            audit: self.clone(),
            info: Arc::new(SessionInfo {
                id: format!("{:016x}", rand::random::<u64>()),
                role: role.to_string(),
                client,
                database: database.to_string(),
            }),
        }
    }

    pub(super) async fn send(&self, e: Event) {
        if self.tx.send(Cmd::Event(Box::new(e))).await.is_err() {
            tracing::error!("the audit writer has stopped: a record was not written");
        }
    }

    /// Waits until every record sent before this call is written and synced.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl SessionAudit {
    pub(super) async fn event(&self, kind: Kind) {
        self.audit
            .send(Event {
                session: self.info.clone(),
                kind,
                time: SystemTime::now(),
            })
            .await
    }

    pub async fn start(&self) {
        self.event(Kind::Start).await
    }

    pub async fn end(&self) {
        self.event(Kind::End).await
    }

    /// The statements of a finished exchange (waits while the writer's queue is full).
    pub async fn statements(&self, stmts: Vec<Stmt>) {
        for s in stmts {
            self.event(Kind::Statement(s)).await
        }
    }
}
