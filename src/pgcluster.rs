//! Throwaway PostgreSQL clusters for `pgredact demo` and the integration tests.
//!
//! [`Cluster::start`] runs `initdb` into a fresh temporary directory, writes a fast, local-only
//! configuration (127.0.0.1 on a free port, unix socket in the temporary directory, no fsync),
//! and starts the server with `pg_ctl start -w`. Dropping the [`Cluster`] stops the server
//! (`pg_ctl stop -m immediate`) and removes the directory.
//!
//! Layout of the temporary directory (`pgredact-pg-*` under `$PGREDACT_TMPDIR`, else the system
//! temporary directory):
//! ```text
//! <root>/data/          the data directory (`Cluster::data_dir`)
//! <root>/server.log     the server log (`Cluster::log_path`)
//! <root>/.s.PGSQL.<port> the unix socket (`Cluster::socket_dir`)
//! ```
//!
//! PostgreSQL refuses to run as root. When the effective uid is 0, `initdb` and `pg_ctl` run as
//! the `postgres` OS user (through `CommandExt::uid`/`gid`, no shell) and the whole temporary
//! directory is owned by `postgres` (mode 0700; root can still read and remove it).
//!
//! `pg_ctl` detaches the postmaster, so a process killed without unwinding (SIGKILL, Ctrl-C,
//! a test timeout) would leave its servers running: each cluster therefore has a small `sh`
//! watchdog, in its own process group, that stops the server and removes the directory when the
//! owning process goes away without dropping the `Cluster`.
//!
//! Every cluster has a superuser [`SUPERUSER`] whose password is [`SUPERUSER_PASSWORD`], so the
//! superuser can log in over TCP whatever the [`Auth`] method. Local (unix socket) connections
//! always use `trust`.
//!
//! All functions here except [`Cluster::connect`] and [`Cluster::superuser_connect`] block; from
//! async code with a multi-threaded runtime, prefer `tokio::task::spawn_blocking` for `start`.

