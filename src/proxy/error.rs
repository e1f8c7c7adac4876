//! The proxy's errors. [`Error`] is internal: it is logged and counted, and its variants tell
//! the causes apart. What a client may be told is a [`ClientError`]: a SQLSTATE and one line,
//! and before PostgreSQL has authenticated the client never a cause chain.

use std::fmt;

/// Why the proxy could not reach, read or set up something.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A session connection to PostgreSQL failed (the reason is one line).
    #[error("cannot connect to PostgreSQL at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// PostgreSQL did not answer within `connect_timeout_secs`.
    #[error("PostgreSQL at {addr} did not answer within {secs} s (connect_timeout_secs)")]
    NoAnswer { addr: String, secs: u64 },
    /// A control-plane connection to a database failed.
    #[error("control-plane connection to database {db:?} failed: {reason}")]
    Control { db: String, reason: String },
    /// LISTEN on a control connection failed.
    #[error("LISTEN {channel} failed: {source}")]
    Listen {
        channel: String,
        source: tokio_postgres::Error,
    },
    /// Reading a database's catalog failed.
    #[error("catalog refresh of {db:?} failed: {source}")]
    Catalog {
        db: String,
        source: tokio_postgres::Error,
    },
    /// The freshness reading (DDL generation, exempt roles) failed.
    #[error("freshness check failed: {0}")]
    Freshness(tokio_postgres::Error),
    /// The DDL watch is missing or disabled, so a snapshot cannot be shown current.
    #[error("the DDL watch (event trigger {trigger}) is not installed or is disabled in database {db:?}, so pgredact cannot show that its catalog is current; a superuser must run the output of `pgredact setup-sql`")]
    NoDdlWatch { trigger: &'static str, db: String },
    /// The role lookup (is this role exempt from masking?) failed.
    #[error("role lookup failed: {0}")]
    RoleLookup(tokio_postgres::Error),
    /// `pgredact_admin.auth_verifier` could not answer (missing, not granted...).
    #[error("{0}")]
    Verifier(String),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot install the {name} handler: {source}")]
    Signal {
        name: &'static str,
        source: std::io::Error,
    },
    /// A peer instance could not be reached (cancel forwarding).
    #[error("{0}")]
    Peer(String),
    /// The policy files could not be loaded.
    #[error("{0}")]
    Policy(#[from] crate::policy::Error),
    /// Setting up what the proxy serves with failed: TLS, the audit log, the admin API (their
    /// modules' own messages).
    #[error("{0}")]
    Setup(String),
}

/// What pgredact tells a client about a session it ends: a SQLSTATE, one line, and maybe a
/// hint. Every FATAL error pgredact itself writes during startup is one of these (the
/// shutdown notice, a fixed text, aside; SCRAM's errors are PostgreSQL's own wording).
pub(crate) struct ClientError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) hint: Option<&'static str>,
}

impl ClientError {
    /// `pgredact: <what>`, cut to its first line: a client that has not authenticated learns
    /// what failed, never a cause chain (certificate details, server messages...).
    pub(crate) fn new(code: &'static str, what: impl fmt::Display) -> ClientError {
        let what = what.to_string();
        let line = what.lines().next().unwrap_or_default();
        ClientError {
            code,
            message: format!("pgredact: {line}"),
            hint: None,
        }
    }

    /// `pgredact: <what>`, whole: for a client PostgreSQL has authenticated (it could read the
    /// same facts in its database).
    pub(crate) fn authenticated(code: &'static str, what: impl fmt::Display) -> ClientError {
        ClientError {
            code,
            message: format!("pgredact: {what}"),
            hint: None,
        }
    }

    pub(crate) fn with_hint(mut self, hint: &'static str) -> ClientError {
        self.hint = Some(hint);
        self
    }

    pub(crate) async fn send<W: tokio::io::AsyncWrite + Unpin>(&self, w: &mut W) {
        crate::wire::backend::send_fatal(w, self.code, &self.message, self.hint).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_error_is_one_line() {
        let e = ClientError::new("08006", "cannot connect\ncaused by: certificate for host x");
        assert_eq!(e.message, "pgredact: cannot connect");
        let e = Error::NoAnswer {
            addr: "127.0.0.1:1".into(),
            secs: 3,
        };
        assert_eq!(
            ClientError::new("08006", &e).message,
            "pgredact: PostgreSQL at 127.0.0.1:1 did not answer within 3 s (connect_timeout_secs)"
        );
    }
}
