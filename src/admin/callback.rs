//! Signed completion callbacks: a remove-PII request may carry `callback_url`; when its job
//! ends (`done`, with or without warnings, `failed`, `blocked`, or `cancelled` by an operator;
//! a cancelled job's notice is due again even when its failure was notified), pgredact POSTs a JSON notice
//! there, signed like Stripe's webhooks:
//!
//! `X-Pgredact-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`
//!
//! The key is the one in `[admin] callback_key_env`, or else the receipt key. Delivery state
//! (attempts, next attempt, last error, delivered at) lives on the job row in
//! `pgredact.forget_jobs`, so retries survive a restart and any admin server of the database
//! delivers them. A delivery is a 2xx answer; anything else (another status, a refused
//! connection, a timeout, a TLS error) is retried with exponential backoff (5 s, then x4 up to
//! 6 hours) until `[admin] callback_attempts` attempts were made. Redirects are not followed.
//! The HTTP client is hyper's HTTP/1.1 client (hyper is in the tree through axum), over tokio
//! and, for `https`, tokio-rustls.

use crate::forget::jobs::{self, JobStatus};
use axum::http::Uri;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::Client;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-pgredact-signature";
/// Longest `callback_url`.
pub const MAX_URL: usize = 2000;
/// One attempt (connect, TLS, request, answer) may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// A claimed delivery that never recorded its outcome (the server died mid-attempt) is taken up
/// again after this many seconds.
const LEASE_SECS: f64 = 120.0;
/// The first retry waits this long; each next one four times longer, at most [`MAX_DELAY_SECS`].
const FIRST_DELAY_SECS: f64 = 5.0;
const MAX_DELAY_SECS: f64 = 6.0 * 3600.0;

/// Why a callback could not be delivered, or a signature does not verify. The `Display` of a
/// delivery error is what the job's `callback_last_error` records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The HMAC key was refused (HMAC takes keys of any length: not expected).
    #[error("{0}")]
    Key(hmac::digest::InvalidLength),
    #[error("building the request: {0}")]
    Request(#[source] axum::http::Error),
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    /// No CA certificates to check an https receiver with.
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("{host}: {source}")]
    ServerName {
        host: String,
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("TLS with {authority}: {source}")]
    Handshake {
        authority: String,
        source: std::io::Error,
    },
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// The receiver answered, not with a 2xx status.
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    #[error("the job vanished")]
    JobVanished,
    /// Claiming a delivery or recording its outcome failed.
    #[error("{}", crate::forget::db_error(.0))]
    Db(#[from] tokio_postgres::Error),
    /// Reading the job failed.
    #[error(transparent)]
    Forget(#[from] crate::forget::Error),
    #[error("no t= in the signature header")]
    NoTimestamp,
    #[error("timestamp {t} is more than {tolerance_secs} s away")]
    Stale { t: i64, tolerance_secs: i64 },
    #[error("signature mismatch")]
    Mismatch,
}

/// Why a `callback_url` is refused (a 400 answer to the request that carries it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("\"callback_url\": 1 to {MAX_URL} characters")]
    Length,
    #[error("\"callback_url\": no spaces or control characters")]
    Whitespace,
    #[error("\"callback_url\": not a valid URL")]
    Invalid,
    #[error("\"callback_url\": only http and https URLs are allowed")]
    Scheme,
    #[error("\"callback_url\": the URL has no host")]
    NoHost,
    #[error("\"callback_url\": credentials in the URL are not allowed")]
    Credentials,
}

/// Why https callbacks cannot be checked (kept by the [`Deliverer`], reported by each https
/// delivery).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaError {
    #[error("{}: no usable PEM CA certificate", .0.display())]
    NoCertificate(std::path::PathBuf),
    #[error("no system CA bundle found: set [admin] callback_ca")]
    NoSystemBundle,
    #[error("TLS: {0}")]
    Rustls(#[source] rustls::Error),
}

