//! Process-wide state: the current policy set, one entry per database (control-plane connection,
//! catalog snapshot, protections, rewrite cache), and the cancel-key map.

use crate::catalog::Catalog;
use crate::config::Config;
use crate::policy::{DatabasePolicy, PolicySet};
use crate::rewrite::{self, Decision, Protections, SessionCtx};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio_postgres::{Client, NoTls};

/// Rewrites cached per snapshot; cleared when the snapshot changes.
const CACHE_LIMIT: usize = 20_000;
/// Stack for one cold rewrite.
const REWRITE_STACK: usize = 64 * 1024 * 1024;

pub struct Shared {
    pub cfg: Config,
    pub policies: RwLock<Arc<PolicySet>>,
    dbs: tokio::sync::Mutex<HashMap<String, Arc<DbState>>>,
    /// Client-facing (pid, key) -> upstream (pid, key).
    pub cancels: Mutex<HashMap<(i32, i32), (i32, i32)>>,
}

/// What masked sessions of one database consult for every statement.
pub struct Snapshot {
    pub policy: Option<Arc<DatabasePolicy>>,
    pub policy_version: u64,
    pub prot: Protections,
    /// search-path id -> SQL text -> decision.
    cache: RwLock<HashMap<u64, HashMap<String, Arc<Decision>>>>,
}

pub struct DbState {
    pub name: String,
    control: tokio::sync::Mutex<Option<Client>>,
    catalog: RwLock<Arc<Catalog>>,
    snapshot: RwLock<Arc<Snapshot>>,
    last_refresh: Mutex<Instant>,
}

impl Shared {
    pub fn new(cfg: Config, policies: PolicySet) -> Arc<Shared> {
        Arc::new(Shared {
            cfg,
            policies: RwLock::new(Arc::new(policies)),
            dbs: tokio::sync::Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
        })
    }

