//! Process-wide state, shared by every session of the listener: the configuration, the current
//! policy set, the cancel-key map, client-side TLS, and one [`DbState`] per database (loaded on
//! first use, each on its own: no lock is held while one database connects or loads).

use super::database::DbState;
use super::error::Error;
use super::lifecycle::within;
use crate::config::Config;
use crate::policy::PolicySet;
use crate::sync::{lock, read, write};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio_postgres::Client;

pub struct Shared {
    pub cfg: Config,
    pub policies: RwLock<Arc<PolicySet>>,
    /// One cell per database ever asked for; filled by its first successful load.
    dbs: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<DbState>>>>>,
    /// Client-facing (pid, key) -> upstream (pid, key).
    pub cancels: Mutex<HashMap<(i32, i32), (i32, i32)>>,
    /// Client-side TLS, when `[tls]` is configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The `tls-server-end-point` data of pgredact's certificate, for SCRAM channel binding
    /// (None without `[tls]`, or when the certificate's algorithm names no hash).
    pub tls_end_point: Option<Vec<u8>>,
    /// Shutdown, reloadable settings, open client connections.
    pub life: super::lifecycle::Lifecycle,
    /// The audit log of masked sessions, when `[audit]` is configured (set by `proxy::bind`).
    pub audit: std::sync::OnceLock<crate::audit::Audit>,
    /// This instance, as the registry records it (`peers`).
    pub identity: super::peers::Identity,
    /// `[peering] peers`: peer id -> address (checked when the configuration was loaded).
    pub peer_addrs: std::collections::BTreeMap<u8, String>,
    /// Whether every database the policies name is loaded at start and at each reload
    /// ([`Shared::load_policy_databases`]), not only at its first session.
    eager: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(cfg: Config, policies: PolicySet) -> Arc<Shared> {
        Self::with_tls(cfg, policies, None)
    }

