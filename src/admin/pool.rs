//! The admin API's connections: a few forget sessions per database, kept between requests
//! (each request used to open a connection of its own).
//!
//! At most [`PER_DATABASE`] sessions per database are in use at once; a request waits for one
//! when all are busy. Idle sessions are reused; one whose connection closed or does not answer
//! is dropped and a new one opened. The map of databases is behind a plain mutex held only to
//! find a database's entry, never across I/O, so one database's traffic never waits for
//! another's.

use crate::forget::{Session, Target};
use crate::policy::DatabasePolicy;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Sessions per database (the admin API's connections to it, beside the job worker's one).
pub const PER_DATABASE: usize = 4;

/// `application_name` of the pooled connections.
pub const APPLICATION_NAME: &str = "pgredact-admin";

#[derive(Default)]
pub struct Pool {
    dbs: Mutex<HashMap<String, Arc<DbPool>>>,
}

struct DbPool {
    idle: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
}

/// A session taken from the pool; it goes back when dropped (unless its connection closed).
pub struct Pooled {
    session: Option<Session>,
    db: Arc<DbPool>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Pooled {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Some from creation until drop.
        self.session
            .as_ref()
            .expect("pooled session present until drop")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Session {
        self.session
            .as_mut()
            .expect("pooled session present until drop")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if !s.client.is_closed() {
                let mut idle = crate::sync::lock(&self.db.idle);
                idle.push(s);
            }
        }
    }
}

impl Pool {
    fn db(&self, database: &str) -> Arc<DbPool> {
        let mut dbs = crate::sync::lock(&self.dbs);
        dbs.entry(database.to_string())
            .or_insert_with(|| {
                Arc::new(DbPool {
                    idle: Mutex::new(Vec::new()),
                    permits: Arc::new(Semaphore::new(PER_DATABASE)),
                })
            })
            .clone()
    }

    /// A session on `target`'s database for `policy`. With `refresh`, the policy is resolved
    /// against the catalog again (for requests that plan or parse IDs); without, the session's
    /// connection is all the caller uses.
    pub async fn get(
        &self,
        target: &Target,
        policy: Arc<DatabasePolicy>,
        hash_key: Option<&[u8]>,
        refresh: bool,
    ) -> Result<Pooled, super::Error> {
        let db = self.db(&target.database);
        let permit = db
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(super::Error::Pool)?;
        let cached = {
            let mut idle = crate::sync::lock(&db.idle);
            // Connections known to be closed are dropped on the way.
            idle.retain(|s| !s.client.is_closed());
            idle.pop()
        };
        let mut session = None;
        if let Some(mut s) = cached {
            // A connection the server ended (restart, pg_terminate_backend, idle timeout) is
            // dropped here and a new one opened.
            if !s.client.is_closed() && s.client.batch_execute("").await.is_ok() {
                if refresh || *s.policy != *policy {
                    s.refresh(Arc::clone(&policy)).await?;
                }
                session = Some(s);
            }
        }
        let session = match session {
            Some(s) => s,
            None => {
                let mut t = target.clone();
                t.application_name = APPLICATION_NAME;
                Session::open(&t, policy, hash_key).await?
            }
        };
        Ok(Pooled {
            session: Some(session),
            db,
            _permit: permit,
        })
    }
}