/// A checked callback URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl {
    pub https: bool,
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
    /// `host[:port]`, as the `Host` header.
    pub authority: String,
    pub path_and_query: String,
}

/// Parses and checks a callback URL: `http` or `https`, a host, no credentials, no whitespace
/// or control characters, at most [`MAX_URL`] bytes.
pub fn parse_url(s: &str) -> Result<CallbackUrl, UrlError> {
    if s.is_empty() || s.len() > MAX_URL {
        return Err(UrlError::Length);
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(UrlError::Whitespace);
    }
    let uri: Uri = s.parse().map_err(|_| UrlError::Invalid)?;
    let https = match uri.scheme_str() {
        Some(x) if x.eq_ignore_ascii_case("https") => true,
        Some(x) if x.eq_ignore_ascii_case("http") => false,
        _ => return Err(UrlError::Scheme),
    };
    let auth = uri.authority().ok_or(UrlError::NoHost)?;
    if auth.as_str().contains('@') {
        return Err(UrlError::Credentials);
    }
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    Ok(CallbackUrl {
        https,
        host,
        port: auth.port_u16().unwrap_or(if https { 443 } else { 80 }),
        authority: auth.as_str().to_string(),
        path_and_query: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string()),
    })
}

/// The signature header's value for `body` sent at unix time `t`.
pub fn signature(key: &[u8], t: i64, body: &[u8]) -> Result<String, Error> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).map_err(Error::Key)?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "t={t},v1={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// Checks a signature header against `body` (what a receiver does): the `v1` HMAC must match,
/// compared in constant time, and `t` must be within `tolerance_secs` of `now`.
pub fn verify(
    key: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), Error> {
    let mut t: Option<i64> = None;
    let mut v1: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", x)) => t = x.parse().ok(),
            Some(("v1", x)) => {
                if let Ok(b) = hex::decode(x) {
                    v1.push(b)
                }
            }
            _ => {}
        }
    }
    let t = t.ok_or(Error::NoTimestamp)?;
    if (now - t).abs() > tolerance_secs {
        return Err(Error::Stale { t, tolerance_secs });
    }
    for sig in v1 {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).map_err(Error::Key)?;
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err(Error::Mismatch)
}

/// The notice a callback carries.
pub fn notice(st: &JobStatus) -> Value {
    let rows: i64 = st.rows_changed.values().filter_map(Value::as_i64).sum();
    let outcome = match st.state.as_str() {
        jobs::DONE if st.warnings.is_empty() => "done",
        jobs::DONE => "done_with_warnings",
        other => other,
    };
    json!({
        "type": "pgredact.forget_job.finished",
        "job_id": st.job_id,
        "database": st.database,
        "external_id": st.external_id,
        "regulation": st.regulation,
        "state": st.state,
        "outcome": outcome,
        "received_at": st.created_at,
        "finished_at": st.finished_at,
        "deadline": st.deadline,
        "deadline_met": st.deadline_met,
        "counts": {
            "requested": st.ids_total,
            "duplicates": st.ids_duplicate,
            "anonymized_by_this_job": st.ids_forgotten,
            "already_forgotten": st.ids_already_forgotten,
            "without_rows": st.ids_unknown,
            "rows_changed": rows,
        },
        "verification_ok": st.verification.as_ref().and_then(|v| v.get("ok")).and_then(Value::as_bool),
        "warnings": st.warnings,
        "error": st.error,
    })
}

/// What delivers callbacks: the signing key, the attempts and the TLS client.
#[derive(Clone)]
pub struct Deliverer {
    key: Arc<Vec<u8>>,
    attempts: u32,
    /// None when no CA certificate could be read (https deliveries then fail, saying why).
    tls: Result<tokio_rustls::TlsConnector, CaError>,
}

impl Deliverer {
    /// A deliverer signing with `key`, trusting the CAs of `ca` (PEM) or of the system bundle.
    pub fn new(key: Arc<Vec<u8>>, attempts: u32, ca: Option<&std::path::Path>) -> Deliverer {
        Deliverer {
            key,
            attempts: attempts.max(1),
            tls: tls_connector(ca),
        }
    }
}

