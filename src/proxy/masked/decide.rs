//! Deciding one statement of a masked session: the snapshot that is fresh enough for it (or a
//! refusal), the rewrite cache, and the session's search path.

use crate::proxy::database::DbState;
use crate::proxy::shared::Shared;
use crate::rewrite::search_path::PathChange;
use crate::rewrite::{Decision, Refusal, RefusalKind};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// What the client half of a masked session asks for every statement it reads. The proxy's is
/// [`DbDecider`]; the unit tests decide with the rewriter over a fixture catalog.
pub(crate) trait Decide: Send + Sync {
    /// The decision for `sql`, which arrived by `t0`, in a session on search path `path`.
    fn decide(
        &self,
        sql: &str,
        t0: Instant,
        path: &SessionPath,
    ) -> impl Future<Output = Arc<Decision>> + Send;

    /// What the audit log resolves this session's statements against.
    fn audit_resolve(&self, path: &SessionPath) -> crate::audit::Resolve;
}

/// Decides on the database's current snapshot (see [`Decide`]).
pub(crate) struct DbDecider {
    pub(crate) shared: Arc<Shared>,
    pub(crate) db: Arc<DbState>,
}

impl Decide for DbDecider {
    fn audit_resolve(&self, path: &SessionPath) -> crate::audit::Resolve {
        crate::audit::Resolve {
            snapshot: self.db.snapshot(),
            search_path: path.schemas.as_slice().into(),
        }
    }

    async fn decide(&self, sql: &str, t0: Instant, path: &SessionPath) -> Arc<Decision> {
        let (shared, db) = (&self.shared, &self.db);
        // The statement arrived by `t0`: decide it on a snapshot that includes every DDL
        // committed before then, or refuse.
        let snap = match db.current_snapshot(shared, t0).await {
            Ok(s) => s,
            Err(e) => {
                return refuse(RefusalKind::CatalogUnavailable, format!("pgredact: {e}"));
            }
        };
        if let Some(why) = &snap.wall_refusal {
            return refuse(RefusalKind::WallBroken, format!("pgredact: {why}"));
        }
        let (d, unknown) = snap.decide(sql, path.id, &path.schemas, path.at_start());
        if !unknown {
            return d;
        }
        // A name the snapshot does not know: decide again on a catalog read after this
        // statement arrived (a relation created a moment ago may be a view over PII). Fail
        // closed otherwise.
        match db.refresh_since(shared, t0).await {
            Ok(()) => {
                db.snapshot()
                    .decide(sql, path.id, &path.schemas, path.at_start())
                    .0
            }
            Err(e) => refuse(
                RefusalKind::CatalogUnavailable,
                format!("pgredact: the statement names an object pgredact does not know and the catalog could not be re-read: {e}"),
            ),
        }
    }
}

fn refuse(kind: RefusalKind, message: String) -> Arc<Decision> {
    Arc::new(Decision::Refuse(Refusal {
        kind,
        message,
        hint: None,
    }))
}

/// How `sql` changes the session's search path (see [`search_path_change`]), except a return to
/// the path the session started with while it is still on it: nothing changes, and the rewriter
/// decides the statement (`RESET ALL` and `DISCARD ALL` pass then, also within other statements
/// or a transaction block).
///
/// [`search_path_change`]: crate::rewrite::search_path::search_path_change
pub(crate) fn path_change(sql: &str, path: &SessionPath) -> Option<Result<PathChange, Refusal>> {
    let set = sql
        .trim_start()
        .get(..3)
        .is_some_and(|w| w.eq_ignore_ascii_case("set"));
    match crate::rewrite::search_path::search_path_change(sql) {
        // RESET ALL, RESET search_path, DISCARD ALL (a SET of search_path stays analysed here).
        Some(Ok(PathChange::Reset)) if path.at_start() && !set => None,
        other => other,
    }
}

/// The session's search path as `current_schemas(true)` lists it, and its id in the rewrite
/// cache's key.
pub(crate) struct SessionPath {
    pub(crate) schemas: Vec<String>,
    /// The path the session started with: what `RESET ALL`, `DISCARD ALL`, `RESET search_path`
    /// and `SET search_path TO DEFAULT` return to.
    pub(crate) initial: Vec<String>,
    /// `schemas` is `initial` (kept with the path: every statement's decision asks).
    pub(crate) at_start: bool,
    pub(crate) id: u64,
    /// The session user (`$user` in a search path).
    pub(crate) user: String,
}

impl SessionPath {
    pub(crate) fn new(schemas: Vec<String>, user: String) -> SessionPath {
        let mut p = SessionPath {
            schemas: Vec::new(),
            initial: schemas.clone(),
            at_start: true,
            id: 0,
            user,
        };
        p.set(schemas);
        p
    }

    pub(crate) fn set(&mut self, schemas: Vec<String>) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        schemas.hash(&mut h);
        // Decisions differ between a path that is the session's first and the same path set
        // later (RESET ALL passes only for the first).
        self.at_start = schemas == self.initial;
        self.at_start.hash(&mut h);
        self.id = h.finish();
        self.schemas = schemas;
    }

    pub(crate) fn at_start(&self) -> bool {
        self.at_start
    }

    pub(crate) fn reset(&mut self) {
        self.set(self.initial.clone());
    }
}