    /// The shared state, with client-side TLS when `tls` is given.
    pub fn with_tls(
        cfg: Config,
        policies: PolicySet,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Arc<Shared> {
        let tls_end_point = match (&tls, &cfg.tls) {
            (Some(_), Some(t)) => crate::tls::cert_file_end_point(t, &cfg.base_dir),
            _ => None,
        };
        let identity = super::peers::Identity::new(&cfg);
        let peer_addrs = cfg
            .peering
            .as_ref()
            .and_then(|p| p.peer_addrs().ok())
            .unwrap_or_default();
        Arc::new(Shared {
            life: super::lifecycle::Lifecycle::new(&cfg),
            cfg,
            policies: RwLock::new(Arc::new(policies)),
            dbs: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            tls,
            tls_end_point,
            audit: std::sync::OnceLock::new(),
            identity,
            peer_addrs,
            eager: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn policy_set(&self) -> Arc<PolicySet> {
        read(&self.policies).clone()
    }

    /// The control-plane login to `db`. Every name pgredact's own SQL uses resolves in
    /// pg_catalog (or is qualified), and format_type qualifies types outside it.
    fn control_config(&self, db: &str, application_name: &str) -> tokio_postgres::Config {
        let u = &self.cfg.upstream;
        let mut c = tokio_postgres::Config::new();
        c.host(&u.host).port(u.port).user(&u.user).dbname(db);
        c.application_name(application_name);
        c.options("-c search_path=pg_catalog");
        if let Some(p) = self.cfg.upstream_password() {
            c.password(p);
        }
        if let Some(t) = self.life.settings.connect_timeout() {
            c.connect_timeout(t);
        }
        c
    }

    /// Opens a control-plane connection to `db`, within `[upstream] connect_timeout_secs`.
    pub async fn control_connect(&self, db: &str) -> Result<Client, Error> {
        let c = self.control_config(db, "pgredact-control");
        let connected = within(
            self.connect_deadline(),
            crate::tls::pg_connect(c, self.cfg.upstream_tls.as_ref()),
        )
        .await;
        let reason = match connected {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => crate::tls::error_chain(&e),
            Err(_) => self.no_answer().to_string(),
        };
        crate::metrics::upstream_error("control");
        Err(Error::Control {
            db: db.to_string(),
            reason,
        })
    }

    /// When a connection to PostgreSQL started now must be open, by `connect_timeout_secs`.
    pub fn connect_deadline(&self) -> Option<tokio::time::Instant> {
        self.life
            .settings
            .connect_timeout()
            .map(|d| tokio::time::Instant::now() + d)
    }

    /// The upstream address, `host:port`.
    pub fn upstream_addr(&self) -> String {
        format!("{}:{}", self.cfg.upstream.host, self.cfg.upstream.port)
    }

    /// A connection to PostgreSQL timed out.
    pub fn no_answer(&self) -> Error {
        Error::NoAnswer {
            addr: self.upstream_addr(),
            secs: self
                .life
                .settings
                .connect_timeout()
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// A control connection that LISTENs on `channel`: the receiver gets one message per
    /// notification and ends with the connection.
    pub async fn control_listen(
        &self,
        db: &str,
        channel: &str,
    ) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<()>), Error> {
        let c = self.control_config(db, "pgredact-listen");
        let connected = within(
            self.connect_deadline(),
            crate::tls::pg_connect_notified(c, self.cfg.upstream_tls.as_ref()),
        )
        .await;
        let (client, rx) = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                crate::metrics::upstream_error("control");
                let reason = crate::tls::error_chain(&e);
                return Err(Error::Control {
                    db: db.to_string(),
                    reason,
                });
            }
            Err(_) => {
                crate::metrics::upstream_error("control");
                return Err(self.no_answer());
            }
        };
        client
            .batch_execute(&format!("LISTEN {}", crate::policy::quote_ident(channel)))
            .await
            .map_err(|source| Error::Listen {
                channel: channel.to_string(),
                source,
            })?;
        Ok((client, rx))
    }

    /// Opens a session connection to PostgreSQL (with TLS when `[upstream] sslmode` asks), by
    /// `by`. Errors are one line that names the address.
    pub async fn upstream_connect(
        &self,
        by: Option<tokio::time::Instant>,
    ) -> Result<crate::tls::ServerStream, Error> {
        let addr = self.upstream_addr();
        let connect = async {
            let failed = |reason: String| Error::Connect {
                addr: addr.clone(),
                reason,
            };
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            match &self.cfg.upstream_tls {
                Some(t) => t
                    .start(tcp)
                    .await
                    .map_err(|e| failed(e.lines().next().unwrap_or_default().to_string())),
                None => Ok(crate::tls::ServerStream::Plain(tcp)),
            }
        };
        within(by, connect)
            .await
            .map_err(|_| self.no_answer())
            .and_then(|r| r)
            .inspect_err(|_| crate::metrics::upstream_error("session"))
    }

    /// The state of database `db`, connecting and loading its catalog on first use. Sessions of
    /// one database wait for its first load together; other databases are not held up by it.
    /// A load that fails leaves nothing behind: the next session tries again.
    pub async fn db(self: &Arc<Self>, db: &str) -> Result<Arc<DbState>, Error> {
        let cell = lock(&self.dbs).entry(db.to_string()).or_default().clone();
        cell.get_or_try_init(|| DbState::load(self, db))
            .await
            .cloned()
    }

    /// Loads, each in the background, every database the policies name, now and after each
    /// policy reload (what `pgredact serve` and the demo do; an embedding that calls
    /// `proxy::run` alone loads each database at its first session). Loading publishes the
    /// policy there: the control schema, the hash key, the masking views and the column
    /// privileges then follow the policy from pgredact's start, not from the first session
    /// through pgredact. Until then a client connected straight to PostgreSQL would read views
    /// built for the previous policy, hash masks without a key (NULL), and columns newly marked
    /// PII raw. A database already loaded returns at once; a load that fails is logged, and
    /// the next session or reload tries again.
    pub fn load_policy_databases(self: &Arc<Self>) {
        self.eager.store(true, std::sync::atomic::Ordering::Relaxed);
        self.load_named_databases();
    }

    /// After a policy reload: loads the databases the policies name for the first time, when
    /// [`Shared::load_policy_databases`] was called.
    pub(super) fn load_new_policy_databases(self: &Arc<Self>) {
        if self.eager.load(std::sync::atomic::Ordering::Relaxed) {
            self.load_named_databases();
        }
    }

    fn load_named_databases(self: &Arc<Self>) {
        let mut names: Vec<String> = self.policy_set().by_database.keys().cloned().collect();
        names.sort();
        for db in names {
            let shared = self.clone();
            tokio::spawn(async move {
                if let Err(e) = shared.db(&db).await {
                    tracing::warn!(
                        "database {db}: not loaded yet ({e}); the first session tries again"
                    );
                }
            });
        }
    }

    /// The databases loaded so far.
    pub fn all_dbs(&self) -> Vec<Arc<DbState>> {
        lock(&self.dbs)
            .values()
            .filter_map(|c| c.get().cloned())
            .collect()
    }

    /// Installs a new policy set: publishes it to every database (which rebuilds the masking
    /// views and applies the privilege fixes), then re-reads each catalog.
    pub async fn set_policies(&self, set: PolicySet) {
        let set = Arc::new(set);
        *write(&self.policies) = set.clone();
        // Each database keeps its current snapshot (old policy, its views) until the new one is
        // published and read back, so no statement is refused in between.
        for d in self.all_dbs() {
            if let Err(e) = d.refresh_with_publish(self, Instant::now()).await {
                tracing::warn!("{e}");
                d.rebuild(&set);
            }
        }
    }
}
