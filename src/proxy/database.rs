//! The state of one database: its control-plane connection, catalog snapshot, protections and
//! rewrite cache, the freshness gate, and the DDL watch that keeps them current.

use super::error::Error;
use super::shared::Shared;
use crate::catalog::Catalog;
use crate::control::{Freshness, FRESHNESS_SQL};
use crate::policy::{DatabasePolicy, Enforcement, PolicySet};
use crate::rewrite::{self, Decision, Protections, SessionCtx};
use crate::sync::{lock, read, write};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio_postgres::{Client, Statement};

/// Source of snapshot epochs (unique per built snapshot, process-wide).
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// Rewrites cached per snapshot; cleared when the snapshot changes.
const CACHE_LIMIT: usize = 20_000;
/// Stack for one cold rewrite.
const REWRITE_STACK: usize = 64 * 1024 * 1024;

/// What masked sessions of one database consult for every statement.
pub struct Snapshot {
    pub policy: Option<Arc<DatabasePolicy>>,
    /// Why masked sessions are refused outright (the database fails the privilege check, or
    /// pgredact_admin is missing), under `enforcement = "database"`.
    pub wall_refusal: Option<String>,
    pub policy_version: u64,
    /// The catalog generation read before the catalog this snapshot was built from (None: the
    /// DDL watch was missing then).
    pub ddl_generation: Option<i64>,
    /// Unique per snapshot: a decision taken under one epoch is known to be current while the
    /// snapshot stays in force.
    pub epoch: u64,
    pub prot: Protections,
    /// search-path id -> SQL text -> decision.
    cache: RwLock<HashMap<u64, HashMap<String, Arc<Decision>>>>,
}

pub struct DbState {
    pub name: String,
    control: tokio::sync::Mutex<Option<Client>>,
    /// A second connection for freshness readings, so they never queue behind a catalog load.
    gate: tokio::sync::Mutex<Option<(Client, Statement)>>,
    /// The latest freshness reading and when its query was sent.
    last_reading: Mutex<Option<(Instant, Arc<Freshness>)>>,
    /// Roles with open unmasked sessions (with a count): every reading asks whether they are
    /// still exempt.
    unmasked_users: Mutex<HashMap<String, usize>>,
    /// The catalog and the DDL generation read just before it.
    catalog: RwLock<(Arc<Catalog>, Option<i64>)>,
    /// Relations protected so far (oid -> policy table), also kept in
    /// `pgredact.protected_relations`: one that leaves the policy's reach while the policy still
    /// lists its table (renamed, moved, detached) stays refused.
    history: Mutex<HashMap<u32, String>>,
    /// The wall's state at the last catalog read (None: intact).
    wall: Mutex<Option<String>>,
    snapshot: RwLock<Arc<Snapshot>>,
    last_refresh: Mutex<Instant>,
    /// The live instances serving this database, at the last registry reading (`peers`).
    instances: Mutex<Vec<super::peers::Instance>>,
}

/// Builds a snapshot (protections for masked sessions plus an empty rewrite cache).
pub fn build_snapshot(
    policy: Option<Arc<DatabasePolicy>>,
    version: u64,
    catalog: Arc<Catalog>,
    ddl_generation: Option<i64>,
    formerly: &HashMap<u32, String>,
    wall_refusal: Option<String>,
) -> Snapshot {
    let prot = match &policy {
        Some(p) => Protections::build_with_history(p, catalog, formerly),
        None => Protections {
            catalog,
            ..Default::default()
        },
    };
    for w in &prot.warnings {
        tracing::warn!("{w}");
    }
    let wall_refusal = match policy.as_deref().map(|p| p.enforcement) {
        Some(Enforcement::Database) => wall_refusal,
        _ => None,
    };
    Snapshot {
        policy,
        wall_refusal,
        policy_version: version,
        ddl_generation,
        epoch: EPOCH.fetch_add(1, Ordering::Relaxed),
        prot,
        cache: RwLock::new(HashMap::new()),
    }
}

