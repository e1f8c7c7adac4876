//! `pgredact.toml`: where to listen, where PostgreSQL is, where the policies are.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_policies")]
    pub policies: PathBuf,
    pub upstream: Upstream,
    #[serde(default)]
    pub tls: Option<Tls>,
    #[serde(default)]
    pub admin: Option<Admin>,
    /// The audit trail of masked sessions (off when absent).
    #[serde(default)]
    pub audit: Option<crate::audit::AuditConfig>,
    #[serde(default)]
    pub secrets: Secrets,
    /// Right to be forgotten: timeouts and retries of forget jobs.
    #[serde(default)]
    pub forget: ForgetSettings,
    /// Several instances behind one address: this instance's peer id and its peers (cancel
    /// requests that reach the wrong instance are forwarded to the right one).
    #[serde(default)]
    pub peering: Option<Peering>,
    /// Seconds between periodic catalog refreshes.
    #[serde(default = "default_refresh")]
    pub catalog_refresh_secs: u64,
    /// Seconds between re-checks of an unmasked session's role membership.
    #[serde(default = "default_recheck")]
    pub membership_recheck_secs: u64,
    /// Masked sessions: decide every statement on a catalog that includes every DDL committed
    /// before it arrived (needs the DDL watch). Off, DDL on existing relations is seen at the
    /// periodic refresh (a window of up to `catalog_refresh_secs`).
    #[serde(default = "default_true")]
    pub per_statement_freshness: bool,
    /// Unmasked sessions: forward each statement only after a membership reading taken after it
    /// arrived. Off, a revoked membership ends open sessions at the periodic re-check (a window
    /// of up to `membership_recheck_secs`).
    #[serde(default = "default_true")]
    pub per_statement_membership: bool,
    /// Seconds between policy directory re-reads (hot reload).
    #[serde(default = "default_reload")]
    pub policy_reload_secs: u64,
    /// Client connections served at once (sessions and logins in progress); one more is refused
    /// with 53300 before anything is opened for it.
    #[serde(default = "default_max_client_conn")]
    pub max_client_conn: usize,
    /// Seconds a client gets from connecting to the end of its authentication (0: no limit).
    #[serde(default = "default_login_timeout")]
    pub login_timeout_secs: u64,
    /// Seconds running statements and open transactions get after SIGTERM or SIGINT before the
    /// remaining sessions are closed with 57P01.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// Seconds a masked session may stay idle outside a transaction before it is closed with
    /// 57P05 (0: no limit).
    #[serde(default)]
    pub masked_idle_timeout_secs: u64,
    /// The same for unmasked sessions (0: no limit).
    #[serde(default)]
    pub unmasked_idle_timeout_secs: u64,
    /// Log lines on stderr: `text` (colour only on a terminal) or `json` (one object a line).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Directory of the file this was loaded from (policies and other paths are relative to it).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this was loaded from (re-read on SIGHUP).
    #[serde(skip)]
    pub file: PathBuf,
    /// TLS towards PostgreSQL, built from `[upstream] sslmode` and `ca` when the file is loaded.
    #[serde(skip)]
    pub upstream_tls: Option<crate::tls::UpstreamTls>,
}