/// System CA bundles, the first readable one is used.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

fn tls_connector(ca: Option<&std::path::Path>) -> Result<tokio_rustls::TlsConnector, CaError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let paths: Vec<std::path::PathBuf> = match ca {
        Some(p) => vec![p.to_path_buf()],
        None => SYSTEM_BUNDLES
            .iter()
            .map(std::path::PathBuf::from)
            .collect(),
    };
    let mut roots = rustls::RootCertStore::empty();
    for path in &paths {
        let Ok(iter) = CertificateDer::pem_file_iter(path) else {
            continue;
        };
        for c in iter.flatten() {
            let _ = roots.add(c);
        }
        if !roots.is_empty() {
            break;
        }
    }
    if roots.is_empty() {
        return Err(match ca {
            Some(p) => CaError::NoCertificate(p.to_path_buf()),
            None => CaError::NoSystemBundle,
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CaError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The wait before the attempt after `attempts` failed ones.
fn delay_secs(attempts: u32) -> f64 {
    let exp = attempts.saturating_sub(1).min(20) as i32;
    (FIRST_DELAY_SECS * 4f64.powi(exp)).min(MAX_DELAY_SECS)
}

/// Delivers every callback that is due in this database (jobs that ended, not delivered, not
/// given up, whose next attempt is now). Each is claimed first (so two admin servers never
/// deliver one at once) and its outcome recorded on the job. Returns `(job, outcome)` per
/// attempt.
pub async fn deliver_due(
    client: &Client,
    d: &Deliverer,
) -> Result<Vec<(i64, Result<u16, Error>)>, Error> {
    let mut out = Vec::new();
    loop {
        let claimed = client
            .query_opt(
                "UPDATE pgredact.forget_jobs SET callback_attempts = callback_attempts + 1, \
                        callback_next_at = now() + make_interval(secs => $2) \
                 WHERE id = (SELECT id FROM pgredact.forget_jobs \
                             WHERE callback_url IS NOT NULL AND callback_delivered_at IS NULL \
                               AND kind = 'forget' AND state IN ('done', 'failed', 'blocked', 'cancelled') \
                               AND callback_attempts < $1 \
                               AND (callback_next_at IS NULL OR callback_next_at <= now()) \
                             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, callback_url, callback_attempts",
                &[&(d.attempts as i32), &LEASE_SECS],
            )
            .await;
        let row = match claimed {
            Ok(r) => r,
            // No job was ever submitted with this version's schema.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) => {
                return Ok(out)
            }
            Err(e) => return Err(e.into()),
        };
        let Some(row) = row else {
            return Ok(out);
        };
        let (id, url, attempt): (i64, String, i32) = (row.get(0), row.get(1), row.get(2));
        let result = match jobs::status(client, id).await? {
            Some(st) => attempt_once(d, &url, &notice(&st), attempt).await,
            None => Err(Error::JobVanished),
        };
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        record_outcome(client, d, id, attempt, &result).await?;
        out.push((id, result));
    }
}

/// Records the outcome of delivery attempt `attempt` of job `id`'s callback: delivered, or
/// the error and when to try again (never, after the last attempt).
async fn record_outcome(
    client: &Client,
    d: &Deliverer,
    id: i64,
    attempt: u32,
    result: &Result<u16, Error>,
) -> Result<(), Error> {
    match result {
        Ok(code) => {
            client
                .execute(
                    "UPDATE pgredact.forget_jobs SET callback_delivered_at = now(), callback_next_at = NULL, \
                            callback_last_error = NULL WHERE id = $1",
                    &[&id],
                )
                .await?;
            tracing::info!(
                job = id,
                attempt,
                status = code,
                "forget job callback delivered"
            );
        }
        Err(e) => {
            let give_up = attempt >= d.attempts;
            let msg = if give_up {
                format!("{e}; gave up after {attempt} attempt(s)")
            } else {
                e.to_string()
            };
            let next: Option<f64> = (!give_up).then(|| delay_secs(attempt));
            client
                .execute(
                    "UPDATE pgredact.forget_jobs SET callback_last_error = $2, \
                            callback_next_at = now() + make_interval(secs => $3) WHERE id = $1",
                    &[&id, &msg, &next],
                )
                .await?;
            tracing::warn!(
                job = id,
                attempt,
                "forget job callback not delivered: {msg}"
            );
        }
    }
    Ok(())
}

/// One POST of `notice` to `url`: Ok(status) for a 2xx answer.
async fn attempt_once(
    d: &Deliverer,
    url: &str,
    notice: &Value,
    attempt: i32,
) -> Result<u16, Error> {
    let url = parse_url(url)?;
    let body = notice.to_string().into_bytes();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let sig = signature(&d.key, t, &body)?;
    let req = axum::http::Request::builder()
        .method("POST")
        .uri(url.path_and_query.as_str())
        .header("host", url.authority.as_str())
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("pgredact/", env!("CARGO_PKG_VERSION")),
        )
        .header(SIGNATURE_HEADER, sig)
        .header("x-pgredact-delivery-attempt", attempt.to_string())
        .header("connection", "close")
        .body(Full::new(Bytes::from(body)))
        .map_err(Error::Request)?;
    let post = async {
        let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|source| Error::Connect {
                authority: url.authority.clone(),
                source,
            })?;
        if url.https {
            let connector = d.tls.as_ref().map_err(Clone::clone)?;
            let name =
                rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|source| {
                    Error::ServerName {
                        host: url.host.clone(),
                        source,
                    }
                })?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|source| Error::Handshake {
                    authority: url.authority.clone(),
                    source,
                })?;
            send(tls, req).await
        } else {
            send(tcp, req).await
        }
    };
    let code = tokio::time::timeout(ATTEMPT_TIMEOUT, post)
        .await
        .map_err(|_| Error::Timeout(ATTEMPT_TIMEOUT.as_secs()))??;
    if (200..300).contains(&code) {
        Ok(code)
    } else {
        Err(Error::Status(code))
    }
}