use crate::policy::quote_ident;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a throwaway cluster could not be found, started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: looked in $PGREDACT_PG_BIN, \
         /usr/lib/postgresql/{{17,16,15,14}}/bin and PATH. Install them with \
         `apt-get install postgresql` (or set PGREDACT_PG_BIN to the directory holding initdb)"
    )]
    NoServerBinaries,
    #[error("PGREDACT_PG_BIN={} does not contain executable initdb and pg_ctl", .0.display())]
    BadBinDir(PathBuf),
    #[error("psql not found in {} nor PATH; install it with `apt-get install postgresql-client`", .0.display())]
    NoPsql(PathBuf),
    #[error("extra_conf: invalid setting name {0:?}")]
    InvalidSetting(String),
    /// A file, directory or process operation failed; `what` says which (and on what path).
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("initdb failed ({status}): {output}")]
    Initdb {
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("pg_ctl start failed ({status}): {output}\n--- server log ---\n{log}")]
    Start {
        status: std::process::ExitStatus,
        output: String,
        /// What the server logged during this attempt.
        log: String,
    },
    #[error(
        "could not find a free port after {attempts} attempts; last error: {}",
        last.as_ref().map(ToString::to_string).unwrap_or_default()
    )]
    PortsTaken {
        attempts: usize,
        last: Option<Box<Error>>,
    },
    #[error("could not find a port not already used by this process")]
    NoUnusedPort,
    #[error(
        "connecting to {host}:{port} as {user} (database {db}): {}",
        describe_pg_error(source)
    )]
    Connect {
        host: String,
        port: u16,
        user: String,
        db: String,
        source: tokio_postgres::Error,
    },
    #[error("psql: stdin was not piped")]
    PsqlStdin,
    #[error("psql stdin writer thread panicked")]
    PsqlWriterPanicked,
    #[error("psql as {user} on database {db} (port {port}) failed ({status}): {stderr}")]
    Psql {
        user: String,
        db: String,
        port: u16,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("no effective uid in /proc/self/status")]
    NoEffectiveUid,
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` OS \
         user to run it as (`apt-get install postgresql` creates one; or run as a non-root user)"
    )]
    NoPostgresUser,
    #[error(
        "the postgres OS user cannot enter {} (no o+x), so it cannot reach a cluster \
         under {}; set PGREDACT_TMPDIR (or TMPDIR) to a directory such as /tmp",
        dir.display(),
        base.display()
    )]
    TmpUnreachable { dir: PathBuf, base: PathBuf },
    #[error(
        "temporary directory path {} is too long for a unix socket; set PGREDACT_TMPDIR \
         to a shorter directory such as /tmp",
        .0.display()
    )]
    TmpPathTooLong(PathBuf),
    #[error("could not create a fresh directory under {}", .0.display())]
    NoFreshDir(PathBuf),
}

impl Error {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// The demo customer-data-platform schema and data (deterministic), run by a superuser.
pub const DEMO_SCHEMA_SQL: &str = include_str!("demo_schema.sql");

/// The demo schema followed by the superuser part of pgredact's setup (control schema owned by
/// the `pgredact` role, DDL watch event trigger), as `pgredact setup-sql` prints it.
pub fn demo_schema_sql() -> String {
    format!(
        "{DEMO_SCHEMA_SQL}\n{}",
        crate::wall::superuser_setup_sql("pgredact")
    )
}

/// The bootstrap superuser of every cluster.
pub const SUPERUSER: &str = "postgres";
/// The password of [`SUPERUSER`] (set by `initdb --pwfile`).
pub const SUPERUSER_PASSWORD: &str = "postgres";

/// How many ports `start` tries before giving up when ports keep getting taken.
const MAX_PORT_ATTEMPTS: usize = 8;
/// Seconds `pg_ctl` waits for start and stop.
const PG_CTL_TIMEOUT_SECS: &str = "120";
/// Unix socket paths are limited to 107 bytes on Linux; `/.s.PGSQL.65535` takes 15 of them.
const MAX_SOCKET_DIR_LEN: usize = 107 - 16;

/// Authentication method of the `host all all 127.0.0.1/32` line in `pg_hba.conf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    #[default]
    Trust,
    /// `md5`; passwords are stored as md5 hashes (`password_encryption = md5`).
    Md5,
    /// `scram-sha-256`; passwords are stored as SCRAM verifiers.
    Scram,
}

impl Auth {
    /// The `pg_hba.conf` method name.
    pub fn hba_method(self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Md5 => "md5",
            Auth::Scram => "scram-sha-256",
        }
    }

    /// The `password_encryption` setting that matches the method.
    fn password_encryption(self) -> &'static str {
        match self {
            Auth::Md5 => "md5",
            Auth::Trust | Auth::Scram => "scram-sha-256",
        }
    }
}

/// What [`Cluster::start`] configures.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Authentication for TCP connections from 127.0.0.1.
    pub auth: Auth,
    /// `log_statement = 'all'` (the statements land in [`Cluster::read_log`]).
    pub log_statements: bool,
    /// Extra `postgresql.conf` settings, written last (so they override the defaults), each as
    /// `name = 'value'`. Names may contain only ASCII letters, digits, `_` and `.`.
    pub extra_conf: Vec<(String, String)>,
}

/// A running throwaway PostgreSQL cluster. Stopped and deleted on drop.
#[derive(Debug)]
pub struct Cluster {
    pub port: u16,
    /// Always "127.0.0.1".
    pub host: String,
    pub data_dir: PathBuf,
    /// The temporary directory holding `data/`, `server.log` and the unix socket.
    root_dir: PathBuf,
    bin_dir: PathBuf,
    /// `(uid, gid)` of the `postgres` OS user when we run as root.
    run_as: Option<(u32, u32)>,
    auth: Auth,
    running: bool,
    /// Stops the server and removes `root_dir` if this process dies without dropping us.
    watchdog: Option<std::process::Child>,
}

