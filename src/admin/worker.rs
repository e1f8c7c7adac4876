//! The background worker that runs forget jobs, and the callbacks when they end.

use super::*;

/// Runs jobs in the background: installs suppression at start, then resumes unfinished jobs
/// whenever woken (a job was submitted) or every few seconds. Errors are logged, not fatal.
pub fn spawn_worker(state: AdminState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sessions: HashMap<String, Session> = HashMap::new();
        let mut suppression_done: HashMap<String, bool> = HashMap::new();
        loop {
            for policy in subject_databases(&state.current_policies()) {
                let db = policy.database.clone();
                // A changed policy (new subject tables, other masks): new session and spec, and
                // suppression triggers installed again for it.
                if sessions.get(&db).is_some_and(|s| *s.policy != *policy) {
                    sessions.remove(&db);
                    suppression_done.remove(&db);
                }
                if !sessions.contains_key(&db) {
                    match state.open_session(policy.clone()).await {
                        Ok(s) => {
                            sessions.insert(db.clone(), s);
                        }
                        Err(e) => {
                            tracing::warn!(database = %db, "forget worker: {}", e.message);
                            continue;
                        }
                    }
                }
                let Some(session) = sessions.get_mut(&db) else {
                    continue;
                };
                if !suppression_done.get(&db).copied().unwrap_or(false) {
                    match session.ensure_suppression().await {
                        Ok(_) => {
                            suppression_done.insert(db.clone(), true);
                        }
                        Err(e) => {
                            tracing::warn!(database = %db, "forget worker: suppression triggers: {e}")
                        }
                    }
                }
                match session.resume_all(Faults::default()).await {
                    Ok(ends) => {
                        for (id, end) in ends {
                            tracing::info!(database = %db, job = id, "forget job: {end:?}");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(database = %db, "forget worker: {e}");
                        if session.client.is_closed() {
                            sessions.remove(&db);
                            continue;
                        }
                    }
                }
                // Completion callbacks of jobs that ended (here or in another process), and
                // retries that are due.
                if let Some(d) = &state.callback {
                    if let Err(e) = callback::deliver_due(&session.client, d).await {
                        tracing::warn!(database = %db, "forget worker: callbacks: {e}");
                        if session.client.is_closed() {
                            sessions.remove(&db);
                        }
                    }
                }
            }
            tokio::select! {
                _ = state.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    })
}