async fn send<S>(io: S, req: axum::http::Request<Full<Bytes>>) -> Result<u16, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(Error::Http)?;
    let task = tokio::spawn(conn);
    let answer = sender.send_request(req).await;
    task.abort();
    answer.map(|r| r.status().as_u16()).map_err(Error::Http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https_with_a_host_and_no_credentials() {
        let u = parse_url("https://hooks.example.com/pgredact?x=1").expect("https");
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path_and_query.as_str()),
            (true, "hooks.example.com", 443, "/pgredact?x=1")
        );
        let u = parse_url("http://[::1]:8080").expect("ipv6");
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("::1", 8080, "/")
        );
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "example.com/hook",
            "http://user:pw@example.com/",
            "http://exa mple.com/",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signatures_verify_and_fail_on_a_changed_body_key_or_old_timestamp() {
        let sig = signature(b"k", 1_700_000_000, b"{\"a\":1}").expect("sign");
        assert!(sig.starts_with("t=1700000000,v1="), "{sig}");
        assert!(verify(b"k", &sig, b"{\"a\":1}", 1_700_000_010, 300).is_ok());
        assert!(verify(b"k", &sig, b"{\"a\":2}", 1_700_000_010, 300).is_err());
        assert!(verify(b"other", &sig, b"{\"a\":1}", 1_700_000_010, 300).is_err());
        assert!(verify(b"k", &sig, b"{\"a\":1}", 1_700_001_000, 300).is_err());
    }

    #[test]
    fn retries_back_off_exponentially_up_to_six_hours() {
        assert_eq!(delay_secs(1), 5.0);
        assert_eq!(delay_secs(2), 20.0);
        assert_eq!(delay_secs(3), 80.0);
        assert_eq!(delay_secs(30), 6.0 * 3600.0);
    }
}
