//! The server's state: configuration, token, keys, policies, the probes' connections.

use super::*;

/// Shared state of the admin server.
#[derive(Clone)]
pub struct AdminState {
    pub cfg: Arc<Config>,
    pub token: Arc<String>,
    /// The last good policy set; re-read from the policy directory on every request (a broken
    /// file is logged and the last good set stays, as in the proxy).
    pub policies: Arc<std::sync::RwLock<Arc<PolicySet>>>,
    pub hash_key: Option<Arc<Vec<u8>>>,
    /// Wakes the job worker when a job is submitted.
    pub wake: Arc<Notify>,
    /// IDs per batch of API jobs.
    pub batch_size: usize,
    /// The proxy of this process, when it runs one (metrics and readiness read it).
    pub proxy: Option<Arc<Shared>>,
    /// What `/metrics` and `/readyz` keep between requests.
    pub(super) probes: Arc<Probes>,
    /// Concurrency and rate limits of `/v1`.
    pub(super) limits: Arc<guard::Limits>,
    /// The key receipts are signed with (`[admin] receipt_key_env`), and that variable's name.
    pub(super) receipt_key: Option<Arc<Vec<u8>>>,
    pub(super) receipt_key_env: Arc<String>,
    /// Signs and sends completion callbacks; None without a key (`[admin] callback_key_env`,
    /// else the receipt key): requests with a `callback_url` are then refused.
    pub(super) callback: Option<callback::Deliverer>,
    pub(super) callback_key_env: Arc<String>,
    /// The `/v1` handlers' connections, a few per database, kept between requests.
    pub(super) pool: Arc<pool::Pool>,
}

/// Connections and caches of `/metrics` and `/readyz`.
#[derive(Default)]
pub(super) struct Probes {
    /// The control connection `/readyz` checks PostgreSQL with.
    pub(super) ready: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// Per database: the connection forget job counts are read with, and when they were read;
    /// held through a scrape.
    pub(super) forget: tokio::sync::Mutex<ForgetCounts>,
}

#[derive(Default)]
pub(super) struct ForgetCounts {
    pub(super) clients: HashMap<String, tokio_postgres::Client>,
    pub(super) read_at: Option<std::time::Instant>,
}

impl AdminState {
    /// State from a config: token and hash key from the environment, policies from disk.
    pub fn from_config(cfg: &Config) -> Result<AdminState, Error> {
        let token_env = cfg
            .admin
            .as_ref()
            .map(|a| a.token_env.clone())
            .unwrap_or_else(|| "PGREDACT_ADMIN_TOKEN".to_string());
        let token = std::env::var(&token_env).unwrap_or_default();
        if token.trim().is_empty() {
            return Err(Error::NoToken(token_env));
        }
        let policies = load_dir(&cfg.policies_dir(), 1).map_err(Error::Policy)?;
        let admin = cfg.admin.clone().unwrap_or_default();
        let env_key = |var: &str| {
            std::env::var(var)
                .ok()
                .filter(|k| !k.is_empty())
                .map(|k| Arc::new(k.into_bytes()))
        };
        let receipt_key = env_key(&admin.receipt_key_env);
        let callback = env_key(&admin.callback_key_env)
            .or_else(|| receipt_key.clone())
            .map(|key| {
                let ca = admin.callback_ca.as_ref().map(|p| cfg.base_dir.join(p));
                callback::Deliverer::new(key, admin.callback_attempts, ca.as_deref())
            });
        Ok(AdminState {
            cfg: Arc::new(cfg.clone()),
            token: Arc::new(token),
            policies: Arc::new(std::sync::RwLock::new(Arc::new(policies))),
            hash_key: cfg.hash_key().map(Arc::new),
            wake: Arc::new(Notify::new()),
            batch_size: forget::DEFAULT_BATCH_SIZE,
            proxy: None,
            probes: Arc::new(Probes::default()),
            limits: Arc::new(guard::Limits::new(
                admin.max_concurrent_requests,
                admin.requests_per_minute,
                admin.request_burst,
            )),
            receipt_key,
            receipt_key_env: Arc::new(admin.receipt_key_env.clone()),
            callback,
            callback_key_env: Arc::new(admin.callback_key_env.clone()),
            pool: Arc::new(pool::Pool::default()),
        })
    }

    /// The same state, serving the metrics and readiness of `proxy`.
    pub fn with_proxy(mut self, proxy: Arc<Shared>) -> AdminState {
        self.proxy = Some(proxy);
        self
    }

    /// The current policies. Beside a proxy, the proxy's: one reload mechanism per process
    /// (its poller and SIGHUP, which keep the last good set when a file is broken), so the API
    /// and the masking always follow the same policy. Alone: the directory as it is now, or the
    /// last good set when it is broken.
    pub(super) fn current_policies(&self) -> Arc<PolicySet> {
        if let Some(shared) = &self.proxy {
            return shared.policy_set();
        }
        match load_dir(&self.cfg.policies_dir(), 1) {
            Ok(set) => {
                let set = Arc::new(set);
                *crate::sync::write(&self.policies) = set.clone();
                set
            }
            Err(e) => {
                tracing::error!(
                    "admin API: policy reload failed, keeping the last good policies: {e}"
                );
                crate::sync::read(&self.policies).clone()
            }
        }
    }

    pub(super) fn policy(&self, database: Option<&str>) -> Result<Arc<DatabasePolicy>, ApiError> {
        let policies = self.current_policies();
        match database {
            Some(db) => policies.get(db).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no policy for database {db:?}"),
                )
            }),
            None => {
                let mut dbs = subject_databases(&policies);
                match dbs.len() {
                    1 => Ok(dbs.remove(0)),
                    0 => Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "no policy has a table with a `subject`: nothing to forget".to_string(),
                    )),
                    _ => Err(ApiError::bad(
                        "several databases have subject tables: say which with \"database\" (JSON) or ?database=".to_string(),
                    )),
                }
            }
        }
    }

    /// A new session of its own (the job worker's, kept by the worker).
    pub(super) async fn open_session(
        &self,
        policy: Arc<DatabasePolicy>,
    ) -> Result<Session, ApiError> {
        let target = Target::from_config(&self.cfg, &policy.database);
        Session::open(&target, policy, self.hash_key.as_deref().map(Vec::as_slice))
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }

    /// A pooled session with the policy resolved against the catalog as it is now (for
    /// requests that plan, parse IDs or change jobs).
    pub(super) async fn session(
        &self,
        policy: Arc<DatabasePolicy>,
    ) -> Result<pool::Pooled, ApiError> {
        self.pooled(policy, true).await
    }

    /// A pooled session whose connection is all the caller needs (job status, lists, receipts).
    pub(super) async fn connection(
        &self,
        policy: Arc<DatabasePolicy>,
    ) -> Result<pool::Pooled, ApiError> {
        self.pooled(policy, false).await
    }

    pub(super) async fn pooled(
        &self,
        policy: Arc<DatabasePolicy>,
        refresh: bool,
    ) -> Result<pool::Pooled, ApiError> {
        let target = Target::from_config(&self.cfg, &policy.database);
        self.pool
            .get(
                &target,
                policy,
                self.hash_key.as_deref().map(Vec::as_slice),
                refresh,
            )
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }
}

pub(super) fn subject_databases(policies: &PolicySet) -> Vec<Arc<DatabasePolicy>> {
    let mut v: Vec<Arc<DatabasePolicy>> = policies
        .by_database
        .values()
        .filter(|p| p.tables.values().any(|t| t.subject.is_some()))
        .cloned()
        .collect();
    v.sort_by(|a, b| a.database.cmp(&b.database));
    v
}