impl DbState {
    /// Connects to database `db` and reads it for the first time (installing the control schema
    /// and publishing the policy, as a refresh after a policy change does), then starts its DDL
    /// watch and registers this instance there.
    pub(super) async fn load(shared: &Arc<Shared>, db: &str) -> Result<Arc<DbState>, Error> {
        let client = shared.control_connect(db).await?;
        let set = shared.policy_set();
        let policy = set.get(db);
        if policy.is_some() {
            let key = shared.cfg.hash_key();
            if let Err(e) = crate::control::ensure(&client, key.as_deref()).await {
                tracing::warn!("database {db}: could not install the pgredact control schema: {e}");
            }
        }
        let st = Arc::new(DbState {
            name: db.to_string(),
            control: tokio::sync::Mutex::new(None),
            gate: tokio::sync::Mutex::new(None),
            last_reading: Mutex::new(None),
            unmasked_users: Mutex::new(HashMap::new()),
            snapshot: RwLock::new(Arc::new(build_snapshot(
                None,
                set.version,
                Arc::new(Catalog::default()),
                None,
                &HashMap::new(),
                None,
            ))),
            catalog: RwLock::new((Arc::new(Catalog::default()), None)),
            history: Mutex::new(HashMap::new()),
            wall: Mutex::new(None),
            last_refresh: Mutex::new(Instant::now()),
            instances: Mutex::new(Vec::new()),
        });
        // The first read is a refresh with a publish, on the connection just opened.
        let mut guard = st.control.lock().await;
        *guard = Some(client);
        let r = st.reload(guard, shared, true).await;
        crate::metrics::catalog_refresh(r.is_ok());
        r?;
        if st.snapshot().ddl_generation.is_none() {
            tracing::warn!(
                "database {db}: the DDL watch (event trigger {}) is not installed or is disabled; {}",
                crate::control::DDL_TRIGGER,
                if shared.cfg.per_statement_freshness {
                    "masked statements are refused until a superuser runs the output of `pgredact setup-sql`"
                } else {
                    "DDL is seen only at the periodic catalog refresh"
                }
            );
        }
        if policy.is_some() {
            tokio::spawn(listen_ddl(shared.clone(), st.clone()));
        }
        st.heartbeat(shared).await;
        Ok(st)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        read(&self.snapshot).clone()
    }

    fn catalog(&self) -> (Arc<Catalog>, Option<i64>) {
        read(&self.catalog).clone()
    }

    pub(super) fn rebuild(&self, set: &PolicySet) {
        let (catalog, generation) = self.catalog();
        let policy = set.get(&self.name);
        let formerly = formerly_protected(&lock(&self.history), policy.as_deref(), &catalog);
        let wall = lock(&self.wall).clone();
        let snap = Arc::new(build_snapshot(
            policy,
            set.version,
            catalog,
            generation,
            &formerly,
            wall,
        ));
        *write(&self.snapshot) = snap;
    }

    /// The periodic refresh: skipped while the DDL watch shows no DDL committed since the
    /// snapshot was read (so rewrite caches stay warm), a full re-read otherwise.
    pub async fn periodic_refresh(&self, shared: &Shared) -> Result<(), Error> {
        let now = Instant::now();
        if let Ok(f) = self.freshness_since(shared, now).await {
            if f.ddl_generation.is_some() && f.ddl_generation == self.snapshot().ddl_generation {
                // Role memberships and attributes fire no DDL trigger: the privilege check runs
                // again anyway, and the snapshot changes only when its verdict does.
                return self.recheck_wall(shared).await;
            }
        }
        self.refresh_since(shared, now).await
    }

    /// Runs the privilege check again (under database enforcement) and rebuilds the snapshot
    /// when its verdict changed.
    async fn recheck_wall(&self, shared: &Shared) -> Result<(), Error> {
        let set = shared.policy_set();
        let Some(policy) = set.get(&self.name) else {
            return Ok(());
        };
        if policy.enforcement != Enforcement::Database {
            return Ok(());
        }
        let guard = self.control.lock().await;
        let Some(client) = guard.as_ref().filter(|c| !c.is_closed()) else {
            drop(guard);
            return self.refresh_since(shared, Instant::now()).await;
        };
        let wall = wall_status(client, &policy, &shared.cfg.upstream.user, None).await;
        drop(guard);
        if self.set_wall(wall) {
            self.rebuild(&set);
        }
        Ok(())
    }

