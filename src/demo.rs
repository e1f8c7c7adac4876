//! `pgredact demo`: a throwaway PostgreSQL with the sample customer data platform, the example
//! policy, and pgredact in front of it, until Ctrl-C.

use crate::config::Config;
use crate::pgcluster::{demo_schema_sql, Auth, Cluster, ClusterOptions};
use std::path::PathBuf;

/// The example policy shipped in `policies/app.toml`.
pub const EXAMPLE_POLICY: &str = include_str!("../policies/app.toml");

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] crate::pgcluster::Error),
    /// A blocking step (starting or loading the cluster) panicked or was cancelled.
    #[error("{0}")]
    Join(#[from] tokio::task::JoinError),
    /// Writing the demo's files, or reading the listener's address.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{}: {source}", path.display())]
    TempDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The generated configuration does not load (its own message).
    #[error("{0}")]
    Config(crate::config::Error),
    /// `setup-sql` could not be built (its own message).
    #[error("{0}")]
    SetupSql(String),
    /// The proxy could not start (its own message).
    #[error("{0}")]
    Proxy(crate::proxy::Error),
    #[error("cannot watch SIGTERM: {0}")]
    Signal(#[source] std::io::Error),
}

pub async fn run(listen: &str) -> Result<(), Error> {
    println!("pgredact demo: starting a throwaway PostgreSQL...");
    let cluster = tokio::task::spawn_blocking(|| -> Result<Cluster, Error> {
        let c = Cluster::start(ClusterOptions {
            auth: Auth::Scram,
            ..Default::default()
        })?;
        c.create_database("app")?;
        println!("pgredact demo: loading sample data (10,000 customers, 50,000 events, 20,000 orders)...");
        c.superuser_psql("app", &demo_schema_sql())?;
        Ok(c)
    })
    .await??;
    let dir = tempfile_dir()?;
    let pol_dir = dir.join("policies");
    std::fs::create_dir_all(&pol_dir)?;
    std::fs::write(pol_dir.join("app.toml"), EXAMPLE_POLICY)?;
    let key: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let cfg_text = format!(
        "listen = \"{listen}\"\npolicies = \"policies\"\n[upstream]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"pgredact\"\npassword_env = \"PGREDACT_DEMO_UPSTREAM_PASSWORD\"\n[secrets]\nhash_key_env = \"PGREDACT_DEMO_HASH_KEY\"\n",
        cluster.port
    );
    let cfg_path = dir.join("pgredact.toml");
    std::fs::write(&cfg_path, &cfg_text)?;
    // SAFETY of set_var: done before any other thread reads the environment in this process's
    // demo path (the runtime threads only read it later through Config).
    unsafe {
        std::env::set_var("PGREDACT_DEMO_UPSTREAM_PASSWORD", "pgredact");
        std::env::set_var("PGREDACT_DEMO_HASH_KEY", &key);
    }
    let cfg = Config::load(&cfg_path).map_err(Error::Config)?;
    // What a DBA does once: let PostgreSQL itself enforce the masks.
    println!("pgredact demo: applying `pgredact setup-sql` (masking views, column privileges)...");
    let setup = crate::wall::setup_sql(&cfg, Some("app"))
        .await
        .map_err(Error::SetupSql)?;
    let cluster =
        tokio::task::spawn_blocking(move || cluster.superuser_psql("app", &setup).map(|_| cluster))
            .await??;
    let (listener, shared) = crate::proxy::bind(cfg).await.map_err(Error::Proxy)?;
    // Published before the instructions are printed: the straight-to-PostgreSQL command they
    // show reads keyed pseudonyms at once, not NULL.
    shared.load_policy_databases();
    shared.db("app").await.map_err(Error::Proxy)?;
    let addr = listener.local_addr()?;
    print_instructions(addr, cluster.port, &dir);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    tokio::select! {
        _ = crate::proxy::run(listener, shared) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("\npgredact demo: stopping PostgreSQL and cleaning up.");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What the demo prints once it listens: how to connect as each role, and what to try.
fn print_instructions(addr: std::net::SocketAddr, pg_port: u16, dir: &std::path::Path) {
    let (host, port) = (addr.ip(), addr.port());
    println!();
    println!("pgredact is listening on {addr}, in front of PostgreSQL on 127.0.0.1:{pg_port}.");
    println!("Connect as a masked support user (password: support):");
    println!("  psql \"host={host} port={port} dbname=app user=support password=support\"");
    println!("As the masked data solutions team (password: solutions):");
    println!("  psql \"host={host} port={port} dbname=app user=solutions password=solutions\"");
    println!("As a DBA, who sees raw data (password: dba):");
    println!("  psql \"host={host} port={port} dbname=app user=dba password=dba\"");
    println!(
        "Straight to PostgreSQL, bypassing pgredact: support reads the masking views and is denied raw PII:"
    );
    println!(
        "  psql \"host=127.0.0.1 port={pg_port} dbname=app user=support password=support\" -c \"SELECT email FROM pgredact_masked.customers LIMIT 1\" -c \"SELECT email FROM customers LIMIT 1\""
    );
    println!();
    println!("Try:  SELECT * FROM customers ORDER BY customer_id LIMIT 5;");
    println!(
        "      UPDATE customers SET tier = 'gold' WHERE customer_id = 1;   -- as solutions: passes"
    );
    println!("      UPDATE customers SET email = 'x' WHERE customer_id = 1;     -- as solutions: refused");
    println!("Policy in use: {}", dir.join("policies/app.toml").display());
    println!("Press Ctrl-C to stop and delete everything.");
}

fn tempfile_dir() -> Result<PathBuf, Error> {
    let d = std::env::temp_dir().join(format!("pgredact-demo-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|source| Error::TempDir {
        path: d.clone(),
        source,
    })?;
    Ok(d)
}