/// Refuses `extra_conf` setting names that are not plain identifiers.
fn validate_settings(opts: &ClusterOptions) -> Result<(), Error> {
    for (name, _) in &opts.extra_conf {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid {
            return Err(Error::InvalidSetting(name.clone()));
        }
    }
    Ok(())
}

impl Cluster {
    /// The directory holding `initdb` and `pg_ctl`: `$PGREDACT_PG_BIN`, else
    /// `/usr/lib/postgresql/{17,16,15,14}/bin`, else the first `PATH` entry that has both.
    pub fn bin_dir() -> Result<PathBuf, Error> {
        let has_tools =
            |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"));
        if let Some(dir) = std::env::var_os("PGREDACT_PG_BIN") {
            let dir = PathBuf::from(dir);
            if has_tools(&dir) {
                return Ok(dir);
            }
            return Err(Error::BadBinDir(dir));
        }
        for version in ["17", "16", "15", "14"] {
            let dir = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
            if has_tools(&dir) {
                return Ok(dir);
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if has_tools(&dir) {
                    return Ok(dir);
                }
            }
        }
        Err(Error::NoServerBinaries)
    }

    /// Creates, configures and starts a new cluster; blocks until it accepts connections.
    /// Safe to call from many threads and processes at once.
    pub fn start(opts: ClusterOptions) -> Result<Cluster, Error> {
        validate_settings(&opts)?;
        let bin_dir = Self::bin_dir()?;
        let run_as = if effective_uid()? == 0 {
            Some(postgres_os_user()?)
        } else {
            None
        };
        let root_dir = make_root_dir(run_as)?;
        // From here on, dropping `cluster` (on any error) removes the directory.
        let mut cluster = Cluster {
            port: 0,
            host: "127.0.0.1".to_string(),
            data_dir: root_dir.join("data"),
            root_dir,
            bin_dir,
            run_as,
            auth: opts.auth,
            running: false,
            watchdog: None,
        };
        cluster.watchdog = cluster.spawn_watchdog();
        cluster.initdb()?;
        cluster.write_conf(&opts)?;
        cluster.start_server(&opts)?;
        Ok(cluster)
    }

    /// Writes `pg_hba.conf` and makes `postgresql.conf` include the file [`Self::start_server`]
    /// writes.
    fn write_conf(&self, opts: &ClusterOptions) -> Result<(), Error> {
        self.write_file(
            &self.data_dir.join("pg_hba.conf"),
            &format!(
                "# written by pgredact::pgcluster\n\
                 local all all trust\n\
                 host all all 127.0.0.1/32 {}\n",
                opts.auth.hba_method()
            ),
        )?;
        let conf_path = self.data_dir.join("postgresql.conf");
        let mut conf = fs::read_to_string(&conf_path)
            .map_err(Error::io(format!("reading {}", conf_path.display())))?;
        conf.push_str("\n# added by pgredact::pgcluster\ninclude 'pgredact_cluster.conf'\n");
        self.write_file(&conf_path, &conf)?;
        Ok(())
    }

    /// Starts the server, on a fresh port after each "Address already in use".
    fn start_server(&mut self, opts: &ClusterOptions) -> Result<(), Error> {
        let mut last_error = None;
        for _ in 0..MAX_PORT_ATTEMPTS {
            let port = reserve_port()?;
            self.write_file(
                &self.data_dir.join("pgredact_cluster.conf"),
                &self.conf_text(opts, port),
            )?;
            let log_offset = fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
            let data_dir = self.data_dir.clone();
            let log_path = self.log_path();
            let out = self.run_as_server_user(
                "pg_ctl start",
                self.bin_dir.join("pg_ctl"),
                [
                    OsStr::new("start"),
                    OsStr::new("-w"),
                    OsStr::new("-t"),
                    OsStr::new(PG_CTL_TIMEOUT_SECS),
                    OsStr::new("-D"),
                    data_dir.as_os_str(),
                    OsStr::new("-l"),
                    log_path.as_os_str(),
                ],
            )?;
            if out.status.success() {
                self.port = port;
                self.running = true;
                return Ok(());
            }
            let log = self.read_log();
            let new_log = log.get(log_offset as usize..).unwrap_or(&log);
            let error = Error::Start {
                status: out.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                log: new_log.to_string(),
            };
            // A server that failed to start may still hold its pid file (e.g. a -w timeout).
            self.stop();
            if !new_log.contains("Address already in use") {
                return Err(error);
            }
            last_error = Some(Box::new(error));
            tracing::debug!(
                port,
                "port taken while starting a throwaway cluster; retrying"
            );
        }
        Err(Error::PortsTaken {
            attempts: MAX_PORT_ATTEMPTS,
            last: last_error,
        })
    }