    /// Records the privilege check's verdict, logging it when it changed; returns whether it did.
    fn set_wall(&self, wall: Option<String>) -> bool {
        let mut cur = lock(&self.wall);
        if *cur == wall {
            return false;
        }
        match &wall {
            Some(w) => tracing::warn!("database {}: masked sessions are refused: {w}", self.name),
            None => tracing::info!("database {}: the privilege check passes", self.name),
        }
        *cur = wall;
        true
    }

    /// Makes sure the snapshot reflects the database as of `t0` or later: refreshes unless a
    /// refresh that started after `t0` already completed (concurrent callers share one load).
    pub async fn refresh_since(&self, shared: &Shared, t0: Instant) -> Result<(), Error> {
        self.refresh(shared, t0, false).await
    }

    /// `refresh_since`, publishing the policy to the database first (after a policy change).
    pub async fn refresh_with_publish(&self, shared: &Shared, t0: Instant) -> Result<(), Error> {
        self.refresh(shared, t0, true).await
    }

    async fn refresh(
        &self,
        shared: &Shared,
        t0: Instant,
        publish_first: bool,
    ) -> Result<(), Error> {
        let guard = self.control.lock().await;
        let fresh = *lock(&self.last_refresh) >= t0;
        if fresh {
            return Ok(());
        }
        let r = self.reload(guard, shared, publish_first).await;
        crate::metrics::catalog_refresh(r.is_ok());
        r
    }

    /// `refresh` once it is known to be needed, under the control connection's lock.
    async fn reload(
        &self,
        mut guard: tokio::sync::MutexGuard<'_, Option<Client>>,
        shared: &Shared,
        publish_first: bool,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let client = connected(&mut guard, shared, &self.name).await?;
        let set = shared.policy_set();
        let policy = set.get(&self.name);
        if let Err(e) = super::peers::register(client, &shared.identity, policy.as_deref()).await {
            tracing::debug!(
                "database {}: recording this instance in pgredact.instances failed: {e}",
                self.name
            );
        }
        let mut wall_err = match (&policy, publish_first) {
            (Some(p), true) => publish(client, p, &self.name).await,
            _ => None,
        };
        let mut generation = read_generation(client).await;
        let mut cat = Catalog::load(client)
            .await
            .map_err(|source| Error::Catalog {
                db: self.name.clone(),
                source,
            })?;
        if let (Some(p), false) = (&policy, publish_first) {
            // A relation became protected, or its columns changed, and the DDL trigger did not
            // (yet) build its view: have the database build it now, then read the catalog again.
            // Unless the views follow another live instance's policy: that instance published
            // it last, and overwriting it would make the two rebuild each other's views
            // forever. Relations whose masks differ stay refused here until the policies agree.
            if Protections::build(p, Arc::new(cat.clone())).views_stale
                && !self.published_elsewhere(client, shared, p).await
            {
                wall_err = publish(client, p, &self.name).await;
                generation = read_generation(client).await;
                cat = Catalog::load(client)
                    .await
                    .map_err(|source| Error::Catalog {
                        db: self.name.clone(),
                        source,
                    })?;
            }
        }
        let wall = match &policy {
            Some(p) => wall_status(client, p, &shared.cfg.upstream.user, wall_err).await,
            None => None,
        };
        self.set_wall(wall);
        let known = lock(&self.history).clone();
        let history = update_history(
            client,
            &shared.identity,
            set.get(&self.name).as_deref(),
            &cat,
            known,
        )
        .await;
        *lock(&self.history) = history;
        *write(&self.catalog) = (Arc::new(cat), generation);
        self.rebuild(&set);
        *lock(&self.last_refresh) = started;
        drop(guard);
        Ok(())
    }

