//! Throwaway PostgreSQL clusters with the demo data, for the suites that drive pgredact's
//! library (forget, the admin API) or the clusters themselves rather than the proxy.

use pgredact::config::Config;
use pgredact::pgcluster::{demo_schema_sql, Cluster, ClusterOptions};

/// The database the demo schema is loaded into (the proxy suites' [`super::DB`]).
pub const DEMO_DB: &str = super::DB;

/// Row counts the demo schema produces.
pub const DEMO_ROW_COUNTS: [(&str, i64); 4] = [
    ("customers", 10_000),
    ("customer_events", 50_000),
    ("orders", 20_000),
    ("customer_history", 10_000),
];

/// Starts a cluster, creates database `app` and loads the demo schema into it as the superuser.
/// Panics with the server log on failure.
pub fn demo_cluster(opts: ClusterOptions) -> Cluster {
    let cluster = Cluster::start(opts).unwrap_or_else(|e| panic!("starting a cluster: {e}"));
    load_demo(&cluster, DEMO_DB);
    cluster
}

/// Creates database `db` in `cluster` and loads the demo schema into it as the superuser.
pub fn load_demo(cluster: &Cluster, db: &str) {
    cluster
        .create_database(db)
        .unwrap_or_else(|e| panic!("creating database {db}: {e}\n{}", cluster.read_log()));
    cluster
        .superuser_psql(db, &demo_schema_sql())
        .unwrap_or_else(|e| panic!("loading the demo schema into {db}: {e}"));
}

/// `demo_cluster` with the default options (trust authentication).
pub fn default_demo_cluster() -> Cluster {
    demo_cluster(ClusterOptions::default())
}

/// A multi-threaded runtime (two workers) for the synchronous tests that drive async APIs.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A demo cluster and a pgredact configuration in a temporary directory, without a proxy: for
/// the suites that drive pgredact's library (forget, the admin API).
pub struct ConfigEnv {
    pub cluster: Cluster,
    pub cfg: Config,
    pub _dir: tempfile::TempDir,
}

impl ConfigEnv {
    /// Runs `q` in the demo database as the superuser; its output, trimmed.
    pub fn sql(&self, q: &str) -> String {
        self.cluster
            .superuser_psql(DEMO_DB, q)
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .trim()
            .to_string()
    }
}