    /// A tokio-postgres / libpq `key=value` connection string for a TCP login to this cluster.
    pub fn connstr(&self, user: &str, password: Option<&str>, db: &str) -> String {
        let mut s = format!(
            "host={} port={} user={} dbname={} sslmode=disable",
            quote_conn_value(&self.host),
            self.port,
            quote_conn_value(user),
            quote_conn_value(db)
        );
        if let Some(password) = password {
            s.push_str(" password=");
            s.push_str(&quote_conn_value(password));
        }
        s
    }

    /// Logs in over TCP and spawns the connection task on the current tokio runtime.
    pub async fn connect(
        &self,
        user: &str,
        password: Option<&str>,
        db: &str,
    ) -> Result<tokio_postgres::Client, Error> {
        connect_str(&self.connstr(user, password, db))
            .await
            .map_err(|source| Error::Connect {
                host: self.host.clone(),
                port: self.port,
                user: user.to_string(),
                db: db.to_string(),
                source,
            })
    }

    /// Logs in as [`SUPERUSER`] over TCP (works with every [`Auth`]).
    pub async fn superuser_connect(&self, db: &str) -> Result<tokio_postgres::Client, Error> {
        self.connect(SUPERUSER, Some(SUPERUSER_PASSWORD), db).await
    }

    /// Runs `sql` through `psql -X -q -A -t -v ON_ERROR_STOP=1` (fed on stdin, so it may hold
    /// many statements and psql meta-commands) over TCP; returns psql's stdout.
    pub fn psql(
        &self,
        user: &str,
        password: Option<&str>,
        db: &str,
        sql: &str,
    ) -> Result<String, Error> {
        let psql = self.psql_path()?;
        let mut cmd = Command::new(&psql);
        clear_pg_env(&mut cmd);
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
            "-d",
        ])
        .arg(format!(
            "{} client_encoding=UTF8",
            self.connstr(user, None, db)
        ))
        // Never read ~/.pgpass: a login without a password must stay without one.
        .env("PGPASSFILE", self.root_dir.join("no-such-pgpass"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(password) = password {
            cmd.env("PGPASSWORD", password);
        }
        let mut child = cmd
            .spawn()
            .map_err(Error::io(format!("running {}", psql.display())))?;
        let mut stdin = child.stdin.take().ok_or(Error::PsqlStdin)?;
        let sql = sql.to_string();
        // Write from another thread: psql may fill stdout before reading all of stdin.
        let writer = std::thread::spawn(move || stdin.write_all(sql.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(Error::io("waiting for psql"))?;
        let write_result = writer.join().map_err(|_| Error::PsqlWriterPanicked)?;
        if !out.status.success() {
            return Err(Error::Psql {
                user: user.to_string(),
                db: db.to_string(),
                port: self.port,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
            });
        }
        // psql may exit successfully before reading everything only if the input is broken.
        write_result.map_err(Error::io("writing SQL to psql"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Cluster::psql`] as [`SUPERUSER`].
    pub fn superuser_psql(&self, db: &str, sql: &str) -> Result<String, Error> {
        self.psql(SUPERUSER, Some(SUPERUSER_PASSWORD), db, sql)
    }

    /// Creates database `db` (owned by the superuser).
    pub fn create_database(&self, db: &str) -> Result<(), Error> {
        self.superuser_psql("postgres", &format!("CREATE DATABASE {}", quote_ident(db)))
            .map(|_| ())
    }

    /// The authentication method of TCP logins.
    pub fn auth(&self) -> Auth {
        self.auth
    }

    /// The directory holding the unix socket (`host=<this>` in a connection string).
    pub fn socket_dir(&self) -> &Path {
        &self.root_dir
    }

    /// `server.log`, next to the data directory.
    pub fn log_path(&self) -> PathBuf {
        self.root_dir.join("server.log")
    }

    /// The server log so far (empty when there is none yet).
    pub fn read_log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Stops the server (`pg_ctl stop -m immediate`). Idempotent; the data directory stays until
    /// the `Cluster` is dropped.
    pub fn stop(&mut self) {
        let pid_file = self.data_dir.join("postmaster.pid");
        if !self.running && !pid_file.exists() {
            return;
        }
        self.running = false;
        let data_dir = self.data_dir.clone();
        let result = self.run_as_server_user(
            "pg_ctl stop",
            self.bin_dir.join("pg_ctl"),
            [
                OsStr::new("stop"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new(PG_CTL_TIMEOUT_SECS),
                OsStr::new("-m"),
                OsStr::new("immediate"),
                OsStr::new("-D"),
                data_dir.as_os_str(),
            ],
        );
        let stopped = matches!(&result, Ok(out) if out.status.success());
        if stopped || !pid_file.exists() {
            return;
        }
        // Last resort, so no postmaster outlives its directory: SIGKILL the pid in the pid file.
        tracing::warn!(data_dir = %self.data_dir.display(), ?result, "pg_ctl stop failed; killing the postmaster");
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Starts `sh` (in its own process group, as the server user) blocked on reading a pipe
    /// whose write end only this process holds. If this process dies without running `Drop`
    /// (SIGKILL, SIGINT from Ctrl-C, SIGTERM from a timeout), the read returns and the watchdog
    /// stops the server and removes the directory, so no postmaster outlives its owner
    /// (pg_ctl detaches the postmaster into its own session, so it would otherwise keep running).
    /// Best effort: without `/bin/sh` there is no watchdog.
    fn spawn_watchdog(&self) -> Option<std::process::Child> {
        const SCRIPT: &str = "read _ignored; \"$1\" stop -D \"$2\" -m immediate -w >/dev/null 2>&1; rm -rf -- \"$3\"";
        let mut cmd = Command::new("/bin/sh");
        clear_pg_env(&mut cmd);
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("pgredact-pgcluster-watchdog")
            .arg(self.bin_dir.join("pg_ctl"))
            .arg(&self.data_dir)
            .arg(&self.root_dir)
            .current_dir("/")
            .env("LC_ALL", "C")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        match cmd.spawn() {
            Ok(child) => Some(child),
            Err(e) => {
                tracing::warn!(
                    "no watchdog for the throwaway cluster in {}: {e}",
                    self.root_dir.display()
                );
                None
            }
        }
    }

    fn initdb(&self) -> Result<(), Error> {
        let pwfile = self.root_dir.join("initdb.pw");
        self.write_file(&pwfile, &format!("{SUPERUSER_PASSWORD}\n"))?;
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("-D"),
            self.data_dir.as_os_str(),
            OsStr::new("-U"),
            OsStr::new(SUPERUSER),
            OsStr::new("--auth=trust"),
            OsStr::new("-E"),
            OsStr::new("UTF8"),
            OsStr::new("--locale=C"),
            OsStr::new("--no-sync"),
        ];
        let pwfile_arg = {
            let mut a = std::ffi::OsString::from("--pwfile=");
            a.push(&pwfile);
            a
        };
        args.push(&pwfile_arg);
        let out = self.run_as_server_user("initdb", self.bin_dir.join("initdb"), args);
        let _ = fs::remove_file(&pwfile);
        let out = out?;
        if !out.status.success() {
            return Err(Error::Initdb {
                status: out.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(())
    }

    fn conf_text(&self, opts: &ClusterOptions, port: u16) -> String {
        let mut settings: Vec<(&str, String)> = vec![
            ("listen_addresses", "127.0.0.1".into()),
            ("port", port.to_string()),
            (
                "unix_socket_directories",
                self.root_dir.display().to_string(),
            ),
            ("unix_socket_permissions", "0700".into()),
            ("max_connections", "200".into()),
            ("shared_buffers", "64MB".into()),
            ("fsync", "off".into()),
            ("synchronous_commit", "off".into()),
            ("full_page_writes", "off".into()),
            ("wal_level", "minimal".into()),
            ("max_wal_senders", "0".into()),
            ("jit", "off".into()),
            ("logging_collector", "off".into()),
            ("log_destination", "stderr".into()),
            ("log_line_prefix", "%m [%p] %q%u@%d ".into()),
            (
                "log_statement",
                if opts.log_statements { "all" } else { "none" }.into(),
            ),
            ("lc_messages", "C".into()),
            ("timezone", "UTC".into()),
            ("log_timezone", "UTC".into()),
            (
                "password_encryption",
                self.auth.password_encryption().into(),
            ),
        ];
        settings.extend(opts.extra_conf.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let mut text = String::from("# written by pgredact::pgcluster; later lines win\n");
        for (name, value) in settings {
            text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        text
    }

    /// Writes a file into the data directory (mode 0600, owned by the server user), e.g. a TLS
    /// key for `ssl_key_file`. Returns its path.
    pub fn write_data_file(&self, name: &str, contents: &str) -> Result<PathBuf, Error> {
        let path = self.data_dir.join(name);
        self.write_file(&path, contents)?;
        Ok(path)
    }

    /// Writes `path` (mode 0600, owned by the server user).
    fn write_file(&self, path: &Path, contents: &str) -> Result<(), Error> {
        fs::write(path, contents).map_err(Error::io(format!("writing {}", path.display())))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(Error::io(format!("chmod {}", path.display())))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(Error::io(format!("chown {} to postgres", path.display())))?;
        }
        Ok(())
    }

    /// Runs a server binary, as the `postgres` OS user when we are root.
    fn run_as_server_user<I, S>(
        &self,
        what: &str,
        program: PathBuf,
        args: I,
    ) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&program);
        clear_pg_env(&mut cmd);
        cmd.args(args)
            .current_dir(&self.root_dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.run_as {
            // std drops supplementary groups (setgroups(0)) when root sets a uid.
            cmd.uid(uid).gid(gid).env("HOME", &self.root_dir);
        }
        cmd.output()
            .map_err(Error::io(format!("{what}: running {}", program.display())))
    }

    fn psql_path(&self) -> Result<PathBuf, Error> {
        let candidate = self.bin_dir.join("psql");
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let candidate = dir.join("psql");
                if is_executable(&candidate) {
                    return Ok(candidate);
                }
            }
        }
        Err(Error::NoPsql(self.bin_dir.clone()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        self.stop();
        if let Err(e) = fs::remove_dir_all(&self.root_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.root_dir.display(), "removing throwaway cluster directory: {e}");
            }
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release it).
/// Another process may take it before it is used: callers must retry on "address in use".
pub fn free_port() -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        // Binding to an ephemeral port on loopback practically never fails; when it does, a port
        // outside the ephemeral range is as good a guess as any (and callers retry).
        Err(_) => 20000 + (rand::random::<u16>() % 10000),
    }
}

/// Connects with a `key=value` (or URL) connection string and spawns the connection task.
pub async fn connect_str(connstr: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(connstr, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("throwaway cluster connection ended: {e}");
        }
    });
    Ok(client)
}

/// A tokio-postgres error with the server's severity, SQLSTATE and message when it has them
/// (`Display` of a server error is just "db error").
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                s.push_str(&format!(" (detail: {detail})"));
            }
            s
        }
        None => crate::tls::error_chain(e),
    }
}

/// Quotes a value for a libpq / tokio-postgres `key=value` connection string.
pub fn quote_conn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A free port not handed out before by this process (ports of live clusters in this process
/// never repeat; other processes are handled by retrying on "address in use").
fn reserve_port() -> Result<u16, Error> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut guard = crate::sync::lock(&HANDED_OUT);
    let handed_out = guard.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let port = free_port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(Error::NoUnusedPort)
}

/// Removes libpq's `PG*` environment variables (keeps `PGREDACT_*`), so the caller's
/// environment cannot redirect or alter our connections and servers.
fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if key_str.starts_with("PG") && !key_str.starts_with("PGREDACT") {
            cmd.env_remove(&key);
        }
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The effective uid, from `/proc/self/status` (no libc dependency).
fn effective_uid() -> Result<u32, Error> {
    let status = fs::read_to_string("/proc/self/status").map_err(Error::io(
        "reading /proc/self/status to find the effective uid",
    ))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or(Error::NoEffectiveUid)
}

/// `(uid, gid)` of the `postgres` OS user.
fn postgres_os_user() -> Result<(u32, u32), Error> {
    if let Ok(passwd) = fs::read_to_string("/etc/passwd") {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4 && fields[0] == "postgres" {
                if let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse()) {
                    return Ok((uid, gid));
                }
            }
        }
    }
    // Users from NSS sources other than /etc/passwd.
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(Error::NoPostgresUser),
    }
}

/// Creates a fresh, private `pgredact-pg-*` directory (owned by `postgres` when we are root).
fn make_root_dir(run_as: Option<(u32, u32)>) -> Result<PathBuf, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::var_os("PGREDACT_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let base = base
        .canonicalize()
        .map_err(Error::io(format!("temporary directory {}", base.display())))?;
    if let Some((uid, _)) = run_as {
        // The postgres user must be able to reach the directory we create.
        for dir in base.ancestors() {
            let meta = fs::metadata(dir).map_err(Error::io(dir.display().to_string()))?;
            if meta.mode() & 0o001 == 0 && meta.uid() != uid {
                return Err(Error::TmpUnreachable {
                    dir: dir.to_path_buf(),
                    base: base.clone(),
                });
            }
        }
    }
    for _ in 0..100 {
        let name = format!(
            "pgredact-pg-{}-{}-{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let dir = base.join(name);
        if dir.as_os_str().len() > MAX_SOCKET_DIR_LEN {
            return Err(Error::TmpPathTooLong(dir));
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::Io {
                    what: format!("creating {}", dir.display()),
                    source: e,
                })
            }
        }
        let setup = || -> Result<(), Error> {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(Error::io(format!("chmod {}", dir.display())))?;
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                    .map_err(Error::io(format!("chown {} to postgres", dir.display())))?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        return Ok(dir);
    }
    Err(Error::NoFreshDir(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_values_are_quoted() {
        assert_eq!(quote_conn_value("a b"), "'a b'");
        assert_eq!(quote_conn_value(r"it's \x"), r"'it\'s \\x'");
        assert_eq!(quote_conn_value(""), "''");
    }

    #[test]
    fn connstr_round_trips_through_tokio_postgres() {
        let c = Cluster {
            port: 5999,
            host: "127.0.0.1".into(),
            data_dir: PathBuf::from("/nonexistent/data"),
            root_dir: PathBuf::from("/nonexistent"),
            bin_dir: PathBuf::from("/nonexistent/bin"),
            run_as: None,
            auth: Auth::Trust,
            running: false,
            watchdog: None,
        };
        let s = c.connstr("us er", Some("p'w\\d x"), "my db");
        let config: tokio_postgres::Config = s.parse().expect("connstr parses");
        assert_eq!(config.get_user(), Some("us er"));
        assert_eq!(config.get_password(), Some("p'w\\d x".as_bytes()));
        assert_eq!(config.get_dbname(), Some("my db"));
        assert_eq!(config.get_ports(), &[5999]);
    }
}