    /// A freshness reading whose query was sent at or after `t0`. Concurrent callers share
    /// readings: while one is in flight the others wait, and the first of them to run next
    /// takes a new one that serves them all.
    pub async fn freshness_since(
        &self,
        shared: &Shared,
        t0: Instant,
    ) -> Result<Arc<Freshness>, Error> {
        if let Some(f) = self.reading_after(t0) {
            return Ok(f);
        }
        let mut gate = self.gate.lock().await;
        if let Some(f) = self.reading_after(t0) {
            return Ok(f);
        }
        let started = Instant::now();
        let (client, st) = match gate.take() {
            Some((c, st)) if !c.is_closed() => gate.insert((c, st)),
            _ => {
                let c = shared.control_connect(&self.name).await?;
                let st = c.prepare(FRESHNESS_SQL).await.map_err(Error::Freshness)?;
                gate.insert((c, st))
            }
        };
        let asked: Vec<String> = lock(&self.unmasked_users).keys().cloned().collect();
        let exempt_roles: Vec<String> = self
            .snapshot()
            .policy
            .as_ref()
            .map(|p| p.unmasked_roles.clone())
            .unwrap_or_default();
        let row = match client.query_one(&*st, &[&asked, &exempt_roles]).await {
            Ok(r) => r,
            Err(e) => {
                *gate = None;
                return Err(Error::Freshness(e));
            }
        };
        let f = Arc::new(Freshness {
            ddl_generation: row.get(0),
            asked,
            exempt: row.get(1),
        });
        *lock(&self.last_reading) = Some((started, f.clone()));
        Ok(f)
    }

    /// Registers an open unmasked session of `user` (readings ask about it until the guard drops).
    pub fn track_unmasked(self: &Arc<Self>, user: &str) -> UnmaskedGuard {
        *lock(&self.unmasked_users)
            .entry(user.to_string())
            .or_default() += 1;
        UnmaskedGuard {
            db: self.clone(),
            user: user.to_string(),
        }
    }

    fn reading_after(&self, t0: Instant) -> Option<Arc<Freshness>> {
        let l = lock(&self.last_reading);
        l.as_ref().filter(|(t, _)| *t >= t0).map(|(_, f)| f.clone())
    }

    /// The snapshot to decide a statement that arrived at `t0` on: one that reflects every DDL
    /// committed before `t0` (re-reading the catalog when the generation moved). Errors when
    /// that cannot be shown (the DDL watch is missing and per-statement freshness is on, or the
    /// database cannot be reached): the caller refuses.
    pub async fn current_snapshot(
        &self,
        shared: &Shared,
        t0: Instant,
    ) -> Result<Arc<Snapshot>, Error> {
        let snap = self.snapshot();
        let proxy_enforced = snap
            .policy
            .as_deref()
            .is_some_and(|p| p.enforcement == Enforcement::Proxy);
        // Under database enforcement a stale decision cannot return raw data (PostgreSQL checks
        // the privileges at every statement): the DDL trigger's notification refreshes the
        // catalog, and no statement waits for a reading.
        if !shared.cfg.per_statement_freshness || !proxy_enforced {
            return Ok(snap);
        }
        let f = self.freshness_since(shared, t0).await?;
        let Some(generation) = f.ddl_generation else {
            return Err(Error::NoDdlWatch {
                trigger: crate::control::DDL_TRIGGER,
                db: self.name.clone(),
            });
        };
        let snap = self.snapshot();
        if snap.ddl_generation == Some(generation) {
            return Ok(snap);
        }
        self.refresh_since(shared, t0).await?;
        Ok(self.snapshot())
    }

    /// Whether the policy published in the database is another live instance's (then this
    /// instance leaves the masking views as they are). Logged when it is.
    async fn published_elsewhere(
        &self,
        client: &Client,
        shared: &Shared,
        policy: &DatabasePolicy,
    ) -> bool {
        match super::peers::published_by_other(client, &shared.identity, &policy.fingerprint())
            .await
        {
            Ok(Some((other, fp))) => {
                tracing::warn!(
                    "database {}: the masking views follow the policy of instance {other} (fingerprint {fp}); this instance's policy has fingerprint {}: masked reads of the tables whose masks differ are refused here until both run the same policy",
                    self.name,
                    policy.fingerprint()
                );
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(
                    "database {}: reading pgredact.instances failed: {e}",
                    self.name
                );
                false
            }
        }
    }