    pub fn policy_set(&self) -> Arc<PolicySet> {
        match self.policies.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Opens a control-plane connection to `db`.
    pub async fn control_connect(&self, db: &str) -> Result<Client, String> {
        let u = &self.cfg.upstream;
        let mut c = tokio_postgres::Config::new();
        c.host(&u.host).port(u.port).user(&u.user).dbname(db);
        c.application_name("pgredact-control");
        if let Some(p) = self.cfg.upstream_password() {
            c.password(p);
        }
        let (client, conn) = c
            .connect(NoTls)
            .await
            .map_err(|e| format!("control-plane connection to database {db:?} failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("control connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// The state of database `db`, connecting and loading its catalog on first use.
    pub async fn db(self: &Arc<Self>, db: &str) -> Result<Arc<DbState>, String> {
        let mut dbs = self.dbs.lock().await;
        if let Some(d) = dbs.get(db) {
            return Ok(d.clone());
        }
        let client = self.control_connect(db).await?;
        let policy = self.policy_set().get(db);
        if policy.as_ref().is_some_and(|p| p.uses_hash()) || policy.is_some() {
            let key = self.cfg.hash_key();
            if let Err(e) = crate::control::ensure(&client, key.as_deref()).await {
                tracing::warn!("database {db}: could not install the pgredact control schema: {e}");
            }
        }
        let catalog = Catalog::load(&client)
            .await
            .map_err(|e| format!("reading the catalog of {db:?} failed: {e}"))?;
        let catalog = Arc::new(catalog);
        let set = self.policy_set();
        let st = Arc::new(DbState {
            name: db.to_string(),
            control: tokio::sync::Mutex::new(Some(client)),
            snapshot: RwLock::new(Arc::new(build_snapshot(
                set.get(db),
                set.version,
                catalog.clone(),
            ))),
            catalog: RwLock::new(catalog),
            last_refresh: Mutex::new(Instant::now()),
        });
        dbs.insert(db.to_string(), st.clone());
        Ok(st)
    }

    pub async fn all_dbs(&self) -> Vec<Arc<DbState>> {
        self.dbs.lock().await.values().cloned().collect()
    }

    /// Installs a new policy set and rebuilds every database's snapshot.
    pub async fn set_policies(&self, set: PolicySet) {
        let set = Arc::new(set);
        match self.policies.write() {
            Ok(mut g) => *g = set.clone(),
            Err(p) => *p.into_inner() = set.clone(),
        }
        for d in self.all_dbs().await {
            d.rebuild(&set);
        }
    }
}

/// Builds a snapshot (protections for masked sessions plus an empty rewrite cache).
pub fn build_snapshot(
    policy: Option<Arc<DatabasePolicy>>,
    version: u64,
    catalog: Arc<Catalog>,
) -> Snapshot {
    let prot = match &policy {
        Some(p) => Protections::build(p, catalog),
        None => Protections {
            catalog,
            ..Default::default()
        },
    };
    for w in &prot.warnings {
        tracing::warn!("{w}");
    }
    Snapshot {
        policy,
        policy_version: version,
        prot,
        cache: RwLock::new(HashMap::new()),
    }
}

impl DbState {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn rebuild(&self, set: &PolicySet) {
        let snap = Arc::new(build_snapshot(
            set.get(&self.name),
            set.version,
            self.catalog(),
        ));
        match self.snapshot.write() {
            Ok(mut g) => *g = snap,
            Err(p) => *p.into_inner() = snap,
        }
    }

    /// Re-reads the catalog and rebuilds the snapshot. Reconnects the control connection if needed.
    pub async fn refresh(&self, shared: &Shared) -> Result<(), String> {
        self.refresh_since(shared, Instant::now()).await
    }

    /// Makes sure the snapshot reflects the database as of `t0` or later: refreshes unless a
    /// refresh that started after `t0` already completed (concurrent callers share one load).
    pub async fn refresh_since(&self, shared: &Shared, t0: Instant) -> Result<(), String> {
        let mut guard = self.control.lock().await;
        let fresh = self.last_refresh.lock().map(|t| *t >= t0).unwrap_or(false);
        if fresh {
            return Ok(());
        }
        let started = Instant::now();
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(shared.control_connect(&self.name).await?);
        }
        let Some(client) = guard.as_ref() else {
            return Err("no control connection".into());
        };
        let cat = Catalog::load(client)
            .await
            .map_err(|e| format!("catalog refresh of {:?} failed: {e}", self.name))?;
        match self.catalog.write() {
            Ok(mut g) => *g = Arc::new(cat),
            Err(p) => *p.into_inner() = Arc::new(cat),
        }
        self.rebuild(&shared.policy_set());
        if let Ok(mut t) = self.last_refresh.lock() {
            *t = started;
        }
        drop(guard);
        Ok(())
    }

    /// Whether `user` is a member (direct or inherited) of an unmasked role, or a superuser.
    pub async fn is_unmasked(&self, shared: &Shared, user: &str) -> Result<bool, String> {
        let roles: Vec<String> = self
            .snapshot()
            .policy
            .as_ref()
            .map(|p| p.unmasked_roles.clone())
            .unwrap_or_default();
        let mut guard = self.control.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(shared.control_connect(&self.name).await?);
        }
        let Some(client) = guard.as_ref() else {
            return Err("no control connection".into());
        };
        let row = client
            .query_opt(
                "SELECT r.rolsuper OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles u \
                    WHERE u.rolname = ANY($2::text[]) AND pg_catalog.pg_has_role(r.oid, u.oid, 'MEMBER')) \
                 FROM pg_catalog.pg_roles r WHERE r.rolname = $1::text",
                &[&user, &roles],
            )
            .await
            .map_err(|e| format!("role lookup failed: {e}"))?;
        Ok(row.map(|r| r.get::<_, bool>(0)).unwrap_or(false))
    }
}

impl Snapshot {
    /// The decision for `sql` in a session with this search path, cached.
    pub fn decide(&self, sql: &str, path_id: u64, search_path: &[String]) -> (Arc<Decision>, bool) {
        if let Ok(c) = self.cache.read() {
            if let Some(d) = c.get(&path_id).and_then(|m| m.get(sql)) {
                return (d.clone(), false);
            }
        }
        // The parser bounds nesting, but cloning, displaying and comparing a deep AST recurse
        // too: run the rewrite on its own large stack so no statement can overflow a worker's.
        let out = stacker::grow(REWRITE_STACK, || {
            rewrite::rewrite(
                sql,
                &SessionCtx {
                    prot: &self.prot,
                    search_path,
                },
            )
        });
        let d = Arc::new(out.decision);
        if !out.unknown_names {
            if let Ok(mut c) = self.cache.write() {
                let m = c.entry(path_id).or_default();
                if m.len() >= CACHE_LIMIT {
                    m.clear();
                }
                m.insert(sql.to_string(), d.clone());
            }
        }
        (d, out.unknown_names)
    }
}