/// `log_format`: how log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    #[serde(default)]
    pub password_env: Option<String>,
    /// Database the control-plane connection uses when none is implied.
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default = "default_sslmode")]
    pub sslmode: String,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Seconds to open a connection to PostgreSQL: TCP, TLS and the server's first answer to
    /// the startup packet (0: no limit).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub require: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// `/v1` requests served at once; one more is answered 503 with `Retry-After`.
    #[serde(default = "default_admin_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// `/v1` requests per minute and bearer token (a token bucket refilled at this rate); more
    /// are answered 429 with `Retry-After`. Failed authentications share one bucket of their own.
    #[serde(default = "default_admin_requests_per_minute")]
    pub requests_per_minute: u32,
    /// Requests a token may send at once above the steady rate (the bucket's size).
    #[serde(default = "default_admin_request_burst")]
    pub request_burst: u32,
    /// Environment variable holding the key that signs receipts (HMAC-SHA256).
    #[serde(default = "default_receipt_key_env")]
    pub receipt_key_env: String,
    /// Environment variable holding the key completion callbacks are signed with
    /// (HMAC-SHA256); when it is unset or empty, the receipt key signs them.
    #[serde(default = "default_callback_key_env")]
    pub callback_key_env: String,
    /// Delivery attempts of one completion callback (the first one included) before it is
    /// given up.
    #[serde(default = "default_callback_attempts")]
    pub callback_attempts: u32,
    /// PEM file of the CAs trusted for `https` callback URLs (default: the system bundle).
    #[serde(default)]
    pub callback_ca: Option<PathBuf>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: default_admin_listen(),
            token_env: default_token_env(),
            max_concurrent_requests: default_admin_max_concurrent(),
            requests_per_minute: default_admin_requests_per_minute(),
            request_burst: default_admin_request_burst(),
            receipt_key_env: default_receipt_key_env(),
            callback_key_env: default_callback_key_env(),
            callback_attempts: default_callback_attempts(),
            callback_ca: None,
        }
    }
}

fn default_admin_max_concurrent() -> usize {
    16
}
fn default_admin_requests_per_minute() -> u32 {
    600
}
fn default_admin_request_burst() -> u32 {
    60
}
fn default_receipt_key_env() -> String {
    "PGREDACT_RECEIPT_KEY".into()
}
fn default_callback_key_env() -> String {
    "PGREDACT_CALLBACK_KEY".into()
}
fn default_callback_attempts() -> u32 {
    8
}

/// `[peering]`: pgredact instances behind one address (a TCP load balancer). Each has a peer id,
/// which every cancel key it hands out carries; a cancel request that reaches another instance
/// is forwarded to the address listed for that id (as pgbouncer's peering does).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peering {
    /// This instance's id, 1 to 255, unique among the instances behind one address.
    pub peer_id: u8,
    /// The other instances: peer id (as a string key) -> the address they listen on, as this
    /// instance reaches them directly (not through the load balancer).
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, String>,
}