    /// Records this instance in the registry and reads the live instances (for `/metrics`,
    /// `pgredact check` and the log). Runs at every periodic refresh.
    pub async fn heartbeat(&self, shared: &Shared) {
        let guard = self.control.lock().await;
        let Some(client) = guard.as_ref().filter(|c| !c.is_closed()) else {
            return;
        };
        let policy = shared.policy_set().get(&self.name);
        let read = async {
            super::peers::register(client, &shared.identity, policy.as_deref()).await?;
            super::peers::live(client).await
        };
        let live = match read.await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("database {}: the instance registry: {e}", self.name);
                return;
            }
        };
        drop(guard);
        let own = policy.map(|p| p.fingerprint()).unwrap_or_default();
        let disagree = super::peers::disagreements(&live, &shared.identity, &own);
        let mut by_fp: std::collections::BTreeMap<String, i64> = Default::default();
        for i in &live {
            *by_fp
                .entry(i.fingerprint.clone().unwrap_or_else(|| "none".into()))
                .or_default() += 1;
        }
        crate::metrics::instances(
            &self.name,
            &by_fp.into_iter().collect::<Vec<_>>(),
            disagree.len(),
        );
        let mut cur = lock(&self.instances);
        let before = super::peers::disagreements(&cur, &shared.identity, &own);
        if before != disagree && !disagree.is_empty() {
            tracing::warn!(
                "database {}: instances with another policy than this one ({own}): {}",
                self.name,
                disagree.join(", ")
            );
        }
        *cur = live;
    }

    /// The live instances at the last registry reading.
    pub fn instances(&self) -> Vec<super::peers::Instance> {
        lock(&self.instances).clone()
    }

    /// Removes this instance from the registry (at shutdown).
    pub async fn unregister(&self, shared: &Shared) {
        let guard = self.control.lock().await;
        if let Some(client) = guard.as_ref().filter(|c| !c.is_closed()) {
            if let Err(e) = super::peers::unregister(client, &shared.identity).await {
                tracing::debug!("database {}: leaving the instance registry: {e}", self.name);
            }
        }
    }

    /// Prunes the DDL log when it has grown (the generation does not change).
    pub async fn prune_ddl_log(&self) {
        let guard = self.control.lock().await;
        let Some(client) = guard.as_ref() else { return };
        let n = client
            .query_one("SELECT pg_catalog.count(*) FROM pgredact.ddl_log", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        if n > 1000 {
            if let Err(e) = client.execute(crate::control::PRUNE_SQL, &[]).await {
                tracing::debug!("pruning the DDL log failed: {e}");
            }
        }
    }

    /// The SCRAM verifier of `user` through `pgredact_admin.auth_verifier` (installed by
    /// setup-sql): None when the role has none pgredact may read. The text is a secret: callers
    /// never log it. Errors say why the function could not answer (missing, not granted...).
    pub async fn auth_verifier(
        &self,
        shared: &Shared,
        user: &str,
    ) -> Result<Option<String>, Error> {
        let mut guard = self.control.lock().await;
        let client = connected(&mut guard, shared, &self.name).await?;
        let row = client
            .query_one("SELECT pgredact_admin.auth_verifier($1::name)", &[&user])
            .await
            .map_err(|e| Error::Verifier(crate::tls::error_chain(&e)))?;
        row.try_get::<_, Option<String>>(0)
            .map_err(|e| Error::Verifier(e.to_string()))
    }

    /// Whether `user` is a member (direct or inherited) of an unmasked role, or a superuser.
    pub async fn is_unmasked(&self, shared: &Shared, user: &str) -> Result<bool, Error> {
        let roles: Vec<String> = self
            .snapshot()
            .policy
            .as_ref()
            .map(|p| p.unmasked_roles.clone())
            .unwrap_or_default();
        let mut guard = self.control.lock().await;
        let client = connected(&mut guard, shared, &self.name).await?;
        let row = client
            .query_opt(
                "SELECT r.rolsuper OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles u \
                    WHERE u.rolname = ANY($2::text[]) AND pg_catalog.pg_has_role(r.oid, u.oid, 'MEMBER')) \
                 FROM pg_catalog.pg_roles r WHERE r.rolname = $1::text",
                &[&user, &roles],
            )
            .await
            .map_err(Error::RoleLookup)?;
        Ok(row.map(|r| r.get::<_, bool>(0)).unwrap_or(false))
    }
}