impl Peering {
    /// The peers by id, checked: ids 1 to 255, none equal to this instance's, addresses given.
    pub fn peer_addrs(&self) -> Result<std::collections::BTreeMap<u8, String>, String> {
        if self.peer_id == 0 {
            return Err("[peering] peer_id must be between 1 and 255".into());
        }
        let mut out = std::collections::BTreeMap::new();
        for (k, addr) in &self.peers {
            let id: u8 = k.trim().parse().ok().filter(|i| *i > 0).ok_or_else(|| {
                format!("[peering.peers] {k:?}: a peer id is a number from 1 to 255")
            })?;
            if id == self.peer_id {
                return Err(format!(
                    "[peering.peers] {id}: that is this instance's own peer_id"
                ));
            }
            if addr.trim().is_empty() {
                return Err(format!("[peering.peers] {id}: the address is empty"));
            }
            out.insert(id, addr.trim().to_string());
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    #[serde(default = "default_hash_key_env")]
    pub hash_key_env: String,
}

/// `[forget]`: how long forget statements may wait and run, and how often a job run retries
/// after a transient error (deadlock, serialization failure, lock or statement timeout, lost
/// connection) before it leaves the job for the next run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetSettings {
    /// `lock_timeout` of forget sessions, in milliseconds.
    #[serde(default = "default_forget_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// `statement_timeout` of forget sessions, in seconds.
    #[serde(default = "default_forget_statement_timeout_secs")]
    pub statement_timeout_secs: u64,
    /// Attempts of one job run (the first included) before it is left resumable.
    #[serde(default = "default_forget_attempts")]
    pub attempts: u32,
    /// Use the compiled suppression trigger (the `pgredact_suppress` extension, installed by
    /// the control role) when the server has it; `false` keeps the PL/pgSQL-only triggers.
    #[serde(default = "default_true")]
    pub compiled_trigger: bool,
}

impl Default for ForgetSettings {
    fn default() -> Self {
        ForgetSettings {
            lock_timeout_ms: default_forget_lock_timeout_ms(),
            statement_timeout_secs: default_forget_statement_timeout_secs(),
            attempts: default_forget_attempts(),
            compiled_trigger: true,
        }
    }
}

fn default_forget_lock_timeout_ms() -> u64 {
    10_000
}
fn default_forget_statement_timeout_secs() -> u64 {
    900
}
fn default_forget_attempts() -> u32 {
    8
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets {
            hash_key_env: default_hash_key_env(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:6432".into()
}
fn default_policies() -> PathBuf {
    "policies".into()
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    5432
}
fn default_sslmode() -> String {
    "disable".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9187".into()
}
fn default_token_env() -> String {
    "PGREDACT_ADMIN_TOKEN".into()
}
fn default_hash_key_env() -> String {
    "PGREDACT_HASH_KEY".into()
}
fn default_refresh() -> u64 {
    5
}
fn default_recheck() -> u64 {
    5
}
fn default_true() -> bool {
    true
}
fn default_reload() -> u64 {
    5
}
fn default_max_client_conn() -> usize {
    1000
}
fn default_login_timeout() -> u64 {
    60
}
fn default_shutdown_timeout() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    10
}

/// Why a configuration file was refused: the file, the line when there is one, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{}: cannot read: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// The file is not valid TOML, or a setting has the wrong type (with its line).
    #[error("{0}")]
    Syntax(crate::policy::Error),
    /// A setting's value is not allowed.
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
        let invalid = |reason: String| Error::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut cfg: Config = toml::from_str(text)
            .map_err(|e| Error::Syntax(crate::policy::toml_error(path, text, &e)))?;
        if cfg.max_client_conn == 0 {
            return Err(invalid("max_client_conn must be at least 1".into()));
        }
        if let Some(p) = &cfg.peering {
            p.peer_addrs().map_err(invalid)?;
        }
        cfg.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        cfg.file = path.to_path_buf();
        cfg.upstream_tls = crate::tls::upstream(&cfg).map_err(invalid)?;
        Ok(cfg)
    }