/// Keeps a role in the freshness readings while one of its unmasked sessions is open.
pub struct UnmaskedGuard {
    db: Arc<DbState>,
    user: String,
}

impl Drop for UnmaskedGuard {
    fn drop(&mut self) {
        let mut m = lock(&self.db.unmasked_users);
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// Relations in `history` that the policy no longer reaches although it still lists the table
/// they were protected as, and that still exist.
fn formerly_protected(
    history: &HashMap<u32, String>,
    policy: Option<&DatabasePolicy>,
    catalog: &Catalog,
) -> HashMap<u32, String> {
    let Some(policy) = policy else {
        return HashMap::new();
    };
    let current = crate::rewrite::protect::policy_relations(policy, catalog);
    history
        .iter()
        .filter(|(oid, was)| {
            !current.contains_key(*oid)
                && catalog.relations.contains_key(*oid)
                && policy.tables.values().any(|t| t.qualified() == **was)
        })
        .map(|(o, w)| (*o, w.clone()))
        .collect()
}

/// Merges the recorded history with `known`, records what is protected now plus what left the
/// policy's reach, and returns that. A database error is logged and leaves the record as it was.
async fn update_history(
    client: &Client,
    me: &super::peers::Identity,
    policy: Option<&DatabasePolicy>,
    catalog: &Catalog,
    mut known: HashMap<u32, String>,
) -> HashMap<u32, String> {
    let Some(p) = policy else {
        return known;
    };
    match crate::control::protection_history(client).await {
        Ok(stored) => {
            for (o, w) in stored {
                known.entry(o).or_insert(w);
            }
        }
        Err(e) => tracing::warn!("reading pgredact.protected_relations failed: {e}"),
    }
    let current = crate::rewrite::protect::policy_relations(p, catalog);
    let orphans = formerly_protected(&known, Some(p), catalog);
    let keep: Vec<u32> = orphans.keys().copied().collect();
    if let Err(e) = crate::control::record_protection(client, &me.name, &current, &keep).await {
        tracing::warn!(
            "recording pgredact.protected_relations failed: {}",
            crate::tls::error_chain(&e)
        );
    }
    let mut out = current;
    out.extend(orphans);
    out
}

/// The catalog generation, or None when the DDL watch is missing, disabled or unreadable.
async fn read_generation(client: &Client) -> Option<i64> {
    let none: Vec<String> = Vec::new();
    match client.query_one(FRESHNESS_SQL, &[&none, &none]).await {
        Ok(r) => r.get(0),
        Err(e) => {
            tracing::debug!("reading the catalog generation failed: {e}");
            None
        }
    }
}

impl Snapshot {
    /// The decision for `sql` in a session with this search path, cached (`path_id` tells
    /// apart both the path and whether it is the session's first).
    pub fn decide(
        &self,
        sql: &str,
        path_id: u64,
        search_path: &[String],
        path_at_start: bool,
    ) -> (Arc<Decision>, bool) {
        if let Some(d) = read(&self.cache).get(&path_id).and_then(|m| m.get(sql)) {
            crate::metrics::rewrite_cache(true);
            return (d.clone(), false);
        }
        crate::metrics::rewrite_cache(false);
        let started = Instant::now();
        // The parser bounds nesting, but cloning, displaying and comparing a deep AST recurse
        // too: run the rewrite on its own large stack so no statement can overflow a worker's.
        let out = stacker::grow(REWRITE_STACK, || {
            rewrite::rewrite(
                sql,
                &SessionCtx {
                    prot: &self.prot,
                    search_path,
                    path_at_start,
                },
            )
        });
        crate::metrics::get()
            .rewrite_seconds
            .observe(started.elapsed().as_secs_f64());
        let d = Arc::new(out.decision);
        if !out.unknown_names {
            let mut c = write(&self.cache);
            let m = c.entry(path_id).or_default();
            if m.len() >= CACHE_LIMIT {
                m.clear();
            }
            m.insert(sql.to_string(), d.clone());
        }
        (d, out.unknown_names)
    }
}

/// Publishes the policy to database `db` (see `crate::wall::publish`), logging what the
/// database changed. Returns the error, if any, as the reason masked sessions are refused.
async fn publish(client: &Client, policy: &DatabasePolicy, db: &str) -> Option<String> {
    match crate::wall::publish(client, policy).await {
        Ok(actions) => {
            for a in actions {
                tracing::info!("database {db}: {a}");
            }
            None
        }
        Err(e) => {
            tracing::warn!("database {db}: {e}");
            Some(e)
        }
    }
}

/// How many violations a refusal names.
const VIOLATIONS_SHOWN: usize = 3;

/// Why masked sessions of this database must be refused under database enforcement, or None.
async fn wall_status(
    client: &Client,
    policy: &DatabasePolicy,
    ctl: &str,
    publish_error: Option<String>,
) -> Option<String> {
    if policy.enforcement == Enforcement::Proxy {
        return None;
    }
    if let Some(e) = publish_error {
        return Some(e);
    }
    let findings = match crate::wall::findings(client, policy, ctl).await {
        Ok(f) => f,
        Err(e) => {
            return Some(format!(
                "the privilege check could not run: {}",
                crate::tls::error_chain(&e)
            ))
        }
    };
    let violations: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == "violation")
        .map(crate::wall::Finding::describe)
        .collect();
    if violations.is_empty() {
        return None;
    }
    let mut msg = format!(
        "database {:?} fails the privilege check, so PostgreSQL would not enforce the masks: {}",
        policy.database,
        violations[..violations.len().min(VIOLATIONS_SHOWN)].join("; ")
    );
    if violations.len() > VIOLATIONS_SHOWN {
        msg.push_str(&format!(
            "; and {} more (`pgredact check` lists them)",
            violations.len() - VIOLATIONS_SHOWN
        ));
    }
    msg.push_str("; a superuser must run the output of `pgredact setup-sql`");
    Some(msg)
}

/// Refreshes the catalog of `db` when the DDL trigger says a DDL committed (LISTEN
/// pgredact_ddl), so masked sessions see new masking views without waiting for the periodic
/// refresh. Notifications that arrive during a refresh are served by the next one. Reconnects
/// after errors; the periodic refresh is the backstop.
async fn listen_ddl(shared: Arc<Shared>, db: Arc<DbState>) {
    loop {
        match shared.control_listen(&db.name, "pgredact_ddl").await {
            Ok((_client, mut rx)) => {
                while let Some(()) = rx.recv().await {
                    while rx.try_recv().is_ok() {}
                    if let Err(e) = db.refresh_since(&shared, Instant::now()).await {
                        tracing::warn!("{e}");
                    }
                }
            }
            Err(e) => tracing::debug!("database {}: LISTEN failed: {e}", db.name),
        }
        tokio::time::sleep(std::time::Duration::from_secs(
            shared.cfg.catalog_refresh_secs.max(1),
        ))
        .await;
    }
}

/// The control connection in `slot`, opened again when it is missing or closed.
async fn connected<'g>(
    slot: &'g mut Option<Client>,
    shared: &Shared,
    db: &str,
) -> Result<&'g Client, Error> {
    match slot.take() {
        Some(c) if !c.is_closed() => Ok(slot.insert(c)),
        _ => Ok(slot.insert(shared.control_connect(db).await?)),
    }
}