    /// The settings of `new` that differ from this configuration and take effect only after a
    /// restart (everything but the connection limit and the timeouts, which a reload changes).
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut diff = |name, changed: bool| {
            if changed {
                out.push(name);
            }
        };
        diff("listen", self.listen != new.listen);
        diff("log_format", self.log_format != new.log_format);
        diff("policies", self.policies != new.policies);
        let same_upstream = Upstream {
            connect_timeout_secs: self.upstream.connect_timeout_secs,
            ..new.upstream.clone()
        };
        diff("[upstream]", self.upstream != same_upstream);
        diff("[tls]", self.tls != new.tls);
        diff("[admin]", self.admin != new.admin);
        diff("[audit]", self.audit != new.audit);
        diff("[secrets]", self.secrets != new.secrets);
        diff("[forget]", self.forget != new.forget);
        diff("[peering]", self.peering != new.peering);
        diff(
            "catalog_refresh_secs",
            self.catalog_refresh_secs != new.catalog_refresh_secs,
        );
        diff(
            "membership_recheck_secs",
            self.membership_recheck_secs != new.membership_recheck_secs,
        );
        diff(
            "per_statement_freshness",
            self.per_statement_freshness != new.per_statement_freshness,
        );
        diff(
            "per_statement_membership",
            self.per_statement_membership != new.per_statement_membership,
        );
        diff(
            "policy_reload_secs",
            self.policy_reload_secs != new.policy_reload_secs,
        );
        out
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.base_dir.join(&self.policies)
    }

    pub fn upstream_password(&self) -> Option<String> {
        self.upstream
            .password_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
    }

    /// The key for `hash` masks and the forget list, from the environment.
    pub fn hash_key(&self) -> Option<Vec<u8>> {
        std::env::var(&self.secrets.hash_key_env)
            .ok()
            .filter(|k| !k.is_empty())
            .map(String::into_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[upstream]\nuser = \"pgredact\"\n";

    #[test]
    fn lifecycle_defaults_and_restart_needed() {
        let path = Path::new("/etc/pgredact/pgredact.toml");
        let c = Config::parse(BASE, path).unwrap();
        assert_eq!(c.max_client_conn, 1000);
        assert_eq!(c.login_timeout_secs, 60);
        assert_eq!(c.shutdown_timeout_secs, 30);
        assert_eq!(c.masked_idle_timeout_secs, 0);
        assert_eq!(c.unmasked_idle_timeout_secs, 0);
        assert_eq!(c.upstream.connect_timeout_secs, 10);
        assert_eq!(c.file, path);
        // Reloadable settings need no restart; others are named.
        let n = Config::parse(
            &format!("max_client_conn = 5\nlogin_timeout_secs = 1\nlisten = \"0.0.0.0:7000\"\n{BASE}connect_timeout_secs = 3\n"),
            path,
        )
        .unwrap();
        assert_eq!(c.restart_needed(&n), vec!["listen"]);
        let n = Config::parse(&format!("{BASE}port = 5433\n"), path).unwrap();
        assert_eq!(c.restart_needed(&n), vec!["[upstream]"]);
        let n = Config::parse(&format!("log_format = \"json\"\n{BASE}"), path).unwrap();
        assert_eq!(n.log_format, LogFormat::Json);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.restart_needed(&n), vec!["log_format"]);
        let e = Config::parse(&format!("log_format = \"xml\"\n{BASE}"), path).unwrap_err();
        assert!(
            matches!(&e, Error::Syntax(crate::policy::Error::At { line: 1, .. })),
            "{e:?}"
        );
        assert!(e.to_string().contains("expected `text` or `json`"), "{e}");
        let e = Config::parse(&format!("max_client_conn = 0\n{BASE}"), path).unwrap_err();
        assert!(matches!(&e, Error::Invalid { .. }), "{e:?}");
        assert!(
            e.to_string().contains("max_client_conn must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn peering_is_checked() {
        let path = Path::new("/etc/pgredact/pgredact.toml");
        let c = Config::parse(
            &format!("{BASE}[peering]\npeer_id = 1\n[peering.peers]\n2 = \"10.0.0.2:6432\"\n"),
            path,
        )
        .unwrap();
        let p = c.peering.as_ref().unwrap();
        assert_eq!(p.peer_id, 1);
        assert_eq!(
            p.peer_addrs().unwrap().into_iter().collect::<Vec<_>>(),
            vec![(2, "10.0.0.2:6432".to_string())]
        );
        for (bad, why) in [
            ("[peering]\npeer_id = 0\n", "between 1 and 255"),
            (
                "[peering]\npeer_id = 256\n",
                "pgredact.toml:4: invalid value: integer `256`",
            ),
            (
                "[peering]\npeer_id = 1\n[peering.peers]\n1 = \"x:1\"\n",
                "own peer_id",
            ),
            (
                "[peering]\npeer_id = 1\n[peering.peers]\nx = \"x:1\"\n",
                "a number from 1 to 255",
            ),
            (
                "[peering]\npeer_id = 1\n[peering.peers]\n3 = \" \"\n",
                "address is empty",
            ),
        ] {
            let e = Config::parse(&format!("{BASE}{bad}"), path).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        let n = Config::parse(&format!("{BASE}[peering]\npeer_id = 2\n"), path).unwrap();
        assert_eq!(c.restart_needed(&n), vec!["[peering]"]);
    }
}
